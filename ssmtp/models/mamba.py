"""Tensor-parallel Mamba-1 mixer, for HF MambaMixer and FalconMambaMixer.

Sharding (design decision 7): every rank owns d_inner/tp channels.
  in_proj   (2d, H)      x rows and z rows sliced separately -> (2*dl, H) = [x_r ; z_r]
  conv1d    (d, 1, K)    channels sliced -> (dl, K)
  x_proj    (R+2N, d)    row-parallel: columns sliced -> (R+2N, dl); partial [dt, B, C] summed by an all-reduce
  dt_proj   (d, R)       column-parallel on the replicated dt -> (dl, R); bias (dl) passed to the scan
  A_log, D  (d, N), (d)  sliced -> A = -exp(A_log) kept in fp32
  out_proj  (H, d)       row-parallel: columns sliced, all-reduce, bias added once after the reduction
Falcon-Mamba's weightless RMS norms on dt, B and C run after the x_proj all-reduce, on full vectors, on every rank.
Conv and SSM states hold this rank's channels only and never cross GPUs.

The module keeps HF's forward signature and cache object; ``mix`` / ``mix_step`` are the cache-agnostic entry points
the engine calls with its own slot-pool states.
"""
from __future__ import annotations

import inspect
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from ..parallel import shard
from ..parallel.comm import Communicator


def _rms_segments_switch() -> bool:
    return ops._switch("SSMTP_RMS_SEGMENTS", "default: Falcon-Mamba's dt/B/C norms as one ops.rms_segments call",
                       "torch ops per norm")


# Falcon-Mamba's dt/B/C norms as one ops.rms_segments call (one kernel with PDL on CUDA) instead of ~7 torch kernels
# per norm: falcon-mamba-7b decode graph step on H200 (2026-11-25, runs interleaved; benchmarks/results/
# falcon-rms-h200-5b7e618.json) B=1 3.98 ms against 6.05, B=64 7.17 against 9.54.
RMS_SEGMENTS = _rms_segments_switch()


def _rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Falcon-Mamba's weightless RMS norm (in fp32, back to the input dtype), as HF computes it."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x)


