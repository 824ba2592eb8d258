"""Sampling parameters and the batched sampler.

Every request carries its own SamplingParams; a decode step samples all rows at once (no per-row Python on the
device). Greedy is temperature 0. Random sampling uses the Gumbel-max trick with counter-based noise:
    token = argmax_v( logits_v / T + g(seed, step, v) ),   g = -log(-log u),  u = hash(seed, step, v) in (0, 1)
which draws exactly from softmax(logits / T) restricted to the top-k / top-p set. The noise is a pure function of
(request seed, index of the generated token, vocabulary id), so a request's tokens do not depend on which other
requests share its batch, on the batch order, or on the device RNG state; the same seed reproduces the same tokens.

Tensor parallelism: the engine samples on every rank and then broadcasts rank 0's tokens (see LLM._agree), so ranks
can never diverge even if some kernel were not bitwise deterministic across GPUs. The noise needs no RNG state, so
there is nothing to keep in sync.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

import torch


@dataclass(frozen=True)
class SamplingParams:
    """Per-request generation settings.

    max_new_tokens  tokens to generate (>= 1), counting the stop token if one is produced
    temperature     0 = greedy (argmax); > 0 scales the logits before sampling
    top_k           keep the k most likely tokens (0 = no limit)
    top_p           keep the smallest set whose probability reaches top_p (1.0 = no limit), 0 < top_p <= 1
    seed            seed of this request's noise (None: derived from the engine seed and the request's number)
    stop_token_ids  generation ends after any of these (None: the model's eos token); ignore_eos disables the eos
    """

    max_new_tokens: int = 16
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: Optional[int] = None
    stop_token_ids: Optional[tuple] = None
    ignore_eos: bool = False

    def validated(self) -> "SamplingParams":
        """Return self, or raise ValueError naming the bad argument."""
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) \
                or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {t!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = disabled), got {self.top_k!r}")
        p = self.top_p
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not (0.0 < p <= 1.0):
            raise ValueError(f"top_p must be a number in (0, 1], got {p!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed must be an integer or None, got {self.seed!r}")
        if self.stop_token_ids is not None:
            try:
                ids = tuple(self.stop_token_ids)
            except TypeError:
                raise ValueError(f"stop_token_ids must be a sequence of ints, got {self.stop_token_ids!r}") from None
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
                raise ValueError(f"stop_token_ids must be a sequence of ints, got {self.stop_token_ids!r}")
            if ids != self.stop_token_ids:
                return replace(self, stop_token_ids=ids)
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


# ------------------------------------------------------------------------------------------------ noise

_M32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (Wellons' lowbias32) on int64 tensors holding values in [0, 2^32). Products may wrap
    past int64; their low 32 bits are still exact (two's complement), and that is all that is kept."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def gumbel_noise(seeds: torch.Tensor, steps: torch.Tensor, vocab: int) -> torch.Tensor:
    """(n, vocab) fp32 Gumbel(0, 1) noise, a pure function of (seed, step, vocabulary id)."""
    dev = seeds.device
    s = seeds.to(torch.int64)
    h = _mix32((s & _M32) ^ _mix32(((s >> 32) & _M32) ^ 0x9E3779B9))
    h = _mix32(h ^ _mix32(steps.to(torch.int64) & _M32))[:, None]  # (n, 1)
    v = torch.arange(vocab, device=dev, dtype=torch.int64)[None, :]
    bits = _mix32(h ^ _mix32(v ^ 0x85EBCA6B))
    u = ((bits >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))  # (0, 1), 24 random bits
    return -torch.log(-torch.log(u))


def sample(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
           seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """Sample one token per row.

    logits (n, V) fp32; temperature (n,) fp32 (0 = greedy); top_k (n,) int64 (0 = off); top_p (n,) fp32;
    seeds, steps (n,) int64. Returns (n,) int64 token ids. All tensors on the logits' device.
    """
    n, V = logits.shape
    logits = logits.float()
    greedy_tok = logits.argmax(-1)
    rand = temperature > 0
    if not bool(rand.any()):
        return greedy_tok
    t = torch.where(rand, temperature, torch.ones_like(temperature))
    scaled = logits / t[:, None]
    g = gumbel_noise(seeds, steps, V)
    need_filter = bool(((top_k > 0) & (top_k < V)).any()) or bool((top_p < 1.0).any())
    if not need_filter:
        tok = (scaled + g).argmax(-1)
    else:
        sv, si = torch.sort(scaled, dim=-1, descending=True)
        rank = torch.arange(V, device=logits.device)[None, :]
        keep = torch.ones_like(sv, dtype=torch.bool)
        k = torch.where(top_k > 0, top_k, torch.full_like(top_k, V))
        keep &= rank < k[:, None]
        probs = torch.softmax(sv.masked_fill(~keep, float("-inf")), dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # probability mass strictly before each token
        keep &= before < top_p[:, None]
        keep[:, 0] = True  # the most likely token always stays
        z = sv.masked_fill(~keep, float("-inf")) + g.gather(1, si)
        tok = si.gather(1, z.argmax(-1, keepdim=True))[:, 0]
    return torch.where(rand, tok, greedy_tok)
