"""The fused Mamba-1 decode kernels on CUDA: ssmtp::mamba_decode_in (residual add + RMSNorm + in_proj + conv step)
and the decode state update with dt_proj fused, each against the C CPU op on the same inputs; then the engine's fused
decode layer against the unfused ops (runner.decode with SSMTP_DECODE_FUSED off) on the same slot states.

Shapes cover each kernel path: many more row groups than blocks (the persistent grid's stride loop), fewer groups
than blocks, two packs per thread (rows over 512 packs: f32 at H = 4096), a block narrower than a warp's multiple of
packs (H = 128 bf16: 16 packs; H = 200 at one row: 25 packs), conv widths 2-4 with states of width and width - 1
columns, padding rows (slot -1) and shuffled slots. Outputs are pre-filled with NaN so an element a kernel does not
write fails. Tolerances: the GPU sums the GEMV in another order than the CPU (fp32 accumulation, one
rounding to T), so a bf16/f16 output may differ by one rounding of T (2^-8 / 2^-11 relative) and the conv and the
state update carry that on; f32 differs by the summation order only."""
import pytest
import torch

import ssmtp.ops as ops

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

DT = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
REL = {"f32": 1e-4, "bf16": 2e-2, "f16": 4e-3}


def _close(got, want, rel, what):
    got, want = got.float().cpu(), want.float().cpu()
    assert not torch.isnan(got).any(), f"{what}: NaN (an element was not written)"
    err = (got - want).abs()
    bound = rel * (want.abs() + want.abs().mean() + 1e-6)
    assert (err <= bound).all(), f"{what}: max err {err.max():.3g} (rel {rel})"


# (label, M, H, dl, W, S)
DEC_IN = [
    ("mamba-2.8b rows", 1, 2560, 5120, 4, 4),
    ("one row, packs short of a warp", 1, 200, 72, 4, 3),  # threads past the row in the M = 1 prologue
    ("batch 4, width-1 state", 4, 512, 1280, 4, 3),
    ("long rows, few groups", 2, 4096, 40, 4, 4),
    ("odd channels", 3, 128, 37, 3, 3),
    ("width 2", 2, 64, 96, 2, 1),
]


@pytest.mark.parametrize("case", DEC_IN, ids=[c[0] for c in DEC_IN])
@pytest.mark.parametrize("dname", list(DT))
@pytest.mark.parametrize("variant", ["full", "bare"])
@pytest.mark.parametrize("rpb", ["2", "4", "8"])
def test_decode_in_matches_cpu(case, dname, variant, rpb, monkeypatch):
    """rpb: in_proj rows per group of the kernel (SSMTP_DECODE_IN_RPB)."""
    monkeypatch.setenv("SSMTP_DECODE_IN_RPB", rpb)
    _, M, H, dl, W, S = case
    _decode_in_case(case[0], M, H, dl, W, S, dname, variant, 0, dl)


# (label, M, H, conv channels nc, W, S, conv_lo, rows after the conv rows): Zamba2's [gate | xBC | dt] layout
DEC_IN_OFFSET = [
    ("zamba2-2.7b rows", 1, 2560, 5376, 4, 4, 5120, 80),
    ("zamba2-2.7b rows, batch 2", 2, 2560, 5376, 4, 4, 5120, 80),
    ("odd offset, no tail", 3, 128, 37, 3, 3, 11, 0),
]


@pytest.mark.parametrize("case", DEC_IN_OFFSET, ids=[c[0] for c in DEC_IN_OFFSET])
@pytest.mark.parametrize("dname", list(DT))
def test_decode_in_conv_rows_at_an_offset_matches_cpu(case, dname):
    _, M, H, nc, W, S, lo, extra = case
    _decode_in_case(case[0], M, H, nc, W, S, dname, "full", lo, extra)


