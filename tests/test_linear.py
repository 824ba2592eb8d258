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
    # with the tensor-core kernel: narrow outputs up to 64 rows, nothing else changes
    assert ops.gemv_wins(9, 5120, 192, tc=True) and ops.gemv_wins(64, 2560, 192, tc=True)
    assert not ops.gemv_wins(65, 5120, 192, tc=True) and not ops.gemv_wins(16, 5120, 2560, tc=True)
    # ... of a bounded weight: falcon-mamba-7b's x_proj at TP=2 yes, at TP=1 (8192 x 288) no; the GEMV rows unchanged
    assert ops.gemv_wins(64, 4096, 288, tc=True) and not ops.gemv_wins(16, 8192, 288, tc=True)
    assert ops.gemv_wins(8, 8192, 288, tc=True) and ops.gemv_wins(8, 8192, 288)
    # with the warpgroup-MMA kernel: outputs of 513..10240, 3..32 rows when N <= K, 3..16 when N > K
    assert ops.gemv_wins(3, 5120, 2560, wg=True) and ops.gemv_wins(32, 5120, 2560, wg=True)
    assert not ops.gemv_wins(33, 5120, 2560, wg=True) and not ops.gemv_wins(4, 5120, 2560, tc=True)
    assert ops.gemv_wins(16, 2560, 10240, wg=True) and ops.gemv_wins(8, 160, 5120, wg=True)
    assert not ops.gemv_wins(17, 2560, 10240, wg=True) and not ops.gemv_wins(8, 4096, 16384, wg=True)
    assert not ops.gemv_wins(2, 2560, 10240, wg=True) and not ops.gemv_wins(65, 5120, 512, wg=True)
    # ... and narrow outputs at 8..64 rows, past the tensor-core kernel's weight bound too
    assert ops.gemv_wins(16, 8192, 288, wg=True) and ops.wg_wins(8, 5120, 192) and ops.wg_wins(64, 5120, 192)
    assert not ops.wg_wins(7, 5120, 192) and not ops.wg_wins(65, 5120, 192)
    assert torch.equal(ops.linear(x, w, b), torch.nn.functional.linear(x, w, b))


def test_device_kernels_rule_and_cache(monkeypatch):
    """Which sm_90 kernels a device runs (no GPU needed: the capability and the build string are stand-ins): the
    tensor-core kernel from compute capability 9.0 on, the warpgroup-MMA kernel on 9.0 with an sm_90a build only;
    asked once per device."""
    calls = []

    def cap(i):
        calls.append(i)
        return {0: (9, 0), 1: (8, 0), 2: (10, 0)}[i]

    monkeypatch.setattr(torch.cuda, "get_device_capability", cap)
    monkeypatch.setattr(ops, "_DEVICE_KERNELS", {})
    monkeypatch.setattr(ops, "build_info", lambda: "cpu+cuda archs=90 +sm_90a")
    dev = [torch.device("cuda", i) for i in range(3)]
    assert [ops._device_kernels(d) for d in dev] == [(True, True), (False, False), (True, False)]
    assert ops._device_kernels(dev[0]) == (True, True) and calls == [0, 1, 2]
    monkeypatch.setattr(ops, "_DEVICE_KERNELS", {})
    monkeypatch.setattr(ops, "build_info", lambda: "cpu+cuda archs=80")
    assert ops._device_kernels(dev[0]) == (True, False)


def test_wg_rule_matches_the_c_header():
    """ops.wg_wins and csrc/cuda/linear.cu's auto rule share their bounds through these constants."""
    import pathlib
    import re
    hdr = (pathlib.Path(__file__).resolve().parents[1] / "csrc" / "ssmtp.h").read_text()
    c = {k: int(v) for k, v in re.findall(r"#define SSMTP_LINEAR_WG_(\w+) (\d+)", hdr)}
    assert (c["MIN_M"], c["AUTO_M"], c["AUTO_WIDE_M"], c["MIN_N"], c["MAX_N"], c["NARROW_MIN_M"],
            c["NARROW_MAX_M"]) == (ops.LINEAR_WG_MIN_M, ops.LINEAR_WG_MAX_M, ops.LINEAR_WG_WIDE_MAX_M,
                                   ops.LINEAR_WG_MIN_N, ops.LINEAR_WG_MAX_N, ops.LINEAR_WG_NARROW_MIN_M,
                                   ops.LINEAR_WG_NARROW_MAX_M)


