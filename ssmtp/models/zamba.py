"""Tensor-parallel Zamba (v1) modules, for HF ZambaMambaMixer, ZambaAttention and ZambaMLP.

Multi-head Mamba mixer (d = mamba_expand * H channels, nh = n_mamba_heads heads of hd = d / nh channels, R = dt rank,
N = d_state). Every rank owns the contiguous channels [r*dl, (r+1)*dl) with dl = d / tp, which is either whole heads
(nh % tp == 0) or one slice of a head (tp % nh == 0: tp / nh ranks per head):
  in_proj        (2d, H)        INTERLEAVED rows (2i = x_i, 2i+1 = z_i): rows [2*lo, 2*hi) hold x and z of this rank's
                                channels; they are de-interleaved once at load -> (2*dl, H) = [x_r ; z_r]
  conv1d         (d, 1, K)      channels sliced -> (dl, K)
  x_proj_weight  (nh, R+2N, hd) per head -> (g, R+2N, cpg): g local head pieces of cpg = dl / g channels each.
                                Whole heads need no collective. A split head's [dt, B, C] is a partial sum over this
                                rank's channels: each rank writes it into its head's row of a zero-filled
                                (tokens, nh, R+2N) buffer and one all-reduce over the TP group completes every head
  dt_proj_weight (nh, hd, R)    column-parallel per head -> (g, cpg, R); dt_proj_bias (nh, hd) -> (dl,)
  A_log, D       (nh, hd, N), (nh, hd) -> (dl, N), (dl,);  A = -exp(A_log) kept in fp32
  out_proj       (H, d)         row-parallel: columns sliced, all-reduce, bias added once after the reduction
The scan op takes the local head pieces as groups: B, C are (batch, g, N, L) and channel c uses group c / cpg.
Conv and SSM states hold this rank's channels only; in HF's cache the SSM state has HF's per-head layout restricted to
this rank, (batch, g, cpg, N) (HF: (batch, nh, hd, N)).

Shared transformer block (one set of weights used by every hybrid layer; its input is cat(hidden, embeddings), 2H):
  q/k/v_proj     column-parallel by attention heads (heads and kv heads must be divisible by tp); the KV cache holds
                 this rank's heads only (HF's DynamicCache stores whatever k/v the layer gives it)
  o_proj         row-parallel + all-reduce
  MLP            gate/up column-parallel, down row-parallel + all-reduce. intermediate_size need not divide by tp:
                 ranks get contiguous slices whose sizes differ by at most one (the sum over slices is the same sum)
  norms, the per-hybrid-layer `linear`, embeddings, lm_head: replicated (HF's own modules are kept)
HF ties the shared block's parameters across hybrid layers (distinct module objects, the same Parameters); the swap
table shards modules holding the same parameters once, so each rank keeps one copy, not one per use.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn

from .. import ops
from ..parallel import shard
from ..parallel.comm import Communicator
from .mamba import hf_cache_arg, hf_cache_forward


def _mask(h: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
    if attention_mask is None:
        return h
    return (h * attention_mask[:, :, None]).to(h.dtype)


def uneven_range(total: int, tp: int, rank: int) -> tuple[int, int]:
    """Rank's contiguous [lo, hi) of `total` items split over tp ranks as evenly as possible (the first total % tp
    ranks get one more)."""
    base, extra = divmod(total, tp)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def mamba_head_layout(d: int, nh: int, tp: int) -> tuple[int, int]:
    """(dl, g): channels per rank and head pieces per rank for d channels in nh heads over tp ranks. ValueError naming
    the sizes unless each rank's channels are whole heads or one equal slice of a head."""
    if d % nh != 0:
        raise ValueError(f"mamba intermediate size {d} is not divisible by n_mamba_heads={nh}")
    hd = d // nh
    if nh % tp == 0:
        return d // tp, nh // tp
    if tp % nh == 0 and hd % (tp // nh) == 0:
        return d // tp, 1
    raise ValueError(f"tensor parallel size {tp} cannot shard n_mamba_heads={nh} (head dim {hd}): need "
                     f"n_mamba_heads % tp == 0, or tp % n_mamba_heads == 0 with the head dim divisible by "
                     f"tp / n_mamba_heads")


def _act(name: str):
    from transformers.activations import ACT2FN

    return ACT2FN[name]


class TPZambaMambaMixer(nn.Module):
    """One rank's shard of a Zamba multi-head Mamba mixer."""

    def __init__(self, config, layer_idx: int, comm: Communicator, get: Callable[[str], object]):
        """Build this rank's shard. ``get(name)`` returns the full tensor named as in HF's ZambaMambaMixer
        ("in_proj.weight", "x_proj_weight", ...) or anything sliceable like one: only this rank's parts are read."""
        super().__init__()
        tp, r = comm.world_size, comm.rank
        self.comm = comm
        self.layer_idx = layer_idx
        self.hidden_size = config.hidden_size
        self.intermediate_size = d = config.mamba_expand * config.hidden_size
        self.n_mamba_heads = nh = config.n_mamba_heads
        self.mamba_head_dim = hd = d // nh
        self.ssm_state_size = N = config.mamba_d_state
        self.time_step_rank = R = int(config.mamba_dt_rank)
        self.conv_kernel_size = config.mamba_d_conv
        if config.hidden_mamba_act not in ("silu", "swish"):
            raise ValueError(f"hidden_mamba_act={config.hidden_mamba_act!r} is not supported; ssmtp fuses SiLU into "
                             f"the conv")
        self.d_local, self.n_groups = dl, g = mamba_head_layout(d, nh, tp)
        self.group_size = cpg = dl // g
        lo, hi = r * dl, (r + 1) * dl
        self.head0 = lo // hd  # first global head this rank touches
        self.split_heads = nh % tp != 0  # heads span ranks: [dt, B, C] need an all-reduce
        # (head, first channel in head, last channel in head) of each local group
        pieces = [(h, max(lo, h * hd) - h * hd, min(hi, (h + 1) * hd) - h * hd)
                  for h in range(self.head0, self.head0 + g)]

        blk = get("in_proj.weight")[2 * lo:2 * hi]  # interleaved x/z rows of this rank's channels
        self.in_proj_weight = shard.param(torch.cat([blk[0::2], blk[1::2]]))
        self.in_proj_bias = None
        if config.mamba_proj_bias:
            b = get("in_proj.bias")[2 * lo:2 * hi]
            self.in_proj_bias = shard.param(torch.cat([b[0::2], b[1::2]]))
        self.conv_weight = shard.param(get("conv1d.weight")[lo:hi][:, 0, :])
        self.conv_bias = shard.param(get("conv1d.bias")[lo:hi]) if config.mamba_conv_bias else None

        def per_head(name: str, channel_dim: int) -> torch.Tensor:
            w = get(name)
            parts = []
            for h, a, b in pieces:
                t = w[h:h + 1][0]
                parts.append(t[:, a:b] if channel_dim == 1 else t[a:b])
            return torch.stack(parts)

        self.x_proj_weight = shard.param(per_head("x_proj_weight", 1))  # (g, R+2N, cpg)
        if tuple(self.x_proj_weight.shape) != (g, R + 2 * N, cpg):
            raise ValueError(f"x_proj_weight shard has shape {tuple(self.x_proj_weight.shape)}, expected "
                             f"{(g, R + 2 * N, cpg)} (mamba_dt_rank={R}, mamba_d_state={N})")
        self.dt_proj_weight = shard.param(per_head("dt_proj_weight", 0))  # (g, cpg, R)
        self.dt_bias = shard.param(per_head("dt_proj_bias", 0).reshape(dl).float())
        self.register_buffer("A", -torch.exp(per_head("A_log", 0).reshape(dl, N).detach().float()).contiguous())
        self.D = shard.param(per_head("D", 0).reshape(dl).float())
        self.out_proj_weight = shard.param(get("out_proj.weight")[:, lo:hi])
        self.out_proj_bias = shard.param(get("out_proj.bias")[:]) if config.mamba_proj_bias else None

    @classmethod
    def from_hf(cls, hf_mixer: nn.Module, comm: Communicator) -> "TPZambaMambaMixer":
        """Shard an instantiated HF ZambaMambaMixer."""
        get = shard.hf_params(hf_mixer)
        return cls(hf_mixer.config, hf_mixer.layer_idx, comm, get)

    def state_shapes(self) -> dict:
        """Per-slot shapes of this rank's states, for a slot pool: conv (dl, K) in the model dtype, ssm (dl, N) fp32."""
        return {"conv": (self.d_local, self.conv_kernel_size), "ssm": (self.d_local, self.ssm_state_size)}

    # ------------------------------------------------------------------ shared pieces

    def _dt_B_C(self, xc_tok: torch.Tensor, project_dt: bool = True):
        """xc_tok (B, L, dl) conv output -> dt (B, L, dl) before bias (with project_dt; else the (B, L, g, R) low-rank
        dt per head piece, which the fused state update projects itself); B, C (B, L, g, N)."""
        R, N, g = self.time_step_rank, self.ssm_state_size, self.n_groups
        Bsz, L, _ = xc_tok.shape
        if L == 1:
            proj = self._x_proj_token(xc_tok.reshape(Bsz, self.d_local)).view(Bsz, 1, g, R + 2 * N)
        else:
            xg = xc_tok.reshape(Bsz, L, g, self.group_size)
            proj = torch.einsum("blgc,grc->blgr", xg, self.x_proj_weight)  # (B, L, g, R+2N)
        if self.split_heads:
            # this rank holds part of one head (g == 1): zero-padded partials of every head, summed over all ranks
            full = proj.new_zeros(Bsz, L, self.n_mamba_heads, R + 2 * N)
            full[:, :, self.head0] = proj[:, :, 0]
            proj = self.comm.all_reduce(full)[:, :, self.head0:self.head0 + 1]
        dt, B, C = torch.split(proj, [R, N, N], dim=-1)
        if project_dt:
            dt = torch.einsum("blgr,gcr->blgc", dt, self.dt_proj_weight).reshape(Bsz, L, self.d_local)
        return dt, B, C

    def _x_proj_token(self, xc: torch.Tensor) -> torch.Tensor:
        """x_proj of one token per sequence, xc (B, dl) -> (B, g, R+2N), as ONE ops.linear (the decode GEMV at small
        batch): the B x g head pieces of xc are its rows, every head's x_proj rows its weight rows, so the weight is
        read once, and the per-head projections are the product's diagonal blocks (a strided view, no copy). The
        off-diagonal blocks cost g - 1 more dot products per weight row read, nothing in bytes. Measured on H200
        with dt_proj fused, against the einsum (a cuBLAS batched GEMM): ZAMBA_DT_FUSED_MAX_BATCH in
        ssmtp/engine/hybrid.py."""
        Bsz, g, cpg = xc.shape[0], self.n_groups, self.group_size
        n = self.x_proj_weight.shape[1]
        out = ops.linear(xc.reshape(Bsz * g, cpg), self.x_proj_weight.view(g * n, cpg))  # (B g, g n)
        return out.as_strided((Bsz, g, n), (g * g * n, (g + 1) * n, 1), out.storage_offset())

    def _out(self, y_tok: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        out = self.comm.all_reduce(ops.linear(y_tok.to(dtype), self.out_proj_weight))
        return out + self.out_proj_bias if self.out_proj_bias is not None else out

    # ------------------------------------------------------------------ cache-agnostic entry points

    def mix(self, h: torch.Tensor, conv_state: Optional[torch.Tensor] = None, ssm_state: Optional[torch.Tensor] = None,
            state_idx: Optional[torch.Tensor] = None, seq_lens: Optional[torch.Tensor] = None,
            load_state: bool = False, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Prefill (any length). h (B, L, H). States (slots, dl, K) and (slots, dl, N) fp32 are read when load_state and
        written with the final states; state_idx (B,) int32 picks slots; seq_lens (B,) int32 for right padding."""
        dl = self.d_local
        h = _mask(h, attention_mask)
        xz = ops.linear(h, self.in_proj_weight, self.in_proj_bias)  # (B, L, 2dl)
        x = xz[..., :dl].transpose(1, 2)  # (B, dl, L) channel-contiguous views
        z = xz[..., dl:].transpose(1, 2)
        xc = ops.causal_conv1d(x, self.conv_weight, self.conv_bias, conv_state, state_idx, seq_lens, True, load_state)
        xc_tok = _mask(xc.transpose(1, 2), attention_mask)
        dt, B, C = self._dt_B_C(xc_tok)
        y = ops.selective_scan(xc_tok.transpose(1, 2), dt.transpose(1, 2), self.A, B.permute(0, 2, 3, 1),
                               C.permute(0, 2, 3, 1), self.D, z, self.dt_bias, ssm_state, state_idx, seq_lens, True,
                               load_state)
        return self._out(y.transpose(1, 2), h.dtype)

    def mix_step(self, h: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor,
                 state_idx: Optional[torch.Tensor] = None, fuse_dt: bool = False,
                 state_early: bool = False) -> torch.Tensor:
        """One decode token per sequence. h (B, 1, H); states (slots, dl, K), (slots, dl, N) updated in place.
        fuse_dt: dt_proj inside the state update (see step_tail); state_early: ops.selective_state_update's launch
        hint (the engine's decode step only)."""
        dl = self.d_local
        xz = ops.linear(h, self.in_proj_weight, self.in_proj_bias)  # (B, 1, 2dl)
        x = xz[..., :dl].transpose(1, 2)
        xc = ops.causal_conv1d(x, self.conv_weight, self.conv_bias, conv_state, state_idx, None, True, True)
        return self.step_tail(xc[..., 0], xz[:, 0, dl:], ssm_state, state_idx, fuse_dt, state_early)[:, None]

    def step_tail(self, xc: torch.Tensor, z: torch.Tensor, ssm_state: torch.Tensor,
                  state_idx: Optional[torch.Tensor], fuse_dt: bool = False, state_early: bool = False) -> torch.Tensor:
        """A decode step after the conv (xc, the conv output, and z, the gate, (B, dl); from mix_step or from
        ops.mamba_decode_in): x_proj per head (+ all-reduce when heads span ranks), the state update, out_proj
        (+ all-reduce). Returns (B, H). fuse_dt: the state update applies dt_proj itself to each head piece's
        low-rank dt (one kernel instead of a per-head GEMM and the update; the engine's choice at small batch on
        CUDA, as for Mamba-1)."""
        dt, B, C = self._dt_B_C(xc[:, None], project_dt=not fuse_dt)
        if fuse_dt:
            return self._out(ops.selective_state_update(xc, dt[:, 0], self.A, B[:, 0], C[:, 0], self.D, z,
                                                        self.dt_bias, ssm_state, state_idx, True,
                                                        self.dt_proj_weight.view(self.d_local, -1), state_early),
                              xc.dtype)
        y = ops.selective_state_update(xc, dt[:, 0], self.A, B[:, 0], C[:, 0], self.D, z, self.dt_bias, ssm_state,
                                       state_idx, True)
        return self._out(y, xc.dtype)

    # ------------------------------------------------------------------ HF-compatible forward

    def forward(self, hidden_states: torch.Tensor, cache_params=None, attention_mask=None, **kwargs):
        return hf_cache_forward(self, hidden_states, hf_cache_arg(cache_params, kwargs), attention_mask, self.d_local,
                                (self.n_groups, self.group_size))

    def extra_repr(self) -> str:
        return (f"d_inner={self.intermediate_size}, n_mamba_heads={self.n_mamba_heads}, d_local={self.d_local}, "
                f"local_head_pieces={self.n_groups}, split_heads={self.split_heads}, tp={self.comm.world_size}, "
                f"rank={self.comm.rank}")


class TPZambaAttention(nn.Module):
    """One rank's attention heads of Zamba's shared attention (input 2H, scaling (head_dim/2)^-0.5, no RoPE)."""

    def __init__(self, config, comm: Communicator, get: Callable[[str], object], layer_idx: Optional[int] = None):
        super().__init__()
        tp, r = comm.world_size, comm.rank
        self.comm = comm
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = hd = config.attention_head_dim
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_heads_local = hl = shard.split_size(self.num_heads, tp, "num_attention_heads")
        self.num_kv_local = kvl = shard.split_size(self.num_key_value_heads, tp, "num_key_value_heads")
        self.num_key_value_groups = hl // kvl
        self.scaling = (hd / 2) ** -0.5
        self.is_causal = True
        self.attention_dropout = config.attention_dropout
        self.q_proj_weight = shard.param(get("q_proj.weight")[r * hl * hd:(r + 1) * hl * hd])
        self.k_proj_weight = shard.param(get("k_proj.weight")[r * kvl * hd:(r + 1) * kvl * hd])
        self.v_proj_weight = shard.param(get("v_proj.weight")[r * kvl * hd:(r + 1) * kvl * hd])
        self.o_proj_weight = shard.param(get("o_proj.weight")[:, r * hl * hd:(r + 1) * hl * hd])

    @classmethod
    def from_hf(cls, hf_attn: nn.Module, comm: Communicator) -> "TPZambaAttention":
        get = shard.hf_params(hf_attn)
        return cls(hf_attn.config, comm, get, getattr(hf_attn, "layer_idx", None))

    def qkv(self, x: torch.Tensor, layer_idx: Optional[int] = None):
        """The engine's entry point: x (B, L, 2H) normed block input -> q (B, L, heads_local, hd), k and v
        (B, L, kv_local, hd) of this rank's heads (no collective)."""
        B, L = x.shape[:2]
        hd = self.head_dim
        return tuple(ops.linear(x, w).view(B, L, -1, hd) for w in (self.q_proj_weight, self.k_proj_weight,
                                                                    self.v_proj_weight))

    def out(self, attn: torch.Tensor) -> torch.Tensor:
        """attn (B, L, heads_local * hd) -> o_proj, all-reduced: (B, L, H) on every rank."""
        return self.comm.all_reduce(ops.linear(attn, self.o_proj_weight))

    def forward(self, hidden_states: torch.Tensor, layer_idx: int, attention_mask: Optional[torch.Tensor],
                past_key_values=None, **kwargs):
        from transformers.models.zamba.modeling_zamba import eager_attention_forward

        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        q = ops.linear(hidden_states, self.q_proj_weight).view(hidden_shape).transpose(1, 2)
        k = ops.linear(hidden_states, self.k_proj_weight).view(hidden_shape).transpose(1, 2)
        v = ops.linear(hidden_states, self.v_proj_weight).view(hidden_shape).transpose(1, 2)
        return attend(self, q, k, v, attention_mask, hf_cache_arg(past_key_values, kwargs), layer_idx,
                      eager_attention_forward, **kwargs)

    def extra_repr(self) -> str:
        return (f"heads={self.num_heads_local}/{self.num_heads}, kv_heads={self.num_kv_local}/"
                f"{self.num_key_value_heads}, head_dim={self.head_dim}, tp={self.comm.world_size}")


def attend(mod: nn.Module, q, k, v, attention_mask, past_key_values, layer_idx: int, eager: Callable, **kwargs):
    """The HF attention layer's tail on this rank's heads: the cache updated with k, v; HF's attention function for
    the configured implementation (`eager` for "eager"); then mod.out (o_proj, all-reduced). q, k, v (B, heads, L, hd).
    Returns (out (B, L, H), attention weights or None)."""
    if past_key_values is not None:
        k, v = past_key_values.update(k, v, layer_idx)
    fn = _attention_interface(mod.config._attn_implementation, eager)
    out, weights = fn(mod, q, k, v, attention_mask, dropout=0.0 if not mod.training else mod.attention_dropout,
                      scaling=mod.scaling, **kwargs)
    return mod.out(out.reshape(*out.shape[:2], -1).contiguous()), weights  # HF returns (B, L, heads, hd)


def _attention_interface(impl: Optional[str], default):
    """HF's attention function for `impl` ("eager" -> the model's own eager function)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if hasattr(ALL_ATTENTION_FUNCTIONS, "get_interface"):
        return ALL_ATTENTION_FUNCTIONS.get_interface(impl, default)
    return default if impl in (None, "eager") else ALL_ATTENTION_FUNCTIONS[impl]


class TPGatedMLP(nn.Module):
    """act(x W_gate^T) * (x W_up^T) W_down^T with the intermediate dimension split (unevenly if need be) over ranks.
    ``gate_up`` is either two names (gate, up) of (I, H) weights or one name of a fused (2I, H) [gate ; up] weight."""

    def __init__(self, config, comm: Communicator, get: Callable[[str], object], intermediate_size: int,
                 gate_up: tuple, down: str, act: str):
        super().__init__()
        tp, r = comm.world_size, comm.rank
        self.comm = comm
        self.intermediate_size = inter = intermediate_size
        lo, hi = uneven_range(inter, tp, r)
        self.lo, self.hi = lo, hi
        if len(gate_up) == 2:
            gate, up = get(gate_up[0])[lo:hi], get(gate_up[1])[lo:hi]
        else:
            w = get(gate_up[0])
            gate, up = w[lo:hi], w[inter + lo:inter + hi]
        self.gate_up_weight = shard.param(torch.cat([gate, up]))  # (2*il, H) = [gate_r ; up_r]
        self.down_weight = shard.param(get(down)[:, lo:hi])
        self.act_fn = _act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = ops.linear(x, self.gate_up_weight).chunk(2, dim=-1)
        return self.comm.all_reduce(ops.linear(self.act_fn(gate) * up, self.down_weight))

    def extra_repr(self) -> str:
        return f"intermediate=[{self.lo}, {self.hi}) of {self.intermediate_size}, tp={self.comm.world_size}"


def zamba_mlp_from_hf(hf_mlp: nn.Module, comm: Communicator) -> TPGatedMLP:
    get = shard.hf_params(hf_mlp)
    return TPGatedMLP(hf_mlp.config, comm, get, hf_mlp.config.intermediate_size,
                      ("gate_proj.weight", "up_proj.weight"), "down_proj.weight", hf_mlp.config.hidden_act)
