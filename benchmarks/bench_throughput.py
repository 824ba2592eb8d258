"""Batch-request throughput of the engine (ssmtp.LLM) on presets with the real shapes and random weights.

For each case of a model-labelled table (model, batch, prompt length, output length) the bench submits `batch`
requests at once and measures completed requests/s, generated tokens/s, prefill tokens/s and the decode step, the
last two also as multiples of the physical floor. TP degree = WORLD_SIZE; run TP=1 and TP=2 as separate calls:

    torchrun --nproc_per_node 1 benchmarks/bench_throughput.py --out benchmarks/results/throughput-h200-tp1.json
    torchrun --nproc_per_node 2 benchmarks/bench_throughput.py --out benchmarks/results/throughput-h200-tp2.json
    python benchmarks/bench_throughput.py --compare benchmarks/results/throughput-h200-tp1.json \
        benchmarks/results/throughput-h200-tp2.json          # TP2/TP1 ratios + plot (throughput-h200-compare.*)
    torchrun --nproc_per_node 2 benchmarks/bench_throughput.py --model tiny --quick --device cpu   # CPU dry run

Floors (per rank; constants and byte/parameter counts from ssmtp/engine/bench.py):
  decode step  >= (weight bytes read per step + B x (2 x recurrent state bytes + K/V bytes of the tokens a sequence
                  holds, on average prompt + output / 2; hybrids only)) / 4.26 TB/s   (states read + written)
  prefill      >= 2 x params x prompt tokens / (tp x 790 TFLOP/s)
  end to end   >= prefill floor + (output - 1) x decode-step floor
Measured per case (all requests submitted together, prefix cache off, one engine as a user would build it):
  wall            the generate() call; req/s = batch / wall, generated tok/s = batch x output / wall
  prefill         submission to the last request's first token (includes the decode steps the engine interleaves
                  for requests whose prompt was done earlier); prefill tok/s = batch x prompt / that time
  decode step     (latency - TTFT) / (output - 1) of the request that got its first token last: every request is
                  decoding during that window, so it holds no prefill; the batch shrinks only at the very end
Validation before timing: greedy tokens of the engine == HF transformers' on a tiny model of each family (fp32, the
same TP degree); each timed case checks every request completed with `output` tokens.
HF transformers (TP=1 run only, one GPU, a few small cases: it is ~100x slower) gives the engine's ratio to it.
Each case is guarded: an OOM or error is recorded in the JSON and the run goes on (the model is rebuilt). A case
that does not start before --budget-s is recorded as skipped. Writes JSON (+ PNG next to it) on rank 0.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from ssmtp.engine.bench import GEMM_FLOPS, HBM_BPS, _decode_weight_bytes, _git_commit, _model_params  # noqa: E402

# The case table: model -> grid -> (batch, prompt, output). SSM state does not grow with the prompt, so long prompts
# do not need fewer slots; their batch is cut so one case stays within ~260k prompt tokens (a few seconds of prefill
# at TP=1) and the whole TP=1 + TP=2 run within the time budget. The (1|8, 512, 32) cases match the HF subset.
CASES = {
    "mamba-2.8b": {
        "full": [(1, 512, 32), (8, 512, 32),
                 (1, 512, 128), (8, 512, 128), (64, 512, 128), (256, 512, 128),
                 (1, 2048, 128), (8, 2048, 128), (64, 2048, 128),
                 (1, 8192, 128), (8, 8192, 128), (32, 8192, 128),
                 (1, 32768, 128), (4, 32768, 128)],
        "quick": [(1, 512, 32), (8, 512, 32), (1, 512, 128), (64, 512, 128), (256, 512, 128), (8, 2048, 128),
                  (4, 8192, 128)],
    },
    "falcon-mamba-7b": {
        "full": [(1, 512, 128), (64, 512, 128), (256, 512, 128), (16, 2048, 128)],
        "quick": [(64, 512, 128)],
    },
    "zamba-7b": {
        "full": [(1, 512, 128), (64, 512, 128), (16, 2048, 128)],
        "quick": [(64, 512, 128)],
    },
    "zamba2-2.7b": {
        "full": [(1, 512, 128), (64, 512, 128), (16, 2048, 128)],
        "quick": [(64, 512, 128)],
    },
    # CPU dry runs
    "tiny": {"full": [(1, 64, 16), (4, 64, 16), (16, 64, 16), (4, 256, 16)], "quick": [(1, 32, 8), (4, 32, 8)]},
    "tiny-falcon": {"full": [(1, 64, 16), (16, 64, 16)], "quick": [(4, 32, 8)]},
}
DEFAULT_MODELS = {"full": "mamba-2.8b,falcon-mamba-7b,zamba-7b", "quick": "mamba-2.8b,falcon-mamba-7b,zamba-7b"}
HF_CASES = {"big": [(1, 512, 32), (8, 512, 32)], "big-quick": [(1, 512, 32)], "tiny": [(1, 32, 8), (4, 32, 8)]}
# Engine-vs-HF greedy check per family: (HF model class, HF config class, config kwargs); tiny, random weights.
VALIDATE_WITH = {
    "mamba": ("MambaForCausalLM", "MambaConfig", dict(vocab_size=512, hidden_size=128, intermediate_size=256,
                                                      state_size=16, conv_kernel=4, time_step_rank=8,
                                                      num_hidden_layers=4)),
    "falcon_mamba": ("FalconMambaForCausalLM", "FalconMambaConfig",
                     dict(vocab_size=512, hidden_size=128, intermediate_size=256, state_size=16, conv_kernel=4,
                          time_step_rank=8, num_hidden_layers=4, mixer_rms_eps=1e-6, tie_word_embeddings=False)),
    "zamba": ("ZambaForCausalLM", "ZambaConfig",
              dict(vocab_size=512, hidden_size=64, mamba_dt_rank=8, num_hidden_layers=4,
                   layers_block_type=["mamba", "hybrid", "mamba", "hybrid"], num_attention_heads=8,
                   num_key_value_heads=4, n_mamba_heads=2, intermediate_size=48, hidden_act="gelu",
                   use_mamba_kernels=False, attn_implementation="eager")),
    "zamba2": ("Zamba2ForCausalLM", "Zamba2Config",
               dict(vocab_size=512, hidden_size=64, num_hidden_layers=4, mamba_d_state=16,
                    layers_block_type=["mamba", "hybrid", "mamba", "hybrid"], n_mamba_heads=8, mamba_ngroups=1,
                    intermediate_size=128, num_attention_heads=4, num_mem_blocks=2, adapter_rank=8,
                    use_mem_rope=True, chunk_size=32, use_mamba_kernels=False, attn_implementation="eager")),
}
TARGETS = {"tp2_over_tp1_at_batch_ge_64": 1.9, "tp2_over_tp1_min": 1.0}


def label(model: str, b: int, p: int, o: int) -> str:
    return f"{model} B={b} prompt={p} out={o}"


class Run:
    """Process state: ranks, device, logging, the time budget and cross-rank agreement."""

    def __init__(self, args, tag: str = "throughput"):
        self.tag = tag
        world = int(os.environ.get("WORLD_SIZE", "1"))
        want_cpu = args.device == "cpu" or not torch.cuda.is_available()
        if want_cpu and world > 1 and not dist.is_initialized():
            dist.init_process_group("gloo")
        from ssmtp.engine.launch import init_distributed

        self.world, self.rank, dev = init_distributed()
        self.device = torch.device("cpu") if want_cpu else dev
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, args.threads))
        self.t0 = time.perf_counter()
        self.budget_s = args.budget_s

    def log(self, msg: str) -> None:
        if self.rank == 0:
            print(f"[{self.tag} +{self.elapsed():6.1f}s] {msg}", flush=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on any rank (decisions that must not split the ranks)."""
        if self.world == 1:
            return bool(flag)
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def over_budget(self) -> bool:
        return self.any(self.budget_s > 0 and self.elapsed() > self.budget_s)

    def free_memory(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500]


