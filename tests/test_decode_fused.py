"""The fused decode ops of a Mamba-1 block on the CPU: ssmtp::mamba_decode_in (residual add + RMSNorm + in_proj + conv
step) and the step with dt_proj fused (ssmtp::selective_state_update(..., dt_proj)). The C CPU ops against the
pure-torch twins in ssmtp/ref.py and against the unfused chain the engine runs otherwise, their torch.library
registration (opcheck), and their argument checks (clear Python errors, never a crash)."""
import zlib

import pytest
import torch

import ssmtp.ops as ops
import ssmtp.ref as ref
from ssmtp.engine.runner import _rms_norm

pytestmark = pytest.mark.usefixtures("one_thread")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ULP = {torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}  # spacing just above 1.0

# (label, H, d_inner, conv width, conv state length)
SHAPES = [
    ("odd W3 S3", 24, 12, 3, 3),
    ("odd W3 S2 (= width-1)", 24, 12, 3, 2),
    ("W2 S1", 16, 5, 2, 1),
    ("W4 S6 (longer history)", 40, 20, 4, 6),
]


def _decode_in_inputs(M, H, dl, W, S, dtype, res_fp32, seed, full=True, nslots=None):
    """Inputs of mamba_decode_in; full: add, bias, conv_b and state_idx (a permutation with one padding row when
    M > 1) present, else all four absent (slots 0..M-1)."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    nslots = nslots or M + 3
    a = dict(res=rnd(M, H) if res_fp32 else rnd(M, H).to(dtype),
             add=rnd(M, H).to(dtype) if full else None,
             norm_w=(1 + 0.2 * rnd(H)).to(dtype),
             weight=(rnd(2 * dl, H) / H**0.5).to(dtype),
             bias=(0.5 * rnd(2 * dl)).to(dtype) if full else None,
             conv_w=(rnd(dl, W) / W**0.5).to(dtype),
             conv_b=(0.5 * rnd(dl)).to(dtype) if full else None,
             conv_state=rnd(nslots, dl, S).to(dtype),
             state_idx=None)
    if full:
        idx = torch.randperm(nslots, generator=g)[:M].to(torch.int32)
        if M > 1:
            idx[1] = -1
        a["state_idx"] = idx
    return a


def _call(fn, a, eps, res_fp32, conv_state):
    return fn(a["res"], a["add"], a["norm_w"], a["weight"], a["bias"], a["conv_w"], a["conv_b"], conv_state,
              a["state_idx"], eps, res_fp32)


def _slots(a, M):
    return list(range(M)) if a["state_idx"] is None else a["state_idx"].tolist()


def _bound(a, dtype):
    """Per-element error bounds (z, xc, the x half of in_proj) between two computations that round at the same places
    (ssmtp.h) but may order their fp32 sums differently:
      - the RMSNorm statistic: the normed row h can then differ by one rounding (1 ulp of T) in some elements, which
        moves in_proj output j by at most ULP x sum_k |h_k W_jk| (its magnitude, mag); 4 ULP allow for fp32, where
        the scale, v x s and the norm-weight product each carry their own rounding difference;
      - the order of a dot product of length n: at most n x 2^-24 of its magnitude (the fp32 worst case);
      - the conv's new input moves xc by at most |w_last| times its own error (SiLU' <= 1.1).
    _within adds 2 ulps of each output's own size for its final rounding."""
    T = a["weight"].dtype
    H, dl = a["weight"].shape[1], a["conv_w"].shape[0]  # the conv rows first (as Mamba-1's x half)
    W, S = a["conv_w"].shape[1], a["conv_state"].shape[2]
    r = a["res"].float() + (a["add"].float() if a["add"] is not None else 0)
    h = _rms_norm(r.to(T), a["norm_w"], 1e-5).float()
    mag = h.abs() @ a["weight"].float().abs().t()
    xz = h @ a["weight"].float().t()
    if a["bias"] is not None:
        mag = mag + a["bias"].float().abs()
        xz = xz + a["bias"].float()
    dxz = (4 * ULP[dtype] + H * 2.0**-24) * mag
    dx = dxz[:, :dl]
    slots = torch.tensor(_slots(a, r.shape[0]))
    hist = torch.where((slots >= 0)[:, None, None], a["conv_state"][slots.clamp(min=0), :, S - (W - 1):].float(), 0)
    cw = a["conv_w"].float().abs()
    cmag = (hist.abs() * cw[:, :-1]).sum(-1) + cw[:, -1] * (xz[:, :dl].abs() + dx)
    if a["conv_b"] is not None:
        cmag = cmag + a["conv_b"].float().abs()
    dxc = 1.1 * (cw[:, -1] * dx + W * 2.0**-24 * cmag)
    return dxz[:, dl:], dxc, dx


