"""Per-family model runners: the forward passes the engine drives, over slot-pool states, with no HF objects inside.

A runner is built from a weight source (ssmtp/loading.py: a safetensors directory read slice by slice, an in-memory HF
model, or a random-weight preset) and owns this rank's shard of the model. The engine needs four things of it:

    state_specs()                                  name -> StateSpec: what one sequence's state is (per layer)
    prefill(ids, seq_lens, start, state_idx, pool, logit_rows, saves=None, kv_len=None)
        -> logits (len(logit_rows), V) fp32 or None
        ids (B, L) int64 right-padded, seq_lens (B,) int32 valid lengths, start (B,) int64 tokens already in the
        state (positions; Mamba ignores them, attention needs them), state_idx (B,) int32 slots (-1 = padding row).
        Continues every row from its slot (the engine zeroes a slot when it hands it out, which equals a cold start)
        and writes the final states back. Only the rows in logit_rows get the final norm + lm_head, at their last
        valid position. saves (runners with inner_saves only): (save_pos, save_idx) (B, S) int32 - the states after
        save_pos[b][j] tokens of the chunk are also written to slot save_idx[b][j] (-1 = none), so prefix-cache
        save points need not end a chunk. kv_len (runners with prefill_kv_buckets, the hybrids): keys attended,
        >= every row's tokens after the chunk; None: read from the device (one host sync; no graph capture).
    decode(ids, pos, state_idx, pool) -> logits (B, V) fp32
        one token per row, in place on the slots; no host sync, no data-dependent Python: CUDA-graph capturable.
    vocab_size, device, dtype

Mamba / Falcon-Mamba: MambaRunner below. Zamba / Zamba2: hybrid.HybridRunner, whose state spec adds this rank's
attention K/V heads per slot (sized by max_model_len) and the slot's token count, so the slot pool, the slot zeroing
and the prefix cache carry them unchanged. runner_class maps HF model_type -> runner class.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from ..parallel.comm import Communicator
from .state_cache import SlotPool, StateSpec

log = logging.getLogger("ssmtp")


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF MambaRMSNorm / FalconMambaRMSNorm: fp32 statistics, cast back to the input dtype, times the weight."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


# The elementwise glue between the big ops, written as whole functions so that torch.compile can fuse each into one
# kernel (decode: inside a CUDA graph every small kernel costs ~1-2 us, and unfused the block norm and the residual add
# are ~10 kernels per layer, ~640 per mamba-2.8b step; prefill: each unfused op reads and writes the whole (tokens, H)
# activation, ~0.7 GB in fp32 for 32 x 2048 tokens). Same math as HF's MambaBlock.

def block_norm(res: torch.Tensor, w: torch.Tensor, eps: float, dtype: torch.dtype) -> torch.Tensor:
    """Block input: norm(residual.to(model dtype))."""
    return _rms_norm(res.to(dtype), w, eps)


def add_block_norm(res, out, w, eps: float, dtype: torch.dtype, fp32: bool):
    """residual += mixer output (in fp32 when residual_in_fp32), then the next block's input."""
    res = (res.float() if fp32 else res) + out
    return res, _rms_norm(res.to(dtype), w, eps)


def add_final_norm(res, out, w, eps: float, fp32: bool, head_dtype: torch.dtype):
    """Last residual add, final norm, cast for the lm_head."""
    res = (res.float() if fp32 else res) + out
    return _rms_norm(res, w, eps).to(head_dtype)


def _recompile_limit_hit(e: BaseException) -> bool:
    """dynamo declining to compile one more variant of a function (its recompile limit, 8 by default, per function;
    with fullgraph=True it raises before running anything)."""
    return type(e).__name__ in ("FailOnRecompileLimitHit", "FailOnCacheLimitHit")