def _decode_in_case(label, M, H, dl, W, S, dname, variant, lo, extra):
    """in_proj of lo + dl + extra rows, the conv over rows [lo, lo + dl): the CUDA op against the C CPU op."""
    n = lo + dl + extra
    dt = DT[dname]
    g = torch.Generator().manual_seed(hash((label, dname, variant)) % 2**31)
    full = variant == "full"
    nslots = M + 3
    res = torch.randn(M, H, generator=g) * 2
    res = res if full else res.to(dt)  # f32 residual stream (residual_in_fp32) or the model dtype
    add = (torch.randn(M, H, generator=g)).to(dt) if full else None
    norm_w = (1 + 0.1 * torch.randn(H, generator=g)).to(dt)
    weight = (torch.randn(n, H, generator=g) / H ** 0.5).to(dt)
    bias = (0.1 * torch.randn(n, generator=g)).to(dt) if full else None
    conv_w = (0.5 * torch.randn(dl, W, generator=g)).to(dt)
    conv_b = (0.1 * torch.randn(dl, generator=g)).to(dt) if full else None
    conv_state = torch.randn(nslots, dl, S, generator=g).to(dt)
    idx = torch.randperm(nslots, generator=g)[:M].to(torch.int32)
    if full and M > 1:
        idx[1] = -1  # a padding row: its state untouched, xc zero
    state_idx = idx if full else None
    if not full:
        conv_state = conv_state[:M].clone()
    fp32 = full

    cpu_state = conv_state.clone()
    want = ops.mamba_decode_in(res, add, norm_w, weight, bias, conv_w, conv_b, cpu_state, state_idx, 1e-5, fp32, lo)
    cu = lambda t: None if t is None else t.cuda()  # noqa: E731
    gpu_state = conv_state.cuda()
    got = ops.mamba_decode_in(cu(res), cu(add), cu(norm_w), cu(weight), cu(bias), cu(conv_w), cu(conv_b), gpu_state,
                              cu(state_idx), 1e-5, fp32, lo)
    torch.cuda.synchronize()
    rel = REL[dname]
    assert torch.equal(got[0].cpu(), want[0]), "res_out: the same fp32 add on both sides"
    for name, a, b in (("xc", got[1], want[1]), ("z", got[2], want[2]), ("conv_state", gpu_state, cpu_state)):
        _close(a, b, 4 * rel, f"{label} {dname} {variant}: {name}")
    if full and M > 1:
        assert (got[1][1] == 0).all(), "padding row: xc must be zero"


# (label, batch, dim, N, R)
STEP = [
    ("mamba-2.8b", 1, 5120, 16, 160),
    ("batch 4", 4, 1024, 16, 64),
    ("falcon-like rank", 3, 512, 16, 256),
    ("N 8, odd batch", 5, 96, 8, 32),
    ("scalar path (N 12)", 2, 64, 12, 48),
]


@pytest.mark.parametrize("case", STEP, ids=[c[0] for c in STEP])
@pytest.mark.parametrize("dname", list(DT))
def test_step_dt_proj_matches_cpu_and_unfused(case, dname):
    _, Bn, dim, N, R = case
    dt_ = DT[dname]
    g = torch.Generator().manual_seed(hash((case[0], dname, "dtp")) % 2**31)
    x = torch.randn(Bn, dim, generator=g).to(dt_)
    z = torch.randn(Bn, dim, generator=g).to(dt_)
    dtr = (0.3 * torch.randn(Bn, R, generator=g)).to(dt_)
    dtw = (torch.randn(dim, R, generator=g) / R ** 0.5).to(dt_)
    A = -torch.rand(dim, N, generator=g) - 0.1
    B = torch.randn(Bn, 1, N, generator=g).to(dt_)
    C = torch.randn(Bn, 1, N, generator=g).to(dt_)
    D = torch.randn(dim, generator=g)
    bias = 0.1 * torch.randn(dim, generator=g)
    nslots = Bn + 2
    state = torch.randn(nslots, dim, N, generator=g)
    idx = torch.randperm(nslots, generator=g)[:Bn].to(torch.int32)
    if Bn > 2:
        idx[2] = -1

    s_cpu = state.clone()
    want = ops.selective_state_update(x, dtr, A, B, C, D, z, bias, s_cpu, idx, True, dtw)
    c = lambda t: t.cuda()  # noqa: E731
    s_gpu = state.cuda()
    got = ops.selective_state_update(c(x), c(dtr), c(A), c(B), c(C), c(D), c(z), c(bias), s_gpu, c(idx), True, c(dtw))
    # the engine's launch hint (slots and states read before the PDL wait; the state copy before it is an ordinary
    # kernel): the same bits
    s_early = state.cuda()
    early = ops.selective_state_update(c(x), c(dtr), c(A), c(B), c(C), c(D), c(z), c(bias), s_early, c(idx), True,
                                       c(dtw), True)
    # unfused on the GPU: the GEMV, then the plain step
    s_un = state.cuda()
    dt_full = ops.linear(c(dtr), c(dtw))
    un = ops.selective_state_update(c(x), dt_full, c(A), c(B), c(C), c(D), c(z), c(bias), s_un, c(idx), True)
    torch.cuda.synchronize()
    rel = REL[dname]
    assert torch.equal(early, got) and torch.equal(s_early, s_gpu), "state_early changed the results"
    _close(got, want, 4 * rel, f"{case[0]} {dname}: out vs CPU")
    _close(s_gpu, s_cpu, 4 * rel, f"{case[0]} {dname}: state vs CPU")
    _close(got, un, 4 * rel, f"{case[0]} {dname}: out vs unfused")
    _close(s_gpu, s_un, 4 * rel, f"{case[0]} {dname}: state vs unfused")
    if Bn > 2:
        assert (got[2] == 0).all() and torch.equal(s_gpu.cpu()[~torch.isin(torch.arange(nslots), idx.long())],
                                                    state[~torch.isin(torch.arange(nslots), idx.long())])