def _within(got, want, atol, what):
    err = (got.double() - want.double()).abs()
    tol = 2 * ULP[got.dtype] * want.double().abs() + atol.double() + 1e-30
    assert bool((err <= tol).all()), f"{what}: max err {err.max().item():.3e}, worst ratio {(err / tol).max():.2f}"


def _mostly_exact(got, want, what):
    """f16/bf16: the roundings sit at the same places, so nearly every element is bitwise equal (measured >= 94% at
    H = 768, all of them at H <= 40); the bound in _within alone would also pass a missing intermediate rounding, which
    leaves only ~40% equal."""
    if got.dtype == torch.float32 or got.numel() < 16:
        return
    frac = (got == want).float().mean().item()
    assert frac >= 0.75, f"{what}: only {frac:.0%} of the elements are bitwise equal"


def _check_state(got, want, before, slots, atol_new, what):
    """Addressed slots: the shifted history exact, the new column within atol_new; every other slot untouched."""
    live = [s for s in slots if s >= 0]
    assert torch.equal(got[live, :, :-1], want[live, :, :-1]), f"{what}: shifted history must be exact copies"
    if live:
        _within(got[live, :, -1], want[live, :, -1], atol_new[[i for i, s in enumerate(slots) if s >= 0]],
                f"{what}: new column")
    rest = [s for s in range(got.shape[0]) if s not in live]
    assert torch.equal(got[rest], before[rest]), f"{what}: slots not addressed (and padding rows) stay untouched"


