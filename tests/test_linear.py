"""ssmtp::linear_small (the decode GEMV): C CPU op vs ssmtp/ref.py, CUDA op vs the C CPU op, over a model-labelled case
table; argument errors; the ops.linear dispatcher.

Tolerance: both sides accumulate in fp32 in different orders, then round once to the output dtype, so
|out - exact| <= ulp(dtype) x |exact| + 1e-5 x (|x| |W|^T)  (the second term bounds fp32 summation error for K <= 10^4).
"""
import pytest
import torch

import ssmtp  # noqa: F401
from ssmtp import ops, ref

ULP = {torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}

# (label, K, N): mamba-2.8b shapes (d_model 2560, d_inner 5120, dt_rank 160, d_state 16) at TP 1 and 2, and odd ones
CASES = [
    ("mamba-2.8b in_proj tp1", 2560, 10240),
    ("mamba-2.8b x_proj tp1", 5120, 192),
    ("mamba-2.8b dt_proj tp1", 160, 5120),
    ("mamba-2.8b out_proj tp1", 5120, 2560),
    ("mamba-2.8b out_proj tp2", 2560, 2560),
    ("mamba-2.8b x_proj tp2", 2560, 192),
    ("odd N", 64, 33),
    ("one pack", 8, 5),
    ("N=1", 256, 1),
    ("long rows", 16384, 600),
    ("very long rows, few", 65536, 7),
]
SMALL_CASES = [c for c in CASES if c[1] * c[2] <= 200_000]


def _check(out, x, w, b):
    exact = x.double() @ w.double().t() + (b.double() if b is not None else 0)
    mag = x.double().abs() @ w.double().abs().t() + (b.double().abs() if b is not None else 0)
    tol = ULP[x.dtype] * exact.abs() + 1e-5 * mag + 1e-30
    err = (out.double() - exact).abs()
    assert bool((err <= tol).all()), f"max err {err.max().item():.3e}, worst ratio {(err / tol).max().item():.2f}"


def _inputs(M, K, N, dtype, device="cpu", bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g).to(dtype).to(device)
    w = (torch.randn(N, K, generator=g) / K**0.5).to(dtype).to(device)
    b = torch.randn(N, generator=g).to(dtype).to(device) if bias else None
    return x, w, b


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M", [1, 3, 8, 11])
@pytest.mark.parametrize("case", SMALL_CASES, ids=[c[0] for c in SMALL_CASES])
def test_cpu_op_vs_ref(case, M, dtype):
    _, K, N = case
    for bias in (True, False):
        x, w, b = _inputs(M, K, N, dtype, bias=bias, seed=M)
        out = ops.linear_small(x, w, b)
        assert out.shape == (M, N) and out.dtype == dtype
        _check(out, x, w, b)
        r = ref.linear_small(x, w, b)
        assert torch.allclose(out.float(), r.float(), atol=1e-5 * K**0.5, rtol=ULP[dtype])


def test_cpu_strided_rows_and_opcheck():
    x, w, b = _inputs(4, 64, 9, torch.float32)
    xs = torch.randn(4, 80)[:, 8:72]  # rows 80 apart
    xs.copy_(x)
    _check(ops.linear_small(xs, w, b), x, w, b)
    torch.library.opcheck(ops.linear_small, (x, w, b))
    torch.library.opcheck(ops.linear_small, (x, w, None))


def test_bad_input():
    x, w, b = _inputs(2, 16, 5, torch.float32)
    with pytest.raises(ValueError, match="weight"):
        ops.linear_small(x, w[:, :8], b)  # K mismatch
    with pytest.raises(ValueError, match="bias"):
        ops.linear_small(x, w, b[:3])
    with pytest.raises(ValueError, match="weight"):
        ops.linear_small(x, w.to(torch.bfloat16), b)  # dtype mismatch
    with pytest.raises(ValueError, match="weight must be contiguous"):
        ops.linear_small(x, torch.randn(16, 5).t(), b)
    with pytest.raises(ValueError, match="2-D"):
        ops.linear_small(x[None], w, b)
    with pytest.raises((ValueError, NotImplementedError), match="x"):
        ops.linear_small(x.to(torch.int32), w, b)
    # the dispatcher never takes the kernel on the CPU, and matches F.linear there; its size rule
    assert not ops.linear_small_applies(x, w)
    assert ops.gemv_wins(8, 5120, 192) and ops.gemv_wins(1, 5120, 2560) and ops.gemv_wins(2, 160, 5120)
    assert not ops.gemv_wins(1, 2560, 10240) and not ops.gemv_wins(4, 5120, 2560) and not ops.gemv_wins(9, 5120, 192)
    assert torch.equal(ops.linear(x, w, b), torch.nn.functional.linear(x, w, b))


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M", [1, 2, 5, 8])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_cuda_vs_cpu_op(case, M, dtype):
    _, K, N = case
    x, w, b = _inputs(M, K, N, dtype, seed=K + M)
    want = ops.linear_small(x, w, b)  # the C CPU op
    got = ops.linear_small(x.cuda(), w.cuda(), b.cuda()).cpu()
    _check(got, x, w, b)
    # both round the fp32 sum once: at most one unit in the last place apart
    assert torch.allclose(got.float(), want.float(), rtol=2 * ULP[dtype], atol=2e-5 * (x.abs() @ w.abs().t()).max().item())
    got_nb = ops.linear_small(x.cuda(), w.cuda(), None).cpu()
    _check(got_nb, x, w, None)


