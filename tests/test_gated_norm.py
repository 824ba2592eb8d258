"""ssmtp::gated_norm (the gated RMSNorm over groups of channels of Mamba-2 / Zamba2 decode): the C CPU op against the
pure-torch reference (HF's RMSNormGated formula), its argument checks, and on CUDA the kernel against the CPU op."""
import pytest
import torch

import ssmtp.ops as ops
import ssmtp.ref as ref
from ssmtp.models.zamba2 import gated_rms_norm

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
# one rounding of the dtype: the CPU op sums v^2 sequentially in fp32, torch by pairs
TOL = {"f32": 1e-5, "bf16": 1e-2, "f16": 2e-3}


def _inputs(M, D, dtype, seed, row_pad=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(M, D + row_pad, generator=g).to(dtype)[:, :D]  # rows contiguous, row stride D + row_pad
    gate = torch.randn(M, D + row_pad, generator=g).to(dtype)[:, row_pad:]
    w = (1 + 0.3 * torch.randn(D, generator=g)).to(dtype)
    return y, gate, w


@pytest.mark.parametrize("dname", list(DTYPES))
@pytest.mark.parametrize("M,D,group,row_pad", [(1, 64, 64, 0), (3, 48, 16, 5), (2, 40, 8, 0), (1, 7, 1, 3),
                                               (4, 5120, 5120, 8)])
def test_cpu_matches_reference_and_zamba2_function(M, D, group, row_pad, dname):
    dtype = DTYPES[dname]
    y, gate, w = _inputs(M, D, dtype, seed=M * 1000 + D + group, row_pad=row_pad)
    got = ops.gated_norm(y, gate, w, group, 1e-5)
    want = ref.gated_norm(y, gate, w, group, 1e-5)
    assert got.dtype == dtype and got.shape == (M, D)
    torch.testing.assert_close(got.float(), want.float(), rtol=TOL[dname], atol=TOL[dname])
    # the function the Zamba2 mixer used before (and still uses for prefill): the same formula
    z2 = gated_rms_norm(y[:, None], gate[:, None], w, group, 1e-5)[:, 0]
    torch.testing.assert_close(got.float(), z2.float(), rtol=TOL[dname], atol=TOL[dname])


def test_empty_and_bad_input_raise_clear_errors():
    y, gate, w = _inputs(2, 16, torch.float32, seed=1)
    assert ops.gated_norm(y[:0], gate[:0], w, 8, 1e-5).shape == (0, 16)
    with pytest.raises(ValueError, match=r"gated_norm: group=5 does not divide D=16"):
        ops.gated_norm(y, gate, w, 5, 1e-5)
    with pytest.raises(ValueError, match=r"gated_norm: group=0 does not divide D=16"):
        ops.gated_norm(y, gate, w, 0, 1e-5)
    with pytest.raises(ValueError, match=r"gated_norm: eps=-1 must be finite and >= 0"):
        ops.gated_norm(y, gate, w, 8, -1.0)
    with pytest.raises(ValueError, match=r"gated_norm: gate.shape\[1\]=15, expected 16"):
        ops.gated_norm(y, gate[:, :15], w, 8, 1e-5)
    with pytest.raises(ValueError, match=r"gated_norm: weight must be float32, got bfloat16"):
        ops.gated_norm(y, gate, w.bfloat16(), 8, 1e-5)
    sq = torch.randn(16, 16)
    with pytest.raises(ValueError, match=r"gated_norm: y"):
        ops.gated_norm(sq.t(), sq, torch.randn(16), 8, 1e-5)  # channels of y not contiguous


def test_opcheck():
    y, gate, w = _inputs(3, 32, torch.float32, seed=2)
    torch.library.opcheck(ops.gated_norm, (y, gate, w, 16, 1e-5))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dname", list(DTYPES))
@pytest.mark.parametrize("M,D,group,row_pad", [(1, 5120, 5120, 80), (2, 2560, 2560, 40), (8, 5120, 5120, 0),
                                               (3, 48, 16, 5), (1, 7, 1, 3), (2, 600, 300, 0)])
def test_cuda_matches_cpu(M, D, group, row_pad, dname):
    """Zamba2-2.7b's decode shapes (one group of 5120 channels at TP=1, gate a view of [gate | dt] rows) and odd ones;
    the output is pre-allocated by the op, every element compared."""
    dtype = DTYPES[dname]
    y, gate, w = _inputs(M, D, dtype, seed=M + D + group, row_pad=row_pad)
    want = ops.gated_norm(y, gate, w, group, 1e-5)
    yc = torch.zeros(M, D + row_pad, dtype=dtype, device="cuda")[:, :D]
    gc = torch.zeros(M, D + row_pad, dtype=dtype, device="cuda")[:, row_pad:]
    yc.copy_(y)
    gc.copy_(gate)
    got = ops.gated_norm(yc, gc, w.cuda(), group, 1e-5)
    torch.cuda.synchronize()
    assert not torch.isnan(got).any()
    torch.testing.assert_close(got.float().cpu(), want.float(), rtol=TOL[dname], atol=TOL[dname])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_group_limit():
    y = torch.randn(1, ops.GATED_NORM_CUDA_MAX_GROUP + 8, device="cuda")
    with pytest.raises(NotImplementedError, match="gated_norm: 1 blocks of groups of 8200 channels on CUDA"):
        ops.gated_norm(y, y, y[0], y.shape[1], 1e-5)
    ok = ops.gated_norm(y[:, :8192], y[:, :8192], y[0, :8192], 8192, 1e-5)
    torch.testing.assert_close(ok.cpu(), ops.gated_norm(*(t.cpu() for t in (y[:, :8192], y[:, :8192], y[0, :8192])),
                                                        8192, 1e-5), rtol=1e-5, atol=1e-5)
