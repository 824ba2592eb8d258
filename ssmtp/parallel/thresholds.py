"""Measured all-reduce size thresholds for Communicator(backend="auto") (ssmtp/parallel/comm.py).

A Python module rather than a .json file so that it ships in the wheel (pyproject's package-data lists only
*.pyi, py.typed and data/*). The JSON text below is what benchmarks/bench_allreduce.py --thresholds-out writes,
edited by hand where its "how" field says so; replace it with a new measurement, keeping "measured" honest.
Rules: per world size, the first rule whose max_bytes (null = any size) is >= the message's bytes names the backend;
"quant_rules" pick the quantized algorithm the same way; "default" serves world sizes not measured.
"""
import json

TABLE = json.loads(r"""
{
  "measured": {
    "where": "2x NVIDIA H200, NV18 NVLink (nvidia-h200-x2), torch 2.11.0+cu130, NCCL 2.28.9, NVLink multicast off",
    "when": "2026-11-22T20:34:19+00:00",
    "commit": "2b3b892 (kernels as in this tree; the default signalling is the one measured as custom-1shot-rel)",
    "source": "benchmarks/results/allreduce-h200x2-2026-11-22.json (latency per call inside a CUDA graph, bf16, median)",
    "how": "per size, the fastest of custom-1shot, custom-2shot and NCCL (graph). torch symmetric memory was faster from 2 MiB up (two-shot: 13.4 us at 2 MiB, 817 us at 256 MiB vs NCCL 29.7 / 895 us) but was measured on its own symmetric buffer, without the two staging copies the Communicator needs, it must allocate (collectively) outside graph capture, and it rejects float16 and odd bf16 sizes; so auto does not pick it: ask for it with SSMTP_ALLREDUCE=symm"
  },
  "world_sizes": {
    "2": {
      "rules": [
        {"max_bytes": 4194304, "backend": "custom-1shot"},
        {"max_bytes": 33554432, "backend": "custom-2shot"},
        {"max_bytes": null, "backend": "nccl"}
      ],
      "quant_rules": [
        {"max_bytes": 2097152, "algo": "1shot"},
        {"max_bytes": null, "algo": "2shot"}
      ]
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
