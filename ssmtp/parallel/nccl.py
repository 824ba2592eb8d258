"""NCCL called from ssmtp's C core on torch's own communicator (or, failing that, one of our own).

The C core never links NCCL: ``load()`` binds the libnccl.so.2 torch already loaded (dlopen RTLD_NOLOAD) and only
falls back to torch's wheel copy (nvidia/nccl/lib) by path. ``NcclComm`` then wraps the ncclComm_t of the process
group (``ProcessGroupNCCL._comm_ptr()``) when the loaded copy is torch's own and the versions agree on every rank;
otherwise every rank makes a communicator from a unique id broadcast over torch.distributed. Collectives run on
torch's current stream and may be captured in CUDA graphs.

Teardown: NCCL's ncclCommDestroy - called by ``dist.destroy_process_group()`` for torch's communicator and by
``NcclComm.close()`` for ours - waits until every CUDA graph that captured a collective on that communicator has been
destroyed. Drop such graphs (``del graph; gc.collect()``) before either call; see ssmtp/parallel/comm.py.
"""
from __future__ import annotations

import glob
import importlib.util
import logging
import os
import sys
from typing import Optional

import torch
import torch.distributed as dist

from .. import _C
from ..ops import desc

log = logging.getLogger("ssmtp")

_SOURCE: Optional[int] = None
_LOAD_ERROR: Optional[str] = None
SOURCES = {1: "the libnccl.so.2 torch loaded", 2: "torch's nvidia-nccl wheel (by path)"}


def torch_nccl_path() -> Optional[str]:
    """Path of the libnccl.so.2 shipped in torch's nvidia-nccl wheel, if any."""
    cands = []
    try:
        spec = importlib.util.find_spec("nvidia.nccl")
        if spec and spec.submodule_search_locations:
            cands += [os.path.join(p, "lib", "libnccl.so.2") for p in spec.submodule_search_locations]
    except (ImportError, ValueError):
        pass
    for p in sys.path:
        cands += glob.glob(os.path.join(p, "nvidia", "nccl", "lib", "libnccl.so.2"))
    return next((c for c in cands if os.path.exists(c)), None)


def load() -> int:
    """Bind NCCL in the C core; returns the source (1 torch's loaded copy, 2 by path). Raises RuntimeError."""
    global _SOURCE, _LOAD_ERROR
    if _SOURCE is None and _LOAD_ERROR is None:
        try:
            _SOURCE = _C.nccl_load(torch_nccl_path())
        except RuntimeError as e:
            _LOAD_ERROR = str(e)
    if _SOURCE is None:
        raise RuntimeError(_LOAD_ERROR)
    return _SOURCE


def version() -> int:
    load()
    return _C.nccl_version()


def _torch_nccl_version() -> Optional[int]:
    try:
        v = torch.cuda.nccl.version()
    except Exception:  # noqa: BLE001 - torch without NCCL
        return None
    if isinstance(v, tuple):
        major, minor, patch = (list(v) + [0, 0, 0])[:3]
        return major * 10000 + minor * 100 + patch
    return int(v)


def torch_comm_ptr(group: Optional[dist.ProcessGroup], device: torch.device) -> int:
    """The ncclComm_t of torch's communicator for (group, device) as an integer, or raise RuntimeError."""
    pg = group if group is not None else dist.distributed_c10d._get_default_group()
    try:
        backend = pg._get_backend(device)
    except Exception as e:  # noqa: BLE001
        raise RuntimeError(f"no NCCL backend on the process group for {device}: {e}") from e
    fn = getattr(backend, "_comm_ptr", None)
    if fn is None:
        raise RuntimeError(f"{type(backend).__name__} has no _comm_ptr() in torch {torch.__version__}")
    ptr = int(fn())
    if not ptr:
        raise RuntimeError("ProcessGroupNCCL._comm_ptr() returned 0 (communicator not initialised)")
    return ptr


