"""ssmtp::ssd_scan on CUDA (csrc/cuda/ssd.cu, chunked SSD on tensor cores) against the C CPU op on the same inputs.

Shapes cover the kernel's paths: 64 and 32 columns per block (SSMTP_SSD_PT, and the automatic choice), 16-byte
packs with the next chunk prefetched and element by element (SSMTP_SSD_VEC=0), several
chunks with a partial last one, a sequence shorter than one chunk, one token, d_state 16 / 64 / 128, groups shared by
several heads, strided views of fused projections, right padding (seq_lens), slots with a padding row, a loaded
initial state, the prefill dt clamp, z and D. Outputs are pre-filled with NaN through the op's own allocation being
uninitialised and checked for NaN; the state rows the op must not touch are compared exactly.
Tolerance: the GPU's tensor-core products take their fp32 operands as hi + lo TF32 terms (~fp32; see
tests/test_ssd_tf32_model.py), the CPU sums in fp32 in another order: half-precision outputs may differ by about one
rounding of the output type plus that."""
import zlib

import pytest
import torch

import ssmtp.ops as ops

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

INF = float("inf")
# (label, batch, seqlen, nheads, headdim, ngroups, dstate)
CASES = [
    ("zamba2-2.7b-like", 2, 200, 4, 64, 1, 64),
    ("one chunk short", 3, 37, 2, 64, 1, 64),
    ("one token", 2, 1, 2, 32, 1, 16),
    ("headdim 32, groups 2", 2, 130, 4, 32, 2, 32),
    ("dstate 128", 1, 96, 2, 64, 1, 128),
    ("headdim 128, dstate 16", 1, 65, 2, 128, 2, 16),
]
DT = {"bf16": torch.bfloat16, "f16": torch.float16}
ATOL = {"bf16": 2e-2, "f16": 4e-3}


def _inputs(case, dtype, seed, strided):
    _, batch, L, nh, hd, G, N = case
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    if strided:  # slices of a wider tensor, as views of a fused projection are
        x = rnd(batch, L, nh, hd * 2)[..., hd:].to(dtype)
        B = rnd(batch, L, G, N * 2)[..., :N].to(dtype)
    else:
        x = rnd(batch, L, nh, hd).to(dtype)
        B = rnd(batch, L, G, N).to(dtype)
    return dict(x=x, dt=(rnd(batch, L, nh) * 0.7 - 1.0).to(dtype), A=-torch.rand(nh, generator=g) * 2 - 0.1, B=B,
                C=(rnd(batch, L, G, N) / N ** 0.5).to(dtype), D=rnd(nh), z=rnd(batch, L, nh, hd).to(dtype),
                dt_bias=rnd(nh) * 0.5, state=rnd(batch + 2, nh, hd, N) * 0.3)


def _seed(*names):
    """A seed fixed by the case's names (hash() of a str changes from one process to the next)."""
    return zlib.crc32("/".join(names).encode())


def _rows(batch, L, seed):
    """The slots+lens+load+clamp variant's row arguments: slots shuffled, row 1 padding (output zero, state
    untouched), each row 3 steps shorter than the one before, the initial state loaded, dt clamped below at 0.3."""
    idx = torch.randperm(batch + 2, generator=torch.Generator().manual_seed(seed))[:batch].to(torch.int32)
    if batch > 1:
        idx[1] = -1
    lens = torch.tensor([max(0, L - 3 * i) for i in range(batch)], dtype=torch.int32)
    return idx, lens, True, 0.3


def _run(t, device, state, idx, lens, load, dt_min, use_z, use_D):
    cu = lambda v: None if v is None else v.to(device)  # noqa: E731
    return ops.ssd_scan(cu(t["x"]), cu(t["dt"]), cu(t["A"]), cu(t["B"]), cu(t["C"]), cu(t["D"]) if use_D else None,
                        cu(t["z"]) if use_z else None, cu(t["dt_bias"]), state, cu(idx), cu(lens), True, load, 256,
                        dt_min, INF)


def _check(got, want, atol, what):
    got, want = got.float().cpu(), want.float()
    assert not torch.isnan(got).any(), f"{what}: NaN"
    scale = want.abs().mean().item() + 1e-6
    err = (got - want).abs()
    bound = atol * (want.abs() + scale)
    assert (err <= bound).all(), f"{what}: max err {err.max():.3g} (mean |ref| {scale:.3g})"