def _mask(h: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
    if attention_mask is None:
        return h
    return (h * attention_mask[:, :, None]).to(h.dtype)


def hf_cache_arg(given, kwargs: dict):
    """HF's cache object as a module's forward received it: ``given`` (the keyword of transformers <= 5.23:
    ``cache_params`` for mixers, ``past_key_values`` for attention), else the ``cache`` keyword that transformers 5.24
    passes instead, taken out of kwargs so that it is not handed on."""
    c = kwargs.pop("cache", None)
    return given if given is not None else c


def hf_cache_kwargs(model: nn.Module, cache) -> dict:
    """The keyword argument that hands ``cache`` to an HF Mamba-family (or Zamba) model's forward: ``cache`` from
    transformers 5.24 on (where ``cache_params`` and ``past_key_values`` are deprecated, to be removed in 5.40), before
    that ``cache_params`` (Mamba, Falcon-Mamba) or ``past_key_values`` (Zamba, Zamba2)."""
    params = inspect.signature(type(model).forward).parameters
    name = next((n for n in ("cache", "cache_params", "past_key_values") if n in params), "cache")
    return {name: cache}


def hf_output_cache(output):
    """The cache an HF Mamba-family model returned: ``output.cache`` from transformers 5.24 on, ``cache_params``
    before."""
    c = getattr(output, "cache", None)
    return c if c is not None else getattr(output, "cache_params", None)


def hf_cache_forward(mixer: nn.Module, hidden_states: torch.Tensor, cache_params, attention_mask,
                     conv_channels: int, rec_dims: tuple) -> torch.Tensor:
    """HF's forward contract around any ssmtp mixer's cache-agnostic ``mix`` / ``mix_step``, with HF's own cache
    object: its tensors are updated in place after the first call, and created (in HF's shapes: conv (B,
    conv_channels, K), recurrent (B, *rec_dims, N) fp32) by the prefill. A multi-token call on a filled cache resumes
    from the cached states (HF's torch scan restarts at zero there)."""
    if cache_params is None:
        return mixer.mix(hidden_states, attention_mask=attention_mask)
    layer = cache_params.layers[mixer.layer_idx]
    Bsz, N, dl = hidden_states.shape[0], mixer.ssm_state_size, mixer.d_local
    if bool(layer.has_previous_state[0]):
        conv, rec = layer.conv_states[0], layer.recurrent_states[0].view(Bsz, dl, N)
        if hidden_states.shape[1] == 1:
            return mixer.mix_step(hidden_states, conv, rec)
        return mixer.mix(hidden_states, conv, rec, load_state=True, attention_mask=attention_mask)
    dev = hidden_states.device
    conv = torch.zeros(Bsz, conv_channels, mixer.conv_kernel_size, device=dev, dtype=hidden_states.dtype)
    rec = torch.zeros(Bsz, *rec_dims, N, device=dev, dtype=torch.float32)
    out = mixer.mix(hidden_states, conv, rec.view(Bsz, dl, N), attention_mask=attention_mask)
    cache_params.update_conv_state(conv, mixer.layer_idx, conv_kernel_size=mixer.conv_kernel_size)
    cache_params.update_recurrent_state(rec, mixer.layer_idx)
    return out


class TPMambaMixer(nn.Module):
    """One rank's shard of a Mamba-1 mixer (Mamba or Falcon-Mamba)."""

    def __init__(self, config, layer_idx: int, comm: Communicator, get: Callable[[str], object],
                 falcon: bool = False):
        """Build this rank's shard. ``get(name)`` returns the full tensor named as in the HF mixer ("in_proj.weight",
        "conv1d.weight", ...) or anything sliceable like one (a safetensors slice): only this rank's rows/columns are
        read, so loading from a checkpoint never materialises the full weights."""
        super().__init__()
        tp, r = comm.world_size, comm.rank
        self.comm = comm
        self.layer_idx = layer_idx
        self.hidden_size = config.hidden_size
        self.intermediate_size = d = config.intermediate_size
        self.d_local = dl = shard.split_size(d, tp, "intermediate_size (d_inner)")
        self.ssm_state_size = N = config.state_size
        self.time_step_rank = R = int(config.time_step_rank)
        self.conv_kernel_size = config.conv_kernel
        self.falcon = falcon
        self.rms_eps = float(getattr(config, "mixer_rms_eps", 1e-6))
        if config.hidden_act not in ("silu", "swish"):
            raise ValueError(f"hidden_act={config.hidden_act!r} is not supported; ssmtp fuses SiLU into the conv")
        lo, hi = r * dl, (r + 1) * dl

        w_in = get("in_proj.weight")
        self.in_proj_weight = shard.param(torch.cat([w_in[lo:hi], w_in[d + lo:d + hi]]))
        self.in_proj_bias = None
        if config.use_bias:
            b_in = get("in_proj.bias")
            self.in_proj_bias = shard.param(torch.cat([b_in[lo:hi], b_in[d + lo:d + hi]]))
        self.conv_weight = shard.param(get("conv1d.weight")[lo:hi][:, 0, :])
        self.conv_bias = shard.param(get("conv1d.bias")[lo:hi]) if config.use_conv_bias else None
        self.x_proj_weight = shard.param(get("x_proj.weight")[:, lo:hi])
        if tuple(self.x_proj_weight.shape) != (R + 2 * N, dl):
            raise ValueError(f"x_proj.weight shard has shape {tuple(self.x_proj_weight.shape)}, expected "
                             f"{(R + 2 * N, dl)} (time_step_rank={R}, state_size={N})")
        self.dt_proj_weight = shard.param(get("dt_proj.weight")[lo:hi])
        self.dt_bias = shard.param(get("dt_proj.bias")[lo:hi].float())
        self.register_buffer("A", -torch.exp(get("A_log")[lo:hi].detach().float()).contiguous())
        self.D = shard.param(get("D")[lo:hi].float())
        self.out_proj_weight = shard.param(get("out_proj.weight")[:, lo:hi])
        self.out_proj_bias = shard.param(get("out_proj.bias")[:]) if config.use_bias else None

    @classmethod
    def from_hf(cls, hf_mixer: nn.Module, comm: Communicator, falcon: bool = False) -> "TPMambaMixer":
        """Shard an instantiated HF MambaMixer / FalconMambaMixer."""
        get = shard.hf_params(hf_mixer)
        return cls(hf_mixer.config, hf_mixer.layer_idx, comm, get, falcon=falcon)

    # ------------------------------------------------------------------ shared pieces

    def _dt_B_C(self, xc_tok: torch.Tensor, project_dt: bool = True):
        """xc_tok (..., dl) conv output -> dt (..., dl) before bias (with project_dt; else the (..., R) low-rank dt
        that the fused state update projects itself), B and C (..., N), after the all-reduce."""
        R, N = self.time_step_rank, self.ssm_state_size
        proj = ops.linear(xc_tok, self.x_proj_weight)  # partial sums over this rank's channels
        proj = self.comm.all_reduce(proj)
        if self.falcon and RMS_SEGMENTS:  # the three norms in one op: one kernel on CUDA instead of ~20
            proj = ops.rms_segments(proj.reshape(-1, R + 2 * N), [R, N, N], self.rms_eps).view(proj.shape)
        dt, B, C = torch.split(proj, [R, N, N], dim=-1)
        if self.falcon and not RMS_SEGMENTS:
            dt, B, C = _rms(dt, self.rms_eps), _rms(B, self.rms_eps), _rms(C, self.rms_eps)
        return (ops.linear(dt, self.dt_proj_weight) if project_dt else dt), B, C

    def _out(self, y_tok: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        out = self.comm.all_reduce(ops.linear(y_tok.to(dtype), self.out_proj_weight))
        return out + self.out_proj_bias if self.out_proj_bias is not None else out

    # ------------------------------------------------------------------ cache-agnostic entry points

    def mix(self, h: torch.Tensor, conv_state: Optional[torch.Tensor] = None, ssm_state: Optional[torch.Tensor] = None,
            state_idx: Optional[torch.Tensor] = None, seq_lens: Optional[torch.Tensor] = None,
            load_state: bool = False, attention_mask: Optional[torch.Tensor] = None,
            save_pos: Optional[torch.Tensor] = None, save_idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Prefill (any length). h (B, L, H). States (slots, dl, W) and (slots, dl, N) fp32 are read when load_state and
        written with the final states; state_idx (B,) int32 picks slots; seq_lens (B,) int32 for right padding.
        save_pos / save_idx (B, S) int32: also write the states after save_pos[b][j] tokens into slots save_idx[b][j]
        (-1 = none; the ops' intermediate saves, see csrc/ssmtp.h)."""
        dl = self.d_local
        h = _mask(h, attention_mask)
        xz = F.linear(h, self.in_proj_weight, self.in_proj_bias)  # (B, L, 2dl)
        x = xz[..., :dl].transpose(1, 2)  # (B, dl, L) channel-contiguous views
        z = xz[..., dl:].transpose(1, 2)
        xc = ops.causal_conv1d(x, self.conv_weight, self.conv_bias, conv_state, state_idx, seq_lens, True, load_state,
                               save_pos, save_idx)
        xc_tok = _mask(xc.transpose(1, 2), attention_mask)
        dt, B, C = self._dt_B_C(xc_tok)
        y = ops.selective_scan(xc_tok.transpose(1, 2), dt.transpose(1, 2), self.A, B.transpose(1, 2)[:, None],
                               C.transpose(1, 2)[:, None], self.D, z, self.dt_bias, ssm_state, state_idx, seq_lens,
                               True, load_state, save_pos, save_idx)
        return self._out(y.transpose(1, 2), h.dtype)

    def mix_step(self, h: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor,
                 state_idx: Optional[torch.Tensor] = None, fuse_dt: bool = False,
                 state_early: bool = False) -> torch.Tensor:
        """One decode token per sequence. h (B, 1, H); states updated in place. fuse_dt: dt_proj inside the state
        update (one kernel instead of a GEMV and the update; the engine's choice at small batch on CUDA).
        state_early: ops.selective_state_update's launch hint (the engine's decode step only)."""
        dl = self.d_local
        xz = ops.linear(h, self.in_proj_weight, self.in_proj_bias)  # (B, 1, 2dl)
        x = xz[..., :dl].transpose(1, 2)
        xc = ops.causal_conv1d(x, self.conv_weight, self.conv_bias, conv_state, state_idx, None, True, True)
        return self.step_tail(xc[..., 0], xz[:, 0, dl:], ssm_state, state_idx, fuse_dt, state_early)[:, None]

    def step_tail(self, xc: torch.Tensor, z: torch.Tensor, ssm_state: torch.Tensor, state_idx: Optional[torch.Tensor],
                  fuse_dt: bool, state_early: bool = False) -> torch.Tensor:
        """A decode step after the conv (xc, the conv output, and z, the gate, (B, dl); from mix_step or from
        ops.mamba_decode_in): x_proj (+ all-reduce), the state update (dt_proj fused into it when fuse_dt), out_proj
        (+ all-reduce). Returns (B, H)."""
        dt, B, C = self._dt_B_C(xc, project_dt=not fuse_dt)
        y = ops.selective_state_update(xc, dt, self.A, B[:, None], C[:, None], self.D, z, self.dt_bias, ssm_state,
                                       state_idx, True, self.dt_proj_weight if fuse_dt else None, state_early)
        return self._out(y, xc.dtype)

    # ------------------------------------------------------------------ HF-compatible forward

    def forward(self, hidden_states: torch.Tensor, cache_params=None, attention_mask=None, **kwargs):
        return hf_cache_forward(self, hidden_states, hf_cache_arg(cache_params, kwargs), attention_mask, self.d_local,
                                (self.d_local,))

    def extra_repr(self) -> str:
        return (f"d_inner={self.intermediate_size}, d_local={self.d_local}, tp={self.comm.world_size}, "
                f"rank={self.comm.rank}, falcon={self.falcon}")