class _Fused:
    """torch.compile'd version of a glue function, with the plain function as the fallback (logged once) when
    compilation is off, unavailable or fails. Compiled on first call - outside graph capture, since the graph
    decoder warms every bucket up eagerly first.

    dynamo keeps a few compiled variants per function (shapes it specialises on, dtypes), and the glue functions are
    shared by every runner of the process: a process with several models and graph shapes (the test suite) can run
    out. A call whose variant is one too many runs the plain function, that call only: the variants compiled before
    go on running compiled, so no call changes its numerics mid-run (falling back for good did: two identical decode
    steps differed, H200, 2026-11-25)."""

    def __init__(self, fn, enabled: bool):
        self.fn = fn
        self.compiled = None
        self.limit_hit = False
        if enabled:
            try:
                self.compiled = torch.compile(fn, dynamic=True, fullgraph=True)
            except Exception as e:  # pragma: no cover - depends on the torch build
                log.warning("ssmtp: torch.compile unavailable for %s (%s); decode runs unfused", fn.__name__, e)

    def __call__(self, *args):
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except Exception as e:
                if _recompile_limit_hit(e):  # nothing ran: this call runs plain (also inside a graph capture)
                    if not self.limit_hit:
                        log.info("ssmtp: dynamo's recompile limit reached for %s; new variants of it run unfused",
                                 self.fn.__name__)
                        self.limit_hit = True
                    return self.fn(*args)
                if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():  # pragma: no cover
                    raise
                log.warning("ssmtp: compiled %s failed (%s: %s); decode runs unfused", self.fn.__name__,
                            type(e).__name__, e)
                self.compiled = None
        return self.fn(*args)


def check_mixers_on(runner, device, dtype):
    """A runner built from an already parallelized model: its mixers must hold the engine's dtype on its device (the
    weights are used in place, not copied). Returns the runner."""
    for mx in runner.mixers:
        if mx.in_proj_weight.device != device or mx.in_proj_weight.dtype != dtype:
            raise ValueError(f"the parallelized model's mixers are {mx.in_proj_weight.dtype} on "
                             f"{mx.in_proj_weight.device}; the engine was asked for {dtype} on {device}")
    return runner


def _env_choice(name: str, default: str, words: tuple, meanings: str) -> str:
    """An environment switch that takes one of ``words`` (``meanings`` explains them in the error message);
    ``default`` when unset."""
    v = os.environ.get(name, default)
    if v not in words:
        raise ValueError(f"{name}={v!r}: expected {meanings}")
    return v


def _decode_fused_mode() -> str:
    return _env_choice("SSMTP_DECODE_FUSED", "auto", ("auto", "1", "step", "0"),
                       "auto (default: 1), 1 (ops.mamba_decode_in at batch <= 2 and dt_proj fused into the state "
                       "update at batch <= 8), step (the latter only) or 0 (unfused)")


_DECODE_FUSED = _decode_fused_mode()


def decode_in_mode() -> str:
    """SSMTP_DECODE_FUSED as read at import, with auto resolved ("0", "1" or "step")."""
    return "1" if _DECODE_FUSED == "auto" else _DECODE_FUSED


def _env_batch(name: str, default: int, most: Optional[int], what: str) -> int:
    """A batch-size limit from the environment variable ``name`` (0..most, or any when most is None)."""
    v = os.environ.get(name, str(default))
    if not v.isdigit() or (most is not None and int(v) > most):
        span = "a batch size" if most is None else f"a batch size 0..{most}"
        raise ValueError(f"{name}={v!r}: expected {span} ({what}; default {default})")
    return int(v)


