"""The CUDA conv1d / scan / decode-step kernels against the C CPU ops (ssmtp.ops on CPU tensors) over labelled case
tables of awkward sizes, every dtype and both layouts the model code uses; and a CUDA-graph capture of the decode
path (conv + step) against eager.

Outputs are pre-filled with NaN (the kernels are called through ssmtp._C with our own out tensor), so an element a
kernel fails to write fails the comparison. Inputs are identical on both sides (built on the CPU, copied with the
same strides). Tolerances are atol + rtol * |ref|, written next to each table with the reason.

Layouts (x, dt, z, out are (batch, dim, seqlen); B, C are (batch, ngroups, dstate, seqlen)):
  chan      the model's: views of token-major GEMM outputs, stride[1] == 1 (B/C: stride[2] == 1)
  wide      the same inside a wider projection, at an odd element offset (no alignment to rely on)
  contig    plain contiguous (time axis contiguous)
  strided   every other time step of a longer buffer
"""
import math

import pytest
import torch

import ssmtp.ops as ops
from ssmtp import _C
from ssmtp.ops import desc

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

DT = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def _gen(label):
    return torch.Generator().manual_seed(sum(ord(ch) * (i + 1) for i, ch in enumerate(label)) % 2**31)


class Pair:
    """The same values as a CPU tensor and a CUDA tensor with identical strides."""

    def __init__(self, base, view):
        self.cpu = view(base)
        self.gpu = view(base.cuda())


def bdl(batch, dim, L, dtype, layout, g, scale=1.0, offset=0.0):
    """A (batch, dim, L) tensor in the given layout."""
    if layout == "chan":
        base = torch.randn(batch, L, dim, generator=g) * scale + offset
        view = lambda t: t.transpose(1, 2)  # noqa: E731
    elif layout == "wide":
        base = torch.randn(batch, L, dim + 13, generator=g) * scale + offset
        view = lambda t: t[:, :, 5:5 + dim].transpose(1, 2)  # noqa: E731
    elif layout == "contig":
        base = torch.randn(batch, dim, L, generator=g) * scale + offset
        view = lambda t: t  # noqa: E731
    elif layout == "strided":
        base = torch.randn(batch, dim, 2 * L, generator=g) * scale + offset
        view = lambda t: t[:, :, ::2]  # noqa: E731
    else:
        raise ValueError(layout)
    return Pair(base.to(dtype), view)


def bgnl(batch, G, N, L, dtype, layout, g):
    """A (batch, ngroups, dstate, L) tensor (B or C) in the given layout."""
    if layout in ("chan", "wide"):
        extra = 0 if layout == "chan" else 7
        base = torch.randn(batch, L, G * N + 2 * extra, generator=g)
        view = lambda t: t[:, :, extra:extra + G * N].unflatten(2, (G, N)).permute(0, 2, 3, 1)  # noqa: E731
    elif layout == "contig":
        base = torch.randn(batch, G, N, L, generator=g)
        view = lambda t: t  # noqa: E731
    elif layout == "strided":
        base = torch.randn(batch, G, N, 2 * L, generator=g)
        view = lambda t: t[..., ::2]  # noqa: E731
    else:
        raise ValueError(layout)
    return Pair(base.to(dtype), view)


def same(t):
    return Pair(t, lambda u: u)


def nan_like(t_gpu):
    """An output with t's shape and strides, every element NaN (unwritten elements then fail)."""
    out = torch.empty_strided(t_gpu.shape, t_gpu.stride(), dtype=t_gpu.dtype, device=t_gpu.device)
    out.fill_(float("nan"))
    return out


def close(got, ref, atol, rtol, what):
    torch.testing.assert_close(got.detach().cpu().float(), ref.float(), atol=atol, rtol=rtol,
                               msg=lambda m: f"{what}: {m}")


