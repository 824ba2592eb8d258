"""The engine's runner for the hybrid families, Zamba (v1) and Zamba2: Mamba slots plus a sharded KV cache.

Model (HF's ZambaModel / Zamba2Model, reproduced op for op in the model dtype, no fp32 residual):
    h = embed(ids); e = h                                   e: the embeddings, input of every shared block
    per layer i:  mamba layer   h = h + mixer_i(norm_i(h))
                  hybrid layer  t = linear_j(mlp_b(ff_norm_b(attn_b(in_norm_b(cat[h, e])))))    j: hybrid index,
                                h = h + mixer_i(norm_i(h + t))                                   b: its shared block
    logits = lm_head(final_norm(h)) at each row's last valid token, returned in fp32
Zamba has one shared block (tied over every hybrid layer), Zamba2 num_mem_blocks of them used in turn (block j % nmb),
with per-hybrid-layer adapters and RoPE (use_mem_rope). The shared weights are held once per rank.

Per-slot state (this rank's shard; the slot pool stores it and the prefix cache copies it, nothing else needed):
    conv  (n_layers, conv channels_local, K)           model dtype
    ssm   (n_layers, d_inner_local, N)                 fp32
    k, v  (n_hybrid, max_len + 1, kv_heads_local, hd)  model dtype: this rank's attention heads only, token-major
    len   (1,)                                         int64: tokens in the state (the next token's position)
Every hybrid layer has its own K/V (the weights are shared, the activations are not). Column max_len of k/v is a
scratch column: the writes of padding (right-padded chunk positions, and rows with slot -1) go there, so a padding
row touches no live K/V position and ``len`` of no slot; it is never attended (keys are masked to <= position).
A slot is zeroed when handed out (len = 0), a prefix-cache entry restores K/V up to its prefix together with len.

Positions come from ``len``, never from the engine's ``start`` / ``pos`` arguments: decode is then a function of
static buffers only (CUDA-graph capturable). Decode attention is ssmtp::decode_attention: each row reads its own
slot's first len + 1 keys in place (no gather, no padding to a common length), so one graph per batch bucket serves
every length. SSMTP_DECODE_ATTN=0 selects the previous path instead (for comparison): gather the rows' K/V up to a
static key length T with a length mask, the engine passing the longest live row's length, rounded up by the graph
decoder to a bucket of kv_buckets. Prefill attends over the keys the engine says
are in use (kv_len: the longest row's tokens after the chunk, rounded up to a bucket of prefill_kv_buckets when the
chunk replays from a prefill graph), or reads the longest row's length back to the host once per call without it.
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
from ..models.zamba2 import gated_rms_norm
from ..parallel import shard
from ..parallel.comm import Communicator
from .runner import (DECODE_FUSED_MAX_BATCH, DECODE_IN_MAX_BATCH, ModelRunner, _env_batch, _Fused, _rms_norm,
                     check_mixers_on, decode_in_mode, mixers_take_decode_in)
from .state_cache import SlotPool, StateSpec

log = logging.getLogger("ssmtp")


def hybrid_ids(config) -> list[int]:
    return [i for i, t in enumerate(config.layers_block_type) if t == "hybrid"]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


# An eager prefill takes the compiled glue only from this many tokens per call (prefill graphs take it at every size:
# HybridRunner.graphing): a short eager prefill is host-bound (and noisy: zamba2-2.7b 1x512 51-69 ms plain within one
# run), and each compiled call costs host time. Measured on H200 (2026-11-24, zamba2-2.7b, compiled vs plain,
# benchmarks/results/hybrid-fused-h200-ab.json): 8x512 90-94 vs 121-125 ms; with the glue compiled in every prefill
# 1x512 72-81 vs 43-47 and 1x2048 84 vs 73 (single runs); with this limit short prefills and TTFT equal within that
# noise.
FUSED_PREFILL_MIN_TOKENS = 4096


# The elementwise glue of a hybrid step as whole functions, so that torch.compile can make each one kernel (set_fused;
# unfused, each RMSNorm is ~8 kernels: a zamba2-2.7b decode step launched ~1800 kernels at B=1). Same ops in the same
# order as the unfused forward.

def add_norm(h, out, w, eps: float):
    """A Mamba layer's input: the residual stream with the previous layer's output added (none before layer 0), and
    its norm."""
    h = h if out is None else h + out
    return h, _rms_norm(h, w, eps)


def add_cat_norm(h, out, emb, w, eps: float):
    """A hybrid layer's shared-block input: the residual stream (previous output added) concatenated with the
    embeddings, normed over 2H."""
    h = h if out is None else h + out
    return h, _rms_norm(torch.cat([h, emb], dim=-1), w, eps)


def sum_norm(h, t, w, eps: float):
    """A hybrid layer's mixer input: norm(h + the shared block's projected output)."""
    return _rms_norm(h + t, w, eps)


def rope(q, k, cos, sin):
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor, scaling: float,
           sdpa: bool = False) -> torch.Tensor:
    """HF's eager attention over this rank's heads. q (B, L, hl, hd); k, v (B, T, kvl, hd); allowed (B, L, T) bool.
    Returns (B, L, hl*hd). Query head i reads kv head i // (hl / kvl) (HF's repeat_kv)."""
    B, L, hl, hd = q.shape
    g = hl // k.shape[2]
    qh = q.transpose(1, 2)
    kh = k.transpose(1, 2)
    vh = v.transpose(1, 2)
    if g > 1:
        kh = kh.repeat_interleave(g, dim=1)
        vh = vh.repeat_interleave(g, dim=1)
    if sdpa:  # memory-efficient kernels for long bf16/fp16 prefills (rounding differs from eager's)
        o = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=allowed[:, None], scale=scaling)
    else:
        w = torch.matmul(qh, kh.transpose(2, 3)) * scaling
        w = w.masked_fill(~allowed[:, None], torch.finfo(w.dtype).min)
        p = F.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
        o = torch.matmul(p, vh)
    return o.transpose(1, 2).reshape(B, L, hl * hd)


