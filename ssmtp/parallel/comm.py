"""The communicator: the one object through which every TP collective goes.

TP modules call ``comm.all_reduce(t)``: sum over the group, in place, returns t. Backends behind that interface:

  "torch"         torch.distributed.all_reduce on the group (gloo on CPU, NCCL on GPU); always available.
  "nccl"          ncclAllReduce called from ssmtp's C core on torch's own communicator (ssmtp/parallel/nccl.py);
                  less Python/watchdog overhead than "torch"; the path across hosts.
  "custom"        the CUDA-IPC all-reduce for GPUs of one host with P2P access (ssmtp/parallel/custom_ar.py);
                  "custom-1shot" / "custom-2shot" / "custom-lamport" force the algorithm, "custom" picks by size.
  "symm"          torch's symmetric-memory one-/two-shot all-reduce (torch.distributed._symmetric_memory), the
                  maintained baseline; "symm-1shot" / "symm-2shot" force the algorithm. Sizes must be warmed up
                  outside CUDA-graph capture (a new size makes a collective allocation).
  "quant-int8"    block-scaled quantized all-reduce (ssmtp/parallel/quant_ar.py for the semantics). It changes the
  "quant-fp8"     numerics, so it is used only when asked for: SSMTP_ALLREDUCE=quant-int8 or
                  Communicator(group, quant="int8"). Block size: quant_block= or SSMTP_QUANT_BLOCK (default 32).
                  Messages below the measured crossover ("quant_min_bytes" in the thresholds; SSMTP_QUANT_MIN_BYTES
                  overrides, 0 = quantize everything) take the exact auto path: there quantizing is slower.
                  Runs on the custom P2P kernels when available, else over an all-gather (NCCL on GPUs, gloo on CPU).
  "auto"          (default) per message size from measured thresholds (ssmtp/parallel/thresholds.py, which says
                  where and when they were measured; SSMTP_AR_THRESHOLDS=file.json overrides); the plan is logged
                  once (logger "ssmtp").

``SSMTP_ALLREDUCE`` overrides the backend given to the constructor. An unavailable backend falls back along
custom -> symm -> nccl -> torch with the reason logged once (warning).

Safe teardown order (verified on 2x H200; the hang it avoids is NCCL waiting in ncclCommDestroy for CUDA graphs that
captured collectives on the communicator being destroyed):
  1. torch.cuda.synchronize()
  2. drop every CUDA graph that captured a collective (``del graph``; ``gc.collect()``)
  3. ``comm.close()`` on every rank (or ``ssmtp.parallel.comm.shutdown()`` for all communicators of get_communicator)
  4. ``dist.destroy_process_group()``
"""
from __future__ import annotations

import gc
import json
import logging
import os
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

from .quant_ar import BLOCKS, QDTYPES, check_quant_args, quant_all_reduce_gather

log = logging.getLogger("ssmtp")

BACKENDS = ("auto", "torch", "nccl", "custom", "custom-1shot", "custom-2shot", "custom-lamport", "symm",
            "symm-1shot", "symm-2shot", "quant-int8", "quant-fp8")
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def load_thresholds(path: Optional[str] = None) -> dict:
    """The measured size thresholds: ssmtp/parallel/thresholds.py, or a JSON file in that format (e.g. a fresh
    `bench_allreduce.py --thresholds-out`); {} (auto = nccl for every size, logged) when it cannot be read."""
    if path is None:
        from .thresholds import TABLE

        return TABLE
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        log.warning("ssmtp: cannot read all-reduce thresholds %s (%s); auto uses nccl for every size", path, e)
        return {}


def _rules_for(table: dict, world_size: int, key: str) -> List[Tuple[Optional[int], str]]:
    entry = table.get("world_sizes", {}).get(str(world_size)) or table.get("default") or {}
    return [(r.get("max_bytes"), r["backend" if key == "rules" else "algo"]) for r in entry.get(key, [])]


def _fmt_bytes(n: Optional[int]) -> str:
    if n is None:
        return "any size"
    for unit, s in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << s:
            return f"{n / (1 << s):g} {unit}"
    return f"{n} B"