def slots_for(mode, batch, nslots, g):
    if mode is None:
        return None
    idx = torch.randperm(nslots, generator=g)[:batch].to(torch.int32)
    if mode == "pad":
        idx[batch // 2] = -1
        if batch > 2:
            idx[-1] = -1
    return same(idx)


def D(p):
    return desc(p.gpu) if p is not None else None


def cpu(p):
    return p.cpu if p is not None else None


# ============================================================================================== conv1d

# Tolerances: the kernel uses fmaf and a MUFU-based SiLU (~2 ulp) where the CPU uses mul+add and expf: f32 differs
# by a few ulp; f16/bf16 outputs by at most one rounding step of the output dtype (7.8e-3 relative for bf16).
# The new state is a copy of input/history values: compared exactly.
CONV_TOL = {"f32": (1e-5, 1e-5), "f16": (1e-3, 1e-3), "bf16": (1e-3, 8e-3)}

# label: batch, dim, L, width, state_len, layout, state mode, slots, seq_lens, bias, silu
#   state mode: None (no state), "fresh" (state written, load_state=0), "load" (load_state=1)
CONV_CASES = [
    ("prefill-chan-w4", 2, 100, 37, 4, 3, "chan", "fresh", None, None, True, True),
    ("prefill-hf-statelen", 3, 70, 50, 4, 4, "chan", "load", "perm", None, True, True),
    ("decode-w4", 5, 130, 1, 4, 3, "chan", "load", "pad", None, True, True),
    ("decode-hf-statelen-perm", 4, 33, 1, 4, 4, "contig", "load", "perm", None, True, True),
    ("decode-w2-nosilu", 3, 40, 1, 2, 1, "wide", "load", None, None, False, True),
    ("decode-fresh", 2, 64, 1, 3, 2, "chan", "fresh", None, None, True, False),
    ("w3-statelen7-lens", 4, 45, 29, 3, 7, "wide", "load", "pad", [29, 1, 13, 0], True, True),
    ("w2-nobias-contig", 2, 31, 19, 2, 1, "contig", None, None, None, False, True),
    ("strided-lens", 3, 50, 40, 4, 3, "strided", "load", "perm", [40, 7, 2], True, True),
    ("long-chunked-B1", 1, 300, 1500, 4, 3, "chan", "load", None, None, True, True),
    ("long-contig-lens", 2, 70, 1100, 4, 4, "contig", "load", "pad", [1100, 513], True, True),
    ("seqlen-shorter-than-state", 2, 20, 2, 4, 5, "chan", "load", None, [2, 1], True, True),
    ("dim-1", 2, 1, 9, 4, 3, "contig", "load", None, None, True, True),
    ("decode-statelen6-generic", 3, 40, 1, 3, 6, "chan", "load", "pad", None, True, True),
    ("decode-nostate", 2, 50, 1, 4, 3, "contig", None, None, None, True, True),
    ("decode-lens-0", 3, 36, 1, 4, 4, "chan", "load", "perm", [1, 0, 1], True, True),
]


def _conv_inputs(case, dname):
    label, batch, dim, L, width, slen, layout, smode, smap, lens, silu, has_bias = case
    dtype = DT[dname]
    g = _gen(label + dname)
    x = bdl(batch, dim, L, dtype, layout, g)
    w = same((torch.randn(dim, width, generator=g) * 0.5).to(dtype))
    bias = same(torch.randn(dim, generator=g).to(dtype)) if has_bias else None
    nslots = batch + 3
    state = same(torch.randn(nslots, dim, slen, generator=g).to(dtype)) if smode else None
    idx = slots_for(smap, batch, nslots, g) if smode else None
    sl = same(torch.tensor(lens, dtype=torch.int32)) if lens is not None else None
    return x, w, bias, state, idx, sl, silu, smode == "load"


def _conv_cuda(x, w, bias, state, idx, sl, silu, load, out):
    _C.conv1d_fwd(D(x), D(w), D(bias), D(state), D(idx), D(sl), desc(out), None, None, int(silu), int(load),
                  ops.stream_of(x.gpu))


@pytest.mark.parametrize("dname", list(DT))
@pytest.mark.parametrize("case", CONV_CASES, ids=[c[0] for c in CONV_CASES])
def test_conv1d_cuda_vs_cpu(case, dname):
    _check_conv(case, dname)


DECODE_CONV_CASES = [c for c in CONV_CASES if c[3] == 1 and c[7] is not None]


@pytest.mark.parametrize("cpt", ["2", "4"])
@pytest.mark.parametrize("dname", list(DT))
@pytest.mark.parametrize("case", DECODE_CONV_CASES, ids=[c[0] for c in DECODE_CONV_CASES])
def test_conv1d_cuda_decode_channels_per_thread(case, dname, cpt, monkeypatch):
    """The fixed-row decode kernel with 2 or 4 channels per thread (SSMTP_CONV_CPT; dims not a multiple of it
    included): the same results as the CPU op; an unknown value is an error."""
    monkeypatch.setenv("SSMTP_CONV_CPT", cpt)
    _check_conv(case, dname)
    monkeypatch.setenv("SSMTP_CONV_CPT", "3")
    args = _conv_inputs(case, dname)
    if case[5] in (case[4], case[4] - 1):  # a fixed-row state length: the knob is read
        with pytest.raises(Exception, match="SSMTP_CONV_CPT"):
            _conv_cuda(*args, nan_like(args[0].gpu))


def _check_conv(case, dname):
    x, w, bias, state, idx, sl, silu, load = _conv_inputs(case, dname)
    st_cpu = state.cpu.clone() if state else None
    ref = ops.causal_conv1d(x.cpu, w.cpu, cpu(bias), st_cpu, cpu(idx), cpu(sl), silu, load)
    out = nan_like(x.gpu)
    _conv_cuda(x, w, bias, state, idx, sl, silu, load, out)
    torch.cuda.synchronize()
    atol, rtol = CONV_TOL[dname]
    close(out, ref, atol, rtol, "out")
    if state:
        assert torch.equal(state.gpu.cpu(), st_cpu), "conv state differs from the CPU op (should be an exact copy)"


@pytest.mark.parametrize("dname", list(DT))
def test_conv1d_cuda_decode_misaligned_state(dname):
    """A state row view starting one element in (no vector access possible) takes the scalar decode variant."""
    label, batch, dim, width, slen = "misaligned", 4, 45, 4, 4
    dtype = DT[dname]
    g = _gen(label + dname)
    x = bdl(batch, dim, 1, dtype, "chan", g)
    w = same((torch.randn(dim, width, generator=g) * 0.5).to(dtype))
    bias = same(torch.randn(dim, generator=g).to(dtype))
    nslots = batch + 2
    state = Pair(torch.randn(nslots * dim * slen + 1, generator=g).to(dtype),
                 lambda t: t[1:].view(nslots, dim, slen))
    idx = slots_for("pad", batch, nslots, g)
    st_cpu = state.cpu.clone()
    ref = ops.causal_conv1d(x.cpu, w.cpu, bias.cpu, st_cpu, idx.cpu, None, True, True)
    out = nan_like(x.gpu)
    _conv_cuda(x, w, bias, state, idx, None, True, True, out)
    torch.cuda.synchronize()
    close(out, ref, *CONV_TOL[dname], "out")
    assert torch.equal(state.gpu.cpu(), st_cpu)


def test_conv1d_cuda_aliased_out():
    """out may alias x (identical view): the sequence is then processed in one chunk, read before written."""
    case = ("alias", 2, 50, 300, 4, 3, "chan", "load", "perm", [300, 120], True, True)
    x, w, bias, state, idx, sl, silu, load = _conv_inputs(case, "bf16")
    st_cpu = state.cpu.clone()
    ref = ops.causal_conv1d(x.cpu, w.cpu, bias.cpu, st_cpu, idx.cpu, sl.cpu, silu, load)
    _conv_cuda(x, w, bias, state, idx, sl, silu, load, x.gpu)
    torch.cuda.synchronize()
    close(x.gpu, ref, *CONV_TOL["bf16"], "aliased out")
    assert torch.equal(state.gpu.cpu(), st_cpu)


# ============================================================================================== selective scan

# Tolerances. The kernel's exp/softplus/SiLU are MUFU approximations (~1e-6 relative each) where the CPU calls libm;
# a per-step relative error e in the decay grows to ~e / (1 - exp(delta*A)) in the state, up to ~1e3 x for slow
# channels (delta*|A| ~ 1e-3) over long sequences, hence f32 at 1e-4 + 5e-4 |ref|. f16/bf16 outputs: one rounding
# step of the output dtype on top. Final states are fp32 for every dtype (the inputs convert exactly): f32 bound.
SCAN_TOL = {"f32": (1e-4, 5e-4), "f16": (2e-3, 4e-3), "bf16": (4e-3, 1.6e-2)}
STATE_TOL = (1e-4, 5e-4)

# label: batch, dim, L, N, ngroups, layout, state mode, slots, seq_lens, flags, chunks
#   flags: z (gate), D, b (dt_bias), s (softplus), p (D and dt_bias in the dtype of x instead of f32),
#          a (one A per channel, passed as a stride-0 (dim, N) view, as Mamba-2 layers pass it: the SA kernels)
#   chunks: None = the launcher's choice; an int forces SSMTP_SCAN_CHUNKS (capped by the launcher at L / 64)
SCAN_CASES = [
    ("mamba-like-chan", 2, 100, 37, 16, 1, "chan", "load", "perm", None, "zDbs", None),
    ("seqlen-1", 3, 45, 1, 16, 1, "chan", "load", "pad", None, "zDbs", None),
    ("long-B1-auto-chunks", 1, 96, 1200, 16, 1, "chan", "load", None, None, "zDbs", None),
    ("long-B1-one-pass", 1, 96, 1200, 16, 1, "chan", "load", None, None, "zDbs", 1),
    ("long-chunks-lens-pad", 4, 40, 1030, 16, 1, "chan", "load", "pad", [1030, 437, 1, 0], "zDbs", 5),
    ("long-chunks-fresh-state", 2, 33, 700, 16, 1, "wide", "fresh", "perm", [700, 130], "zDbs", 4),
    ("long-contig-layout", 1, 70, 1000, 16, 1, "contig", "load", None, None, "zDbs", None),
    ("dstate-1", 2, 50, 64, 1, 1, "strided", "load", None, None, "zDbs", None),
    ("dstate-5-nogate", 2, 37, 33, 5, 1, "contig", "fresh", None, None, "Ds", None),
    ("dstate-20-tpc2", 2, 48, 90, 20, 2, "chan", "load", "perm", None, "zDbs", None),
    ("dstate-64-groups4", 3, 132, 45, 64, 4, "wide", "load", "pad", [45, 45, 20], "zDbsp", None),
    ("dstate-256", 1, 20, 40, 256, 1, "chan", "load", None, None, "zDbs", None),
    ("dstate-256-chunked", 1, 16, 1100, 256, 2, "chan", "load", None, [1100], "zDbs", 2),
    ("zamba-heads-2", 3, 74, 60, 16, 2, "chan", "load", "perm", [60, 3, 59], "zDbs", None),
    ("no-state-no-extras", 2, 65, 50, 16, 1, "chan", None, None, None, "", None),
    ("no-state-lens", 3, 30, 80, 8, 1, "contig", None, None, [80, 0, 41], "zDbs", None),
    ("param-dtype-x", 2, 64, 40, 16, 1, "chan", "load", None, None, "zDbsp", None),
    ("strided-long-chunks", 1, 40, 900, 16, 1, "strided", "load", None, None, "zDbs", 3),
    ("seqlen-0", 2, 32, 0, 16, 1, "contig", "fresh", "perm", None, "zDbs", None),
    ("one-A-dstate-16", 2, 40, 200, 16, 1, "chan", "load", "perm", [200, 77], "zDbsa", None),
    ("one-A-dstate-64-B1-chunks", 1, 128, 900, 64, 1, "chan", "load", None, None, "zDbsa", None),
    ("one-A-dstate-64-groups", 3, 96, 130, 64, 2, "wide", "load", "pad", [130, 130, 9], "zDbsa", 2),
    ("one-A-dstate-128", 1, 24, 70, 128, 1, "chan", "fresh", None, None, "Dsa", None),
    # a last block holding 8 of its 128 channels, groups of 32 channels without a gate, d_state 8 in chunks:
    ("tail-block-8-channels", 2, 136, 150, 16, 1, "chan", "load", "perm", [150, 77], "zDbs", None),
    ("groups-32-nogate", 2, 64, 300, 16, 2, "chan", "fresh", None, [300, 299], "Dbs", 3),
    ("dstate-8-B1-chunks", 1, 128, 520, 8, 1, "chan", "load", None, None, "zDbs", None),
    # layouts the staged kernel takes at 16 bits (whole 128-channel blocks, d_state 16, "chan"): a partial last tile
    # and ragged lengths; time chunks at B=1 (the local pass staged too); two groups, no gate, a padding row, a
    # zero-length row
    ("staged-ragged", 2, 256, 77, 16, 1, "chan", "load", "perm", [77, 40], "zDbs", None),
    ("staged-B1-chunks", 1, 128, 1100, 16, 1, "chan", "load", None, None, "zDbs", None),
    ("staged-groups-nogate", 3, 256, 200, 16, 2, "chan", "fresh", "pad", [200, 33, 0], "Dbs", 3),
]
STAGED_CASES = [c for c in SCAN_CASES if c[0].startswith("staged-")]


def _A(dim, N, flags, g):
    """A like a trained Mamba: -(1..N) with noise; flag a: one value per channel as a stride-0 (dim, N) view."""
    if "a" in flags:
        return Pair(-torch.exp(0.5 * torch.randn(dim, 1, generator=g)) - 0.05, lambda t: t.expand(-1, N))
    return same(-(torch.arange(1, N + 1).float()[None, :] * torch.exp(0.3 * torch.randn(dim, N, generator=g))))


def _scan_inputs(case, dname):
    label, batch, dim, L, N, G, layout, smode, smap, lens, flags, _ = case
    dtype = DT[dname]
    g = _gen(label + dname)
    x = bdl(batch, dim, L, dtype, layout, g)
    if "s" in flags:  # raw dt around softplus^-1 of Mamba's range (the bias carries it when given)
        dt = bdl(batch, dim, L, dtype, layout, g, scale=0.5, offset=0.0 if "b" in flags else -4.0)
    else:  # no softplus: dt is the step itself, small and positive
        dt = bdl(batch, dim, L, dtype, layout, g, scale=0.01, offset=0.05)
    z = bdl(batch, dim, L, dtype, layout, g) if "z" in flags else None
    B = bgnl(batch, G, N, L, dtype, layout, g)
    C = bgnl(batch, G, N, L, dtype, layout, g)
    # dt_bias = softplus^-1 of U[1e-3, 1e-1] as Mamba initialises it.
    A = _A(dim, N, flags, g)
    pdt = dtype if "p" in flags else torch.float32
    Dp = same(torch.randn(dim, generator=g).to(pdt)) if "D" in flags else None
    dtb = None
    if "b" in flags:
        d0 = torch.exp(torch.rand(dim, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        dtb = same((d0 + torch.log(-torch.expm1(-d0)) if "s" in flags else d0).to(pdt))
    nslots = batch + 2
    state = same(torch.randn(nslots, dim, N, generator=g) * 0.5) if smode else None
    idx = slots_for(smap, batch, nslots, g) if smode else None
    sl = same(torch.tensor(lens, dtype=torch.int32)) if lens is not None else None
    return x, dt, A, B, C, Dp, z, dtb, state, idx, sl, "s" in flags, smode == "load"


def _scan_cuda(args, out):
    x, dt, A, B, C, Dp, z, dtb, state, idx, sl, sp, load = args
    _C.scan_fwd(D(x), D(dt), D(A), D(B), D(C), D(Dp), D(z), D(dtb), D(state), D(idx), D(sl), desc(out), None, None,
                int(sp), int(load), ops.stream_of(x.gpu))


def _scan_cpu(args, st_cpu):
    x, dt, A, B, C, Dp, z, dtb, state, idx, sl, sp, load = args
    return ops.selective_scan(x.cpu, dt.cpu, A.cpu, B.cpu, C.cpu, cpu(Dp), cpu(z), cpu(dtb), st_cpu, cpu(idx),
                              cpu(sl), sp, load)


# The two scan kernels (SSMTP_SCAN_KERNEL): "loop" (a thread walks time; chunked over blocks for few sequences) and
# "chunked" (blocks walk chunks of steps, scanned in parallel over lanes). Both run every case; SSMTP_SCAN_CHUNKS
# only steers the loop kernel.
SCAN_KERNELS = ["loop", "chunked"]


@pytest.mark.parametrize("kernel", SCAN_KERNELS)
@pytest.mark.parametrize("dname", list(DT))
@pytest.mark.parametrize("case", SCAN_CASES, ids=[c[0] for c in SCAN_CASES])
def test_scan_cuda_vs_cpu(case, dname, kernel, monkeypatch):
    _check_scan(case, dname, kernel, monkeypatch)


def _check_scan(case, dname, kernel, monkeypatch):
    monkeypatch.setenv("SSMTP_SCAN_KERNEL", kernel)
    chunks = case[-1]
    if chunks is not None:
        monkeypatch.setenv("SSMTP_SCAN_CHUNKS", str(chunks))
    else:
        monkeypatch.delenv("SSMTP_SCAN_CHUNKS", raising=False)
    args = _scan_inputs(case, dname)
    state = args[8]
    st_cpu = state.cpu.clone() if state else None
    ref = _scan_cpu(args, st_cpu)
    out = nan_like(args[0].gpu)
    _scan_cuda(args, out)
    torch.cuda.synchronize()
    atol, rtol = SCAN_TOL[dname]
    close(out, ref, atol, rtol, "out")
    if state:
        close(state.gpu, st_cpu, *STATE_TOL, "final state")


TPC_CASES = [c for c in SCAN_CASES if c[0] in ("mamba-like-chan", "long-chunks-lens-pad", "zamba-heads-2",
                                                 "long-B1-auto-chunks", "dstate-5-nogate", "strided-long-chunks")]
TPC_CASES += STAGED_CASES


@pytest.mark.parametrize("variant", ["tpc1", "tpc2", "tpc4", "u4"])
@pytest.mark.parametrize("dname", list(DT))
@pytest.mark.parametrize("case", TPC_CASES, ids=[c[0] for c in TPC_CASES])
def test_scan_cuda_kernel_variants(case, dname, variant, monkeypatch):
    """The d_state <= 16 kernel variants the launcher picks from or the benchmark sweeps: the state over 1, 2 or 4
    threads per channel (SSMTP_SCAN_TPC; d_state < 16 pads; 1 and 2 staged on the staged layouts), and x/dt/z loaded
    4 steps at a time instead of 8 (SSMTP_SCAN_U=4)."""
    if variant.startswith("tpc"):
        monkeypatch.setenv("SSMTP_SCAN_TPC", variant[3:])
    else:
        monkeypatch.setenv("SSMTP_SCAN_U", "4")
    _check_scan(case, dname, "loop", monkeypatch)


CHUNKED_P_CASES = [c for c in SCAN_CASES if c[0] in ("mamba-like-chan", "seqlen-1", "long-chunks-lens-pad",
                                                      "zamba-heads-2", "long-B1-auto-chunks", "dstate-5-nogate",
                                                      "strided-long-chunks", "no-state-lens", "seqlen-0")]


@pytest.mark.parametrize("lanes", ["4", "8", "16"])
@pytest.mark.parametrize("dname", list(DT))
@pytest.mark.parametrize("case", CHUNKED_P_CASES, ids=[c[0] for c in CHUNKED_P_CASES])
def test_scan_cuda_chunked_lanes(case, dname, lanes, monkeypatch):
    """The chunked kernel at each lane count per channel (SSMTP_SCAN_P: chunks of 32, 64, 128 steps) for
    d_state <= 16, whatever the launcher would pick for the shape."""
    monkeypatch.setenv("SSMTP_SCAN_P", lanes)
    _check_scan(case, dname, "chunked", monkeypatch)


def test_scan_cuda_kernels_agree(monkeypatch):
    """The loop and chunked kernels compute the same function (f32, long, ragged lengths, several chunks each)."""
    case = ("kernels-agree", 3, 200, 1500, 16, 1, "chan", "load", "perm", [1500, 777, 64], "zDbs", None)
    outs, states = [], []
    for k in SCAN_KERNELS:
        monkeypatch.setenv("SSMTP_SCAN_KERNEL", k)
        args = _scan_inputs(case, "f32")
        out = nan_like(args[0].gpu)
        _scan_cuda(args, out)
        torch.cuda.synchronize()
        outs.append(out.cpu())
        states.append(args[8].gpu.cpu())
    # each kernel is within SCAN_TOL["f32"] of the CPU op, so within twice that of the other
    close(outs[1], outs[0], 2e-4, 1e-3, "chunked vs loop: out")
    close(states[1], states[0], 2e-4, 1e-3, "chunked vs loop: state")


def test_scan_cuda_kernel_knob_rejects_unknown(monkeypatch):
    """An unknown SSMTP_SCAN_KERNEL is an error, not a silent fallback."""
    monkeypatch.setenv("SSMTP_SCAN_KERNEL", "nope")
    case = SCAN_CASES[0]
    args = _scan_inputs(case, "f32")
    with pytest.raises(Exception, match="SSMTP_SCAN_KERNEL"):
        _scan_cuda(args, nan_like(args[0].gpu))


@pytest.mark.parametrize("tpc", ["1", "2"])
@pytest.mark.parametrize("tile", ["16", "32"])
@pytest.mark.parametrize("dname", ["bf16", "f16"])
@pytest.mark.parametrize("case", STAGED_CASES, ids=[c[0] for c in STAGED_CASES])
def test_scan_cuda_staged_equals_direct(case, dname, tile, tpc, monkeypatch):
    """x/dt/z and B/C staged through shared memory (SSMTP_SCAN_STAGE=16 or 32: an error unless the staged kernel
    runs) give the same bits as the direct loads (SSMTP_SCAN_STAGE=0): the same arithmetic in the same order, with
    intermediate-state saves in the same call; with one thread per channel and with two (SSMTP_SCAN_TPC=2, where
    each lane evaluates the softplus and gate of half the steps for both)."""
    monkeypatch.setenv("SSMTP_SCAN_KERNEL", "loop")
    monkeypatch.setenv("SSMTP_SCAN_TPC", tpc)
    if case[-1] is not None:
        monkeypatch.setenv("SSMTP_SCAN_CHUNKS", str(case[-1]))
    else:
        monkeypatch.delenv("SSMTP_SCAN_CHUNKS", raising=False)
    batch, L, nslots = case[1], case[3], case[1] + 2
    res = []
    for mode in (tile, "0"):
        monkeypatch.setenv("SSMTP_SCAN_STAGE", mode)
        x, dt, A, B, C, Dp, z, dtb, state, idx, sl, sp, load = _scan_inputs(case, dname)
        # saves: spare slots past the batch's, at two positions of row 0 (one inside the first tile)
        sv_slots = torch.full((batch, 2), -1, dtype=torch.int32)
        sv_pos = torch.tensor([[1, 2]] * batch, dtype=torch.int32)  # rows without saves: slots -1
        spare = nslots + torch.arange(2, dtype=torch.int32)
        if L >= 3 and state is not None:
            sv_pos[0] = torch.tensor([min(5, L - 1), L - 1], dtype=torch.int32).clamp(min=1)
            sv_pos[0, 1] = max(int(sv_pos[0, 1]), int(sv_pos[0, 0]) + 1)
            sv_slots[0] = spare
        st = torch.cat([state.gpu, torch.zeros(2, *state.gpu.shape[1:], device="cuda")]) if state else None
        saves = (sv_pos.cuda(), sv_slots.cuda()) if st is not None and L >= 3 else (None, None)
        out = ops.selective_scan(x.gpu, dt.gpu, A.gpu, B.gpu, C.gpu, Dp.gpu if Dp else None, z.gpu if z else None,
                                 dtb.gpu if dtb else None, st, idx.gpu if idx else None, sl.gpu if sl else None, sp,
                                 load, *saves)
        torch.cuda.synchronize()
        res.append((out.cpu(), st.cpu() if st is not None else None))
    assert torch.equal(res[0][0], res[1][0]), "out: staged vs direct loads"
    if res[0][1] is not None:
        assert torch.equal(res[0][1], res[1][1]), "states (final and saved): staged vs direct loads"


def test_scan_cuda_auto_threads_per_channel(monkeypatch):
    """By default (SSMTP_SCAN_TPC unset) a small staged call (few blocks per SM) takes two threads per channel, a
    large one (16 sequences x 8192 channels, 400 steps) one: the default's bits equal the forced choice's, and the two
    choices' bits differ (y summed in another order), so the comparison can tell them apart."""
    monkeypatch.setenv("SSMTP_SCAN_KERNEL", "loop")
    monkeypatch.delenv("SSMTP_SCAN_U", raising=False)
    small = ("auto-tpc-small", 1, 256, 100, 16, 1, "chan", "load", None, None, "zDbs", 1)
    big = ("auto-tpc-big", 16, 8192, 400, 16, 1, "chan", "load", None, None, "zDbs", 1)
    monkeypatch.setenv("SSMTP_SCAN_CHUNKS", "1")
    for case, want in ((small, "2"), (big, "1")):
        outs = {}
        for mode in ("auto", "1", "2"):
            monkeypatch.setenv("SSMTP_SCAN_TPC", mode)
            args = _scan_inputs(case, "f16")
            out = nan_like(args[0].gpu)
            _scan_cuda(args, out)
            torch.cuda.synchronize()
            outs[mode] = out.cpu()
        assert not torch.equal(outs["1"], outs["2"]), case[0]
        assert torch.equal(outs["auto"], outs[want]), f"{case[0]}: the default is not SSMTP_SCAN_TPC={want}"
    monkeypatch.setenv("SSMTP_SCAN_TPC", "3")
    args = _scan_inputs(small, "f16")
    with pytest.raises(Exception, match="SSMTP_SCAN_TPC"):
        _scan_cuda(args, nan_like(args[0].gpu))


def test_scan_cuda_stage_knob(monkeypatch):
    """SSMTP_SCAN_STAGE=32 on a layout that cannot be staged (x/dt/z time-contiguous) is an error, not a silent
    fallback; an unknown value is an error; auto (the default) takes the direct loads there."""
    case = ("no-stage", 2, 128, 40, 16, 1, "contig", "load", None, None, "zDbs", None)
    args = _scan_inputs(case, "bf16")
    monkeypatch.setenv("SSMTP_SCAN_KERNEL", "loop")
    monkeypatch.setenv("SSMTP_SCAN_STAGE", "32")
    with pytest.raises(Exception, match="cannot be staged"):
        _scan_cuda(args, nan_like(args[0].gpu))
    monkeypatch.setenv("SSMTP_SCAN_STAGE", "64")
    with pytest.raises(Exception, match="SSMTP_SCAN_STAGE"):
        _scan_cuda(args, nan_like(args[0].gpu))
    monkeypatch.setenv("SSMTP_SCAN_STAGE", "auto")
    out = nan_like(args[0].gpu)
    _scan_cuda(args, out)
    torch.cuda.synchronize()
    assert not torch.isnan(out).any()


def test_scan_cuda_chunked_matches_one_pass(monkeypatch):
    """The loop kernel's three-launch chunking and its single pass compute the same function (f32, long, slow
    decays)."""
    monkeypatch.setenv("SSMTP_SCAN_KERNEL", "loop")
    case = ("chunk-vs-pass", 2, 64, 2000, 16, 1, "chan", "load", "perm", [2000, 1500], "zDbs", None)
    outs, states = [], []
    for k in ("1", "9"):
        monkeypatch.setenv("SSMTP_SCAN_CHUNKS", k)
        args = _scan_inputs(case, "f32")
        out = nan_like(args[0].gpu)
        _scan_cuda(args, out)
        torch.cuda.synchronize()
        outs.append(out.cpu())
        states.append(args[8].gpu.cpu())
    close(outs[1], outs[0], 1e-4, 5e-4, "chunked vs one pass: out")
    close(states[1], states[0], 1e-4, 5e-4, "chunked vs one pass: state")


@pytest.mark.parametrize("kernel", SCAN_KERNELS)
def test_scan_cuda_continuation(kernel, monkeypatch):
    """Prefill in two pieces (the second continuing from the state the first wrote) equals one prefill."""
    monkeypatch.delenv("SSMTP_SCAN_CHUNKS", raising=False)
    monkeypatch.setenv("SSMTP_SCAN_KERNEL", kernel)
    case = ("continue", 2, 96, 900, 16, 1, "chan", "fresh", "perm", None, "zDbs", None)
    x, dt, A, B, C, Dp, z, dtb, state, idx, sl, sp, _ = _scan_inputs(case, "f32")
    s_one = state.gpu.clone()
    y_one = ops.selective_scan(x.gpu, dt.gpu, A.gpu, B.gpu, C.gpu, Dp.gpu, z.gpu, dtb.gpu, s_one, idx.gpu, None,
                               sp, False)
    s_two = state.gpu.clone()
    cut = 517
    ya = ops.selective_scan(x.gpu[..., :cut], dt.gpu[..., :cut], A.gpu, B.gpu[..., :cut], C.gpu[..., :cut], Dp.gpu,
                            z.gpu[..., :cut], dtb.gpu, s_two, idx.gpu, None, sp, False)
    yb = ops.selective_scan(x.gpu[..., cut:], dt.gpu[..., cut:], A.gpu, B.gpu[..., cut:], C.gpu[..., cut:], Dp.gpu,
                            z.gpu[..., cut:], dtb.gpu, s_two, idx.gpu, None, sp, True)
    close(torch.cat([ya, yb], -1), y_one.cpu(), 1e-4, 5e-4, "two-piece prefill")
    close(s_two, s_one.cpu(), 1e-4, 5e-4, "two-piece state")


# ============================================================================================== decode step

# Tolerances. The state update mirrors the CPU's arithmetic (no contraction; expf/log1pf within 2 ulp of libm):
# f32 states to 2e-6 relative. y sums the states in a different order (shuffle tree), so f32 outputs to 1e-5;
# f16/bf16 outputs one rounding step of the output dtype.
STEP_STATE_TOL = (1e-6, 2e-6)
STEP_TOL = {"f32": (1e-5, 1e-5), "f16": (1e-3, 2e-3), "bf16": (1e-3, 8e-3)}

# label: batch, dim, N, ngroups, layout, slots, flags, state view
#   layout: "contig" (batch, dim) or "wide" (a column slice of a wider projection, odd offset)
#   state view: "plain" or "offset" (a view starting 1 float in: not 16-byte aligned -> scalar path)
STEP_CASES = [
    ("mamba-N16", 5, 100, 16, 1, "wide", "perm", "zDbs", "plain"),
    ("pad-rows", 9, 64, 16, 1, "contig", "pad", "zDbs", "plain"),
    ("batch-1", 1, 33, 16, 1, "contig", None, "zDbs", "plain"),
    ("N1-scalar", 3, 40, 1, 1, "contig", "perm", "zDbs", "plain"),
    ("N4", 4, 31, 4, 1, "wide", "pad", "zDbs", "plain"),
    ("N8-groups", 6, 48, 8, 4, "contig", "perm", "zDbsp", "plain"),
    ("N12-scalar", 2, 36, 12, 3, "contig", "perm", "zDbs", "plain"),
    ("N64", 7, 70, 64, 2, "wide", "pad", "zDbs", "plain"),
    ("N128", 3, 20, 128, 1, "contig", "perm", "zDbs", "plain"),
    ("N32-groups", 6, 96, 32, 2, "contig", "pad", "zDbs", "plain"),
    ("N64-contig", 5, 70, 64, 2, "contig", "perm", "zDbsp", "plain"),
    ("N256", 5, 12, 256, 1, "contig", "pad", "zDbs", "plain"),
    ("N16-misaligned-state", 4, 50, 16, 1, "contig", "perm", "zDbs", "offset"),
    ("zamba-heads", 8, 74, 16, 2, "wide", "pad", "zDbs", "plain"),
    ("no-extras", 3, 45, 16, 1, "contig", None, "", "plain"),
    ("no-softplus", 3, 45, 16, 1, "contig", "perm", "zDb", "plain"),
    ("one-A-N64", 6, 128, 64, 2, "wide", "pad", "zDbsa", "plain"),
    ("one-A-N16", 5, 40, 16, 1, "contig", "perm", "zDbsa", "plain"),
    ("one-A-N256", 3, 12, 256, 1, "contig", "pad", "zDbsa", "plain"),
    ("one-A-N12-scalar", 2, 36, 12, 3, "contig", "perm", "zDbsa", "plain"),
]


def _bd(batch, dim, dtype, layout, g, scale=1.0, offset=0.0):
    if layout == "wide":
        base = torch.randn(batch, dim + 9, generator=g) * scale + offset
        return Pair(base.to(dtype), lambda t: t[:, 3:3 + dim])
    return same((torch.randn(batch, dim, generator=g) * scale + offset).to(dtype))


def _step_inputs(case, dname):
    label, batch, dim, N, G, layout, smap, flags, sview = case
    dtype = DT[dname]
    g = _gen(label + dname)
    x = _bd(batch, dim, dtype, layout, g)
    if "s" in flags:
        dt = _bd(batch, dim, dtype, layout, g, 0.5, 0.0 if "b" in flags else -4.0)
    else:  # no softplus: dt is the step itself, small and positive
        dt = _bd(batch, dim, dtype, layout, g, 0.01, 0.05)
    z = _bd(batch, dim, dtype, layout, g) if "z" in flags else None
    if layout == "wide":  # B and C inside one projection row, as x_proj writes them
        proj = torch.randn(batch, 2 * G * N + 3, generator=g).to(dtype)
        B = Pair(proj, lambda t: t[:, 1:1 + G * N].unflatten(1, (G, N)))
        C = Pair(proj, lambda t: t[:, 1 + G * N:1 + 2 * G * N].unflatten(1, (G, N)))
    else:
        B = same(torch.randn(batch, G, N, generator=g).to(dtype))
        C = same(torch.randn(batch, G, N, generator=g).to(dtype))
    A = _A(dim, N, flags, g)
    pdt = dtype if "p" in flags else torch.float32
    Dp = same(torch.randn(dim, generator=g).to(pdt)) if "D" in flags else None
    dtb = None
    if "b" in flags:
        dtb = same((torch.rand(dim, generator=g) * 4 - 5 if "s" in flags else torch.rand(dim, generator=g) * 0.05)
                   .to(pdt))
    nslots = batch + 3
    if sview == "offset":
        base = torch.randn(nslots * dim * N + 1, generator=g)
        state = Pair(base, lambda t: t[1:].view(nslots, dim, N))
    else:
        state = same(torch.randn(nslots, dim, N, generator=g))
    idx = slots_for(smap, batch, nslots, g)
    return x, dt, A, B, C, Dp, z, dtb, state, idx, "s" in flags


def _step_cuda(args, out):
    x, dt, A, B, C, Dp, z, dtb, state, idx, sp = args
    _C.step_fwd(D(x), D(dt), D(A), D(B), D(C), D(Dp), D(z), D(dtb), D(state), D(idx), desc(out), desc(None), int(sp),
                ops.stream_of(x.gpu))


# The decode-step kernels (SSMTP_STEP_KERNEL): "block" (one round trip per block of rows) and "pipe" (grid-stride
# items, next item's loads in flight during the compute; N % 4 == 0 and N <= 128, else the same paths as "block").
STEP_KERNELS = ["block", "pipe"]


@pytest.mark.parametrize("kernel", STEP_KERNELS)
@pytest.mark.parametrize("dname", list(DT))
@pytest.mark.parametrize("case", STEP_CASES, ids=[c[0] for c in STEP_CASES])
def test_step_cuda_vs_cpu(case, dname, kernel, monkeypatch):
    monkeypatch.setenv("SSMTP_STEP_KERNEL", kernel)
    args = _step_inputs(case, dname)
    x, dt, A, B, C, Dp, z, dtb, state, idx, sp = args
    st_cpu = state.cpu.clone()
    ref = ops.selective_state_update(x.cpu, dt.cpu, A.cpu, B.cpu, C.cpu, cpu(Dp), cpu(z), cpu(dtb), st_cpu,
                                     cpu(idx), sp)
    out = nan_like(x.gpu)
    _step_cuda(args, out)
    torch.cuda.synchronize()
    close(out, ref, *STEP_TOL[dname], "out")
    close(state.gpu, st_cpu, *STEP_STATE_TOL, "state")


@pytest.mark.parametrize("shape", ["auto", "4x4", "2x5", "2x6", "1x8"])
@pytest.mark.parametrize("case", ["pad-rows", "zamba-heads", "batch-1", "N64", "one-A-N64", "N128"])
def test_step_block_shapes_equal_default(case, shape, monkeypatch):
    """The vector kernel's other block shapes at d_state 16, 64 and 128 (SSMTP_STEP_SHAPE: sequences per block x
    blocks per SM) give bit for bit 4x3's outputs and states (the same arithmetic per element, another grouping of
    rows)."""
    args = list(_step_inputs(next(c for c in STEP_CASES if c[0] == case), "bf16"))
    results = []
    for sh in ("4x3", shape):
        monkeypatch.setenv("SSMTP_STEP_SHAPE", sh)
        a = list(args)
        a[8] = same(args[8].cpu.clone())
        out = nan_like(args[0].gpu)
        _step_cuda(a, out)
        torch.cuda.synchronize()
        results.append((out, a[8].gpu))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


def test_step_block_shape_bad_name_raises(monkeypatch):
    monkeypatch.setenv("SSMTP_STEP_SHAPE", "3x3")
    args = _step_inputs(next(c for c in STEP_CASES if c[0] == "pad-rows"), "bf16")
    with pytest.raises(RuntimeError, match="SSMTP_STEP_SHAPE"):
        _step_cuda(args, nan_like(args[0].gpu))


@pytest.mark.parametrize("op", ["scan", "step"])
def test_one_A_kernels_equal_general(op, monkeypatch):
    """A per channel (stride-0 view, the SA kernels: one exp per channel and step) gives bit for bit the states the
    general kernels give for the same values stored per state; the step's output too (same lane layout). The scan's
    SA kernel at d_state 33..64 holds all states of a channel in one thread (the general one: 4 threads of 16), so
    its y is summed in another order: equal to one rounding of the output dtype."""
    if op == "scan":
        monkeypatch.setenv("SSMTP_SCAN_CHUNKS", "3")  # the same time chunks for both (the launcher's choice differs)
        case = next(c for c in SCAN_CASES if c[0] == "one-A-dstate-64-B1-chunks")
        args = list(_scan_inputs(case, "bf16"))
        run = _scan_cuda
    else:
        case = next(c for c in STEP_CASES if c[0] == "one-A-N64")
        args = list(_step_inputs(case, "bf16"))
        run = _step_cuda
    i_state = 8  # the state's place in both argument lists
    A = args[2]
    assert A.gpu.stride(1) == 0
    results = []
    for a_gpu in (A.gpu, A.gpu.contiguous()):
        a = list(args)
        a[2] = Pair.__new__(Pair)
        a[2].cpu, a[2].gpu = A.cpu, a_gpu
        a[i_state] = same(args[i_state].cpu.clone())
        out = nan_like(args[0].gpu)
        run(a, out)
        torch.cuda.synchronize()
        results.append((out, a[i_state].gpu))
    if op == "step":
        assert torch.equal(results[0][0], results[1][0])
    else:
        torch.testing.assert_close(results[0][0].float(), results[1][0].float(), rtol=8e-3, atol=1e-3)
    assert torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("dname", list(DT))
def test_step_cuda_pipe_grid_stride(dname, monkeypatch):
    """The pipe kernel with one block per SM, so that each block walks several items (the prefetch of the next
    item, the last item of a block, padded slots and a channel count that is not a multiple of the block's)."""
    monkeypatch.setenv("SSMTP_STEP_KERNEL", "pipe")
    monkeypatch.setenv("SSMTP_STEP_BLOCKS_PER_SM", "1")
    case = ("pipe-grid-stride", 70, 1000, 16, 2, "wide", "pad", "zDbs", "plain")
    args = _step_inputs(case, dname)
    x, dt, A, B, C, Dp, z, dtb, state, idx, sp = args
    st_cpu = state.cpu.clone()
    ref = ops.selective_state_update(x.cpu, dt.cpu, A.cpu, B.cpu, C.cpu, cpu(Dp), cpu(z), cpu(dtb), st_cpu,
                                     cpu(idx), sp)
    out = nan_like(x.gpu)
    _step_cuda(args, out)
    torch.cuda.synchronize()
    close(out, ref, *STEP_TOL[dname], "out")
    close(state.gpu, st_cpu, *STEP_STATE_TOL, "state")


@pytest.mark.parametrize("kernel", STEP_KERNELS)
def test_step_cuda_repeated_steps_track_cpu(kernel, monkeypatch):
    """64 decode steps in a row on the same slots: the states stay within the tight bound of the CPU's."""
    monkeypatch.setenv("SSMTP_STEP_KERNEL", kernel)
    case = ("repeat", 6, 80, 16, 1, "contig", "pad", "zDbs", "plain")
    args = list(_step_inputs(case, "f32"))
    state = args[8]
    st_cpu = state.cpu.clone()
    g = _gen("repeat-steps")
    for _ in range(64):
        for i in (0, 1, 6):  # fresh x, dt, z each step
            v = torch.randn(args[i].cpu.shape, generator=g)
            args[i] = same(v)
        x, dt, A, B, C, Dp, z, dtb, _, idx, sp = args
        ref = ops.selective_state_update(x.cpu, dt.cpu, A.cpu, B.cpu, C.cpu, Dp.cpu, z.cpu, dtb.cpu, st_cpu,
                                         idx.cpu, sp)
        out = nan_like(x.gpu)
        _step_cuda(args, out)
        close(out, ref, 1e-5, 1e-5, "out")
    torch.cuda.synchronize()
    close(state.gpu, st_cpu, 1e-5, 1e-5, "state after 64 steps")


# ============================================================================================== CUDA graphs

@pytest.mark.parametrize("kernel", STEP_KERNELS)
def test_decode_graph_capture(kernel, monkeypatch):
    """conv decode + step captured in a CUDA graph and replayed equal the same ops run eagerly."""
    monkeypatch.setenv("SSMTP_STEP_KERNEL", kernel)
    g = _gen("graph")
    batch, dim, N, width, slen = 8, 96, 16, 4, 4
    dev = "cuda"
    dtype = torch.bfloat16
    nslots = 12
    conv_w = (torch.randn(dim, width, generator=g) * 0.5).to(dtype).to(dev)
    conv_b = torch.randn(dim, generator=g).to(dtype).to(dev)
    A = (-(torch.arange(1, N + 1).float()[None, :] * torch.ones(dim, 1))).to(dev)
    Dp = torch.randn(dim, generator=g).to(dev)
    dtb = (torch.rand(dim, generator=g) * 4 - 5).to(dev)
    idx = torch.tensor([3, 0, -1, 7, 11, 5, 1, 9], dtype=torch.int32, device=dev)
    conv_state0 = torch.randn(nslots, dim, slen, generator=g).to(dtype).to(dev)
    ssm_state0 = torch.randn(nslots, dim, N, generator=g).to(dev)
    # static inputs: x/z/dt from one token-major projection, B/C from another
    proj = torch.empty(batch, 3 * dim, dtype=dtype, device=dev)
    bc = torch.empty(batch, 2 * N, dtype=dtype, device=dev)

    def decode(conv_state, ssm_state):
        xs = proj[:, :dim].unsqueeze(-1)
        xc = ops.causal_conv1d(xs, conv_w, conv_b, conv_state, idx, None, True, True).squeeze(-1)
        return ops.selective_state_update(xc, proj[:, dim:2 * dim], A, bc[:, None, :N], bc[:, None, N:], Dp,
                                          proj[:, 2 * dim:], dtb, ssm_state, idx, True)

    def fill(step):
        gg = _gen(f"graph-step-{step}")
        proj.copy_(torch.randn(batch, 3 * dim, generator=gg).to(dtype))
        bc.copy_(torch.randn(batch, 2 * N, generator=gg).to(dtype))

    cs_g, ss_g = conv_state0.clone(), ssm_state0.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm-up outside capture
        fill(-1)
        decode(cs_g.clone(), ss_g.clone())
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y_static = decode(cs_g, ss_g)
    cs_g.copy_(conv_state0)  # capture does not run the kernels, but start both paths from the same states anyway
    ss_g.copy_(ssm_state0)
    cs_e, ss_e = conv_state0.clone(), ssm_state0.clone()
    for step in range(5):
        fill(step)
        graph.replay()
        y_eager = decode(cs_e, ss_e)
        torch.cuda.synchronize()
        assert torch.equal(y_static, y_eager), f"graph replay differs from eager at step {step}"
    assert torch.equal(cs_g, cs_e) and torch.equal(ss_g, ss_e)
    assert not torch.equal(ss_g, ssm_state0)  # the replays did update the states