def test_linear_wg_env_is_validated(monkeypatch):
    monkeypatch.setenv("SSMTP_LINEAR_WG", "yes")
    with pytest.raises(ValueError, match="SSMTP_LINEAR_WG"):
        ops._wg_on()
    monkeypatch.setenv("SSMTP_LINEAR_WG", "0")
    assert not ops._wg_on()


def test_cpu_out_f32_is_the_rounded_product_widened_and_lm_head():
    """out_f32: the sums rounded to x's dtype, then widened: the bits of F.linear(x, W).float() up to the summation
    order (exactly those bits wherever the two fp32 sums round to the same 16-bit value)."""
    for dtype in (torch.bfloat16, torch.float16):
        x, w, b = _inputs(3, 96, 40, dtype, seed=7)
        out = ops.linear_small(x, w, b, True)
        assert out.dtype == torch.float32 and out.shape == (3, 40)
        assert torch.equal(out, ops.linear_small(x, w, b).float())
        _check(out.to(dtype), x, w, b)
        torch.library.opcheck(ops.linear_small, (x, w, b, True))
    # fp32 x: out_f32 changes nothing
    x, w, b = _inputs(2, 32, 9, torch.float32)
    assert torch.equal(ops.linear_small(x, w, b, True), ops.linear_small(x, w, b))
    # a 16-bit out for fp32 x, or an fp32 out of the wrong shape, is refused by the C op
    with pytest.raises(ValueError, match="out"):
        from ssmtp._C import linear_small as c_lin
        from ssmtp.ops import desc
        c_lin(desc(x, "x"), desc(w, "weight"), desc(b, "bias"), desc(torch.empty(2, 9, dtype=torch.bfloat16), "out"), 0)
    # the engine's logits on the CPU: F.linear(h, W).float()
    h, w, _ = _inputs(1, 64, 20000, torch.bfloat16, bias=False)
    assert torch.equal(ops.lm_head(h, w), torch.nn.functional.linear(h, w).float())
    assert torch.equal(ops.lm_head(h[0], w), torch.nn.functional.linear(h[0], w).float())


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
    # 9..64 rows of a narrow product: the tensor-core kernel (16-bit, sm_90); more rows, f32, or SSMTP_LINEAR_TC=0
    # (read at import): cuBLAS
    tc = ops._TC and torch.cuda.get_device_capability()[0] >= 9
    assert ops.linear_small_applies(torch.randn(9, 5120, device=dev, dtype=torch.bfloat16), w) == tc
    assert ops.linear_small_applies(torch.randn(64, 5120, device=dev, dtype=torch.bfloat16), w) == tc
    assert not ops.linear_small_applies(torch.randn(65, 5120, device=dev, dtype=torch.bfloat16), w)
    assert not ops.linear_small_applies(torch.randn(9, 5120, device=dev), w.float())
    x40 = torch.randn(40, 1, 5120, device=dev, dtype=torch.bfloat16)
    _check(ops.linear(x40, w, b)[:, 0].cpu(), x40[:, 0].cpu(), w.cpu(), b.cpu())
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
    # unsupported on CUDA: clear errors, no launch (f32 past the GEMV's 8 rows; 16-bit past the tensor-core kernel's)
    with pytest.raises(NotImplementedError, match="M=9"):
        ops.linear_small(torch.randn(9, 5120, device=dev), w.float(), b.float())
    with pytest.raises(NotImplementedError, match="M=257"):
        ops.linear_small(torch.randn(257, 5120, device=dev, dtype=torch.bfloat16), w, b)
    with pytest.raises(NotImplementedError, match="aligned"):
        ops.linear_small(torch.randn(2, 12, device=dev, dtype=torch.bfloat16),
                         torch.randn(3, 12, device=dev, dtype=torch.bfloat16), None)
    with pytest.raises(ValueError, match="is on"):
        ops.linear_small(x, w.cpu(), None)