# The fused decode kernels and where they apply (decode_fused_applies; SSMTP_DECODE_FUSED picks the mode). Measured on
# H200, mamba-2.8b, CUDA-graph decode step (benchmarks/results/):
#   auto (default): 1 at every TP degree. At TP>1 measured on one rank's shapes (mamba-2.8b with d_inner 2560, one
#     GPU, no all-reduce; 2026-11-24, two device calls, runs interleaved, decode-in-half-h200-d7e3016.json): 1.42 /
#     1.62-1.63 ms at B = 1 / 2 against 1.62-1.63 / 1.63-1.66 with step; the two-GPU run itself has not been made yet;
#   1: ops.mamba_decode_in (residual add + norm + in_proj + conv step in one kernel) at batch <= 2, and the
#     dt_proj step up to batch 4: 2.038 / 2.292 ms at B = 1 / 2 against 2.274 / 2.346 with step, same run
#     (engine-h200-tp1-6e168e7-*.json; decode_in at 4 rows per group there, 8 at B=1 now: 2.011 ms). With 2 rows per
#     group (until 6e168e7) decode_in lost to step at B=2 (2.437 ms) and was opt-in: its GEMV waited on a barrier
#     per 2 rows (Nsight Compute, ncu-h200-1f9f31c.json);
#   step: dt_proj inside the state update at batch <= 4: 2.27 / 2.34 / 2.66 ms at B = 1 / 2 / 4 against
#     2.41 / 2.51 / 2.93 unfused (0) in the same run (engine-h200-tp1.json, engine-h200-tp1-46ca1f9-fused-off.json).
# Measured and not kept: the output half of the layer (x_proj, dt_proj + state update, out_proj) as one kernel with
# two grid barriers and out_proj's rows prefetched into shared memory (d128bcb): 16.9 us per layer at B=1 against
# 13.3 us for the three kernels, decode step 2.24-2.27 / 2.75-2.76 / 3.39-3.43 ms at B = 1 / 2 / 4 against
# 2.02 / 2.30 / 2.63 ms
# (benchmarks/results/decode-out-h200-d128bcb.json). Its timeline showed why: the chain of dependent phases took
# 4-6 us longer while the prefetch filled the memory system, and the out_proj products, one block per SM, did not
# overlap the weight stream as the GEMV's many blocks do.
# dt_proj fused into the state update up to this batch (SSMTP_DECODE_STEP_MAX_BATCH overrides). Measured on H200
# (2026-11-24, mamba-2.8b, bf16, graph step, two interleaved runs each; benchmarks/results/dtp-batch-h200-*.json):
# fused up to 64 vs up to 4: B=8 2.949 / 2.947 vs 3.004 / 3.005 ms, B=16 3.426 / 3.423 vs 3.256 / 3.259, B=32 4.246
# vs 3.66-3.67, B=64 5.76 vs 4.29-4.32 (its one-sequence blocks repeat the dt_proj rows per sequence): hence 8.
# Since the fused kernel takes several sequences per block where one-sequence blocks would need more than one wave
# (csrc/cuda/step.cu, 6445fa7): B = 6 / 8 2.443-2.456 / 2.463-2.470 ms against 2.629-2.654 / 2.676-2.692 with
# one-sequence blocks (2026-11-25, benchmarks/results/dtp-engine-h200-6445fa7.json); fused up to 16 against up to 8 at
# B = 10..16 0.6-2.2% slower (dtp-engine-h200-b728485.json): 8 stays.
DECODE_FUSED_MAX_BATCH = _env_batch("SSMTP_DECODE_STEP_MAX_BATCH", 8, None, "0 turns the dt_proj fusion off")
# Falcon-Mamba (dt rank 256, d_inner 8192) up to this batch (and DECODE_FUSED_MAX_BATCH). Measured on H200 (2026-11-25,
# falcon-mamba-7b preset, bf16, graph step, interleaved twice; benchmarks/results/dtp-engine-h200-7649cee.json),
# fused against unfused: B = 1 / 2 / 3 / 4 3.998-4.014 / 4.555-4.577 / 4.601-4.618 / 4.601-4.618 ms against
# 4.027-4.039 / 4.565 / 4.517-4.520 / 4.522-4.524, B = 6 / 8 5.033-5.041 / 5.035-5.044 against 4.939-4.963 /
# 4.983-4.990: hence 2.
FALCON_DT_FUSED_MAX_BATCH = _env_batch("SSMTP_FALCON_DT_FUSED_MAX_BATCH", 2, None,
                                       "Falcon-Mamba's dt_proj fused up to this batch")
# The largest decode batch that takes ops.mamba_decode_in (SSMTP_DECODE_IN_MAX_BATCH overrides; at most
# SSMTP_DECODE_IN_MAX_M = 4 in csrc/ssmtp.h). Measured on H200 (2026-11-24, graph step, two interleaved runs each,
# benchmarks/results/decode-in-max-batch-h200-ab.json), 4 against 2: mamba-2.8b B = 3 / 4 3.61 / 3.60 ms against
# 2.64 / 2.66-2.67, zamba2-2.7b 4.85-4.86 / 4.88-4.89 against 4.07-4.10 / 4.11-4.14 (the kernel's GEMV with 4 rows
# of x per weight pack is slower than cuBLAS there): hence 2.
DECODE_IN_MAX_BATCH = _env_batch("SSMTP_DECODE_IN_MAX_BATCH", 2, 4, "rows the decode_in kernel takes")


