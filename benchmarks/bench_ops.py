"""Benchmark of the CUDA SSM ops (causal conv1d, selective scan, decode state update) on a model-labelled case table,
against HBM bandwidth and against HF transformers' pure-torch path on the same inputs.

    python benchmarks/bench_ops.py [--out benchmarks/results/ops-<device>.json] [--quick] [--no-hf]

Cases: mamba-2.8b (d_inner 5120), falcon-mamba-7b (d_inner 8192), zamba-7b (d_inner 7424 = 2 mamba heads, so
ngroups 2), all N = 16; zamba2-2.7b's Mamba-2 layers through the same ops (d_inner 5120, N = 64, one A per head: as a
stride-0 per-channel view, the engine's layout, and materialised per state, "A per state"); conv width 4 with HF's 4-column conv state, bf16, at TP=1 and at the per-rank shape of TP=2
(d_inner / 2; zamba: one head per rank). Prefill L = 512, 2048, 8192, 32768 at B=1 and L = 512, 2048 at B=8;
decode B = 1, 8, 64, 256. Inputs use the model's layout: (batch, dim, seqlen) views of token-major projections.

Per case: validate a slice against the C CPU op (first/last 64 channels, the first two sequences), then time with
CUDA events: the figure reported is one call inside a captured CUDA graph of R calls that rotate over S input sets
(S * bytes >= 3 x the 60 MB L2, so L2 does not flatter small cases), median of the replays; the eager median
(Python dispatch included) is reported beside it. Bytes moved: each input read once, each output written once,
states read + written (conv: width-1 history columns read, state_len written). GB/s over 4.26 TB/s (the device-to-
device copy rate measured on this machine, shared/reference/measured-h200.md). The scan's arithmetic floor is
reported too: one ex2 per state element per step at 16/clk/SM (sm_90 MUFU), at an assumed 1.98 GHz. Decode-step
cases are also set against torch's in-place elementwise kernel (state.mul_) over the same state tensors, timed the
same way: what a tuned read-modify-write of those bytes reaches here.

Kernels side by side: every scan case is run with SSMTP_SCAN_KERNEL=loop and =chunked, every decode-step case with
SSMTP_STEP_KERNEL=block and =pipe, every conv decode case at 1, 2 and 4 channels per thread (SSMTP_CONV_CPT), on
the same input sets in the same run (the "kernel" field of each row); the scan
sweep also times the chunked kernel at 4, 8 and 16 lanes per channel (SSMTP_SCAN_P).

Also (filtered by label like the cases): the decode GEMV (ssmtp::linear_small vs cuBLAS, "mamba-2.8b tp1 out_proj
M=1", ...), the fused Mamba-1 decode kernels against the unfused ops they replace ("mamba-2.8b tp1 decode layer
M=1", ...), the fused dt_proj state update's block shapes ("mamba-2.8b tp1 dtp step M=8", ...) and the Mamba-2
SSD prefill kernel against the selective scan ("zamba2-2.7b tp1 ssd prefill B=8 L=2048", ...): see bench_linear,
bench_decode_fused, bench_dtp_shapes and bench_ssd.

HF baseline: transformers' MambaMixer.slow_forward, written out inline (discrete_A = exp(A*dt), deltaB_u, a Python
loop over time; decode: the cache path; conv: nn.Conv1d / roll-and-sum), prefill only for B*L <= 4096.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import ssmtp.ops as ops  # noqa: E402

HBM_BPS = 4.26e12        # measured device-to-device copy (read + write), shared/reference/measured-h200.md
L2_BYTES = 60e6          # H200 L2 as torch reports it
MUFU_PER_CLK_SM = 16     # ex2 results per clock per SM on sm_90
CLOCK_HZ = 1.98e9        # assumed boost clock for the arithmetic floor (not read from the device)

MODELS = {
    # name: d_inner, dstate, conv width, ngroups (zamba: mamba heads), dt_rank
    "mamba-2.8b": (5120, 16, 4, 1, 160),
    "falcon-mamba-7b": (8192, 16, 4, 1, 256),
    "zamba-7b": (7424, 16, 4, 2, 232),
    # Mamba-2 layers through the selective ops: one A per head, passed per channel as a stride-0 (d, N) view
    # (one exp per channel and step); "A per state" = the same values materialised (d, N), one exp per state element
    "zamba2-2.7b": (5120, 64, 4, 1, 80),
    "zamba2-2.7b A per state": (5120, 64, 4, 1, 80),
}
ONE_A = {"zamba2-2.7b"}  # models whose A is one value per channel (stride-0 view)
PER_HEAD_A = {"zamba2-2.7b", "zamba2-2.7b A per state"}  # A constant over a head's states (either layout)
PREFILL = [(1, 512), (1, 2048), (1, 8192), (1, 32768), (8, 512), (8, 2048)]
DECODE = [1, 8, 64, 256]
DTYPE = torch.bfloat16
ESZ = 2
# Kernels timed side by side per op (the env knob each launcher reads; the first is the default).
KERNELS = {"scan": ["loop", "chunked"], "step": ["block", "pipe"], "conv decode": ["cpt1", "cpt2", "cpt4"]}
KERNEL_ENV = {"scan": "SSMTP_SCAN_KERNEL", "step": "SSMTP_STEP_KERNEL", "conv decode": "SSMTP_CONV_CPT"}


def matches(flt: str, label: str) -> bool:
    """--filter: empty matches all; else any of its comma-separated substrings."""
    return not flt or any(f and f in label for f in flt.split(","))


def case_table(quick=False):
    cases = []
    for model, (d, N, K, G, R) in MODELS.items():
        for tp in (1, 2):
            dl, gl = d // tp, max(1, G // tp)
            for B, L in PREFILL:
                if quick and L > 2048:
                    continue
                for op in ("conv", "scan"):
                    cases.append(dict(label=f"{model} tp{tp} {op} prefill B={B} L={L}", model=model, tp=tp, op=op,
                                      phase="prefill", B=B, L=L, dim=dl, N=N, K=K, G=gl, R=R,
                                      one_A=model in ONE_A, per_head_A=model in PER_HEAD_A))
            for B in DECODE:
                for op in ("conv", "step"):
                    cases.append(dict(label=f"{model} tp{tp} {op} decode B={B}", model=model, tp=tp, op=op,
                                      phase="decode", B=B, L=1, dim=dl, N=N, K=K, G=gl, R=R,
                                      one_A=model in ONE_A, per_head_A=model in PER_HEAD_A))
    return cases


# ------------------------------------------------------------------------------------------------ inputs

def make_inputs(c, dev="cuda"):
    """One input set in the model's layout. Returns a dict of tensors (views of token-major buffers)."""
    B, L, d, N, K, G, R = c["B"], c["L"], c["dim"], c["N"], c["K"], c["G"], c["R"]
    t = {}
    if c["op"] == "conv":
        xz = torch.randn(B, L, 2 * d, device=dev, dtype=DTYPE)
        t["x"] = xz[..., :d].transpose(1, 2)
        t["state"] = torch.randn(B + 2, d, K, device=dev, dtype=DTYPE)
        t["idx"] = torch.randperm(B + 2, device=dev)[:B].to(torch.int32)
        return t
    xz = torch.randn(B, L, 2 * d, device=dev, dtype=DTYPE)
    proj = torch.randn(B, L, R + 2 * G * N, device=dev, dtype=DTYPE)
    dt = torch.randn(B, L, d, device=dev, dtype=DTYPE) * 0.5
    if c["op"] == "scan":
        t["x"] = torch.randn(B, L, d, device=dev, dtype=DTYPE).transpose(1, 2)
        t["z"] = xz[..., d:].transpose(1, 2)
        t["dt"] = dt.transpose(1, 2)
        t["B"] = proj[..., R:R + G * N].unflatten(2, (G, N)).permute(0, 2, 3, 1)
        t["C"] = proj[..., R + G * N:].unflatten(2, (G, N)).permute(0, 2, 3, 1)
    else:  # step: (batch, dim) rows of token-major buffers
        t["x"] = torch.randn(B, d, device=dev, dtype=DTYPE)
        t["z"] = xz[:, 0, d:]
        t["dt"] = dt[:, 0]
        t["B"] = proj[:, 0, R:R + G * N].unflatten(1, (G, N))
        t["C"] = proj[:, 0, R + G * N:].unflatten(1, (G, N))
    t["state"] = torch.randn(B + 2, d, N, device=dev) * 0.5
    t["idx"] = torch.randperm(B + 2, device=dev)[:B].to(torch.int32)
    return t