@pytest.mark.parametrize("res_fp32", [True, False], ids=["res-f32", "res-T"])
@pytest.mark.parametrize("full", [True, False], ids=["add+bias+slots", "bare"])
@pytest.mark.parametrize("M", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("dname", list(DTYPES))
@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
def test_decode_in_matches_ref(shape, dname, M, full, res_fp32):
    _, H, dl, W, S = shape
    dtype = DTYPES[dname]
    seed = zlib.crc32(repr((shape, dname, M, full, res_fp32)).encode())
    a = _decode_in_inputs(M, H, dl, W, S, dtype, res_fp32, seed=seed, full=full)
    s1, s2 = a["conv_state"].clone(), a["conv_state"].clone()
    res_out, xc, z = _call(ops.mamba_decode_in, a, 1e-5, res_fp32, s1)
    r_res, r_xc, r_z = _call(ref.mamba_decode_in, a, 1e-5, res_fp32, s2)
    assert res_out.dtype == (torch.float32 if res_fp32 else dtype) and res_out.shape == (M, H)
    assert xc.dtype == z.dtype == dtype and xc.shape == z.shape == (M, dl)
    assert torch.equal(res_out, r_res), "res + add in fp32, rounded once: exact"
    dz, dxc, dx = _bound(a, dtype)
    _within(z, r_z, dz, "z")
    _within(xc, r_xc, dxc, "xc")
    _mostly_exact(z, r_z, "z")
    _mostly_exact(xc, r_xc, "xc")
    slots = _slots(a, M)
    pad = [i for i, s in enumerate(slots) if s < 0]
    if pad:
        assert torch.equal(xc[pad].float(), torch.zeros(len(pad), dl)), "padding rows: xc is zero"
    _check_state(s1, s2, a["conv_state"], slots, dx, "conv_state")


def _unfused(a, eps, res_fp32, conv_state):
    """What the engine runs without the fused op: runner.add_block_norm's residual add and RMSNorm, ops.linear_small
    (in_proj), ops.causal_conv1d's decode (seqlen 1, load_state, SiLU)."""
    T = a["weight"].dtype
    res = a["res"].float() if res_fp32 else a["res"]
    r = res if a["add"] is None else res + a["add"]
    h = _rms_norm(r.to(T), a["norm_w"], eps)
    xz = ops.linear_small(h, a["weight"], a["bias"])
    dl = xz.shape[1] // 2
    xc = ops.causal_conv1d(xz[:, :dl, None], a["conv_w"], a["conv_b"], conv_state, a["state_idx"], None, True,
                           True)[..., 0]
    return r, xc, xz[:, dl:]


# (label, M, H, d_inner, W, S): the mamba-130m block (d_model 768) and odd sizes
UNFUSED_CASES = [("mamba-130m B=4", 4, 768, 64, 4, 4), ("odd", 3, 40, 20, 3, 2), ("M=7 (CPU only)", 7, 24, 12, 4, 3)]


@pytest.mark.parametrize("res_fp32", [True, False], ids=["res-f32", "res-T"])
@pytest.mark.parametrize("dname", list(DTYPES))
@pytest.mark.parametrize("case", UNFUSED_CASES, ids=[c[0] for c in UNFUSED_CASES])
def test_decode_in_equals_unfused_chain(case, dname, res_fp32):
    """Both round at the same places (res_out, the normed input, its product with the norm weight, in_proj's output)
    and the in_proj dot products and conv taps are the same sequential fp32 loops (linear.c, conv1d.c), so the only
    difference is the RMSNorm statistic: a sequential fp32 sum of squares and 1/sqrtf here, torch's blocked reduction
    and rsqrt there. That moves the scale by an fp32 ulp or so, which in fp32 stays a few ulps of every output and in
    bf16/f16 sometimes flips one rounding of the normed row (1 ulp of T), which reaches the outputs as at most about
    one ulp of T of the dot product's magnitude (_bound). Most calls are bitwise equal."""
    _, M, H, dl, W, S = case
    dtype = DTYPES[dname]
    for seed in range(4):
        a = _decode_in_inputs(M, H, dl, W, S, dtype, res_fp32, seed=seed, full=seed % 2 == 0)
        s1, s2 = a["conv_state"].clone(), a["conv_state"].clone()
        got = _call(ops.mamba_decode_in, a, 1e-5, res_fp32, s1)
        want = _unfused(a, 1e-5, res_fp32, s2)
        assert torch.equal(got[0], want[0].to(got[0].dtype)), "residual: same fp32 add, same rounding"
        dz, dxc, dx = _bound(a, dtype)
        _within(got[2], want[2], dz, "z")
        _within(got[1], want[1], dxc, "xc")
        _mostly_exact(got[2], want[2], "z")
        _mostly_exact(got[1], want[1], "xc")
        _check_state(s1, s2, a["conv_state"], _slots(a, M), dx, "conv_state")


@pytest.mark.parametrize("dname", list(DTYPES))
@pytest.mark.parametrize("lo,nc,extra", [(12, 20, 3), (0, 20, 3), (5, 7, 0)], ids=["zamba2-like", "lo0", "tail0"])
def test_decode_in_conv_rows_at_an_offset(lo, nc, extra, dname):
    """conv_lo > 0 (Zamba2's in_proj rows [gate | xBC | dt], the conv over xBC): the same per-row arithmetic as the
    weight with its conv rows moved first and conv_lo = 0, so bitwise equal to that call; and as the torch reference.
    z holds the other rows in order."""
    dtype = DTYPES[dname]
    M, H, W, S = 3, 24, 4, 3
    n = lo + nc + extra
    for seed in range(3):
        a = _decode_in_inputs(M, H, nc, W, S, dtype, True, seed=seed)
        g = torch.Generator().manual_seed(100 + seed)
        a["weight"] = (torch.randn(n, H, generator=g) / H**0.5).to(dtype)
        a["bias"] = (0.5 * torch.randn(n, generator=g)).to(dtype)
        s1, s2, s3 = (a["conv_state"].clone() for _ in range(3))
        got = ops.mamba_decode_in(*(a[k] for k in ("res", "add", "norm_w", "weight", "bias", "conv_w", "conv_b")),
                                  s1, a["state_idx"], 1e-5, True, lo)
        perm = torch.cat([torch.arange(lo, lo + nc), torch.arange(0, lo), torch.arange(lo + nc, n)])
        b = dict(a, weight=a["weight"][perm].contiguous(), bias=a["bias"][perm].contiguous())
        first = _call(ops.mamba_decode_in, b, 1e-5, True, s2)
        want = ref.mamba_decode_in(*(a[k] for k in ("res", "add", "norm_w", "weight", "bias", "conv_w", "conv_b")),
                                   s3, a["state_idx"], 1e-5, True, lo)
        assert got[1].shape == (M, nc) and got[2].shape == (M, n - nc)
        for x, y, name in zip(got + (s1,), first + (s2,), ("res_out", "xc", "z", "conv_state")):
            assert torch.equal(x, y), f"{name}: conv rows at {lo} vs moved first"
        dz, dxc, dx = _bound(b, dtype)  # b: the same rows, conv rows first
        _within(got[2], want[2], dz, "z")
        _within(got[1], want[1], dxc, "xc")
        _check_state(s1, s3, a["conv_state"], _slots(a, M), dx, "conv_state")
    torch.library.opcheck(ops.mamba_decode_in, (a["res"], a["add"], a["norm_w"], a["weight"], a["bias"], a["conv_w"],
                                                a["conv_b"], a["conv_state"].clone(), a["state_idx"], 1e-5, True, lo))


def test_decode_in_padding_rows():
    """A padding row leaves every slot untouched but still writes res_out and z; nslots > M."""
    a = _decode_in_inputs(3, 24, 12, 4, 3, torch.float32, True, seed=5, nslots=9)
    a["state_idx"] = torch.tensor([-1, 8, -1], dtype=torch.int32)
    st = a["conv_state"].clone()
    res_out, xc, z = _call(ops.mamba_decode_in, a, 1e-6, True, st)
    assert torch.equal(res_out, a["res"] + a["add"].float())
    assert torch.equal(xc[[0, 2]], torch.zeros(2, 12)) and (xc[1] != 0).any()
    assert (z[[0, 2]] != 0).any(), "padding rows still get their gate"
    assert torch.equal(st[:8], a["conv_state"][:8])
    assert torch.equal(st[8, :, :-1], a["conv_state"][8, :, 1:])


# ------------------------------------------------------------------------------------------------ step + dt_proj

STEP_TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}


