"""ssmtp::add_rms_norm (a Mamba block's input in the decode step: residual add in fp32 + RMSNorm): the C CPU op
against the pure-torch reference and the engine's torch.compile'd functions it replaces, its argument checks, the
engine's decode with it against without it (CPU), and on CUDA the kernel against the CPU op."""
import pytest
import torch

import ssmtp.engine.runner as runner
import ssmtp.ops as ops
import ssmtp.ref as ref
from ssmtp.engine import LLM
from tiny_models import same_generations

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
# the CPU op sums v^2 sequentially in fp32, torch by pairs: the norm may differ by one rounding of the dtype
TOL = {"f32": 1e-5, "bf16": 1e-2, "f16": 2e-3}


def _inputs(M, H, dtype, res_fp32, seed, row_pad=0):
    g = torch.Generator().manual_seed(seed)
    res = (3 * torch.randn(M, H + row_pad, generator=g)).to(torch.float32 if res_fp32 else dtype)[:, :H]
    add = torch.randn(M, H + row_pad, generator=g).to(dtype)[:, row_pad:]
    w = (1 + 0.3 * torch.randn(H, generator=g)).to(dtype)
    return res, add, w


@pytest.mark.parametrize("res_fp32", [True, False], ids=["res-f32", "res-T"])
@pytest.mark.parametrize("with_add", [True, False], ids=["add", "no-add"])
@pytest.mark.parametrize("dname", list(DTYPES))
@pytest.mark.parametrize("M,H,row_pad", [(1, 64, 0), (3, 48, 5), (8, 2560, 8), (2, 7, 3)])
def test_cpu_matches_reference_and_the_engine_functions(M, H, row_pad, dname, with_add, res_fp32):
    dtype = DTYPES[dname]
    res, add, w = _inputs(M, H, dtype, res_fp32, seed=M * 100 + H, row_pad=row_pad)
    add = add if with_add else None
    r, h = ops.add_rms_norm(res, add, w, 1e-5, res_fp32)
    wr, wh = ref.add_rms_norm(res, add, w, 1e-5, res_fp32)
    assert r.dtype == (torch.float32 if res_fp32 else dtype) and h.dtype == dtype and h.shape == (M, H)
    torch.testing.assert_close(r, wr, rtol=0, atol=0)  # one fp32 add, stored: exact
    torch.testing.assert_close(h.float(), wh.float(), rtol=TOL[dname], atol=TOL[dname])
    # what the runner computed before (add_block_norm / block_norm, uncompiled here)
    if with_add:
        er, eh = runner.add_block_norm(res, add, w, 1e-5, dtype, res_fp32)
    else:
        er, eh = res.float() if res_fp32 else res, runner.block_norm(res, w, 1e-5, dtype)
    torch.testing.assert_close(r, er.to(r.dtype), rtol=0, atol=0)
    torch.testing.assert_close(h.float(), eh.float(), rtol=TOL[dname], atol=TOL[dname])


def test_empty_and_bad_input_raise_clear_errors():
    res, add, w = _inputs(2, 16, torch.bfloat16, True, seed=1)
    r, h = ops.add_rms_norm(res[:0], add[:0], w, 1e-5, True)
    assert r.shape == h.shape == (0, 16)
    with pytest.raises(ValueError, match=r"add_rms_norm: eps=-1 must be finite and >= 0"):
        ops.add_rms_norm(res, add, w, -1.0, True)
    with pytest.raises(ValueError, match=r"add_rms_norm: eps=inf must be finite"):
        ops.add_rms_norm(res, add, w, float("inf"), True)
    with pytest.raises(ValueError, match=r"add_rms_norm: res.shape\[1\]=16, expected 15"):
        ops.add_rms_norm(res, add, w[:15], 1e-5, True)
    with pytest.raises(ValueError, match=r"add_rms_norm: add.shape\[0\]=1, expected 2"):
        ops.add_rms_norm(res, add[:1], w, 1e-5, True)
    with pytest.raises(ValueError, match=r"add_rms_norm: add must be bfloat16, got float32"):
        ops.add_rms_norm(res, add.float(), w, 1e-5, True)
    with pytest.raises(ValueError, match=r"add_rms_norm: res must be float32 or bfloat16 \(the dtype of norm_w\), "
                                         r"got float16"):
        ops.add_rms_norm(res.half(), add, w, 1e-5, True)
    with pytest.raises(ValueError, match=r"add_rms_norm: res must be \(M, H\)"):
        ops.add_rms_norm(res[0], None, w, 1e-5, True)
    sq = torch.randn(16, 16)
    with pytest.raises(ValueError, match=r"add_rms_norm: res"):
        ops.add_rms_norm(sq.t(), None, torch.randn(16), 1e-5, True)  # elements of a row not contiguous


