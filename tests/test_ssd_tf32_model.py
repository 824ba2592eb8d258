"""A model, in torch on the CPU, of the arithmetic of the CUDA SSD kernel (csrc/cuda/ssd.cu): its 64-token chunks,
the inclusive running sum of delta * A within a chunk, S' and C' as it forms them, the products with TF32 operands
(S' and X' split into hi + lo TF32 terms, C' H^T as a 3xTF32 product, round-to-nearest as cvt.rna does; B, C and x
exact) and fp32 accumulation. Checked against the C CPU op on tests/test_ssd_gpu.py's cases with that file's bounds: this
is what says those bounds hold for the kernel's arithmetic (a model of it, not the kernel: the GPU tests run that)."""
import pytest
import torch
import torch.nn.functional as F

import ssmtp.ops as ops
from test_ssd_gpu import ATOL, CASES, DT, _inputs, _rows, _seed

INF = float("inf")
Q = 64


def _tf32(x: torch.Tensor) -> torch.Tensor:
    i = x.float().contiguous().view(torch.int32)
    return ((i + 0x1000) & ~0x1FFF).view(torch.float32)  # 10-bit mantissa, nearest, ties away from zero


def _mm(a, b, split_a=False, split_b=False):
    """a @ b on TF32 operands as the kernel forms it: an operand split into hi + lo TF32 terms where the kernel splits
    it (a 3xTF32 product when both are: the lo x lo term is left out), else rounded once."""
    ah, bh = _tf32(a), _tf32(b)
    out = ah @ bh
    if split_a:
        out = out + _tf32(a - ah) @ bh
    if split_b:
        out = out + ah @ _tf32(b - bh)
    return out


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
                Y = _mm(S, X, split_a=True) + _mm(Cs * torch.exp(cs)[:, None], H.T, split_a=True, split_b=True)
                y = Y + D[h] * X
                y = y * F.silu(F.pad(z[b, t0:t0 + q, h].float(), (0, 0, 0, Q - q)))
                out[b, t0:t0 + q, h] = y[:q]
                Xp = X * (torch.exp(cs[-1] - cs) * dl)[:, None]
                H = H * torch.exp(cs[-1]) + _mm(Xp.T, Bs, split_a=True)
            if state is not None:
                state[slot, h] = H
    return out


@pytest.mark.parametrize("seed", ["gpu-test", 3, 5])
@pytest.mark.parametrize("variant", ["plain", "slots+lens+load+clamp"])
@pytest.mark.parametrize("dname", list(DT))
@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[4]], ids=[CASES[i][0] for i in (0, 3, 4)])
def test_kernel_arithmetic_within_gpu_test_bounds(case, dname, variant, seed):
    """The model within 0.5 of the GPU test's bounds, on the GPU test's inputs and two more seeds. With only S' split
    (C', H and X' rounded once to TF32) the f16 zamba2-like case with a loaded state reached 2.7 of them on seed 5
    (the GPU gave 0.0039 against an allowed 0.0005 on its inputs); with nothing split, 1.3 without a loaded state."""
    dtype = DT[dname]
    batch, L = case[1], case[2]
    seed = _seed(case[0], dname, variant) if seed == "gpu-test" else seed
    t = _inputs(case, dtype, seed=seed, strided=False)
    st_cpu = st_model = None
    idx, lens, load, dt_min = None, None, False, 0.0
    if variant != "plain":
        idx, lens, load, dt_min = _rows(batch, L, seed)
        st_cpu, st_model = t["state"].clone(), t["state"].clone()
    want = ops.ssd_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], t["D"], t["z"], t["dt_bias"], st_cpu, idx, lens,
                        True, load, 256, dt_min, INF).float()
    got = _model(t, st_model, idx, lens, load, dt_min).to(dtype).float()
    scale = want.abs().mean().item() + 1e-6
    ratio = ((got - want).abs() / (ATOL[dname] * (want.abs() + scale))).max().item()
    assert ratio < 0.5, f"out: {ratio:.2f} of the GPU test's bound"
    if st_cpu is not None:
        ss = st_cpu.abs().mean().item()
        sratio = ((st_model - st_cpu).abs() / (5e-3 * (st_cpu.abs() + ss))).max().item()
        assert sratio < 0.5, f"state: {sratio:.2f} of the GPU test's bound"
