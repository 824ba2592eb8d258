"""The C CPU ops against the pure-torch twins in ssmtp/ref.py over a labelled case table of awkward sizes, their
torch.library registration (opcheck), and their argument checks (clear Python errors, never a crash)."""
import pytest
import torch

import ssmtp.ops as ops
import ssmtp.ref as ref

# (label, batch, dim, seqlen, dstate, ngroups, width, state_len)
CASES = [
    ("tiny", 1, 1, 1, 1, 1, 2, 1),
    ("seqlen-1", 3, 37, 1, 16, 1, 4, 4),
    ("odd-dims", 2, 45, 19, 7, 3, 3, 5),
    ("zamba-heads", 2, 64, 9, 16, 4, 4, 4),
    ("long", 1, 33, 130, 16, 1, 4, 3),
    ("dstate-256", 1, 4, 5, 256, 1, 2, 1),
]
DTYPES = {
    # (dtype, atol, rtol): fp32 differs only by summation order; half types round the output once (the reference
    # rounds at the same place), so a couple of ulps of the output dtype.
    "float32": (torch.float32, 1e-5, 1e-5),
    "bfloat16": (torch.bfloat16, 2e-2, 2e-2),
    "float16": (torch.float16, 2e-3, 2e-3),
}


def _close(a, b, atol, rtol, what):
    torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def _slots(batch, nslots, gen):
    """A permutation of slots with one padding row (-1) when batch > 1."""
    idx = torch.randperm(nslots, generator=gen)[:batch].to(torch.int32)
    if batch > 1:
        idx[1] = -1
    return idx


@pytest.mark.parametrize("dname", list(DTYPES))
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("variant", ["plain", "slots+lens+load", "noncontig"])
def test_conv1d_matches_ref(case, dname, variant):
    _, batch, dim, L, _, _, width, slen = case
    dtype, atol, rtol = DTYPES[dname]
    g = torch.Generator().manual_seed(hash((case[0], dname, variant)) % 2**31)
    x = torch.randn(batch, dim, L, generator=g).to(dtype)
    if variant == "noncontig":  # a channel-contiguous view, as the TP modules pass it
        x = torch.randn(batch, L, dim * 2, generator=g).to(dtype)[..., :dim].transpose(1, 2)
    w = torch.randn(dim, width, generator=g).to(dtype)
    bias = torch.randn(dim, generator=g).to(dtype)
    nslots = batch + 2
    state = torch.randn(nslots, dim, slen, generator=g).to(dtype)
    idx = lens = None
    load = False
    if variant == "slots+lens+load":
        idx = _slots(batch, nslots, g)
        lens = torch.randint(1, L + 1, (batch,), generator=g).to(torch.int32)
        load = True
    s1, s2 = state.clone(), state.clone()
    y1 = ops.causal_conv1d(x, w, bias, s1, idx, lens, True, load)
    y2 = ref.causal_conv1d(x, w, bias, s2, idx, lens, True, load)
    _close(y1, y2, atol, rtol, "out")
    assert torch.equal(s1, s2), "conv state must be an exact copy of inputs"