def _step_twins(x, dt, A, B, C, D, z, bias, state, idx, dt_proj, dt_full):
    """The step with this dt (and dt_proj) against the plain step on dt_full, the per-channel time step it stands for
    (the same bits), and against ref.py's twin (within a rounding). Returns the output and the updated state."""
    s1, s2, s3 = state.clone(), state.clone(), state.clone()
    y1 = ops.selective_state_update(x, dt, A, B, C, D, z, bias, s1, idx, True, dt_proj)
    y2 = ops.selective_state_update(x, dt_full, A, B, C, D, z, bias, s2, idx, True)
    assert torch.equal(y1, y2) and torch.equal(s1, s2)
    y3 = ref.selective_state_update(x, dt, A, B, C, D, z, bias, s3, idx, True, dt_proj=dt_proj)
    tol = STEP_TOL[x.dtype]
    torch.testing.assert_close(y1.float(), y3.float(), atol=tol, rtol=tol)
    torch.testing.assert_close(s1, s3, atol=1e-5, rtol=1e-5)
    return y1, s1


@pytest.mark.parametrize("dname", list(DTYPES))
@pytest.mark.parametrize("batch,dim,R,N", [(1, 8, 3, 4), (3, 37, 7, 16), (4, 64, 16, 16), (2, 5, 1, 1)])
def test_step_dt_proj_equals_linear_then_step(batch, dim, R, N, dname):
    """The fused projection is linear_small's loop (sequential fp32 sum in the same order, one rounding to the dtype of
    x), so the fused step equals linear_small(dt, dt_proj) + the plain step bit for bit; and the twin in ref.py."""
    dtype = DTYPES[dname]
    g = torch.Generator().manual_seed(batch * 1000 + dim + R)
    rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    x, z = rnd(batch, dim).to(dtype), rnd(batch, dim).to(dtype)
    dt_low = rnd(batch, R).to(dtype)
    dt_proj = (rnd(dim, R) / R**0.5).to(dtype)
    A = -torch.rand(dim, N, generator=g)
    B, C = rnd(batch, 1, N).to(dtype), rnd(batch, 1, N).to(dtype)
    D, bias = rnd(dim), rnd(dim)
    nslots = batch + 2
    state = rnd(nslots, dim, N)
    idx = torch.randperm(nslots, generator=g)[:batch].to(torch.int32)
    if batch > 1:
        idx[-1] = -1
    y1, s1 = _step_twins(x, dt_low, A, B, C, D, z, bias, state, idx, dt_proj, ops.linear_small(dt_low, dt_proj, None))
    # the CPU path takes any layout: a transposed dt_proj and strided rows of dt
    dt_proj_t = dt_proj.t().contiguous().t()
    dt_wide = torch.zeros(batch, 2 * R + 1, dtype=dtype)[:, 1::2]
    dt_wide.copy_(dt_low)
    s4 = state.clone()
    y4 = ops.selective_state_update(x, dt_wide, A, B, C, D, z, bias, s4, idx, True, dt_proj_t)
    assert torch.equal(y4, y1) and torch.equal(s4, s1)


@pytest.mark.parametrize("dname", list(DTYPES))
@pytest.mark.parametrize("batch,groups,pg,R,N", [(1, 2, 8, 3, 4), (3, 3, 5, 7, 16), (2, 2, 16, 16, 16)])
def test_step_grouped_dt_proj_equals_per_group_linear_then_step(batch, groups, pg, R, N, dname):
    """dt (batch, ngroups, R): channel c projects its group's row (Zamba's per-head x_proj). The same bits as
    linear_small of each group's rows through its dt_proj rows followed by the plain step; the twin in ref.py; and the
    layout the Zamba mixer hands over (the diagonal blocks of one product over all groups, a strided view)."""
    dtype = DTYPES[dname]
    dim = groups * pg
    g = torch.Generator().manual_seed(batch * 100 + groups * 10 + R)
    rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    x, z = rnd(batch, dim).to(dtype), rnd(batch, dim).to(dtype)
    dt3 = rnd(batch, groups, R).to(dtype)
    dt_proj = (rnd(dim, R) / R**0.5).to(dtype)
    A = -torch.rand(dim, N, generator=g)
    B, C = rnd(batch, groups, N).to(dtype), rnd(batch, groups, N).to(dtype)
    D, bias = rnd(dim), rnd(dim)
    nslots = batch + 2
    state = rnd(nslots, dim, N)
    idx = torch.randperm(nslots, generator=g)[:batch].to(torch.int32)
    dt_full = torch.cat([ops.linear_small(dt3[:, i].contiguous(), dt_proj[i * pg:(i + 1) * pg].contiguous(), None)
                         for i in range(groups)], dim=1)
    y1, s1 = _step_twins(x, dt3, A, B, C, D, z, bias, state, idx, dt_proj, dt_full)
    # the diagonal blocks of a (batch * groups, groups * R) product, as TPZambaMambaMixer's decode step takes them
    full = torch.zeros(batch * groups, groups * R, dtype=dtype)
    diag = full.as_strided((batch, groups, R), (groups * groups * R, (groups + 1) * R, 1))
    diag.copy_(dt3)
    s4 = state.clone()
    y4 = ops.selective_state_update(x, diag, A, B, C, D, z, bias, s4, idx, True, dt_proj)
    assert torch.equal(y4, y1) and torch.equal(s4, s1)


