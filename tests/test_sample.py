"""ssmtp::sample (csrc/sample.c, csrc/cuda/sample.cu) against its pure-torch twin ssmtp.ref.sample, its edge cases
(NaN, infinities, ties at the top-k value, strided inputs, bad arguments), and on the GPU against the C CPU op."""
import pytest
import torch

import ssmtp.ops as ops
from ssmtp import ref

DT = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def _params(n, g, V):
    """Mixed per-row settings: greedy, plain temperature, top-k (including k >= V, k = 1), top-p, both."""
    T = torch.tensor([0.0, 1.0, 0.7, 1.3, 2.0, 0.5, 1.0, 1e-3, 50.0, 1.0, 0.9, 1.0])[torch.arange(n) % 12]
    k = torch.tensor([0, 0, 0, 5, 50, 0, 1, 0, 3, V, V - 1, 20])[torch.arange(n) % 12].long()
    p = torch.tensor([1.0, 1.0, 0.9, 1.0, 0.95, 0.5, 1.0, 0.3, 1.0, 0.99, 1e-6, 0.8])[torch.arange(n) % 12]
    seed = torch.randint(-2**62, 2**62, (n,), generator=g)
    step = torch.randint(0, 1000, (n,), generator=g)
    return T, k, p, seed, step


@pytest.mark.parametrize("dname", list(DT))
@pytest.mark.parametrize("V", [1, 2, 7, 50, 1000, 5003])
def test_sample_matches_ref(V, dname):
    g = torch.Generator().manual_seed(V)
    n = 24
    logits = (torch.randn(n, V, generator=g) * 3).to(DT[dname])
    a = (logits, *_params(n, g, V))
    assert torch.equal(ops.sample(*a), ref.sample(*a))


def test_sample_greedy_rows_are_argmax_and_top_k_1_is_greedy():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(16, 300, generator=g)
    one = lambda v, dt=torch.float32: torch.full((16,), v, dtype=dt)  # noqa: E731
    steps = torch.arange(16)
    greedy = logits.argmax(-1)
    assert torch.equal(ops.sample(logits, one(0.0), one(0, torch.long), one(1.0), steps, steps), greedy)
    assert torch.equal(ops.sample(logits, one(1.0), one(1, torch.long), one(1.0), steps, steps), greedy)
    assert torch.equal(ops.sample(logits, one(1.0), one(0, torch.long), one(1e-6), steps, steps), greedy)
    # a random row differs from greedy for some step, so the noise is there
    r = ops.sample(logits, one(5.0), one(0, torch.long), one(1.0), steps, steps)
    assert not torch.equal(r, greedy)


def test_sample_non_finite_logits():
    nan, inf = float("nan"), float("inf")
    rows = torch.tensor([
        [nan, 1.0, 3.0, nan, 3.0],      # NaN never chosen; greedy: first of the tied maxima
        [nan, nan, nan, nan, nan],      # nothing above -inf: 0
        [-inf, -inf, -inf, -inf, -inf],
        [1.0, inf, 2.0, inf, nan],      # +inf: the first +inf (greedy, even at T > 0)
        [-inf, 2.0, nan, -inf, 1.0],
    ])
    n = rows.shape[0]
    for T in (0.0, 1.0):
        args = (rows, torch.full((n,), T), torch.full((n,), 2, dtype=torch.long), torch.full((n,), 0.9),
                torch.arange(n), torch.zeros(n, dtype=torch.long))
        got = ops.sample(*args)
        assert torch.equal(got, ref.sample(*args))
        assert got[1] == 0 and got[2] == 0 and got[3] == 1
        assert got[0] in (2, 4) and got[4] in (1, 4)
        if T == 0:
            assert got[0] == 2 and got[4] == 1


def test_sample_top_k_keeps_ties_and_top_p_is_relative_to_top_k():
    # top-k 2 over [3, 2, 2, 2, 1]: the three tokens tied at the 2nd value stay, token 4 never appears
    row = torch.tensor([[3.0, 2.0, 2.0, 2.0, 1.0]]).repeat(2000, 1)
    n = row.shape[0]
    one = lambda v, dt=torch.float32: torch.full((n,), v, dtype=dt)  # noqa: E731
    tok = ops.sample(row, one(1.0), one(2, torch.long), one(1.0), one(9, torch.long), torch.arange(n))
    assert set(tok.tolist()) == {0, 1, 2, 3}
    # top-k 2 then top-p 0.5 of the renormalised pair [3, 2.5]: p(0) = 0.62 >= 0.5, so only token 0
    pair = torch.tensor([[3.0, 2.5, 2.4, 0.0]]).repeat(n, 1)
    tok = ops.sample(pair, one(1.0), one(2, torch.long), one(0.5), one(9, torch.long), torch.arange(n))
    assert set(tok.tolist()) == {0}
    # without top-k, top-p 0.5 over all four: p(0) = 0.44 < 0.5, so tokens 0 and 1
    tok = ops.sample(pair, one(1.0), one(0, torch.long), one(0.5), one(9, torch.long), torch.arange(n))
    assert set(tok.tolist()) == {0, 1}


