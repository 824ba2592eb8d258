"""Long-run leak check: memory must stay flat over many engine steps and over communicator re-creation.

    python benchmarks/leak_check.py --out leak-tp1.json                          # one GPU, 10,000 decode steps
    torchrun --nproc_per_node 2 benchmarks/leak_check.py --out leak-tp2.json     # TP=2 + communicator cycles
    python benchmarks/leak_check.py --device cpu --steps 200 --every 50          # CPU smoke run

1. Engine: continuous requests (a new one queued whenever the queue runs low; prompt lengths, output lengths and
   greedy / seeded sampling drawn at random) for --steps decode steps, so that slots, decode graphs (graph decode on
   CUDA) and prefix-cache entries are reused thousands of times. Every --every steps: torch.cuda.memory_allocated and
   memory_reserved, the device memory in use (cudaMemGetInfo: also counts allocations outside torch's allocator and
   mapped IPC memory), the process RSS and open file descriptors. Growth is measured from the sample taken after
   --warmup steps (graphs captured, the prefix cache filled) to the last sample.
2. Communicator (TP >= 2 on GPUs): --comm-cycles times create a Communicator (custom all-reduce: CUDA IPC buffers
   exchanged and mapped; NCCL from C), all-reduce a few sizes (checked against the exact sum), close it. After each
   cycle: device memory in use, torch allocator figures, RSS, file descriptors and memory mappings. A handle, buffer
   or IPC mapping that is not released grows these by a buffer per cycle (the custom all-reduce buffer is
   --ar-buffer-mb MiB, larger than the threshold).

The verdict is "pass" when every growth is below its threshold (stated in the JSON next to the figures). rank 0
writes the JSON (all ranks' figures); the exit status is 1 when any rank fails.
"""
import argparse
import gc
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

MIB = 1 << 20


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _count(path: str) -> int:
    try:
        if os.path.isdir(path):
            return len(os.listdir(path))
        with open(path) as f:
            return sum(1 for _ in f)
    except OSError:
        return -1


def sample(device: torch.device) -> dict:
    s = {"rss": _rss_bytes(), "fds": _count("/proc/self/fd"), "maps": _count("/proc/self/maps")}
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        s.update(allocated=torch.cuda.memory_allocated(device), reserved=torch.cuda.memory_reserved(device),
                 device_used=total - free)
    return s


METRICS = ("allocated", "reserved", "device_used", "rss", "fds", "maps")


def growth(first: dict, last: dict) -> dict:
    return {k: last[k] - first[k] for k in METRICS if k in first and k in last}


def judge(g: dict, limits: dict) -> tuple:
    """(verdict, reasons) for growths g against limits {key: max growth}."""
    bad = [f"{k} grew {g[k] / MIB:.1f} MiB > {limits[k] / MIB:.1f} MiB" if limits[k] >= MIB
           else f"{k} grew {g[k]} > {limits[k]}" for k in limits if k in g and g[k] > limits[k]]
    return ("pass" if not bad else "fail"), bad


# ---------------------------------------------------------------------------------------------------- engine


