"""The ``ssmtp::`` torch.library ops: the only public op surface. Each forwards to the C core (``ssmtp._C``) with
tensors described as (data_ptr, dtype code, device, shape, strides); outputs are allocated here, in Python.

Ops (semantics in csrc/ssmtp.h; pure-torch twins in ssmtp/ref.py):
  causal_conv1d(x, weight, bias, state, state_idx, seq_lens, silu, load_state) -> out          (mutates state)
  selective_scan(x, dt, A, B, C, D, z, dt_bias, state, state_idx, seq_lens, dt_softplus, load_state) -> out
                                                                                               (mutates state)
  selective_state_update(x, dt, A, B, C, D, z, dt_bias, state, state_idx, dt_softplus, dt_proj=None,
                         state_early=False) -> out                                    (mutates state)
  mamba_decode_in(res, add, norm_w, weight, bias, conv_w, conv_b, conv_state, state_idx, eps, res_fp32)
      -> (res_out, xc, z)   a Mamba-1 block's decode input, fused (mutates conv_state); CUDA for M <= 4
  quantize_blocks(x, block, qdtype) -> (q, scales);  dequantize_blocks(q, scales, block, dtype) -> x
  sample(logits, temperature, top_k, top_p, seed, step) -> tokens   one token per row (greedy / T / top-k / top-p)
  argmax(logits) -> tokens                   sample's greedy rule alone (the decode step's greedy tokens)
  linear_small(x, weight, bias, out_f32=False) -> out   x (M, K) W (N, K)^T (+ bias); CUDA: a GEMV for M <= 8, a
                                            tensor-core kernel for 16-bit M <= 256 (K % 32 == 0, sm_90)
and ``linear(x, weight, bias)``, which the models call: linear_small where it applies, else F.linear; ``lm_head(h,
weight)``, the engine's fp32 logits.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

try:
    from . import _C
except ImportError as e:  # the source tree imported instead of the installed package, or a broken build
    import os as _os

    raise ImportError(
        f"ssmtp's compiled core (ssmtp._C) is missing next to {_os.path.dirname(__file__)}: {e}. If this is the "
        "source checkout shadowing the installed package, run from another directory (or use the `ssmtp` command); "
        "to work in the checkout, build in place with `python setup.py build_ext --inplace`.") from e

_DTYPE_CODES = {
    torch.float32: 0,
    torch.float16: 1,
    torch.bfloat16: 2,
    torch.int8: 3,
    torch.float8_e4m3fn: 4,
    torch.int32: 5,
    torch.int64: 6,
    torch.uint8: 7,
}


def desc(t: Optional[torch.Tensor], name: str = "tensor"):
    """Describe a tensor for the C core, or None for an absent optional argument."""
    if t is None:
        return None
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
    code = _DTYPE_CODES.get(t.dtype)
    if code is None:
        raise TypeError(f"{name} has unsupported dtype {t.dtype}")
    if t.device.type == "cpu":
        dev = -1
    elif t.device.type == "cuda":
        dev = t.device.index if t.device.index is not None else torch.cuda.current_device()
    else:
        raise ValueError(f"{name} is on device {t.device}; ssmtp ops run on cpu and cuda")
    return (t.data_ptr(), code, dev, tuple(t.shape), tuple(t.stride()))


def stream_of(*tensors: Optional[torch.Tensor]) -> int:
    """The current CUDA stream (as an integer) of the first CUDA tensor, 0 on the CPU."""
    for t in tensors:
        if t is not None and t.device.type == "cuda":
            return torch.cuda.current_stream(t.device).cuda_stream
    return 0


def _out_like(x: torch.Tensor) -> torch.Tensor:
    """Output for a (batch, dim, seqlen) input: channel-contiguous (token-major, what the next GEMM wants) when x is,
    time-contiguous otherwise."""
    if x.dim() == 3 and x.stride(1) == 1 and x.shape[1] > 1:
        return torch.empty(x.shape[0], x.shape[2], x.shape[1], dtype=x.dtype, device=x.device).transpose(1, 2)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def cuda_built() -> bool:
    return bool(_C.cuda_built())


def build_info() -> str:
    return _C.build_info()


# ------------------------------------------------------------------------------------------------ causal conv1d

@torch.library.custom_op("ssmtp::causal_conv1d", mutates_args=("state",))
def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], state: Optional[torch.Tensor],
                  state_idx: Optional[torch.Tensor], seq_lens: Optional[torch.Tensor], silu: bool,
                  load_state: bool, save_pos: Optional[torch.Tensor] = None,
                  save_idx: Optional[torch.Tensor] = None) -> torch.Tensor:
    out = _out_like(x)
    _C.conv1d_fwd(desc(x, "x"), desc(weight, "weight"), desc(bias, "bias"), desc(state, "state"),
                  desc(state_idx, "state_idx"), desc(seq_lens, "seq_lens"), desc(out, "out"),
                  desc(save_pos, "save_pos"), desc(save_idx, "save_idx"), int(silu), int(load_state), stream_of(x))
    return out


@causal_conv1d.register_fake
def _(x, weight, bias, state, state_idx, seq_lens, silu, load_state, save_pos=None, save_idx=None):
    return _out_like(x)


# ------------------------------------------------------------------------------------------------ selective scan

@torch.library.custom_op("ssmtp::selective_scan", mutates_args=("state",))
def selective_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: Optional[torch.Tensor], z: Optional[torch.Tensor], dt_bias: Optional[torch.Tensor],
                   state: Optional[torch.Tensor], state_idx: Optional[torch.Tensor],
                   seq_lens: Optional[torch.Tensor], dt_softplus: bool, load_state: bool,
                   save_pos: Optional[torch.Tensor] = None, save_idx: Optional[torch.Tensor] = None) -> torch.Tensor:
    out = _out_like(x)
    _C.scan_fwd(desc(x, "x"), desc(dt, "dt"), desc(A, "A"), desc(B, "B"), desc(C, "C"), desc(D, "D"), desc(z, "z"),
                desc(dt_bias, "dt_bias"), desc(state, "state"), desc(state_idx, "state_idx"),
                desc(seq_lens, "seq_lens"), desc(out, "out"), desc(save_pos, "save_pos"), desc(save_idx, "save_idx"),
                int(dt_softplus), int(load_state), stream_of(x))
    return out


@selective_scan.register_fake
def _(x, dt, A, B, C, D, z, dt_bias, state, state_idx, seq_lens, dt_softplus, load_state, save_pos=None,
      save_idx=None):
    return _out_like(x)


@torch.library.custom_op("ssmtp::selective_state_update", mutates_args=("state",))
def selective_state_update(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                           D: Optional[torch.Tensor], z: Optional[torch.Tensor], dt_bias: Optional[torch.Tensor],
                           state: torch.Tensor, state_idx: Optional[torch.Tensor], dt_softplus: bool,
                           dt_proj: Optional[torch.Tensor] = None, state_early: bool = False) -> torch.Tensor:
    """dt_proj (dim, R), optional: dt is then the (batch, R) low-rank time step and the op applies dt_proj itself
    (on the CPU the same bits as linear_small(dt, dt_proj) followed by the step; on CUDA the dot is summed in another
    order, so the time step may differ by one rounding). state_early: a CUDA launch hint for the engine's decode step
    (csrc/ssmtp.h): the kernel may load the slot indices and state rows before it waits for the kernel before it;
    only where nothing still running then writes them. Same results."""
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _C.step_fwd(desc(x, "x"), desc(dt, "dt"), desc(A, "A"), desc(B, "B"), desc(C, "C"), desc(D, "D"), desc(z, "z"),
                desc(dt_bias, "dt_bias"), desc(state, "state"), desc(state_idx, "state_idx"), desc(out, "out"),
                desc(dt_proj, "dt_proj"), int(dt_softplus), stream_of(x), int(state_early))
    return out


@selective_state_update.register_fake
def _(x, dt, A, B, C, D, z, dt_bias, state, state_idx, dt_softplus, dt_proj=None, state_early=False):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


# ------------------------------------------------------------------------------------------------ quantization

_QDTYPES = {"int8": torch.int8, "fp8": torch.float8_e4m3fn, "float8_e4m3fn": torch.float8_e4m3fn}


def _qdtype(name: str) -> torch.dtype:
    try:
        return _QDTYPES[name]
    except KeyError:
        raise ValueError(f"qdtype must be one of {sorted(_QDTYPES)}, got {name!r}") from None


@torch.library.custom_op("ssmtp::quantize_blocks", mutates_args=())
def quantize_blocks(x: torch.Tensor, block: int, qdtype: str) -> tuple[torch.Tensor, torch.Tensor]:
    qd = _qdtype(qdtype)
    n = x.numel()
    q = torch.empty(n, dtype=qd, device=x.device)
    scales = torch.empty((n + block - 1) // block if block > 0 else 0, dtype=torch.float32, device=x.device)
    _C.quantize(desc(x.reshape(-1), "x"), desc(q, "q"), desc(scales, "scales"), int(block), stream_of(x))
    return q, scales


@quantize_blocks.register_fake
def _(x, block, qdtype):
    n = x.numel()
    return (torch.empty(n, dtype=_qdtype(qdtype), device=x.device),
            torch.empty((n + block - 1) // block, dtype=torch.float32, device=x.device))


@torch.library.custom_op("ssmtp::dequantize_blocks", mutates_args=())
def dequantize_blocks(q: torch.Tensor, scales: torch.Tensor, block: int, dtype: torch.dtype) -> torch.Tensor:
    out = torch.empty(q.shape, dtype=dtype, device=q.device)
    _C.dequantize(desc(out, "out"), desc(q, "q"), desc(scales, "scales"), int(block), stream_of(q))
    return out


@dequantize_blocks.register_fake
def _(q, scales, block, dtype):
    return torch.empty(q.shape, dtype=dtype, device=q.device)


# ------------------------------------------------------------------------------------------------ sampling


@torch.library.custom_op("ssmtp::sample", mutates_args=())
def sample(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
           seed: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    out = torch.empty(logits.shape[0] if logits.dim() else 0, dtype=torch.int64, device=logits.device)
    _C.sample(desc(logits, "logits"), desc(temperature, "temperature"), desc(top_k, "top_k"), desc(top_p, "top_p"),
              desc(seed, "seed"), desc(step, "step"), desc(out, "out"), stream_of(logits))
    return out


@sample.register_fake
def _(logits, temperature, top_k, top_p, seed, step):
    return torch.empty(logits.shape[0], dtype=torch.int64, device=logits.device)


@torch.library.custom_op("ssmtp::argmax", mutates_args=())
def argmax(logits: torch.Tensor) -> torch.Tensor:
    """The greedy token of each row of logits (n, V) (csrc/ssmtp.h: ssmtp_argmax): the first index of the largest
    value, as torch.argmax, except that NaN is never chosen (sample's greedy rule; a row with nothing above -inf gives
    0). On CUDA one kernel launched with programmatic dependent launch, a cluster of blocks per row: 3.4 us for a
    50280-entry fp32 row where torch.argmax took 12.1 us (H200, benchmarks/results/argmax-lmhead-h200-f032480.json)."""
    out = torch.empty(logits.shape[0] if logits.dim() else 0, dtype=torch.int64, device=logits.device)
    _C.argmax(desc(logits, "logits"), desc(out, "out"), stream_of(logits))
    return out


@argmax.register_fake
def _(logits):
    return torch.empty(logits.shape[0], dtype=torch.int64, device=logits.device)


# ------------------------------------------------------------------------------------------------ small linear

LINEAR_SMALL_MAX_M = 8  # SSMTP_LINEAR_SMALL_MAX_M in csrc/ssmtp.h
LINEAR_TC_NARROW_MAX_M = 64  # the tensor-core kernel (CUDA, 16-bit, up to SSMTP_LINEAR_TC_MAX_M rows) where it measured
#                              faster than cuBLAS: narrow outputs only, see gemv_wins
LINEAR_TC_NARROW_MAX_KN = 1 << 21  # ... of at most this many weights (2.1M: 4 MiB in 16 bits)


def _switch(name: str, on: str, off: str) -> bool:
    """An on/off environment switch, default on: "1" or "0", anything else is an error naming both meanings."""
    v = os.environ.get(name, "1")
    if v not in ("0", "1"):
        raise ValueError(f"{name}={v!r}: expected 1 ({on}) or 0 ({off})")
    return v == "1"


def _gemv_on() -> bool:
    return _switch("SSMTP_GEMV", "use the small-batch kernel where it measured faster", "cuBLAS everywhere")


def _tc_on() -> bool:
    return _switch("SSMTP_LINEAR_TC", "narrow products of 9..64 rows on the tensor-core kernel", "cuBLAS there")


def _wg_on() -> bool:
    return _switch("SSMTP_LINEAR_WG", "the products wg_wins names on the warpgroup-MMA kernel where it is built",
                   "cuBLAS or the other kernels there")


_GEMV, _TC, _WG = _gemv_on(), _tc_on(), _wg_on()
# SSMTP_LINEAR_WG_* in csrc/ssmtp.h: where the warpgroup-MMA kernel measured faster than cuBLAS (see gemv_wins)
LINEAR_WG_MIN_M, LINEAR_WG_MAX_M, LINEAR_WG_WIDE_MAX_M, LINEAR_WG_MIN_N, LINEAR_WG_MAX_N = 3, 32, 16, 512, 10240
LINEAR_WG_NARROW_MIN_M, LINEAR_WG_NARROW_MAX_M = 8, 64


def wg_wins(m: int, K: int, N: int) -> bool:
    """The warpgroup-MMA kernel's share (csrc/cuda/linear.cu's auto rule is the same): outputs wider than 512 and at
    most 10240, 3..32 rows when N <= K (out_proj-like), 3..16 when N > K (in_proj-like); narrow outputs (x_proj)
    at 8..64 rows."""
    if N <= LINEAR_WG_MIN_N:
        return LINEAR_WG_NARROW_MIN_M <= m <= LINEAR_WG_NARROW_MAX_M
    return (N <= LINEAR_WG_MAX_N
            and LINEAR_WG_MIN_M <= m <= (LINEAR_WG_MAX_M if N <= K else LINEAR_WG_WIDE_MAX_M))


def gemv_wins(m: int, K: int, N: int, tc: bool = False, wg: bool = False) -> bool:
    """Where linear_small measured faster than cuBLAS on H200 (2026-11-22, bf16, benchmarks/bench_ops.py, mamba-2.8b
    projections; the kernel re-reads x for every weight pack, so each extra row costs L1 traffic and conversions):
      narrow outputs (N <= 512, x_proj 5120 -> 192): 1.8-2.6x at 1-8 rows;
      1-2 rows, K < 1024 or N < 2K (out_proj 5120 -> 2560: 1.24-1.28x; dt_proj 160 -> 5120: 1.31x);
      wide outputs of a long K (in_proj 2560 -> 10240 / 5120): 0.93-0.99x at 1-2 rows: cuBLAS;
      3+ rows of anything wider than 512: 0.52-0.91x: cuBLAS.
    tc (16-bit x, K a multiple of 32, the tensor-core kernel available): narrow outputs of at most
    LINEAR_TC_NARROW_MAX_KN weights also at 9..64 rows, where the tensor-core kernel measured 1.2-1.6x cuBLAS's
    split-K GEMM alone (2026-11-24, x_proj 5120 -> 192: 5.0-6.0 us vs 7.7-8.0; 2560 -> 192: 4.5-5.5 vs 6.3;
    falcon-mamba-7b TP=2 4096 -> 288: 5.0-6.5 vs 7.2-7.6; benchmarks/results/linear-tc-h200-*.json,
    linear-falcon-h200-d7e3016.json); larger weights (falcon-mamba-7b TP=1 8192 -> 288: 7.5-9.5 vs 7.8-8.9 us, slower
    from 32 rows), wider outputs and more rows stay on cuBLAS (out_proj 5120 -> 2560: 16-46 us vs 12).
    wg (the warpgroup-MMA kernel built, compute capability 9.0, 16-bit x): wg_wins, where it measured faster than
    cuBLAS on H200 (2026-11-25, bf16, 34b7680, benchmarks/results/linear-wg-h200-34b7680.json; us at 8 / 16 / 32
    rows, cuBLAS in brackets): out_proj-like (N <= K) up to 32 rows: mamba-2.8b 5120 -> 2560 8.0 / 8.5 / 9.4 (11.5 /
    11.7 / 12.1), TP=2 2560 -> 2560 5.5 / 5.7 / 6.5 (7.0 / 7.1 / 7.2), falcon-mamba-7b 8192 -> 4096 19.4 / 20.7 /
    21.9 (21.3 / 21.4 / 22.2); in_proj-like (N > K) up to 16 rows and 10240 outputs: 2560 -> 10240 14.2 / 15.2
    (15.3 / 15.4), TP=2 2560 -> 5120 8.0 / 8.8 (9.3 / 9.4), dt_proj 160 -> 5120 2.7 / 2.9 (3.4 / 3.5). Slower: 32
    rows of the in_proj-like ones (16.8 vs 15.6), 64+ rows (in_proj 21.4 vs 16.8, out_proj 13.2 vs 12.3), and
    falcon-mamba-7b's 4096 -> 16384 (41-42 vs 33 at 8-16 rows). Narrow outputs (x_proj) at 8..64 rows, against the
    GEMV at 8 and the tensor-core kernel (or cuBLAS past its weight bound) above: mamba-2.8b 5120 -> 192 3.9 / 4.1 /
    4.8 / 6.2 (4.5 / 5.0 / 5.7 / 6.1) at 8 / 16 / 32 / 64 rows, TP=2 2560 -> 192 2.8 / 3.0 / 3.7 / 4.9 (3.1 / 4.4 /
    5.0 / 5.5), falcon-mamba-7b 8192 -> 288 5.5 / 5.6 / 6.4 / 8.0 (GEMV 5.9, cuBLAS 7.8 / 7.8 / 9.0); the GEMV stays
    faster at 1-4 rows (mamba-2.8b 3.1 vs 3.9 us at 4). With up to 16 K splits (7d09732; xproj-splits-h200-7d09732.json)
    the narrow products got faster: mamba-2.8b 3.0 / 3.2 / 3.6 / 4.5 us at 8 / 16 / 32 / 64 rows, falcon-mamba-7b
    3.9 / 4.1 / 4.5 / 6.2; at 4 rows 3.0 against the GEMV's 3.1 (falcon-mamba-7b 3.9 vs 4.5) and at 128 rows 6.9
    against cuBLAS's 7.9 (falcon-mamba-7b 8.5 vs 8.1): those rows stay as they were (not measured in the engine)."""
    if wg and wg_wins(m, K, N):
        return True
    if N <= 512:
        return m <= LINEAR_SMALL_MAX_M or (tc and m <= LINEAR_TC_NARROW_MAX_M and N * K <= LINEAR_TC_NARROW_MAX_KN)
    return m <= 2 and not (K >= 1024 and N >= 2 * K)