@pytest.mark.parametrize("pt", ["auto", "32", "64", "scalar"])
@pytest.mark.parametrize("variant", ["plain", "slots+lens+load+clamp", "strided-noDz"])
@pytest.mark.parametrize("dname", list(DT))
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_ssd_scan_cuda_matches_cpu(monkeypatch, case, dname, variant, pt):
    if pt == "64" and case[4] % 64:
        pytest.skip("64 columns per block needs headdim % 64 == 0 (the launcher takes 32 then)")
    if pt == "scalar":  # the element-by-element path (taken for layouts without aligned 16-byte rows)
        monkeypatch.setenv("SSMTP_SSD_VEC", "0")
    elif pt != "auto":
        monkeypatch.setenv("SSMTP_SSD_PT", pt)
    dtype = DT[dname]
    batch, L = case[1], case[2]
    seed = _seed(case[0], dname, variant)
    t = _inputs(case, dtype, seed=seed, strided=variant.startswith("strided"))
    full = variant.startswith("slots")
    idx, lens, load, dt_min = _rows(batch, L, seed) if full else (None, None, False, 0.0)
    use_zD = not variant.startswith("strided")
    st_cpu = t["state"].clone()
    want = _run(t, "cpu", st_cpu if full else None, idx, lens, load, dt_min, use_zD, use_zD)
    st_gpu = t["state"].cuda() if full else None
    got = _run(t, "cuda", st_gpu, idx, lens, load, dt_min, use_zD, use_zD)
    torch.cuda.synchronize()
    what = f"{case[0]} {dname} {variant} pt={pt}"
    _check(got, want, ATOL[dname], what + ": out")
    if full:
        _check(st_gpu, st_cpu, 5e-3, what + ": state")
        touched = set(int(i) for i in idx if i >= 0)
        for s in range(batch + 2):
            if s not in touched:
                assert torch.equal(st_gpu[s].cpu(), t["state"][s]), f"{what}: slot {s} must stay untouched"
        if batch > 1:
            assert (got[1] == 0).all(), f"{what}: padding row must be zero"
        for i in range(batch):
            n = int(lens[i])
            assert (got[i, n:] == 0).all(), f"{what}: positions past seq_lens must be zero"


def test_ssd_scan_cuda_final_state_without_load_and_chunked_resume():
    """Two halves with the state carried (load_state on the second) give the whole sequence's output and state: the
    kernel's state in and out agree with its own chunk walk."""
    case = ("resume", 2, 160, 4, 64, 1, 64)
    t = _inputs(case, torch.bfloat16, seed=7, strided=False)
    cu = {k: v.cuda() for k, v in t.items()}
    st_full = torch.zeros(2, 4, 64, 64, device="cuda")
    y_full = ops.ssd_scan(cu["x"], cu["dt"], cu["A"], cu["B"], cu["C"], cu["D"], cu["z"], cu["dt_bias"], st_full,
                          None, None, True, False, 256, 0.0, INF)
    st = torch.full((2, 4, 64, 64), float("nan"), device="cuda")  # overwritten: load_state off
    ys = []
    for lo, hi, load in ((0, 100, False), (100, 160, True)):
        sl = lambda v: v[:, lo:hi].contiguous()  # noqa: E731
        ys.append(ops.ssd_scan(sl(cu["x"]), sl(cu["dt"]), cu["A"], sl(cu["B"]), sl(cu["C"]), cu["D"], sl(cu["z"]),
                               cu["dt_bias"], st, None, None, True, load, 256, 0.0, INF))
    _check(torch.cat(ys, 1), y_full.float().cpu(), 2e-2, "resumed output")
    _check(st, st_full.cpu(), 5e-3, "resumed state")


def test_ssd_scan_cuda_bad_slot_and_unsupported():
    case = ("bad", 2, 10, 2, 32, 1, 16)
    t = {k: v.cuda() for k, v in _inputs(case, torch.bfloat16, seed=3, strided=False).items()}
    st0 = t["state"].clone()
    idx = torch.tensor([0, 99], dtype=torch.int32, device="cuda")  # 99 >= nslots: NaN out, state untouched
    y = ops.ssd_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], t["D"], None, t["dt_bias"], t["state"], idx, None, True,
                     False, 256, 0.0, INF)
    assert torch.isnan(y[1].float()).all() and not torch.isnan(y[0].float()).any()
    assert torch.equal(t["state"][1:], st0[1:])
    # shapes the kernel does not take: NotImplementedError naming the condition, and ssd_cuda_supports agrees
    for hd, N, dtype in ((48, 16, torch.bfloat16), (32, 24, torch.bfloat16), (32, 256, torch.bfloat16),
                         (32, 16, torch.float32)):
        assert not ops.ssd_cuda_supports(dtype, hd, N)
        x = torch.randn(1, 4, 2, hd, device="cuda").to(dtype)
        B = torch.randn(1, 4, 1, N, device="cuda").to(dtype)
        dt = torch.randn(1, 4, 2, device="cuda").to(dtype)
        with pytest.raises(NotImplementedError, match="ssd_fwd"):
            ops.ssd_scan(x, dt, t["A"], B, B, None, None, None, None, None, None, True, False, 256, 0.0, INF)
    assert ops.ssd_cuda_supports(torch.bfloat16, 64, 64) and ops.ssd_cuda_supports(torch.float16, 32, 128)


def test_ssd_scan_cuda_graph_replay():
    case = ("graph", 2, 70, 2, 64, 1, 64)
    t = {k: v.cuda() for k, v in _inputs(case, torch.bfloat16, seed=5, strided=False).items()}
    st = torch.zeros(2, 2, 64, 64, device="cuda")

    def call():
        return ops.ssd_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], t["D"], t["z"], t["dt_bias"], st, None, None,
                            True, False, 256, 0.0, INF)

    want = call().clone()
    want_st = st.clone()
    from graph_capture import capture

    g, out = capture(call)
    st.zero_()
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, want) and torch.equal(st, want_st)
