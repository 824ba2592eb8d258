"""Where a prefix hit's time to first token goes: host time before the prefill graph starts, the graph on the GPU, and
the rest (the wait for the first token, saving the prompt's states into the prefix cache, building the output).

    python benchmarks/ttft_breakdown.py --out ttft.json                     # mamba-2.8b, 8192-token prompts, 90% shared
    python benchmarks/ttft_breakdown.py --max-batch 256 --max-prefill-tokens 65536   # the engine bench's LLM sizes

Same protocol as the engine bench's TTFT section (ssmtp/engine/bench.py): a cold prompt, then for a fresh shared
prefix one prompt that fills the cache, one sibling (the branch point is learnt), and the timed hit. Each timed hit
also splits its wall time: the engine's CUDA graph replay is wrapped (CUDA events around it, host clock at its call),
so lead = host time from generate() to the replay, graph = the replay's GPU time, rest = wall - lead - graph. One
more hit runs under torch.profiler for its kernels by GPU time. CUDA only (the split needs the prefill graphs).
--stamps also records the host clock at entry and return of the engine's steps inside each timed hit (request
building, admission, prefix lookup / restore / save, the graph call, sampling, the output), medians in ms from
generate()'s start: where the lead and the rest go, without a profiler's overhead.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ssmtp.engine.bench import _git_commit  # noqa: E402
from ssmtp.engine.llm import LLM  # noqa: E402


class _ReplayTimer:
    """Wraps torch.cuda.CUDAGraph.replay while armed: host time at the call and CUDA events around the replay."""

    def __init__(self):
        self.armed = False
        self.t_in = None
        self._orig = torch.cuda.CUDAGraph.replay
        timer = self

        def replay(graph):
            if not timer.armed:
                return timer._orig(graph)
            timer.t_in = time.perf_counter()
            timer.e0.record()
            timer._orig(graph)
            timer.e1.record()

        torch.cuda.CUDAGraph.replay = replay

    def arm(self):
        self.e0, self.e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        self.t_in, self.armed = None, True

    def close(self):
        torch.cuda.CUDAGraph.replay = self._orig


class _Stamps:
    """Wraps engine methods while armed: host clock at each call's entry and return (perf_counter), so a hit's host
    timeline can be read off (name, entry, return) rows relative to generate()'s start."""

    def __init__(self, targets):
        self.rows, self.armed, self._orig = [], False, []
        for owner, name in targets:
            f = getattr(owner, name)
            self._orig.append((owner, name, f))
            setattr(owner, name, self._wrap(f, f"{owner.__name__}.{name}"))

    def _wrap(self, f, label):
        stamps = self

        def wrapped(*a, **k):
            if not stamps.armed:
                return f(*a, **k)
            t = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                stamps.rows.append((label, t, time.perf_counter()))

        return wrapped

    def close(self):
        for owner, name, f in self._orig:
            setattr(owner, name, f)