TC_CASES = [c for c in CASES if c[1] % 32 == 0]


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M", [9, 16, 33, 64, 100, 256])
@pytest.mark.parametrize("case", TC_CASES, ids=[c[0] for c in TC_CASES])
def test_cuda_tensor_core_vs_cpu_op(case, M, dtype, monkeypatch):
    """Past the GEMV's 8 rows (16-bit, K a multiple of 32) the tensor-core kernel: against the exact product and the
    C CPU op; deterministic (the K splits are summed in a fixed order)."""
    monkeypatch.setenv("SSMTP_LINEAR_KERNEL", "tc")  # auto sends wide products to the warpgroup-MMA kernel
    _, K, N = case
    x, w, b = _inputs(M, K, N, dtype, seed=K + M)
    xc, wc, bc = x.cuda(), w.cuda(), b.cuda()
    got = ops.linear_small(xc, wc, bc)
    _check(got.cpu(), x, w, b)
    if M * K * N <= 2e8:  # the C CPU op (single-threaded) on the smaller products
        want = ops.linear_small(x, w, b)
        assert torch.allclose(got.cpu().float(), want.float(), rtol=2 * ULP[dtype],
                              atol=2e-5 * (x.abs() @ w.abs().t()).max().item())
    assert torch.equal(ops.linear_small(xc, wc, bc), got)
    _check(ops.linear_small(xc, wc, None).cpu(), x, w, None)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("splits", ["1", "3", "8"])
@pytest.mark.parametrize("M", [1, 5, 8, 20])
def test_cuda_tensor_core_forced_and_splits(M, splits, monkeypatch):
    """SSMTP_LINEAR_KERNEL=tc runs the tensor-core kernel at any row count up to its limit, and every K split count
    (SSMTP_LINEAR_TC_SPLITS: blocks of one cluster) gives the product within the same bound; row strides of x and
    out other than the width."""
    monkeypatch.setenv("SSMTP_LINEAR_KERNEL", "tc")
    monkeypatch.setenv("SSMTP_LINEAR_TC_SPLITS", splits)
    dev = torch.device("cuda")
    for K, N in ((5120, 192), (2560, 2560), (160, 5120)):
        x, w, b = _inputs(M, K, N, torch.bfloat16, seed=N + M)
        big = torch.zeros(M, K + 96, dtype=torch.bfloat16, device=dev)
        xs = big[:, 32:32 + K]
        xs.copy_(x)
        _check(ops.linear_small(xs, w.to(dev), b.to(dev)).cpu(), x, w, b)


WG_CFGS = ["m1k1s8", "m1k1s6", "m1k2s6", "m1k2s4", "m2k1s6", "m2k1s4", "m2k2s4", "m2k2s3"]  # linear_wg.cu
WG_CASES = CASES + [("odd rows and k", 200, 1000), ("ragged stage", 4104, 136)]


