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


# Up to this many slots, zeroing and copies take one strided kernel per tensor and slot (see SlotPool._copy).
_FEW = 4


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
        """Zero the states of these slots (one kernel per state tensor and slot, or per tensor for many slots)."""
        slots = list(slots)
        if not slots:
            return
        if len(slots) <= _FEW:
            for t in self.tensors.values():
                for s in slots:
                    t.select(1, s).zero_()
            return
        idx = self._index(slots)
        for t in self.tensors.values():
            t.index_fill_(1, idx, 0)

    # ------------------------------------------------------------------ copies (prefix cache)

    def _index(self, rows: Sequence[int]) -> torch.Tensor:
        """Row numbers as a device tensor, staged through pinned memory on CUDA: no host synchronisation (a plain
        torch.tensor(..., device=cuda) waits for the stream, i.e. for a prefill still running)."""
        t = torch.tensor(list(rows), dtype=torch.long)
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def _copy(self, dst: dict, dst_rows: Sequence[int], src: dict, src_rows: Sequence[int]) -> None:
        """dst[name][:, dst_rows] = src[name][:, src_rows] for every state tensor. A few rows: one strided copy per
        tensor and row (no index tensors, no gather buffer: a slot is one layer-strided block per tensor);
        more: index_select + index_copy_ per tensor."""
        dst_rows, src_rows = list(dst_rows), list(src_rows)
        if len(dst_rows) != len(src_rows):
            raise ValueError(f"{len(dst_rows)} destination rows for {len(src_rows)} source rows")
        if not dst_rows:
            return
        if len(dst_rows) <= _FEW:
            for name, t in src.items():
                for d, s in zip(dst_rows, src_rows):
                    dst[name].select(1, d).copy_(t.select(1, s))
            return
        di, si = self._index(dst_rows), self._index(src_rows)
        for name, t in src.items():
            dst[name].index_copy_(1, di, t.index_select(1, si))

    def gather(self, slots: Sequence[int], out: Optional[dict] = None, out_idx: Optional[Sequence[int]] = None):
        """Copy the states of ``slots`` into ``out[name][:, out_idx]`` (another pool's tensors)."""
        self._copy(out, out_idx, self.tensors, slots)

    def scatter(self, slots: Sequence[int], src_tensors: dict, src_idx: Sequence[int]) -> None:
        """Set the states of ``slots`` from ``src_tensors[name][:, src_idx]``."""
        self._copy(self.tensors, slots, src_tensors, src_idx)

    def __repr__(self):
        return (f"SlotPool(slots={self.num_slots}, used={self.num_used}, {self.slot_bytes / 2**20:.2f} MiB/slot, "
                f"device={self.device})")
