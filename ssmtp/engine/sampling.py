"""Sampling parameters and the batched sampler.

Every request carries its own SamplingParams; a decode step samples all rows at once (no per-row Python on the
device). Greedy is temperature 0. Random sampling uses the Gumbel-max trick with counter-based noise:
    token = argmax_v( logits_v / T + g(seed, step, v) ),   g = -log(-log u),  u = hash(seed, step, v) in (0, 1)
which draws exactly from softmax(logits / T) restricted to the top-k / top-p set (top-k keeps every token tied with
the k-th largest logit; top-p keeps a token while the tokens strictly more likely than it hold less than top_p of the
top-k set's mass). One kernel per batch does it (ssmtp::sample, csrc/sample.c and csrc/cuda/sample.cu: thresholds by
bisection over the row instead of a sort; the pure-torch twin is ssmtp.ref.sample). The noise is a pure function of
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

from .. import ops
from ..ref import gumbel_noise  # noqa: F401  (the noise, as a tensor: tests and notebooks)


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


# ------------------------------------------------------------------------------------------------ sampler


def sample(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
           seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """Sample one token per row with the ssmtp::sample op (one kernel on CUDA, no host synchronisation).

    logits (n, V) fp32/bf16/fp16; temperature (n,) fp32 (0 = greedy); top_k (n,) int64 (0 = off); top_p (n,) fp32;
    seeds, steps (n,) int64. Returns (n,) int64 token ids. All tensors on the logits' device.
    """
    return ops.sample(logits, temperature, top_k, top_p, seeds, steps)