def _prompts(g: torch.Generator, n: int, length: int, vocab: int) -> list:
    return torch.randint(3, vocab, (n, length), generator=g).tolist()


# ------------------------------------------------------------------------------------------------ validation

def validate_family(run: Run, family: str, dtype_name: str = "float32") -> dict:
    """Engine greedy tokens == HF greedy tokens on the family's tiny preset config (random weights, same seed on
    every rank, fp32), at this run's TP degree and device. Returns the figures; raises nothing."""
    from ssmtp import LLM

    if family not in VALIDATE_WITH:
        return {"status": "skipped", "reason": f"no tiny engine-vs-HF check for family {family!r}"}
    cls_name, cfg_name, kw = VALIDATE_WITH[family]
    out: dict = {"model": f"tiny {cls_name} ({kw['num_hidden_layers']} layers, hidden {kw['hidden_size']})",
                 "dtype": dtype_name}
    llm = model = None
    try:
        import transformers

        cfg = getattr(transformers, cfg_name)(**kw, pad_token_id=0, bos_token_id=1, eos_token_id=2)
        cls = getattr(transformers, cls_name)
        torch.manual_seed(1234)  # identical on every rank
        model = cls(cfg).to(getattr(torch, dtype_name)).eval().to(run.device)
        model.generation_config.eos_token_id = None
        model.generation_config.pad_token_id = 0
        g = torch.Generator().manual_seed(7)
        prompts = [torch.randint(3, cfg.vocab_size, (n,), generator=g).tolist() for n in (5, 17, 40)]
        new = 12
        ref = []
        with torch.no_grad():
            for p in prompts:
                ids = torch.tensor([p], device=run.device)
                s = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False)
                ref.append(s[0, len(p):].tolist())
        # the torch.compile'd norm/residual glue is left out here: compiling it for a throwaway model would cost
        # tens of seconds of the budget; tests/test_engine_gpu.py checks it (graph == eager == HF)
        llm = LLM(model, device=run.device, max_batch=4, prefix_cache=False, fused_decode=False, progress=False)
        out["engine"] = {"graphs": llm.graphs is not None, "fused_decode": False, "tp": llm.tp}
        got = [o.token_ids for o in llm.generate(prompts, max_new_tokens=new, ignore_eos=True,
                                                 use_prefix_cache=False)]
        out["tokens_equal"] = got == ref
        out["matching_tokens"] = sum(a == b for x, y in zip(got, ref) for a, b in zip(x, y)) / (new * len(ref))
        out["status"] = "ok" if out["tokens_equal"] else "mismatch"
    except Exception as e:  # noqa: BLE001 - reported, and the timing still runs (flagged)
        out.update(status="error", error=_error(e))
        run.log(f"validation {family} FAILED: {traceback.format_exc()}")
    finally:
        if llm is not None:
            llm.close()
        llm = model = None  # noqa: F841
        run.free_memory()
    return out


