"""The communicator: the one object through which every TP collective goes.

TP modules call ``comm.all_reduce(t)`` (sum, in place, returns t). Backends behind the same interface:
  "torch"  torch.distributed.all_reduce on the group (gloo on CPU, NCCL on GPU) - always available.
Faster backends (NCCL from C on torch's communicator, the custom P2P all-reduce, block-scaled quantized all-reduce)
are chosen per message size; ``SSMTP_ALLREDUCE`` overrides the choice.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.distributed as dist


class Communicator:
    """All-reduce over a process group (None = the default group, or a single process when torch.distributed is not
    initialised)."""

    def __init__(self, group: Optional[dist.ProcessGroup] = None):
        self.group = group
        if dist.is_available() and dist.is_initialized():
            self.rank = dist.get_rank(group)
            self.world_size = dist.get_world_size(group)
        else:
            if group is not None:
                raise ValueError("a process group was given but torch.distributed is not initialised")
            self.rank, self.world_size = 0, 1
        self.backend = os.environ.get("SSMTP_ALLREDUCE", "auto")

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum t over the group in place and return it."""
        if self.world_size == 1:
            return t
        dist.all_reduce(t, group=self.group)
        return t

    def __repr__(self):
        return f"Communicator(rank={self.rank}, world_size={self.world_size}, backend={self.backend!r})"


_COMMS: dict = {}


def get_communicator(group: Optional[dist.ProcessGroup] = None) -> Communicator:
    """One communicator per group per process (they hold buffers that must not be duplicated)."""
    key = id(group) if group is not None else None
    if key not in _COMMS:
        _COMMS[key] = Communicator(group)
    return _COMMS[key]