def test_opcheck():
    res, add, w = _inputs(3, 32, torch.float32, True, seed=2)
    torch.library.opcheck(ops.add_rms_norm, (res, add, w, 1e-5, True))
    torch.library.opcheck(ops.add_rms_norm, (res, None, w, 1e-5, False))


@pytest.mark.usefixtures("one_thread")
def test_engine_decode_with_the_op_equals_without(monkeypatch):
    """The runner's decode path through ops.add_rms_norm (SSMTP_DECODE_NORM=1 takes it on a CPU) gives the greedy
    tokens and logits of the torch.compile'd glue, for a batch of prompts of different lengths."""
    prompts = [[5, 6, 7], list(range(10, 31)), [9] * 12, list(range(40, 45))]
    outs = {}
    for mode in ("0", "1"):
        monkeypatch.setattr(runner, "DECODE_NORM", mode)
        llm = LLM("tiny", num_slots=4, max_model_len=64, progress=False)
        assert llm.runner.decode_norm_applies(4) == (mode == "1")
        outs[mode] = llm.generate(prompts, max_new_tokens=6, ignore_eos=True, return_logits=True)
    same_generations(outs["0"], outs["1"], 1e-5)


def test_bad_switch_value_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("SSMTP_DECODE_NORM", "yes")
    with pytest.raises(ValueError, match=r"SSMTP_DECODE_NORM='yes': expected auto"):
        runner._decode_norm_switch()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("res_fp32", [True, False], ids=["res-f32", "res-T"])
@pytest.mark.parametrize("with_add", [True, False], ids=["add", "no-add"])
@pytest.mark.parametrize("dname", list(DTYPES))
@pytest.mark.parametrize("M,H,row_pad", [(8, 2560, 0), (3, 4096, 16), (64, 3712, 0), (1, 8192, 0), (5, 37, 3),
                                         (2, 1025, 0)])
def test_cuda_matches_cpu(M, H, row_pad, dname, with_add, res_fp32):
    """mamba-2.8b / falcon-mamba-7b / zamba-7b widths, the largest the kernel takes and odd ones; rows strided."""
    dtype = DTYPES[dname]
    res, add, w = _inputs(M, H, dtype, res_fp32, seed=M + H, row_pad=row_pad)
    add = add if with_add else None
    wr, wh = ops.add_rms_norm(res, add, w, 1e-5, res_fp32)
    rc = torch.zeros(M, H + row_pad, dtype=res.dtype, device="cuda")[:, :H]
    rc.copy_(res)
    ac = None
    if add is not None:
        ac = torch.zeros(M, H + row_pad, dtype=dtype, device="cuda")[:, row_pad:]
        ac.copy_(add)
    r, h = ops.add_rms_norm(rc, ac, w.cuda(), 1e-5, res_fp32)
    torch.cuda.synchronize()
    torch.testing.assert_close(r.cpu(), wr, rtol=0, atol=0)
    torch.testing.assert_close(h.float().cpu(), wh.float(), rtol=TOL[dname], atol=TOL[dname])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_width_limit_and_graph_capture():
    big = torch.randn(2, ops.ADD_NORM_CUDA_MAX_H + 8, device="cuda")
    with pytest.raises(NotImplementedError, match=r"add_rms_norm: 2 rows of 8200 elements on CUDA"):
        ops.add_rms_norm(big, None, big[0], 1e-5, True)
    res, add, w = (t.cuda() for t in _inputs(4, 2560, torch.bfloat16, True, seed=3))
    want = ops.add_rms_norm(res, add, w, 1e-5, True)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        got = ops.add_rms_norm(res, add, w, 1e-5, True)
    g.replay()
    torch.cuda.synchronize()
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_engine_decode_with_the_op_equals_without(monkeypatch):
    """The decode step with ops.add_rms_norm (forced: SSMTP_DECODE_NORM=1) against the compiled glue, fp32 (no near
    ties from bf16 roundings), CUDA graphs on, batch 4 and 3 (below, ops.mamba_decode_in takes the norm): the same
    greedy tokens, logits within fp32 summation order."""
    prompts = [[5, 6, 7], list(range(10, 31)), [9] * 12, list(range(40, 45))]
    outs = {}
    for mode in ("0", "1"):
        monkeypatch.setattr(runner, "DECODE_NORM", mode)
        llm = LLM("tiny", device="cuda", dtype=torch.float32, cuda_graphs=True, max_batch=4, progress=False)
        outs[mode] = [llm.generate(prompts[:n], max_new_tokens=6, ignore_eos=True, return_logits=True)
                      for n in (4, 3)]
    for run0, run1 in zip(outs["0"], outs["1"]):
        same_generations(run0, run1, 1e-4)