@torch.library.custom_op("ssmtp::linear_small", mutates_args=())
def linear_small(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 out_f32: bool = False) -> torch.Tensor:
    """x (M, K) W (N, K)^T (+ bias) with fp32 accumulation and one rounding to x's dtype (csrc/ssmtp.h:
    ssmtp_linear_small); out_f32 (16-bit x): the rounded sums widened to fp32, F.linear(x, W).float() in one kernel."""
    if x.dim() != 2:
        raise ValueError(f"linear_small: x must be 2-D (M, K), got shape {tuple(x.shape)}")
    out = torch.empty(x.shape[0], weight.shape[0] if weight.dim() == 2 else 0,
                      dtype=torch.float32 if out_f32 else x.dtype, device=x.device)
    _C.linear_small(desc(x, "x"), desc(weight, "weight"), desc(bias, "bias"), desc(out, "out"), stream_of(x))
    return out


@linear_small.register_fake
def _(x, weight, bias, out_f32=False):
    return x.new_empty(x.shape[0], weight.shape[0], dtype=torch.float32 if out_f32 else x.dtype)


GATED_NORM_CUDA_MAX_GROUP = 8192  # channels per group the CUDA kernel takes (1024 threads x 8 in registers; norm.cu)


@torch.library.custom_op("ssmtp::gated_norm", mutates_args=())
def gated_norm(y: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, group: int, eps: float) -> torch.Tensor:
    """Gated RMSNorm over groups of `group` channels (Mamba-2 / Zamba2's output norm): y, gate (M, D), weight (D,) ->
    (M, D) = round(weight * round(v * rsqrt(mean_group(v^2) + eps))), v = y * silu(gate) in fp32, roundings to the
    dtype of y (see csrc/ssmtp.h). One kernel on CUDA, launched with programmatic dependent launch."""
    out = torch.empty(y.shape, dtype=y.dtype, device=y.device)
    _C.gated_norm(desc(y, "y"), desc(gate, "gate"), desc(weight, "weight"), desc(out, "out"), int(group), float(eps),
                  stream_of(y))
    return out