def _kernels(prof, top: int) -> dict:
    ev = [e for e in prof.key_averages() if getattr(e, "self_device_time_total", 0) > 0]
    ev.sort(key=lambda e: -e.self_device_time_total)
    rows = [{"name": e.key[:90], "us": round(e.self_device_time_total, 1), "calls": e.count} for e in ev]
    return {"total_us": round(sum(r["us"] for r in rows), 1), "top": rows[:top]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mamba-2.8b", help="preset, HF directory or hub id")
    ap.add_argument("--prompt-len", type=int, default=8192)
    ap.add_argument("--hit", type=float, default=0.9, help="fraction of the prompt shared with earlier prompts")
    ap.add_argument("--reps", type=int, default=7, help="timed cold prompts and hits (medians)")
    ap.add_argument("--prefix-interval", type=int, default=512)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-prefill-tokens", type=int, default=None, help="default: the prompt length")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON file to write")
    ap.add_argument("--host-profile", type=int, default=0, metavar="N",
                    help="also run one more hit under cProfile and report its N most expensive host functions "
                         "(own time), with the time from generate() to the graph replay")
    ap.add_argument("--stamps", action="store_true",
                    help="also time the engine's host steps inside each timed hit (entry and return of request "
                         "building, admission, prefix restore and save, the graph call, sampling, retiring) and "
                         "report their medians, in ms from generate()'s start")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("ttft_breakdown: needs a CUDA device (the split times the engine's prefill graph)", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    L = args.prompt_len
    P = int(round(args.hit * L))
    llm = LLM(args.model, device=dev, dtype=torch.bfloat16, max_batch=args.max_batch,
              prefix_interval=args.prefix_interval, prefix_cache_memory=4 << 30,
              max_prefill_tokens=args.max_prefill_tokens or L, progress=False)
    llm.warmup()
    rng = np.random.default_rng(args.seed)
    V = llm.vocab_size

    def prompt(n):
        return rng.integers(3, V, n).tolist()

    def timed(fn):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t

    def siblings():  # a fresh shared prefix: one prompt fills the cache, one sibling teaches the branch point
        pre = prompt(P)
        for _ in range(2):
            llm.generate([pre + prompt(L - P)], max_new_tokens=1, ignore_eos=True)
        return [pre + prompt(L - P)]

    llm.generate([prompt(L)], max_new_tokens=1, ignore_eos=True, use_prefix_cache=False)  # warm-up
    rt = _ReplayTimer()
    stamps = None
    if args.stamps:
        from ssmtp.engine.graphs import GraphPrefill
        from ssmtp.engine.prefix_cache import PrefixCache

        stamps = _Stamps([(LLM, "generate"), (LLM, "step"), (LLM, "_submit"), (LLM, "_try_admit"),
                          (PrefixCache, "lookup"), (PrefixCache, "restore"), (LLM, "_prefill_step"),
                          (GraphPrefill, "run"), (PrefixCache, "save"), (LLM, "_sample"), (LLM, "_accept"),
                          (LLM, "_retire")])
    cold, hit, parts, timeline = [], [], [], []
    try:
        for _ in range(args.reps):
            q = [prompt(L)]
            cold.append(timed(lambda: llm.generate(q, max_new_tokens=1, ignore_eos=True)))
            q = siblings()
            rt.arm()
            if stamps:
                stamps.rows, stamps.armed = [], True
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = llm.generate(q, max_new_tokens=1, ignore_eos=True)
            torch.cuda.synchronize()
            wall = time.perf_counter() - t0
            rt.armed = False
            if stamps:
                stamps.armed = False
                timeline.append([(n, a - t0, b - t0) for n, a, b in sorted(stamps.rows, key=lambda r: r[1])]
                                + [("CUDAGraph.replay", rt.t_in - t0, rt.t_in - t0), ("end", wall, wall)])
            hit.append(wall)
            if rt.t_in is None or out[0].cached_tokens != P:
                raise RuntimeError(f"the hit did not run as one prefill graph resuming at {P} tokens "
                                   f"(cached {out[0].cached_tokens}, replayed: {rt.t_in is not None})")
            g = rt.e0.elapsed_time(rt.e1) / 1e3
            parts.append({"lead_s": rt.t_in - t0, "graph_gpu_s": g, "rest_s": wall - (rt.t_in - t0) - g})
    finally:
        rt.close()
        if stamps:
            stamps.close()
    q = siblings()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        llm.generate(q, max_new_tokens=1, ignore_eos=True)
        torch.cuda.synchronize()
    host = None
    if args.host_profile:  # one more hit under cProfile: where the host time before (and after) the replay goes
        import cProfile
        import pstats

        q = siblings()
        torch.cuda.synchronize()
        rt = _ReplayTimer()
        rt.arm()
        pr = cProfile.Profile()
        t0 = time.perf_counter()
        pr.enable()
        llm.generate(q, max_new_tokens=1, ignore_eos=True)
        torch.cuda.synchronize()
        pr.disable()
        wall = time.perf_counter() - t0
        rt.armed = False
        st = pstats.Stats(pr)
        rows = sorted(((v[2], v[3], v[1], f"{os.path.basename(k[0])}:{k[1]}:{k[2]}") for k, v in st.stats.items()),
                      reverse=True)[:args.host_profile]
        host = {"wall_s": wall, "lead_s": (rt.t_in - t0) if rt.t_in is not None else None,
                "note": "cProfile slows Python calls: compare its rows with each other, not with the timed hits",
                "top_own_time": [{"func": f, "own_s": own, "cum_s": cum, "calls": n} for own, cum, n, f in rows]}
        rt.close()
    res = {"meta": {"commit": _git_commit(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                    "device": torch.cuda.get_device_name(dev), "torch": torch.__version__, "model": args.model,
                    "prompt_len": L, "shared_prefix": P, "reps": args.reps, "max_batch": args.max_batch,
                    "max_prefill_tokens": args.max_prefill_tokens or L},
           "cold_s": float(np.median(cold)), "hit_s": float(np.median(hit)),
           "hit_over_cold": float(np.median(hit) / np.median(cold)),
           "hit_split_median_s": {k: float(np.median([p[k] for p in parts])) for k in parts[0]},
           "all": {"cold_s": cold, "hit_s": hit, "hit_split_s": parts},
           "hit_kernels": _kernels(prof, 16)}
    if host:
        res["hit_host_profile"] = host
    if timeline and all([r[0] for r in t] == [r[0] for r in timeline[0]] for t in timeline):
        res["hit_timeline_ms"] = [{"step": n, "enter": round(float(np.median([t[i][1] for t in timeline])) * 1e3, 4),
                                   "return": round(float(np.median([t[i][2] for t in timeline])) * 1e3, 4)}
                                  for i, (n, _, _) in enumerate(timeline[0])]
    elif timeline:
        res["hit_timeline_ms"] = {"note": "the hits took different host paths", "first": timeline[0]}
    s = res["hit_split_median_s"]
    print(f"cold {res['cold_s'] * 1e3:.2f} ms, hit {res['hit_s'] * 1e3:.2f} ms, hit/cold {res['hit_over_cold']:.4f}; "
          f"hit = lead {s['lead_s'] * 1e3:.3f} + graph {s['graph_gpu_s'] * 1e3:.3f} + rest {s['rest_s'] * 1e3:.3f} ms")
    for r in res["hit_kernels"]["top"]:
        print(f"  {r['us']:9.1f} us  {r['calls']:4d}  {r['name']}")
    if isinstance(res.get("hit_timeline_ms"), list):
        print("host timeline of a hit (medians, ms from generate()'s start): step, entry, return")
        for r in res["hit_timeline_ms"]:
            print(f"  {r['enter']:8.3f} {r['return']:8.3f}  {r['step']}")
    if host:
        print(f"host profile (cProfile): wall {host['wall_s'] * 1e3:.2f} ms, lead {(host['lead_s'] or 0) * 1e3:.2f} ms")
        for r in host["top_own_time"]:
            print(f"  own {r['own_s'] * 1e3:8.3f} ms  cum {r['cum_s'] * 1e3:8.3f} ms  {r['calls']:6d}  {r['func']}")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
