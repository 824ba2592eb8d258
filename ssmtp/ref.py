"""Pure-torch twins of the ssmtp:: ops: slow, obvious, fp32 - the oracles the C CPU kernels are tested against.

Each function takes the same arguments as its op in ssmtp/ops.py, mutates ``state`` the same way and returns the
output in the dtype of x. Semantics are documented in csrc/ssmtp.h.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def _slots(batch: int, state_idx: Optional[torch.Tensor]) -> list[int]:
    return list(range(batch)) if state_idx is None else [int(i) for i in state_idx.tolist()]


def _lens(batch: int, seqlen: int, seq_lens: Optional[torch.Tensor]) -> list[int]:
    return [seqlen] * batch if seq_lens is None else [int(n) for n in seq_lens.tolist()]


def _saves(b: int, save_pos, save_idx) -> list[tuple[int, int]]:
    """Row b's (position, slot) saves, slot >= 0 only."""
    if save_pos is None:
        return []
    return [(int(p), int(i)) for p, i in zip(save_pos[b].tolist(), save_idx[b].tolist()) if i >= 0]


def causal_conv1d(x, weight, bias, state, state_idx, seq_lens, silu, load_state, save_pos=None, save_idx=None):
    batch, dim, seqlen = x.shape
    width = weight.shape[1]
    out = torch.zeros(batch, dim, seqlen, dtype=torch.float32)
    w = weight.float()
    for b, (slot, n) in enumerate(zip(_slots(batch, state_idx), _lens(batch, seqlen, seq_lens))):
        if slot < 0:
            continue
        slen = state.shape[2] if state is not None else width - 1
        hist = state[slot].float() if load_state else torch.zeros(dim, slen)
        xin = torch.cat([hist, x[b, :, :n].float()], dim=1)  # (dim, slen + n)
        y = F.conv1d(xin[None], w[:, None, :], bias.float() if bias is not None else None, groups=dim)[0]
        y = y[:, -n:] if n > 0 else y[:, :0]
        out[b, :, :n] = F.silu(y) if silu else y
        for p, sv in _saves(b, save_pos, save_idx):  # the window after p positions
            state[sv].copy_(xin[:, p:slen + p].to(state.dtype))
        if state is not None:
            state[slot].copy_(xin[:, -slen:].to(state.dtype))
    return out.to(x.dtype)


def _scan_one(x, delta, A, B, C, D, z, h):
    """x, delta, z: (dim, L); B, C: (dim, N, L) already expanded to channels; h: (dim, N). Returns y (dim, L), h."""
    ys = []
    for t in range(x.shape[1]):
        h = torch.exp(delta[:, t, None] * A) * h + delta[:, t, None] * B[:, :, t] * x[:, t, None]
        y = (h * C[:, :, t]).sum(-1)
        if D is not None:
            y = y + D * x[:, t]
        if z is not None:
            y = y * F.silu(z[:, t])
        ys.append(y)
    return (torch.stack(ys, 1) if ys else x.new_zeros(x.shape[0], 0)), h


def _delta(dt, dt_bias, dt_softplus):
    d = dt.float()
    if dt_bias is not None:
        d = d + dt_bias.float()[:, None] if d.dim() == 2 else d + dt_bias.float()
    return F.softplus(d) if dt_softplus else d


