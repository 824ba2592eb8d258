"""ssmtp::rms_segments (Falcon-Mamba's weightless RMS norms of dt, B and C in one op): the C CPU op against the
pure-torch reference and the per-norm torch function the mixer used before, its argument checks, the Falcon-Mamba
mixer and engine with it against without it (CPU), and on CUDA the kernel against the CPU op."""
import pytest
import torch

import ssmtp.models.mamba as mamba
import ssmtp.ops as ops
import ssmtp.ref as ref
from ssmtp.engine import LLM
from tiny_models import same_generations

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
TOL = {"f32": 1e-5, "bf16": 1e-2, "f16": 2e-3}  # one rounding of the dtype (sums in another order)
CASES = [(1, [256, 16, 16], 0), (4, [160, 16, 16], 3), (3, [7], 0), (2, [1, 2, 3, 4], 5), (5, [8192], 0)]


def _x(M, D, dtype, seed, row_pad=0):
    g = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(M, D + row_pad, generator=g)).to(dtype)[:, row_pad:]


@pytest.mark.parametrize("dname", list(DTYPES))
@pytest.mark.parametrize("M,lens,row_pad", CASES)
def test_cpu_matches_reference_and_the_per_norm_function(M, lens, row_pad, dname):
    dtype = DTYPES[dname]
    x = _x(M, sum(lens), dtype, seed=M + sum(lens), row_pad=row_pad)
    got = ops.rms_segments(x, lens, 1e-6)
    assert got.dtype == dtype and got.shape == x.shape
    torch.testing.assert_close(got.float(), ref.rms_segments(x, lens, 1e-6).float(), rtol=TOL[dname], atol=TOL[dname])
    before = torch.cat([mamba._rms(p, 1e-6) for p in torch.split(x, lens, dim=-1)], dim=-1)
    torch.testing.assert_close(got.float(), before.float(), rtol=TOL[dname], atol=TOL[dname])


def test_empty_and_bad_input_raise_clear_errors():
    x = _x(2, 12, torch.float32, seed=1)
    assert ops.rms_segments(x[:0], [4, 8], 1e-6).shape == (0, 12)
    with pytest.raises(ValueError, match=r"rms_segments: the segments cover 11 elements, x has D=12"):
        ops.rms_segments(x, [4, 7], 1e-6)
    with pytest.raises(ValueError, match=r"rms_segments: segment 1 has 0 elements, expected 1..12"):
        ops.rms_segments(x, [12, 0], 1e-6)
    with pytest.raises(ValueError, match=r"rms_segments: 5 segments, supported 1..4"):
        ops.rms_segments(x, [2, 2, 2, 2, 4], 1e-6)
    with pytest.raises(ValueError, match=r"rms_segments: 0 segments"):
        ops.rms_segments(x, [], 1e-6)
    with pytest.raises(ValueError, match=r"rms_segments: eps=-1 must be finite and >= 0"):
        ops.rms_segments(x, [12], -1.0)
    with pytest.raises(ValueError, match=r"rms_segments: x"):
        ops.rms_segments(torch.randn(12, 2).t(), [12], 1e-6)  # elements of a row not contiguous


def test_opcheck():
    torch.library.opcheck(ops.rms_segments, (_x(3, 24, torch.float32, seed=2), [8, 8, 8], 1e-6))


@pytest.mark.usefixtures("one_thread")
def test_falcon_engine_with_the_op_equals_without(monkeypatch):
    """Falcon-Mamba prefill and decode (tiny-falcon preset, fp32, CPU) with the three norms as one op against the
    torch functions per norm: the same greedy tokens, logits within fp32 summation order."""
    prompts = [[5, 6, 7], list(range(10, 31)), [9] * 12]
    outs = {}
    for on in (False, True):
        monkeypatch.setattr(mamba, "RMS_SEGMENTS", on)
        llm = LLM("tiny-falcon", num_slots=4, max_model_len=64, progress=False)
        outs[on] = llm.generate(prompts, max_new_tokens=6, ignore_eos=True, return_logits=True)
    same_generations(outs[False], outs[True], 1e-5)


def test_bad_switch_value_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("SSMTP_RMS_SEGMENTS", "on")
    with pytest.raises(ValueError, match=r"SSMTP_RMS_SEGMENTS='on': expected 1"):
        mamba._rms_segments_switch()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dname", list(DTYPES))
@pytest.mark.parametrize("M,lens,row_pad", CASES + [(64, [256, 16, 16], 0), (300, [160, 16, 16], 0)])
def test_cuda_matches_cpu(M, lens, row_pad, dname):
    dtype = DTYPES[dname]
    x = _x(M, sum(lens), dtype, seed=M + sum(lens), row_pad=row_pad)
    want = ops.rms_segments(x, lens, 1e-6)
    xc = torch.zeros(M, sum(lens) + row_pad, dtype=dtype, device="cuda")[:, row_pad:]
    xc.copy_(x)
    got = ops.rms_segments(xc, lens, 1e-6)
    torch.cuda.synchronize()
    torch.testing.assert_close(got.float().cpu(), want.float(), rtol=TOL[dname], atol=TOL[dname])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_segment_limit_and_graph_capture():
    big = torch.randn(2, 8200, device="cuda")
    with pytest.raises(NotImplementedError, match=r"rms_segments: 2 rows with a 8200-element segment on CUDA"):
        ops.rms_segments(big, [8200], 1e-6)
    x = _x(4, 288, torch.bfloat16, seed=3).cuda()
    want = ops.rms_segments(x, [256, 16, 16], 1e-6)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        got = ops.rms_segments(x, [256, 16, 16], 1e-6)
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(got, want)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_falcon_engine_with_the_op_equals_without(monkeypatch):
    """The same on CUDA with graphs (fp32: no near ties from bf16 roundings), decode batches 1, 3 and 4."""
    prompts = [[5, 6, 7], list(range(10, 31)), [9] * 12, list(range(40, 45))]
    outs = {}
    for on in (False, True):
        monkeypatch.setattr(mamba, "RMS_SEGMENTS", on)
        llm = LLM("tiny-falcon", device="cuda", dtype=torch.float32, cuda_graphs=True, max_batch=4, progress=False)
        outs[on] = [llm.generate(prompts[:n], max_new_tokens=6, ignore_eos=True, return_logits=True) for n in (1, 3, 4)]
    for run0, run1 in zip(outs[False], outs[True]):
        same_generations(run0, run1, 1e-4)
