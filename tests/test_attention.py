"""ssmtp::decode_attention (one query token per sequence over slot-indexed K/V caches): the C CPU op against the
pure-torch twin in ssmtp/ref.py, opcheck, the argument checks, and the CUDA kernel against the CPU op."""
import pytest
import torch

import ssmtp.ops as ops
import ssmtp.ref as ref

DTYPES = {"float32": (torch.float32, 1e-5), "bfloat16": (torch.bfloat16, 1e-2), "float16": (torch.float16, 2e-3)}

# label: batch, heads, kv heads, head_dim, slots, max_len (+1 scratch column as the engine's pool has), layout
CASES = [
    ("zamba2-like", 3, 4, 4, 160, 5, 40, "pool"),
    ("gqa-4-to-2", 2, 4, 2, 64, 3, 33, "pool"),
    ("mqa", 2, 6, 1, 32, 4, 17, "pool"),
    ("odd-head-dim", 3, 2, 2, 37, 4, 21, "pool"),
    ("head-dim-464", 2, 2, 2, 464, 3, 19, "pool"),
    ("head-dim-512", 1, 1, 1, 512, 2, 9, "pool"),
    ("one-key", 2, 2, 2, 16, 2, 1, "pool"),
    ("strided-q", 3, 4, 2, 48, 4, 30, "strided"),
]


def _inputs(case, dtype, seed=0):
    _, B, H, Hkv, D, S, T, layout = case
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(S, T + 1, Hkv, D, generator=g).to(dtype)[:, :T]  # a view without the scratch column
    v = torch.randn(S, T + 1, Hkv, D, generator=g).to(dtype)[:, :T]
    if layout == "strided":  # q as a slice of a wider projection
        q = torch.randn(B, H, 3 * D, generator=g).to(dtype)[..., D:2 * D]
    else:
        q = torch.randn(B, H, D, generator=g).to(dtype)
    idx = torch.randperm(S, generator=g)[:B].to(torch.int32)
    if B > 1:
        idx[1] = -1  # a padding row
    lens = torch.randint(1, T + 1, (B,), generator=g).to(torch.int32)
    lens[0] = T  # one row over every key
    return q, k, v, idx, lens, D ** -0.5


@pytest.mark.parametrize("dname", list(DTYPES))
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_cpu_matches_ref(case, dname):
    dtype, tol = DTYPES[dname]
    q, k, v, idx, lens, scale = _inputs(case, dtype)
    got = ops.decode_attention(q, k, v, idx, lens, scale)
    want = ref.decode_attention(q, k, v, idx, lens, scale)
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)
    pad = idx < 0
    assert torch.equal(got[pad].float(), torch.zeros_like(got[pad].float())), "padding rows are zero"


def test_matches_a_masked_softmax_over_the_gathered_keys():
    """The op == the engine's previous decode path: gather K/V to a common length, mask past each row's length."""
    q, k, v, idx, lens, scale = _inputs(CASES[1], torch.float32, seed=3)
    live = idx >= 0
    got = ops.decode_attention(q, k, v, idx, lens, scale)[live]
    kk = k[idx[live].long()].repeat_interleave(2, dim=2).transpose(1, 2)  # (b, H, T, D)
    vv = v[idx[live].long()].repeat_interleave(2, dim=2).transpose(1, 2)
    w = (q[live][:, :, None] @ kk.transpose(2, 3))[:, :, 0] * scale  # (b, H, T)
    w = w.masked_fill(torch.arange(k.shape[1])[None, None] >= lens[live][:, None, None], float("-inf"))
    want = (w.softmax(-1)[:, :, None] @ vv)[:, :, 0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_opcheck():
    q, k, v, idx, lens, scale = _inputs(CASES[1], torch.float32)
    torch.library.opcheck(ops.decode_attention, (q, k, v, idx, lens, scale))


def test_bad_input_raises_clear_errors():
    q, k, v, idx, lens, scale = _inputs(CASES[0], torch.float32)
    i32 = lambda xs: torch.tensor(xs, dtype=torch.int32)  # noqa: E731
    with pytest.raises(ValueError, match=r"state_idx\[0\]=9 >= nslots=5"):
        ops.decode_attention(q, k, v, i32([9, -1, 0]), lens, scale)
    with pytest.raises(ValueError, match=r"lengths\[2\]=41 outside 1..40"):
        ops.decode_attention(q, k, v, idx, i32([3, 0, 41]), scale)
    with pytest.raises(ValueError, match=r"lengths\[0\]=0 outside"):
        ops.decode_attention(q, k, v, idx, i32([0, 5, 5]), scale)
    with pytest.raises(ValueError, match="nheads=4 is not a multiple of nkv=3"):
        ops.decode_attention(q, k[:, :, :3].contiguous(), v[:, :, :3].contiguous(), idx, lens, scale)
    with pytest.raises(NotImplementedError, match="head_dim=600 outside 1..512"):
        ops.decode_attention(torch.randn(1, 1, 600), torch.randn(1, 2, 1, 600), torch.randn(1, 2, 1, 600), i32([0]),
                             i32([1]), 1.0)
    with pytest.raises(ValueError, match="v must be float32, got bfloat16"):
        ops.decode_attention(q, k, v.bfloat16(), idx, lens, scale)
    with pytest.raises(ValueError, match="lengths must be int32"):
        ops.decode_attention(q, k, v, idx, lens.long(), scale)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dname", list(DTYPES))
@pytest.mark.parametrize("case", CASES + [("batch-64-long", 64, 8, 8, 160, 70, 700, "pool")],
                         ids=[c[0] for c in CASES] + ["batch-64-long"])
def test_cuda_matches_cpu(case, dname):
    dtype, tol = DTYPES[dname]
    q, k, v, idx, lens, scale = _inputs(case, dtype, seed=7)
    want = ops.decode_attention(q, k, v, idx, lens, scale)
    cu = [t.cuda() for t in (q, k, v, idx, lens)]
    # the same strides on the GPU: views of copies of the bases
    cu[1] = k._base.cuda()[:, :k.shape[1]] if k._base is not None else cu[1]
    cu[2] = v._base.cuda()[:, :v.shape[1]] if v._base is not None else cu[2]
    got = ops.decode_attention(*cu, scale)
    torch.cuda.synchronize()
    torch.testing.assert_close(got.cpu().float(), want.float(), atol=tol, rtol=tol)
    # a bad slot on the GPU gives NaN rows (no host-side index read), never a crash
    bad = cu[3].clone()
    bad[0] = k.shape[0] + 3
    out = ops.decode_attention(cu[0], cu[1], cu[2], bad, cu[4], scale)
    torch.cuda.synchronize()
    assert torch.isnan(out[0].float()).all()