def test_auto_rule_follows_in_proj_kernels(monkeypatch):
    """SSMTP_DECODE_NORM=auto on CUDA: the op exactly where every mixer's in_proj of that batch goes to ssmtp's own
    GEMM kernels (ops.linear_small_applies, here a stand-in deciding by rows), decided once per batch size; never for
    norms of another dtype or rows wider than the CUDA kernel takes. A stand-in runner with a CUDA-like embedding."""
    from types import SimpleNamespace

    class Embed:
        is_cuda = True

        def __init__(self, H):
            self.shape = (512, H)

        def new_empty(self, *shape):
            return torch.empty(*shape)

    asked = []

    def takes(x, w):
        asked.append(x.shape[0])
        return x.shape[0] <= 16 and w.shape[0] <= 10240

    monkeypatch.setattr(ops, "linear_small_applies", takes)
    monkeypatch.setattr(runner, "DECODE_NORM", "auto")
    mixers = [SimpleNamespace(in_proj_weight=torch.empty(10240, 8)) for _ in range(2)]
    r = SimpleNamespace(embed=Embed(2560), norms=[torch.empty(2560, dtype=torch.bfloat16)], dtype=torch.bfloat16,
                        mixers=mixers, _decode_norm_ok={})
    rule = runner.MambaRunner.decode_norm_applies
    assert [rule(r, b) for b in (3, 8, 16, 32, 64)] == [True, True, True, False, False]
    n = len(asked)
    assert rule(r, 8) and rule(r, 64) is False and len(asked) == n  # cached per batch size
    wide = SimpleNamespace(**{**vars(r), "mixers": mixers + [SimpleNamespace(in_proj_weight=torch.empty(16384, 8))],
                              "_decode_norm_ok": {}})
    assert not rule(wide, 4)  # one in_proj on cuBLAS: the compiled kernel for all
    assert not rule(SimpleNamespace(**{**vars(r), "embed": Embed(ops.ADD_NORM_CUDA_MAX_H + 8), "_decode_norm_ok": {}}),
                    4)
    assert not rule(SimpleNamespace(**{**vars(r), "norms": [torch.empty(2560)], "_decode_norm_ok": {}}), 4)
    monkeypatch.setattr(runner, "DECODE_NORM", "0")
    assert not rule(SimpleNamespace(**{**vars(r), "_decode_norm_ok": {}}), 4)
    monkeypatch.setattr(runner, "DECODE_NORM", "1")
    assert rule(SimpleNamespace(**{**vars(r), "_decode_norm_ok": {}}), 64)


def test_compiled_glue_past_dynamos_recompile_limit_keeps_its_compiled_variants():
    """A glue function compiled by the engine (_Fused, fullgraph) called with more variants than dynamo compiles
    (its recompile limit, 8 by default; here inputs of 1..10 dimensions, each a recompile): the variants past the
    limit run the plain function, the others stay compiled - each variant gives the same bits every call (falling
    back for good switched numerics mid-run)."""
    from ssmtp.engine.runner import _Fused

    def glue(x, w, eps):  # a fresh function: its own dynamo cache
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    k = _Fused(glue, True)
    if k.compiled is None:
        pytest.skip("torch.compile unavailable here")
    w = torch.randn(8)
    xs = [torch.randn(*([2] * i), 8) for i in range(10)]
    first = [k(x, w, 1e-6) for x in xs]
    assert k.compiled is not None, "fell back to the plain function for good"
    assert k.limit_hit, "expected dynamo's recompile limit to be reached (it is 8 by default)"
    for x, a in zip(xs, first):
        torch.testing.assert_close(a, glue(x, w, 1e-6))
        assert torch.equal(k(x, w, 1e-6), a), f"a {x.dim()}-d input changed its result on a second call"