# (label, batch, dim, R): d_state 16, the shapes of the fused dt_proj kernel (SSMTP_STEP_DTP_SHAPE)
STEP_DTP_SHAPES = [
    ("mamba-2.8b rows, batch 8", 8, 5120, 160),
    ("batch 11, ragged blocks", 11, 448, 64),
    ("falcon-like rank, batch 5", 5, 512, 256),  # dt_proj rows longer than the packs loaded before the wait
    ("batch 1", 1, 256, 32),
]


@pytest.mark.parametrize("case", STEP_DTP_SHAPES, ids=[c[0] for c in STEP_DTP_SHAPES])
@pytest.mark.parametrize("shape", ["2x256", "4x256", "8x256", "4x128", "8x128", "8x64"])
@pytest.mark.parametrize("dname", ["bf16", "f32"])
def test_step_dt_proj_shapes_same_bits(case, shape, dname, monkeypatch):
    """The fused dt_proj kernel's multi-row block shapes (each block reads its channels' dt_proj rows once for several
    sequences) against the one-sequence blocks: the same sums in the same order per row, so the same bits; padding
    rows and shuffled slots, state_early on and off."""
    _, Bn, dim, R = case
    N = 16
    dt_ = DT[dname]
    g = torch.Generator().manual_seed(hash((case[0], dname, "dtp-shape")) % 2**31)
    c = lambda t: t.cuda()  # noqa: E731
    x, z = (c(torch.randn(Bn, dim, generator=g).to(dt_)) for _ in range(2))
    dtr = c((0.3 * torch.randn(Bn, R, generator=g)).to(dt_))
    dtw = c((torch.randn(dim, R, generator=g) / R ** 0.5).to(dt_))
    A = c(-torch.rand(dim, N, generator=g) - 0.1)
    B, C = (c(torch.randn(Bn, 1, N, generator=g).to(dt_)) for _ in range(2))
    D, bias = c(torch.randn(dim, generator=g)), c(0.1 * torch.randn(dim, generator=g))
    nslots = Bn + 3
    state = c(torch.randn(nslots, dim, N, generator=g))
    idx = torch.randperm(nslots, generator=g)[:Bn].to(torch.int32)
    if Bn > 2:
        idx[2] = -1
    idx = c(idx)
    res = {}
    for sh in ("1x256", shape):
        monkeypatch.setenv("SSMTP_STEP_DTP_SHAPE", sh)
        for early in (False, True):
            s = state.clone()
            out = ops.selective_state_update(x, dtr, A, B, C, D, z, bias, s, idx, True, dtw, early)
            torch.cuda.synchronize()
            res[sh, early] = (out, s)
    for k, (out, s) in res.items():
        assert not torch.isnan(out).any(), f"{k}: NaN"
        assert torch.equal(out, res["1x256", False][0]), f"{k}: out"
        assert torch.equal(s, res["1x256", False][1]), f"{k}: state"


