"""Weight-slicing helpers: which rows/columns of a full tensor belong to this rank."""
from __future__ import annotations

from typing import Callable

import torch


def split_size(total: int, tp: int, what: str) -> int:
    """Per-rank size of a dimension split evenly over tp ranks; ValueError naming the sizes otherwise."""
    if tp < 1:
        raise ValueError(f"tp size must be >= 1, got {tp}")
    if total % tp != 0:
        raise ValueError(f"tensor parallel size {tp} does not divide {what}={total}")
    return total // tp


def rows(t: torch.Tensor, rank: int, tp: int, what: str, offset: int = 0, total: int | None = None) -> torch.Tensor:
    """Rank's contiguous slice along dim 0 of t[offset : offset + total] (total defaults to the whole dim)."""
    total = t.shape[0] - offset if total is None else total
    n = split_size(total, tp, what)
    return t[offset + rank * n: offset + (rank + 1) * n]


def cols(t: torch.Tensor, rank: int, tp: int, what: str) -> torch.Tensor:
    """Rank's contiguous slice along the last dim."""
    n = split_size(t.shape[-1], tp, what)
    return t[..., rank * n: (rank + 1) * n]


def param(t: torch.Tensor) -> torch.nn.Parameter:
    """A fresh contiguous parameter (no view keeps the full tensor alive)."""
    return torch.nn.Parameter(t.detach().contiguous().clone(), requires_grad=False)


def hf_params(module: torch.nn.Module) -> Callable[[str], torch.Tensor]:
    """get(name) -> the HF module's parameter `name`, detached (what the TP modules' constructors read their slices
    from); KeyError naming the module's class when it has no such parameter."""
    params = {n: p.detach() for n, p in module.named_parameters()}

    def get(name: str) -> torch.Tensor:
        if name not in params:
            raise KeyError(f"{type(module).__name__} has no parameter {name!r}")
        return params[name]

    return get