def test_sample_distribution_follows_softmax():
    small = torch.tensor([[0.0, 1.0, 2.0, -1.0, 0.5, 1.5]]).repeat(6000, 1)
    n, T = small.shape[0], 0.8
    one = lambda v, dt=torch.float32: torch.full((n,), v, dtype=dt)  # noqa: E731
    tok = ops.sample(small, one(T), one(0, torch.long), one(1.0), one(3, torch.long), torch.arange(n))
    freq = torch.bincount(tok, minlength=6).float() / n
    assert (freq - torch.softmax(small[0] / T, -1)).abs().max() < 0.025


def test_sample_strided_inputs():
    g = torch.Generator().manual_seed(2)
    big = torch.randn(10, 400, generator=g)
    logits = big[::2, 50:350]  # row stride 800, last dim contiguous
    n, V = logits.shape
    T, k, p, seed, step = _params(n, g, V)
    wide = torch.stack([T, T])  # (2, n): row 0 viewed with stride 1, column views with stride n
    a = (logits, wide.t()[:, 0], k, p, seed, step)
    assert torch.equal(ops.sample(*a), ref.sample(logits.contiguous(), T, k, p, seed, step))


@pytest.mark.parametrize("bad,match", [
    (dict(top_k=torch.zeros(4, dtype=torch.int32)), "top_k must be int64"),
    (dict(temperature=torch.zeros(3)), r"temperature.shape\[0\]=3, expected 4"),
    (dict(logits=torch.zeros(4, 0)), "no columns"),
    (dict(logits=torch.zeros(8, 4).t()), "logits"),
    (dict(seed=torch.zeros(4)), "seed must be int64"),
])
def test_sample_bad_arguments(bad, match):
    kw = dict(logits=torch.zeros(4, 8), temperature=torch.ones(4), top_k=torch.zeros(4, dtype=torch.long),
              top_p=torch.ones(4), seed=torch.zeros(4, dtype=torch.long), step=torch.zeros(4, dtype=torch.long))
    kw.update(bad)
    with pytest.raises((ValueError, RuntimeError), match=match):
        ops.sample(**kw)


@pytest.mark.parametrize("dname", list(DT))
@pytest.mark.parametrize("V", [1, 2, 7, 1000, 5003])
def test_argmax_is_the_greedy_rule(V, dname):
    """ops.argmax = sample's greedy rows = torch.argmax with NaN never chosen (0 for a row of NaN / -inf)."""
    g = torch.Generator().manual_seed(V + 1)
    n = 6
    logits = (torch.randn(n, V, generator=g) * 3).to(DT[dname])
    if V > 10:
        logits[1, 3] = logits[1, 8] = logits[1].max() + 1  # a tie: the first index
        logits[2, 4] = float("nan")
    got = ops.argmax(logits)
    want = ref.argmax(logits)
    assert torch.equal(got, want)
    zeros = torch.zeros(n, dtype=torch.long)
    assert torch.equal(got, ops.sample(logits, zeros.float(), zeros, torch.ones(n), zeros, zeros))


def test_argmax_non_finite_strided_and_bad_arguments():
    nan, inf = float("nan"), float("inf")
    rows = torch.tensor([[nan, 1.0, 3.0, nan, 3.0], [nan] * 5, [-inf] * 5, [1.0, inf, 2.0, inf, nan],
                         [-inf, 2.0, nan, -inf, 1.0]])
    assert ops.argmax(rows).tolist() == [2, 0, 0, 1, 1]
    big = torch.randn(4, 3, 700)
    assert torch.equal(ops.argmax(big[:, 1, 50:650]), big[:, 1, 50:650].argmax(-1))  # rows 2100 apart
    assert ops.argmax(torch.zeros(0, 5)).shape == (0,)
    with pytest.raises(ValueError, match="no columns"):
        ops.argmax(torch.zeros(3, 0))
    with pytest.raises(ValueError, match="contiguous in its last dim"):
        ops.argmax(torch.zeros(8, 4).t())
    with pytest.raises(NotImplementedError, match="int64"):
        ops.argmax(torch.zeros(2, 4, dtype=torch.int64))
    torch.library.opcheck(ops.argmax, (torch.randn(3, 50),))


# ------------------------------------------------------------------------------------------------ GPU


