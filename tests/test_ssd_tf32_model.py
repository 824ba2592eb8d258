"""A model, in torch on the CPU, of the arithmetic of the CUDA SSD kernel (csrc/cuda/ssd.cu): its 64-token chunks,
the inclusive running sum of delta * A within a chunk, S' and C' as it forms them, the products with TF32 operands
(S' split into hi + lo TF32 terms; C', H and X' rounded to TF32, round-to-nearest as cvt.rna does; B, C and x exact)
and fp32 accumulation. Checked against the C CPU op on tests/test_ssd_gpu.py's cases with that file's bounds: this
is what says those bounds hold for the kernel's arithmetic (a model of it, not the kernel: the GPU tests run that)."""
import pytest
import torch
import torch.nn.functional as F

import ssmtp.ops as ops
from test_ssd_gpu import ATOL, CASES, DT, _inputs

INF = float("inf")
Q = 64


def _tf32(x: torch.Tensor) -> torch.Tensor:
    i = x.float().contiguous().view(torch.int32)
    return ((i + 0x1000) & ~0x1FFF).view(torch.float32)  # 10-bit mantissa, nearest, ties away from zero


def _model(t, state, idx, lens, load, dt_min):
    x, dt, A, B, C, D, z, bias = (t[k] for k in ("x", "dt", "A", "B", "C", "D", "z", "dt_bias"))
    batch, L, nh, P = x.shape
    G, N = B.shape[2], B.shape[3]
    out = torch.zeros(batch, L, nh, P)
    tri = torch.arange(Q)[None, :] <= torch.arange(Q)[:, None]
    for b in range(batch):
        slot = int(idx[b]) if idx is not None else b
        n = int(lens[b]) if lens is not None else L
        if state is not None and slot < 0:
            continue
        for h in range(nh):
            g = h // (nh // G)
            H = state[slot, h].clone() if (state is not None and load) else torch.zeros(P, N)
            for t0 in range(0, n, Q):
                q = min(Q, n - t0)
                X, Bs, Cs, dl = torch.zeros(Q, P), torch.zeros(Q, N), torch.zeros(Q, N), torch.zeros(Q)
                X[:q], Bs[:q], Cs[:q] = x[b, t0:t0 + q, h].float(), B[b, t0:t0 + q, g].float(), C[b, t0:t0 + q, g].float()
                d = dt[b, t0:t0 + q, h].float() + bias[h]
                dl[:q] = torch.where(d > 20, d, torch.log1p(torch.exp(d))).clamp(min=dt_min)
                cs = torch.cumsum(dl * A[h], 0)
                S = torch.where(tri, (Cs @ Bs.T) * torch.exp(cs[:, None] - cs[None, :]) * dl[None, :], torch.zeros(()))
                hi = _tf32(S)
                Y = _tf32(S - hi) @ X + hi @ X + _tf32(Cs * torch.exp(cs)[:, None]) @ _tf32(H).T
                y = Y + D[h] * X
                y = y * F.silu(F.pad(z[b, t0:t0 + q, h].float(), (0, 0, 0, Q - q)))
                out[b, t0:t0 + q, h] = y[:q]
                Xp = X * (torch.exp(cs[-1] - cs) * dl)[:, None]
                H = H * torch.exp(cs[-1]) + _tf32(Xp).T @ Bs
            if state is not None:
                state[slot, h] = H
    return out


@pytest.mark.parametrize("variant", ["plain", "slots+lens+load+clamp"])
@pytest.mark.parametrize("dname", list(DT))
@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[4]], ids=[CASES[i][0] for i in (0, 3, 4)])
def test_kernel_arithmetic_within_gpu_test_bounds(case, dname, variant):
    """The model within 0.8 of the GPU test's bounds (with S' as one TF32 operand instead of hi + lo, the f16
    zamba2-like case reaches 1.3 of them)."""
    dtype = DT[dname]
    batch, L = case[1], case[2]
    t = _inputs(case, dtype, seed=1, strided=False)
    st_cpu = st_model = idx = lens = None
    load, dt_min = False, 0.0
    if variant != "plain":
        idx = torch.randperm(batch + 2, generator=torch.Generator().manual_seed(1))[:batch].to(torch.int32)
        lens = torch.tensor([max(0, L - 3 * i) for i in range(batch)], dtype=torch.int32)
        st_cpu, st_model = t["state"].clone(), t["state"].clone()
        load, dt_min = True, 0.3
    want = ops.ssd_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], t["D"], t["z"], t["dt_bias"], st_cpu, idx, lens,
                        True, load, 256, dt_min, INF).float()
    got = _model(t, st_model, idx, lens, load, dt_min).to(dtype).float()
    scale = want.abs().mean().item() + 1e-6
    ratio = ((got - want).abs() / (ATOL[dname] * (want.abs() + scale))).max().item()
    assert ratio < 0.8, f"out: {ratio:.2f} of the GPU test's bound"
    if st_cpu is not None:
        ss = st_cpu.abs().mean().item()
        sratio = ((st_model - st_cpu).abs() / (5e-3 * (st_cpu.abs() + ss))).max().item()
        assert sratio < 0.8, f"state: {sratio:.2f} of the GPU test's bound"