@pytest.mark.cuda
@cuda
def test_cuda_strided_dispatch_graph_and_errors():
    dev = torch.device("cuda")
    x, w, b = _inputs(4, 5120, 192, torch.bfloat16, device=dev)
    big = torch.randn(4, 2, 5120 + 64, device=dev, dtype=torch.bfloat16)
    xs = big[:, 1, 64:]  # rows (2 x 5184) elements apart, 16-byte aligned
    xs.copy_(x)
    _check(ops.linear_small(xs, w, b).cpu(), x.cpu(), w.cpu(), b.cpu())
    # the dispatcher: (B, 1, K) decode activations take the kernel where it measured faster; results equal the op's
    x3 = x[:, None]
    assert ops.linear_small_applies(x3, w)  # x_proj-like (N = 192): up to 8 rows
    assert torch.equal(ops.linear(x3, w, b)[:, 0], ops.linear_small(x, w, b))
    assert not ops.linear_small_applies(torch.randn(9, 5120, device=dev, dtype=torch.bfloat16), w)  # M > 8: GEMM
    w_in = torch.randn(10240, 2560, device=dev, dtype=torch.bfloat16)  # in_proj-like: cuBLAS at any row count
    assert not ops.linear_small_applies(torch.randn(1, 2560, device=dev, dtype=torch.bfloat16), w_in)
    # graph capture + replay with a fresh input
    out = torch.empty(4, 192, device=dev, dtype=torch.bfloat16)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        out.copy_(ops.linear_small(x, w, b))
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out.copy_(ops.linear_small(x, w, b))
    x.copy_(torch.randn_like(x))
    g.replay()
    torch.cuda.synchronize()
    _check(out.cpu(), x.cpu(), w.cpu(), b.cpu())
    # unsupported on CUDA: clear errors, no launch
    with pytest.raises(NotImplementedError, match="M=9"):
        ops.linear_small(torch.randn(9, 5120, device=dev, dtype=torch.bfloat16), w, b)
    with pytest.raises(NotImplementedError, match="aligned"):
        ops.linear_small(torch.randn(2, 12, device=dev, dtype=torch.bfloat16),
                         torch.randn(3, 12, device=dev, dtype=torch.bfloat16), None)
    with pytest.raises(ValueError, match="is on"):
        ops.linear_small(x, w.cpu(), None)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("M", [1, 2])
def test_cuda_after_a_pdl_writer_eager_and_graph(M):
    """The GEMV loads its first weight packs before its PDL wait and reads x only after it: chained after a GEMV that
    writes its x (which lets dependents start at once), eagerly and replayed from a CUDA graph, it must see the new
    x every time (out_proj-like shapes)."""
    dev = torch.device("cuda")
    x, w1, _ = _inputs(M, 2560, 5120, torch.bfloat16, device=dev, seed=1)
    _, w2, b2 = _inputs(M, 5120, 2560, torch.bfloat16, device=dev, seed=2)
    out = torch.empty(M, 2560, device=dev, dtype=torch.bfloat16)
    ybuf = torch.empty(M, 5120, device=dev, dtype=torch.bfloat16)

    def body():
        y = ops.linear_small(x, w1, None)
        o = ops.linear_small(y, w2, b2)  # launched right after its writer, with PDL
        ybuf.copy_(y)
        out.copy_(o)

    def check():
        _check(ybuf.cpu(), x.cpu(), w1.cpu(), None)
        _check(out.cpu(), ybuf.cpu(), w2.cpu(), b2.cpu())  # computed from the y just written, not an older one

    for _ in range(3):
        x.normal_()
        body()
        torch.cuda.synchronize()
        check()
    from graph_capture import capture

    g, _ = capture(body)
    for _ in range(5):
        x.normal_()
        g.replay()
        torch.cuda.synchronize()
        check()