def make_params(c, dev="cuda"):
    d, N, K = c["dim"], c["N"], c["K"]
    g = torch.Generator(device="cpu").manual_seed(0)
    p = {"conv_w": (torch.randn(d, K, generator=g) * 0.5).to(DTYPE).to(dev),
         "conv_b": torch.randn(d, generator=g).to(DTYPE).to(dev),
         "A": (-(torch.arange(1, N + 1).float()[None, :] * torch.exp(0.3 * torch.randn(d, N, generator=g)))).to(dev),
         "D": torch.randn(d, generator=g).to(dev)}
    if c.get("per_head_A"):  # Mamba-2: one A per head of 64 channels, the same for all its states
        a_ch = (-torch.exp(0.5 * torch.randn(d // 64, generator=g))).repeat_interleave(64)[:, None].to(dev)
        p["A"] = a_ch.expand(-1, N) if c.get("one_A") else a_ch.expand(-1, N).contiguous()
    d0 = torch.exp(torch.rand(d, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    p["dt_bias"] = (d0 + torch.log(-torch.expm1(-d0))).to(dev)
    return p


def run_op(c, p, t):
    if c["op"] == "conv":
        return ops.causal_conv1d(t["x"], p["conv_w"], p["conv_b"], t["state"], t["idx"], None, True,
                                 c["phase"] == "decode")
    if c["op"] == "scan":
        return ops.selective_scan(t["x"], t["dt"], p["A"], t["B"], t["C"], p["D"], t["z"], p["dt_bias"], t["state"],
                                  t["idx"], None, True, True)
    return ops.selective_state_update(t["x"], t["dt"], p["A"], t["B"], t["C"], p["D"], t["z"], p["dt_bias"],
                                      t["state"], t["idx"], True)


def bytes_moved(c):
    B, L, d, N, K, G = c["B"], c["L"], c["dim"], c["N"], c["K"], c["G"]
    if c["op"] == "conv":
        hist = (K - 1) if c["phase"] == "decode" else 0  # prefill here starts fresh (load_state=0)
        return 2 * B * d * L * ESZ + d * K * ESZ + d * ESZ + B * d * (hist + K) * ESZ
    streams = 4  # x, dt, z read; out written
    bc = 2 * B * G * N * L * ESZ
    params = d * N * 4 + 2 * d * 4
    state = 2 * B * d * N * 4
    return streams * B * d * L * ESZ + bc + params + state


def mufu_floor_s(c):
    if c["op"] not in ("scan", "step"):
        return 0.0
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    per_step = 1 if c.get("one_A") else c["N"]  # ex2 per channel and step
    return c["B"] * c["dim"] * c["L"] * per_step / (sms * MUFU_PER_CLK_SM * CLOCK_HZ)


# ------------------------------------------------------------------------------------------------ validation

def validate(c, p):
    """The CUDA op on a fresh input set vs the C CPU op on channel slices (first/last 64 channels; the group
    structure kept) of the first two sequences. Returns (ok, max_abs_err, max_state_err)."""
    t = make_inputs(c)
    state0 = t["state"].clone()
    out = run_op(c, p, t)
    torch.cuda.synchronize()
    d, G = c["dim"], c["G"]
    per = d // G
    nb = min(2, c["B"])
    ok, err, serr = True, 0.0, 0.0
    for c0 in sorted({0, d - min(64, per)}):
        c1 = c0 + min(64, per)
        g = c0 // per
        sl = slice(c0, c1)
        idx = t["idx"][:nb].cpu()
        st = state0[:, sl].cpu().clone()
        if c["op"] == "conv":
            ref = ops.causal_conv1d(t["x"][:nb, sl].cpu(), p["conv_w"][sl].cpu(), p["conv_b"][sl].cpu(), st, idx,
                                    None, True, c["phase"] == "decode")
            tol = (1e-3, 8e-3)
        elif c["op"] == "scan":
            ref = ops.selective_scan(t["x"][:nb, sl].cpu(), t["dt"][:nb, sl].cpu(), p["A"][sl].cpu(),
                                     t["B"][:nb, g:g + 1].cpu(), t["C"][:nb, g:g + 1].cpu(), p["D"][sl].cpu(),
                                     t["z"][:nb, sl].cpu(), p["dt_bias"][sl].cpu(), st, idx, None, True, True)
            tol = (4e-3, 1.6e-2)
        else:
            ref = ops.selective_state_update(t["x"][:nb, sl].cpu(), t["dt"][:nb, sl].cpu(), p["A"][sl].cpu(),
                                             t["B"][:nb, g:g + 1].cpu(), t["C"][:nb, g:g + 1].cpu(), p["D"][sl].cpu(),
                                             t["z"][:nb, sl].cpu(), p["dt_bias"][sl].cpu(), st, idx, True)
            tol = (1e-3, 8e-3)
        got = out[:nb, sl].cpu().float()
        diff = (got - ref.float()).abs()
        bound = tol[0] + tol[1] * ref.float().abs()
        ok &= bool(torch.isfinite(got).all()) and bool((diff <= bound).all())
        err = max(err, float(diff.max()))
        used = idx.long()
        gst = t["state"][:, sl][used].cpu().float()
        rst = st[used].float()
        sdiff = (gst - rst).abs()
        stol = (0.0, 0.0) if c["op"] == "conv" else ((1e-4, 5e-4) if c["op"] == "scan" else (1e-6, 2e-6))
        ok &= bool((sdiff <= stol[0] + stol[1] * rst.abs()).all())
        serr = max(serr, float(sdiff.max()))
    return ok, err, serr


# ------------------------------------------------------------------------------------------------ timing

def time_eager(fn, iters=15, warmup=3):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) * 1e-3)
    return statistics.median(ts)


def capture(fn, warm=None) -> "torch.cuda.CUDAGraph":
    """warm() (default fn()) once on a side stream (allocator and algorithm warm-up), then one call of fn captured in a
    CUDA graph, which is returned."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        (warm or fn)()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g


def graph_time(call, nsets: int, R: int, replays: int = 10) -> float:
    """Median per-call time of call(0..R-1) captured in one CUDA graph (call(i) uses input set i % nsets; each set is
    run once outside capture first: allocator and algorithm warm-up)."""
    g = capture(lambda: [call(i) for i in range(R)], warm=lambda: [call(i) for i in range(nsets)])
    for _ in range(3):
        g.replay()
    ts = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) * 1e-3 / R)
    del g
    return statistics.median(ts)


def graph_calls(nsets, est_s):
    """Calls per captured graph: ~2 ms of work at the estimated per-call time, at least one per input set, <= 200."""
    return max(nsets, min(200, int(math.ceil(2e-3 / max(est_s, 1e-6)))))


def inplace_rate(c, sets):
    """Decode-step cases: bytes/s of torch's in-place elementwise kernel (state.mul_) over the same state tensors,
    timed like the op (one graph, rotating over the sets): what a tuned read-modify-write of these bytes reaches on
    this GPU, beside the copy rate. 0 for other ops."""
    if c["op"] != "step":
        return 0.0
    nb = 2 * sets[0]["state"].numel() * 4
    t = graph_time(lambda i: sets[i % len(sets)]["state"].mul_(0.9999), len(sets), graph_calls(len(sets), nb / HBM_BPS))
    return nb / t


def time_graph(c, p, sets, est_s):
    """Median per-call time of R calls captured in one graph (rotating over the input sets)."""
    R = graph_calls(len(sets), est_s)
    return graph_time(lambda i: run_op(c, p, sets[i % len(sets)]), len(sets), R), R


# ------------------------------------------------------------------------------------------------ HF baseline

def hf_scan(c, p, t):
    """transformers MambaMixer.slow_forward, steps 3.b-4 (dt already projected): fp32 discretisation, Python loop."""
    x, z, dtr = t["x"], t["z"], t["dt"]
    dtype = x.dtype
    B, d, L = x.shape
    G, per = c["G"], d // c["G"]
    A = p["A"]
    delta = F.softplus(dtr.float() + p["dt_bias"][None, :, None])  # dt_proj(time_step) includes the bias
    ys = []
    for g in range(G):  # Zamba: one HF mixer head per group
        sl = slice(g * per, (g + 1) * per)
        Bm = t["B"][:, g].transpose(1, 2)  # (B, L, N)
        Cm = t["C"][:, g].transpose(1, 2)
        hs = x[:, sl]
        dts = delta[:, sl]
        ssm_state = t["state"][t["idx"].long()][:, sl].float()
        discrete_A = torch.exp(A[sl][None, :, None, :] * dts[:, :, :, None])
        discrete_B = dts[:, :, :, None] * Bm[:, None, :, :].float()
        deltaB_u = discrete_B * hs[:, :, :, None].float()
        outs = []
        for i in range(L):
            ssm_state = discrete_A[:, :, i, :] * ssm_state + deltaB_u[:, :, i, :]
            so = torch.matmul(ssm_state.to(dtype), Cm[:, i, :].unsqueeze(-1))
            outs.append(so[:, :, 0])
        y = torch.stack(outs, dim=-1)
        y = y + hs * p["D"][sl][None, :, None]
        ys.append(y * F.silu(z[:, sl]))
    return torch.cat(ys, 1)


def hf_step(c, p, t):
    """The cache path of slow_forward for one token: same discretisation, one step, state copied back."""
    x, z, dtr = t["x"], t["z"], t["dt"]
    dtype = x.dtype
    d = x.shape[1]
    G, per = c["G"], d // c["G"]
    idx = t["idx"].long()
    delta = F.softplus(dtr.float() + p["dt_bias"][None])
    ssm_state = t["state"][idx].clone()
    ys = []
    for g in range(G):
        sl = slice(g * per, (g + 1) * per)
        discrete_A = torch.exp(p["A"][sl][None] * delta[:, sl, None])
        deltaB_u = delta[:, sl, None] * t["B"][:, g, None, :].float() * x[:, sl, None].float()
        st = discrete_A * ssm_state[:, sl] + deltaB_u
        ssm_state[:, sl] = st
        y = torch.matmul(st.to(dtype), t["C"][:, g, :, None])[..., 0]
        y = y + x[:, sl] * p["D"][sl][None]
        ys.append(y * F.silu(z[:, sl]))
    t["state"][idx] = ssm_state
    return torch.cat(ys, 1)


def hf_conv(c, p, t):
    x = t["x"]
    d, K = c["dim"], c["K"]
    if c["phase"] == "prefill":  # nn.Conv1d(groups=d, padding=K-1)[..., :L], then act
        y = F.conv1d(x.contiguous(), p["conv_w"][:, None, :], p["conv_b"], padding=K - 1, groups=d)[..., :x.shape[2]]
        return F.silu(y)
    idx = t["idx"].long()  # MambaCache.update_conv_state: roll, set last column, write back; then sum * weight
    cs = t["state"][idx]
    cs = cs.roll(shifts=-1, dims=-1)
    cs[:, :, -1] = x[:, :, 0]
    t["state"][idx] = cs
    y = torch.sum(cs * p["conv_w"][None], dim=-1) + p["conv_b"]
    return F.silu(y).to(x.dtype).unsqueeze(-1)


def hf_fn(c):
    if c["op"] == "conv":
        return hf_conv
    if c["op"] == "scan":
        return hf_scan if c["B"] * c["L"] <= 4096 else None
    return hf_step


# ------------------------------------------------------------------------------------------------ chunk sweep

def chunk_sweep(flt=""):
    """Scan time against the kernel variant (SSMTP_SCAN_TPC threads per channel, SSMTP_SCAN_U steps per load group)
    and the chunk count (SSMTP_SCAN_CHUNKS; "auto" = the launcher's choice; capped by the launcher at L/64) on a few
    shapes: the data behind the launcher's choices."""
    out = []
    shapes = [("mamba-2.8b", 1, 1, 896), ("mamba-2.8b", 1, 1, 2048), ("mamba-2.8b", 1, 1, 8192),
              ("mamba-2.8b", 2, 1, 2048), ("mamba-2.8b", 1, 8, 512), ("mamba-2.8b", 1, 8, 2048),
              ("mamba-2.8b", 1, 4, 2048), ("mamba-2.8b", 1, 2, 2048)]
    for model, tp, B, L in shapes:
        d, N, K, G, R = MODELS[model]
        c = dict(label=f"{model} tp{tp} scan prefill B={B} L={L}", model=model, tp=tp, op="scan", phase="prefill",
                 B=B, L=L, dim=d // tp, N=N, K=K, G=max(1, G // tp), R=R)
        if not matches(flt, c["label"]):
            continue
        p = make_params(c)
        nbytes = bytes_moved(c)
        nsets = int(max(1, min(256, math.ceil(3 * L2_BYTES / nbytes))))
        sets = [make_inputs(c) for _ in range(nsets)]
        os.environ["SSMTP_SCAN_KERNEL"] = "chunked"
        for lanes in (4, 8, 16):  # the chunked kernel's lanes per channel (chunk = 8 x lanes steps)
            os.environ["SSMTP_SCAN_P"] = str(lanes)
            ok, err, _ = validate(c, p)
            t, _ = time_graph(c, p, sets, 1e-3)
            out.append(dict(label=c["label"], kernel="chunked", lanes=lanes, us=t * 1e6, GBps=nbytes / t / 1e9,
                            valid=ok))
            print(f"sweep {c['label']:<40} chunked lanes={lanes:>2} {t * 1e6:9.1f} us {'ok' if ok else 'INVALID'}",
                  flush=True)
        os.environ.pop("SSMTP_SCAN_P", None)
        os.environ["SSMTP_SCAN_KERNEL"] = "loop"

        def loop_case(k, desc, **fields):  # the loop kernel at chunk count k (0: the launcher's choice)
            if k:
                os.environ["SSMTP_SCAN_CHUNKS"] = str(k)
            else:
                os.environ.pop("SSMTP_SCAN_CHUNKS", None)
            ok, err, _ = validate(c, p)
            t, _ = time_graph(c, p, sets, 1e-3)
            out.append(dict(label=c["label"], kernel="loop", **fields, chunks=k or "auto", us=t * 1e6,
                            GBps=nbytes / t / 1e9, valid=ok))
            print(f"sweep {c['label']:<40} {desc} chunks={k or 'auto':>4} {t * 1e6:9.1f} us "
                  f"{'ok' if ok else 'INVALID'}", flush=True)

        for tpc, u in ((1, 8), (2, 8), (1, 4), (2, 4)):
            os.environ["SSMTP_SCAN_TPC"] = str(tpc)
            os.environ["SSMTP_SCAN_U"] = str(u)
            for k in (0, 1, 2, 4, 8, 16, 32):  # 2: B=8 fills ~2.4 of 5 block slots per SM unchunked (ncu)
                loop_case(k, f"tpc={tpc} u={u}", tpc=tpc, u=u)
        os.environ.pop("SSMTP_SCAN_TPC", None)
        os.environ.pop("SSMTP_SCAN_U", None)
        if L <= 1024:  # short prompts (a prefix-cache hit's suffix): the minimum chunk length decides the chunk count
            for mc in (64, 48, 34):
                os.environ["SSMTP_SCAN_MIN_CHUNK"] = str(mc)
                for k in (0, 16, 24):
                    loop_case(k, f"min_chunk={mc}", tpc=1, u=8, min_chunk=mc)
            os.environ.pop("SSMTP_SCAN_MIN_CHUNK", None)
        os.environ.pop("SSMTP_SCAN_CHUNKS", None)
        os.environ.pop("SSMTP_SCAN_KERNEL", None)
        del sets
        torch.cuda.empty_cache()
    return out


# ------------------------------------------------------------------------------------------------ main

# ------------------------------------------------------------------------------------------------ decode GEMV

LINEAR_SHAPES = [  # (label, K, N): mamba-2.8b projections per rank, and falcon-mamba-7b's x_proj
    ("mamba-2.8b tp1 in_proj", 2560, 10240), ("mamba-2.8b tp1 x_proj", 5120, 192),
    ("mamba-2.8b tp1 dt_proj", 160, 5120), ("mamba-2.8b tp1 out_proj", 5120, 2560),
    ("mamba-2.8b tp2 in_proj", 2560, 5120), ("mamba-2.8b tp2 out_proj", 2560, 2560),
    ("mamba-2.8b tp2 x_proj", 2560, 192),
    ("falcon-mamba-7b tp1 x_proj", 8192, 288), ("falcon-mamba-7b tp2 x_proj", 4096, 288),
    ("falcon-mamba-7b tp1 in_proj", 4096, 16384), ("falcon-mamba-7b tp1 out_proj", 8192, 4096),
]


def bench_linear(flt=""):
    """ssmtp::linear_small vs F.linear (cuBLAS) on the same inputs: the GEMV at M = 1..8 rows and the tensor-core kernel
    (SSMTP_LINEAR_KERNEL=tc) at M = 1..256 and the warpgroup-MMA kernel (wg, sm_90a builds) at M = 1..128; median
    per call inside a CUDA graph of R calls rotating over weight sets
    (>= 3 x L2 of weights in all). Validated against cuBLAS first (bf16: within 2 ulp plus fp32 summation slack).
    Floor: weight bytes / 4.26 TB/s. "linear_small_us" (= "auto_us") is what the op runs by default at that M (the
    warpgroup-MMA kernel where csrc/ssmtp.h's SSMTP_LINEAR_WG_* rule takes the shape, else the GEMV up to 8 rows and
    the tensor-core kernel above); the models route a product to it only where gemv_wins says it measured faster
    (ssmtp/ops.py)."""
    out = []
    wg = ESZ == 2 and ops._device_kernels(torch.device("cuda", torch.cuda.current_device()))[1]
    for label, K, N in LINEAR_SHAPES:
        if not matches(flt, label):
            continue
        wbytes = N * K * ESZ
        nsets = int(max(1, min(128, math.ceil(3 * L2_BYTES / wbytes))))
        ws = [(torch.randn(N, K, device="cuda") / K**0.5).to(DTYPE) for _ in range(nsets)]
        for M in (1, 2, 4, 8, 16, 32, 64, 128, 256):
            x = torch.randn(M, K, device="cuda").to(DTYPE)
            ref = F.linear(x, ws[0]).float()
            row = dict(label=f"{label} M={M}", K=K, N=N, M=M, weight_bytes=wbytes, valid=True,
                       floor_us=wbytes / HBM_BPS * 1e6)
            kernels = ((["gemv"] if M <= 8 else []) + (["tc"] if K % 32 == 0 and ESZ == 2 else [])
                       + (["wg"] if wg and M <= 128 else []))
            for kern in kernels + ["auto"]:
                os.environ["SSMTP_LINEAR_KERNEL"] = kern
                a = ops.linear_small(x, ws[0], None).float()
                row["valid"] = row["valid"] and bool(((a - ref).abs() <= 2 ** -6 * ref.abs() + 1e-2).all())
                row[f"{kern}_us"] = graph_time(lambda i: ops.linear_small(x, ws[i % nsets], None), nsets,
                                               max(nsets, 64), replays=7) * 1e6
            os.environ.pop("SSMTP_LINEAR_KERNEL", None)
            row["cublas_us"] = graph_time(lambda i: F.linear(x, ws[i % nsets]), nsets, max(nsets, 64), replays=7) * 1e6
            if not kernels:
                continue
            row["linear_small_us"] = row["auto_us"]
            row["frac_hbm"] = row["floor_us"] / row["linear_small_us"]
            row["speedup_vs_cublas"] = row["cublas_us"] / row["linear_small_us"]
            out.append(row)
            extra = f"  tc {row['tc_us']:7.1f} us" if M <= 8 and "tc_us" in row else ""
            extra += f"  wg {row['wg_us']:7.1f} us x{row['cublas_us'] / row['wg_us']:.2f}" if "wg_us" in row else ""
            print(f"{row['label']:<40} small {row['linear_small_us']:7.1f} us  cuBLAS {row['cublas_us']:7.1f} us  "
                  f"x{row['speedup_vs_cublas']:.2f}  {100 * row['frac_hbm']:5.1f}% HBM{extra} "
                  f"{'ok' if row['valid'] else 'INVALID'}", flush=True)
        ws = None  # free this shape's weight sets before the next
        torch.cuda.empty_cache()
    return out


SSD_SHAPES = [  # (label prefix, heads per rank, headdim, groups, d_state): zamba2-2.7b's Mamba-2 layers
    ("zamba2-2.7b tp1", 80, 64, 1, 64), ("zamba2-2.7b tp2", 40, 64, 1, 64),
]
SSD_PREFILL = [(1, 512), (1, 2048), (1, 8192), (8, 512), (8, 2048)]


def bench_ssd(flt=""):
    """The Mamba-2 prefill scan two ways on the same inputs, per layer: ssmtp::ssd_scan (the chunked SSD kernel, tensor
    cores) vs ssmtp::selective_scan with one A per channel (Zamba2's CUDA default; exact fp32). The selective
    result is the reference (bf16 output: within a few roundings). Bytes: x, z, dt, B, C read, out written, the state
    read and written; the floor is those bytes / 4.26 TB/s. Labels "zamba2-2.7b tp1 ssd prefill B=8 L=2048"."""
    out = []
    for prefix, nh, hd, G, N in SSD_SHAPES:
        d = nh * hd
        for B, L in SSD_PREFILL:
            label = f"{prefix} ssd prefill B={B} L={L}"
            if not matches(flt, label):
                continue
            g = torch.Generator(device="cuda").manual_seed(B * 7 + L)
            rnd = lambda *sh: torch.randn(*sh, device="cuda", generator=g).to(DTYPE)  # noqa: E731
            x, z = rnd(B, L, nh, hd), rnd(B, L, nh, hd)
            dt = rnd(B, L, nh) * 0.5
            bc = rnd(B, L, 2 * G * N)
            Bm, Cm = bc[..., :G * N].unflatten(-1, (G, N)), bc[..., G * N:].unflatten(-1, (G, N))
            A = -torch.exp(0.5 * torch.randn(nh, device="cuda", generator=g))
            Dh = torch.randn(nh, device="cuda", generator=g)
            bias = torch.randn(nh, device="cuda", generator=g) * 0.5
            st = torch.zeros(B, nh, hd, N, device="cuda")
            # the selective path's views of the same data (as the Zamba2 module builds them)
            A_ch = A.repeat_interleave(hd)[:, None].expand(-1, N)
            D_ch, bias_ch = Dh.repeat_interleave(hd), bias.repeat_interleave(hd)
            dt_ch = dt.repeat_interleave(hd, dim=-1)

            def ssd(i):
                return ops.ssd_scan(x, dt, A, Bm, Cm, Dh, z, bias, st, None, None, True, False, 256, 0.0, float("inf"))

            def sel(i):
                return ops.selective_scan(x.flatten(-2).transpose(1, 2), dt_ch.transpose(1, 2), A_ch,
                                          Bm.permute(0, 2, 3, 1), Cm.permute(0, 2, 3, 1), D_ch,
                                          z.flatten(-2).transpose(1, 2), bias_ch, st.view(B, d, N), None, None,
                                          True, False)

            a, r = ssd(0).float().flatten(-2), sel(0).float().transpose(1, 2)
            err = (a - r).abs().max().item()
            ok = bool(((a - r).abs() <= 2e-2 * (r.abs() + r.abs().mean())).all())
            nbytes = (3 * B * L * d + B * L * nh + 2 * B * L * G * N) * ESZ + 2 * B * d * N * 4
            row = dict(label=label, B=B, L=L, heads=nh, headdim=hd, dstate=N, groups=G, valid=ok, max_abs_err=err,
                       bytes=nbytes, floor_us=nbytes / HBM_BPS * 1e6)
            R = 4 if B * L >= 8192 else 16
            row["ssd_us"] = graph_time(ssd, 1, R, replays=5) * 1e6
            row["selective_us"] = graph_time(sel, 1, R, replays=5) * 1e6
            row["speedup_vs_selective"] = row["selective_us"] / row["ssd_us"]
            row["frac_hbm"] = row["floor_us"] / row["ssd_us"]
            out.append(row)
            print(f"{label:<44} ssd {row['ssd_us']:8.1f} us  selective {row['selective_us']:8.1f} us  "
                  f"x{row['speedup_vs_selective']:.2f}  {100 * row['frac_hbm']:5.1f}% HBM  max err {err:.3g} "
                  f"{'ok' if ok else 'INVALID'}", flush=True)
            del x, z, dt, bc, st
            torch.cuda.empty_cache()
    return out


def _dtp_step(g, rnd, M, dl, N, R):
    """The decode state update's per-call inputs at M rows (A, D, dt_bias, x, z, the low-rank dt, B, C; drawn from g
    and rnd) and two calls on a weight/state set t (keys "dtw", "st"): with dt_proj fused, and ops.linear(dt, dt_proj)
    followed by the plain update."""
    A = -torch.rand(dl, N, device="cuda", generator=g) - 0.1
    Dp, bias = torch.randn(dl, device="cuda", generator=g), torch.randn(dl, device="cuda", generator=g) * 0.1
    x, z, dtr = rnd(M, dl), rnd(M, dl), rnd(M, R, sc=0.3)
    Bm, Cm = rnd(M, 1, N), rnd(M, 1, N)

    def fused(t):
        return ops.selective_state_update(x, dtr, A, Bm, Cm, Dp, z, bias, t["st"], None, True, t["dtw"])

    def plain(t):
        return ops.selective_state_update(x, ops.linear(dtr, t["dtw"]), A, Bm, Cm, Dp, z, bias, t["st"], None, True)

    return fused, plain


def bench_decode_fused(flt=""):
    """The fused Mamba-1 decode kernels vs the unfused ops the engine otherwise runs, per layer, mamba-2.8b shapes at
    TP=1 and TP=2 (per-rank d_inner), M = 1, 2, 4 rows, inside a CUDA graph rotating over weight sets (>= 3 x L2):
      in:   ops.mamba_decode_in vs residual add + RMSNorm (torch.compile'd, as the engine) + in_proj (ops.linear:
            cuBLAS at these shapes) + the conv step;
      step: the state update with dt_proj fused vs ops.linear(dt, dt_proj) + the state update.
    Validated against each other first (the unfused result as reference, bf16: a few roundings). Floor: weight bytes /
    4.26 TB/s (in_proj, resp. dt_proj + the state read and written).
    Caveat: back to back in one graph, a kernel launched with programmatic dependent launch starts its weight stream
    during the previous call, which flatters the fused kernels against the unfused chain (cuBLAS and the compiled norm
    do not take part): the engine's decode step (bench_engine, SSMTP_DECODE_FUSED) is the figure that decides."""
    from ssmtp.engine.runner import _Fused, add_block_norm

    norm = _Fused(add_block_norm, True)
    out = []
    for tp in (1, 2):
        d, N, W, _, R = MODELS["mamba-2.8b"]
        H, dl = 2560, d // tp
        for M in (1, 2, 4):
            label = f"mamba-2.8b tp{tp} decode layer M={M}"
            if not matches(flt, label):
                continue
            g = torch.Generator(device="cuda").manual_seed(M + 10 * tp)
            rnd = lambda *sh, sc=1.0: (torch.randn(*sh, device="cuda", generator=g) * sc).to(DTYPE)  # noqa: E731
            wbytes = 2 * dl * H * ESZ
            nsets = int(max(1, min(64, math.ceil(3 * L2_BYTES / wbytes))))
            sets = [dict(w=rnd(2 * dl, H, sc=H ** -0.5), nw=rnd(H, sc=0.1) + 1, cw=rnd(dl, W, sc=0.5), cb=rnd(dl),
                         cs=rnd(M, dl, W), dtw=rnd(dl, R, sc=R ** -0.5), st=torch.randn(M, dl, N, device="cuda"))
                    for _ in range(nsets)]
            res = torch.randn(M, H, device="cuda", generator=g)
            add = rnd(M, H)
            step_f, step_p = _dtp_step(g, rnd, M, dl, N, R)

            def fused_in(i):
                t = sets[i % nsets]
                return ops.mamba_decode_in(res, add, t["nw"], t["w"], None, t["cw"], t["cb"], t["cs"], None, 1e-5,
                                           True)

            def plain_in(i):
                t = sets[i % nsets]
                r, h = norm(res, add, t["nw"], 1e-5, DTYPE, True)
                xz = ops.linear(h, t["w"])
                xc = ops.causal_conv1d(xz[:, :dl, None], t["cw"], t["cb"], t["cs"], None, None, True, True)
                return r, xc[..., 0], xz[:, dl:]

            def fused_step(i):
                return step_f(sets[i % nsets])

            def plain_step(i):
                return step_p(sets[i % nsets])

            # validation on copies of set 0's states (the timed calls update them in place)
            cs0, st0 = sets[0]["cs"].clone(), sets[0]["st"].clone()
            a = [v.float() for v in fused_in(0)]
            sets[0]["cs"].copy_(cs0)
            b = [v.float() for v in plain_in(0)]
            ok = all(bool(((u - v).abs() <= 2 ** -5 * v.abs() + 2e-2).all()) for u, v in zip(a, b))
            sa = fused_step(0).float()
            sets[0]["st"].copy_(st0)
            sb = plain_step(0).float()
            ok = ok and bool(((sa - sb).abs() <= 2 ** -5 * sb.abs() + 2e-2).all())
            row = dict(label=label, tp=tp, M=M, H=H, d_local=dl, valid=ok,
                       in_floor_us=wbytes / HBM_BPS * 1e6,
                       step_floor_us=(dl * R * ESZ + 2 * M * dl * N * 4) / HBM_BPS * 1e6)
            calls = max(nsets, 64)
            row["in_fused_us"] = graph_time(fused_in, nsets, calls, replays=7) * 1e6
            row["in_unfused_us"] = graph_time(plain_in, nsets, calls, replays=7) * 1e6
            row["step_fused_us"] = graph_time(fused_step, nsets, calls, replays=7) * 1e6
            row["step_unfused_us"] = graph_time(plain_step, nsets, calls, replays=7) * 1e6
            out.append(row)
            print(f"{label:<40} in: fused {row['in_fused_us']:6.1f} us, unfused {row['in_unfused_us']:6.1f} "
                  f"(floor {row['in_floor_us']:5.1f});  step: fused {row['step_fused_us']:5.1f}, unfused "
                  f"{row['step_unfused_us']:5.1f} {'ok' if ok else 'INVALID'}", flush=True)
            sets = None
            torch.cuda.empty_cache()
    return out


DTP_SHAPES = ("auto", "1x256", "2x256", "4x256", "4x128", "8x128")


def bench_dtp_shapes(flt=""):
    """The state update with dt_proj fused at each of its block shapes (SSMTP_STEP_DTP_SHAPE: sequences per block x
    threads; auto = the launcher's choice) against ops.linear(dt, dt_proj) + the plain state update, d_state 16:
    mamba-2.8b TP=1 / TP=2 shards and falcon-mamba-7b, M = 1..16 rows, inside a CUDA graph rotating over weight and
    state sets (>= 3 x L2). Every shape gives the same bits (tests/test_decode_fused_gpu.py); the fused result is
    validated against the unfused one (one rounding of the time step apart). Floor: dt_proj's bytes + the states read
    and written, at 4.26 TB/s."""
    out = []
    for name, tp in (("mamba-2.8b", 1), ("mamba-2.8b", 2), ("falcon-mamba-7b", 1)):
        d, N, _, _, R = MODELS[name]
        dl = d // tp
        for M in (1, 2, 3, 4, 6, 8, 12, 16):
            label = f"{name} tp{tp} dtp step M={M}"
            if not matches(flt, label):
                continue
            g = torch.Generator(device="cuda").manual_seed(M + 10 * tp)
            rnd = lambda *sh, sc=1.0: (torch.randn(*sh, device="cuda", generator=g) * sc).to(DTYPE)  # noqa: E731
            per = dl * R * ESZ + 2 * M * dl * N * 4
            nsets = int(max(1, min(64, math.ceil(3 * L2_BYTES / per))))
            sets = [dict(dtw=rnd(dl, R, sc=R ** -0.5), st=torch.randn(M, dl, N, device="cuda")) for _ in range(nsets)]
            step_f, step_p = _dtp_step(g, rnd, M, dl, N, R)

            def fused(i):
                return step_f(sets[i % nsets])

            def plain(i):
                return step_p(sets[i % nsets])

            st0 = sets[0]["st"].clone()
            a = fused(0).float()
            sets[0]["st"].copy_(st0)
            b = plain(0).float()
            row = dict(label=label, tp=tp, M=M, d_local=dl, R=R, floor_us=per / HBM_BPS * 1e6,
                       valid=bool(((a - b).abs() <= 2 ** -5 * b.abs() + 2e-2).all()), us={})
            calls = max(nsets, 64)
            for sh in DTP_SHAPES:
                os.environ["SSMTP_STEP_DTP_SHAPE"] = sh
                row["us"][sh] = graph_time(fused, nsets, calls, replays=7) * 1e6
            os.environ.pop("SSMTP_STEP_DTP_SHAPE", None)
            row["us"]["unfused"] = graph_time(plain, nsets, calls, replays=7) * 1e6
            out.append(row)
            print(f"{label:<36} floor {row['floor_us']:5.2f} us; " +
                  " ".join(f"{k} {v:6.2f}" for k, v in row["us"].items()) + (" ok" if row["valid"] else " INVALID"),
                  flush=True)
            sets = None
            torch.cuda.empty_cache()
    return out


def git_commit():
    """The tree's commit (ssmtp.engine.bench._git_commit: SSMTP_GIT_COMMIT, else HEAD, "-dirty" when modified)."""
    from ssmtp.engine.bench import _git_commit

    return _git_commit()


def write_plot(rows: list, meta: dict, out_path: str) -> None:
    """GB/s per case next to the copy rate, as <out_path without .json>.png (also: python -c "import json,
    bench_ops as b; d = json.load(open(F)); b.write_plot(d['cases'], d['meta'], F)" to redraw a results file)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench_ops: matplotlib not importable, no plot", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(10, max(4, 0.18 * len(rows))))
    labels = [f"{r['label']} {r['kernel']}".strip() for r in rows]
    colors = {"conv": "tab:blue", "scan": "tab:orange", "step": "tab:green"}
    ax.barh(range(len(rows)), [r["GBps"] for r in rows], color=[colors[r["op"]] for r in rows])
    ax.axvline(HBM_BPS / 1e9, color="k", ls="--", lw=1, label="4.26 TB/s copy rate")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("GB/s (bytes each op must move / time in a CUDA graph)")
    ax.set_title(f"ssmtp CUDA ops, {meta['device']}, bf16, commit {meta['git_commit'][:8]}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(os.path.splitext(out_path)[0] + ".png", dpi=110)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/ops-<device>.json)")
    ap.add_argument("--quick", action="store_true", help="skip L > 2048")
    ap.add_argument("--no-hf", action="store_true", help="skip the HF pure-torch baseline")
    ap.add_argument("--filter", default="", help="only cases whose label contains this (comma: any of these)")
    ap.add_argument("--no-sweep", action="store_true", help="skip the scan chunk-count sweep")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_ops: needs a CUDA GPU")
    if not ops.cuda_built():
        sys.exit("bench_ops: ssmtp._C was built without CUDA (" + ops.build_info() + ")")
    dev_name = torch.cuda.get_device_name(0)
    slug = dev_name.lower().replace("nvidia", "").strip().replace(" ", "-")
    out_path = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"ops-{slug}.json")
    torch.manual_seed(0)
    t_start = time.time()
    rows = []
    for c in case_table(args.quick):
        if not matches(args.filter, c["label"]):
            continue
        p = make_params(c)
        nbytes = bytes_moved(c)
        nsets = int(max(1, min(256, math.ceil(3 * L2_BYTES / nbytes))))
        sets = [make_inputs(c) for _ in range(nsets)]
        hf_us = None
        inplace = inplace_rate(c, sets)
        kop = f"{c['op']} {c['phase']}" if f"{c['op']} {c['phase']}" in KERNELS else c["op"]
        for kernel in KERNELS.get(kop, [None]):  # every kernel of the op on the same input sets
            env = KERNEL_ENV.get(kop)
            if env and kernel:
                os.environ[env] = kernel[3:] if kernel.startswith("cpt") else kernel
            ok, err, serr = validate(c, p)
            k = [0]

            def eager(sets=sets):
                run_op(c, p, sets[k[0] % nsets])
                k[0] += 1

            t_eager = time_eager(eager)
            t_graph, R = time_graph(c, p, sets, t_eager)
            row = dict(c, kernel=kernel or "", bytes=nbytes, sets=nsets, graph_calls=R, us=t_graph * 1e6,
                       us_eager=t_eager * 1e6, GBps=nbytes / t_graph / 1e9, frac_hbm=nbytes / t_graph / HBM_BPS,
                       valid=ok, max_abs_err=err, max_state_err=serr)
            if inplace:  # the state bytes at the rate torch's in-place elementwise kernel reaches on them
                row["inplace_GBps"] = inplace / 1e9
                row["frac_inplace"] = (2 * c["B"] * c["dim"] * c["N"] * 4 / t_graph) / inplace
            fl = mufu_floor_s(c)
            if fl > 0:
                row["mufu_floor_us"] = fl * 1e6
                row["frac_mufu_floor"] = fl / t_graph
            hf = None if args.no_hf else hf_fn(c)
            if hf is not None:
                if hf_us is None:
                    t = sets[0]
                    it = 3 if c["phase"] == "prefill" else 10
                    hf_us = time_eager(lambda: hf(c, p, t), iters=it, warmup=1) * 1e6
                row["hf_us"] = hf_us
                row["speedup_vs_hf"] = row["hf_us"] / row["us"]
            if env:
                os.environ.pop(env, None)
            rows.append(row)
            ip = (f" ({100 * row['frac_inplace']:5.1f}% of in-place mul_ {row['inplace_GBps']:5.0f} GB/s)"
                  if inplace else "")
            print(f"{c['label']:<48} {kernel or '':<8} {row['us']:9.1f} us {row['GBps']:7.0f} GB/s "
                  f"{100 * row['frac_hbm']:5.1f}%{ip} {'ok' if ok else 'INVALID'}", flush=True)
        del sets
        torch.cuda.empty_cache()
    sweeps = [] if args.no_sweep else chunk_sweep(args.filter)
    linear_rows = bench_linear(args.filter)
    fused_rows = bench_decode_fused(args.filter)
    dtp_rows = bench_dtp_shapes(args.filter)
    ssd_rows = bench_ssd(args.filter)
    meta = dict(git_commit=git_commit(), date=datetime.datetime.now(datetime.timezone.utc).isoformat(),
                device=dev_name, torch=torch.__version__, build=ops.build_info(), hbm_Bps=HBM_BPS,
                clock_hz_assumed=CLOCK_HZ, dtype=str(DTYPE), seconds=time.time() - t_start)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(dict(meta=meta, cases=rows, scan_chunk_sweep=sweeps, linear=linear_rows, decode_fused=fused_rows,
                       dtp_shapes=dtp_rows, ssd=ssd_rows),
                  f, indent=1)
    write_plot(rows, meta, out_path)
    print(f"\nwrote {out_path}  ({len(rows)} cases, {time.time() - t_start:.0f} s)")
    hdr = (f"{'case':<48} {'kernel':<8} {'us':>9} {'GB/s':>7} {'%HBM':>6} {'%MUFU':>6} {'HF us':>10} {'x HF':>8} "
           "valid")
    print(hdr)
    for r in rows:
        mf = f"{100 * r['frac_mufu_floor']:5.1f}%" if "frac_mufu_floor" in r else "     -"
        hf = f"{r['hf_us']:10.0f} {r['speedup_vs_hf']:7.1f}x" if "hf_us" in r else f"{'-':>10} {'-':>8}"
        print(f"{r['label']:<48} {r['kernel']:<8} {r['us']:9.1f} {r['GBps']:7.0f} {100 * r['frac_hbm']:5.1f}% {mf} "
              f"{hf} {'ok' if r['valid'] else 'INVALID'}")


if __name__ == "__main__":
    main()