@pytest.mark.parametrize("dname", list(DTYPES))
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("variant", ["plain", "slots+lens+load", "noncontig-noDz"])
def test_scan_matches_ref(case, dname, variant):
    _, batch, dim, L, N, G, _, _ = case
    dtype, atol, rtol = DTYPES[dname]
    g = torch.Generator().manual_seed(hash((case[0], dname, variant, "scan")) % 2**31)
    rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    if variant == "noncontig-noDz":
        x = rnd(batch, L, dim * 2).to(dtype)[..., dim:].transpose(1, 2)
    else:
        x = rnd(batch, dim, L).to(dtype)
    dt = (rnd(batch, dim, L) * 0.5).to(dtype)
    A = -torch.rand(dim, N, generator=g) * 2
    B = rnd(batch, G, N, L).to(dtype)
    C = rnd(batch, G, N, L).to(dtype)
    D = None if variant == "noncontig-noDz" else rnd(dim)
    z = None if variant == "noncontig-noDz" else rnd(batch, dim, L).to(dtype)
    bias = rnd(dim) * 0.1
    nslots = batch + 2
    state = rnd(nslots, dim, N)
    idx = lens = None
    load = False
    if variant == "slots+lens+load":
        idx = _slots(batch, nslots, g)
        lens = torch.randint(1, L + 1, (batch,), generator=g).to(torch.int32)
        load = True
    s1, s2 = state.clone(), state.clone()
    y1 = ops.selective_scan(x, dt, A, B, C, D, z, bias, s1, idx, lens, True, load)
    y2 = ref.selective_scan(x, dt, A, B, C, D, z, bias, s2, idx, lens, True, load)
    _close(y1, y2, atol, rtol, "out")
    _close(s1, s2, 1e-5, 1e-5, "state")  # fp32 state: summation order only


@pytest.mark.parametrize("dname", list(DTYPES))
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_step_matches_ref_and_one_scan_step(case, dname):
    _, batch, dim, _, N, G, _, _ = case
    dtype, atol, rtol = DTYPES[dname]
    g = torch.Generator().manual_seed(hash((case[0], dname, "step")) % 2**31)
    rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    x, dt, z = rnd(batch, dim).to(dtype), rnd(batch, dim).to(dtype), rnd(batch, dim).to(dtype)
    A = -torch.rand(dim, N, generator=g)
    B, C = rnd(batch, G, N).to(dtype), rnd(batch, G, N).to(dtype)
    D, bias = rnd(dim), rnd(dim)
    nslots = batch + 1
    state = rnd(nslots, dim, N)
    idx = _slots(batch, nslots, g)
    s1, s2, s3 = state.clone(), state.clone(), state.clone()
    y1 = ops.selective_state_update(x, dt, A, B, C, D, z, bias, s1, idx, True)
    y2 = ref.selective_state_update(x, dt, A, B, C, D, z, bias, s2, idx, True)
    _close(y1, y2, atol, rtol, "out")
    _close(s1, s2, 1e-6, 1e-6, "state")
    # the step is exactly one scan step with load_state (same kernel math, same order)
    y3 = ops.selective_scan(x[..., None], dt[..., None], A, B[..., None], C[..., None], D, z[..., None], bias, s3, idx,
                            None, True, True)
    assert torch.equal(s1, s3)
    assert torch.equal(y1, y3[..., 0])
    pad = (idx < 0).nonzero().flatten()
    if len(pad):
        assert torch.equal(y1[pad].float(), torch.zeros(len(pad), dim)), "padding rows are written as zero"
    untouched = [s for s in range(nslots) if s not in idx.tolist()]
    assert torch.equal(s1[untouched], state[untouched]), "slots not addressed must stay untouched"


@pytest.mark.parametrize("qdtype", ["int8", "fp8"])
@pytest.mark.parametrize("block", [32, 64, 256])
@pytest.mark.parametrize("n", [1, 31, 1000, 4097])
def test_quantize_matches_ref(qdtype, block, n):
    g = torch.Generator().manual_seed(n * block)
    x = torch.randn(n, generator=g) * 10
    if n > 40:
        x[block:2 * block] = 0  # an all-zero block
    q1, s1 = ops.quantize_blocks(x, block, qdtype)
    q2, s2 = ref.quantize_blocks(x, block, qdtype)
    assert torch.equal(q1.view(torch.uint8), q2.view(torch.uint8))
    assert torch.equal(s1, s2)
    back = ops.dequantize_blocks(q1, s1, block, torch.float32)
    torch.testing.assert_close(back, ref.dequantize_blocks(q2, s2, block, torch.float32), atol=0, rtol=0)
    # per-element error is at most half a quantization step of its block (int8), or 1/16 relative (e4m3 3-bit mant.)
    step = s1.repeat_interleave(block)[:n]
    bound = 0.5 * step + 1e-7 if qdtype == "int8" else x.abs() / 16 + step * 2 ** -9 + 1e-7
    assert ((back - x).abs() <= bound).all()
    if n > 40:
        assert (back[block:2 * block] == 0).all(), "an all-zero block dequantizes to exact zeros"


