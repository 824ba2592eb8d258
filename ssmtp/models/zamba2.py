"""Tensor-parallel Zamba2 modules, for HF Zamba2MambaMixer, Zamba2Attention and Zamba2MLP.

Mamba-2 mixer (d = mamba_expand * H, nh heads of hd = d / nh channels, G groups of B/C with N states each, nh % G == 0).
Every rank owns nhl = nh / tp whole heads = the channels [r*dl, (r+1)*dl), dl = d / tp, and the B/C groups those heads
read: its own G / tp groups when G % tp == 0, else (tp % G == 0) the one group its heads sit in, replicated on the
tp / G ranks sharing it (the 2.7B model has G = 1: B and C are replicated on every rank).
  in_proj  (d + d + 2GN + nh, H) = [gate ; x ; B ; C ; dt] rows -> local [gate_r ; x_r ; B_g ; C_g ; dt_r]
           (dl + dl + 2*Gl*N + nhl rows, Gl = local groups); conv1d channels [x ; B ; C] likewise
  dt_bias, A_log, D (nh,)  sliced by heads; A and D expanded to channels for the scan ops
  norm     gated RMSNorm (y * silu(gate), RMS over groups of d/G channels, * weight): weight sliced. A group that spans
           ranks (tp > G) needs the sum of squares over all its channels: every rank writes its partial sum into its
           group's slot of a zero-filled (tokens, G) buffer and one all-reduce completes them all
  out_proj row-parallel, all-reduce, bias added once
The scan: Mamba-2's SSD recurrence with one scalar A and one dt per head, H = exp(dt*A) H + dt x B^T, y = H C + D x.
  "ssd"        ssmtp::ssd_scan (chunked SSD, chunk_size from the config, as HF evaluates it) and ssmtp::ssd_step:
               per-head A/dt/D, x viewed as (.., nhl, hd). C CPU ops; ssd_scan also on CUDA (tensor cores, f16/bf16,
               head_dim % 32 == 0, d_state % 16 == 0 and <= 128: ops.ssd_cuda_supports), ssd_step CPU only.
  "selective"  the Mamba-1 ops ssmtp::selective_scan / selective_state_update compute the same recurrence per channel
               (A, dt, D expanded over each head's hd channels; B/C as groups: channel c uses group c / (dl / Gl));
               they have CUDA kernels.
  "auto" (default) picks "ssd" for CPU tensors and "selective" on CUDA (logged once): on an H200 the selective scan
               was faster than the SSD kernel on 8 of 10 zamba2-2.7b prefill shapes (benchmarks/bench_ops.py
               bench_ssd; README). Both are tested on the CPU and on the GPU.
HF's quirks are reproduced: in prefill dt = clamp(softplus(dt + dt_bias), min=time_step_min); in decode
dt = softplus(dt + dt_bias), no clamp. The scan runs without a gate: the gate goes through the norm (norm-after-gate).
SSM state per rank (batch, nhl, hd, N) fp32 (HF: (batch, nh, hd, N)), passed to mix/mix_step flattened as
(batch, dl, N); conv state (batch, dl + 2*Gl*N, K).

Shared transformer blocks (num_mem_blocks of them, each tied across the hybrid layers that use it):
  attention  q/k/v column-parallel by heads, o_proj row-parallel + all-reduce, KV cache of local heads, RoPE per head.
             Per-hybrid-layer LoRA-style adapters Sequential(Linear(2H, r), Linear(r, 2H)) added to q/k/v: the
             down-projection is replicated (its input is the replicated block input, so no all-gather is needed),
             the up-projection is sliced like q/k/v. An Identity adapter adds the input itself, as in HF.
  MLP        fused gate_up (2I, H) column-parallel (gate and up rows sliced alike, uneven split allowed), its adapters
             likewise, down_proj row-parallel + all-reduce.
  norms, per-hybrid-layer `linear`, embeddings, lm_head: replicated (HF's own modules).
"""
from __future__ import annotations

import logging
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from ..parallel import shard
from ..parallel.comm import Communicator
from .mamba import hf_cache_arg, hf_cache_forward
from .zamba import _act, _mask, attend, uneven_range

log = logging.getLogger("ssmtp")
_LOGGED: set = set()
SCAN_IMPLS = ("auto", "ssd", "selective")