class NcclComm:
    """An NCCL communicator usable from the C core: torch's (borrowed) or our own (owned)."""

    def __init__(self, group: Optional[dist.ProcessGroup] = None, device: Optional[torch.device] = None,
                 use_torch_comm: bool = True):
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.device = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
        self.handle: Optional[int] = None
        self.owned = False
        source, reason = None, ""
        try:
            source = load()
        except RuntimeError as e:
            reason = str(e)
        # Every rank must take the same path (making our own communicator is collective), so the ranks vote twice:
        # on what they loaded, then on whether torch's communicator could be read.
        mine = (source, _C.nccl_version() if source else None, _torch_nccl_version(), reason)
        loaded: list = [None] * self.world_size
        dist.all_gather_object(loaded, mine, group=group)
        missing = [(r, v[3]) for r, v in enumerate(loaded) if v[0] is None]
        if missing:
            raise RuntimeError(f"NCCL unavailable on ranks {missing}")
        why = ""
        if not use_torch_comm:
            why = "use_torch_comm=False"
        elif any(v[0] != 1 for v in loaded):
            why = "NCCL was loaded by path on some rank, not torch's copy"
        elif any(v[2] is not None and v[2] != v[1] for v in loaded) or len({v[1] for v in loaded}) != 1:
            why = f"NCCL versions differ (loaded, torch's): {[(v[1], v[2]) for v in loaded]}"
        ptr = 0
        if not why:
            try:
                # a tiny collective makes sure torch's communicator exists (it may be created lazily)
                dist.all_reduce(torch.zeros(1, device=self.device), group=group)
                ptr = torch_comm_ptr(group, self.device)
            except Exception as e:  # noqa: BLE001 - any failure means: use our own communicator
                why = f"{type(e).__name__}: {e}"
        votes: list = [None] * self.world_size
        dist.all_gather_object(votes, (True, bool(ptr), why), group=group)
        if all(v[1] for v in votes):
            self.handle = _C.nccl_comm_wrap(ptr)
            self.how = f"torch's communicator (ProcessGroupNCCL._comm_ptr), {SOURCES[source]}"
        else:
            reasons = sorted({v[2] for v in votes if not v[1]})
            g0 = dist.get_global_rank(group, 0) if group is not None else 0
            obj = [_C.nccl_unique_id() if self.rank == 0 else None]
            dist.broadcast_object_list(obj, src=g0, group=group)
            with torch.cuda.device(self.device):
                self.handle = _C.nccl_comm_init(self.world_size, self.rank, obj[0])
            self.owned = True
            self.how = f"own communicator from a broadcast unique id ({'; '.join(reasons)}), {SOURCES[source]}"
        r, n, d = _C.nccl_comm_info(self.handle)
        if (r, n, d) != (self.rank, self.world_size, self.device.index):
            self.close()
            raise RuntimeError(f"NCCL communicator is rank {r}/{n} on cuda:{d}, expected "
                               f"{self.rank}/{self.world_size} on {self.device}")

    def _stream(self) -> int:
        return torch.cuda.current_stream(self.device).cuda_stream

    def all_reduce(self, t: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Sum over the ranks into out (default: t itself, in place) on the current stream."""
        out = t if out is None else out
        _C.nccl_all_reduce(self.handle, desc(t, "x"), desc(out, "out"), self._stream())
        return out

    def all_gather(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """out (world_size * x.numel() elements) = every rank's x, in rank order."""
        _C.nccl_all_gather(self.handle, desc(x, "x"), desc(out, "out"), self._stream())
        return out

    def close(self) -> None:
        """Forget torch's communicator, or destroy ours (collective: call on every rank, graphs dropped first)."""
        if self.handle is not None:
            h, self.handle = self.handle, None
            _C.nccl_comm_free(h)

    def __repr__(self):
        return f"NcclComm(rank={self.rank}/{self.world_size}, {self.device}, {getattr(self, 'how', '?')})"
