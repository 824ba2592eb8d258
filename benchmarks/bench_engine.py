"""Engine benchmark (TTFT cold vs prefix hit, CUDA-graph decode step per batch size, prefill throughput, each vs its
physical floor). TP degree from WORLD_SIZE:

    torchrun --nproc_per_node 1 benchmarks/bench_engine.py --out benchmarks/results
    torchrun --nproc_per_node 2 benchmarks/bench_engine.py --out benchmarks/results   # + ratios to engine-tp1.json
    python benchmarks/bench_engine.py --model tiny --device cpu --quick --decode-batches 1,4 \
        --prefill 1x64 --ttft-len 256                                                   # CPU smoke run

The implementation is ssmtp/engine/bench.py (also behind `python -m ssmtp bench`); --help lists every option.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ssmtp.engine.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