class SharedBlock(nn.Module):
    """One rank's shard of a shared transformer block: input norm (2H), attention, pre-MLP norm (H), MLP."""

    def __init__(self, in_norm: torch.Tensor, ff_norm: torch.Tensor, attn: nn.Module, mlp: nn.Module, v2: bool):
        super().__init__()
        self.in_norm = nn.Parameter(in_norm, requires_grad=False)
        self.ff_norm = nn.Parameter(ff_norm, requires_grad=False)
        self.attn = attn
        self.mlp = mlp
        self.v2 = v2

    def qkv(self, x, layer_idx):
        return self.attn.qkv(x, layer_idx)

    def ffn(self, x, layer_idx):
        return self.mlp(x, layer_idx) if self.v2 else self.mlp(x)


# Zamba (v1) decode: dt_proj fused into the state update up to this batch (the Mamba runner's limit is 8). Measured
# on H200 (2026-11-24, zamba-7b preset, bf16, graph step; benchmarks/results/zamba-decode-h200-e032356.json), with
# x_proj as one GEMV over both heads (TPZambaMambaMixer._x_proj_token) and dt_proj fused, against 25ac96f (a cuBLAS
# einsum each): B = 1 / 2 / 4 7.00 / 7.98 / 8.91-8.95 ms against 7.56-7.58 / 8.39-8.43 / 9.00-9.03; at B=8 9.44-9.46
# fused against 9.24 unfused (the same x_proj) and 9.22 at 25ac96f: the fused kernel's one-sequence blocks repeat
# each 232-wide dt_proj row per sequence. At B = 3 / 4, fused up to 4 against up to 2 (same build, interleaved
# twice): 8.89-8.90 / 8.91-8.92 ms against 8.95-8.97 / 8.98-8.99. Since the fused kernel takes several sequences per
# block where one-sequence blocks would need more than one wave (csrc/cuda/step.cu, 6445fa7), up to 8 against up to 4
# (2026-11-25, zamba-7b, one H200, two runs each; benchmarks/results/dtp-engine-h200-b728485.json and -7649cee.json):
# B = 6 / 8 8.152-8.155 / 8.192-8.208 ms against 8.492-8.553 / 8.527-8.568. Hence 8 (SSMTP_ZAMBA_DT_FUSED_MAX_BATCH
# overrides).
ZAMBA_DT_FUSED_MAX_BATCH = _env_batch("SSMTP_ZAMBA_DT_FUSED_MAX_BATCH", 8, None,
                                      "Zamba's dt_proj fused up to this batch")


