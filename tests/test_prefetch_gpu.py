"""ssmtp::l2_prefetch on CUDA and the engine's L2 prefetch plans (SSMTP_DECODE_L2). A prefetch is a hint: it must
change no value, keep the stream order (it is launched with PDL and waits for the kernel before it, so the kernel
after it still sees every earlier write), capture into a CUDA graph, and leave a decode step's logits and states
bitwise as they are without it."""
import pytest
import torch

import ssmtp.ops as ops

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("shape,dtype", [((3,), torch.float32), ((1000, 37), torch.bfloat16),
                                         ((5120, 2560), torch.bfloat16), ((7, 9, 11), torch.int32)])
@pytest.mark.parametrize("part", ["all", "odd", "zero"])
def test_prefetch_changes_nothing(shape, dtype, part):
    x = (torch.randn(shape, device="cuda") * 100).to(dtype)
    before = x.clone()
    nbytes = {"all": -1, "odd": max(0, x.numel() * x.element_size() - 13), "zero": 0}[part]
    ops.l2_prefetch(x, nbytes)
    ops.l2_prefetch(x[1:] if x.dim() > 1 and x.shape[0] > 1 else x)  # an offset (not 16-byte aligned) start
    torch.cuda.synchronize()
    assert torch.equal(x, before)


def test_prefetch_bad_arguments():
    x = torch.zeros(64, 64, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="more than"):
        ops.l2_prefetch(x, x.numel() * 2 + 1)
    with pytest.raises(ValueError, match="contiguous"):
        ops.l2_prefetch(x.t())


def test_prefetch_keeps_stream_order_and_captures():
    """A kernel that writes, a prefetch, a kernel that reads what the first wrote: eagerly and replayed from a graph,
    many times (with PDL on, a prefetch that did not wait would let the reader overtake the writer)."""
    a = torch.randn(1 << 20, device="cuda")
    w = torch.randn(1 << 22, device="cuda", dtype=torch.bfloat16)
    out = torch.empty_like(a)

    def body():
        b = a * 2 + 1  # writer
        ops.l2_prefetch(w)
        ops.l2_prefetch(w, 1 << 20)
        out.copy_(b * 3)  # reader

    for _ in range(3):
        body()
    torch.cuda.synchronize()
    want = (a * 2 + 1) * 3
    assert torch.equal(out, want)
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        body()
    torch.cuda.current_stream().wait_stream(s)
    with torch.cuda.graph(g):
        body()
    for i in range(20):
        a.normal_()
        out.zero_()
        g.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, (a * 2 + 1) * 3), f"replay {i}"


@pytest.mark.parametrize("mode", ["step", "1", "0"])
@pytest.mark.parametrize("batch", [1, 2, 8])
def test_engine_decode_with_l2_plans_is_bitwise_unchanged(monkeypatch, mode, batch):
    """runner.decode with each L2 plan against no plan, from the same slot states, for a few steps, in every decode
    mode (SSMTP_DECODE_FUSED step / 1 / 0): logits and states bitwise equal."""
    import ssmtp.engine.runner as runner_mod
    from ssmtp.engine.runner import MambaRunner, parse_l2_plan
    from ssmtp.engine.state_cache import SlotPool
    from ssmtp.parallel.comm import Communicator
    from tiny_models import build

    model = build("mamba", "odd", torch.bfloat16).cuda()
    runner = MambaRunner.from_hf(model, Communicator(), torch.bfloat16,
                                 torch.device("cuda", torch.cuda.current_device()))
    monkeypatch.setattr(runner_mod, "_DECODE_FUSED", mode)
    plans = ["0", "out", "out,xp", "out,in:0.01", "xp,in:64"]
    pools = {p: SlotPool(runner.state_specs(), batch + 2, torch.device("cuda")) for p in plans}
    g = torch.Generator(device="cuda").manual_seed(5)
    for k, t in pools["0"].tensors.items():
        t.copy_(torch.randn(t.shape, device="cuda", generator=g).to(t.dtype) * 0.5)
        for p in plans[1:]:
            pools[p].tensors[k].copy_(t)
    idx = torch.arange(batch, dtype=torch.int32, device="cuda").flip(0) + 1
    ids = torch.randint(3, 99, (batch,), device="cuda", generator=g)
    for step in range(3):
        logits = {}
        for p in plans:
            runner.l2_plan = parse_l2_plan(p)
            assert (runner._l2(0) is None) == (p == "0")
            logits[p] = runner.decode(ids, None, idx, pools[p])
        for p in plans[1:]:
            assert torch.equal(logits[p], logits["0"]), f"plan {p} step {step}: logits differ"
            for k in pools["0"].tensors:
                assert torch.equal(pools[p].tensors[k], pools["0"].tensors[k]), f"plan {p} step {step}: state {k}"
        ids = logits["0"].argmax(-1)