def _wg_built() -> bool:
    return ops._device_kernels(torch.device("cuda", torch.cuda.current_device()))[1]


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M", [1, 3, 8, 9, 16, 33, 64, 100, 128])
@pytest.mark.parametrize("case", WG_CASES, ids=[c[0] for c in WG_CASES])
def test_cuda_warpgroup_mma_vs_cpu_op(case, M, dtype, monkeypatch):
    """SSMTP_LINEAR_KERNEL=wg (compute capability 9.0, sm_90a build): every tile width (8..128 rows of x), partial
    weight tiles and stages (N, K not multiples of 64), against the exact product and the C CPU op; deterministic."""
    if not _wg_built():
        pytest.skip("the warpgroup-MMA kernel needs an sm_90a build on a compute capability 9.0 GPU")
    monkeypatch.setenv("SSMTP_LINEAR_KERNEL", "wg")
    _, K, N = case
    x, w, b = _inputs(M, K, N, dtype, seed=K + M + 1)
    xc, wc, bc = x.cuda(), w.cuda(), b.cuda()
    got = ops.linear_small(xc, wc, bc)
    _check(got.cpu(), x, w, b)
    if M * K * N <= 2e8:
        want = ops.linear_small(x, w, b)
        assert torch.allclose(got.cpu().float(), want.float(), rtol=2 * ULP[dtype],
                              atol=2e-5 * (x.abs() @ w.abs().t()).max().item())
    assert torch.equal(ops.linear_small(xc, wc, bc), got)
    _check(ops.linear_small(xc, wc, None).cpu(), x, w, None)
    o32 = ops.linear_small(xc, wc, bc, True)  # the rounded sums widened to fp32
    assert o32.dtype == torch.float32 and torch.equal(o32, got.float())


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("splits", ["1", "2", "4", "8", "16"])
@pytest.mark.parametrize("cfg", WG_CFGS)
def test_cuda_warpgroup_mma_splits_shapes(splits, cfg, monkeypatch):
    """Every K split count (blocks of one cluster; 16: a non-portable cluster size, or 8 where the device cannot place
    one) and block shape (weight rows, k per stage, stages) gives the product within the same bound (splits with no
    k stage of their own included); row strides of x and out other than the width; captured in a CUDA graph and
    replayed on fresh input."""
    if not _wg_built():
        pytest.skip("the warpgroup-MMA kernel needs an sm_90a build on a compute capability 9.0 GPU")
    monkeypatch.setenv("SSMTP_LINEAR_KERNEL", "wg")
    monkeypatch.setenv("SSMTP_LINEAR_WG_SPLITS", splits)
    monkeypatch.setenv("SSMTP_LINEAR_WG_CFG", cfg)
    dev = torch.device("cuda")
    for M, K, N in ((5, 2560, 2560), (24, 1000, 640), (64, 512, 1024), (8, 5120, 192)):
        x, w, b = _inputs(M, K, N, torch.bfloat16, seed=N + M)
        big = torch.zeros(M, K + 96, dtype=torch.bfloat16, device=dev)
        xs = big[:, 32:32 + K]
        xs.copy_(x)
        wd, bd = w.to(dev), b.to(dev)
        _check(ops.linear_small(xs, wd, bd).cpu(), x, w, b)
        out = torch.empty(M, N, dtype=torch.bfloat16, device=dev)
        ops.linear_small(xs, wd, bd)  # warm-up (the launcher's one-time attribute calls) before capture
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out.copy_(ops.linear_small(xs, wd, bd))
        x2 = torch.randn_like(x)
        xs.copy_(x2.to(dev))
        g.replay()
        torch.cuda.synchronize()
        _check(out.cpu(), x2, w, b)


