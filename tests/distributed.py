"""Run a test function on N spawned ranks (gloo on CPU, or NCCL with one GPU per rank) and re-raise any failure.

    run_ranks(2, _check, arg1, arg2)   # calls _check(rank, world, arg1, arg2) in every rank

The function must be importable at module level (spawn pickles it by name).
"""
from __future__ import annotations

import os
import socket
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, backend, fn, args, errq):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        kw = {}
        if backend == "nccl":
            torch.cuda.set_device(rank)
            kw["device_id"] = torch.device("cuda", rank)
        dist.init_process_group(backend, rank=rank, world_size=world, **kw)
        fn(rank, world, *args)
    except BaseException:  # report every failure, assertion or crash, to the parent
        errq.put((rank, traceback.format_exc()))
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(world: int, fn, *args, backend: str = "gloo", timeout: float = 240.0, preload=None) -> None:
    """preload: module names imported once by a forkserver that then forks the ranks (a spawned rank spends seconds
    importing torch and transformers, most of a 4-rank test on a small CI machine); None spawns fresh ranks."""
    if preload is not None:
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["torch", "torch.distributed", "distributed", *preload])
    else:
        ctx = mp.get_context("spawn")
    errq = ctx.SimpleQueue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, backend, fn, args, errq)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    hung = [i for i, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
    errors = []
    while not errq.empty():
        errors.append(errq.get())
    if errors:
        rank, tb = sorted(errors)[0]
        raise AssertionError(f"rank {rank} of {world} failed:\n{tb}")
    if hung:
        raise AssertionError(f"ranks {hung} of {world} did not finish within {timeout} s")
    bad = [(i, p.exitcode) for i, p in enumerate(procs) if p.exitcode != 0]
    if bad:
        raise AssertionError(f"ranks exited with non-zero codes {bad}")


def run_tp(tp: int, fn, *args, preload=None, timeout: float = 240.0) -> None:
    """fn(rank, world, *args) at TP degree tp: in this process with one torch thread for tp = 1 (as every spawned rank
    runs; tiny GEMMs on a loaded 2-core machine crawl with two), else on tp gloo ranks (run_ranks)."""
    if tp > 1:
        run_ranks(tp, fn, *args, timeout=timeout, preload=preload)
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fn(0, 1, *args)
    finally:
        torch.set_num_threads(threads)


class FakeComm:
    """A communicator stand-in for single-process construction checks (shard sizes, error messages): rank and world
    size only; all_reduce is the identity."""

    def __init__(self, world_size: int, rank: int = 0):
        self.world_size, self.rank = world_size, rank

    def all_reduce(self, t):
        return t