@pytest.mark.parametrize("dname", list(DTYPES))
@pytest.mark.parametrize("batch,heads,hd,N,one_a", [(1, 4, 8, 16, True), (3, 5, 4, 8, False), (2, 1, 12, 4, True)])
def test_step_dt_per_group_view_equals_repeated_dt(batch, heads, hd, N, one_a, dname):
    """The plain step's dt as (batch, G, dim / G), here one time step per head expanded with stride 0 (Zamba2's decode):
    the same bits as the repeated (batch, dim) dt; the twin in ref.py; a (batch, G, dim / G) that is not a cover of
    dim is refused."""
    dtype = DTYPES[dname]
    dim = heads * hd
    g = torch.Generator().manual_seed(batch * 100 + heads * 10 + hd)
    rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    x = rnd(batch, dim).to(dtype)
    dth = rnd(batch, heads).to(dtype)
    A = (-torch.rand(dim, 1, generator=g)).expand(dim, N) if one_a else -torch.rand(dim, N, generator=g)
    B, C = rnd(batch, 1, N).to(dtype), rnd(batch, 1, N).to(dtype)
    D, bias = rnd(dim), rnd(dim)
    state = rnd(batch + 1, dim, N)
    idx = torch.arange(batch, 0, -1, dtype=torch.int32)
    _step_twins(x, dth[:, :, None].expand(batch, heads, hd), A, B, C, D, None, bias, state, idx, None,
                dth.repeat_interleave(hd, dim=1))
    with pytest.raises(ValueError, match=r"does not cover dim=%d channels" % dim):
        ops.selective_state_update(x, torch.zeros(batch, heads, hd + 1, dtype=dtype), A, B, C, D, None, bias,
                                   state.clone(), idx, True)


def test_step_grouped_dt_bad_groups_raise():
    a = list(_step_dt_proj_args())
    a[1] = torch.randn(2, 2, 3)  # two rows of dt per sequence, but B and C have one group
    with pytest.raises(ValueError, match=r"step_fwd: dt.shape\[1\]=2, expected 1"):
        ops.selective_state_update(*a)
    a[1] = torch.randn(2, 1, 4)
    with pytest.raises(ValueError, match=r"step_fwd: dt.shape\[2\]=4, expected 3"):
        ops.selective_state_update(*a)


# ------------------------------------------------------------------------------------------------ registration

def _decode_in_args(full=True, res_fp32=True):
    a = _decode_in_inputs(3, 16, 8, 4, 3, torch.float32, res_fp32, seed=1, full=full)
    return (a["res"], a["add"], a["norm_w"], a["weight"], a["bias"], a["conv_w"], a["conv_b"], a["conv_state"],
            a["state_idx"], 1e-5, res_fp32)


def _step_dt_proj_args():
    return (torch.randn(2, 8), torch.randn(2, 3), -torch.rand(8, 4), torch.randn(2, 1, 4), torch.randn(2, 1, 4),
            torch.randn(8), torch.randn(2, 8), torch.randn(8), torch.randn(3, 8, 4),
            torch.tensor([2, -1], dtype=torch.int32), True, torch.randn(8, 3))


@pytest.mark.parametrize("op,args", [
    (ops.mamba_decode_in, _decode_in_args()),
    (ops.mamba_decode_in, _decode_in_args(full=False, res_fp32=False)),
    (ops.selective_state_update, _step_dt_proj_args()),
], ids=["decode_in", "decode_in-bare", "step-dt_proj"])
def test_opcheck(op, args):
    torch.library.opcheck(op, args)