# ------------------------------------------------------------------------------------------------ engine cases

def build_llm(run: Run, model: str, dtype, cases: list, args):
    from ssmtp import LLM

    max_b = max(b for b, _, _ in cases)
    t = time.perf_counter()
    llm = LLM(model, device=run.device, dtype=dtype, max_batch=max_b, prefix_cache=False,
              graph_batch_sizes=sorted({b for b, _, _ in cases}) if run.device.type == "cuda" else None,
              max_prefill_tokens=args.max_prefill_tokens or None, seed=args.seed, progress=False)
    load_s = time.perf_counter() - t
    cap_s = llm.warmup()
    return llm, load_s, cap_s


def _state_traffic(llm) -> tuple:
    """(recurrent state bytes per sequence: read and written every decode step; K/V bytes per token: only the tokens a
    sequence holds are read, not the slot's whole max_model_len allocation) on this rank."""
    specs = llm.runner.state_specs()
    kv = sum(s.nbytes / s.shape[1] for n, s in specs.items() if n in ("k", "v"))  # shape (layers, len + 1, ...)
    rec = sum(s.nbytes for n, s in specs.items() if n not in ("k", "v", "len"))
    return rec, kv


def model_info(llm, run: Run, load_s: float, cap_s: float) -> dict:
    rec, kv = _state_traffic(llm)
    return {"status": "ok", "load_s": load_s, "graph_capture_s": cap_s,
            "weight_bytes_per_rank": _decode_weight_bytes(llm), "state_bytes_per_slot_per_rank": llm.pool.slot_bytes,
            "recurrent_state_bytes_per_seq_per_rank": rec, "kv_bytes_per_token_per_rank": kv,
            "params": _model_params(llm), "family": getattr(llm.config, "model_type", "?"),
            "allreduce": repr(llm.comm), "graphs": llm.graphs.sizes if llm.graphs is not None else None,
            "max_prefill_tokens": llm.max_prefill_tokens, "slots": llm.num_slots,
            "async_decode": getattr(llm, "async_decode", None)}