def engine_run(args, device: torch.device, rank: int) -> dict:
    from ssmtp import LLM, SamplingParams

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    llm = LLM(args.model, device=device, dtype=dtype, max_batch=args.max_batch, num_slots=args.max_batch,
              prefix_cache_entries=args.prefix_entries, progress=False)
    rng = random.Random(args.seed)  # the same stream on every rank: ranks must queue the same requests
    vocab = llm.vocab_size
    queued = finished = 0

    def top_up():
        nonlocal queued
        while len(llm._waiting) < args.max_batch:
            n = rng.randint(1, args.max_prompt)
            prompt = [rng.randrange(3, vocab) for _ in range(n)]
            greedy = rng.random() < 0.5
            llm.add_request(prompt, SamplingParams(max_new_tokens=rng.randint(8, args.max_new),
                                                   temperature=0.0 if greedy else 0.8, top_k=rng.choice([0, 40]),
                                                   seed=rng.randrange(1 << 30), ignore_eos=True))
            queued += 1

    samples = []
    t0 = time.perf_counter()
    next_mark = 0
    while True:
        top_up()
        llm.step()
        finished += len(llm.take_finished())  # outputs are dropped: they must not count as growth
        steps = llm.steps["decode"]
        if steps >= next_mark:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            gc.collect()
            s = sample(device)
            s.update(step=steps, finished=finished, prefill_steps=llm.steps["prefill"],
                     prefix_entries=len(llm.prefix), seconds=round(time.perf_counter() - t0, 2))
            samples.append(s)
            if rank == 0 and args.verbose:
                print(f"[leak] step {steps}: " + ", ".join(f"{k}={v / MIB:.1f}MiB" if k in (
                    "rss", "allocated", "reserved", "device_used") else f"{k}={v}" for k, v in s.items()),
                    flush=True)
            if steps >= args.steps:
                break
            next_mark += args.every
    stats = llm.stats()
    llm.close()
    base = next((s for s in samples if s["step"] >= args.warmup), samples[0])
    g = growth(base, samples[-1])
    # a few descriptors may open lazily (compile workers, NCCL proxies); a per-step leak would add thousands
    limits = {"rss": args.max_rss_mib * MIB, "fds": 8}
    if device.type == "cuda":
        limits.update(allocated=args.max_alloc_mib * MIB, reserved=args.max_reserved_mib * MIB,
                      device_used=args.max_device_mib * MIB)
    verdict, reasons = judge(g, limits)
    return {"samples": samples, "baseline_step": base["step"], "growth": g, "limits": limits, "verdict": verdict,
            "reasons": reasons, "requests_queued": queued, "requests_finished": finished,
            "graphs": stats.get("graphs"), "slots": stats.get("slots"), "prefix_entries": stats.get("prefix_entries")}


# ---------------------------------------------------------------------------------------------------- communicator


def comm_cycles(args, device: torch.device, rank: int, world: int) -> dict:
    from ssmtp.parallel.comm import Communicator

    samples, errors, backends = [], [], set()
    sizes = (1, 1000, 65537, 1 << 20)
    for cycle in range(args.comm_cycles + 1):
        try:
            comm = Communicator(None, backend=args.comm_backend, buffer_bytes=args.ar_buffer_mb * MIB)
            for n in sizes:
                t = torch.full((n,), float(rank + 1), device=device, dtype=torch.float32)
                comm.all_reduce(t)
                want = world * (world + 1) / 2
                if not bool((t == want).all()):
                    errors.append(f"cycle {cycle}: all-reduce of {n} elements gave {t[:4].tolist()}, want {want}")
            backends.update(k for k in getattr(comm, "_used", ()) if isinstance(k, str))
            torch.cuda.synchronize(device)
            comm.close()
            del comm, t
        except Exception as e:  # noqa: BLE001 - recorded and judged
            errors.append(f"cycle {cycle}: {type(e).__name__}: {e}")
            break
        gc.collect()
        torch.cuda.synchronize(device)
        dist.barrier()
        s = sample(device)
        s["cycle"] = cycle
        samples.append(s)
    base = samples[min(1, len(samples) - 1)] if samples else {}  # cycle 0 pays one-time costs (NCCL, kernels)
    g = growth(base, samples[-1]) if samples else {}
    limits = {"device_used": args.max_device_mib * MIB, "allocated": args.max_alloc_mib * MIB,
              "reserved": args.max_reserved_mib * MIB, "rss": args.max_rss_mib * MIB, "fds": 8,
              "maps": args.max_maps}
    verdict, reasons = judge(g, limits)
    if errors:
        verdict, reasons = "fail", reasons + errors[:5]
    return {"backend": args.comm_backend, "backends_used": sorted(backends), "cycles": args.comm_cycles,
            "ar_buffer_mib": args.ar_buffer_mb,
            "samples": samples, "growth": g, "limits": limits, "verdict": verdict, "reasons": reasons}