def _decode_norm_switch() -> str:
    return _env_choice("SSMTP_DECODE_NORM", "auto", ("auto", "1", "0"),
                       "auto (default: the decode step's residual add + block norm as ops.add_rms_norm on CUDA where "
                       "it pays), 1 (always, a CPU too) or 0 (the torch.compile'd kernel)")


# The decode step's residual add + block norm at the batches ops.mamba_decode_in does not take: ops.add_rms_norm (one
# kernel launched with programmatic dependent launch, so that in_proj's GEMM after it can start streaming its weights
# while it runs) instead of torch.compile's kernel, which takes no part in PDL. Measured on H200 (2026-11-25, mamba-2.8b
# graph step, runs interleaved; benchmarks/results/decode-norm-h200-ad59e97.json): B=4 2.362-2.369 ms against
# 2.455-2.465, B=8 2.700-2.706 vs 2.739-2.753, B=16 the same; before cuBLAS's in_proj (mamba-2.8b B >= 32,
# falcon-mamba-7b) 1-2% slower, hence decode_norm_applies' rule.
DECODE_NORM = _decode_norm_switch()


def mixers_take_decode_in(runner, batch: int, cache: dict) -> bool:
    """Whether the CUDA kernel of ops.mamba_decode_in takes every one of runner.mixers' in_proj and conv at this batch
    size; decided once per batch size (decode is graph-captured per bucket) and kept in ``cache``."""
    ok = cache.get(batch)
    if ok is None:
        res = runner.embed.new_empty(batch, runner.embed.shape[1])
        ok = all(ops.mamba_decode_in_applies(res, mx.in_proj_weight) and mx.conv_kernel_size <= 4
                 for mx in runner.mixers)
        cache[batch] = ok
    return ok


class ModelRunner(nn.Module):
    """Interface every family runner implements (see the module docstring)."""

    vocab_size: int
    family: str
    inner_saves = False  # prefill(..., saves=) supported: intermediate states saved inside one chunk
    prefill_kv_buckets: tuple = ()  # key lengths prefill graphs are captured for (runners with attention)

    def state_specs(self) -> dict:
        raise NotImplementedError

    def prefill(self, ids, seq_lens, start, state_idx, pool: SlotPool, logit_rows: Optional[torch.Tensor],
                saves: Optional[tuple] = None, kv_len: Optional[int] = None):
        raise NotImplementedError

    def decode(self, ids, pos, state_idx, pool: SlotPool) -> torch.Tensor:
        raise NotImplementedError

    @contextlib.contextmanager
    def graphing(self):
        """The calls made under it are a prefill graph's warm-up runs and capture (ssmtp/engine/graphs.py): a runner
        may choose its kernels there by GPU time alone, since a replay pays no host time."""
        yield

    # every runner keeps its embedding as `embed` and, unless tied to it, its lm_head as `lm_head`
    @property
    def dtype(self) -> torch.dtype:
        return self.embed.dtype

    @property
    def device(self) -> torch.device:
        return self.embed.device

    def head_weight(self) -> torch.Tensor:
        return self.embed if self.tied else self.lm_head