class SymmAllReduce:
    """torch symmetric-memory all-reduce with one staging buffer per dtype (grown collectively when needed)."""

    def __init__(self, group: Optional[dist.ProcessGroup], device: torch.device):
        import warnings

        import torch.distributed._symmetric_memory as symm_mem

        self.symm_mem = symm_mem
        self.group = group if group is not None else dist.group.WORLD
        self.group_name = self.group.group_name
        self.device = device
        if not hasattr(torch.ops.symm_mem, "one_shot_all_reduce"):
            raise RuntimeError(f"torch {torch.__version__} has no symm_mem.one_shot_all_reduce")
        enable = getattr(symm_mem, "enable_symm_mem_for_group", None)
        if enable is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                enable(self.group_name)
        self.bufs: Dict[torch.dtype, torch.Tensor] = {}

    def buffer(self, n: int, dtype: torch.dtype) -> torch.Tensor:
        buf = self.bufs.get(dtype)
        if buf is None or buf.numel() < n:
            buf = self.symm_mem.empty(max(n, 2 * (buf.numel() if buf is not None else 0)), dtype=dtype,
                                      device=self.device)
            self.symm_mem.rendezvous(buf, self.group_name)
            self.bufs[dtype] = buf
        return buf[:n]

    @staticmethod
    def supports(t: torch.Tensor) -> bool:
        """What torch 2.11's one_shot/two_shot kernels accepted on 2x H200 (2026-11-22): float32 of any size,
        bfloat16 of a whole number of 4-byte words; float16 raised "not implemented for 'Half'"."""
        return t.dtype in (torch.float32, torch.bfloat16) and (t.numel() * t.element_size()) % 4 == 0

    def all_reduce(self, t: torch.Tensor, algo: str) -> torch.Tensor:
        flat = t.view(-1)
        buf = self.buffer(flat.numel(), t.dtype)
        buf.copy_(flat)
        if algo == "1shot":
            flat.copy_(torch.ops.symm_mem.one_shot_all_reduce(buf, "sum", self.group_name))
        else:
            torch.ops.symm_mem.two_shot_all_reduce_(buf, "sum", self.group_name)
            flat.copy_(buf)
        return t

    def close(self):
        self.bufs.clear()