def test_quantize_nonfinite_poisons_only_its_block():
    x = torch.randn(256)
    x[70] = float("inf")
    x[200] = float("nan")
    q, s = ops.quantize_blocks(x, 64, "int8")
    back = ops.dequantize_blocks(q, s, 64, torch.float32)
    assert back[64:128].isnan().all() and back[192:].isnan().all()
    assert torch.isfinite(back[:64]).all() and torch.isfinite(back[128:192]).all()


def _conv_args():
    return (torch.randn(2, 8, 5), torch.randn(8, 4), torch.randn(8), torch.randn(3, 8, 4),
            torch.tensor([0, 2], dtype=torch.int32), None, True, True)


def _scan_args():
    return (torch.randn(2, 8, 5), torch.randn(2, 8, 5), -torch.rand(8, 4), torch.randn(2, 1, 4, 5),
            torch.randn(2, 1, 4, 5), torch.randn(8), torch.randn(2, 8, 5), torch.randn(8), torch.randn(3, 8, 4),
            torch.tensor([2, 0], dtype=torch.int32), torch.tensor([5, 3], dtype=torch.int32), True, True)


def _step_args():
    return (torch.randn(2, 8), torch.randn(2, 8), -torch.rand(8, 4), torch.randn(2, 2, 4), torch.randn(2, 2, 4),
            torch.randn(8), torch.randn(2, 8), torch.randn(8), torch.randn(3, 8, 4),
            torch.tensor([1, -1], dtype=torch.int32), True)


@pytest.mark.parametrize("op,args", [
    (ops.causal_conv1d, _conv_args()),
    (ops.selective_scan, _scan_args()),
    (ops.selective_state_update, _step_args()),
    (ops.quantize_blocks, (torch.randn(100), 32, "int8")),
    (ops.dequantize_blocks, (torch.randint(-127, 127, (100,), dtype=torch.int8), torch.rand(4), 32, torch.float32)),
], ids=["conv1d", "scan", "step", "quantize", "dequantize"])
def test_opcheck(op, args):
    torch.library.opcheck(op, args)


def test_eager_inference_calls_skip_the_dispatcher(monkeypatch):
    """Under no_grad an op call runs the op's body directly (no dispatcher round trip) with the dispatched call's
    results, state mutation included; with gradients on, with SSMTP_OP_FASTPATH=0 (ops._EAGER_DIRECT) and under
    torch.compile tracing the registered op runs (the dispatcher calls the registered kernel, not the op's
    _init_fn attribute, so a wrapper there counts the direct calls only)."""
    op = ops.selective_scan
    body, direct = op._init_fn, []

    def counted(*a, **k):
        direct.append(1)
        return body(*a, **k)

    monkeypatch.setattr(op, "_init_fn", counted)
    args = _scan_args()
    st0 = args[8].clone()
    with torch.no_grad():
        out = op(*args)
    assert len(direct) == 1
    st_direct = args[8].clone()
    args[8].copy_(st0)
    ref = op(*args)  # gradients on: the dispatcher
    assert len(direct) == 1
    assert torch.equal(out, ref) and torch.equal(st_direct, args[8])
    monkeypatch.setattr(ops, "_EAGER_DIRECT", False)
    with torch.no_grad():
        op(*args)
    assert len(direct) == 1
    monkeypatch.setattr(ops, "_EAGER_DIRECT", True)
    args[8].copy_(st0)
    with torch.no_grad():
        comp = torch.compile(lambda *a: op(*a) + 0, fullgraph=True, backend="aot_eager")(*args)
    assert len(direct) == 1
    assert torch.equal(comp, ref) and torch.equal(st_direct, args[8])


