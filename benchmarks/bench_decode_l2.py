"""Decode step with and without L2 prefetch plans (SSMTP_DECODE_L2, ssmtp/engine/runner.py: parse_l2_plan), side by
side in one process: one model, one CUDA graph per (plan, decode mode, batch), replays interleaved round by round so
that clock and thermal drift fall on every plan alike. Also checks that every plan's logits are bitwise those of the
plan without prefetches from the same states (a prefetch is a hint: any difference is a bug).

    python benchmarks/bench_decode_l2.py --model mamba-2.8b --batches 1,2,8,64 \\
        --plans "0;out;out,xp;out,in:8;out,in:16" --out benchmarks/results/decode-l2.json

Decode modes (--modes): step (the default path: cuBLAS in_proj, dt_proj fused into the state update at batch <= 4)
and in (also ops.mamba_decode_in at batch <= 2, SSMTP_DECODE_FUSED=1). Floor: weight bytes + the states read and
written, at the device-to-device copy rate (4.26 TB/s on H200).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ssmtp.engine.bench import HBM_BPS, _decode_weight_bytes, _git_commit  # noqa: E402


def _probe(dev) -> dict:
    """GEMV time by where its weight lives: HBM (L2 flushed by writing 256 MB), L2 after ops.l2_prefetch (+ sync),
    L2 after a previous read. Medians over 20 tries, CUDA events around the GEMV alone."""
    from ssmtp import ops

    w = torch.randn(2560, 5120, device=dev, dtype=torch.bfloat16)
    x = torch.randn(1, 5120, device=dev, dtype=torch.bfloat16)
    junk = torch.empty(256 << 20, dtype=torch.uint8, device=dev)
    out = {}
    for how in ("hbm", "prefetched", "reread"):
        ts = []
        for _ in range(20):
            junk.fill_(1)
            if how == "prefetched":
                ops.l2_prefetch(w)
            elif how == "reread":
                ops.linear(x, w)
            torch.cuda.synchronize()
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            ops.linear(x, w)
            e1.record()
            e1.synchronize()
            ts.append(e0.elapsed_time(e1) * 1e3)
        out[how + "_us"] = statistics.median(ts)
    out["weight_MB"] = w.numel() * 2 / 1e6
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mamba-2.8b", help="preset or HF directory (default mamba-2.8b)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--batches", default="1,2,8,64", help="comma-separated decode batch sizes")
    ap.add_argument("--plans", default="0;out;out,xp;out,in:8;out,in:16",
                    help="';'-separated SSMTP_DECODE_L2 values; the first is the baseline of the ratios")
    ap.add_argument("--modes", default="step,in", help="decode modes: step, in (see above)")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (median over rounds)")
    ap.add_argument("--replays", type=int, default=30, help="graph replays per round")
    ap.add_argument("--out", default=None, help="JSON output path")
    ap.add_argument("--probe", action="store_true",
                    help="also time one out_proj-shaped GEMV (ops.linear, 2560 x 5120 bf16) from HBM (L2 flushed), "
                         "after an ops.l2_prefetch of its weight, and after a previous read of it")
    args = ap.parse_args(argv)

    from ssmtp.engine import runner as runner_mod
    from ssmtp.engine.graphs import GraphDecoder
    from ssmtp.engine.launch import init_distributed, shutdown
    from ssmtp.engine.llm import LLM

    world, rank, dev = init_distributed()
    if dev.type != "cuda":
        print("bench_decode_l2.py needs a CUDA device", file=sys.stderr)
        return 2
    batches = [int(b) for b in args.batches.split(",") if b]
    plans = [p.strip() for p in args.plans.split(";")]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in ("step", "in"):
            raise SystemExit(f"--modes: unknown mode {m!r} (step, in)")
    if args.probe:
        res_probe = _probe(dev)
        print(f"probe: {res_probe}", flush=True)
    llm = LLM(args.model, device=dev, dtype=getattr(torch, args.dtype), max_batch=max(batches), cuda_graphs=False,
              prefill_graphs=False, progress=False)
    runner, pool = llm.runner, llm.pool
    if not hasattr(runner, "l2_plan"):
        raise SystemExit(f"{args.model}: its runner has no L2 prefetch plans (Mamba / Falcon-Mamba only)")
    V = llm.vocab_size
    wbytes = _decode_weight_bytes(llm)
    slot_bytes = pool.slot_bytes
    g = torch.Generator().manual_seed(0)
    res = {"meta": {"commit": os.environ.get("SSMTP_GIT_COMMIT") or _git_commit(),
                    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "device": torch.cuda.get_device_name(dev), "tp": world, "model": args.model, "dtype": args.dtype,
                    "torch": torch.__version__, "hbm_Bps": HBM_BPS, "rounds": args.rounds, "replays": args.replays},
           "cases": []}
    saved_mode = runner_mod._DECODE_FUSED
    for B in batches:
        slots = pool.allocate(B)
        ids = torch.randint(3, V, (B,), generator=g).tolist()
        # non-zero states to start every plan's checked step from
        for t in pool.tensors.values():
            t.normal_()
        snap = {k: v.clone() for k, v in pool.tensors.items()}
        graphs = {}
        for mode in modes:
            if mode == "in" and B > runner_mod.DECODE_IN_MAX_BATCH:
                continue
            for plan in plans:
                runner_mod._DECODE_FUSED = "1" if mode == "in" else "step"
                runner.l2_plan = runner_mod.parse_l2_plan(plan)
                dec = GraphDecoder(runner, pool, B, [B])
                dec.capture(B)
                dec.set_inputs(ids, slots)
                for k, v in pool.tensors.items():
                    v.copy_(snap[k])
                dec.replay(B)
                logits = dec._graphs[B][1][:B].clone()
                graphs[(mode, plan)] = (dec, logits)
        runner_mod._DECODE_FUSED = saved_mode
        times = {k: [] for k in graphs}
        for k, (dec, _) in graphs.items():  # warm-up
            for _ in range(5):
                dec.replay(B)
        torch.cuda.synchronize()
        for _ in range(args.rounds):
            for k, (dec, _) in graphs.items():
                e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                e0.record()
                for _ in range(args.replays):
                    dec.replay(B)
                e1.record()
                e1.synchronize()
                times[k].append(e0.elapsed_time(e1) / args.replays)
        floor_ms = (wbytes + 2 * B * slot_bytes) / HBM_BPS * 1e3
        for mode in modes:
            base = (mode, plans[0])
            if base not in graphs:
                continue
            base_ms = statistics.median(times[base])
            for plan in plans:
                k = (mode, plan)
                ms = statistics.median(times[k])
                same = bool(torch.equal(graphs[k][1], graphs[base][1]))
                case = {"B": B, "mode": mode, "plan": plan, "step_ms": ms, "all_ms": times[k], "floor_ms": floor_ms,
                        "over_floor": ms / floor_ms, "vs_baseline": ms / base_ms, "logits_identical": same}
                res["cases"].append(case)
                print(f"B={B:4d} {mode:4s} {plan or '0':14s} {ms:7.3f} ms  {ms / floor_ms:5.2f}x floor  "
                      f"{ms / base_ms:5.3f}x baseline  identical={same}", flush=True)
        for dec, _ in graphs.values():
            dec._graphs.clear()
        del graphs, snap
        pool.free(slots)
        torch.cuda.empty_cache()
    if args.probe:
        res["probe"] = res_probe
    bad = [c for c in res["cases"] if not c["logits_identical"]]
    res["all_identical"] = not bad
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    llm.close()
    shutdown()
    if bad:
        print(f"FAILED: {len(bad)} plan(s) changed the logits", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