@pytest.mark.cuda
@pytest.mark.parametrize("dname", list(DT))
@pytest.mark.parametrize("n,V", [(1, 7), (1, 50280), (3, 50280), (8, 65024), (20, 4099), (300, 32000), (2, 1)])
def test_argmax_cuda_vs_cpu(n, V, dname):
    """Cluster sizes 8 (few rows) down to 1 (300 rows); ties across the blocks' slices, NaN, a row of -inf."""
    g = torch.Generator().manual_seed(n * V)
    logits = (torch.randn(n, V, generator=g) * 3).to(DT[dname])
    if V > 10:
        logits[0, 5] = logits[0, V - 2] = logits[0].max() + 1  # a tie in different blocks' slices
        logits[0, :3] = float("nan")
    if n > 1:
        logits[-1] = float("-inf")
    want = ops.argmax(logits)
    x = logits.cuda()
    assert torch.equal(ops.argmax(x).cpu(), want)


@pytest.mark.cuda
def test_argmax_cuda_graph_after_a_pdl_writer():
    """Replayed from a CUDA graph right after the kernel that writes its logits (launched with PDL): the logits read
    must be the ones just written, every replay."""
    n, V = 3, 50280
    w = torch.randn(V, 64, device="cuda")
    h = torch.randn(n, 64, device="cuda")
    out = torch.empty(n, dtype=torch.long, device="cuda")

    def body():
        out.copy_(ops.argmax(ops.linear_small(h, w, None)))

    from graph_capture import capture

    gr, _ = capture(body)
    for _ in range(3):
        h.normal_()
        gr.replay()
        torch.cuda.synchronize()
        assert torch.equal(out.cpu(), ops.argmax(ops.linear_small(h, w, None).cpu()))


@pytest.mark.cuda
@pytest.mark.parametrize("dname", list(DT))
@pytest.mark.parametrize("n,V", [(1, 7), (24, 1000), (24, 50280), (12, 65024), (300, 4099)])
def test_sample_cuda_vs_cpu(n, V, dname):
    """50280 entries: the row sits in shared memory; 65024 (falcon-mamba): it is read from global memory. Rows with
    top-k 50 compact their candidates during the top-k search, rows with a small top-p during the top-p search."""
    g = torch.Generator().manual_seed(n + V)
    logits = (torch.randn(n, V, generator=g) * 3).to(DT[dname])
    if V > 10:
        logits[0, 5] = logits[0, 9] = logits[0].max()  # a greedy tie (row 0 is greedy)
    logits[0, :3] = float("nan")
    a = (logits, *_params(n, g, V))
    cpu = ops.sample(*a)
    out = ops.sample(*(t.cuda() for t in a))
    assert torch.equal(out.cpu(), cpu)
    assert torch.equal(ops.sample(*(t.cuda() for t in a)), out), "run to run"


@pytest.mark.cuda
@pytest.mark.parametrize("cluster", ["1", "2", "4", "8"])
@pytest.mark.parametrize("n,V", [(3, 50280), (2, 65024), (5, 13)])
def test_sample_cuda_cluster_sizes(n, V, cluster, monkeypatch):
    """Blocks per row forced (the launcher picks by batch size): each slice layout gives the CPU op's tokens."""
    monkeypatch.setenv("SSMTP_SAMPLE_CLUSTER", cluster)
    g = torch.Generator().manual_seed(V)
    logits = torch.randn(n * 12, V, generator=g) * 3
    a = (logits, *_params(n * 12, g, V))
    assert torch.equal(ops.sample(*(t.cuda() for t in a)).cpu(), ops.sample(*a))


@pytest.mark.cuda
def test_sample_cuda_cluster_knob_rejects_unknown(monkeypatch):
    monkeypatch.setenv("SSMTP_SAMPLE_CLUSTER", "3")
    x = torch.zeros(2, 10, device="cuda")
    z = torch.zeros(2, dtype=torch.long, device="cuda")
    with pytest.raises((ValueError, RuntimeError), match="SSMTP_SAMPLE_CLUSTER=3"):
        ops.sample(x, torch.ones(2, device="cuda"), z, torch.ones(2, device="cuda"), z, z)


@pytest.mark.cuda
def test_sample_cuda_graph_capture():
    g = torch.Generator().manual_seed(5)
    n, V = 8, 3000
    logits = torch.randn(n, V, generator=g).cuda()
    T, k, p, seed, step = (t.cuda() for t in _params(n, g, V))
    want = ops.sample(logits, T, k, p, seed, step)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        ops.sample(logits, T, k, p, seed, step)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ops.sample(logits, T, k, p, seed, step)
    graph.replay()
    assert torch.equal(out, want)
    step += 1
    graph.replay()
    assert torch.equal(out, ops.sample(logits, T, k, p, seed, step))
