"""End-to-end effect of the all-reduce backend (bf16 default vs NCCL, custom, quantized int8 / fp8) on the engine.

    torchrun --nproc_per_node 2 benchmarks/bench_quant_ablation.py --out benchmarks/results/quant-ablation-h200-tp2.json
    torchrun --nproc_per_node 2 benchmarks/bench_quant_ablation.py --model tiny --quick --device cpu   # CPU dry run

One engine per backend (ssmtp.LLM with Communicator(backend=...): the same choice SSMTP_ALLREDUCE makes, which is
therefore unset for this run), built, validated, warmed up and timed in turn on the same workloads:
  prefill   BxP prompts, one generated token (prefill-heavy: 64 out_proj all-reduces of tokens x hidden per forward)
  mixed     long and short prompts in one submission: chunked prefill of the long ones interleaved with the decode
            steps of the short ones (what a serving engine sees)
  decode    a decode-heavy batch (small all-reduces inside CUDA graphs), for contrast
tok/s = (prompt + generated tokens) / wall time of the generate() call, best of --reps after an untimed warm-up run
of the same workload. Change = tok/s / tok/s of the baseline backend (auto, the bf16 default) - 1.
Validation before timing: greedy tokens of each backend vs the baseline on a few short prompts (on a random bf16
model a quantized sum may change a token; the accuracy that counts is measured on a trained checkpoint by
benchmarks/eval_accuracy.py, results/accuracy-*.json, which benchmarks/report.py prints next to these figures).
Writes JSON + PNG (rank 0). Each backend is guarded: an error is recorded and the next backend runs.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from bench_throughput import Run, _error, _plt, _prompts  # noqa: E402
from ssmtp.engine.bench import _git_commit  # noqa: E402

BACKENDS = "auto,nccl,custom,quant-int8,quant-fp8"
# workload -> list of request groups (count, prompt, output); --quick and the tiny model use smaller ones
WORKLOADS = {
    "full": {"prefill": [(32, 2048, 1)], "mixed": [(16, 2048, 32), (32, 256, 128)], "decode": [(64, 512, 128)]},
    "quick": {"prefill": [(32, 2048, 1)], "mixed": [(8, 2048, 16), (16, 256, 64)]},
    "tiny": {"prefill": [(8, 256, 1)], "mixed": [(2, 256, 8), (4, 32, 16)], "decode": [(8, 32, 16)]},
}
TARGET = 0.10  # quant-int8 end-to-end gain on the prefill-heavy workloads (issue 7)


def describe(groups) -> str:
    return " + ".join(f"{n}x{p}" + (f"->{o}" if o > 1 else "") for n, p, o in groups)


def time_workload(run: Run, llm, groups, g, reps: int) -> dict:
    V = llm.vocab_size

    def submit():
        ps, outs = [], []
        for n, p, o in groups:
            ps += _prompts(g, n, p, V)
            outs += [o] * n
        return ps, outs

    from ssmtp import SamplingParams

    ps, os_ = submit()
    sp = [SamplingParams(max_new_tokens=o, ignore_eos=True) for o in os_]
    llm.generate(ps, sp, use_prefix_cache=False)  # warm-up: graphs, allocator, GEMM algorithms
    best = None
    for _ in range(max(1, reps)):
        ps, _ = submit()
        run.barrier()
        run.sync()
        t = time.perf_counter()
        outs = llm.generate(ps, sp, use_prefix_cache=False)
        run.sync()
        wall = time.perf_counter() - t
        best = wall if best is None else min(best, wall)
        complete = all(len(x.token_ids) == o for x, o in zip(outs, os_))
    prompt_tok = sum(n * p for n, p, _ in groups)
    gen_tok = sum(n * o for n, _, o in groups)
    return {"status": "ok" if complete else "incomplete", "wall_s": best, "tok_s": (prompt_tok + gen_tok) / best,
            "req_s": sum(n for n, _, _ in groups) / best, "prompt_tokens": prompt_tok, "generated_tokens": gen_tok}


def run(args) -> dict:
    run_ = Run(args, "ablation")
    import logging

    logging.basicConfig(level=logging.INFO if run_.rank == 0 else logging.WARNING, format="[%(name)s] %(message)s")
    from ssmtp import LLM
    from ssmtp.parallel.comm import Communicator

    env = os.environ.pop("SSMTP_ALLREDUCE", "")  # it would override every backend below
    cpu = run_.device.type == "cpu"
    if cpu and not args.model.startswith("tiny"):
        raise SystemExit(f"{args.model} is a full-size preset: on CPU ranks run --model tiny")
    dtype_name = args.dtype or ("float32" if cpu else "bfloat16")
    key = "tiny" if args.model.startswith("tiny") else ("quick" if args.quick else "full")
    wl = {k: v for k, v in WORKLOADS[key].items() if k in args.workloads.split(",")}
    backends = [b for b in args.backends.split(",") if b]
    base = backends[0]
    res: dict = {
        "meta": {"commit": _git_commit(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                 "device": torch.cuda.get_device_name(run_.device) if not cpu else "cpu", "torch": torch.__version__,
                 "tp": run_.world, "model": args.model, "dtype": dtype_name, "backends": backends, "baseline": base,
                 "quant_block": int(os.environ.get("SSMTP_QUANT_BLOCK", "32")), "reps": args.reps,
                 "allreduce_env_ignored": env, "argv": sys.argv[1:]},
        "workloads": {k: describe(v) for k, v in wl.items()}, "validation": {}, "backends": {}, "results": [],
    }
    run_.log(f"ablation tp={run_.world} {args.model} {dtype_name}, backends {backends}, workloads "
             f"{res['workloads']}" + (f" (SSMTP_ALLREDUCE={env} ignored)" if env else ""))
    max_b = max(sum(n for n, _, _ in gs) for gs in wl.values())
    vp = _prompts(torch.Generator().manual_seed(99), 4, 48, 256)
    ref_tokens = None
    for b in backends:
        if run_.over_budget():
            res["backends"][b] = {"status": "skipped", "reason": "time budget used up"}
            for w in wl:
                res["results"].append({"backend": b, "workload": w, "status": "skipped"})
            continue
        llm = comm = None
        try:
            comm = Communicator(None, backend=b)
            t = time.perf_counter()
            llm = LLM(args.model, comm=comm, device=run_.device, dtype=dtype_name, max_batch=max_b,
                      prefix_cache=False, max_prefill_tokens=args.max_prefill_tokens or None, seed=args.seed,
                      progress=False)
            res["backends"][b] = {"status": "ok", "communicator": repr(comm), "load_s": time.perf_counter() - t}
            # validation: greedy tokens against the baseline backend's
            toks = [o.token_ids for o in llm.generate(vp, max_new_tokens=16, ignore_eos=True,
                                                      use_prefix_cache=False)]
            if ref_tokens is None:
                ref_tokens = toks
            v = {"tokens_equal": toks == ref_tokens,
                 "matching_tokens": sum(x == y for a, c in zip(toks, ref_tokens) for x, y in zip(a, c))
                 / sum(len(c) for c in ref_tokens)}
            res["validation"][b] = v
            run_.log(f"{b}: {comm!r}, loaded in {res['backends'][b]['load_s']:.1f} s; greedy vs {base}: {v}")
        except Exception as e:  # noqa: BLE001
            res["backends"][b] = {"status": "error", "error": _error(e)}
            run_.log(f"{b} FAILED: {traceback.format_exc()}")
            for w in wl:
                res["results"].append({"backend": b, "workload": w, "status": "error", "error": _error(e)})
        if llm is not None:
            g = torch.Generator().manual_seed(args.seed)
            for w, groups in wl.items():
                row = {"backend": b, "workload": w, "groups": groups}
                try:
                    row.update(time_workload(run_, llm, groups, g, args.reps))
                    run_.log(f"{b} {w} ({describe(groups)}): {row['tok_s']:.0f} tok/s, {row['req_s']:.2f} req/s, "
                             f"wall {row['wall_s']:.3f} s")
                except Exception as e:  # noqa: BLE001
                    row.update(status="error", error=_error(e))
                    run_.log(f"{b} {w} FAILED: {traceback.format_exc()}")
                res["results"].append(row)
            try:
                res["backends"][b]["used"] = sorted(getattr(comm, "_used", []))
            except Exception:  # noqa: BLE001 - informational only
                pass
        if llm is not None:
            llm.close()
        llm = None
        if comm is not None:
            try:
                comm.close()
            except Exception as e:  # noqa: BLE001
                run_.log(f"{b}: close failed: {_error(e)}")
        comm = None
        run_.free_memory()
    basel = {r["workload"]: r for r in res["results"] if r["backend"] == base and r.get("status") == "ok"}
    for r in res["results"]:
        if r.get("status") == "ok" and r["workload"] in basel:
            r["change_vs_baseline"] = r["tok_s"] / basel[r["workload"]]["tok_s"] - 1
    q = [r for r in res["results"] if r["backend"] == "quant-int8" and r["workload"] in ("prefill", "mixed")
         and "change_vs_baseline" in r]
    res["targets"] = [{"target": f"quant-int8 >= +{TARGET * 100:.0f}% end to end on prefill-heavy work vs {base}",
                       "ok": bool(q) and min(r["change_vs_baseline"] for r in q) >= TARGET,
                       "detail": ", ".join(f"{r['workload']} {r['change_vs_baseline'] * 100:+.1f}%" for r in q)
                       or "not measured"}]
    res["meta"]["total_s"] = run_.elapsed()
    res["ok"] = all(r.get("status") in ("ok", "skipped") for r in res["results"])
    return res


def plot(res: dict, path: str) -> bool:
    plt = _plt()
    ok = [r for r in res["results"] if r.get("status") == "ok"]
    if plt is None or not ok:
        return False
    wl = list(res["workloads"])
    bks = res["meta"]["backends"]
    fig, ax = plt.subplots(1, len(wl), figsize=(4.6 * len(wl), 4.2), squeeze=False)
    for j, w in enumerate(wl):
        vals = [next((r for r in ok if r["backend"] == b and r["workload"] == w), None) for b in bks]
        bars = ax[0][j].bar(range(len(bks)), [v["tok_s"] if v else 0 for v in vals],
                            color=[f"C{i}" for i in range(len(bks))])
        for bar, v in zip(bars, vals):
            if v and "change_vs_baseline" in v and v["backend"] != res["meta"]["baseline"]:
                ax[0][j].annotate(f"{v['change_vs_baseline'] * 100:+.1f}%", (bar.get_x() + bar.get_width() / 2,
                                                                           bar.get_height()),
                                  ha="center", va="bottom", fontsize=8)
        ax[0][j].set_xticks(range(len(bks)), bks, rotation=30, fontsize=8)
        ax[0][j].set_ylabel("tokens/s (prompt + generated)")
        ax[0][j].set_title(f"{w}: {res['workloads'][w]}", fontsize=9)
    m = res["meta"]
    fig.suptitle(f"all-reduce backend, end to end: {m['model']} tp={m['tp']} {m['dtype']}, {m['device']}, "
                 f"commit {m['commit'][:10]}, {m['date'][:10]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def table(res: dict) -> str:
    m = res["meta"]
    lines = [f"all-reduce ablation: {m['model']} tp={m['tp']} {m['dtype']} on {m['device']} "
             f"(commit {m['commit'][:10]})"]
    for r in res["results"]:
        if r.get("status") == "ok":
            ch = r.get("change_vs_baseline")
            lines.append(f"  {r['backend']:12s} {r['workload']:8s} {r['tok_s']:12.0f} tok/s  {r['req_s']:8.2f} req/s"
                         + (f"  {ch * 100:+6.1f}% vs {m['baseline']}" if ch is not None else ""))
        else:
            lines.append(f"  {r['backend']:12s} {r['workload']:8s} {r.get('status')}: {r.get('error', '')}")
    for b, v in res["validation"].items():
        lines.append(f"  validation {b}: {v}")
    for t in res.get("targets", []):
        lines.append(f"  target {t['target']}: {'met' if t['ok'] else 'MISSED'} ({t['detail']})")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mamba-2.8b")
    ap.add_argument("--backends", default=os.environ.get("ABLATION_BACKENDS", BACKENDS),
                    help="comma-separated Communicator backends, the first is the baseline (env ABLATION_BACKENDS)")
    ap.add_argument("--workloads", default="prefill,mixed,decode", help="subset of prefill,mixed,decode")
    ap.add_argument("--quick", action="store_true", help="smaller mixed workload, no decode workload")
    ap.add_argument("--reps", type=int, default=2, help="timed repetitions per workload (best is kept)")
    ap.add_argument("--budget-s", type=float, default=float(os.environ.get("ABLATION_BUDGET_S", 0) or 0),
                    help="start no backend after this many seconds (0 = no limit; env ABLATION_BUDGET_S)")
    ap.add_argument("--max-prefill-tokens", type=int, default=0, help="engine's max_prefill_tokens (0 = default)")
    ap.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--device", default=None, help="cpu forces CPU ranks (gloo)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON path or folder (quant-ablation-tp{N}.json); PNG next to it")
    args = ap.parse_args(argv)
    from ssmtp.engine.launch import shutdown

    res: dict = {}
    try:
        res = run(args)
        if not dist.is_initialized() or dist.get_rank() == 0:
            if args.out:
                path = args.out if args.out.endswith(".json") else os.path.join(
                    args.out, f"quant-ablation-tp{res['meta']['tp']}.json")
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                with open(path, "w") as f:
                    json.dump(res, f, indent=1)
                plot(res, path[:-len(".json")] + ".png")
                print(f"[ablation] wrote {path}", flush=True)
            print(table(res), flush=True)
    finally:
        shutdown()
    return 0 if res.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