def group_layout(nh: int, G: int, tp: int) -> tuple[int, bool]:
    """(local groups, split) for G B/C groups over tp ranks owning nh / tp heads each; ValueError naming the sizes
    unless the heads split evenly and every rank's heads fall in whole local groups or in one shared group."""
    if nh % G != 0:
        raise ValueError(f"n_mamba_heads={nh} is not divisible by mamba_ngroups={G}")
    shard.split_size(nh, tp, "n_mamba_heads")
    if G % tp == 0:
        return G // tp, False
    if tp % G == 0:
        return 1, True
    raise ValueError(f"tensor parallel size {tp} cannot shard mamba_ngroups={G}: need mamba_ngroups % tp == 0 or "
                     f"tp % mamba_ngroups == 0")


def gated_rms_norm(y: torch.Tensor, gate: torch.Tensor, w: torch.Tensor, group: int, eps: float) -> torch.Tensor:
    """HF's Zamba2RMSNormGated over groups of `group` channels that all lie on this rank: y, gate (B, L, dl)."""
    Bsz, L, dl = y.shape
    v = y.float() * F.silu(gate.float())
    vg = v.view(Bsz, L, -1, group)
    ss = vg.pow(2).sum(-1)
    vg = vg * torch.rsqrt(ss / group + eps)[..., None]
    return w * vg.view(Bsz, L, dl).to(y.dtype)