def test_step_dt_proj_shape_bad_name_raises(monkeypatch):
    monkeypatch.setenv("SSMTP_STEP_DTP_SHAPE", "3x256")
    c = lambda t: t.cuda()  # noqa: E731
    x = c(torch.randn(2, 64).to(torch.bfloat16))
    B = c(torch.randn(2, 1, 16).to(torch.bfloat16))
    with pytest.raises(RuntimeError, match="SSMTP_STEP_DTP_SHAPE"):
        ops.selective_state_update(x, c(torch.randn(2, 32).to(torch.bfloat16)), c(-torch.rand(64, 16)), B, B, None,
                                   None, None, c(torch.randn(2, 64, 16)), None, True,
                                   c(torch.randn(64, 32).to(torch.bfloat16)))


# (label, batch, groups, channels per group, N, R): dt (batch, groups, R), Zamba's per-head low-rank time step
STEP_GROUPED = [
    ("zamba-7b heads", 1, 2, 3712, 16, 232),
    ("batch 3, 4 groups", 3, 4, 256, 16, 64),
    ("batch 7, 2 groups", 7, 2, 1280, 16, 64),
    ("scalar path (R 12)", 2, 2, 96, 16, 12),
]


@pytest.mark.parametrize("case", STEP_GROUPED, ids=[c[0] for c in STEP_GROUPED])
@pytest.mark.parametrize("dname", list(DT))
@pytest.mark.parametrize("shape", ["auto", "2x256", "4x128"])
def test_step_grouped_dt_proj_matches_cpu(case, dname, shape, monkeypatch):
    """The grouped dt taken as the Zamba mixer hands it over: the diagonal blocks of a (batch * groups, groups * R)
    product (a strided view), on the GPU against the CPU op; shape: the fused kernel's block shape
    (SSMTP_STEP_DTP_SHAPE)."""
    monkeypatch.setenv("SSMTP_STEP_DTP_SHAPE", shape)
    _, Bn, G, pg, N, R = case
    dt_ = DT[dname]
    dim = G * pg
    g = torch.Generator().manual_seed(hash((case[0], dname, "grouped")) % 2**31)
    x = torch.randn(Bn, dim, generator=g).to(dt_)
    z = torch.randn(Bn, dim, generator=g).to(dt_)
    full = (0.3 * torch.randn(Bn * G, G * R, generator=g)).to(dt_)
    dt3 = full.as_strided((Bn, G, R), (G * G * R, (G + 1) * R, 1))
    dtw = (torch.randn(dim, R, generator=g) / R ** 0.5).to(dt_)
    A = -torch.rand(dim, N, generator=g) - 0.1
    B = torch.randn(Bn, G, N, generator=g).to(dt_)
    C = torch.randn(Bn, G, N, generator=g).to(dt_)
    D = torch.randn(dim, generator=g)
    bias = 0.1 * torch.randn(dim, generator=g)
    state = torch.randn(Bn + 1, dim, N, generator=g)
    idx = torch.arange(Bn, 0, -1, dtype=torch.int32)
    s_cpu = state.clone()
    want = ops.selective_state_update(x, dt3, A, B, C, D, z, bias, s_cpu, idx, True, dtw)
    c = lambda t: t.cuda()  # noqa: E731
    full_g = c(full)
    dt3_g = full_g.as_strided((Bn, G, R), (G * G * R, (G + 1) * R, 1))
    s_gpu = state.cuda()
    got = ops.selective_state_update(c(x), dt3_g, c(A), c(B), c(C), c(D), c(z), c(bias), s_gpu, c(idx), True, c(dtw))
    s_early = state.cuda()  # the engine's launch hint: the same bits
    early = ops.selective_state_update(c(x), dt3_g, c(A), c(B), c(C), c(D), c(z), c(bias), s_early, c(idx), True,
                                       c(dtw), True)
    torch.cuda.synchronize()
    rel = REL[dname]
    assert torch.equal(early, got) and torch.equal(s_early, s_gpu), "state_early changed the results"
    _close(got, want, 4 * rel, f"{case[0]} {dname}: out vs CPU")
    _close(s_gpu, s_cpu, 4 * rel, f"{case[0]} {dname}: state vs CPU")


# (label, batch, heads, head_dim, N): the plain step's dt per head as a stride-0 (batch, heads, head_dim) view
STEP_DT_PER_HEAD = [
    ("zamba2-2.7b heads", 1, 80, 64, 64),
    ("batch 8", 8, 80, 64, 64),
    ("N 16, odd heads", 3, 7, 32, 16),
]


