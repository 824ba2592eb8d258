"""Why a kernel runs at the speed it does: Nsight Compute's hardware counters for one launch of each of ssmtp's hot
kernels (scan, decode state update, decode_in, the decode GEMV, the SSD scan) on model shapes.

    ncu --clock-control none --profile-from-start off --csv --page raw \
        --metrics "$(python benchmarks/ncu_kernels.py --metrics)" \
        python benchmarks/ncu_kernels.py > ncu.csv            # the calls, each once inside cudaProfilerStart/Stop
    python benchmarks/ncu_kernels.py --summarize ncu.csv --out ncu.json     # per kernel: time, DRAM / SM throughput,
                                                                            # occupancy, the top warp stall reasons

Clocks are left as they are (--clock-control none). Run by benchmarks/run_gpu.sh's "ncu" step; it needs a machine
whose runtime lets ncu read the counters (device/KINDS.md). Each case first runs once outside the profiled range
(allocation and the occupancy caches warm), then once inside it. --filter picks cases by label substring.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import sys

import torch


def cases():
    """(label, fn) pairs: one op call each, on mamba-2.8b / zamba2-2.7b shapes (bf16)."""
    import ssmtp.ops as ops

    dt = torch.bfloat16
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    rnd = lambda *s, sc=1.0: (torch.randn(*s, device=dev, generator=g) * sc).to(dt)  # noqa: E731
    d, N, R, H = 5120, 16, 160, 2560
    A = -(torch.rand(d, N, device=dev, generator=g) + 0.5)
    Dp, bias = torch.randn(d, device=dev, generator=g), torch.randn(d, device=dev, generator=g) * 0.1
    out = []

    def scan_case(B, L):
        xz = rnd(B, L, 2 * d)
        proj = rnd(B, L, R + 2 * N)
        x, z = xz[..., :d].transpose(1, 2), xz[..., d:].transpose(1, 2)
        dtv = (rnd(B, L, d) * 0.5).transpose(1, 2)
        Bm = proj[..., R:R + N].unflatten(2, (1, N)).permute(0, 2, 3, 1)
        Cm = proj[..., R + N:].unflatten(2, (1, N)).permute(0, 2, 3, 1)
        st = torch.zeros(B, d, N, device=dev)
        return lambda: ops.selective_scan(x, dtv, A, Bm, Cm, Dp, z, bias, st, None, None, True, False)

    def step_case(B):
        x, z, dtv = rnd(B, d), rnd(B, d), rnd(B, d) * 0.5
        Bm, Cm = rnd(B, 1, N), rnd(B, 1, N)
        st = torch.randn(B + 2, d, N, device=dev)
        idx = torch.randperm(B + 2, device=dev)[:B].to(torch.int32)
        return lambda: ops.selective_state_update(x, dtv, A, Bm, Cm, Dp, z, bias, st, idx, True)

    def decode_in_case(M):
        res, add = torch.randn(M, H, device=dev, generator=g), rnd(M, H)
        nw, w = rnd(H, sc=0.1) + 1, rnd(2 * d, H, sc=H ** -0.5)
        cw, cb, cs = rnd(d, 4, sc=0.5), rnd(d), rnd(M, d, 4)
        return lambda: ops.mamba_decode_in(res, add, nw, w, None, cw, cb, cs, None, 1e-5, True)

    def linear_case(M, K, Nout):
        x, w = rnd(M, K), rnd(Nout, K, sc=K ** -0.5)
        return lambda: ops.linear_small(x, w, None)

    def ssd_case(B, L):
        nh, hd, Ns = 80, 64, 64
        x, z, dtv = rnd(B, L, nh, hd), rnd(B, L, nh, hd), rnd(B, L, nh) * 0.5
        bc = rnd(B, L, 2 * Ns)
        Bm, Cm = bc[..., :Ns].unflatten(-1, (1, Ns)), bc[..., Ns:].unflatten(-1, (1, Ns))
        Ah = -torch.rand(nh, device=dev, generator=g) - 0.1
        Dh, bh = torch.randn(nh, device=dev, generator=g), torch.randn(nh, device=dev, generator=g) * 0.5
        st = torch.zeros(B, nh, hd, Ns, device=dev)
        return lambda: ops.ssd_scan(x, dtv, Ah, Bm, Cm, Dh, z, bh, st, None, None, True, False, 256, 0.0,
                                    float("inf"))

    out.append(("mamba-2.8b scan B=8 L=2048", lambda: scan_case(8, 2048)))
    out.append(("mamba-2.8b scan B=1 L=2048", lambda: scan_case(1, 2048)))
    out.append(("mamba-2.8b step B=64", lambda: step_case(64)))
    out.append(("mamba-2.8b step B=256", lambda: step_case(256)))
    out.append(("mamba-2.8b decode_in M=1", lambda: decode_in_case(1)))
    out.append(("mamba-2.8b out_proj M=1", lambda: linear_case(1, d, H)))
    out.append(("mamba-2.8b x_proj M=1", lambda: linear_case(1, d, R + 2 * N)))
    if hasattr(ops, "ssd_cuda_supports"):
        out.append(("zamba2-2.7b ssd B=8 L=2048", lambda: ssd_case(8, 2048)))
    return out


def run(flt: str) -> None:
    chosen = [(label, make) for label, make in cases() if not flt or any(f and f in label for f in flt.split(","))]
    fns = []
    for label, make in chosen:
        fn = make()
        fn()  # warm: allocations, occupancy caches, lazy module state
        fns.append((label, fn))
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    for label, fn in fns:
        torch.cuda.nvtx.range_push(label)
        fn()
        torch.cuda.synchronize()
        torch.cuda.nvtx.range_pop()
    torch.cuda.profiler.stop()
    print("# ncu_kernels: profiled " + "; ".join(label for label, _ in fns), file=sys.stderr)


# Counters asked of ncu (--page raw --csv --metrics ...); the stall reasons come as a regex (every
# smsp__average_warps_issue_stalled_<reason>_per_issue_active.ratio ncu knows: warps stalled for that reason per issued
# instruction, the breakdown of "cycles per issued instruction").
METRICS = [
    "gpu__time_duration.sum",
    "dram__bytes.sum",
    "dram__throughput.avg.pct_of_peak_sustained_elapsed",
    "sm__throughput.avg.pct_of_peak_sustained_elapsed",
    "sm__warps_active.avg.pct_of_peak_sustained_active",
    "smsp__issue_active.avg.pct_of_peak_sustained_active",
    "sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active",
    "launch__registers_per_thread",
    "launch__block_size",
    "launch__grid_size",
    "launch__occupancy_limit_registers",
    "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\\.ratio",
]
STALL_PREFIX, STALL_SUFFIX = "smsp__average_warps_issue_stalled_", "_per_issue_active.ratio"


def ncu_metrics_arg() -> str:
    return ",".join(METRICS)


def summarize(path: str) -> dict:
    """One entry per profiled launch, in order: the plain counters above, and the stall reasons sorted (top 6)."""
    with open(path, newline="") as f:
        lines = [ln for ln in f if ln.startswith('"')]  # ncu prints its own '==PROF==' lines around the CSV
    rows = list(csv.reader(lines))
    if len(rows) < 2 or not rows[0]:
        return {"meta": {"source": os.path.basename(path)}, "launches": []}
    head = rows[0]
    id_col = head.index("ID") if "ID" in head else 0
    if rows[1][id_col] == "":  # the units row (ncu prints one unless told --print-units base ... or not at all)
        units, data = rows[1], rows[2:]
    else:
        units, data = [""] * len(head), rows[1:]
    out = []
    for r in data:
        rec = dict(zip(head, r))
        k = {"kernel": rec.get("Kernel Name", "?")[:120], "metrics": {}, "stalls": {}}
        for name, unit, val in zip(head, units, r):
            if "__" not in name:
                continue
            try:
                v = float(val.replace(",", ""))
            except ValueError:
                continue
            if name.startswith(STALL_PREFIX) and name.endswith(STALL_SUFFIX):
                k["stalls"][name[len(STALL_PREFIX):-len(STALL_SUFFIX)]] = v
            else:
                k["metrics"][name + (f" [{unit}]" if unit else "")] = v
        k["top_stalls"] = sorted(k.pop("stalls").items(), key=lambda kv: -kv[1])[:6]
        out.append(k)
    return {"meta": {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(), "source": os.path.basename(path),
                     "git_commit": os.environ.get("SSMTP_GIT_COMMIT", "unknown")},
            "launches": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--filter", default="", help="only cases whose label contains one of these (comma-separated)")
    ap.add_argument("--summarize", default=None, help="an ncu --csv --page details file: write the summary instead")
    ap.add_argument("--out", default=None, help="summary JSON path (with --summarize)")
    ap.add_argument("--metrics", action="store_true", help="print the --metrics argument for ncu and exit")
    args = ap.parse_args()
    if args.metrics:
        print(ncu_metrics_arg())
        return
    if args.summarize:
        s = summarize(args.summarize)
        for k in s["launches"]:
            m = k["metrics"]
            print(k["kernel"][:100])
            print("    " + " ".join(f"{n.split('.')[0]}={v:g}" for n, v in m.items()))
            print("    stalls: " + ", ".join(f"{n} {v:g}" for n, v in k["top_stalls"]))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(s, f, indent=1)
        return
    if not torch.cuda.is_available():
        sys.exit("ncu_kernels: needs a CUDA GPU")
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the checkout's ssmtp
    run(args.filter)


if __name__ == "__main__":
    main()
