"""Faults across ranks: a rank that dies mid-generation makes the survivors fail with an error, not hang."""
import datetime
import os
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from distributed import free_port
from tiny_models import build

DEADLINE_S = 60.0  # the survivors must have raised well before this (gloo's own timeout is set to 20 s below)


def _rank(rank, world, port, q):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=20))
    import ssmtp

    model = build("mamba", "odd")
    ssmtp.parallelize(model)
    ids = torch.randint(3, 99, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(ids)  # everyone completes one forward
        if rank == world - 1:
            os._exit(3)  # this rank dies without a word, mid-generation
        t0 = time.monotonic()
        try:
            for _ in range(200):
                model(ids)
            q.put((rank, "no error", time.monotonic() - t0))
        except Exception as e:  # noqa: BLE001 - any clear Python error is the expected outcome
            q.put((rank, f"{type(e).__name__}: {str(e)[:200]}", time.monotonic() - t0))
    os._exit(0)  # the process group is broken; skip its teardown


def test_dead_rank_makes_the_others_raise_not_hang():
    world = 3
    ctx = mp.get_context("spawn")
    q = ctx.SimpleQueue()
    port = free_port()
    procs = [ctx.Process(target=_rank, args=(r, world, port, q)) for r in range(world)]
    for p in procs:
        p.start()
    t0 = time.monotonic()
    for p in procs:
        p.join(max(1.0, 240 - (time.monotonic() - t0)))
    hung = [i for i, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
    reports = []
    while not q.empty():
        reports.append(q.get())
    assert not hung, f"ranks {hung} hung after a peer died; reports: {reports}"
    assert procs[-1].exitcode == 3
    survivors = sorted(reports)
    assert [r for r, _, _ in survivors] == list(range(world - 1)), survivors
    for rank, what, secs in survivors:
        assert what != "no error", f"rank {rank} kept running without its peer"
        assert secs < DEADLINE_S, f"rank {rank} took {secs:.1f} s to notice the dead peer ({what})"