@gated_norm.register_fake
def _(y, gate, weight, group, eps):
    return torch.empty_like(y, memory_format=torch.contiguous_format)


ADD_NORM_CUDA_MAX_H = 8192  # SSMTP_ADD_NORM_CUDA_MAX_H in csrc/ssmtp.h


def _add_norm_outputs(res: torch.Tensor, norm_w: torch.Tensor, res_fp32: bool):
    if res.dim() != 2:
        raise ValueError(f"add_rms_norm: res must be (M, H), got shape {tuple(res.shape)}")
    res_out = torch.empty(res.shape, dtype=torch.float32 if res_fp32 else norm_w.dtype, device=res.device)
    return res_out, torch.empty(res.shape, dtype=norm_w.dtype, device=res.device)


@torch.library.custom_op("ssmtp::add_rms_norm", mutates_args=())
def add_rms_norm(res: torch.Tensor, add: Optional[torch.Tensor], norm_w: torch.Tensor, eps: float,
                 res_fp32: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A Mamba block's input (csrc/ssmtp.h: ssmtp_add_rms_norm): r = res + add in fp32 (add optional), h =
    RMSNorm(r in norm_w's dtype) as HF's MambaRMSNorm. res (M, H) fp32 or norm_w's dtype. Returns res_out (M, H) (fp32
    when res_fp32, else norm_w's dtype) and h (M, H). One kernel on CUDA, launched with programmatic dependent launch
    (the decode step's norm where in_proj is a separate GEMM)."""
    res_out, out = _add_norm_outputs(res, norm_w, res_fp32)
    _C.add_rms_norm(desc(res, "res"), desc(add, "add"), desc(res_out, "res_out"), desc(norm_w, "norm_w"),
                    desc(out, "out"), float(eps), stream_of(res, norm_w))
    return res_out, out


@add_rms_norm.register_fake
def _(res, add, norm_w, eps, res_fp32):
    return _add_norm_outputs(res, norm_w, res_fp32)


RMS_MAX_SEGMENTS = 4  # SSMTP_RMS_MAX_SEGMENTS in csrc/ssmtp.h


@torch.library.custom_op("ssmtp::rms_segments", mutates_args=())
def rms_segments(x: torch.Tensor, lens: list[int], eps: float) -> torch.Tensor:
    """Weightless RMS norms over consecutive segments of each row (Falcon-Mamba's norms of dt, B and C, the pieces
    of the x_proj output; csrc/ssmtp.h: ssmtp_rms_segments): x (M, D), lens summing to D -> (M, D) with each segment
    scaled by 1 / sqrt(mean(segment^2) + eps) in fp32, one rounding to x's dtype (HF's FalconMamba rms_forward).
    One kernel on CUDA (instead of torch's ~7 per segment), launched with programmatic dependent launch."""
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _C.rms_segments(desc(x, "x"), desc(out, "out"), [int(n) for n in lens], float(eps), stream_of(x))
    return out


@rms_segments.register_fake
def _(x, lens, eps):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


_DEVICE_KERNELS: dict = {}  # device index -> (tensor-core kernel runs, warpgroup-MMA kernel runs)


def _device_kernels(device: torch.device) -> tuple:
    """Which of linear_small's sm_90 kernels run on this device, once per device: the tensor-core kernel (compute
    capability 9.0+) and the warpgroup-MMA kernel (built for sm_90a, compute capability exactly 9.0)."""
    i = device.index if device.index is not None else torch.cuda.current_device()
    if i not in _DEVICE_KERNELS:
        cc = tuple(torch.cuda.get_device_capability(i))
        _DEVICE_KERNELS[i] = (cc[0] >= 9, "+sm_90a" in build_info() and cc == (9, 0))
    return _DEVICE_KERNELS[i]


def _gemv_takes(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the CUDA small-batch kernel can take this product at all (SSMTP_GEMV on, dtypes, alignment)."""
    if not (_GEMV and x.is_cuda and x.dtype == weight.dtype and x.dtype in (torch.bfloat16, torch.float16,
                                                                          torch.float32)):
        return False
    K = x.shape[-1]
    return (K > 0 and x.numel() >= K and weight.dim() == 2 and (K * x.element_size()) % 16 == 0
            and weight.is_contiguous() and x.data_ptr() % 16 == 0 and weight.data_ptr() % 16 == 0
            and x.stride(-1) == 1)


def linear_small_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the CUDA small-batch kernel takes this product (else a GEMM is the right tool)."""
    if not _gemv_takes(x, weight):
        return False
    K = x.shape[-1]
    tc_dev, wg_dev = _device_kernels(x.device)
    tc = _TC and x.element_size() == 2 and K % 32 == 0 and tc_dev
    wg = _WG and x.element_size() == 2 and wg_dev
    return gemv_wins(x.numel() // K, K, weight.shape[0], tc, wg)


# One row of x against a vocabulary-sized weight (the lm_head of a batch-1 decode step or of a prompt's last position):
# linear_small measured faster than cuBLAS on H200 (2026-11-25, bf16, one call each in a CUDA graph; benchmarks/
# results/lm-head-h200-b1a4f75.json): mamba-2.8b 50280 x 2560 59.8 vs 66.5 us, falcon-mamba-7b 123.5 vs 132.7,
# zamba2-2.7b 40.9 vs 42.9, zamba-7b 59.4 vs 59.7; not at 2 rows (cuBLAS there).
LM_HEAD_GEMV_MIN_N = 16384


def lm_head(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """fp32 logits of the model's dtype, F.linear(h, weight).float() (HF's rounding: the product in the weight's
    dtype, then widened). One row of h (h (1, K) or (K,)) on CUDA against a vocabulary-sized weight goes through
    linear_small, which writes the widened logits itself (no second kernel for .float())."""
    if (h.dim() <= 2 and h.numel() == h.shape[-1] and weight.dim() == 2 and weight.shape[0] >= LM_HEAD_GEMV_MIN_N
            and h.element_size() == 2 and _gemv_takes(h, weight)):
        return linear_small(h.reshape(1, -1), weight, None, True).view(*h.shape[:-1], weight.shape[0])
    return torch.nn.functional.linear(h, weight).float()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """F.linear, except for decode-sized batches on CUDA where ssmtp::linear_small measured faster (gemv_wins): it
    streams the weight once instead of cuBLAS's split-K GEMM + reduction. Same math (fp32 accumulation, one
    rounding). SSMTP_GEMV=0: always F.linear."""
    if linear_small_applies(x, weight):
        x2 = x.reshape(-1, x.shape[-1])
        if x2.shape[0] > 1 and (x2.stride(0) * x2.element_size()) % 16:
            x2 = x2.contiguous()
        return linear_small(x2, weight, bias).view(*x.shape[:-1], weight.shape[0])
    return torch.nn.functional.linear(x, weight, bias)



# ------------------------------------------------------------------------------------------------ fused decode input

DECODE_IN_MAX_M = 4  # SSMTP_DECODE_IN_MAX_M in csrc/ssmtp.h


def _decode_in_outputs(res: torch.Tensor, weight: torch.Tensor, conv_w: torch.Tensor, res_fp32: bool):
    if res.dim() != 2 or weight.dim() != 2 or conv_w.dim() != 2:
        raise ValueError(f"mamba_decode_in: res (M, H), weight (n, H) and conv_w (nc, W) must be 2-D, got shapes "
                         f"{tuple(res.shape)}, {tuple(weight.shape)} and {tuple(conv_w.shape)}")
    M, n, nc = res.shape[0], weight.shape[0], conv_w.shape[0]
    if nc > n:
        raise ValueError(f"mamba_decode_in: conv_w has {nc} rows (conv channels), more than weight's {n} rows")
    res_out = torch.empty(res.shape, dtype=torch.float32 if res_fp32 else weight.dtype, device=res.device)
    xc = torch.empty(M, nc, dtype=weight.dtype, device=res.device)
    z = torch.empty(M, n - nc, dtype=weight.dtype, device=res.device)
    return res_out, xc, z


@torch.library.custom_op("ssmtp::mamba_decode_in", mutates_args=("conv_state",))
def mamba_decode_in(res: torch.Tensor, add: Optional[torch.Tensor], norm_w: torch.Tensor, weight: torch.Tensor,
                    bias: Optional[torch.Tensor], conv_w: torch.Tensor, conv_b: Optional[torch.Tensor],
                    conv_state: torch.Tensor, state_idx: Optional[torch.Tensor], eps: float,
                    res_fp32: bool, conv_lo: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The input half of a Mamba block's decode step (csrc/ssmtp.h: ssmtp_mamba_decode_in): r = res + add (fp32),
    h = RMSNorm(r in the model dtype), xz = in_proj(h), xc = SiLU(conv step of xz[:, conv_lo:conv_lo + nc]) with
    conv_state shifted in place (nc = conv_w's rows), z = the other columns of xz in order. res (M, H) f32 or the
    weight dtype; weight (n, H) (Mamba-1: n = 2 d_inner, conv_lo = 0, nc = d_inner, z the gate; Zamba2: conv_lo =
    d_inner, the conv over xBC, z = [gate | dt]). Returns res_out (M, H) (f32 when res_fp32, else the weight dtype),
    xc (M, nc) and z (M, n - nc)."""
    res_out, xc, z = _decode_in_outputs(res, weight, conv_w, res_fp32)
    _C.mamba_decode_in(desc(res, "res"), desc(add, "add"), desc(res_out, "res_out"), desc(norm_w, "norm_w"),
                       desc(weight, "weight"), desc(bias, "bias"), desc(conv_w, "conv_w"), desc(conv_b, "conv_b"),
                       desc(conv_state, "conv_state"), desc(state_idx, "state_idx"), desc(xc, "xc"), desc(z, "z"),
                       float(eps), int(conv_lo), stream_of(res, weight))
    return res_out, xc, z


@mamba_decode_in.register_fake
def _(res, add, norm_w, weight, bias, conv_w, conv_b, conv_state, state_idx, eps, res_fp32, conv_lo=0):
    return _decode_in_outputs(res, weight, conv_w, res_fp32)


def mamba_decode_in_applies(res: torch.Tensor, weight: torch.Tensor, add: Optional[torch.Tensor] = None) -> bool:
    """Whether the CUDA kernel of mamba_decode_in takes these rows (ssmtp.h: 1 <= M <= 4, rows of whole 16-byte
    packs of at most 16 KiB, a contiguous 16-byte aligned weight, res and add 16-byte aligned with
    contiguous rows; the conv state must also have W or W - 1 columns); else the caller runs the unfused ops."""
    if not (res.is_cuda and weight.is_cuda and weight.dtype in (torch.bfloat16, torch.float16, torch.float32)
            and res.dtype in (torch.float32, weight.dtype) and res.dim() == 2 and weight.dim() == 2):
        return False
    M, H = res.shape
    es = weight.element_size()
    if not (1 <= M <= DECODE_IN_MAX_M and (H * es) % 16 == 0 and H * es <= 16 * 1024
            and weight.is_contiguous() and weight.data_ptr() % 16 == 0):
        return False
    return all(t is None or (t.data_ptr() % 16 == 0 and (H <= 1 or t.stride(1) == 1)) for t in (res, add))


# ------------------------------------------------------------------------------------------------ decode attention

@torch.library.custom_op("ssmtp::decode_attention", mutates_args=())
def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state_idx: torch.Tensor,
                     lengths: torch.Tensor, scale: float) -> torch.Tensor:
    """One query token per sequence against its slot's first lengths[b] keys (csrc/ssmtp.h: ssmtp_decode_attention).
    q (B, H, D); k, v (slots, max_len, Hkv, D); state_idx, lengths (B,) int32. Returns (B, H, D)."""
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    _C.decode_attention(desc(q, "q"), desc(k, "k"), desc(v, "v"), desc(state_idx, "state_idx"),
                        desc(lengths, "lengths"), desc(out, "out"), float(scale), stream_of(q))
    return out


@decode_attention.register_fake
def _(q, k, v, state_idx, lengths, scale):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


# ------------------------------------------------------------------------------------------------ Mamba-2 SSD
# ssd_scan(x, dt, A, B, C, D, z, dt_bias, state, state_idx, seq_lens, dt_softplus, load_state, chunk_size, dt_min,
#          dt_max) -> out  (mutates state);  ssd_step(x, dt, A, B, C, D, z, dt_bias, state, state_idx, dt_softplus,
#          dt_min, dt_max) -> out  (mutates state). Per-head A/dt; x (batch, [seqlen,] nheads, headdim). ssd_scan has a
#          CUDA kernel for the shapes ssd_cuda_supports accepts; ssd_step is CPU only (on the GPU the selective state
#          update computes the same step).


def ssd_cuda_supports(dtype: torch.dtype, headdim: int, dstate: int) -> bool:
    """Whether ssmtp::ssd_scan runs on CUDA tensors of this dtype and shape (the C launcher's conditions: f16/bf16,
    headdim a multiple of 32, d_state a multiple of 16 up to 128); otherwise it raises NotImplementedError there."""
    return dtype in (torch.float16, torch.bfloat16) and headdim % 32 == 0 and dstate % 16 == 0 and 0 < dstate <= 128

@torch.library.custom_op("ssmtp::ssd_scan", mutates_args=("state",))
def ssd_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             D: Optional[torch.Tensor], z: Optional[torch.Tensor], dt_bias: Optional[torch.Tensor],
             state: Optional[torch.Tensor], state_idx: Optional[torch.Tensor], seq_lens: Optional[torch.Tensor],
             dt_softplus: bool, load_state: bool, chunk_size: int, dt_min: float, dt_max: float) -> torch.Tensor:
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _C.ssd_fwd(desc(x, "x"), desc(dt, "dt"), desc(A, "A"), desc(B, "B"), desc(C, "C"), desc(D, "D"), desc(z, "z"),
               desc(dt_bias, "dt_bias"), desc(state, "state"), desc(state_idx, "state_idx"),
               desc(seq_lens, "seq_lens"), desc(out, "out"), int(dt_softplus), int(load_state), int(chunk_size),
               float(dt_min), float(dt_max), stream_of(x))
    return out


@ssd_scan.register_fake
def _(x, dt, A, B, C, D, z, dt_bias, state, state_idx, seq_lens, dt_softplus, load_state, chunk_size, dt_min, dt_max):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("ssmtp::ssd_step", mutates_args=("state",))
def ssd_step(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             D: Optional[torch.Tensor], z: Optional[torch.Tensor], dt_bias: Optional[torch.Tensor],
             state: torch.Tensor, state_idx: Optional[torch.Tensor], dt_softplus: bool, dt_min: float,
             dt_max: float) -> torch.Tensor:
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _C.ssd_step(desc(x, "x"), desc(dt, "dt"), desc(A, "A"), desc(B, "B"), desc(C, "C"), desc(D, "D"), desc(z, "z"),
                desc(dt_bias, "dt_bias"), desc(state, "state"), desc(state_idx, "state_idx"), desc(out, "out"),
                int(dt_softplus), float(dt_min), float(dt_max), stream_of(x))
    return out


@ssd_step.register_fake
def _(x, dt, A, B, C, D, z, dt_bias, state, state_idx, dt_softplus, dt_min, dt_max):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


# ------------------------------------------------------------------------------------------------ eager calls

_EAGER_DIRECT = _switch("SSMTP_OP_FASTPATH", "eager inference calls run the ops' bodies directly",
                        "every call goes through torch's dispatcher")
_dispatch_modes = getattr(torch._C, "_len_torch_dispatch_stack", None)
_CustomOpDef = getattr(getattr(torch._library, "custom_ops", None), "CustomOpDef", None)


class _EagerDirect(_CustomOpDef or object):
    """The ops above, called in eager inference (gradients off, no torch.compile tracing, no torch dispatch mode such
    as FakeTensorMode active), run their own Python bodies directly instead of going through torch's dispatcher,
    which costs ~70-90 us per call on a host CPU (its argument handling in Python): with two to four ops per layer,
    the larger part of an eager prefill's host time per layer. The same body, so the same results; everything else
    (torch.compile, opcheck, autograd, fake tensors, SSMTP_OP_FASTPATH=0) takes the registered op."""

    def __call__(self, *args, **kwargs):
        if (_EAGER_DIRECT and not torch.is_grad_enabled() and not torch.compiler.is_compiling()
                and _dispatch_modes is not None and _dispatch_modes() == 0):
            return self._init_fn(*args, **kwargs)
        return self._opoverload(*args, **kwargs)


def _direct_eager_calls(names: dict) -> None:
    """Every ssmtp:: op among names takes _EagerDirect's calls (a torch without these internals keeps the dispatcher
    for all)."""
    if _CustomOpDef is None:
        return
    for v in list(names.values()):
        if type(v) is _CustomOpDef and getattr(v, "_qualname", "").startswith("ssmtp::") and hasattr(v, "_init_fn"):
            v.__class__ = _EagerDirect


_direct_eager_calls(globals())
