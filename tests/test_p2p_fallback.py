"""The custom all-reduce needs CUDA P2P between all GPUs of the group; without it the Communicator must fall back
(custom -> symm -> nccl -> torch), say why in one log line, and still sum correctly.

* CPU (gloo ranks): ssmtp.parallel.custom_ar.p2p_status, the collective vote, with the CUDA queries it makes
  (device properties, visible devices, can_device_access_peer, host name) replaced per rank: all ranks must get the
  same answer and the reason of the first rank that said no; and Communicator._resolve's fallback chain.
* GPU (2 GPUs, NCCL): "no P2P" forced on one rank by replacing torch.cuda.can_device_access_peer there (the check
  p2p_status makes; no environment override exists or is needed): both ranks skip the custom kernels, the fallback
  is logged once on one line with the reason, and all-reduce results are exact.
"""
import logging
import os
import socket
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist

from distributed import run_ranks

# ------------------------------------------------------------------------------------------------ CPU: the vote


def _fake_cuda(monkeypatch_like, rank, uuids, peer_ok, host):
    """Replace the CUDA queries p2p_status makes: GPU `uuids[i]` is visible as cuda:i; peer_ok(a, b) says whether
    cuda:a reaches cuda:b; host is this rank's host name."""
    monkeypatch_like(torch.cuda, "get_device_properties", lambda d: SimpleNamespace(
        uuid=uuids[d.index if isinstance(d, torch.device) else d]))
    monkeypatch_like(torch.cuda, "device_count", lambda: len(uuids))
    monkeypatch_like(torch.cuda, "can_device_access_peer", peer_ok)
    monkeypatch_like(socket, "gethostname", lambda: host)


def _vote(rank, world, case):
    from ssmtp.parallel.custom_ar import p2p_status

    uuids = [f"GPU-{i}" for i in range(world)]
    peer_ok = lambda a, b: True  # noqa: E731
    host = "node0"
    device = torch.device("cuda", rank)
    if case == "rank1_no_p2p":
        peer_ok = (lambda a, b: False) if rank == 1 else peer_ok
    elif case == "two_hosts":
        host = f"node{rank}"
    elif case == "shared_gpu":
        uuids = ["GPU-0"] * world
        device = torch.device("cuda", 0)
    elif case == "peer_not_visible":  # CUDA_VISIBLE_DEVICES shows each rank only its own GPU
        uuids = [f"GPU-{rank}"]
        device = torch.device("cuda", 0)

    def setattr_(obj, name, value):
        setattr(obj, name, value)

    _fake_cuda(setattr_, rank, uuids, peer_ok, host)
    ok, why = p2p_status(None, device)
    votes = [None] * world
    dist.all_gather_object(votes, (ok, why))
    assert all(v == votes[0] for v in votes), f"ranks disagree: {votes}"
    expect = {"all_p2p": (True, "P2P access between all GPUs of one host"),
              "rank1_no_p2p": (False, "rank 1: no P2P access from cuda:1 to cuda:0"),
              "two_hosts": (False, "rank 0: ranks span hosts ['node0', 'node1']"),
              "shared_gpu": (False, "rank 0: two ranks share one GPU"),
              "peer_not_visible": (False, "rank 0: rank 1's GPU is not visible here (CUDA_VISIBLE_DEVICES), "
                                          "P2P cannot be checked")}[case]
    assert (ok, why) == expect, (ok, why)
    assert "\n" not in why


@pytest.mark.parametrize("case", ["all_p2p", "rank1_no_p2p", "two_hosts", "shared_gpu", "peer_not_visible"])
def test_p2p_vote_cpu(case):
    run_ranks(2, _vote, case)


def test_resolve_falls_back_in_order():
    """The chain custom -> symm -> nccl -> torch, with the backends that exist (no process group needed)."""
    from ssmtp.parallel.comm import Communicator

    c = Communicator.__new__(Communicator)
    c.gpu, c._custom, c._symm, c._nccl = True, None, None, None
    marker = object()
    assert c._resolve("custom")[0] == "torch"
    c._nccl = marker
    assert c._resolve("custom")[0] == "nccl" and c._resolve("custom-2shot")[0] == "nccl"
    c._symm = marker
    assert c._resolve("custom")[0] == "symm-1shot" and c._resolve("custom-2shot")[0] == "symm-2shot"
    c._custom = marker
    assert c._resolve("custom-1shot")[0].startswith("custom")
    assert c._resolve("torch")[0] == "torch"
    c.gpu = False
    assert c._resolve("custom")[0] == "torch"  # a CPU (gloo) group has only torch.distributed


# ------------------------------------------------------------------------------------------------ GPU: the fallback


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def _no_p2p_rank(rank, world):
    from ssmtp.parallel.comm import Communicator

    if rank == 1:  # only one rank lacks the path: the vote must still keep every rank off the custom kernels
        torch.cuda.can_device_access_peer = lambda a, b: False
    lines = _Lines()
    log = logging.getLogger("ssmtp")
    log.addHandler(lines)
    log.setLevel(logging.INFO)
    dev = torch.device("cuda", rank)
    reason = "rank 1: no P2P access from cuda:1 to cuda:0"
    try:
        c = Communicator(None, backend="custom")
        assert c._custom is None, "custom all-reduce set up without P2P"
        t = torch.full((4099,), float(rank + 1), device=dev)
        used = c.backend_for(t)
        assert not used.startswith("custom"), used
        c.all_reduce(t)
        assert bool((t == 3.0).all()), t[:4]
        warns = [r.getMessage() for r in lines.records if r.levelno >= logging.WARNING]
        assert len(warns) == 1, warns
        assert "\n" not in warns[0] and "'custom' is unavailable" in warns[0] and reason in warns[0], warns[0]
        assert used in warns[0], (used, warns[0])
        c.close()

        lines.records.clear()
        auto = Communicator(None)  # auto: no warning (nothing was asked for), the plan line names the reason
        plan = [r.getMessage() for r in lines.records if "ssmtp all-reduce rank" in r.getMessage()]
        assert len(plan) == 1 and reason in plan[0] and "\n" not in plan[0], plan
        for n in (1, 1000, 300001):
            x = torch.arange(n, device=dev, dtype=torch.float32) * (rank + 1)
            assert not auto.backend_for(x).startswith("custom")
            auto.all_reduce(x)
            assert torch.equal(x, torch.arange(n, device=dev, dtype=torch.float32) * 3)
        os.environ["SSMTP_QUANT_MIN_BYTES"] = "0"  # quantize this small message too
        quant = Communicator(None, quant="int8")  # the quantized path runs over an all-gather instead
        del os.environ["SSMTP_QUANT_MIN_BYTES"]
        assert quant.backend_for(torch.ones(1000, device=dev)) == "quant-int8"
        assert quant._custom is None
        y = torch.ones(1000, device=dev)
        quant.all_reduce(y)
        assert torch.allclose(y, torch.full_like(y, 2.0))
        for comm in (auto, quant):
            comm.close()
        torch.cuda.synchronize()
        dist.barrier()
    finally:
        log.removeHandler(lines)


@pytest.mark.cuda
@pytest.mark.multigpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_no_p2p_falls_back_logged_and_correct():
    run_ranks(2, _no_p2p_rank, backend="nccl")
