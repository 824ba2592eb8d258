"""Block-scaled quantized all-reduce: argument checks, the single-process oracle, and the gather-based implementation
that runs over any torch.distributed backend (gloo on CPU for CI; NCCL on GPUs without P2P).

Semantics (shared with the P2P kernels in csrc/cuda/allreduce.cu, defined by ssmtp::quantize_blocks /
ssmtp::dequantize_blocks):

    out = dequantize(quantize(sum_r fp32(dequantize(quantize(x_r)))))        sum in rank order 0..N-1, fp32

Each rank's payload is quantized once (int8 or fp8-e4m3, one fp32 scale per ``block`` elements counted from element 0
of the flattened message), the fp32 sum is requantized once (what a two-shot all-reduce sends in its second shot),
and every rank ends with the same bits. All-zero blocks stay exactly zero; a block that holds Inf/NaN on any rank
becomes NaN in that block only.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch
import torch.distributed as dist

from .. import ops

QDTYPES = ("int8", "fp8")
BLOCKS = (32, 64, 128, 256)
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
QMAX = {"int8": 127.0, "fp8": 448.0}


def check_quant_args(qdtype: str, block: int, dtype: Optional[torch.dtype] = None) -> None:
    """Raise ValueError unless (qdtype, block, dtype) is a supported quantized all-reduce."""
    if qdtype not in QDTYPES:
        raise ValueError(f"quantized all-reduce: qdtype must be one of {QDTYPES}, got {qdtype!r}")
    if isinstance(block, bool) or not isinstance(block, int) or block not in BLOCKS:
        raise ValueError(f"quantized all-reduce: block must be one of {BLOCKS} elements, got {block!r}")
    if dtype is not None and dtype not in FLOAT_DTYPES:
        raise ValueError(f"quantized all-reduce: tensor dtype must be float32/float16/bfloat16, got {dtype}")


def roundtrip_f32(x: torch.Tensor, qdtype: str, block: int) -> torch.Tensor:
    """fp32(dequantize(quantize(x))) of a flat tensor."""
    q, s = ops.quantize_blocks(x.reshape(-1), block, qdtype)
    return ops.dequantize_blocks(q, s, block, torch.float32)


def finish(deq: Sequence[torch.Tensor], qdtype: str, block: int, dtype: torch.dtype) -> torch.Tensor:
    """Sum the ranks' dequantized payloads in rank order (fp32), requantize, dequantize to dtype."""
    acc = deq[0].clone()
    for d in deq[1:]:
        acc.add_(d)
    q2, s2 = ops.quantize_blocks(acc, block, qdtype)
    return ops.dequantize_blocks(q2, s2, block, dtype)


def quant_reduce_reference(xs: Sequence[torch.Tensor], qdtype: str, block: int) -> torch.Tensor:
    """The oracle: what every rank must hold after a quantized all-reduce of xs[0..N-1] (one tensor per rank)."""
    check_quant_args(qdtype, block, xs[0].dtype)
    out = finish([roundtrip_f32(x, qdtype, block) for x in xs], qdtype, block, xs[0].dtype)
    return out.reshape(xs[0].shape)


def error_bound(xs: Sequence[torch.Tensor], qdtype: str, block: int) -> torch.Tensor:
    """Per-element bound on |out - exact sum| implied by the block math (fp64; same shape as xs[0], flattened).

    Each rank's quantization moves an element by at most half a quantization step: scale/2 for int8 (scale =
    amax/127); for e4m3 2^-4 |x| in the normal range plus 2^-10 scale in the subnormal one (scale = amax/448). The
    requantization of the sum adds the same for the sum's block (its amax <= sum of the ranks' amax). The result's
    rounding to the output dtype adds half an ulp, and the fp32 sum a few fp32 ulps.
    """
    qmax = QMAX[qdtype]
    flat = [x.reshape(-1).double() for x in xs]
    n = flat[0].numel()
    nb = (n + block - 1) // block
    pad = nb * block - n

    def block_amax(v):
        return torch.nn.functional.pad(v.abs(), (0, pad)).view(nb, block).amax(dim=1)

    amax_sum = sum(block_amax(v) for v in flat)  # >= amax of the dequantized sum, per block
    abs_sum = sum(v.abs() for v in flat)
    per_block = torch.repeat_interleave(amax_sum, block)[:n]
    # |dequantized payload| <= the block's amax, so the sum's block amax <= amax_sum (= per_block here).
    if qdtype == "int8":
        bound = per_block / qmax  # ranks: sum_r amax_r / (2 qmax); requantization: amax_sum / (2 qmax)
    else:
        sub = 2.0**-10 * per_block / qmax  # half the subnormal spacing, summed over the ranks' scales
        ranks = 2.0**-4 * abs_sum + sub
        bound = ranks + 2.0**-4 * (abs_sum + ranks) + sub  # requantization of |acc| <= abs_sum + ranks' error
    out_eps = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}[xs[0].dtype]
    return bound * (1 + 1e-6) + (abs_sum + per_block) * out_eps + len(xs) * 2.0**-23 * abs_sum


def quant_all_reduce_gather(t: torch.Tensor, qdtype: str, block: int, group: Optional[dist.ProcessGroup] = None,
                            gather: Optional[Callable[[torch.Tensor, torch.Tensor], None]] = None) -> torch.Tensor:
    """Quantized all-reduce of t in place through an all-gather of the quantized payloads (one collective).

    gather(x, out) must fill out (world_size * x.numel() bytes) with every rank's x in rank order; the default uses
    torch.distributed.all_gather on the group (gloo or NCCL)."""
    check_quant_args(qdtype, block, t.dtype)
    if not t.is_contiguous():
        raise ValueError("quantized all-reduce: the tensor must be contiguous")
    ws = dist.get_world_size(group) if dist.is_initialized() else 1
    n = t.numel()
    if ws == 1 or n == 0:
        if n:
            t.copy_(finish([roundtrip_f32(t, qdtype, block)], qdtype, block, t.dtype).view(t.shape))
        return t
    q, s = ops.quantize_blocks(t.reshape(-1), block, qdtype)
    # scales first, then q bytes, padded to 16 bytes: every rank's part of the gathered buffer stays 4-byte aligned
    sbytes, qbytes = s.numel() * 4, q.numel()
    payload = torch.zeros(sbytes + (qbytes + 15) // 16 * 16, dtype=torch.uint8, device=t.device)
    payload[:sbytes].copy_(s.view(torch.uint8))
    payload[sbytes:sbytes + qbytes].copy_(q.view(torch.uint8))
    if gather is not None:
        gathered = torch.empty(ws * payload.numel(), dtype=torch.uint8, device=t.device)
        gather(payload, gathered)
        parts: List[torch.Tensor] = list(gathered.view(ws, -1))
    else:
        parts = [torch.empty_like(payload) for _ in range(ws)]
        dist.all_gather(parts, payload, group=group)
    qdt = ops._qdtype(qdtype)
    deq = [ops.dequantize_blocks(p[sbytes:sbytes + qbytes].view(qdt), p[:sbytes].view(torch.float32), block,
                                 torch.float32) for p in parts]
    t.copy_(finish(deq, qdtype, block, t.dtype).view(t.shape))
    return t
