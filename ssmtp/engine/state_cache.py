"""The per-rank state slot pool (design decision 8): every layer's recurrent state for every running sequence.

A model family declares its per-sequence states as a spec, name -> StateSpec(per_slot_shape, dtype), where the shape's
first dimension is the layer count. Mamba / Falcon-Mamba at TP degree tp:
    conv  (n_layers, d_inner/tp, K)   model dtype   (the last K inputs of the depthwise conv; HF keeps K columns too)
    ssm   (n_layers, d_inner/tp, N)   fp32          (the selective-scan state)
The pool stores each state as ONE tensor (n_layers, nslots, ...): ``pool.layer("ssm", l)`` is the contiguous
(nslots, d_inner/tp, N) view that the ops index with state_idx. Addresses never change after construction, so CUDA
graphs captured on them stay valid.

Slots are handed out lowest index first (deterministic: every rank makes the same choices from the same request
stream) and zeroed when handed out, so a reused slot never leaks the previous sequence's state. A batch row that is
padding uses state_idx -1: the ops leave every slot untouched for it.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import torch


@dataclass(frozen=True)
class StateSpec:
    shape: tuple  # per sequence; shape[0] is the number of layers
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= int(s)
        return n * torch.empty((), dtype=self.dtype).element_size()


class SlotPoolExhausted(RuntimeError):
    """Every slot is in use; the engine queues requests instead of raising this."""


def bytes_per_slot(specs: dict) -> int:
    return sum(s.nbytes for s in specs.values())


class SlotPool:
    """Preallocated states for ``num_slots`` sequences on one device (this rank's shard of each state)."""

    def __init__(self, specs: dict, num_slots: int, device):
        if not isinstance(num_slots, int) or num_slots < 1:
            raise ValueError(f"num_slots must be an integer >= 1, got {num_slots!r}")
        self.specs = dict(specs)
        self.num_slots = num_slots
        self.device = torch.device(device)
        self.tensors: dict[str, torch.Tensor] = {}
        for name, s in self.specs.items():
            shape = (s.shape[0], num_slots) + tuple(s.shape[1:])
            self.tensors[name] = torch.zeros(shape, dtype=s.dtype, device=self.device)
        self._free = list(range(num_slots))  # a heap: lowest free index first
        self._used: set[int] = set()

    # ------------------------------------------------------------------ sizing

    @staticmethod
    def slots_for_budget(specs: dict, budget_bytes: int) -> int:
        return int(budget_bytes) // bytes_per_slot(specs)

    @property
    def slot_bytes(self) -> int:
        return bytes_per_slot(self.specs)

    @property
    def nbytes(self) -> int:
        return self.slot_bytes * self.num_slots

    # ------------------------------------------------------------------ views

    def layer(self, name: str, layer: int) -> torch.Tensor:
        """(nslots, ...) contiguous view of state ``name`` of one layer."""
        return self.tensors[name][layer]

    # ------------------------------------------------------------------ allocation

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return len(self._used)

    def allocate(self, n: int = 1, zero: bool = True) -> list[int]:
        """Hand out n slots (zeroed unless zero=False). SlotPoolExhausted, naming the sizes, when fewer than n are
        free."""
        if n > len(self._free):
            raise SlotPoolExhausted(f"state slot pool exhausted: {n} slot(s) requested, {len(self._free)} free of "
                                    f"{self.num_slots} (raise num_slots / state_memory, or lower max_batch)")
        slots = [heapq.heappop(self._free) for _ in range(n)]
        self._used.update(slots)
        if zero:
            self.reset(slots)
        return slots

    def free(self, slots: Iterable[int]) -> None:
        for s in slots:
            if s not in self._used:
                raise ValueError(f"slot {s} is not allocated")
            self._used.remove(s)
            heapq.heappush(self._free, s)

    def reset(self, slots: Sequence[int]) -> None:
        """Zero the states of these slots (one kernel per state tensor)."""
        if not slots:
            return
        idx = torch.tensor(list(slots), dtype=torch.long, device=self.device)
        for t in self.tensors.values():
            t.index_fill_(1, idx, 0)

    # ------------------------------------------------------------------ copies (prefix cache)

    def gather(self, slots: Sequence[int], out: Optional[dict] = None, out_idx: Optional[Sequence[int]] = None):
        """Copy the states of ``slots`` into ``out[name][:, out_idx]`` (another pool's tensors)."""
        src = torch.tensor(list(slots), dtype=torch.long, device=self.device)
        dst = torch.tensor(list(out_idx), dtype=torch.long, device=self.device)
        for name, t in self.tensors.items():
            out[name].index_copy_(1, dst, t.index_select(1, src))

    def scatter(self, slots: Sequence[int], src_tensors: dict, src_idx: Sequence[int]) -> None:
        """Set the states of ``slots`` from ``src_tensors[name][:, src_idx]``."""
        dst = torch.tensor(list(slots), dtype=torch.long, device=self.device)
        src = torch.tensor(list(src_idx), dtype=torch.long, device=self.device)
        for name, t in self.tensors.items():
            t.index_copy_(1, dst, src_tensors[name].index_select(1, src))

    def __repr__(self):
        return (f"SlotPool(slots={self.num_slots}, used={self.num_used}, {self.slot_bytes / 2**20:.2f} MiB/slot, "
                f"device={self.device})")
