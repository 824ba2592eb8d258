"""Process setup shared by the CLI and the benchmark: torch.distributed from torchrun's environment."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_distributed():
    """Start torch.distributed when launched by torchrun (NCCL with one GPU per rank, gloo on CPUs) and make this
    rank's GPU current. Returns (world_size, rank, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    use_cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        if use_cuda:
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return world, rank, device


def shutdown() -> None:
    """Teardown in the order the communicator needs (ssmtp/parallel/comm.py): finish the GPU work, drop CUDA graphs
    that captured collectives (the caller has closed its LLM; gc collects what is left), close the communicators,
    then destroy the process group."""
    import gc

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    gc.collect()
    from ..parallel import comm

    close_all = getattr(comm, "shutdown", None)
    if close_all is not None:
        close_all()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