class HybridRunner(ModelRunner):
    """Zamba / Zamba2 over the slot pool (see the module docstring)."""

    def __init__(self, config, comm: Communicator, family: str, embed, norms: list, mixers: list, linears: list,
                 blocks: list, norm_f, lm_head: Optional[torch.Tensor], inv_freq: Optional[torch.Tensor] = None,
                 rope_scale: float = 1.0):
        super().__init__()
        self.config = config
        self.comm = comm
        self.family = family
        self.v2 = family == "zamba2"
        # Zamba2 (as HF) clamps dt >= time_step_min in prefill but not in decode: a state reached by decoding differs
        # from the state a prefill of the same tokens reaches, so the engine does not cache it (cache_generated)
        self.decode_state_matches_prefill = not self.v2
        self.vocab_size = int(config.vocab_size)
        self.embed = nn.Parameter(embed, requires_grad=False)
        self.norms = nn.ParameterList([nn.Parameter(w, requires_grad=False) for w in norms])
        self.mixers = nn.ModuleList(mixers)
        self.linears = nn.ParameterList([nn.Parameter(w, requires_grad=False) for w in linears])
        self.blocks = nn.ModuleList(blocks)
        self.norm_f = nn.Parameter(norm_f, requires_grad=False)
        self.tied = lm_head is None
        self.lm_head = None if lm_head is None else nn.Parameter(lm_head, requires_grad=False)
        self.eps = float(config.rms_norm_eps)
        self._graphing = False  # inside graphing(): a prefill graph's warm-up or capture
        self.n_layers = len(mixers)
        self.hybrid = hybrid_ids(config)
        self.hybrid_index = {lid: j for j, lid in enumerate(self.hybrid)}
        self.n_mem_blocks = len(blocks)
        if inv_freq is not None:
            self.register_buffer("inv_freq", inv_freq.float().clone(), persistent=False)
        else:
            self.inv_freq = None
        self.rope_scale = float(rope_scale)
        a = blocks[0].attn
        self.scaling = a.scaling
        self.kv_local, self.head_dim = a.num_kv_local, a.head_dim
        self.max_len = int(getattr(config, "max_position_embeddings", 4096) or 4096)
        self._decode_in_ok: dict = {}
        self.set_fused(False)

    def decode_in_applies(self, batch: int) -> bool:
        """Whether a decode step of this batch size takes ops.mamba_decode_in for each Mamba layer's input (residual
        add + norm + in_proj + conv step in one kernel, as the Mamba runner at batch <= DECODE_IN_MAX_BATCH; Zamba's
        in_proj rows are [x | z] as Mamba-1's, Zamba2's [gate | xBC | dt] with the conv over xBC): CUDA,
        SSMTP_DECODE_FUSED auto or 1, shapes the kernel takes."""
        if decode_in_mode() != "1" or not self.embed.is_cuda or not 1 <= batch <= DECODE_IN_MAX_BATCH:
            return False
        return mixers_take_decode_in(self, batch, self._decode_in_ok)

    def decode_dt_fused(self, batch: int) -> bool:
        """Whether a decode step of this batch size hands Zamba's low-rank dt to the state update with dt_proj (one
        kernel per Mamba layer instead of a per-head GEMM and the update; as the Mamba runner: CUDA, SSMTP_DECODE_FUSED
        auto, 1 or step, batch <= ZAMBA_DT_FUSED_MAX_BATCH and <= DECODE_FUSED_MAX_BATCH). Zamba2's Mamba-2 layers
        have no dt_proj."""
        return (not self.v2 and decode_in_mode() in ("1", "step") and self.embed.is_cuda
                and 1 <= batch <= min(DECODE_FUSED_MAX_BATCH, ZAMBA_DT_FUSED_MAX_BATCH))

    def set_fused(self, enabled: bool) -> None:
        """Fuse the elementwise glue (norms with their residual adds, RoPE, Zamba2's gated norm) with torch.compile,
        decode and prefill (the engine turns this on for CUDA)."""
        self.fused = enabled
        glue = (add_norm, add_cat_norm, sum_norm, rope, _rms_norm)
        self._k = {f.__name__: _Fused(f, enabled) for f in glue}
        self._plain = {f.__name__: f for f in glue}
        for m in self.mixers:
            if hasattr(m, "gated_fn"):  # Zamba2's gated norm
                m.gated_fn, m.fused_min_tokens = _Fused(gated_rms_norm, enabled), FUSED_PREFILL_MIN_TOKENS

    @contextlib.contextmanager
    def graphing(self):
        """Prefill graphs take the compiled glue at every size (below FUSED_PREFILL_MIN_TOKENS an eager prefill takes
        the plain ops for their host time, which a replay does not pay)."""
        gated = [m for m in self.mixers if hasattr(m, "gated_fn")]
        saved = [m.fused_min_tokens for m in gated]
        self._graphing = True
        for m in gated:
            m.fused_min_tokens = 0
        try:
            yield
        finally:
            self._graphing = False
            for m, v in zip(gated, saved):
                m.fused_min_tokens = v

    def set_max_len(self, n: int) -> int:
        """Tokens of K/V per slot (prompt + generated - 1 at most); the engine sets it from max_model_len."""
        if n < 1:
            raise ValueError(f"max_model_len must be >= 1, got {n}")
        self.max_len = int(n)
        return self.max_len

    attn_op = os.environ.get("SSMTP_DECODE_ATTN", "1") != "0"  # decode attention by ssmtp::decode_attention

    @property
    def prefill_kv_buckets(self) -> list[int]:
        """Key lengths prefill graphs are captured for (the engine passes the chunk's longest row's tokens after it
        as kv_len; a graph attends over the smallest of these holding it): powers of two from 256, then max_len (the
        last one)."""
        out, b = [], 256
        while b < self.max_len:
            out.append(b)
            b *= 2
        return out + [self.max_len]

    @property
    def kv_buckets(self) -> list[int]:
        """Key lengths decode graphs are captured for: prefill_kv_buckets; none with the decode attention op (it
        reads each row's own length)."""
        return [] if self.attn_op else self.prefill_kv_buckets

    def kv_bucket(self, n: int) -> int:
        """The smallest of kv_buckets >= n keys (eager decode uses it too: the same shapes, so the same rounding, as
        the graphs)."""
        for b in self.kv_buckets:
            if b >= n:
                return b
        return self.max_len

    def decode_weight_bytes(self) -> int:
        ps = list(self.mixers.parameters()) + list(self.norms) + list(self.linears) + list(self.blocks.parameters())
        w = self.head_weight()
        return sum(p.numel() * p.element_size() for p in ps) + self.norm_f.numel() * self.norm_f.element_size() + \
            w.numel() * w.element_size()

    # ------------------------------------------------------------------ construction

    @staticmethod
    def _block_source_layers(cfg, family: str) -> list[int]:
        """The hybrid layer whose checkpoint names hold each shared block (HF ties the others to them)."""
        ids = hybrid_ids(cfg)
        if family == "zamba":
            return ids[:1]
        return ids[:int(cfg.num_mem_blocks)]

    @staticmethod
    def _zamba2_kinds(cfg, b: int) -> list[str]:
        n = len(hybrid_ids(cfg))
        return ["lora" if j % int(cfg.num_mem_blocks) == b else "identity" for j in range(n)]

    @classmethod
    def _make_block(cls, cfg, family, comm, get_attn, get_mlp, in_norm, ff_norm, b: int):
        if family == "zamba":
            from ..models.zamba import TPGatedMLP, TPZambaAttention

            attn = TPZambaAttention(cfg, comm, get_attn)
            mlp = TPGatedMLP(cfg, comm, get_mlp, cfg.intermediate_size, ("gate_proj.weight", "up_proj.weight"),
                             "down_proj.weight", cfg.hidden_act)
            return SharedBlock(in_norm, ff_norm, attn, mlp, False)
        from ..models.zamba2 import TPZamba2Attention, TPZamba2MLP

        layer_dic = {lid: j for j, lid in enumerate(hybrid_ids(cfg))}
        kinds = cls._zamba2_kinds(cfg, b)
        akinds = {c: kinds for c in "qkv"} if cfg.use_shared_attention_adapter else None
        attn = TPZamba2Attention(cfg, comm, get_attn, layer_dic, akinds)
        mlp = TPZamba2MLP(cfg, comm, get_mlp, layer_dic, kinds)
        return SharedBlock(in_norm, ff_norm, attn, mlp, True)

    @staticmethod
    def _rope(cfg, family: str, device):
        if family != "zamba2" or not cfg.use_mem_rope:
            return None, 1.0
        from transformers.models.zamba2.modeling_zamba2 import Zamba2RotaryEmbedding

        rot = Zamba2RotaryEmbedding(cfg)
        return rot.inv_freq.to(device), float(rot.attention_scaling)

    @classmethod
    def build(cls, source, comm: Communicator, dtype: torch.dtype, device, progress: bool = True) -> "HybridRunner":
        """This rank's shard from a weight source (a safetensors directory or a preset): mixers and the shared
        blocks' attention heads / MLP columns read only their slices; the rest is read whole."""
        from ..models.zamba import TPZambaMambaMixer
        from ..models.zamba2 import TPZamba2MambaMixer

        cfg, family = source.config, source.family
        device = torch.device(device)
        full = lambda name: source.tensor(name, dtype=dtype, device=device)  # noqa: E731
        get = lambda prefix: source.getter(prefix, dtype=dtype, device=device)  # noqa: E731
        hyb = set(hybrid_ids(cfg))
        it = range(int(cfg.num_hidden_layers))
        if progress and comm.rank == 0:
            try:
                from tqdm.auto import tqdm

                it = tqdm(it, desc=f"loading {source.name} (tp={comm.world_size})", unit="layer")
            except ImportError:  # pragma: no cover
                pass
        norms, mixers, linears = [], [], []
        for i in it:
            p = f"model.layers.{i}." + ("mamba_decoder." if i in hyb else "")
            norms.append(full(p + "input_layernorm.weight"))
            if family == "zamba":
                mixers.append(TPZambaMambaMixer(cfg, i, comm, get(p + "mamba.")).to(device))
            else:
                mixers.append(TPZamba2MambaMixer(cfg, i, comm, get(p + "mamba.")).to(device))
            if i in hyb:
                linears.append(full(f"model.layers.{i}.linear.weight"))
        st = "shared_transf" if family == "zamba" else "shared_transformer"
        blocks = []
        for b, lid in enumerate(cls._block_source_layers(cfg, family)):
            p = f"model.layers.{lid}.{st}."
            blocks.append(cls._make_block(cfg, family, comm, get(p + "self_attn."), get(p + "feed_forward."),
                                          full(p + "input_layernorm.weight"), full(p + "pre_ff_layernorm.weight"),
                                          b).to(device))
        tied = bool(getattr(cfg, "tie_word_embeddings", True)) or not source.has("lm_head.weight")
        inv_freq, scale = cls._rope(cfg, family, device)
        return cls(cfg, comm, family, full("model.embed_tokens.weight"), norms, mixers, linears, blocks,
                   full("model.final_layernorm.weight"), None if tied else full("lm_head.weight"), inv_freq, scale)

    @classmethod
    def from_hf(cls, model: nn.Module, comm: Communicator, dtype: torch.dtype, device) -> "HybridRunner":
        """From an in-memory HF ZambaForCausalLM / Zamba2ForCausalLM, ssmtp.parallelize'd or not: existing ssmtp
        shards are reused (same weights, no copy); HF modules are sharded here (the HF model is left intact)."""
        from ..models import zamba, zamba2

        family = "zamba2" if type(model).__name__.startswith("Zamba2") else "zamba"
        cfg = model.config
        device = torch.device(device)
        cvt = lambda t: t.detach().to(device=device, dtype=dtype).clone()  # noqa: E731

        def getter(module):
            get = shard.hf_params(module)
            return lambda name: get(name).to(device=device, dtype=dtype)

        tp_mixer = zamba2.TPZamba2MambaMixer if family == "zamba2" else zamba.TPZambaMambaMixer
        norms, mixers, linears, blocks, seen = [], [], [], [], {}
        for i, layer in enumerate(model.model.layers):
            dec = layer.mamba_decoder if hasattr(layer, "mamba_decoder") else layer
            norms.append(cvt(dec.input_layernorm.weight))
            mx = dec.mamba
            if isinstance(mx, tp_mixer):
                if mx.comm.world_size != comm.world_size or mx.comm.rank != comm.rank:
                    raise ValueError("the model was parallelized over a different group than the engine's")
                mixers.append(mx)
            elif family == "zamba":
                mixers.append(zamba.TPZambaMambaMixer(cfg, mx.layer_idx, comm, getter(mx)))
            else:
                mixers.append(zamba2.TPZamba2MambaMixer(cfg, mx.layer_idx, comm, getter(mx),
                                                        norm_eps=mx.norm.variance_epsilon))
            if not hasattr(layer, "mamba_decoder"):
                continue
            linears.append(cvt(layer.linear.weight))
            st = layer.shared_transf if family == "zamba" else layer.shared_transformer
            key = id(next(st.self_attn.parameters()))
            if key in seen:
                continue
            seen[key] = len(blocks)
            attn, mlp = st.self_attn, st.feed_forward
            if isinstance(attn, (zamba.TPZambaAttention, zamba2.TPZamba2Attention)):
                if attn.comm.world_size != comm.world_size or attn.comm.rank != comm.rank:
                    raise ValueError("the model was parallelized over a different group than the engine's")
                blocks.append(SharedBlock(cvt(st.input_layernorm.weight), cvt(st.pre_ff_layernorm.weight), attn, mlp,
                                          family == "zamba2"))
            else:
                blocks.append(cls._make_block(cfg, family, comm, getter(attn), getter(mlp),
                                              cvt(st.input_layernorm.weight), cvt(st.pre_ff_layernorm.weight),
                                              len(blocks)))
        if family == "zamba2" and len(blocks) != min(int(cfg.num_mem_blocks), len(linears)):
            raise ValueError(f"found {len(blocks)} distinct shared blocks, config.num_mem_blocks="
                             f"{cfg.num_mem_blocks}")
        emb = model.model.embed_tokens.weight
        lm = model.get_output_embeddings().weight
        tied = lm is emb or lm.data_ptr() == emb.data_ptr()
        inv_freq, scale = None, 1.0
        if family == "zamba2" and cfg.use_mem_rope:
            rot = model.model.rotary_emb
            inv_freq, scale = rot.inv_freq.detach().to(device), float(rot.attention_scaling)
        runner = cls(cfg, comm, family, cvt(emb), norms, mixers, linears, blocks, cvt(model.model.final_layernorm.weight),
                     None if tied else cvt(lm), inv_freq, scale)
        return check_mixers_on(runner, device, dtype)

    # ------------------------------------------------------------------ states

    def state_specs(self) -> dict:
        conv = tuple(self.mixers[0].state_shapes()["conv"])
        ssm = tuple(self.mixers[0].state_shapes()["ssm"])
        kv = (len(self.hybrid), self.max_len + 1, self.kv_local, self.head_dim)
        return {"conv": StateSpec((self.n_layers,) + conv, self.dtype),
                "ssm": StateSpec((self.n_layers,) + ssm, torch.float32),
                "k": StateSpec(kv, self.dtype), "v": StateSpec(kv, self.dtype),
                "len": StateSpec((1,), torch.int64)}

    # ------------------------------------------------------------------ forward

    def _forward(self, ids, seq_lens, state_idx, pool: SlotPool, decode: bool, kv_len: Optional[int] = None):
        """ids (B, L). Returns the final hidden states (B, L, H) before the final norm; updates every state.
        kv_len: keys attended, >= every live row's position + 1 (decode: default max_len; prefill: default the
        longest row's, read from the device)."""
        B, L = ids.shape
        dev = ids.device
        eps = self.eps
        h = F.embedding(ids, self.embed)
        emb = h
        valid = state_idx >= 0
        slot = state_idx.clamp(min=0).to(torch.long)
        lens = pool.layer("len", 0)  # (nslots,) int64
        start = torch.where(valid, lens.index_select(0, slot), torch.zeros_like(slot))  # (B,)
        t = torch.arange(L, device=dev)
        pos = start[:, None] + t  # (B, L) absolute positions
        if decode:
            ok = valid[:, None].expand(B, L)
            T = min(int(kv_len), self.max_len) if kv_len else self.max_len  # static: graph-capturable
            new = valid.to(torch.long)
            idx32, n_keys = state_idx.to(torch.int32), (start + 1).to(torch.int32)
        else:
            sl = seq_lens.to(torch.long)
            ok = (t[None, :] < sl[:, None]) & valid[:, None]
            new = torch.where(valid, sl, torch.zeros_like(sl))
            # the caller's bound (static: graph-capturable), else the longest row's (one host sync)
            T = min(int(kv_len), self.max_len) if kv_len else max(1, int((start + new).max()))
        # padding (and, defensively, a position past max_len, which the engine's length check rules out) -> the
        # scratch column: an index past the K/V would be a device-side error inside a graph
        wpos = torch.where(ok & (pos < self.max_len), pos, torch.full_like(pos, self.max_len))
        wslot = slot[:, None].expand(B, L)
        allowed = None if (decode and self.attn_op) else torch.arange(T, device=dev)[None, None, :] <= pos[:, :, None]
        cos = sin = None
        if self.inv_freq is not None:
            freqs = pos[..., None].float() * self.inv_freq
            e = torch.cat((freqs, freqs), dim=-1)
            cos = (e.cos() * self.rope_scale).to(h.dtype)[:, :, None, :]
            sin = (e.sin() * self.rope_scale).to(h.dtype)[:, :, None, :]
        sdpa = (not decode) and h.is_cuda and h.dtype != torch.float32
        kf = self._k if decode or self._graphing or B * L >= FUSED_PREFILL_MIN_TOKENS else self._plain
        fused_in = decode and self.decode_in_applies(B)
        # state_early (ops.selective_state_update's launch hint) holds in a decode step: its first kernel, the
        # embedding gather, is an ordinary launch, and only layer i's state update writes layer i's SSM state
        fuse_dt = ({"fuse_dt": True, "state_early": True} if decode and self.decode_dt_fused(B)
                   else {"state_early": True} if decode and not self.v2 else {})
        out = None  # the previous layer's output, added to h by the next layer's norm
        for i, mixer in enumerate(self.mixers):
            j = self.hybrid_index.get(i)
            if j is not None:
                blk = self.blocks[j % self.n_mem_blocks]
                h, x = kf["add_cat_norm"](h, out, emb, blk.in_norm, eps)
                q, k, v = blk.qkv(x, i)
                if cos is not None:
                    q, k = kf["rope"](q, k, cos, sin)
                kc, vc = pool.layer("k", j), pool.layer("v", j)  # (nslots, max_len + 1, kvl, hd)
                kc.index_put_((wslot, wpos), k)
                vc.index_put_((wslot, wpos), v)
                if decode and self.attn_op:  # each row: its slot's first pos + 1 keys, read in place
                    a = ops.decode_attention(q[:, 0], kc[:, :self.max_len], vc[:, :self.max_len], idx32, n_keys,
                                             self.scaling).reshape(B, 1, -1)
                else:
                    a = attend(q, kc[slot, :T], vc[slot, :T], allowed, self.scaling, sdpa)
                tr = blk.ffn(kf["_rms_norm"](blk.attn.out(a), blk.ff_norm, eps), i)
                t = ops.linear(tr, self.linears[j])
                if fused_in:  # the mixer's input is norm(h + t); h itself stays as it is
                    _, xc, z = self._decode_in(h, t, i, pool, idx32)
                else:
                    x = kf["sum_norm"](h, t, self.norms[i], eps)
            elif fused_in:
                h, xc, z = self._decode_in(h, out, i, pool, idx32)
            else:
                h, x = kf["add_norm"](h, out, self.norms[i], eps)
            conv, ssm = pool.layer("conv", i), pool.layer("ssm", i)
            if fused_in and self.v2:  # z = [gate | dt]
                out = mixer.step_tail(xc, z[:, :mixer.d_local], z[:, mixer.d_local:], ssm, idx32)[:, None]
            elif fused_in:
                out = mixer.step_tail(xc, z, ssm, idx32, **fuse_dt)[:, None]
            elif decode:
                out = mixer.mix_step(x, conv, ssm, state_idx, **fuse_dt)
            else:
                out = mixer.mix(x, conv, ssm, state_idx, seq_lens, True)
        h = h + out
        lens.index_add_(0, slot, new)  # padding rows add 0
        return h

    def _decode_in(self, h, add, i: int, pool: SlotPool, idx32):
        """ops.mamba_decode_in for layer i's mixer: h (B, 1, H) + add (or None) -> (h + add (B, 1, H), xc, z)."""
        mx = self.mixers[i]
        r, xc, z = ops.mamba_decode_in(h[:, 0], None if add is None else add[:, 0], self.norms[i], mx.in_proj_weight,
                                       mx.in_proj_bias, mx.conv_weight, mx.conv_bias, pool.layer("conv", i), idx32,
                                       self.eps, False, mx.d_local if self.v2 else 0)
        return r[:, None], xc, z

    @torch.no_grad()
    def prefill(self, ids, seq_lens, start, state_idx, pool: SlotPool, logit_rows: Optional[torch.Tensor],
                saves: Optional[tuple] = None, kv_len: Optional[int] = None):
        h = self._forward(ids, seq_lens, state_idx, pool, decode=False, kv_len=kv_len)
        if logit_rows is None or logit_rows.numel() == 0:
            return None
        last = (seq_lens.to(torch.long) - 1).index_select(0, logit_rows)
        x = _rms_norm(h[logit_rows, last], self.norm_f, self.eps)
        return ops.lm_head(x, self.head_weight())

    @torch.no_grad()
    def decode(self, ids, pos, state_idx, pool: SlotPool, kv_len: Optional[int] = None) -> torch.Tensor:
        """kv_len: attend over the first kv_len keys of each slot (>= every live row's position + 1; a bucket of it
        under CUDA graphs), instead of all max_len."""
        h = self._forward(ids[:, None], None, state_idx, pool, decode=True, kv_len=kv_len)
        x = self._k["_rms_norm"](h[:, 0], self.norm_f, self.eps)
        return ops.lm_head(x, self.head_weight())
