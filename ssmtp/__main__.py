"""The ssmtp command line.

    python -m ssmtp generate                                   # embedded small model on the CPU, seconds
    python -m ssmtp generate --model mamba-2.8b --prompt-ids 1,2,3 --max-new-tokens 64
    torchrun --nproc_per_node 2 -m ssmtp generate --model /path/to/hf-dir --prompt "Hello" --temperature 0.7
    python -m ssmtp bench --help                               # the engine benchmark (benchmarks/bench_engine.py)
    python -m ssmtp presets                                    # list the model presets

Under torchrun every rank runs the same command (TP over the ranks; NCCL on GPUs, gloo on CPUs); only rank 0 prints.
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def _dtype(name):
    import torch

    return None if name is None else {"float32": torch.float32, "bfloat16": torch.bfloat16,
                                      "float16": torch.float16}[name]


def _parse_ids(text: str, flag: str) -> list:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated integers, got {text!r}") from None


def _generate_parser(sub):
    p = sub.add_parser(
        "generate", help="generate tokens for one or more prompts",
        description="Generate with ssmtp.LLM (tensor-parallel under torchrun). Without --model: the embedded small "
                    "model, on the CPU unless --device says otherwise.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=None,
                   help="preset name (see `python -m ssmtp presets`), HF-format directory (config.json + "
                        "*.safetensors), or hub id; default: the embedded small model")
    p.add_argument("--prompt", action="append", default=None,
                   help="a text prompt (needs a tokenizer: the model directory's, or the byte tokenizer of the "
                        "embedded/tiny models); repeat for a batch")
    p.add_argument("--prompt-ids", action="append", default=None,
                   help="a prompt as comma-separated token ids, e.g. 1,2,3; repeat for a batch")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate per prompt (>= 1)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; > 0 samples")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1] (1 = off)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (the same seed gives the same tokens)")
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at the model's end-of-sequence token")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="weights/activations dtype (default: bfloat16 on GPU, float32 on CPU)")
    p.add_argument("--device", default=None,
                   help="cpu or cuda (default: the embedded model runs on the CPU; other models on this rank's GPU "
                        "when there is one)")
    p.add_argument("--max-batch", type=int, default=64, help="most requests running at once")
    p.add_argument("--prefix-interval", type=int, default=512,
                   help="prefix-cache checkpoint interval K in tokens (states are also saved at each prompt's end)")
    p.add_argument("--no-prefix-cache", action="store_true", help="disable the prefix state cache")
    p.add_argument("--no-cuda-graphs", action="store_true", help="decode eagerly instead of with CUDA graphs")
    p.add_argument("--no-async-decode", action="store_true",
                   help="take each decode step's tokens before launching the next (default on CUDA: launch first)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: 1 for the small CPU models, torch's default otherwise)")
    p.add_argument("--json", action="store_true", help="print one JSON object per prompt instead of text")
    p.add_argument("--stream", action="store_true",
                   help="print tokens as they are generated (one prompt: its text or ids inline; several: one "
                        "'[i] ...' line per prompt and step), then the summary")
    return p


def _stream(llm, prompts, kw, show: bool) -> list:
    """Run llm.stream, printing as tokens arrive; returns the RequestOutputs in prompt order."""
    one = len(prompts) == 1
    toks: dict = {}
    shown: dict = {}
    outs = [None] * len(prompts)
    for ev in llm.stream(prompts, **kw):
        if ev.finished:
            outs[ev.index] = ev.output
        if not show or not ev.new_token_ids:
            continue
        toks.setdefault(ev.index, []).extend(ev.new_token_ids)
        if llm.tokenizer is not None:  # decode the whole output again: byte-level pieces may join up later
            text = llm.tokenizer.decode(toks[ev.index], skip_special_tokens=True)
            old = shown.get(ev.index, "")
            delta = text[len(old):] if text.startswith(old) else "\n" + text
            shown[ev.index] = text
        else:
            delta = " " + " ".join(str(t) for t in ev.new_token_ids)
        if one:
            print(delta, end="", flush=True)
        else:
            print(f"[{ev.index}] +{delta!r}", flush=True)
    if show and one:
        print(flush=True)
    return outs


def cmd_generate(args) -> int:
    import torch

    from .engine.launch import init_distributed
    from .presets import default_model

    world, rank, dev = init_distributed()
    model = args.model or default_model()
    small = args.model is None or str(model).startswith("tiny")
    device = args.device or ("cpu" if small else str(dev))
    if device == "cuda" and dev.type == "cuda":
        device = str(dev)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    elif small and torch.device(device).type == "cpu":
        torch.set_num_threads(1)  # tiny matrices: threads only add synchronisation (and suffer on a busy host)

    import ssmtp

    prompts = []
    for t in args.prompt_ids or []:
        prompts.append(_parse_ids(t, "--prompt-ids"))
    prompts.extend(args.prompt or [])
    t0 = time.perf_counter()
    llm = ssmtp.LLM(model, device=device, dtype=_dtype(args.dtype), max_batch=args.max_batch,
                    prefix_cache=not args.no_prefix_cache, prefix_interval=args.prefix_interval,
                    cuda_graphs=False if args.no_cuda_graphs else None,
                    async_decode=False if args.no_async_decode else None, seed=args.seed, progress=rank == 0)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    # first calls pay one-time costs (torch's op-dispatch imports, graph captures, compilation): keep them out of the
    # figures printed below
    llm.generate([[0]], max_new_tokens=2, ignore_eos=True, use_prefix_cache=False)
    t_warm = time.perf_counter() - t0
    if not prompts:
        prompts = ["The state of the art in state-space models"] if llm.tokenizer is not None else [[1, 2, 3, 4, 5]]
    if rank == 0 and not args.json:
        print(f"ssmtp {ssmtp.__version__} ({ssmtp.ops.build_info()}): model={llm.source_name}, tp={world}, "
              f"device={llm.device}, dtype={str(llm.dtype).replace('torch.', '')}, loaded in {t_load:.2f} s, "
              f"warm-up {t_warm:.2f} s", flush=True)
    t0 = time.perf_counter()
    kw = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
              seed=args.seed, ignore_eos=args.ignore_eos or None)
    if args.stream and not args.json:
        outs = _stream(llm, prompts, kw, show=rank == 0)
    else:
        outs = llm.generate(prompts, **kw)
    dt = time.perf_counter() - t0
    if rank == 0:
        n_new = sum(len(o.token_ids) for o in outs)
        if args.json:
            for o in outs:
                print(json.dumps({"prompt_ids": o.prompt_token_ids, "token_ids": o.token_ids, "text": o.text,
                                  "finish_reason": o.finish_reason, "cached_tokens": o.cached_tokens,
                                  "ttft_s": o.ttft_s}))
        else:
            for i, o in enumerate(outs):
                print(f"[{i}] prompt: {len(o.prompt_token_ids)} tokens, generated {len(o.token_ids)} "
                      f"({o.finish_reason}), ttft {o.ttft_s * 1e3:.1f} ms")
                print(f"[{i}] ids: {o.token_ids}")
                if o.text is not None:
                    print(f"[{i}] text: {o.text!r}")
            print(f"{n_new} tokens in {dt:.3f} s ({n_new / dt:.1f} tok/s)")
    llm.close()
    return 0


def cmd_presets(args) -> int:
    from .presets import PRESETS, default_model

    for name, (family, kw, note) in PRESETS.items():
        print(f"{name:16s} {family:13s} {note}")
    print("<mamba preset>@tpN: one TP=N rank's mixers (d_inner / N) as a one-GPU model, e.g. mamba-2.8b@tp2")
    print(f"default model: {default_model()}")
    return 0


def cmd_bench(argv) -> int:
    from .engine import bench

    return bench.main(argv)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="ssmtp", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", metavar="{generate,bench,presets}")
    _generate_parser(sub)
    sub.add_parser("bench", help="engine benchmark (TTFT with/without prefix hits, decode steps, prefill); "
                                 "`python -m ssmtp bench --help` for its options", add_help=False)
    sub.add_parser("presets", help="list the model presets")
    if argv and argv[0] == "bench":
        return cmd_bench(argv[1:])
    args = ap.parse_args(argv)
    if args.cmd is None:
        ap.print_help()
        return 2
    try:
        if args.cmd == "generate":
            return cmd_generate(args)
        return cmd_presets(args)
    except (ValueError, NotImplementedError, FileNotFoundError) as e:
        print(f"ssmtp {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    finally:
        from .engine.launch import shutdown

        shutdown()


if __name__ == "__main__":
    sys.exit(main())