class TPZamba2MambaMixer(nn.Module):
    """One rank's shard of a Zamba2 (Mamba-2) mixer."""

    def __init__(self, config, layer_idx: int, comm: Communicator, get: Callable[[str], object],
                 norm_eps: float = 1e-5, scan_impl: str = "auto"):
        """``get(name)`` returns the full tensor named as in HF's Zamba2MambaMixer ("in_proj.weight", "A_log", ...)
        or anything sliceable like one. ``norm_eps``: the gated norm's epsilon (HF hard-codes 1e-5). ``scan_impl``:
        "auto", "ssd" or "selective" (see the module docstring); the attribute may be changed later."""
        super().__init__()
        tp, r = comm.world_size, comm.rank
        self.comm = comm
        self.layer_idx = layer_idx
        self.hidden_size = config.hidden_size
        self.intermediate_size = d = int(config.mamba_expand * config.hidden_size)
        self.num_heads = nh = config.n_mamba_heads
        self.head_dim = hd = d // nh
        self.n_groups = G = config.mamba_ngroups
        self.ssm_state_size = N = config.mamba_d_state
        self.conv_kernel_size = config.mamba_d_conv
        self.time_step_min = float(config.time_step_min)
        self.chunk_size = int(config.chunk_size)
        if scan_impl not in SCAN_IMPLS:
            raise ValueError(f"scan_impl={scan_impl!r}; expected one of {SCAN_IMPLS}")
        self.scan_impl = scan_impl
        self.norm_eps = float(norm_eps)
        self.n_groups_local, self.split_groups = Gl, split = group_layout(nh, G, tp)
        self.heads_local = nhl = nh // tp
        self.d_local = dl = nhl * hd
        self.norm_group_size = d // G
        self.group0 = g0 = (r * Gl) if not split else r // (tp // G)
        lo, hi = r * dl, (r + 1) * dl
        GN = G * N
        bl, bh = g0 * N, (g0 + Gl) * N  # this rank's B (and C) rows inside the GN block

        def in_rows(t):
            return torch.cat([t[lo:hi], t[d + lo:d + hi], t[2 * d + bl:2 * d + bh], t[2 * d + GN + bl:2 * d + GN + bh],
                              t[2 * d + 2 * GN + r * nhl:2 * d + 2 * GN + (r + 1) * nhl]])

        def conv_rows(t):
            return torch.cat([t[lo:hi], t[d + bl:d + bh], t[d + GN + bl:d + GN + bh]])

        self.in_proj_weight = shard.param(in_rows(get("in_proj.weight")))
        self.in_proj_bias = shard.param(in_rows(get("in_proj.bias"))) if config.add_bias_linear else None
        self.conv_weight = shard.param(conv_rows(get("conv1d.weight"))[:, 0, :])
        self.conv_bias = shard.param(conv_rows(get("conv1d.bias")))  # HF's Mamba-2 conv always has a bias
        heads = slice(r * nhl, (r + 1) * nhl)
        self.dt_bias = shard.param(get("dt_bias")[heads].float())  # (nhl,)
        self.register_buffer("A_head", -torch.exp(get("A_log")[heads].detach().float()).contiguous())  # (nhl,)
        self.D_head = shard.param(get("D")[heads].float())  # (nhl,)
        # per-channel copies for the "selective" (Mamba-1) ops
        # (dl, 1): passed as a stride-0 (dl, N) view, which the CUDA kernels take as one A per channel (one exp per
        # channel and step instead of per state)
        self.register_buffer("A_ch", self.A_head.repeat_interleave(hd)[:, None].contiguous())
        self.register_buffer("dt_bias_ch", self.dt_bias.detach().repeat_interleave(hd))  # (dl,)
        self.register_buffer("D_ch", self.D_head.detach().repeat_interleave(hd))  # (dl,)
        self.norm_weight = shard.param(get("norm.weight")[lo:hi])
        # the gated norm's function (unless its groups span ranks), used in decode steps and in calls of at least
        # fused_min_tokens tokens: the engine's hybrid runner puts a torch.compile'd gated_rms_norm here
        self.gated_fn, self.fused_min_tokens = gated_rms_norm, 0
        self.out_proj_weight = shard.param(get("out_proj.weight")[:, lo:hi])
        self.out_proj_bias = shard.param(get("out_proj.bias")[:]) if config.add_bias_linear else None

    @classmethod
    def from_hf(cls, hf_mixer: nn.Module, comm: Communicator) -> "TPZamba2MambaMixer":
        get = shard.hf_params(hf_mixer)
        return cls(hf_mixer.config, hf_mixer.layer_idx, comm, get, norm_eps=hf_mixer.norm.variance_epsilon)

    # ------------------------------------------------------------------ shared pieces

    @property
    def conv_dim_local(self) -> int:
        return self.d_local + 2 * self.n_groups_local * self.ssm_state_size

    def state_shapes(self) -> dict:
        """Per-slot shapes of this rank's states, for a slot pool: conv (dl + 2 Gl N, K) in the model dtype, ssm
        (dl, N) fp32 (= (nhl, hd, N) flattened)."""
        return {"conv": (self.conv_dim_local, self.conv_kernel_size), "ssm": (self.d_local, self.ssm_state_size)}

    def _split(self, zxbcdt: torch.Tensor):
        dl, cd = self.d_local, self.conv_dim_local
        return zxbcdt[..., :dl], zxbcdt[..., dl:dl + cd], zxbcdt[..., dl + cd:]

    def _gated_norm(self, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """HF's Zamba2RMSNormGated on local channels: y, gate (B, L, dl)."""
        if not self.split_groups:
            if y.shape[1] == 1 and (not y.is_cuda or self.norm_group_size <= ops.GATED_NORM_CUDA_MAX_GROUP):
                # decode: ssmtp::gated_norm, one kernel (PDL on CUDA, see csrc/cuda/norm.cu): zamba2-2.7b graph step
                # B = 1 / 2 / 8 / 64 2.95-2.96 / 3.35-3.37 / 4.10-4.11 / 7.55-7.57 ms against 3.10-3.11 / 3.48 /
                # 4.18-4.20 / 7.60-7.61 with torch.compile's pair (H200,
                # benchmarks/results/gated-norm-h200-c8afe68.json)
                Bsz, _, dl = y.shape
                return ops.gated_norm(y.reshape(Bsz, dl), gate.reshape(Bsz, dl), self.norm_weight,
                                      self.norm_group_size, self.norm_eps).view(Bsz, 1, dl)
            fn = self.gated_fn
            if y.shape[1] > 1 and y.shape[0] * y.shape[1] < self.fused_min_tokens:
                fn = gated_rms_norm
            return fn(y, gate, self.norm_weight, self.norm_group_size, self.norm_eps)
        # this rank's channels are part of one group that spans ranks: its sum of squares is all-reduced
        Bsz, L, dl = y.shape
        v = y.float() * F.silu(gate.float())
        vg = v.view(Bsz, L, -1, dl)
        ss = vg.pow(2).sum(-1)  # (B, L, 1) this rank's part of the sum of squares
        full = ss.new_zeros(Bsz, L, self.n_groups)
        full[..., self.group0] = ss[..., 0]
        ss = self.comm.all_reduce(full)[..., self.group0:self.group0 + 1]
        vg = vg * torch.rsqrt(ss / self.norm_group_size + self.norm_eps)[..., None]
        return self.norm_weight * vg.view(Bsz, L, dl).to(y.dtype)

    def _out(self, y_tok: torch.Tensor, gate: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        y = self._gated_norm(y_tok, gate)
        out = self.comm.all_reduce(ops.linear(y.to(dtype), self.out_proj_weight))
        return out + self.out_proj_bias if self.out_proj_bias is not None else out

    def _use_ssd(self, t: torch.Tensor, step: bool = False) -> bool:
        if t.device.type == "cpu":
            return self.scan_impl != "selective"
        # off the CPU: the selective kernels, prefill and decode, unless scan_impl="ssd" asks for the SSD prefill
        # kernel (measured slower on most shapes) and it takes these shapes; ssmtp::ssd_step has no CUDA kernel, so
        # decode steps always run the selective state update (the same step)
        use = self.scan_impl == "ssd" and not step and ops.ssd_cuda_supports(t.dtype, self.head_dim,
                                                                            self.ssm_state_size)
        key = f"ssd-cuda-{self.scan_impl}-{step}-{use}"
        if key not in _LOGGED:
            _LOGGED.add(key)
            log.info("ssmtp Zamba2 on CUDA (scan_impl=%r): %s runs %s", self.scan_impl, "decode" if step else "prefill",
                     "ssmtp::ssd_scan (chunked SSD kernel)" if use else
                     "the Mamba-1 selective kernels (same recurrence, A/dt/D expanded per channel)")
        return use

    def _bc(self, xbc_tok: torch.Tensor):
        """xbc_tok (..., dl + 2 Gl N) -> x (..., dl), B, C (..., Gl, N)."""
        dl, Gl, N = self.d_local, self.n_groups_local, self.ssm_state_size
        x = xbc_tok[..., :dl]
        B = xbc_tok[..., dl:dl + Gl * N].unflatten(-1, (Gl, N))
        C = xbc_tok[..., dl + Gl * N:].unflatten(-1, (Gl, N))
        return x, B, C

    # ------------------------------------------------------------------ cache-agnostic entry points

    def mix(self, h: torch.Tensor, conv_state: Optional[torch.Tensor] = None, ssm_state: Optional[torch.Tensor] = None,
            state_idx: Optional[torch.Tensor] = None, seq_lens: Optional[torch.Tensor] = None,
            load_state: bool = False, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Prefill (any length). h (B, L, H). States (slots, dl + 2 Gl N, K) and (slots, dl, N) fp32 are read when
        load_state and written with the final states; state_idx (B,) int32 picks slots; seq_lens (B,) int32 for right
        padding."""
        Bsz, L, _ = h.shape
        h = _mask(h, attention_mask)
        gate, xbc, dt = self._split(ops.linear(h, self.in_proj_weight, self.in_proj_bias))
        xbc = ops.causal_conv1d(xbc.transpose(1, 2), self.conv_weight, self.conv_bias, conv_state, state_idx, seq_lens,
                                True, load_state)
        x, B, C = self._bc(_mask(xbc.transpose(1, 2), attention_mask))
        # HF's chunked path: dt = clamp(softplus(dt + bias), min=time_step_min)
        if self._use_ssd(x):
            nhl, hd, N = self.heads_local, self.head_dim, self.ssm_state_size
            st = None if ssm_state is None else ssm_state.view(-1, nhl, hd, N)
            y = ops.ssd_scan(x.unflatten(-1, (nhl, hd)), dt, self.A_head, B, C, self.D_head, None, self.dt_bias, st,
                             state_idx, seq_lens, True, load_state, self.chunk_size, self.time_step_min, float("inf"))
            return self._out(y.flatten(-2), gate, h.dtype)
        delta = F.softplus(dt.float() + self.dt_bias).clamp(min=self.time_step_min)
        delta = delta.repeat_interleave(self.head_dim, dim=-1).to(x.dtype)  # (B, L, dl), per head -> its channels
        A = self.A_ch.expand(-1, self.ssm_state_size)
        y = ops.selective_scan(x.transpose(1, 2), delta.transpose(1, 2), A, B.permute(0, 2, 3, 1),
                               C.permute(0, 2, 3, 1), self.D_ch, None, None, ssm_state, state_idx, seq_lens, False,
                               load_state)
        return self._out(y.transpose(1, 2), gate, h.dtype)

    def mix_step(self, h: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor,
                 state_idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One decode token per sequence. h (B, 1, H); states updated in place. dt is not clamped (as in HF)."""
        gate, xbc, dt = self._split(ops.linear(h, self.in_proj_weight, self.in_proj_bias))
        xbc = ops.causal_conv1d(xbc.transpose(1, 2), self.conv_weight, self.conv_bias, conv_state, state_idx, None,
                                True, True)
        return self.step_tail(xbc[:, :, 0], gate[:, 0], dt[:, 0], ssm_state, state_idx)[:, None]

    def step_tail(self, xbc: torch.Tensor, gate: torch.Tensor, dt: torch.Tensor, ssm_state: torch.Tensor,
                  state_idx: Optional[torch.Tensor]) -> torch.Tensor:
        """A decode step after the conv: xbc (B, dl + 2 Gl N) the conv output, gate (B, dl) and dt (B, heads_local)
        from in_proj (from mix_step, or ops.mamba_decode_in's z = [gate | dt]): the state update, the gated norm,
        out_proj (+ all-reduce). Returns (B, H)."""
        x, B, C = self._bc(xbc)
        if self._use_ssd(x, step=True):
            nhl, hd, N = self.heads_local, self.head_dim, self.ssm_state_size
            y = ops.ssd_step(x.unflatten(-1, (nhl, hd)), dt, self.A_head, B, C, self.D_head, None, self.dt_bias,
                             ssm_state.view(-1, nhl, hd, N), state_idx, True, 0.0, float("inf"))
            return self._out(y.flatten(-2)[:, None], gate[:, None], xbc.dtype)[:, 0]
        # dt per head as a (B, heads, head_dim) view with stride 0 on its last axis: the state update reads channel
        # c's time step at row c // head_dim, no repeat kernel (which also broke the chain of programmatic dependent
        # launches between decode_in and the update). zamba2-2.7b graph step B = 1 / 2 / 8 / 64: 3.09 / 3.47-3.48 /
        # 4.24-4.25 / 7.62-7.63 ms against 3.29-3.32 / 3.68-3.70 / 4.48 / 7.95 with the repeat (H200, interleaved
        # twice; benchmarks/results/zamba2-dt-view-h200-83e4407.json). (Handing it dt per head with a 0/1 head-expansion
        # matrix as its dt_proj measured far slower: zamba2-2.7b B = 1 / 8: 4.78 / 7.46 against 3.28 / 4.42 ms;
        # H200, benchmarks/results/zamba2-decode-ideas-h200-not-kept.json.)
        dt_ch = dt[:, :, None].expand(-1, -1, self.head_dim)  # (B, heads_local, head_dim)
        A = self.A_ch.expand(-1, self.ssm_state_size)
        y = ops.selective_state_update(x, dt_ch, A, B, C, self.D_ch, None, self.dt_bias_ch, ssm_state, state_idx,
                                       True)
        return self._out(y[:, None], gate[:, None], xbc.dtype)[:, 0]

    # ------------------------------------------------------------------ HF-compatible forward

    def forward(self, hidden_states: torch.Tensor, cache_params=None, attention_mask=None, **kwargs):
        return hf_cache_forward(self, hidden_states, hf_cache_arg(cache_params, kwargs), attention_mask,
                                self.conv_dim_local, (self.heads_local, self.head_dim))

    def extra_repr(self) -> str:
        return (f"d_inner={self.intermediate_size}, heads={self.heads_local}/{self.num_heads}, "
                f"groups={self.n_groups_local}/{self.n_groups} (from {self.group0}), split_groups={self.split_groups}, "
                f"scan_impl={self.scan_impl!r}, tp={self.comm.world_size}, rank={self.comm.rank}")


def _adapter_kinds(module_list) -> list[str]:
    """'lora' for Sequential(Linear, Linear), 'identity' for nn.Identity, per adapter slot of an HF adapter list."""
    kinds = []
    for m in module_list:
        if isinstance(m, nn.Identity):
            kinds.append("identity")
        elif isinstance(m, nn.Sequential) and len(m) == 2 and all(isinstance(x, nn.Linear) for x in m):
            if any(x.bias is not None for x in m):
                raise ValueError("Zamba2 adapters with biases are not supported")
            kinds.append("lora")
        else:
            raise ValueError(f"unexpected Zamba2 adapter module {type(m).__name__}")
    return kinds


class _Adapters(nn.Module):
    """Per-hybrid-layer adapters added to a column-parallel projection: slot i is 'lora' (x A_i^T B_i[rows]^T: A
    replicated, B's rows sliced like the projection), or 'identity' (adds x[..., rows], as HF's nn.Identity adds x)."""

    def __init__(self, kinds: Sequence[str], get: Callable[[str], object], prefix: str, rows: torch.Tensor):
        super().__init__()
        self.kinds = list(kinds)
        self.register_buffer("rows", rows, persistent=False)
        self.down = nn.ParameterList()
        self.up = nn.ParameterList()
        self.slot = []  # adapter slot -> index into down/up, or -1
        for i, kind in enumerate(self.kinds):
            if kind == "lora":
                self.slot.append(len(self.down))
                self.down.append(shard.param(get(f"{prefix}.{i}.0.weight")[:]))
                self.up.append(shard.param(get(f"{prefix}.{i}.1.weight")[:][rows]))
            else:
                self.slot.append(-1)

    def forward(self, x: torch.Tensor, i: int) -> torch.Tensor:
        j = self.slot[i]
        if j < 0:
            return x[..., self.rows]
        return ops.linear(ops.linear(x, self.down[j]), self.up[j])


class TPZamba2Attention(nn.Module):
    """One rank's attention heads of a Zamba2 shared block, with its per-hybrid-layer q/k/v adapters and RoPE."""

    def __init__(self, config, comm: Communicator, get: Callable[[str], object], layer_dic: dict,
                 adapter_kinds: Optional[dict] = None, layer_idx: Optional[int] = None):
        """``adapter_kinds``: {"q"|"k"|"v": ['lora'|'identity', ...]} when config.use_shared_attention_adapter."""
        super().__init__()
        tp, r = comm.world_size, comm.rank
        self.comm = comm
        self.config = config
        self.layer_idx = layer_idx
        self.layer_dic = dict(layer_dic)
        self.head_dim = hd = config.attention_head_dim
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_heads_local = hl = shard.split_size(self.num_heads, tp, "num_attention_heads")
        self.num_kv_local = kvl = shard.split_size(self.num_key_value_heads, tp, "num_key_value_heads")
        self.num_key_value_groups = hl // kvl
        self.scaling = (hd / 2) ** -0.5
        self.is_causal = True
        self.attention_dropout = config.attention_dropout
        qlo, qhi, kvlo, kvhi = r * hl * hd, (r + 1) * hl * hd, r * kvl * hd, (r + 1) * kvl * hd
        q_rows, kv_rows = torch.arange(qlo, qhi), torch.arange(kvlo, kvhi)
        self.q_proj_weight = shard.param(get("q_proj.weight")[qlo:qhi])
        self.k_proj_weight = shard.param(get("k_proj.weight")[kvlo:kvhi])
        self.v_proj_weight = shard.param(get("v_proj.weight")[kvlo:kvhi])
        self.o_proj_weight = shard.param(get("o_proj.weight")[:, qlo:qhi])
        self.use_adapter = bool(config.use_shared_attention_adapter)
        if self.use_adapter:
            kinds = adapter_kinds or {}
            self.q_adapters = _Adapters(kinds["q"], get, "linear_q_adapter_list", q_rows)
            self.k_adapters = _Adapters(kinds["k"], get, "linear_k_adapter_list", kv_rows)
            self.v_adapters = _Adapters(kinds["v"], get, "linear_v_adapter_list", kv_rows)

    @classmethod
    def from_hf(cls, hf_attn: nn.Module, comm: Communicator) -> "TPZamba2Attention":
        get = shard.hf_params(hf_attn)
        kinds = None
        if hf_attn.config.use_shared_attention_adapter:
            kinds = {c: _adapter_kinds(getattr(hf_attn, f"linear_{c}_adapter_list")) for c in "qkv"}
        return cls(hf_attn.config, comm, get, hf_attn.layer_dic, kinds,
                   getattr(hf_attn, "layer_idx", None))

    def qkv(self, x: torch.Tensor, layer_idx: int):
        """The engine's entry point: x (B, L, 2H) normed block input of hybrid layer ``layer_idx`` -> q
        (B, L, heads_local, hd), k and v (B, L, kv_local, hd) of this rank's heads, adapters added, before RoPE."""
        B, L = x.shape[:2]
        hd = self.head_dim
        q = ops.linear(x, self.q_proj_weight)
        k = ops.linear(x, self.k_proj_weight)
        v = ops.linear(x, self.v_proj_weight)
        if self.use_adapter:
            i = self.layer_dic[layer_idx]
            q = q + self.q_adapters(x, i)
            k = k + self.k_adapters(x, i)
            v = v + self.v_adapters(x, i)
        return q.view(B, L, -1, hd), k.view(B, L, -1, hd), v.view(B, L, -1, hd)

    def out(self, attn: torch.Tensor) -> torch.Tensor:
        """attn (B, L, heads_local * hd) -> o_proj, all-reduced: (B, L, H) on every rank."""
        return self.comm.all_reduce(ops.linear(attn, self.o_proj_weight))

    def forward(self, hidden_states: torch.Tensor, layer_idx: int, attention_mask: Optional[torch.Tensor] = None,
                past_key_values=None, position_embeddings=None, **kwargs):
        from transformers.models.zamba2.modeling_zamba2 import apply_rotary_pos_emb, eager_attention_forward

        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        q = ops.linear(hidden_states, self.q_proj_weight)
        k = ops.linear(hidden_states, self.k_proj_weight)
        v = ops.linear(hidden_states, self.v_proj_weight)
        if self.use_adapter:
            i = self.layer_dic[layer_idx]
            q = q + self.q_adapters(hidden_states, i)
            k = k + self.k_adapters(hidden_states, i)
            v = v + self.v_adapters(hidden_states, i)
        q = q.view(hidden_shape).transpose(1, 2)
        k = k.view(hidden_shape).transpose(1, 2)
        v = v.view(hidden_shape).transpose(1, 2)
        if self.config.use_mem_rope:
            cos, sin = position_embeddings
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
        return attend(self, q, k, v, attention_mask, hf_cache_arg(past_key_values, kwargs), layer_idx,
                      eager_attention_forward, **kwargs)

    def extra_repr(self) -> str:
        return (f"heads={self.num_heads_local}/{self.num_heads}, kv_heads={self.num_kv_local}/"
                f"{self.num_key_value_heads}, head_dim={self.head_dim}, adapters={self.use_adapter}, "
                f"tp={self.comm.world_size}")


class TPZamba2MLP(nn.Module):
    """Zamba2's shared-block MLP: act(gate) * up from a fused gate_up (+ per-hybrid-layer adapter), then down."""

    def __init__(self, config, comm: Communicator, get: Callable[[str], object], layer_dic: dict,
                 adapter_kinds: Sequence[str]):
        super().__init__()
        tp, r = comm.world_size, comm.rank
        self.comm = comm
        self.layer_dic = dict(layer_dic)
        self.intermediate_size = inter = config.intermediate_size
        self.lo, self.hi = lo, hi = uneven_range(inter, tp, r)
        rows = torch.cat([torch.arange(lo, hi), torch.arange(inter + lo, inter + hi)])
        self.gate_up_weight = shard.param(torch.cat([get("gate_up_proj.weight")[lo:hi],
                                                     get("gate_up_proj.weight")[inter + lo:inter + hi]]))
        self.gate_up_bias = None
        self.down_bias = None
        if config.add_bias_linear:
            b = get("gate_up_proj.bias")
            self.gate_up_bias = shard.param(torch.cat([b[lo:hi], b[inter + lo:inter + hi]]))
            self.down_bias = shard.param(get("down_proj.bias")[:])
        self.down_weight = shard.param(get("down_proj.weight")[:, lo:hi])
        self.adapters = _Adapters(adapter_kinds, get, "gate_up_proj_adapter_list", rows)
        self.act_fn = _act(config.hidden_act)

    @classmethod
    def from_hf(cls, hf_mlp: nn.Module, comm: Communicator) -> "TPZamba2MLP":
        get = shard.hf_params(hf_mlp)
        return cls(hf_mlp.config, comm, get, hf_mlp.layer_dic,
                   _adapter_kinds(hf_mlp.gate_up_proj_adapter_list))

    def forward(self, hidden_state: torch.Tensor, layer_idx=None) -> torch.Tensor:
        gu = ops.linear(hidden_state, self.gate_up_weight, self.gate_up_bias)
        gu = gu + self.adapters(hidden_state, self.layer_dic[layer_idx])
        gate, up = gu.chunk(2, dim=-1)
        out = self.comm.all_reduce(ops.linear(self.act_fn(gate) * up, self.down_weight))
        return out + self.down_bias if self.down_bias is not None else out

    def extra_repr(self) -> str:
        return f"intermediate=[{self.lo}, {self.hi}) of {self.intermediate_size}, tp={self.comm.world_size}"
