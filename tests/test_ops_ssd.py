"""The Mamba-2 SSD C CPU ops (ssmtp::ssd_scan chunked prefill, ssmtp::ssd_step decode) against the token-by-token
twins in ssmtp/ref.py over a labelled case table, against HF's own torch SSD (mamba2_chunk_scan /
mamba2_selective_state_update), their torch.library registration (opcheck), and their argument checks."""
import pytest
import torch

import ssmtp.ops as ops
import ssmtp.ref as ref

INF = float("inf")
# (label, batch, seqlen, nheads, headdim, ngroups, dstate, chunk)
CASES = [
    ("tiny", 1, 1, 1, 1, 1, 1, 1),
    ("seqlen-1", 3, 1, 4, 8, 2, 16, 4),
    ("odd-dims", 2, 19, 6, 5, 3, 7, 4),           # 19 tokens: a partial last chunk
    ("chunk>len", 2, 7, 4, 3, 1, 8, 16),
    ("chunk-1", 2, 9, 2, 4, 2, 3, 1),
    ("long", 1, 70, 2, 4, 1, 16, 8),
    ("zamba2-hf-tester", 2, 13, 8, 4, 8, 2, 8),
    ("dstate-256", 1, 5, 2, 2, 1, 256, 2),
]
DTYPES = {
    # fp32: chunked vs token order of the same sums (exp of running segment sums) -> a few ulps of the largest
    # partial sums; half types round inputs and the output once, as the reference does -> a couple of output ulps.
    "float32": (torch.float32, 2e-5, 2e-5),
    "bfloat16": (torch.bfloat16, 3e-2, 2e-2),
    "float16": (torch.float16, 3e-3, 3e-3),
}


def _close(a, b, atol, rtol, what):
    torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def _inputs(case, dtype, seed, noncontig=False):
    _, batch, L, nh, hd, G, N, _ = case
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    if noncontig:  # head-dim-strided views, as slices of a fused projection are
        x = rnd(batch, L, nh, hd * 2)[..., :hd].to(dtype)
        B = rnd(batch, L, G, N * 2)[..., N:].to(dtype)
    else:
        x = rnd(batch, L, nh, hd).to(dtype)
        B = rnd(batch, L, G, N).to(dtype)
    return dict(x=x, dt=(rnd(batch, L, nh) * 0.7 - 1.0).to(dtype), A=-torch.rand(nh, generator=g) * 2 - 0.1, B=B,
                C=rnd(batch, L, G, N).to(dtype), D=rnd(nh), z=rnd(batch, L, nh, hd).to(dtype), dt_bias=rnd(nh) * 0.5,
                state=rnd(batch + 2, nh, hd, N) * 0.3)


@pytest.mark.parametrize("dname", list(DTYPES))
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("variant", ["plain", "slots+lens+load+clamp", "noncontig-noDz"])
def test_ssd_scan_matches_ref(case, dname, variant):
    dtype, atol, rtol = DTYPES[dname]
    t = _inputs(case, dtype, hash((case[0], dname, variant)) % 2**31, noncontig=variant.startswith("noncontig"))
    batch, L, chunk = case[1], case[2], case[7]
    idx = lens = None
    load, dt_min, dt_max = False, 0.0, INF
    D, z = t["D"], t["z"]
    if variant == "slots+lens+load+clamp":
        g = torch.Generator().manual_seed(7)
        idx = torch.randperm(batch + 2, generator=g)[:batch].to(torch.int32)
        if batch > 1:
            idx[1] = -1  # a padding row: zero output, its slot untouched
        lens = torch.randint(1, L + 1, (batch,), generator=g).to(torch.int32)
        load, dt_min, dt_max = True, 0.3, 2.0  # both bounds bite with these dt
    if variant.startswith("noncontig"):
        D = z = None
    s1, s2 = t["state"].clone(), t["state"].clone()
    args = (t["x"], t["dt"], t["A"], t["B"], t["C"], D, z, t["dt_bias"])
    y1 = ops.ssd_scan(*args, s1, idx, lens, True, load, chunk, dt_min, dt_max)
    y2 = ref.ssd_scan(*args, s2, idx, lens, True, load, chunk, dt_min, dt_max)
    _close(y1, y2, atol, rtol, "out")
    _close(s1, s2, 2e-5, 2e-5, "final state")  # fp32 in both, inputs rounded identically


@pytest.mark.parametrize("dname", list(DTYPES))
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_ssd_step_matches_ref(case, dname):
    dtype, atol, rtol = DTYPES[dname]
    t = _inputs(case, dtype, hash((case[0], dname, "step")) % 2**31)
    batch = case[1]
    idx = torch.arange(batch, dtype=torch.int32).flip(0) + 1
    if batch > 1:
        idx[0] = -1
    s1, s2 = t["state"].clone(), t["state"].clone()
    args = (t["x"][:, 0], t["dt"][:, 0], t["A"], t["B"][:, 0], t["C"][:, 0], t["D"], t["z"][:, 0], t["dt_bias"])
    y1 = ops.ssd_step(*args, s1, idx, True, 0.0, INF)
    y2 = ref.ssd_step(*args, s2, idx, True, 0.0, INF)
    _close(y1, y2, atol, rtol, "out")
    # one step is the same expression in the same order: exact up to the exp/softplus of libm vs torch
    _close(s1, s2, 1e-6, 1e-6, "state")
    if batch > 1:
        assert torch.equal(s1[0], t["state"][0]), "a slot no sequence points at was modified"