def selective_scan(x, dt, A, B, C, D, z, dt_bias, state, state_idx, seq_lens, dt_softplus, load_state, save_pos=None,
                   save_idx=None):
    batch, dim, seqlen = x.shape
    groups, N = B.shape[1], A.shape[1]
    out = torch.zeros(batch, dim, seqlen, dtype=torch.float32)
    for b, (slot, n) in enumerate(zip(_slots(batch, state_idx), _lens(batch, seqlen, seq_lens))):
        if state is not None and slot < 0:
            continue
        h0 = h = state[slot].float() if load_state else torch.zeros(dim, N)
        Bx = B[b, :, :, :n].float().repeat_interleave(dim // groups, 0)
        Cx = C[b, :, :, :n].float().repeat_interleave(dim // groups, 0)
        delta = _delta(dt[b, :, :n], dt_bias, dt_softplus)
        xb, zb, Df = x[b, :, :n].float(), None if z is None else z[b, :, :n].float(), None if D is None else D.float()
        y, h = _scan_one(xb, delta, A.float(), Bx, Cx, Df, zb, h)
        for p, sv in _saves(b, save_pos, save_idx):  # the state after p positions: the scan of the first p alone
            state[sv].copy_(_scan_one(xb[:, :p], delta[:, :p], A.float(), Bx[..., :p], Cx[..., :p], Df,
                                      None if zb is None else zb[:, :p], h0)[1])
        out[b, :, :n] = y
        if state is not None:
            state[slot].copy_(h)
    return out.to(x.dtype)


def selective_state_update(x, dt, A, B, C, D, z, dt_bias, state, state_idx, dt_softplus, dt_proj=None):
    batch, dim = x.shape
    groups = B.shape[1]
    if dt_proj is not None:  # the low-rank time step through dt_proj, rounded to the dtype of x as its own op would
        if dt.dim() == 3:  # one low-rank row per group of B/C: channel c takes row c // (dim / groups)
            dt = dt.repeat_interleave(dim // groups, 1)
            dt = (dt.float() * dt_proj.float()[None]).sum(-1).to(x.dtype)
        else:
            dt = (dt.float() @ dt_proj.float().t()).to(x.dtype)
    elif dt.dim() == 3:  # (batch, G, dim / G): channel c reads dt[b, c // (dim / G), c % (dim / G)]
        dt = dt.reshape(batch, dim)
    out = torch.zeros(batch, dim, dtype=torch.float32)
    for b, slot in enumerate(_slots(batch, state_idx)):
        if slot < 0:
            continue
        Bx = B[b].float().repeat_interleave(dim // groups, 0)[:, :, None]
        Cx = C[b].float().repeat_interleave(dim // groups, 0)[:, :, None]
        delta = _delta(dt[b][:, None], dt_bias, dt_softplus)
        y, h = _scan_one(x[b].float()[:, None], delta, A.float(), Bx, Cx, None if D is None else D.float(),
                         None if z is None else z[b].float()[:, None], state[slot].float())
        out[b] = y[:, 0]
        state[slot].copy_(h)
    return out.to(x.dtype)


def decode_attention(q, k, v, state_idx, lengths, scale):
    """Plain softmax attention per row over its slot's first lengths[b] keys (fp32); padding rows are zero."""
    B, H, D = q.shape
    group = H // k.shape[2]
    out = torch.zeros(B, H, D, dtype=torch.float32)
    for b, (slot, n) in enumerate(zip(state_idx.tolist(), lengths.tolist())):
        if slot < 0:
            continue
        kk = k[slot, :n].float().repeat_interleave(group, dim=1)  # (n, H, D)
        vv = v[slot, :n].float().repeat_interleave(group, dim=1)
        p = torch.softmax(torch.einsum("hd,nhd->hn", q[b].float(), kk) * scale, dim=-1)
        out[b] = torch.einsum("hn,nhd->hd", p, vv)
    return out.to(q.dtype)


_QMAX = {"int8": 127.0, "fp8": 448.0, "float8_e4m3fn": 448.0}


def quantize_blocks(x, block, qdtype):
    flat = x.reshape(-1).float()
    n = flat.numel()
    nb = (n + block - 1) // block
    pad = torch.zeros(nb * block)
    pad[:n] = flat
    blocks = pad.view(nb, block)
    finite = torch.isfinite(blocks).all(1)
    amax = blocks.abs().where(torch.isfinite(blocks), torch.zeros(())).amax(1)
    qmax = _QMAX[qdtype]
    scales = torch.where(finite, amax / qmax, torch.full_like(amax, float("nan")))
    inv = torch.where(finite & (amax > 0), qmax / amax, torch.zeros_like(amax))
    v = torch.where(finite[:, None], blocks * inv[:, None], torch.zeros_like(blocks))
    if qdtype == "int8":
        q = torch.round(v).clamp(-127, 127).to(torch.int8)
    else:
        q = v.clamp(-448, 448).to(torch.float8_e4m3fn)
    return q.reshape(-1)[:n], scales


def dequantize_blocks(q, scales, block, dtype):
    n = q.numel()
    s = scales.repeat_interleave(block)[:n]
    return (q.float() * s).to(dtype)


# ------------------------------------------------------------------------------------------------ Mamba-2 SSD
# Token-by-token recurrences (not chunked): the chunked C op must equal them up to fp32 rounding.

def _ssd_delta(dt, dt_bias, dt_softplus, dt_min, dt_max):
    d = dt.float() + (dt_bias.float() if dt_bias is not None else 0.0)
    return (F.softplus(d) if dt_softplus else d).clamp(min=dt_min, max=dt_max)


def ssd_scan(x, dt, A, B, C, D, z, dt_bias, state, state_idx, seq_lens, dt_softplus, load_state, chunk_size, dt_min,
             dt_max):
    batch, seqlen, nheads, hd = x.shape
    rep = nheads // B.shape[2]
    out = torch.zeros(batch, seqlen, nheads, hd, dtype=torch.float32)
    for b, (slot, n) in enumerate(zip(_slots(batch, state_idx), _lens(batch, seqlen, seq_lens))):
        if state is not None and slot < 0:
            continue
        h = state[slot].float().clone() if load_state else torch.zeros(nheads, hd, B.shape[3])
        for t in range(n):
            delta = _ssd_delta(dt[b, t], dt_bias, dt_softplus, dt_min, dt_max)  # (nheads,)
            Bt = B[b, t].float().repeat_interleave(rep, 0)  # (nheads, N)
            Ct = C[b, t].float().repeat_interleave(rep, 0)
            xt = x[b, t].float()  # (nheads, hd)
            h = torch.exp(delta * A.float())[:, None, None] * h + (delta[:, None] * xt)[:, :, None] * Bt[:, None, :]
            y = (h * Ct[:, None, :]).sum(-1)
            if D is not None:
                y = y + D.float()[:, None] * xt
            if z is not None:
                y = y * F.silu(z[b, t].float())
            out[b, t] = y
        if state is not None:
            state[slot].copy_(h)
    return out.to(x.dtype)


def ssd_step(x, dt, A, B, C, D, z, dt_bias, state, state_idx, dt_softplus, dt_min, dt_max):
    batch = x.shape[0]
    state_l = state.clone()
    y = ssd_scan(x[:, None], dt[:, None], A, B[:, None], C[:, None], D, None if z is None else z[:, None], dt_bias,
                 state_l, state_idx, None, dt_softplus, True, 1, dt_min, dt_max)[:, 0]
    for slot in _slots(batch, state_idx):
        if slot >= 0:
            state[slot].copy_(state_l[slot])
    return y


def linear_small(x, weight, bias):
    """x (M, K) W (N, K)^T (+ bias) with fp32 accumulation, rounded once to the dtype of x."""
    out = x.float() @ weight.float().t()
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


def rms_segments(x, lens, eps):
    """HF FalconMamba's rms_forward on each segment of the last dimension: fp32 statistics, one rounding back."""
    parts = torch.split(x.float(), list(lens), dim=-1)
    return torch.cat([p * torch.rsqrt(p.pow(2).mean(-1, keepdim=True) + eps) for p in parts], dim=-1).to(x.dtype)


def add_rms_norm(res, add, norm_w, eps, res_fp32):
    """A Mamba block's input, op by op: residual add in fp32 (stored as fp32 when res_fp32, else in norm_w's dtype),
    then HF's MambaRMSNorm on the sum in the model dtype. Returns (res_out, h)."""
    T = norm_w.dtype
    r = res.float() if add is None else res.float() + add.float()
    v = r.to(T).float()
    s = 1.0 / torch.sqrt(v.pow(2).mean(-1, keepdim=True) + eps)
    return r.to(torch.float32 if res_fp32 else T), (norm_w.float() * (v * s).to(T).float()).to(T)


def mamba_decode_in(res, add, norm_w, weight, bias, conv_w, conv_b, conv_state, state_idx, eps, res_fp32,
                    conv_lo=0):
    """The fused decode input of a Mamba block, op by op: residual add in fp32, RMSNorm (HF MambaRMSNorm on the
    model dtype), in_proj (linear_small), the conv decode step + SiLU on the conv rows [conv_lo, conv_lo + nc)
    (causal_conv1d with seqlen 1: conv_state shifted in place, padding rows untouched and zero), z the other rows in
    order. Returns (res_out, xc, z)."""
    lo, nc = conv_lo, conv_w.shape[0]
    res_out, h = add_rms_norm(res, add, norm_w, eps, res_fp32)
    xz = linear_small(h, weight, bias)
    xc = causal_conv1d(xz[:, lo:lo + nc, None], conv_w, conv_b, conv_state, state_idx, None, True, True)[:, :, 0]
    return res_out, xc, torch.cat([xz[:, :lo], xz[:, lo + nc:]], dim=1)


# ------------------------------------------------------------------------------------------------ sampling

_M32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int64 tensors holding values in [0, 2^32). Products may wrap past int64; their low 32 bits are
    still exact (two's complement), and that is all that is kept."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def gumbel_noise(seeds: torch.Tensor, steps: torch.Tensor, vocab: int) -> torch.Tensor:
    """(n, vocab) fp32 Gumbel(0, 1) noise, a pure function of (seed, step, vocabulary id) (csrc/sample_math.h)."""
    s = seeds.to(torch.int64)
    h = _mix32((s & _M32) ^ _mix32(((s >> 32) & _M32) ^ 0x9E3779B9))
    h = _mix32(h ^ _mix32(steps.to(torch.int64) & _M32))[:, None]  # (n, 1)
    v = torch.arange(vocab, device=seeds.device, dtype=torch.int64)[None, :]
    bits = _mix32(h ^ _mix32(v ^ 0x85EBCA6B))
    u = ((bits >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))  # (0, 1), 24 random bits
    return -torch.log(-torch.log(u))


def argmax(logits):
    """The greedy token of each row (ssmtp_argmax in csrc/ssmtp.h): torch.argmax with NaN never chosen."""
    lf = logits.float()
    if lf.shape[-1] == 0:
        return torch.zeros(lf.shape[0], dtype=torch.int64)
    return torch.where(torch.isnan(lf), float("-inf"), lf).argmax(-1)


def sample(logits, temperature, top_k, top_p, seed, step):
    """One token per row (ssmtp_sample in csrc/ssmtp.h), row by row with sorts instead of bisection; the masses are
    summed in fp64 here (the op sums in fp32, so a threshold may differ where a mass is within rounding of top_p)."""
    lf = logits.float()
    n, V = lf.shape
    ln = torch.where(torch.isnan(lf), float("-inf"), lf)
    out = ln.argmax(-1) if V else torch.zeros(n, dtype=torch.int64)
    lmax = ln.amax(-1) if V else torch.full((n,), float("-inf"))
    c = 1.0 / temperature.float()
    rand = (temperature > 0) & torch.isfinite(c) & torch.isfinite(lmax)
    g = gumbel_noise(seed, step, V)
    for i in torch.nonzero(rand).flatten().tolist():
        x, ci = lf[i], c[i]
        keep = ~torch.isnan(x)
        k = int(top_k[i])
        if 0 < k < V:  # fewer than k tokens with a strictly larger logit
            keep &= torch.searchsorted(-torch.sort(x[keep], descending=True).values, -x) < k
        p = float(top_p[i])
        if p < 1.0:  # the mass of the kept tokens with a strictly larger mass e is below p of the kept mass
            e = torch.exp((x - lmax[i]) * ci)
            ek = e[keep]
            ed = torch.sort(ek, descending=True).values
            cum = torch.cumsum(ed.double(), 0)
            above = torch.searchsorted(-ed, -e)  # kept tokens with a strictly larger mass
            mass_gt = torch.where(above > 0, cum[(above - 1).clamp(min=0)], torch.zeros((), dtype=torch.float64))
            keep &= (mass_gt < p * float(cum[-1])) | (above == 0)
        zv = torch.where(keep, x * ci + g[i], torch.tensor(float("-inf")))
        out[i] = zv.argmax()
    return out


def gated_norm(y, gate, weight, group, eps):
    """ssmtp::gated_norm in pure torch: HF's RMSNormGated (norm_before_gate off) over groups of `group` channels."""
    M, D = y.shape
    v = (y.float() * torch.nn.functional.silu(gate.float())).view(M, D // group, group)
    v = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps)
    return weight * v.view(M, D).to(y.dtype)