@pytest.mark.cuda
@cuda
def test_cuda_warpgroup_mma_knobs(monkeypatch):
    """Bad knob values and shapes the kernel does not take are clear errors; auto sends wide products of 3..128 rows
    there where it is built."""
    dev = torch.device("cuda")
    x, w, b = _inputs(16, 256, 1024, torch.bfloat16, device=dev)
    monkeypatch.setenv("SSMTP_LINEAR_KERNEL", "wg")
    if not _wg_built():
        with pytest.raises(NotImplementedError, match="warpgroup"):
            ops.linear_small(x, w, b)
        return
    with pytest.raises(NotImplementedError, match="16-bit"):
        ops.linear_small(x.float(), w.float(), None)
    with pytest.raises(NotImplementedError, match="M=129"):
        ops.linear_small(torch.randn(129, 256, device=dev, dtype=torch.bfloat16), w, None)
    monkeypatch.setenv("SSMTP_LINEAR_WG_SPLITS", "3")
    with pytest.raises(NotImplementedError, match="SSMTP_LINEAR_WG_SPLITS"):
        ops.linear_small(x, w, b)
    monkeypatch.delenv("SSMTP_LINEAR_WG_SPLITS")
    monkeypatch.setenv("SSMTP_LINEAR_WG_CFG", "m3k1s1")
    with pytest.raises(NotImplementedError, match="SSMTP_LINEAR_WG_CFG"):
        ops.linear_small(x, w, b)
    monkeypatch.setenv("SSMTP_LINEAR_WG_CFG", "m2k2s4")
    with pytest.raises(NotImplementedError, match="shared memory"):  # 4 x 128 k of 128 + 128 rows: over the limit
        ops.linear_small(torch.randn(100, 256, device=dev, dtype=torch.bfloat16), w, None)
    monkeypatch.delenv("SSMTP_LINEAR_WG_CFG")
    monkeypatch.delenv("SSMTP_LINEAR_KERNEL")
    got = ops.linear_small(x, w, b)  # auto: the warpgroup-MMA kernel (N = 1024 > 512, 16 rows)
    monkeypatch.setenv("SSMTP_LINEAR_KERNEL", "wg")
    assert torch.equal(got, ops.linear_small(x, w, b))


@pytest.mark.cuda
@cuda
def test_cuda_tensor_core_knobs(monkeypatch):
    dev = torch.device("cuda")
    x, w, b = _inputs(16, 256, 64, torch.bfloat16, device=dev)
    monkeypatch.setenv("SSMTP_LINEAR_KERNEL", "nope")
    with pytest.raises(NotImplementedError, match="SSMTP_LINEAR_KERNEL"):
        ops.linear_small(x, w, b)
    monkeypatch.setenv("SSMTP_LINEAR_KERNEL", "gemv")
    with pytest.raises(NotImplementedError, match="M=16"):
        ops.linear_small(x, w, b)
    monkeypatch.setenv("SSMTP_LINEAR_KERNEL", "tc")
    monkeypatch.setenv("SSMTP_LINEAR_TC_SPLITS", "9")
    with pytest.raises(NotImplementedError, match="SSMTP_LINEAR_TC_SPLITS"):
        ops.linear_small(x, w, b)
    monkeypatch.delenv("SSMTP_LINEAR_TC_SPLITS")
    with pytest.raises(NotImplementedError, match="multiple of 32"):
        ops.linear_small(torch.randn(16, 48, device=dev, dtype=torch.bfloat16),
                         torch.randn(8, 48, device=dev, dtype=torch.bfloat16), None)
    with pytest.raises(NotImplementedError, match="16-bit"):
        ops.linear_small(x.float(), w.float(), None)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("M", [1, 2, 16, 64])
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


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M", [1, 2, 16])
def test_cuda_out_f32_vs_16_bit_out(M, dtype):
    """fp32 output (GEMV rows and, at 16 rows, the tensor-core kernel): the 16-bit output's values widened, bit for
    bit; a vocabulary-sized lm_head at one row takes the kernel (ops.lm_head) and agrees with cuBLAS + .float()."""
    dev = torch.device("cuda")
    x, w, b = _inputs(M, 2560, 3000, dtype, device=dev, seed=M)
    assert torch.equal(ops.linear_small(x, w, b, True), ops.linear_small(x, w, b).float())
    h, wv, _ = _inputs(1, 2560, 50280, dtype, device=dev, bias=False, seed=3)
    got = ops.lm_head(h, wv)
    assert got.dtype == torch.float32 and got.shape == (1, 50280)
    assert torch.equal(got, ops.linear_small(h, wv, None).float())
    _check(got.to(dtype).cpu(), h.cpu(), wv.cpu(), None)
    assert torch.equal(ops.lm_head(h[0], wv), got[0])
    assert torch.equal(ops.lm_head(h.expand(2, -1).contiguous(), wv),
                       torch.nn.functional.linear(h.expand(2, -1), wv).float())  # two rows: cuBLAS