def test_fake_shapes_on_meta():
    args = [t.to("meta") if isinstance(t, torch.Tensor) else t for t in _decode_in_args()]
    res_out, xc, z = ops.mamba_decode_in(*args)
    assert res_out.device.type == "meta" and res_out.shape == (3, 16) and res_out.dtype == torch.float32
    assert xc.shape == z.shape == (3, 8)
    args = [t.to("meta") if isinstance(t, torch.Tensor) else t for t in _step_dt_proj_args()]
    assert ops.selective_state_update(*args).shape == (2, 8)


# ------------------------------------------------------------------------------------------------ bad input

def test_decode_in_bad_input_raises_clear_errors():
    base = _decode_in_args()
    names = ["res", "add", "norm_w", "weight", "bias", "conv_w", "conv_b", "conv_state", "state_idx", "eps",
             "res_fp32"]

    def call(**kw):
        args = dict(zip(names, base))
        args["conv_state"] = args["conv_state"].clone()
        args.update(kw)
        return ops.mamba_decode_in(*[args[n] for n in names])

    res, add, norm_w, weight, bias, conv_w, conv_b, conv_state, idx = base[:9]
    with pytest.raises(ValueError, match=r"conv rows \[9, 17\) \(conv_lo, conv_w's 8 rows\) are not within weight"):
        ops.mamba_decode_in(*base[:7], conv_state.clone(), *base[8:], 9)
    with pytest.raises(ValueError, match=r"conv rows \[-1, 7\)"):
        ops.mamba_decode_in(*base[:7], conv_state.clone(), *base[8:], -1)
    with pytest.raises(ValueError, match=r"conv_w has 8 rows \(conv channels\), more than weight's 7 rows"):
        call(weight=weight[:7], bias=None)
    with pytest.raises(ValueError, match=r"res.shape\[1\]=12, expected 16"):
        call(res=res[:, :12])
    with pytest.raises(ValueError, match=r"add.shape\[0\]=2, expected 3"):
        call(add=add[:2])
    with pytest.raises(ValueError, match="norm_w must be float32, got bfloat16"):
        call(norm_w=norm_w.bfloat16())
    with pytest.raises(ValueError, match="res must be float32 or bfloat16 \\(the dtype of weight\\), got float16"):
        call(res=res.half(), weight=weight.bfloat16(), norm_w=norm_w.bfloat16(), add=add.bfloat16(),
             bias=bias.bfloat16(), conv_w=conv_w.bfloat16(), conv_b=conv_b.bfloat16(),
             conv_state=conv_state.bfloat16())
    with pytest.raises(ValueError, match=r"bias.shape\[0\]=8, expected 16"):
        call(bias=bias[:8])
    with pytest.raises(NotImplementedError, match="conv width=5, supported 2..4"):
        call(conv_w=torch.randn(8, 5), conv_state=torch.randn(4, 8, 4))
    with pytest.raises(ValueError, match="conv_state length 2 < width-1=3"):
        call(conv_state=torch.randn(4, 8, 2))
    with pytest.raises(ValueError, match=r"conv_state.shape\[1\]=9, expected 8"):
        call(conv_state=torch.randn(4, 9, 3))
    with pytest.raises(ValueError, match="conv_state must be float32, got float16"):
        call(conv_state=conv_state.half())
    with pytest.raises(ValueError, match="state_idx must be int32, got int64"):
        call(state_idx=idx.long())
    with pytest.raises(ValueError, match="conv_state has 2 slots < M=3 rows and no state_idx"):
        call(conv_state=torch.randn(2, 8, 3), state_idx=None)
    with pytest.raises(ValueError, match="weight must be contiguous"):
        call(weight=torch.randn(16, 16).t())
    with pytest.raises(ValueError, match="res must be contiguous in its last dim"):
        call(res=torch.randn(16, 3).t())
    with pytest.raises(ValueError, match="must be 2-D"):
        call(res=res[0])
    with pytest.raises(TypeError, match="unsupported dtype torch.float64"):
        call(res=res.double())
    with pytest.raises((ValueError, NotImplementedError), match="weight"):
        call(weight=weight.to(torch.int32))
    # an out-of-range slot is rejected before anything is written
    st = conv_state.clone()
    with pytest.raises(ValueError, match=r"mamba_decode_in: state_idx\[2\]=6 >= nslots=6"):
        call(conv_state=st, state_idx=torch.tensor([0, -1, 6], dtype=torch.int32))
    assert torch.equal(st, conv_state)
    # the CPU never takes the CUDA kernels' dispatch rules
    assert not ops.mamba_decode_in_applies(res, weight, add)


