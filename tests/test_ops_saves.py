"""Intermediate-state saves of the prefill ops (save_pos / save_idx): the C CPU ops against the pure-torch twins, the
defining property (a save after p positions == the state a call over the first p positions alone leaves), opcheck,
and the argument checks. The engine uses them to save prefix-cache states inside one long prefill chunk."""
import pytest
import torch

import ssmtp.ops as ops
import ssmtp.ref as ref

DTYPES = {"float32": (torch.float32, 1e-5), "bfloat16": (torch.bfloat16, 2e-2)}


def _inputs(batch, dim, L, N, G, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(x=rnd(batch, dim, L).to(dtype), dt=(rnd(batch, dim, L) * 0.5).to(dtype),
                A=-torch.rand(dim, N, generator=g) * 2, B=rnd(batch, G, N, L).to(dtype),
                C=rnd(batch, G, N, L).to(dtype), D=rnd(dim), z=rnd(batch, dim, L).to(dtype), bias=rnd(dim) * 0.1,
                w=rnd(dim, 4).to(dtype), cb=rnd(dim).to(dtype))


def _plan(batch, L):
    """Main slots 0..batch-1 (row 1 padding when batch > 2), lengths, and per-row saves into slots >= batch:
    ascending positions incl. 1, <= 3 (inside the conv window) and the row's last, with -1 holes."""
    idx = torch.arange(batch, dtype=torch.int32)
    if batch > 2:
        idx[1] = -1
    lens = torch.tensor([L - (b % 3) for b in range(batch)], dtype=torch.int32)
    S = 5
    pos = torch.zeros(batch, S, dtype=torch.int32)
    sidx = torch.full((batch, S), -1, dtype=torch.int32)
    nxt = batch
    for b in range(batch):
        n = int(lens[b])
        ps = sorted({1, min(3, n), max(1, n // 2), n})
        for j, p in enumerate(ps):
            if j == 2:  # a hole: this entry is ignored whatever its position
                pos[b, j] = 0
                continue
            pos[b, j] = p
            sidx[b, j] = nxt
            nxt += 1
    return idx, lens, pos, sidx, nxt


@pytest.mark.parametrize("dname", list(DTYPES))
@pytest.mark.parametrize("load", [False, True], ids=["cold", "resume"])
@pytest.mark.parametrize("shape", [(1, 8, 13, 4, 1), (4, 12, 21, 16, 3)], ids=["b1", "b4-groups"])
def test_saves_match_ref_and_prefix_calls(shape, load, dname):
    batch, dim, L, N, G = shape
    dtype, tol = DTYPES[dname]
    t = _inputs(batch, dim, L, N, G, dtype, seed=hash((shape, load, dname)) % 2**31)
    idx, lens, pos, sidx, nslots = _plan(batch, L)
    g = torch.Generator().manual_seed(5)
    ssm0 = torch.randn(nslots, dim, N, generator=g)
    conv0 = torch.randn(nslots, dim, 4, generator=g).to(dtype)

    c1, c2 = conv0.clone(), conv0.clone()
    y1 = ops.causal_conv1d(t["x"], t["w"], t["cb"], c1, idx, lens, True, load, pos, sidx)
    y2 = ref.causal_conv1d(t["x"], t["w"], t["cb"], c2, idx, lens, True, load, pos, sidx)
    torch.testing.assert_close(y1.float(), y2.float(), atol=tol, rtol=tol)
    assert torch.equal(c1, c2), "conv states (saved and final) are exact copies of inputs"

    s1, s2 = ssm0.clone(), ssm0.clone()
    args = (t["dt"], t["A"], t["B"], t["C"], t["D"], t["z"], t["bias"])
    y1 = ops.selective_scan(t["x"], *args, s1, idx, lens, True, load, pos, sidx)
    y2 = ref.selective_scan(t["x"], *args, s2, idx, lens, True, load, pos, sidx)
    torch.testing.assert_close(y1.float(), y2.float(), atol=tol, rtol=tol)
    torch.testing.assert_close(s1, s2, atol=1e-5, rtol=1e-5)

    # the defining property, against the op itself: each saved slot == a call over the row's first p positions
    for b in range(batch):
        if idx[b] < 0:
            assert torch.equal(c1[sidx[b][sidx[b] >= 0].long()], conv0[sidx[b][sidx[b] >= 0].long()]), \
                "a padding row saves nothing"
            continue
        for p, sv in zip(pos[b].tolist(), sidx[b].tolist()):
            if sv < 0:
                continue
            cs, ss = conv0[idx[b]:idx[b] + 1].clone(), ssm0[idx[b]:idx[b] + 1].clone()
            sl = slice(b, b + 1)
            ops.causal_conv1d(t["x"][sl, :, :p], t["w"], t["cb"], cs, None, None, True, load)
            assert torch.equal(c1[sv], cs[0]), f"conv save row {b} pos {p}"
            ops.selective_scan(t["x"][sl, :, :p], t["dt"][sl, :, :p], t["A"], t["B"][sl, ..., :p],
                               t["C"][sl, ..., :p], t["D"], t["z"][sl, :, :p], t["bias"], ss, None, None, True, load)
            assert torch.equal(s1[sv], ss[0]), f"scan save row {b} pos {p} (same kernel, same order: bitwise)"
    untouched = [s for s in range(nslots) if s not in idx.tolist() and s not in sidx.flatten().tolist()]
    assert torch.equal(s1[untouched], ssm0[untouched]) and torch.equal(c1[untouched], conv0[untouched])


def test_opcheck_with_saves():
    x = torch.randn(2, 8, 5)
    s = torch.randn(5, 8, 4)
    idx = torch.tensor([0, 1], dtype=torch.int32)
    pos = torch.tensor([[2, 5], [1, -1]], dtype=torch.int32)
    sidx = torch.tensor([[2, 3], [4, -1]], dtype=torch.int32)
    torch.library.opcheck(ops.causal_conv1d, (x, torch.randn(8, 4), None, s.clone(), idx, None, True, True, pos, sidx))
    torch.library.opcheck(ops.selective_scan, (x, torch.randn(2, 8, 5), -torch.rand(8, 4), torch.randn(2, 1, 4, 5),
                                               torch.randn(2, 1, 4, 5), None, None, None, s.clone(), idx, None,
                                               True, True, pos, sidx))


def test_bad_saves_raise_and_change_nothing():
    x, w = torch.randn(2, 8, 5), torch.randn(8, 4)
    idx = torch.tensor([0, 1], dtype=torch.int32)
    i32 = lambda v: torch.tensor(v, dtype=torch.int32)  # noqa: E731
    scan_in = (x, torch.randn(2, 8, 5), -torch.rand(8, 4), torch.randn(2, 1, 4, 5), torch.randn(2, 1, 4, 5), None,
               None, None)
    cases = [
        (i32([[2], [3]]), None, "save_pos and save_idx must be given together"),
        (i32([[2], [3]]), i32([[2, 3], [4, 5]]), r"save_idx.shape\[1\]=2, expected 1"),
        (i32([[2], [3]]).long(), i32([[2], [3]]), "save_pos must be int32"),
        (i32([[2], [6]]), i32([[2], [3]]), r"save_pos\[1\]\[0\]=6 outside 1..5"),
        (i32([[0], [3]]), i32([[2], [3]]), r"save_pos\[0\]\[0\]=0 outside 1..5"),
        (i32([[3, 2], [1, 1]]), i32([[2, 3], [4, -1]]), r"save_pos\[0\] is not strictly ascending"),
        (i32([[2], [3]]), i32([[9], [3]]), r"save_idx\[0\]\[0\]=9 >= nslots=5"),
        (i32([[2], [3]]), i32([[1], [3]]), r"save_idx\[0\]\[0\]=1 is the slot of row 1"),
    ]
    for pos, sidx, msg in cases:
        s = torch.randn(5, 8, 4)
        before = s.clone()
        with pytest.raises(ValueError, match=msg):
            ops.causal_conv1d(x, w, None, s, idx, None, True, True, pos, sidx)
        with pytest.raises(ValueError, match=msg):
            ops.selective_scan(*scan_in, s, idx, None, True, True, pos, sidx)
        assert torch.equal(s, before), "a rejected call writes nothing"
    with pytest.raises(ValueError, match="save_pos given without state"):
        ops.causal_conv1d(x, w, None, None, None, None, True, False, i32([[2], [3]]), i32([[2], [3]]))


# ------------------------------------------------------------------------------------------------ CUDA

@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kernel", ["loop", "chunked"])  # chunked: saves take the loop kernel
@pytest.mark.parametrize("chunks", [None, "1", "4", "7"])  # SSMTP_SCAN_CHUNKS: saves in every time chunk
@pytest.mark.parametrize("dname", list(DTYPES))
@pytest.mark.parametrize("shape", [(1, 64, 1000, 16, 1), (3, 96, 300, 16, 2), (2, 40, 200, 64, 1)],
                         ids=["b1-long", "b3-groups", "dstate64"])
def test_saves_cuda_vs_cpu(shape, dname, chunks, kernel, monkeypatch):
    monkeypatch.setenv("SSMTP_SCAN_KERNEL", kernel)
    if chunks is None:
        monkeypatch.delenv("SSMTP_SCAN_CHUNKS", raising=False)
    else:
        monkeypatch.setenv("SSMTP_SCAN_CHUNKS", chunks)
    batch, dim, L, N, G = shape
    dtype, _ = DTYPES[dname]
    t = _inputs(batch, dim, L, N, G, dtype, seed=11)
    idx, lens, _, _, _ = _plan(batch, L)
    # per row: its short/half/last positions and saves on the chunk boundaries (L // k for the forced chunk counts)
    # and next to them, ascending, each into its own slot, a hole (-1) first
    rows = []
    for b in range(batch):
        n = int(lens[b])
        ps = {1, 3, n // 2, n} | {p for k in (4, 7) for p in (L // k - 1, L // k, L // k + 1, 2 * (L // k))}
        rows.append(sorted(p for p in ps if 1 <= p <= n))
    S = 1 + max(len(r) for r in rows)
    pos = torch.zeros(batch, S, dtype=torch.int32)
    sidx = torch.full((batch, S), -1, dtype=torch.int32)
    nslots = batch
    for b, r in enumerate(rows):
        pos[b, 1:1 + len(r)] = torch.tensor(r, dtype=torch.int32)
        sidx[b, 1:1 + len(r)] = torch.arange(nslots, nslots + len(r), dtype=torch.int32)
        nslots += len(r)
    g = torch.Generator().manual_seed(3)
    ssm0, conv0 = torch.randn(nslots, dim, N, generator=g), torch.randn(nslots, dim, 4, generator=g).to(dtype)
    cu = lambda v: None if v is None else v.cuda()  # noqa: E731
    for load in (False, True):
        c_cpu, c_gpu = conv0.clone(), conv0.cuda()
        xc = ops.causal_conv1d(t["x"], t["w"], t["cb"], c_cpu, idx, lens, True, load, pos, sidx)
        xg = ops.causal_conv1d(cu(t["x"]), cu(t["w"]), cu(t["cb"]), c_gpu, cu(idx), cu(lens), True, load, cu(pos),
                               cu(sidx))
        assert torch.equal(c_gpu.cpu(), c_cpu), "conv states (saved and final) are copies: exact"
        # the conv output itself (tests/test_cuda_ops.py's conv tolerances: MUFU SiLU and fmaf vs expf and mul+add)
        catol, crtol = (1e-5, 1e-5) if dtype == torch.float32 else (1e-3, 8e-3)
        torch.testing.assert_close(xg.cpu().float(), xc.float(), atol=catol, rtol=crtol)
        s_cpu, s_gpu = ssm0.clone(), ssm0.cuda()
        names = ("dt", "A", "B", "C", "D", "z", "bias")
        yc = ops.selective_scan(xc, *[t[k] for k in names], s_cpu, idx, lens, True, load, pos, sidx)
        yg = ops.selective_scan(xc.cuda(), *[cu(t[k]) for k in names], s_gpu, cu(idx), cu(lens), True, load,
                                cu(pos), cu(sidx))
        tol = 5e-4 if dtype == torch.float32 else 1.6e-2
        torch.testing.assert_close(yg.cpu().float(), yc.float(), atol=tol, rtol=tol)
        torch.testing.assert_close(s_gpu.cpu(), s_cpu, atol=1e-4, rtol=5e-4)
