"""Measured all-reduce size thresholds for Communicator(backend="auto") (ssmtp/parallel/comm.py).

A Python module rather than a .json file so that it ships in the wheel (pyproject's package-data lists only
*.pyi, py.typed and data/*). The JSON text below is what benchmarks/bench_allreduce.py --thresholds-out writes,
edited by hand where its "how" field says so; replace it with a new measurement, keeping "measured" honest.
Rules: per world size, the first rule whose max_bytes (null = any size) is >= the message's bytes names the backend;
"quant_rules" pick the quantized algorithm the same way; "quant_min_bytes": in quantized mode, smaller messages take
the exact rules (quantizing them measured slower); "default" serves world sizes not measured.
"""
import json

TABLE = json.loads(r"""
{
  "measured": {
    "where": "2x NVIDIA H200, NV18 NVLink (nvidia-h200-x2), torch 2.11.0+cu130, NCCL 2.28.9, NVLink multicast off",
    "when": "2026-11-22T22:41:21+00:00",
    "commit": "the commit that added this table (lamport one-shot, 4 packs in flight, one block per SM)",
    "source": "benchmarks/bench_allreduce.py (latency per call inside a CUDA graph, bf16, median); results in benchmarks/results/allreduce-h200x2-*.json",
    "how": "per size, the fastest of custom-lamport, custom-1shot, custom-2shot and NCCL (graph): lamport 4.1-5.7 us up to 512 KiB (one-shot 6.2-8.7), one-shot from 1 to 16 MiB (10.1 us at 1 MiB, 69.1 at 16 MiB vs NCCL 20.0 / 76.4), two-shot at 32 MiB (131 vs 141), NCCL from 64 MiB (247 vs 259). torch symmetric memory two-shot was faster from 2 MiB up (13.4 us at 2 MiB, 60.0 at 16 MiB) but was measured on its own symmetric buffer, without the two staging copies the Communicator needs, it must allocate (collectively) outside graph capture, and it rejects float16 and odd bf16 sizes; so auto does not pick it: ask for it with SSMTP_ALLREDUCE=symm. Quantized (int8 block 32, best of one-/two-shot) against the best exact backend: slower up to 2 MiB (10.7 vs 5.8 us at 512 KiB, 14.4 vs 14.1 at 2 MiB), even at 4 MiB (20.8 vs 21.2), faster from 8 MiB (31.9 vs 36.2; 53.5 vs 69.4 at 16 MiB): quant_min_bytes = 4 MiB"
  },
  "world_sizes": {
    "2": {
      "rules": [
        {"max_bytes": 524288, "backend": "custom-lamport"},
        {"max_bytes": 16777216, "backend": "custom-1shot"},
        {"max_bytes": 33554432, "backend": "custom-2shot"},
        {"max_bytes": null, "backend": "nccl"}
      ],
      "quant_rules": [
        {"max_bytes": 4194304, "algo": "1shot"},
        {"max_bytes": null, "algo": "2shot"}
      ],
      "quant_min_bytes": 4194304
    }
  },
  "default": {
    "note": "world sizes 3..8 were not measured (only 2 GPUs were lent): one-shot for small messages as peers do (vLLM: 256 KiB at TP 8), NCCL above",
    "rules": [
      {"max_bytes": 262144, "backend": "custom-1shot"},
      {"max_bytes": null, "backend": "nccl"}
    ],
    "quant_rules": [
      {"max_bytes": null, "algo": "2shot"}
    ]
  }
}
""")