class Communicator:
    """All-reduce over a process group (None = the default group, or a single process when torch.distributed is not
    initialised). Construct it on every rank of the group at the same time: GPU backends set up collectively."""

    def __init__(self, group: Optional[dist.ProcessGroup] = None, backend: Optional[str] = None,
                 quant: Optional[str] = None, quant_block: Optional[int] = None,
                 device: Optional[torch.device] = None, buffer_bytes: Optional[int] = None,
                 timeout_s: Optional[float] = None, thresholds: Optional[dict] = None):
        self.group = group
        if dist.is_available() and dist.is_initialized():
            self.rank = dist.get_rank(group)
            self.world_size = dist.get_world_size(group)
        else:
            if group is not None:
                raise ValueError("a process group was given but torch.distributed is not initialised")
            self.rank, self.world_size = 0, 1
        env = os.environ.get("SSMTP_ALLREDUCE", "").strip().lower()
        requested = env or (backend or "auto").lower()
        if requested not in BACKENDS:
            raise ValueError(f"all-reduce backend {requested!r} ({'SSMTP_ALLREDUCE' if env else 'backend='}); "
                             f"expected one of {BACKENDS}")
        if requested.startswith("quant-"):
            quant = quant or requested[len("quant-"):]
        if quant is not None:
            block = quant_block if quant_block is not None else int(os.environ.get("SSMTP_QUANT_BLOCK", "32"))
            check_quant_args(quant, block)
        else:
            block = None
        self.requested, self.quant, self.quant_block = requested, quant, block
        self.backend = requested  # kept for existing callers (repr)
        self._custom = self._nccl = self._symm = None
        self._notes: List[str] = []
        self._used: set = set()
        self._plan_cache: Dict[Tuple[int, torch.dtype], Tuple[str, Callable]] = {}
        self.device = torch.device("cpu")
        self.gpu = False
        if self.world_size > 1:
            pg_backend = str(dist.get_backend(group)).lower()
            self.gpu = "nccl" in pg_backend and torch.cuda.is_available()
            if self.gpu:
                self.device = (torch.device("cuda", torch.cuda.current_device()) if device is None
                               else torch.device(device))
                self._setup_gpu(requested, buffer_bytes, timeout_s)
        if thresholds is None and self.gpu:
            thresholds = load_thresholds(os.environ.get("SSMTP_AR_THRESHOLDS") or None)
        table = thresholds or {}
        self._measured = table.get("measured", {})
        self._rules = _rules_for(table, self.world_size, "rules") or [(None, "nccl")]
        self._qrules = _rules_for(table, self.world_size, "quant_rules") or [(None, "2shot")]
        entry = table.get("world_sizes", {}).get(str(self.world_size)) or table.get("default") or {}
        qmin = os.environ.get("SSMTP_QUANT_MIN_BYTES")
        try:
            self._quant_min = int(qmin) if qmin not in (None, "") else int(entry.get("quant_min_bytes") or 0)
        except ValueError:
            raise ValueError(f"SSMTP_QUANT_MIN_BYTES={qmin!r}: expected a byte count") from None
        self._log_plan()

    # ---------------------------------------------------------------------------------------------- setup

    def _setup_gpu(self, requested: str, buffer_bytes, timeout_s) -> None:
        from .custom_ar import CustomAllReduce, p2p_status

        want_custom = requested.startswith("custom") or requested == "auto" or self.quant is not None
        want_symm = requested in ("auto", "symm", "symm-1shot", "symm-2shot")
        if want_custom:
            if not 2 <= self.world_size <= 8:
                self._notes.append(f"custom: world size {self.world_size} not in 2..8")
            else:
                ok, why = p2p_status(self.group, self.device)
                if ok:
                    try:
                        self._custom = CustomAllReduce(self.group, self.device, buffer_bytes=buffer_bytes,
                                                       timeout_s=timeout_s)
                        self._notes.append(f"custom: ready ({why})")
                    except RuntimeError as e:
                        self._notes.append(f"custom: setup failed ({e})")
                else:
                    self._notes.append(f"custom: unavailable ({why})")
        if want_symm:
            try:
                self._symm = SymmAllReduce(self.group, self.device)
                self._notes.append("symm: ready")
            except Exception as e:  # noqa: BLE001 - any import/setup problem means "unavailable"
                self._notes.append(f"symm: unavailable ({type(e).__name__}: {e})")
        if requested == "torch":
            return
        # the C NCCL path: the fallback for everything above and the path across hosts
        from .nccl import NcclComm

        try:
            self._nccl = NcclComm(self.group, self.device)
            self._notes.append(f"nccl: {self._nccl.how}")
        except RuntimeError as e:
            self._notes.append(f"nccl: unavailable ({e}); torch.distributed is the fallback")

    def _log_plan(self) -> None:
        if self.world_size == 1:
            return
        if self.quant:
            where = ("custom P2P kernels" if self._custom else
                     "all-gather over NCCL" if self._nccl else "all-gather over torch.distributed")
            plan = f"quant-{self.quant} block {self.quant_block} ({where})" + (
                f" from {_fmt_bytes(self._quant_min)}, the exact auto path below" if self._quant_min else "")
        elif self.requested == "auto" and self.gpu:
            plan = "auto: " + ", ".join(f"<= {_fmt_bytes(m)} {self._resolve(b)[0]}" if m is not None
                                        else f"above {self._resolve(b)[0]}" for m, b in self._rules)
            src = self._measured
            plan += (f" (thresholds measured {src.get('when', '?')} on {src.get('where', '?')})" if src
                     else " (no measured thresholds)")
        else:
            plan = self._resolve(self.requested if self.gpu else "torch")[0]
        msg = (f"ssmtp all-reduce rank {self.rank}/{self.world_size} on {self.device}: {plan}"
               + (f"; {'; '.join(self._notes)}" if self._notes else ""))
        log.info(msg)
        if self.requested not in ("auto", "torch") and not self.quant:
            got = self._resolve(self.requested)[0] if self.gpu else "torch"
            if not got.startswith(self.requested.split("-")[0]):
                log.warning("ssmtp: all-reduce backend %r is unavailable here, using %s (%s)", self.requested, got,
                            "; ".join(self._notes) or "CPU/gloo group")

    # ---------------------------------------------------------------------------------------------- dispatch

    def _resolve(self, name: str) -> Tuple[str, Callable[[torch.Tensor], torch.Tensor]]:
        """(name actually used, function) for a backend name, falling back custom -> symm -> nccl -> torch."""
        if not self.gpu:
            return "torch", self._torch
        algo = name.split("-", 1)[1] if "-" in name else None
        if name.startswith("custom") and self._custom is not None:
            a = algo or "auto"
            return f"custom-{a}", lambda t: self._custom_call(t, a)
        if name.startswith(("custom", "symm")) and self._symm is not None:
            a = algo if algo in ("1shot", "2shot") else "1shot"
            return f"symm-{a}", lambda t: self._symm_call(t, a)
        if name != "torch" and self._nccl is not None:
            return "nccl", self._nccl_call
        return "torch", self._torch

    def _torch(self, t: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(t, group=self.group)
        return t

    def _nccl_call(self, t: torch.Tensor) -> torch.Tensor:
        if not t.is_contiguous():
            return self._torch(t)
        return self._nccl.all_reduce(t)

    def _custom_call(self, t: torch.Tensor, algo: str) -> torch.Tensor:
        if t.is_contiguous():
            return self._custom.all_reduce(t, algo=algo)
        tmp = t.contiguous()
        self._custom.all_reduce(tmp, algo=algo)
        return t.copy_(tmp)

    def _symm_call(self, t: torch.Tensor, algo: str) -> torch.Tensor:
        if not self._symm.supports(t):  # a dtype/size torch's kernels reject: the next backend in the chain
            return self._nccl_call(t) if self._nccl is not None else self._torch(t)
        if not t.is_contiguous():
            tmp = t.contiguous()
            self._symm.all_reduce(tmp, algo)
            return t.copy_(tmp)
        return self._symm.all_reduce(t, algo)

    def _quant_call(self, t: torch.Tensor) -> torch.Tensor:
        src = t if t.is_contiguous() else t.contiguous()
        if self._custom is not None:
            nbytes = src.numel() * src.element_size()
            algo = next(a for m, a in self._qrules if m is None or nbytes <= m) if self._qrules else "2shot"
            self._custom.quant_all_reduce(src, self.quant, self.quant_block, algo=algo)
        elif self._nccl is not None:
            quant_all_reduce_gather(src, self.quant, self.quant_block, self.group, gather=self._nccl.all_gather)
        else:
            quant_all_reduce_gather(src, self.quant, self.quant_block, self.group)
        return t if src is t else t.copy_(src)

    def _plan(self, t: torch.Tensor) -> Tuple[str, Callable]:
        nbytes = t.numel() * t.element_size()
        key = (nbytes, t.dtype)
        hit = self._plan_cache.get(key)
        if hit is not None:
            return hit
        if self.quant and t.dtype in _FLOATS and nbytes >= self._quant_min:
            plan = (f"quant-{self.quant}", self._quant_call)
        elif t.dtype not in _FLOATS or not self.gpu:
            plan = ("torch", self._torch)
        elif self.requested == "auto" or self.quant:  # quant mode, below the crossover: the exact auto path
            backend = next(b for m, b in self._rules if m is None or nbytes <= m)
            plan = self._resolve(backend)
        else:
            plan = self._resolve(self.requested)
        if len(self._plan_cache) < 4096:
            self._plan_cache[key] = plan
        if plan[0] not in self._used:
            self._used.add(plan[0])
            log.info("ssmtp all-reduce rank %d: first use of %s (%s %s, backend %r)", self.rank, plan[0],
                     _fmt_bytes(nbytes), str(t.dtype).replace("torch.", ""), self.requested)
        return plan

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum t over the group in place and return it."""
        if self.world_size == 1:
            return t
        if self.quant and t.dtype in _FLOATS:
            check_quant_args(self.quant, self.quant_block, t.dtype)
        return self._plan(t)[1](t)

    def backend_for(self, t: torch.Tensor) -> str:
        """The backend all_reduce(t) would use (for logs and tests)."""
        return "none" if self.world_size == 1 else self._plan(t)[0]

    def check(self) -> None:
        """Raise if the custom all-reduce recorded a timeout or a message mismatch (cheap, no synchronisation)."""
        if self._custom is not None:
            self._custom.check(sync=False)

    def close(self) -> None:
        """Free IPC buffers and communicators (collective: call on every rank; see the teardown order above)."""
        if self._custom is not None:
            self._custom.close()
            self._custom = None
        if self._symm is not None:
            self._symm.close()
            self._symm = None
        if self._nccl is not None:
            self._nccl.close()
            self._nccl = None
        self._plan_cache.clear()
        self.gpu = False

    def __repr__(self):
        return (f"Communicator(rank={self.rank}, world_size={self.world_size}, backend={self.requested!r}"
                + (f", quant={self.quant!r}, block={self.quant_block}" if self.quant else "") + ")")


_COMMS: dict = {}


def get_communicator(group: Optional[dist.ProcessGroup] = None) -> Communicator:
    """One communicator per group per process (they hold buffers that must not be duplicated)."""
    key = id(group) if group is not None else None
    if key not in _COMMS:
        _COMMS[key] = Communicator(group)
    return _COMMS[key]


def shutdown() -> None:
    """Close every communicator made by get_communicator (collective), after synchronising the GPU and collecting
    garbage so that dropped CUDA graphs are really destroyed. Then dist.destroy_process_group() is safe."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    gc.collect()
    for key in list(_COMMS):
        _COMMS.pop(key).close()


__all__ = ["Communicator", "get_communicator", "shutdown", "BACKENDS", "QDTYPES", "BLOCKS"]