@pytest.mark.parametrize("chunk", [8, 5])
def test_ssd_scan_matches_hf_mamba2_chunk_scan(chunk):
    """HF's torch SSD with Zamba2's settings: dt softplus then clamp at time_step_min, D skip, initial states."""
    from transformers.models.zamba2.modeling_zamba2 import mamba2_chunk_scan, mamba2_selective_state_update

    case = ("hf", 3, 21, 8, 4, 2, 16, chunk)
    t = _inputs(case, torch.float32, 11)
    init = t["state"][:3].clone()
    y_hf, final_hf = mamba2_chunk_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], chunk, D=t["D"], dt_bias=t["dt_bias"],
                                       initial_states=init.clone(), dt_softplus=True, dt_limit=(0.4, INF),
                                       return_final_states=True)
    st = init.clone()
    y = ops.ssd_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], t["D"], None, t["dt_bias"], st, None, None, True, True,
                     chunk, 0.4, INF)
    _close(y, y_hf, 2e-5, 2e-5, "out vs HF")
    _close(st, final_hf, 2e-5, 2e-5, "final state vs HF")
    # decode: HF's step does not clamp dt; the op is called with dt_min = 0 to match
    st_hf, st2 = st.clone(), st.clone()
    hd, N = case[4], case[6]
    y_hf = mamba2_selective_state_update(st_hf, t["x"][:, 0], t["dt"][:, 0, :, None].expand(-1, -1, hd),
                                         t["A"][:, None, None].expand(-1, hd, N), t["B"][:, 0], t["C"][:, 0],
                                         t["D"][:, None].expand(-1, hd), dt_bias=t["dt_bias"][:, None].expand(-1, hd),
                                         dt_softplus=True)
    y = ops.ssd_step(t["x"][:, 0], t["dt"][:, 0], t["A"], t["B"][:, 0], t["C"][:, 0], t["D"], None, t["dt_bias"], st2,
                     None, True, 0.0, INF)
    _close(y, y_hf, 1e-5, 1e-5, "step out vs HF")
    _close(st2, st_hf, 1e-5, 1e-5, "step state vs HF")


def test_ssd_opcheck():
    case = CASES[2]
    t = _inputs(case, torch.float32, 3)
    idx = torch.tensor([3, 0], dtype=torch.int32)
    lens = torch.tensor([19, 4], dtype=torch.int32)
    torch.library.opcheck(ops.ssd_scan, (t["x"], t["dt"], t["A"], t["B"], t["C"], t["D"], t["z"], t["dt_bias"],
                                         t["state"].clone(), idx, lens, True, True, 4, 0.001, INF))
    torch.library.opcheck(ops.ssd_step, (t["x"][:, 0], t["dt"][:, 0], t["A"], t["B"][:, 0], t["C"][:, 0], t["D"],
                                         None, t["dt_bias"], t["state"].clone(), idx, True, 0.0, INF))


def test_ssd_argument_errors():
    t = _inputs(CASES[2], torch.float32, 5)  # nheads 6, ngroups 3
    base = [t["x"], t["dt"], t["A"], t["B"], t["C"], t["D"], t["z"], t["dt_bias"], t["state"].clone(), None, None,
            True, False, 4, 0.0, INF]

    def call(**kw):
        names = ["x", "dt", "A", "B", "C", "D", "z", "dt_bias", "state", "state_idx", "seq_lens", "dt_softplus",
                 "load_state", "chunk_size", "dt_min", "dt_max"]
        args = list(base)
        for k, v in kw.items():
            args[names.index(k)] = v
        return ops.ssd_scan(*args)

    with pytest.raises(ValueError, match=r"ssd_fwd: ngroups=4 does not divide nheads=6"):
        call(B=torch.randn(2, 19, 4, 7), C=torch.randn(2, 19, 4, 7))
    with pytest.raises(ValueError, match=r"ssd_fwd: chunk_size=0 < 1"):
        call(chunk_size=0)
    with pytest.raises(ValueError, match=r"ssd_fwd: dt_min=2 > dt_max=1"):
        call(dt_min=2.0, dt_max=1.0)
    with pytest.raises(ValueError, match=r"ssd_fwd: load_state=1 needs a state tensor"):
        call(state=None, load_state=True)
    with pytest.raises(ValueError, match=r"ssd_fwd: seq_lens\[1\]=20 outside 0..19"):
        call(seq_lens=torch.tensor([3, 20], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"ssd_fwd"):
        call(A=torch.randn(6, 2))  # Mamba-1 style per-channel A
    with pytest.raises(ValueError, match=r"ssd_step"):
        ops.ssd_step(t["x"][:, 0], t["dt"][:, 0], t["A"], t["B"][:, 0], t["C"][:, 0], None, None, None,
                     torch.zeros(1, 6, 5, 7), torch.tensor([0, 1], dtype=torch.int32), True, 0.0, INF)
