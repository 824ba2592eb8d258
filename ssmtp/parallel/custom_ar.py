"""The custom one-host all-reduce (csrc/cuda/allreduce.cu) from Python: setup through torch.distributed, calls on
torch's current stream, error checks, teardown.

Setup is collective: every rank allocates its IPC buffer, the CUDA IPC handles (and the configuration, which must
be identical everywhere) are all-gathered through torch.distributed once, and every rank maps its peers' buffers. If
any rank fails, every rank frees what it made and the constructor raises on every rank (no rank is left waiting).

Knobs (environment, or constructor arguments): SSMTP_AR_BUFFER_MB (receive buffer per rank, default 128),
SSMTP_AR_TIMEOUT_S (longest wait for a peer, default 30), SSMTP_AR_MAX_BLOCKS (default: one per multiprocessor),
SSMTP_AR_DEBUG=1 (synchronize and check after every call, so a size/dtype disagreement or a missing rank raises at
the call that caused it instead of at the next one), SSMTP_AR_FENCE=strong (a system-scope fence in every thread
before a block signals; the default relies on bar.sync + a release store, see allreduce.cu),

Algorithms: "1shot", "2shot", "lamport" (one-shot without flags, for small messages; it sends +0.0 for -0.0, so a
sum of negative zeros comes out as +0.0), "auto" (one-shot up to 1 MiB, else two-shot).
"""
from __future__ import annotations

import os
import socket
from typing import List, Optional, Tuple

import torch
import torch.distributed as dist

from .. import _C
from ..ops import _DTYPE_CODES, desc
from .quant_ar import check_quant_args

ALGOS = {"auto": 0, "1shot": 1, "2shot": 2, "lamport": 3}
QCODES = {"int8": _DTYPE_CODES[torch.int8], "fp8": _DTYPE_CODES[torch.float8_e4m3fn]}


def _env_num(name: str, default, cast=float):
    v = os.environ.get(name, "").strip()
    return cast(v) if v else default


def p2p_status(group: Optional[dist.ProcessGroup], device: torch.device) -> Tuple[bool, str]:
    """(ok, reason): may the ranks of group use CUDA IPC + P2P? Collective (all ranks must call)."""
    ws = dist.get_world_size(group)
    props = torch.cuda.get_device_properties(device)
    me = (socket.gethostname(), str(getattr(props, "uuid", device.index)))
    peers: List = [None] * ws
    dist.all_gather_object(peers, me, group=group)
    ok, why = True, "P2P access between all GPUs of one host"
    if len({p[0] for p in peers}) != 1:
        ok, why = False, f"ranks span hosts {sorted({p[0] for p in peers})}"
    elif len({p[1] for p in peers}) != ws:
        ok, why = False, "two ranks share one GPU"
    else:
        visible = {str(getattr(torch.cuda.get_device_properties(i), "uuid", i)): i
                   for i in range(torch.cuda.device_count())}
        for r, (_, uuid) in enumerate(peers):
            if uuid == me[1]:
                continue
            idx = visible.get(uuid)
            if idx is None:
                ok, why = False, f"rank {r}'s GPU is not visible here (CUDA_VISIBLE_DEVICES), P2P cannot be checked"
                break
            if not torch.cuda.can_device_access_peer(device.index, idx):
                ok, why = False, f"no P2P access from cuda:{device.index} to cuda:{idx}"
                break
    votes: List = [None] * ws
    dist.all_gather_object(votes, (ok, why), group=group)
    bad = [(r, v[1]) for r, v in enumerate(votes) if not v[0]]
    if bad:
        return False, f"rank {bad[0][0]}: {bad[0][1]}"
    return True, why


