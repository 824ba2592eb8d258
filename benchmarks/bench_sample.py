"""Benchmark of token sampling on the GPU: the ssmtp::sample kernel against the samplers it is measured beside,
on the same logits in the same run.

    python benchmarks/bench_sample.py [--out benchmarks/results/sample-<device>.json] [--quick]

Rows: batch n = 1, 8, 64, 256 of fp32 logits (what the engine's decode graphs return) at the vocabulary sizes of
mamba-2.8b (50280) and falcon-mamba-7b (65024); settings greedy, temperature 0.8, top-k 50, top-p 0.95, and top-k 50
+ top-p 0.95 (temperature 0.8 for all but greedy). Per row:
  ssmtp      ops.sample, eager (Python dispatch included) and one call inside a CUDA graph (the kernel alone),
             also with one block per row forced (SSMTP_SAMPLE_CLUSTER=1; by default a row takes a cluster of up to
             8 blocks while the rows leave SMs idle);
  sort       the engine's sampler before the kernel: pure torch, a full sort per row for top-k / top-p, and
             host-side branches on device values (bool(tensor.any())), kept here as a baseline;
  hf         transformers' logits warpers (TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper) + softmax +
             torch.multinomial, what HF generate() runs per step;
  argmax     torch's argmax over the same logits: the cost of a greedy step's token choice.
Floor: reading the logits once at 4.26 TB/s (the device-to-device copy rate, shared/reference/measured-h200.md).
Validation first: the CUDA kernel's tokens against the C CPU op's on the same logits (every row, every setting).
Timing: CUDA events around each call, median of --iters calls after 3 warm-up calls.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import ssmtp.ops as ops  # noqa: E402
from bench_ops import capture, git_commit, time_eager  # noqa: E402  (benchmarks/ is on sys.path when this script runs)
from ssmtp.ref import gumbel_noise  # noqa: E402

HBM_BPS = 4.26e12
VOCABS = {"mamba-2.8b": 50280, "falcon-mamba-7b": 65024}
SETTINGS = {"greedy": (0.0, 0, 1.0), "temperature 0.8": (0.8, 0, 1.0), "top-k 50": (0.8, 50, 1.0),
            "top-p 0.95": (0.8, 0, 0.95), "top-k 50 + top-p 0.95": (0.8, 50, 0.95)}


def sort_sampler(logits, temperature, top_k, top_p, seeds, steps):
    """The engine's pure-torch sampler before ssmtp::sample (a baseline): Gumbel-max over a sorted row."""
    n, V = logits.shape
    logits = logits.float()
    greedy_tok = logits.argmax(-1)
    rand = temperature > 0
    if not bool(rand.any()):
        return greedy_tok
    t = torch.where(rand, temperature, torch.ones_like(temperature))
    scaled = logits / t[:, None]
    g = gumbel_noise(seeds, steps, V)
    if not (bool(((top_k > 0) & (top_k < V)).any()) or bool((top_p < 1.0).any())):
        tok = (scaled + g).argmax(-1)
    else:
        sv, si = torch.sort(scaled, dim=-1, descending=True)
        rank = torch.arange(V, device=logits.device)[None, :]
        keep = rank < torch.where(top_k > 0, top_k, torch.full_like(top_k, V))[:, None]
        probs = torch.softmax(sv.masked_fill(~keep, float("-inf")), dim=-1)
        keep &= (torch.cumsum(probs, dim=-1) - probs) < top_p[:, None]
        keep[:, 0] = True
        z = sv.masked_fill(~keep, float("-inf")) + g.gather(1, si)
        tok = si.gather(1, z.argmax(-1, keepdim=True))[:, 0]
    return torch.where(rand, tok, greedy_tok)


def hf_sampler(T, k, p):
    from transformers.generation.logits_process import (LogitsProcessorList, TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper)
    warpers = LogitsProcessorList()
    if T > 0:
        warpers.append(TemperatureLogitsWarper(T))
    if k > 0:
        warpers.append(TopKLogitsWarper(k))
    if p < 1:
        warpers.append(TopPLogitsWarper(p))

    def run(logits):
        if T == 0:
            return logits.argmax(-1)
        s = warpers(None, logits)
        return torch.multinomial(torch.softmax(s, -1), 1)[:, 0]
    return run


def time_ms(fn, iters):
    return time_eager(fn, iters) * 1e3


