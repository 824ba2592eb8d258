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


# ------------------------------------------------------------------------------------------------ determinism
# The same inputs give the same bits: across runs (a fresh engine in the same process, and a fresh launch of the
# ranks), and across the ranks of a TP group (every rank holds the same logits and samples the same tokens).
# Covered: the engine's greedy and seeded sampling (tokens and the logits of every generated token, more prompts
# than slots so that slots are reused) and the TP model forward (an HF model after ssmtp.parallelize).

DET_PROMPTS = [[5, 6, 7, 8, 9], [10, 11, 12], list(range(20, 41)), [3], [44, 45, 46, 47]]
DET_NEW = 8


def _bits(t):
    t = t.detach().contiguous().cpu()
    return t.view(torch.int32) if t.dtype == torch.float32 else t


def _same_bits(a, b, what):
    assert type(a) is type(b), what
    if isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for k in a:
            _same_bits(a[k], b[k], f"{what}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            _same_bits(x, y, f"{what}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.shape == b.shape and a.dtype == b.dtype, what
        assert torch.equal(_bits(a), _bits(b)), f"{what}: not bitwise identical"
    else:
        assert a == b, f"{what}: {a!r} != {b!r}"


def _det_outputs():
    """Engine tokens + logits (greedy and seeded sampling) and one TP forward, on a fresh engine and model."""
    from ssmtp import LLM, SamplingParams

    llm = LLM("tiny", num_slots=3, prefix_cache=False, progress=False)  # 5 prompts, 3 slots: slots are reused
    greedy = llm.generate(DET_PROMPTS, max_new_tokens=DET_NEW, ignore_eos=True, return_logits=True)
    params = [SamplingParams(max_new_tokens=DET_NEW, temperature=0.9, top_k=50 if i % 2 else 0,
                             top_p=0.9 if i % 3 else 1.0, seed=1000 + i, ignore_eos=True)
              for i in range(len(DET_PROMPTS))]
    sampled = llm.generate(DET_PROMPTS, params, return_logits=True)
    llm.close()
    out = {name: [(o.token_ids, torch.stack(o.logits)) for o in outs]
           for name, outs in (("greedy", greedy), ("sampled", sampled))}
    import ssmtp

    model = build("mamba", "odd")
    ssmtp.parallelize(model)
    ids = torch.randint(3, 99, (2, 11), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out["forward"] = model(ids).logits
    return out


def _det_rank(rank, world, tmpdir, tag):
    first, again = _det_outputs(), _det_outputs()
    _same_bits(first, again, f"rank {rank}: a second run in the same process")
    everyone = [None] * world
    dist.all_gather_object(everyone, first)
    for r in range(1, world):
        _same_bits(everyone[0], everyone[r], f"rank 0 vs rank {r}")
    torch.save(first, os.path.join(tmpdir, f"{tag}-rank{rank}.pt"))


def test_deterministic_single_process():
    torch.manual_seed(123)  # the engine must not depend on the global RNG: change it between the runs
    a = _det_outputs()
    torch.manual_seed(456)
    b = _det_outputs()
    _same_bits(a, b, "TP=1, two runs")
    assert a["greedy"][0][0] != a["sampled"][0][0] or a["greedy"][1][0] != a["sampled"][1][0]  # sampling did sample


def test_deterministic_across_runs_and_ranks_tp2(tmp_path):
    from distributed import run_ranks

    for tag in ("launch0", "launch1"):
        run_ranks(2, _det_rank, str(tmp_path), tag, preload=["transformers", "ssmtp", "tiny_models", __name__])
    runs = {(tag, r): torch.load(tmp_path / f"{tag}-rank{r}.pt") for tag in ("launch0", "launch1") for r in (0, 1)}
    for key, res in runs.items():
        _same_bits(runs[("launch0", 0)], res, f"launch0/rank0 vs {key[0]}/rank{key[1]}")