class CustomAllReduce:
    """CUDA-IPC all-reduce among the GPUs of one host (world size 2..8). Not thread-safe; one per group."""

    def __init__(self, group: Optional[dist.ProcessGroup] = None, device: Optional[torch.device] = None,
                 buffer_bytes: Optional[int] = None, timeout_s: Optional[float] = None,
                 max_blocks: Optional[int] = None, oneshot_max_bytes: int = 0):
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.device = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
        self.buffer_bytes = int(buffer_bytes if buffer_bytes is not None
                                else _env_num("SSMTP_AR_BUFFER_MB", 128.0) * (1 << 20))
        self.timeout_s = float(timeout_s if timeout_s is not None else _env_num("SSMTP_AR_TIMEOUT_S", 30.0))
        self.max_blocks = int(max_blocks if max_blocks is not None else _env_num("SSMTP_AR_MAX_BLOCKS", 0, int))
        self.debug = os.environ.get("SSMTP_AR_DEBUG", "") not in ("", "0")
        self.handle: Optional[int] = None
        config = (self.buffer_bytes, self.max_blocks, int(oneshot_max_bytes), os.environ.get("SSMTP_AR_FENCE", ""))
        err, ipc = None, b""
        try:
            self.handle = _C.ar_init(self.rank, self.world_size, self.device.index, self.buffer_bytes,
                                     self.timeout_s, self.max_blocks, int(oneshot_max_bytes))
            ipc = _C.ar_ipc_handle(self.handle)
        except Exception as e:  # noqa: BLE001 - reported to every rank below
            err = f"{type(e).__name__}: {e}"
        got: List = [None] * self.world_size
        dist.all_gather_object(got, (err, ipc, config), group=self.group)
        problems = [f"rank {r}: {g[0]}" for r, g in enumerate(got) if g[0]]
        if not problems and len({g[2] for g in got}) != 1:
            problems = [f"ranks disagree on the configuration (buffer, blocks, one-shot limit, fence): "
                        f"{[g[2] for g in got]}"]
        if not problems:
            try:
                _C.ar_open_peers(self.handle, b"".join(g[1] for g in got))
            except Exception as e:  # noqa: BLE001
                err = f"{type(e).__name__}: {e}"
            opened: List = [None] * self.world_size
            dist.all_gather_object(opened, err, group=self.group)
            problems = [f"rank {r}: {e}" for r, e in enumerate(opened) if e]
        if problems:
            self._free()
            raise RuntimeError("custom all-reduce setup failed: " + "; ".join(problems))

    def _stream(self) -> int:
        return torch.cuda.current_stream(self.device).cuda_stream

    def chunk_elems(self, dtype: torch.dtype, algo: str = "2shot", qdtype: Optional[str] = None,
                    block: int = 32) -> int:
        """Elements per launch (messages above this are reduced in several chunks)."""
        return _C.ar_chunk_elems(self.handle, _DTYPE_CODES[dtype], QCODES[qdtype] if qdtype else -1, block,
                                 ALGOS[algo])

    def all_reduce(self, t: torch.Tensor, out: Optional[torch.Tensor] = None, algo: str = "auto") -> torch.Tensor:
        """out (default t, in place) = sum over the ranks of t, on the current stream."""
        out = t if out is None else out
        _C.ar_all_reduce(self.handle, desc(t, "in"), desc(out, "out"), ALGOS[algo], self._stream())
        if self.debug:
            self.check(sync=True)
        return out

    def quant_all_reduce(self, t: torch.Tensor, qdtype: str = "int8", block: int = 32, algo: str = "2shot",
                         out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Block-scaled quantized all-reduce (semantics in ssmtp/parallel/quant_ar.py); algo "1shot" or "2shot"."""
        check_quant_args(qdtype, block, t.dtype)
        if algo not in ("1shot", "2shot"):
            raise ValueError(f"quantized all-reduce: algo must be '1shot' or '2shot', got {algo!r}")
        out = t if out is None else out
        _C.ar_quant_all_reduce(self.handle, desc(t, "in"), desc(out, "out"), QCODES[qdtype], block, ALGOS[algo],
                               self._stream())
        if self.debug:
            self.check(sync=True)
        return out

    def check(self, sync: bool = False) -> None:
        """Raise TimeoutError (a rank did not arrive) or ValueError (ranks disagreed on a message) if a launch
        failed. sync=True first waits for this device's work and reads the device's error word."""
        if self.handle is None:
            raise RuntimeError("custom all-reduce is closed")
        if sync:
            torch.cuda.synchronize(self.device)
        _C.ar_check(self.handle, int(sync))

    def probe(self, mode: str, nbytes: int) -> None:
        """Bandwidth probe for benchmarks: move nbytes from this rank's buffer into the next rank's, on the current
        stream, by the copy engine ("ce"), SM stores of zeros ("store") or an SM copy ("copy"). It overwrites the
        peer's buffer: only on a handle that no all-reduce uses. No cross-rank synchronisation."""
        if self.handle is None:
            raise RuntimeError("custom all-reduce is closed")
        _C.ar_probe(self.handle, {"ce": 0, "store": 1, "copy": 2}[mode], int(nbytes), self._stream())

    def _free(self) -> None:
        if self.handle is not None:
            h, self.handle = self.handle, None
            _C.ar_free(h)

    def close(self, barrier: bool = True) -> None:
        """Free the buffers and unmap the peers'. Collective: waits (barrier) until no rank can still write into
        our buffer, unless barrier=False (only when the peers are known to be done)."""
        if self.handle is None:
            return
        torch.cuda.synchronize(self.device)
        if barrier and dist.is_initialized():
            dist.barrier(group=self.group)
        self._free()

    def __repr__(self):
        return (f"CustomAllReduce(rank={self.rank}/{self.world_size}, {self.device}, buffer={self.buffer_bytes >> 20} "
                f"MiB, timeout={self.timeout_s} s)")