def graph_ms(fn, iters):
    return time_ms(capture(fn).replay, iters)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/sample-<device>.json)")
    ap.add_argument("--quick", action="store_true", help="n = 1, 64 and the mamba-2.8b vocabulary only")
    ap.add_argument("--iters", type=int, default=30, help="timed calls per measurement (median)")
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers warpers")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_sample: needs a CUDA device", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(dev)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"sample-{name.split()[-1].lower()}.json")
    batches = [1, 64] if args.quick else [1, 8, 64, 256]
    vocabs = {"mamba-2.8b": VOCABS["mamba-2.8b"]} if args.quick else VOCABS
    g = torch.Generator(device=dev).manual_seed(0)
    rows = []
    for model, V in vocabs.items():
        for n in batches:
            logits = torch.randn(n, V, device=dev, generator=g) * 3
            seeds = torch.arange(n, device=dev, dtype=torch.int64) * 7919 + 1
            steps = torch.full((n,), 5, device=dev, dtype=torch.int64)
            for sname, (T, k, p) in SETTINGS.items():
                temp = torch.full((n,), T, device=dev)
                topk = torch.full((n,), k, device=dev, dtype=torch.int64)
                topp = torch.full((n,), p, device=dev)
                a = (logits, temp, topk, topp, seeds, steps)
                cuda_tok = ops.sample(*a)
                cpu_tok = ops.sample(*(t.cpu() for t in a))
                agree = float((cuda_tok.cpu() == cpu_tok).float().mean())
                r = {"model": model, "V": V, "n": n, "setting": sname, "cuda_vs_cpu_agreement": agree,
                     "floor_us": n * V * 4 / HBM_BPS * 1e6}
                r["ssmtp_us"] = time_ms(lambda: ops.sample(*a), args.iters) * 1e3
                r["ssmtp_graph_us"] = graph_ms(lambda: ops.sample(*a), args.iters) * 1e3
                os.environ["SSMTP_SAMPLE_CLUSTER"] = "1"  # one block per row (the launcher's choice from 66 rows)
                try:
                    r["ssmtp_one_block_graph_us"] = graph_ms(lambda: ops.sample(*a), args.iters) * 1e3
                finally:
                    del os.environ["SSMTP_SAMPLE_CLUSTER"]
                r["sort_us"] = time_ms(lambda: sort_sampler(*a), args.iters) * 1e3
                r["argmax_us"] = time_ms(lambda: logits.argmax(-1), args.iters) * 1e3
                if not args.no_hf:
                    hf = hf_sampler(T, k, p)
                    r["hf_us"] = time_ms(lambda: hf(logits), args.iters) * 1e3
                r["sort_over_ssmtp"] = r["sort_us"] / r["ssmtp_us"]
                r["ssmtp_graph_over_floor"] = r["ssmtp_graph_us"] / r["floor_us"]
                rows.append(r)
                print(f"[sample] {model} n={n:3d} {sname:22s} ssmtp {r['ssmtp_us']:8.1f} us (graph "
                      f"{r['ssmtp_graph_us']:7.1f}, 1 block {r['ssmtp_one_block_graph_us']:7.1f}, "
                      f"floor {r['floor_us']:6.1f})  sort {r['sort_us']:8.1f}  "
                      + (f"hf {r['hf_us']:8.1f}  " if "hf_us" in r else "")
                      + f"argmax {r['argmax_us']:6.1f}  cuda==cpu {agree:.3f}", flush=True)
    meta = {"git_commit": git_commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(), "device": name,
            "torch": torch.__version__, "logits": "fp32 randn * 3", "iters": args.iters}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    write_plot(rows, meta, out)
    bad = [r for r in rows if r["cuda_vs_cpu_agreement"] < 1.0]
    if bad:
        print(f"bench_sample: CUDA and CPU tokens differ in {len(bad)} rows", file=sys.stderr)
        return 1
    return 0


def write_plot(rows, meta, out):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        for sname, color in zip(SETTINGS, ["k", "tab:blue", "tab:orange", "tab:green", "tab:red"]):
            rs = [r for r in rows if r["model"] == model and r["setting"] == sname]
            ns = [r["n"] for r in rs]
            ax.plot(ns, [r["ssmtp_us"] for r in rs], "-o", color=color, label=f"ssmtp {sname}")
            ax.plot(ns, [r["sort_us"] for r in rs], ":x", color=color, label=f"torch sort {sname}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("rows sampled at once")
        ax.set_ylabel("us per call (eager)")
        ax.set_title(f"{model} (V={rows[[r['model'] for r in rows].index(model)]['V']})")
        ax.legend(fontsize=6)
    fig.suptitle(f"token sampling, {meta['device']}, commit {meta['git_commit'][:8]}")
    fig.tight_layout()
    fig.savefig(os.path.splitext(out)[0] + ".png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