@pytest.mark.parametrize("case", STEP_DT_PER_HEAD, ids=[c[0] for c in STEP_DT_PER_HEAD])
@pytest.mark.parametrize("dname", list(DT))
@pytest.mark.parametrize("kernel", ["block", "pipe"])
def test_step_dt_per_head_view_matches_cpu(case, dname, kernel, monkeypatch):
    """Zamba2's decode hands the state update dt per head, expanded over the head's channels with stride 0 (one A per
    channel: the SA kernels; per state: the others): the GPU against the CPU op and against the repeated dt."""
    _, Bn, H, hd, N = case
    monkeypatch.setenv("SSMTP_STEP_KERNEL", kernel)
    dt_ = DT[dname]
    dim = H * hd
    g = torch.Generator().manual_seed(hash((case[0], dname, "per-head")) % 2**31)
    x = torch.randn(Bn, dim, generator=g).to(dt_)
    dth = (0.3 * torch.randn(Bn, H, generator=g)).to(dt_)
    A = (-torch.rand(dim, 1, generator=g) - 0.1).expand(dim, N) if N == 64 else -torch.rand(dim, N, generator=g)
    B = torch.randn(Bn, 1, N, generator=g).to(dt_)
    C = torch.randn(Bn, 1, N, generator=g).to(dt_)
    D = torch.randn(dim, generator=g)
    bias = 0.1 * torch.randn(dim, generator=g)
    state = torch.randn(Bn + 1, dim, N, generator=g)
    idx = torch.arange(Bn, 0, -1, dtype=torch.int32)
    s_cpu = state.clone()
    want = ops.selective_state_update(x, dth[:, :, None].expand(Bn, H, hd), A, B, C, D, None, bias, s_cpu, idx, True)
    c = lambda t: t.cuda()  # noqa: E731
    s_gpu, s_rep = state.cuda(), state.cuda()
    dth_g = c(dth)
    got = ops.selective_state_update(c(x), dth_g[:, :, None].expand(Bn, H, hd), c(A), c(B), c(C), c(D), None, c(bias),
                                     s_gpu, c(idx), True)
    rep = ops.selective_state_update(c(x), dth_g.repeat_interleave(hd, dim=1), c(A), c(B), c(C), c(D), None,
                                     c(bias), s_rep, c(idx), True)
    torch.cuda.synchronize()
    assert torch.equal(got, rep) and torch.equal(s_gpu, s_rep), "the view and the repeated dt: the same bits"
    rel = REL[dname]
    _close(got, want, 4 * rel, f"{case[0]} {dname}: out vs CPU")
    _close(s_gpu, s_cpu, 4 * rel, f"{case[0]} {dname}: state vs CPU")
    # the group axis with stride 0: every head reads the same head_dim time steps
    row = (0.3 * torch.randn(Bn, 1, hd, generator=g)).to(dt_)
    s_cpu, s_gpu = state.clone(), state.cuda()
    want = ops.selective_state_update(x, row.expand(Bn, H, hd), A, B, C, D, None, bias, s_cpu, idx, True)
    got = ops.selective_state_update(c(x), c(row).expand(Bn, H, hd), c(A), c(B), c(C), c(D), None, c(bias), s_gpu,
                                     c(idx), True)
    _close(got, want, 4 * rel, f"{case[0]} {dname}: out vs CPU, group stride 0")
    _close(s_gpu, s_cpu, 4 * rel, f"{case[0]} {dname}: state vs CPU, group stride 0")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 2, 4, 8])