# ------------------------------------------------------------------------------------------------ bad input

def test_bad_shapes_dtypes_devices_raise_clear_errors():
    x, w, b, s, idx, _, _, _ = _conv_args()
    with pytest.raises(ValueError, match=r"conv1d_fwd: weight.shape\[0\]=7, expected 8"):
        ops.causal_conv1d(x, torch.randn(7, 4), b, s, idx, None, True, True)
    with pytest.raises(NotImplementedError, match="width=5, supported 2..4"):
        ops.causal_conv1d(x, torch.randn(8, 5), b, s, idx, None, True, True)
    with pytest.raises(ValueError, match="weight must be float32, got float16"):
        ops.causal_conv1d(x, w.half(), b, s, idx, None, True, True)
    with pytest.raises(ValueError, match="state_idx must be int32, got int64"):
        ops.causal_conv1d(x, w, b, s, idx.long(), None, True, True)
    with pytest.raises(ValueError, match="state_idx\\[1\\]=7 >= nslots=3"):
        ops.causal_conv1d(x, w, b, s, torch.tensor([0, 7], dtype=torch.int32), None, True, True)
    with pytest.raises(ValueError, match="load_state=1 needs a state tensor"):
        ops.causal_conv1d(x, w, b, None, None, None, True, True)
    with pytest.raises(ValueError, match="must have 3 dims"):
        ops.causal_conv1d(x[0], w, b, s, idx, None, True, True)
    with pytest.raises(ValueError, match="seq_lens\\[0\\]=9 outside 0..5"):
        ops.causal_conv1d(x, w, b, s, idx, torch.tensor([9, 1], dtype=torch.int32), True, True)
    # meta tensors take the registered fake (shape propagation for torch.compile), not the C kernel
    assert ops.causal_conv1d(x.to("meta"), w.to("meta"), b.to("meta"), s.to("meta"), idx.to("meta"), None, True,
                             True).device.type == "meta"
    with pytest.raises(TypeError, match="unsupported dtype torch.float64"):
        ops.causal_conv1d(x.double(), w, b, s, idx, None, True, True)

    args = list(_scan_args())
    bad = list(args)
    bad[2] = -torch.rand(8, 300)
    bad[3] = torch.randn(2, 1, 300, 5)
    bad[4] = torch.randn(2, 1, 300, 5)
    bad[8] = torch.randn(3, 8, 300)
    with pytest.raises(NotImplementedError, match="d_state=300 outside 1..256"):
        ops.selective_scan(*bad)
    bad = list(args)
    bad[3] = torch.randn(2, 3, 4, 5)
    with pytest.raises(ValueError, match="ngroups=3 does not divide dim=8"):
        ops.selective_scan(*bad)
    bad = list(args)
    bad[2] = -torch.rand(8, 4).half()
    with pytest.raises(ValueError, match="A must be float32"):
        ops.selective_scan(*bad)

    sargs = list(_step_args())
    sargs[8] = torch.randn(1, 8, 4)  # 1 slot, no index for row 0 -> out of range
    with pytest.raises(ValueError, match="state_idx\\[0\\]=1 >= nslots=1"):
        ops.selective_state_update(*sargs)
    with pytest.raises(NotImplementedError, match="block=48"):
        ops.quantize_blocks(torch.randn(100), 48, "int8")
    with pytest.raises(ValueError, match="qdtype must be one of"):
        ops.quantize_blocks(torch.randn(100), 32, "int4")


def test_cuda_tensor_on_cpu_only_build_or_mixed_devices():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device to build a CUDA tensor")
    x, w, b, s, idx, _, _, _ = _conv_args()
    with pytest.raises((ValueError, RuntimeError)):
        ops.causal_conv1d(x.cuda(), w, b, s, idx, None, True, True)