def test_step_dt_proj_bad_input_raises_clear_errors():
    args = list(_step_dt_proj_args())
    bad = list(args)
    bad[11] = torch.randn(7, 3)
    with pytest.raises(ValueError, match=r"step_fwd: dt_proj.shape\[0\]=7, expected 8"):
        ops.selective_state_update(*bad)
    bad = list(args)
    bad[1] = torch.randn(2, 4)
    with pytest.raises(ValueError, match=r"step_fwd: dt.shape\[1\]=4, expected 3"):
        ops.selective_state_update(*bad)
    bad = list(args)
    bad[1] = torch.randn(2, 8)  # the full-width dt of the plain step, with dt_proj given
    with pytest.raises(ValueError, match=r"dt.shape\[1\]=8, expected 3"):
        ops.selective_state_update(*bad)
    bad = list(args)
    bad[11] = torch.randn(8, 3).bfloat16()
    with pytest.raises(ValueError, match="dt_proj must be float32, got bfloat16"):
        ops.selective_state_update(*bad)
    bad = list(args)
    bad[11] = torch.randn(8)
    with pytest.raises(ValueError, match="dt_proj must have 2 dims"):
        ops.selective_state_update(*bad)
    bad = list(args)
    bad[11] = None
    with pytest.raises(ValueError, match=r"dt.shape\[1\]=3, expected 8"):  # the plain step's check is unchanged
        ops.selective_state_update(*bad)


@pytest.mark.cuda
def test_cuda_layout_rejections():
    """Valid calls the CUDA kernels do not take are SSMTP_ERR_UNSUPPORTED (NotImplementedError) before any launch;
    callers check mamba_decode_in_applies and run the unfused ops instead."""
    dev = torch.device("cuda")
    a = [t.to(dev) if isinstance(t, torch.Tensor) else t for t in _decode_in_args()]
    res, weight = a[0], a[3]
    assert ops.mamba_decode_in_applies(res, weight, a[1])
    five = torch.randn(5, 16, device=dev)
    assert not ops.mamba_decode_in_applies(five, weight)
    with pytest.raises(NotImplementedError, match="M=5 rows on CUDA, supported 1..4"):
        ops.mamba_decode_in(five, None, *a[2:8], None, 1e-5, True)
    b = list(_decode_in_inputs(2, 12, 8, 4, 3, torch.bfloat16, True, seed=2).values())  # H = 12: 24-byte rows
    b = [t.to(dev) if isinstance(t, torch.Tensor) else t for t in b]
    assert not ops.mamba_decode_in_applies(b[0], b[3])
    with pytest.raises(NotImplementedError, match="H=12 .* multiple of 16 bytes"):
        ops.mamba_decode_in(*b, 1e-5, True)
    # the step with dt_proj takes any rank on CUDA (R = 3: the per-element loop) and matches the CPU op
    c = list(_step_dt_proj_args())
    s = [t.to(dev) if isinstance(t, torch.Tensor) else t for t in c]
    st_gpu, st_cpu = s[8], c[8]
    got = ops.selective_state_update(*s)
    want = ops.selective_state_update(*c)
    assert torch.allclose(got.cpu(), want, rtol=1e-4, atol=1e-5) and torch.allclose(st_gpu.cpu(), st_cpu, rtol=1e-4,
                                                                                    atol=1e-5)
    s[11] = torch.randn(3, 8, device=dev).t()  # rows of dt_proj not contiguous
    with pytest.raises(NotImplementedError, match="dt_proj rows must be contiguous on CUDA"):
        ops.selective_state_update(*s)


@pytest.mark.parametrize("family", ["mamba", "falcon_mamba"])
def test_mixer_step_with_fused_dt_proj_equals_plain_step(family):
    """TPMambaMixer.mix_step(fuse_dt=True) (the engine's choice at small batch on CUDA: the low-rank dt goes into the
    state update with dt_proj) vs the plain step (dt_proj as its own GEMV), CPU fp32, from the same states: the same
    output and states up to the GEMV's summation order (Falcon-Mamba: its dt/B/C norms run before either)."""
    from ssmtp.models.mamba import TPMambaMixer
    from ssmtp.parallel.comm import Communicator
    from tiny_models import build

    model = build(family, "odd", torch.float32)
    mixer = TPMambaMixer.from_hf(model.backbone.layers[1].mixer, Communicator(), falcon=family == "falcon_mamba")
    g = torch.Generator().manual_seed(5)
    B, dl = 3, mixer.d_local
    h = torch.randn(B, 1, mixer.hidden_size, generator=g)
    conv = torch.randn(B + 1, dl, mixer.conv_kernel_size, generator=g)
    ssm = torch.randn(B + 1, dl, mixer.ssm_state_size, generator=g)
    idx = torch.tensor([2, -1, 0], dtype=torch.int32)
    outs, states = [], []
    for fuse in (False, True):
        c, s = conv.clone(), ssm.clone()
        outs.append(mixer.mix_step(h, c, s, idx, fuse_dt=fuse))
        states.append((c, s))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(states[1][1], states[0][1], rtol=1e-5, atol=1e-5)
    assert torch.equal(states[1][0], states[0][0])  # the conv step is the same op either way
    assert torch.equal(states[1][1][1], ssm[1]) and torch.equal(states[1][1][3], ssm[3])  # unused slots untouched


