"""Where a decode step's time goes: per-kernel GPU time of one CUDA-graph decode step, grouped by kernel name; and
the same for one eager prefill forward (--prefill BxL, e.g. the prefix-cache resume of a TTFT hit).

    torchrun --nproc_per_node 1 benchmarks/profile_decode.py --model mamba-2.8b --batches 1,256 --out prof.json
    torchrun --nproc_per_node 1 benchmarks/profile_decode.py --batches "" --prefill 1x1024,32x2048

Replays the engine's captured decode graph under torch.profiler (CUPTI traces the kernels inside a graph replay) and
reports, per batch size: step time (CUDA events), summed kernel time, kernels per step, and the top kernels by time
with their share of the step. The gap between the step time and the summed kernel time is launch/dependency idle time
inside the graph. Rank 0 writes the JSON and prints a table.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ssmtp.engine.bench import _git_commit  # noqa: E402


def _kernels(fn, n: int, step_us: float, top: int, timeline: int = 0) -> dict:
    """Run fn n times under the profiler; GPU time per call grouped by kernel name. timeline > 0: also `timeline`
    kernels from the middle of the last call (the layers there), in launch order, each with its duration and the time
    since the previous kernel ended (negative: the two overlapped, as programmatic dependent launch allows)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
    tot = collections.defaultdict(float)
    cnt = collections.Counter()
    seq = []
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA and ev.device_time > 0:
            seq.append((ev.time_range.start, ev.time_range.end, ev.name))
            name = ev.name if len(ev.name) < 90 else ev.name[:87] + "..."
            tot[name] += ev.device_time  # us
            cnt[name] += 1
    kern_us = sum(tot.values()) / n
    best = sorted(tot.items(), key=lambda kv: -kv[1])[:top]
    r = {"step_us": step_us, "kernel_us": kern_us, "kernels_per_step": sum(cnt.values()) / n,
         "top": [{"kernel": k, "us_per_step": v / n, "calls_per_step": cnt[k] / n, "share_of_step": v / n / step_us}
                 for k, v in best]}
    if timeline > 0 and seq:
        seq.sort()
        per = len(seq) // n
        last = seq[len(seq) - per:]
        mid = last[max(0, per // 2 - 1):per // 2 + timeline]
        r["timeline"] = [{"kernel": name[:90], "us": round(e - b, 2), "gap_us": round(b - mid[i][1], 2)}
                         for i, (b, e, name) in enumerate(mid[1:])]
    return r


def _print(title: str, r: dict) -> None:
    print(f"\n{title}: {r['step_us']:.1f} us per call, kernels {r['kernel_us']:.1f} us "
          f"({r['kernels_per_step']:.0f} kernels), idle {r['step_us'] - r['kernel_us']:.1f} us")
    for t in r["top"]:
        print(f"  {t['us_per_step']:9.1f} us {t['share_of_step']:6.1%} x{t['calls_per_step']:5.0f}  {t['kernel']}")
    for t in r.get("timeline", []):
        print(f"  gap {t['gap_us']:+8.2f} {t['us']:8.2f} us  {t['kernel']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mamba-2.8b", help="preset or HF directory (default mamba-2.8b)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--batches", default="1,256", help="comma-separated decode batch sizes (default 1,256)")
    ap.add_argument("--prefill", default="", help="comma-separated BxL prefill forwards to profile (default none)")
    ap.add_argument("--steps", type=int, default=20, help="graph replays profiled per batch size (default 20)")
    ap.add_argument("--top", type=int, default=15, help="kernels listed per batch size (default 15)")
    ap.add_argument("--kv-len", type=int, default=None,
                    help="hybrid models (Zamba): keys attended per decode step, rounded up to the engine's key-length "
                         "bucket (default: the full max_model_len graph)")
    ap.add_argument("--timeline", type=int, default=0,
                    help="also list N kernels from the middle of one decode step, in order, with durations and gaps")
    ap.add_argument("--out", default=None, help="JSON output path (rank 0)")
    args = ap.parse_args()

    from ssmtp.engine.launch import init_distributed, shutdown
    from ssmtp.engine.llm import LLM

    world, rank, dev = init_distributed()
    if dev.type != "cuda":
        print("profile_decode.py needs a CUDA device", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    batches = [int(b) for b in args.batches.split(",") if b]
    prefills = [tuple(int(v) for v in c.split("x")) for c in args.prefill.split(",") if c]
    llm = LLM(args.model, device=dev, dtype=dtype, max_batch=max(batches + [b for b, _ in prefills] + [1]),
              max_prefill_tokens=max([b * n for b, n in prefills] + [16384]), cuda_graphs=True, progress=False)
    V = llm.vocab_size
    res = {"meta": {"commit": _git_commit(), "device": torch.cuda.get_device_name(dev), "tp": world,
                    "model": args.model, "dtype": args.dtype, "torch": torch.__version__}, "batches": {}}
    T = llm.graphs.kv_bucket(args.kv_len) if args.kv_len else None
    res["meta"]["kv_len"] = T
    for B in batches:
        bs = llm.graphs.bucket(B)
        llm.graphs.capture(bs, T)
        slots = llm.pool.allocate(B)
        llm.graphs.set_inputs(torch.randint(3, V, (B,)).tolist(), slots)
        for _ in range(5):
            llm.graphs.replay(bs, T)
        torch.cuda.synchronize()
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for _ in range(args.steps):
            llm.graphs.replay(bs, T)
        e1.record()
        e1.synchronize()
        step_us = e0.elapsed_time(e1) * 1e3 / args.steps
        res["batches"][str(B)] = _kernels(lambda: llm.graphs.replay(bs, T), args.steps, step_us, args.top,
                                          args.timeline)
        llm.pool.free(slots)
        if rank == 0:
            _print(f"decode B={B} tp={world}", res["batches"][str(B)])
    res["prefill"] = {}
    for B, L in prefills:
        slots = llm.pool.allocate(B)
        ids = torch.randint(3, V, (B, L), device=dev)
        lens = torch.full((B,), L, dtype=torch.int32, device=dev)
        start = torch.zeros(B, dtype=torch.int64, device=dev)
        idx = torch.tensor(slots, dtype=torch.int32, device=dev)
        rows = torch.arange(B, device=dev)

        def fwd():
            llm.runner.prefill(ids, lens, start, idx, llm.pool, rows)

        for _ in range(2):
            fwd()
        torch.cuda.synchronize()
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        n_it = 3
        e0.record()
        for _ in range(n_it):
            fwd()
        e1.record()
        e1.synchronize()
        key = f"{B}x{L}"
        res["prefill"][key] = _kernels(fwd, n_it, e0.elapsed_time(e1) * 1e3 / n_it, args.top)
        res["prefill"][key]["tok_s"] = B * L / (res["prefill"][key]["step_us"] * 1e-6)
        llm.pool.free(slots)
        if rank == 0:
            _print(f"prefill {key} tp={world} ({res['prefill'][key]['tok_s']:.0f} tok/s, eager)", res["prefill"][key])
    if rank == 0 and args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    llm.close()
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