# ---------------------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default="tiny", help="preset or HF directory (default: the random 'tiny' preset)")
    p.add_argument("--steps", type=int, default=10000, help="decode steps")
    p.add_argument("--every", type=int, default=500, help="sample every this many decode steps")
    p.add_argument("--warmup", type=int, default=None, help="growth is measured from this step (default 2 x every)")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-prompt", type=int, default=48)
    p.add_argument("--max-new", type=int, default=96)
    p.add_argument("--prefix-entries", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--comm-cycles", type=int, default=20, help="Communicator create/destroy cycles (TP >= 2, CUDA)")
    p.add_argument("--comm-backend", default="custom", help="backend of the cycled Communicator")
    p.add_argument("--ar-buffer-mb", type=int, default=64, help="custom all-reduce buffer per rank in the cycles")
    p.add_argument("--max-alloc-mib", type=float, default=1.0, help="limit on torch.cuda.memory_allocated growth")
    p.add_argument("--max-reserved-mib", type=float, default=32.0, help="limit on memory_reserved growth")
    p.add_argument("--max-device-mib", type=float, default=32.0, help="limit on device memory in use growth")
    p.add_argument("--max-rss-mib", type=float, default=64.0, help="limit on process RSS growth")
    p.add_argument("--max-maps", type=int, default=16, help="limit on the growth of mapped regions (comm cycles)")
    p.add_argument("--out", default=None, help="JSON path (rank 0)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.warmup is None:
        args.warmup = min(2 * args.every, args.steps // 2)

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if args.device == "cuda":
        if not torch.cuda.is_available():
            p.error("--device cuda: no CUDA device (use --device cpu for a smoke run)")
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        if world > 1:
            dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(1)
        if world > 1:
            dist.init_process_group("gloo")

    res = {"config": {k: v for k, v in vars(args).items() if k != "out"}, "world_size": world,
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "torch": torch.__version__, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    t0 = time.perf_counter()
    res["engine"] = engine_run(args, device, rank)
    if world > 1 and device.type == "cuda" and args.comm_cycles > 0:
        from ssmtp.parallel.comm import shutdown

        shutdown()  # the engine's communicator first: the cycles must measure their own resources only
        gc.collect()
        res["comm"] = comm_cycles(args, device, rank, world)
    else:
        res["comm"] = {"verdict": "skipped", "reasons": ["needs TP >= 2 on GPUs (torchrun --nproc_per_node 2)"]}
    res["seconds"] = round(time.perf_counter() - t0, 1)
    ok = res["engine"]["verdict"] == "pass" and res["comm"]["verdict"] in ("pass", "skipped")
    res["verdict"] = "pass" if ok else "fail"

    ranks = [res]
    if world > 1:
        ranks = [None] * world
        dist.all_gather_object(ranks, res)
    if rank == 0:
        summary = {"verdict": "pass" if all(r["verdict"] == "pass" for r in ranks) else "fail",
                   "world_size": world, "ranks": ranks}
        for r, rr in enumerate(ranks):
            e, c = rr["engine"], rr["comm"]
            print(f"[leak] rank {r}: engine {e['verdict']} over {e['samples'][-1]['step']} decode steps "
                  f"({e['requests_finished']} requests) growth " +
                  ", ".join(f"{k} {v / MIB:+.2f} MiB" if k in ("rss", "allocated", "reserved", "device_used")
                            else f"{k} {v:+d}" for k, v in e["growth"].items()) +
                  (f"; reasons: {e['reasons']}" if e["reasons"] else "") +
                  f" | comm {c['verdict']}" + (f" growth {c.get('growth')}" if c.get("growth") else "") +
                  (f"; {c['reasons']}" if c.get("reasons") else ""), flush=True)
        print(f"[leak] verdict: {summary['verdict']} in {res['seconds']} s", flush=True)
        if args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out, "w") as f:
                json.dump(summary, f, indent=1)
        status = 0 if summary["verdict"] == "pass" else 1
    else:
        status = 0 if all(r["verdict"] == "pass" for r in ranks) else 1
    if world > 1:
        from ssmtp.parallel.comm import shutdown

        shutdown()
        dist.destroy_process_group()
    return status


if __name__ == "__main__":
    sys.exit(main())