def test_runner_fused_decode_branch_on_cpu(monkeypatch):
    """MambaRunner.decode's fused branch (decode_in + step_tail with dt_proj: CUDA-only in the engine) run with the
    CPU ops, against the unfused decode from the same slot states: the same logits and states to within one bf16
    rounding, and both fused ops called once per layer."""
    from ssmtp.engine.runner import MambaRunner
    from ssmtp.engine.state_cache import SlotPool
    from ssmtp.parallel.comm import Communicator
    from tiny_models import build

    model = build("mamba", "odd", torch.bfloat16)
    r = MambaRunner.from_hf(model, Communicator(), torch.bfloat16, torch.device("cpu"))
    pools = [SlotPool(r.state_specs(), 4, torch.device("cpu")) for _ in range(2)]
    g = torch.Generator().manual_seed(9)
    for k, t in pools[0].tensors.items():
        t.copy_(torch.randn(t.shape, generator=g).to(t.dtype))
        pools[1].tensors[k].copy_(t)
    ids, idx = torch.tensor([5, 7, 11]), torch.tensor([2, -1, 0], dtype=torch.int32)
    plain = r.decode(ids, None, idx, pools[0])
    calls = {"in": 0, "dt_proj": 0}
    real_in, real_step = ops.mamba_decode_in, ops.selective_state_update

    def count_in(*a, **k):
        calls["in"] += 1
        return real_in(*a, **k)

    def count_step(*a, **k):
        calls["dt_proj"] += a[11] is not None if len(a) > 11 else k.get("dt_proj") is not None
        return real_step(*a, **k)

    monkeypatch.setattr(ops, "mamba_decode_in", count_in)
    monkeypatch.setattr(ops, "selective_state_update", count_step)
    monkeypatch.setattr(r, "decode_fused_applies", lambda batch, part="in": True)
    fused = r.decode(ids, None, idx, pools[1])
    assert calls == {"in": r.n_layers, "dt_proj": r.n_layers}
    torch.testing.assert_close(fused, plain, rtol=2e-2, atol=2e-2)
    for k in pools[0].tensors:
        torch.testing.assert_close(pools[1].tensors[k].float(), pools[0].tensors[k].float(), rtol=2e-2, atol=2e-2)
    assert torch.equal(pools[1].tensors["ssm"][:, 1], pools[0].tensors["ssm"][:, 1])  # slot 1: no row uses it


def test_decode_fused_mode_auto_picks_decode_in_at_every_tp(monkeypatch):
    """SSMTP_DECODE_FUSED=auto (the default): decode_in at batch <= 2 and the dt_proj step up to batch 8 (Falcon-Mamba:
    2), at TP=1 and TP>1 alike (on the CPU neither applies); step: the dt_proj step only."""
    import ssmtp.engine.runner as runner_mod

    class _Comm:
        def __init__(self, n):
            self.world_size = n

    class _Emb:
        is_cuda = True

    r = runner_mod.MambaRunner.__new__(runner_mod.MambaRunner)
    object.__setattr__(r, "_fused_ok", {1: True, 2: True})
    object.__setattr__(r, "embed", _Emb())
    object.__setattr__(r, "falcon", True)  # Falcon-Mamba: the dt_proj step up to batch 2 only
    monkeypatch.setattr(runner_mod, "_DECODE_FUSED", "auto")
    object.__setattr__(r, "comm", _Comm(1))
    assert r.decode_fused_applies(2, "step") and not r.decode_fused_applies(3, "step")
    object.__setattr__(r, "falcon", False)
    for tp in (1, 2, 4):
        monkeypatch.setattr(runner_mod, "_DECODE_FUSED", "auto")
        object.__setattr__(r, "comm", _Comm(tp))
        assert r.decode_fused_applies(1) and r.decode_fused_applies(2) and not r.decode_fused_applies(3)
        assert r.decode_fused_applies(8, "step") and not r.decode_fused_applies(9, "step")
        monkeypatch.setattr(runner_mod, "_DECODE_FUSED", "step")
        assert not r.decode_fused_applies(1) and r.decode_fused_applies(1, "step")
        monkeypatch.setattr(runner_mod, "_DECODE_FUSED", "0")
        assert not r.decode_fused_applies(1) and not r.decode_fused_applies(1, "step")
    object.__setattr__(r, "embed", type("_CpuEmb", (), {"is_cuda": False})())
    monkeypatch.setattr(runner_mod, "_DECODE_FUSED", "1")
    assert not r.decode_fused_applies(1) and not r.decode_fused_applies(1, "step")
    monkeypatch.setenv("SSMTP_DECODE_FUSED", "nope")
    with pytest.raises(ValueError, match="SSMTP_DECODE_FUSED"):
        runner_mod._decode_fused_mode()