class MambaRunner(ModelRunner):
    """Mamba-1 family (Mamba, Falcon-Mamba), numerically as HF computes it: blocks x -> x + mixer(norm(x)) with an
    fp32 residual stream (residual_in_fp32), final norm, lm_head on the last position only, fp32 logits.
    Embeddings, norms and lm_head are replicated on every rank; the mixers are TPMambaMixer shards."""

    inner_saves = True

    def __init__(self, config, comm: Communicator, embed: torch.Tensor, norms: list, mixers: list,
                 norm_f: torch.Tensor, lm_head: Optional[torch.Tensor], falcon: bool):
        super().__init__()
        self.config = config
        self.comm = comm
        self.family = "falcon_mamba" if falcon else "mamba"
        self.falcon = falcon
        self.vocab_size = int(config.vocab_size)
        self.embed = nn.Parameter(embed, requires_grad=False)
        self.norms = nn.ParameterList([nn.Parameter(w, requires_grad=False) for w in norms])
        self.mixers = nn.ModuleList(mixers)
        self.norm_f = nn.Parameter(norm_f, requires_grad=False)
        self.tied = lm_head is None
        self.lm_head = None if lm_head is None else nn.Parameter(lm_head, requires_grad=False)
        self.eps = float(config.layer_norm_epsilon)
        self.residual_in_fp32 = bool(getattr(config, "residual_in_fp32", True))
        self.n_layers = len(mixers)
        m0 = mixers[0]
        self.d_local, self.d_state, self.conv_kernel = m0.d_local, m0.ssm_state_size, m0.conv_kernel_size
        self._fused_ok: dict = {}
        self._decode_norm_ok: dict = {}
        self.set_fused(False)

    def set_fused(self, enabled: bool) -> None:
        """Fuse the elementwise glue of decode and prefill with torch.compile (the engine turns this on for CUDA)."""
        self.fused = enabled
        self._k_norm = _Fused(block_norm, enabled)
        self._k_add_norm = _Fused(add_block_norm, enabled)
        self._k_add_final = _Fused(add_final_norm, enabled)

    # ------------------------------------------------------------------ construction

    @classmethod
    def build(cls, source, comm: Communicator, dtype: torch.dtype, device, progress: bool = True) -> "MambaRunner":
        """This rank's shard from a weight source (loading.py): mixers read only their slices through source.getter;
        embeddings, norms and lm_head are read whole. Nothing is allocated for the full model."""
        from ..models.mamba import TPMambaMixer

        cfg = source.config
        falcon = source.family == "falcon_mamba"
        device = torch.device(device)
        full = lambda name: source.tensor(name, dtype=dtype, device=device)  # noqa: E731
        n = int(cfg.num_hidden_layers)
        prefix = source.prefix
        it = range(n)
        if progress and comm.rank == 0:
            try:
                from tqdm.auto import tqdm

                it = tqdm(it, desc=f"loading {source.name} (tp={comm.world_size})", unit="layer")
            except ImportError:  # pragma: no cover - tqdm is a dependency
                pass
        embed = full(f"{prefix}embeddings.weight")
        norms, mixers = [], []
        for i in it:
            norms.append(full(f"{prefix}layers.{i}.norm.weight"))
            get = source.getter(f"{prefix}layers.{i}.mixer.", dtype=dtype, device=device)
            mixers.append(TPMambaMixer(cfg, i, comm, get, falcon=falcon).to(device))
        norm_f = full(f"{prefix}norm_f.weight")
        tied = bool(getattr(cfg, "tie_word_embeddings", True)) or not source.has("lm_head.weight")
        lm_head = None if tied else full("lm_head.weight")
        return cls(cfg, comm, embed, norms, mixers, norm_f, lm_head, falcon)

    @classmethod
    def from_hf(cls, model: nn.Module, comm: Communicator, dtype: torch.dtype, device) -> "MambaRunner":
        """From an in-memory HF MambaForCausalLM / FalconMambaForCausalLM, parallelized by ssmtp already or not:
        existing TPMambaMixer shards are reused; HF mixers are sharded here (the HF model itself is left intact)."""
        from ..models.mamba import TPMambaMixer

        falcon = type(model).__name__.startswith("FalconMamba")
        bb = model.backbone
        device = torch.device(device)
        cvt = lambda t: t.detach().to(device=device, dtype=dtype).clone()  # noqa: E731
        norms, mixers = [], []
        for blk in bb.layers:
            norms.append(cvt(blk.norm.weight))
            mx = blk.mixer
            if isinstance(mx, TPMambaMixer):
                if mx.comm.world_size != comm.world_size or mx.comm.rank != comm.rank:
                    raise ValueError("the model was parallelized over a different group than the engine's")
                mixers.append(mx)  # shared with the HF model (same weights, no copy)
            else:
                params = {k: v.detach() for k, v in mx.named_parameters()}
                get = lambda name, p=params: p[name].to(device=device, dtype=dtype)  # noqa: E731
                mixers.append(TPMambaMixer(mx.config, mx.layer_idx, comm, get, falcon=falcon))
        lm = model.get_output_embeddings().weight
        tied = lm is bb.embeddings.weight or lm.data_ptr() == bb.embeddings.weight.data_ptr()
        runner = cls(model.config, comm, cvt(bb.embeddings.weight), norms, mixers, cvt(bb.norm_f.weight),
                     None if tied else cvt(lm), falcon)
        return check_mixers_on(runner, device, dtype)

    # ------------------------------------------------------------------ states

    def state_specs(self) -> dict:
        n, dl = self.n_layers, self.d_local
        return {"conv": StateSpec((n, dl, self.conv_kernel), self.dtype),
                "ssm": StateSpec((n, dl, self.d_state), torch.float32)}

    # ------------------------------------------------------------------ forward

    @torch.no_grad()
    def prefill(self, ids, seq_lens, start, state_idx, pool: SlotPool, logit_rows: Optional[torch.Tensor],
                saves: Optional[tuple] = None, kv_len: Optional[int] = None):
        eps, dt, fp32 = self.eps, self.dtype, self.residual_in_fp32
        save_pos, save_idx = saves if saves is not None else (None, None)
        # The residual add + block norm stay torch.compile's kernel here: ops.add_rms_norm (decode's choice at some
        # batch sizes) took more GPU time at prefill sizes and its host-time saving did not show above the noise
        # (H200, 2026-11-25, benchmarks/results/prefill-norm-h200-f787b75-not-kept.json: 8x512 kernels 48.6 vs 46.4 ms)
        res = F.embedding(ids, self.embed)  # (B, L, H)
        x = self._k_norm(res, self.norms[0], eps, dt)
        n = len(self.mixers)
        for i, mixer in enumerate(self.mixers):
            out = mixer.mix(x, pool.layer("conv", i), pool.layer("ssm", i), state_idx, seq_lens, True,
                            save_pos=save_pos, save_idx=save_idx)
            if i + 1 < n:
                res, x = self._k_add_norm(res, out, self.norms[i + 1], eps, dt, fp32)
        if logit_rows is None or logit_rows.numel() == 0:
            return None
        # the last residual add, final norm and lm_head only where logits are wanted: each row's last valid token
        last = (seq_lens.to(torch.long) - 1).index_select(0, logit_rows)
        w = self.head_weight()
        h = self._k_add_final(res[logit_rows, last], out[logit_rows, last], self.norm_f, eps, fp32, w.dtype)
        return ops.lm_head(h, w)

    def decode_fused_applies(self, batch: int, part: str = "in") -> bool:
        """Whether decode at this batch size takes the fused kernels on CUDA: part "step": dt_proj fused into the
        state update (SSMTP_DECODE_FUSED step, 1 or auto, batch <= DECODE_FUSED_MAX_BATCH, Falcon-Mamba also <=
        FALCON_DT_FUSED_MAX_BATCH: 6 kernels per layer
        instead of 7); part "in": also ops.mamba_decode_in (residual add + norm + in_proj + conv step;
        SSMTP_DECODE_FUSED=1 or auto; batch <= DECODE_IN_MAX_BATCH, shapes it takes: 4 kernels per layer)."""
        mode = decode_in_mode()
        most = DECODE_IN_MAX_BATCH
        if part == "step":
            most = min(DECODE_FUSED_MAX_BATCH, FALCON_DT_FUSED_MAX_BATCH) if self.falcon else DECODE_FUSED_MAX_BATCH
        if (mode == "0" or (part == "in" and mode != "1") or not self.embed.is_cuda
                or not 1 <= batch <= most):
            return False
        return part == "step" or mixers_take_decode_in(self, batch, self._fused_ok)

    def decode_norm_applies(self, batch: int) -> bool:
        """Whether the decode step's residual add + block norm (at batches ops.mamba_decode_in does not take) is
        ops.add_rms_norm, one kernel launched with PDL, rather than the torch.compile'd add_block_norm.
        SSMTP_DECODE_NORM=auto (default): on CUDA where every in_proj of this batch runs on ssmtp's own GEMM kernels
        (ops.linear_small_applies: launched with PDL, so that they start streaming their weights while the norm runs;
        before cuBLAS, which does not, the compiled kernel measured as fast or faster); 1: always (a CPU too); 0:
        never. Decided once per mode and batch size (the decode step runs it every step when not graph-captured)."""
        ok = self._decode_norm_ok.get((DECODE_NORM, batch))
        if ok is None:
            ok = (DECODE_NORM != "0" and self.embed.shape[1] <= ops.ADD_NORM_CUDA_MAX_H
                  and all(w.dtype == self.dtype for w in self.norms))
            if ok and DECODE_NORM == "auto":
                x = self.embed.new_empty(batch, self.embed.shape[1]) if self.embed.is_cuda else None
                ok = x is not None and all(ops.linear_small_applies(x, mx.in_proj_weight) for mx in self.mixers)
            self._decode_norm_ok[(DECODE_NORM, batch)] = ok
        return ok

    @torch.no_grad()
    def decode(self, ids, pos, state_idx, pool: SlotPool) -> torch.Tensor:
        # state_early (ops.selective_state_update's launch hint) holds here: the step's first kernel, the embedding
        # gather, is an ordinary launch that waits for all earlier work, and within the step only layer i's state
        # update writes layer i's SSM state (nothing writes state_idx)
        eps, dt, fp32 = self.eps, self.dtype, self.residual_in_fp32
        w = self.head_weight()
        if self.decode_fused_applies(ids.shape[0]):
            res, out = F.embedding(ids, self.embed), None  # (B, H)
            for i, mixer in enumerate(self.mixers):
                res, xc, z = ops.mamba_decode_in(res, out, self.norms[i], mixer.in_proj_weight, mixer.in_proj_bias,
                                                 mixer.conv_weight, mixer.conv_bias, pool.layer("conv", i), state_idx,
                                                 eps, fp32)
                out = mixer.step_tail(xc, z, pool.layer("ssm", i), state_idx, fuse_dt=True, state_early=True)
            h = self._k_add_final(res, out, self.norm_f, eps, fp32, w.dtype)
            return ops.lm_head(h, w)
        fuse_dt = self.decode_fused_applies(ids.shape[0], "step")
        n = len(self.mixers)
        # the residual add + block norm between mixers: ops.add_rms_norm on the (B, H) rows, or the compiled glue
        if self.decode_norm_applies(ids.shape[0]):
            def add_norm(res, out, nw):
                r, x = ops.add_rms_norm(res[:, 0], None if out is None else out[:, 0], nw, eps, fp32)
                return r[:, None], x[:, None]
        else:
            def add_norm(res, out, nw):
                if out is None:
                    return res, self._k_norm(res, nw, eps, dt)
                return self._k_add_norm(res, out, nw, eps, dt, fp32)
        res, x = add_norm(F.embedding(ids[:, None], self.embed), None, self.norms[0])  # (B, 1, H)
        for i, mixer in enumerate(self.mixers):
            out = mixer.mix_step(x, pool.layer("conv", i), pool.layer("ssm", i), state_idx, fuse_dt, True)
            if i + 1 < n:
                res, x = add_norm(res, out, self.norms[i + 1])
        h = self._k_add_final(res, out, self.norm_f, eps, fp32, w.dtype)
        return ops.lm_head(h[:, 0], w)


RUNNERS = {"mamba": MambaRunner, "falcon_mamba": MambaRunner}
HYBRID = ("zamba", "zamba2")  # ssmtp/engine/hybrid.py: HybridRunner (Mamba slots + a sharded KV cache)


def runner_class(family: str):
    if family in RUNNERS:
        return RUNNERS[family]
    if family in HYBRID:
        from .hybrid import HybridRunner

        return HybridRunner
    supported = sorted(set(RUNNERS) | set(HYBRID))
    raise ValueError(f"model family {family!r} is not supported; supported: {', '.join(supported)}")