def test_engine_fused_decode_equals_unfused(monkeypatch, dtype, batch):
    """runner.decode with SSMTP_DECODE_FUSED = 1 (decode_in + the dt_proj step) and = step (the dt_proj step only) vs
    0 (the unfused ops), from the same slot states, for a few steps: logits and both states agree to the tolerance of
    one rounding per GEMV."""
    import ssmtp.engine.runner as runner_mod
    from ssmtp.engine.runner import MambaRunner
    from ssmtp.engine.state_cache import SlotPool
    from ssmtp.parallel.comm import Communicator
    from tiny_models import build

    model = build("mamba", "odd", dtype).cuda()
    runner = MambaRunner.from_hf(model, Communicator(), dtype, torch.device("cuda", torch.cuda.current_device()))
    modes = ("0", "1", "step")
    monkeypatch.setattr(runner_mod, "_DECODE_FUSED", "1")
    assert runner.decode_fused_applies(batch, "step")
    assert runner.decode_fused_applies(batch) == (batch <= runner_mod.DECODE_IN_MAX_BATCH), "the tiny model's shapes"
    pools = {m: SlotPool(runner.state_specs(), batch + 2, torch.device("cuda")) for m in modes}
    g = torch.Generator(device="cuda").manual_seed(3)
    for k, t in pools["0"].tensors.items():
        t.copy_(torch.randn(t.shape, device="cuda", generator=g).to(t.dtype) * 0.5)
        for m in modes[1:]:
            pools[m].tensors[k].copy_(t)
    idx = torch.arange(batch, dtype=torch.int32, device="cuda").flip(0) + 1
    ids = torch.randint(3, 99, (batch,), device="cuda", generator=g)
    rel = 1e-3 if dtype == torch.float32 else 5e-2
    for step in range(4):
        logits = {}
        for m in modes:
            monkeypatch.setattr(runner_mod, "_DECODE_FUSED", m)
            logits[m] = runner.decode(ids, None, idx, pools[m])
        for m in modes[1:]:
            _close(logits[m], logits["0"], rel, f"mode {m} step {step} logits")
            for k in pools["0"].tensors:
                _close(pools[m].tensors[k], pools["0"].tensors[k], rel, f"mode {m} step {step} state {k}")
        ids = logits["0"].argmax(-1)


# (label, batch, channels, N, one A per channel, SSMTP_STEP_SHAPE): the plain state update's vector kernels
STEP_EARLY = [
    ("mamba-2.8b rows, batch 1", 1, 5120, 16, False, "auto"),
    ("batch 9, 4 rows per block", 9, 1024, 16, False, "auto"),
    ("batch 64, ragged", 64, 200, 16, False, "auto"),
    ("batch 5, shape 4x3", 5, 512, 16, False, "4x3"),
    ("batch 6, shape 2x6", 6, 512, 16, False, "2x6"),
    ("zamba2 heads", 3, 640, 64, True, "auto"),
    ("d_state 128, batch 9", 9, 256, 128, True, "auto"),
]


@pytest.mark.parametrize("case", STEP_EARLY, ids=[c[0] for c in STEP_EARLY])
def test_step_state_early_same_bits(case, monkeypatch):
    """The engine's launch hint on the plain (no dt_proj) state update: the slots and states read before the PDL wait
    (the kernel before it here is an ordinary copy), the same outputs and states as without it; padding rows and
    shuffled slots."""
    _, Bn, dim, N, one_a, shape = case
    monkeypatch.setenv("SSMTP_STEP_SHAPE", shape)
    g = torch.Generator().manual_seed(hash(case[0]) % 2**31)
    dev = torch.device("cuda")
    x = torch.randn(Bn, dim, generator=g).to(torch.bfloat16).to(dev)
    z = torch.randn(Bn, dim, generator=g).to(torch.bfloat16).to(dev)
    dt = (0.3 * torch.randn(Bn, dim, generator=g)).to(torch.bfloat16).to(dev)
    A = (-torch.rand(dim, 1 if one_a else N, generator=g) - 0.1).expand(dim, N).to(dev)
    B = torch.randn(Bn, 1, N, generator=g).to(torch.bfloat16).to(dev)
    C = torch.randn(Bn, 1, N, generator=g).to(torch.bfloat16).to(dev)
    D = torch.randn(dim, generator=g).to(dev)
    bias = (0.1 * torch.randn(dim, generator=g)).to(dev)
    state = torch.randn(Bn + 2, dim, N, generator=g).to(dev)
    idx = torch.randperm(Bn + 2, generator=g)[:Bn].to(torch.int32)
    if Bn > 2:
        idx[1] = -1
    idx = idx.to(dev)
    outs = []
    for early in (False, True):
        s = state.clone()
        outs.append((ops.selective_state_update(x, dt, A, B, C, D, z, bias, s, idx, True, None, early), s))
    torch.cuda.synchronize()
    (o0, s0), (o1, s1) = outs
    assert not torch.equal(s0, state), "the update changed no state"
    assert torch.equal(o0, o1) and torch.equal(s0, s1), "state_early changed the results"
