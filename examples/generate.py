"""Generate text with a tensor-parallel Mamba: the HF model, swapped in place by ssmtp.parallelize.

    python examples/generate.py                              # 1 process
    torchrun --nproc_per_node 2 examples/generate.py         # TP=2 (NCCL on GPUs, gloo on CPU)
    torchrun --nproc_per_node 2 examples/generate.py --model state-spaces/mamba-130m-hf --prompt "Hello"

Without --model it builds a small Mamba from a config with random weights (no download), so the tokens are
meaningless but the run exercises the whole TP path. Every rank prints nothing but rank 0.
"""
import argparse
import os
import time

import torch
import torch.distributed as dist


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="HF model id or local directory (default: a small random Mamba)")
    ap.add_argument("--prompt", default="The state of the art in state-space models", help="text prompt (needs a "
                    "tokenizer, i.e. --model); with the default model the prompt is random token ids")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                    help="default: bfloat16 on GPU, float32 on CPU")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    use_cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1:
        if use_cuda:
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if use_cuda else torch.float32)

    import ssmtp
    from transformers import AutoModelForCausalLM, MambaConfig, MambaForCausalLM

    torch.manual_seed(args.seed)
    tokenizer = None
    if args.model:
        from transformers import AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        ids = tokenizer(args.prompt, return_tensors="pt").input_ids
    else:
        cfg = MambaConfig(vocab_size=1024, hidden_size=256, num_hidden_layers=4, state_size=16, conv_kernel=4)
        model = MambaForCausalLM(cfg)  # same seed on every rank -> same weights
        ids = torch.randint(3, cfg.vocab_size, (1, 16))
    model = model.to(device=device, dtype=dtype).eval()
    model.generation_config.pad_token_id = model.config.pad_token_id or 0
    ssmtp.parallelize(model)

    ids = ids.to(device)
    with torch.no_grad():
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=args.max_new_tokens, do_sample=False,
                             min_new_tokens=args.max_new_tokens)
        if use_cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    new = out[0, ids.shape[1]:]
    if rank == 0:
        print(f"ssmtp {ssmtp.__version__} ({ssmtp.ops.build_info()}), tp={world}, device={device.type}, "
              f"dtype={str(dtype).replace('torch.', '')}")
        print("generated ids:", new.tolist())
        if tokenizer is not None:
            print("text:", tokenizer.decode(new, skip_special_tokens=True))
        print(f"{len(new)} tokens in {dt:.3f} s ({len(new) / dt:.1f} tok/s, HF generate loop)")
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
