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
    "when": "2026-11-23T07:47:29+00:00",
    "commit": "8c5aaf6 (two-shot all-gather by pushes; the kernels of the commit that added this table are the same less the pull option)",
    "source": "benchmarks/bench_allreduce.py (latency per call inside a CUDA graph, bf16, median); benchmarks/results/allreduce-h200x2-8c5aaf6-push.json",
    "how": "per size, the fastest of custom-lamport, custom-1shot, custom-2shot and NCCL (graph): lamport 3.6-5.2 us up to 512 KiB, one-shot from 1 to 4 MiB (9.5 us at 1 MiB, 20.8 at 4 MiB vs two-shot 12.3 / 22.7), two-shot from 8 MiB (35.5 vs one-shot 35.8; 60.8 at 16 MiB, 873 at 256 MiB vs NCCL 76.5 / 891): NCCL was never the fastest. torch symmetric memory two-shot was within 2-6% of the two-shot from 8 MiB (58.8 at 16 MiB, 826 at 256 MiB) but was measured on its own symmetric buffer, without the two staging copies the Communicator needs, it must allocate (collectively) outside graph capture, and it rejects float16 and odd bf16 sizes; so auto does not pick it: ask for it with SSMTP_ALLREDUCE=symm. Quantized (int8 block 32): one-shot up to 2 MiB (13.8 us), two-shot from 4 MiB (19.5 vs 20.8); against the best exact backend slower up to 2 MiB (13.8 vs 13.6), faster from 4 MiB (19.5 vs 20.8; 42.8 vs 60.8 at 16 MiB): quant_min_bytes = 4 MiB"
  },
  "world_sizes": {
    "2": {
      "rules": [
        {"max_bytes": 524288, "backend": "custom-lamport"},
        {"max_bytes": 4194304, "backend": "custom-1shot"},
        {"max_bytes": null, "backend": "custom-2shot"}
      ],
      "quant_rules": [
        {"max_bytes": 2097152, "algo": "1shot"},
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