def time_case(run: Run, llm, info: dict, b: int, p: int, o: int, g: torch.Generator, args) -> dict:
    """One timed case (after an untimed warm-up with the same batch and prompt length)."""
    V = llm.vocab_size
    kw = dict(ignore_eos=True, use_prefix_cache=False)
    if not args.no_case_warmup:
        llm.generate(_prompts(g, b, p, V), max_new_tokens=min(o, 2), **kw)
    best = None
    for _ in range(max(1, args.reps)):
        ps = _prompts(g, b, p, V)
        run.barrier()
        run.sync()
        t = time.perf_counter()
        outs = llm.generate(ps, max_new_tokens=o, **kw)
        run.sync()
        wall = time.perf_counter() - t
        if best is None or wall < best[0]:
            best = (wall, outs)
    wall, outs = best
    complete = all(len(x.token_ids) == o and x.finish_reason == "length" for x in outs)
    last = max(outs, key=lambda x: x.ttft_s)
    prefill_s = last.ttft_s
    step_s = (last.latency_s - last.ttft_s) / (o - 1) if o > 1 else None
    tp = run.world
    # decode floor: the weights once, every sequence's recurrent state read and written, and its K/V (hybrids) read
    # for the tokens it holds, on average prompt + output / 2 over the decode
    per_seq = 2 * info["recurrent_state_bytes_per_seq_per_rank"] + info["kv_bytes_per_token_per_rank"] * (p + o / 2)
    dec_floor_s = (info["weight_bytes_per_rank"] + b * per_seq) / HBM_BPS
    pre_floor_s = 2 * info["params"] * b * p / (tp * GEMM_FLOPS)
    e2e_floor_s = pre_floor_s + (o - 1) * dec_floor_s
    return {"status": "ok" if complete else "incomplete", "wall_s": wall, "req_s": b / wall,
            "gen_tok_s": b * o / wall, "prefill_s": prefill_s, "prefill_tok_s": b * p / prefill_s,
            "decode_step_ms": step_s * 1e3 if step_s is not None else None,
            "decode_tok_s": b / step_s if step_s else None,
            "decode_floor_ms": dec_floor_s * 1e3,
            "decode_over_floor": step_s / dec_floor_s if step_s is not None else None,
            "prefill_floor_s": pre_floor_s, "prefill_over_floor": prefill_s / pre_floor_s,
            "e2e_floor_s": e2e_floor_s, "e2e_over_floor": wall / e2e_floor_s,
            "ttft_median_s": sorted(x.ttft_s for x in outs)[len(outs) // 2], "all_completed": complete}


def run_model(run: Run, model: str, grid: list, dtype, args, res: dict) -> None:
    from ssmtp.presets import preset_entry

    info: dict = {}
    res["models"][model] = info
    rows = [{"label": label(model, b, p, o), "model": model, "batch": b, "prompt": p, "output": o}
            for b, p, o in grid]
    res["cases"].extend(rows)
    if run.over_budget():
        info.update(status="skipped", reason=f"time budget {run.budget_s:.0f} s used up before loading")
        for r in rows:
            r.update(status="skipped", reason="budget")
        run.log(f"{model}: skipped (budget)")
        return
    entry = preset_entry(model)
    family = entry[0] if entry else None
    if family is not None and family not in res["validation"] and not args.no_validate:
        res["validation"][family] = validate_family(run, family)
        run.log(f"validation {family}: {res['validation'][family]}")
    llm = None
    g = torch.Generator().manual_seed(args.seed)
    for i, r in enumerate(rows):
        if run.over_budget():
            r.update(status="skipped", reason=f"time budget {run.budget_s:.0f} s used up")
            run.log(f"{r['label']}: skipped (budget)")
            continue
        try:
            if llm is None:
                llm, load_s, cap_s = build_llm(run, model, dtype, grid, args)
                info.clear()
                info.update(model_info(llm, run, load_s, cap_s))
                run.log(f"{model}: loaded in {load_s:.1f} s, graphs {cap_s:.1f} s; "
                        f"{info['weight_bytes_per_rank'] / 1e9:.2f} GB weights/rank, "
                        f"{info['state_bytes_per_slot_per_rank'] / 1e6:.2f} MB state/sequence/rank, {llm.comm!r}")
            r.update(time_case(run, llm, info, r["batch"], r["prompt"], r["output"], g, args))
            dstep = f"{r['decode_step_ms']:.2f} ms ({r['decode_over_floor']:.2f}x floor)" if r["decode_step_ms"] \
                else "-"
            run.log(f"[{i + 1}/{len(rows)}] {r['label']}: {r['req_s']:.2f} req/s, {r['gen_tok_s']:.0f} gen tok/s, "
                    f"prefill {r['prefill_tok_s']:.0f} tok/s ({r['prefill_over_floor']:.2f}x floor), decode step "
                    f"{dstep}, wall {r['wall_s']:.2f} s")
        except NotImplementedError as e:  # a family the engine does not run yet: the whole model is skipped
            reason = _error(e)
            info.update(status="skipped", reason=reason)
            for rr in rows[i:]:
                rr.update(status="skipped", reason=reason)
            run.log(f"{model}: skipped ({reason})")
            break
        except Exception as e:  # noqa: BLE001 - an OOM or a failure is a result too; the next case still runs
            if llm is None and "not supported" in str(e):  # the engine refuses the family: skip the model
                reason = _error(e)
                info.update(status="skipped", reason=reason)
                for rr in rows[i:]:
                    rr.update(status="skipped", reason=reason)
                run.log(f"{model}: skipped ({reason})")
                break
            r.update(status="error", error=_error(e))
            if not info:
                info.update(status="error", error=_error(e))
            run.log(f"{r['label']} FAILED: {traceback.format_exc()}")
            if llm is not None:  # its requests may be half-run: start the next case on a fresh engine
                llm.close()
            llm = None
            run.free_memory()
    if llm is not None:
        llm.close()
    llm = None
    run.free_memory()


# ------------------------------------------------------------------------------------------------ HF transformers

class _FirstTokenClock:
    """A generate() streamer that notes when the first new token arrives (its first put() is the prompt)."""

    def __init__(self, sync):
        self.sync, self.calls, self.t_first = sync, 0, None

    def put(self, value):
        self.calls += 1
        if self.calls == 2:
            self.sync()
            self.t_first = time.perf_counter()

    def end(self):
        pass


def run_hf(run: Run, model: str, cases: list, dtype, res: dict) -> dict:
    """HF transformers' own model of the preset's config (random weights), one device, the given small cases; the
    engine's cases with the same (batch, prompt, output) from this run give the ratio."""
    import transformers

    from ssmtp.presets import preset_config

    out: dict = {"model": model, "transformers": transformers.__version__, "cases": []}
    hf = None
    try:
        cfg = preset_config(model, hf=True)
        cls = getattr(transformers, {"mamba": "MambaForCausalLM", "falcon_mamba": "FalconMambaForCausalLM"}[
            cfg.model_type])
        t = time.perf_counter()
        torch.manual_seed(0)
        with torch.device(run.device):
            hf = cls(cfg).to(dtype).eval()
        hf.generation_config.eos_token_id = None
        hf.generation_config.pad_token_id = 0
        out["load_s"] = time.perf_counter() - t
        try:  # which path HF's Mamba takes on this machine (mamba_ssm kernels when importable)
            fast = bool(getattr(transformers.models.mamba.modeling_mamba, "is_fast_path_available", False))
        except Exception:  # noqa: BLE001 - informational only
            fast = None
        out["kernels"] = {True: "mamba_ssm kernels", False: "pure torch", None: "unknown"}[fast]
        g = torch.Generator().manual_seed(1)
        V = cfg.vocab_size
        with torch.no_grad():
            w = torch.tensor(_prompts(g, 1, 16, V), device=run.device)
            hf.generate(w, attention_mask=torch.ones_like(w), max_new_tokens=2, do_sample=False)  # warm-up
            for b, p, o in cases:
                row = {"label": label(model, b, p, o), "batch": b, "prompt": p, "output": o}
                try:
                    ids = torch.tensor(_prompts(g, b, p, V), device=run.device)
                    clock = _FirstTokenClock(run.sync)
                    run.sync()
                    t = time.perf_counter()
                    s = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=o, min_new_tokens=o,
                                    do_sample=False, streamer=clock)
                    run.sync()
                    wall = time.perf_counter() - t
                    n = s.shape[1] - p
                    row.update(status="ok", wall_s=wall, req_s=b / wall, gen_tok_s=b * n / wall,
                               prefill_s=clock.t_first - t, prefill_tok_s=b * p / (clock.t_first - t),
                               decode_step_ms=(t + wall - clock.t_first) / max(1, n - 1) * 1e3)
                    eng = next((c for c in res["cases"] if c["label"] == row["label"] and c.get("status") == "ok"),
                               None)
                    if eng is not None:
                        row["engine_gen_tok_s"] = eng["gen_tok_s"]
                        row["engine_over_hf"] = eng["gen_tok_s"] / row["gen_tok_s"]
                        row["engine_decode_step_ms"] = eng["decode_step_ms"]
                        row["engine_prefill_tok_s"] = eng["prefill_tok_s"]
                except Exception as e:  # noqa: BLE001
                    row.update(status="error", error=_error(e))
                out["cases"].append(row)
                run.log(f"HF {row}")
    except Exception as e:  # noqa: BLE001 - HF is the comparison, not the subject: say why it is missing
        out["error"] = _error(e)
        run.log(f"HF FAILED: {traceback.format_exc()}")
    finally:
        hf = None
        run.free_memory()
    return out


# ------------------------------------------------------------------------------------------------ plots, tables

def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        return plt
    except ImportError:
        return None


def plot_run(res: dict, path: str) -> bool:
    """Generated tok/s vs batch (one line per prompt length, one panel per model) and decode step over its floor."""
    plt = _plt()
    ok = [c for c in res["cases"] if c.get("status") == "ok"]
    models = [m for m in res["models"] if any(c["model"] == m for c in ok)]
    if plt is None or not models:
        return False
    fig, axes = plt.subplots(2, len(models), figsize=(5.5 * len(models), 7.5), squeeze=False)
    for j, m in enumerate(models):
        cs = [c for c in ok if c["model"] == m]
        for (p, o) in sorted({(c["prompt"], c["output"]) for c in cs}):
            pts = sorted((c["batch"], c["gen_tok_s"], c["decode_over_floor"]) for c in cs
                         if (c["prompt"], c["output"]) == (p, o))
            axes[0][j].plot([x[0] for x in pts], [x[1] for x in pts], "o-", label=f"prompt {p}, out {o}")
            if all(x[2] is not None for x in pts):
                axes[1][j].plot([x[0] for x in pts], [x[2] for x in pts], "o-", label=f"prompt {p}, out {o}")
        for ax, yl in ((axes[0][j], "generated tokens/s"), (axes[1][j], "decode step / HBM floor")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("batch (requests)")
            ax.set_ylabel(yl)
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
        axes[0][j].set_yscale("log")
        axes[0][j].set_title(f"{m}, tp={res['meta']['tp']}")
    fig.suptitle(f"ssmtp engine throughput, {res['meta']['device']}, {res['meta']['dtype']}, "
                 f"commit {res['meta']['commit'][:10]}, {res['meta']['date'][:10]}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_compare(cmp: dict, path: str) -> bool:
    """Throughput vs batch at TP=1 (solid) and TP=2 (dashed) for the first model; TP2/TP1 ratio per case."""
    plt = _plt()
    rows = [r for r in cmp["cases"] if r.get("ratio") is not None]
    if plt is None or not rows:
        return False
    m0 = rows[0]["model"]
    fig, ax = plt.subplots(1, 2, figsize=(15, 5), gridspec_kw={"width_ratios": [1, 1.6]})
    for k, (p, o) in enumerate(sorted({(r["prompt"], r["output"]) for r in rows if r["model"] == m0})):
        pts = sorted((r["batch"], r["a_gen_tok_s"], r["b_gen_tok_s"]) for r in rows
                     if r["model"] == m0 and (r["prompt"], r["output"]) == (p, o))
        c = f"C{k}"
        ax[0].plot([x[0] for x in pts], [x[1] for x in pts], "o-", color=c, label=f"tp={cmp['a_tp']} prompt {p}")
        ax[0].plot([x[0] for x in pts], [x[2] for x in pts], "s--", color=c, label=f"tp={cmp['b_tp']} prompt {p}")
    ax[0].set_xscale("log", base=2)
    ax[0].set_yscale("log")
    ax[0].set_xlabel("batch (requests)")
    ax[0].set_ylabel("generated tokens/s")
    ax[0].set_title(f"{m0} (output {rows[0]['output']} where not noted)")
    ax[0].legend(fontsize=6, ncol=2)
    ax[0].grid(alpha=0.3)
    names = [r["label"].replace(" prompt=", "\nP=").replace(" out=", " O=") for r in rows]
    colors = ["C2" if r["ratio"] >= TARGETS["tp2_over_tp1_at_batch_ge_64"] else
              ("C0" if r["ratio"] >= 1.0 else "C3") for r in rows]
    ax[1].bar(range(len(rows)), [r["ratio"] for r in rows], color=colors)
    ax[1].axhline(1.0, color="k", lw=0.8)
    ax[1].axhline(TARGETS["tp2_over_tp1_at_batch_ge_64"], color="C2", ls="--", lw=0.8,
                  label="target at batch >= 64")
    ax[1].set_xticks(range(len(rows)), names, rotation=90, fontsize=6)
    ax[1].set_ylabel(f"generated tok/s, tp={cmp['b_tp']} / tp={cmp['a_tp']}")
    ax[1].legend(fontsize=7)
    fig.suptitle(f"TP scaling, {cmp['device']}, commits {cmp['a_commit'][:10]} / {cmp['b_commit'][:10]}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def table(res: dict) -> str:
    m = res["meta"]
    lines = [f"ssmtp throughput: tp={m['tp']} on {m['device']} {m['dtype']} (commit {m['commit'][:10]}), "
             f"{m.get('total_s', 0):.0f} s",
             f"{'case':40s} {'req/s':>8s} {'gen tok/s':>10s} {'prefill tok/s':>13s} {'x floor':>7s} "
             f"{'step ms':>8s} {'x floor':>7s} {'e2e x floor':>11s}"]
    for c in res["cases"]:
        if c.get("status") in ("ok", "incomplete"):
            st = f"{c['decode_step_ms']:8.2f} {c['decode_over_floor']:7.2f}" if c["decode_step_ms"] else f"{'-':>16s}"
            lines.append(f"{c['label']:40s} {c['req_s']:8.2f} {c['gen_tok_s']:10.0f} {c['prefill_tok_s']:13.0f} "
                         f"{c['prefill_over_floor']:7.2f} {st} {c['e2e_over_floor']:11.2f}"
                         + ("" if c["status"] == "ok" else "  INCOMPLETE"))
        else:
            lines.append(f"{c['label']:40s} {c.get('status', '?').upper()}: {c.get('reason') or c.get('error')}")
    for c in res.get("hf", {}).get("cases", []):
        if c.get("status") == "ok":
            ratio = f"engine/HF = {c['engine_over_hf']:.1f}x" if "engine_over_hf" in c else "no engine case"
            lines.append(f"{'HF ' + c['label']:40s} {c['req_s']:8.3f} {c['gen_tok_s']:10.1f} "
                         f"{c['prefill_tok_s']:13.0f} {'':7s} {c['decode_step_ms']:8.1f} {'':7s} {'':11s}  {ratio}")
        else:
            lines.append(f"{'HF ' + c['label']:40s} ERROR: {c.get('error')}")
    for fam, v in res.get("validation", {}).items():
        lines.append(f"validation {fam}: {v}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main

def run(args) -> dict:
    run_ = Run(args)
    import logging

    logging.basicConfig(level=logging.INFO if run_.rank == 0 else logging.WARNING, format="[%(name)s] %(message)s")
    cpu = run_.device.type == "cpu"
    dtype_name = args.dtype or ("float32" if cpu else "bfloat16")
    dtype = getattr(torch, dtype_name)
    grid = "quick" if args.quick else "full"
    models = [m for m in (args.model or DEFAULT_MODELS[grid]).split(",") if m]
    res: dict = {
        "meta": {"commit": _git_commit(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                 "device": torch.cuda.get_device_name(run_.device) if not cpu else "cpu",
                 "torch": torch.__version__, "tp": run_.world, "dtype": dtype_name, "grid": grid,
                 "budget_s": args.budget_s, "reps": args.reps, "case_warmup": not args.no_case_warmup,
                 "allreduce_env": os.environ.get("SSMTP_ALLREDUCE", ""), "argv": sys.argv[1:],
                 "hbm_bytes_per_s": HBM_BPS, "gemm_flops": GEMM_FLOPS},
        "targets": dict(TARGETS), "validation": {}, "models": {}, "cases": [],
    }
    run_.log(f"tp={run_.world} on {res['meta']['device']}, {dtype_name}, models {models}, grid {grid}, "
             f"budget {args.budget_s:.0f} s")
    # HF on one device, TP=1 run only, on the first Mamba-family model of the run, right after that model's engine
    # cases (the engine is closed by then); it is small and not cut by the budget
    hf_model = args.hf_model or next((m for m in models if m in CASES and not m.startswith("zamba")), None)
    if cpu and hf_model and not hf_model.startswith("tiny") and not args.allow_big_on_cpu:
        hf_model = None
    for m in models:
        if cpu and not m.startswith("tiny") and not args.allow_big_on_cpu:
            res["models"][m] = {"status": "skipped", "reason": "not run on CPU ranks (--allow-big-on-cpu)"}
            run_.log(f"{m}: skipped on CPU (a full-size preset; --allow-big-on-cpu runs it)")
            continue
        if m not in CASES and not args.cases:
            res["models"][m] = {"status": "error", "error": f"no case table for {m!r}; give --cases BxPxO,..."}
            continue
        cases = [tuple(int(v) for v in c.split("x")) for c in args.cases.split(",")] if args.cases else CASES[m][grid]
        run_model(run_, m, cases, dtype, args, res)
        if m == hf_model and run_.world == 1 and not args.no_hf:
            key = "tiny" if hf_model.startswith("tiny") else ("big-quick" if args.quick else "big")
            res["hf"] = run_hf(run_, hf_model, HF_CASES[key], dtype, res)
    res["meta"]["total_s"] = run_.elapsed()
    res["ok"] = (all(v.get("status") in ("ok", "skipped") for v in res["validation"].values())
                 and all(c.get("status") in ("ok", "skipped") for c in res["cases"]))
    return res


def write(res: dict, out: str) -> str:
    path = out if out.endswith(".json") else os.path.join(out, f"throughput-tp{res['meta']['tp']}.json")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
    if not plot_run(res, path[:-len(".json")] + ".png"):
        print("[throughput] no plot written (matplotlib missing or no case ran)", flush=True)
    return path


def compare_files(a_path: str, b_path: str, out: str = None) -> int:
    from report import compare_throughput  # benchmarks/report.py: the one place the ratios are computed

    with open(a_path) as f:
        a = json.load(f)
    with open(b_path) as f:
        b = json.load(f)
    cmp = compare_throughput(a, b)
    cmp["files"] = [a_path, b_path]
    if out is None:
        base = os.path.basename(b_path)
        stem = base.replace("-tp2", "").replace(".json", "")
        out = os.path.join(os.path.dirname(b_path), f"{stem}-compare.json")
    with open(out, "w") as f:
        json.dump(cmp, f, indent=1)
    plot_compare(cmp, out[:-len(".json")] + ".png")
    print(f"tp={cmp['b_tp']} / tp={cmp['a_tp']}, generated tok/s ({out})")
    for r in cmp["cases"]:
        v = f"{r['ratio']:.2f}x" if r.get("ratio") is not None else r.get("note", "-")
        print(f"  {r['label']:40s} {v}")
    for t in cmp["targets"]:
        print(f"  target {t['target']}: {'met' if t['ok'] else 'MISSED'} ({t['detail']})")
    return 0 if all(t["ok"] for t in cmp["targets"]) else 2


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="comma-separated presets (default: mamba-2.8b,falcon-mamba-7b,"
                    "zamba-7b); each has a case table in CASES")
    ap.add_argument("--cases", default=None, help="override the case table: BxPROMPTxOUT,... for every model")
    ap.add_argument("--quick", action="store_true", help="the small grid (CASES[model]['quick'])")
    ap.add_argument("--budget-s", type=float, default=float(os.environ.get("THROUGHPUT_BUDGET_S", 0) or 0),
                    help="start no case after this many seconds (0 = no limit; env THROUGHPUT_BUDGET_S)")
    ap.add_argument("--reps", type=int, default=1, help="timed repetitions per case (best is kept)")
    ap.add_argument("--no-case-warmup", action="store_true", help="no untimed warm-up run before each case")
    ap.add_argument("--max-prefill-tokens", type=int, default=0, help="engine's max_prefill_tokens (0 = default)")
    ap.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                    help="default bfloat16 on GPUs, float32 on CPUs")
    ap.add_argument("--device", default=None, help="cpu forces CPU ranks (gloo); default: this rank's GPU")
    ap.add_argument("--allow-big-on-cpu", action="store_true", help="run full-size presets on CPU ranks too")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per CPU rank")
    ap.add_argument("--no-hf", action="store_true", help="skip the HF transformers comparison (TP=1 runs)")
    ap.add_argument("--hf-model", default=None, help="model for the HF comparison (default: the first Mamba one)")
    ap.add_argument("--no-validate", action="store_true", help="skip the engine-vs-HF greedy check")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON path, or a folder for throughput-tp{N}.json; PNG next to it")
    ap.add_argument("--compare", nargs=2, metavar=("TP1.json", "TP2.json"), default=None,
                    help="no benchmark: TP2/TP1 ratios of two result files (+ JSON and PNG; --out names the JSON)")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.compare:
        compare_files(args.compare[0], args.compare[1], args.out)
        return 0  # missed targets are results, not failures
    from ssmtp.engine.launch import shutdown

    res: dict = {}
    try:
        res = run(args)
        if not dist.is_initialized() or dist.get_rank() == 0:
            if args.out:
                print(f"[throughput] wrote {write(res, args.out)}", flush=True)
            print(table(res), flush=True)
    finally:
        shutdown()
    return 0 if res.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
