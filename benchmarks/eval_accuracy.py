"""Accuracy of tensor-parallel inference with exact and quantized all-reduce, on the small trained checkpoint.

    python benchmarks/eval_accuracy.py [--tp 2,4] [--windows 32] [--out benchmarks/results/accuracy.json]

Runs on the CPU (gloo, spawned ranks) or GPUs (NCCL, one per rank: --device cuda). The reference is the unsharded
fp32 HF model. For each TP size and all-reduce scheme it reports the byte-level perplexity on held-out text (Python
standard-library sources not used in training), the top-1 agreement of the next-token prediction with the reference
at every position, the top-5 overlap, and the largest logit error relative to the logit range.

Schemes: fp32 (exact sum), bf16-cast (cast to bf16, sum, cast back: the paper's scheme with bf16 in place of fp16),
int8 / fp8 block-scaled quantized all-reduce (ssmtp's, block 32 and 128).
"""
import argparse
import json
import math
import os
import socket
import subprocess
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

HERE = os.path.dirname(os.path.abspath(__file__))
CKPT = os.path.join(HERE, "..", "ssmtp", "data", "tiny-mamba-bytes")
SCHEMES = ["fp32", "bf16-cast", "int8-b32", "int8-b128", "fp8-b32"]


def windows(n: int, length: int):
    sys.path.insert(0, HERE)
    from train_tiny import load_corpus

    _, val, _ = load_corpus(24_000_000)
    step = max(1, (len(val) - length - 1) // n)
    return torch.stack([val[i * step:i * step + length + 1] for i in range(n)])


def make_comm(scheme: str):
    from ssmtp.parallel.comm import Communicator

    if scheme == "fp32":
        return Communicator(backend="torch")
    if scheme == "bf16-cast":
        class CastComm(Communicator):
            def all_reduce(self, t):
                low = t.to(torch.bfloat16)
                dist.all_reduce(low, group=self.group)
                t.copy_(low.to(t.dtype))
                return t

        return CastComm(backend="torch")
    q, b = scheme.split("-b")
    return Communicator(quant=q, quant_block=int(b))


def metrics(logits, ref, targets):
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
    top1 = (logits.argmax(-1) == ref.argmax(-1)).float().mean().item()
    t5, r5 = logits.topk(5, -1).indices, ref.topk(5, -1).indices
    overlap = (t5[..., :, None] == r5[..., None, :]).any(-1).float().mean().item()
    rel = ((logits - ref).abs().max() / (ref.max() - ref.min())).item()
    return {"ppl": math.exp(nll.item()), "top1_agreement": top1, "top5_overlap": overlap, "max_rel_logit_err": rel}


def worker(rank, world, port, device, schemes, data, outq):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dev = torch.device("cuda", rank) if device == "cuda" else torch.device("cpu")
    kw = {"device_id": dev} if device == "cuda" else {}
    dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=rank, world_size=world, **kw)
    import ssmtp
    from transformers import MambaForCausalLM

    ids = data[:, :-1].to(dev)
    targets = data[:, 1:].to(dev)
    with torch.no_grad():
        ref = MambaForCausalLM.from_pretrained(CKPT).to(dev).eval()(ids).logits
    for scheme in schemes:
        model = MambaForCausalLM.from_pretrained(CKPT).to(dev).eval()
        ssmtp.parallelize(model, comm=make_comm(scheme))
        with torch.no_grad():
            out = model(ids).logits
        if rank == 0:
            outq.put((world, scheme, metrics(out, ref, targets)))
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tp", default="2,4")
    ap.add_argument("--windows", type=int, default=32)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    ap.add_argument("--out", default=os.path.join(HERE, "results", "accuracy-tiny-mamba-bytes.json"))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import MambaForCausalLM

    data = windows(args.windows, args.length)
    with torch.no_grad():
        ref_model = MambaForCausalLM.from_pretrained(CKPT).eval()
        ref = ref_model(data[:, :-1]).logits
    results = {"reference (unsharded fp32, HF)": metrics(ref, ref, data[:, 1:])}
    rows = []
    schemes = args.schemes.split(",")
    for world in [int(t) for t in args.tp.split(",")]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ctx = mp.get_context("spawn")
        q = ctx.SimpleQueue()
        procs = [ctx.Process(target=worker, args=(r, world, port, args.device, schemes, data, q)) for r in range(world)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        if any(p.exitcode for p in procs):
            raise SystemExit(f"a rank failed at tp={world}")
        while not q.empty():
            w, scheme, m = q.get()
            results[f"tp={w} {scheme}"] = m
            rows.append((w, scheme, m))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
    except OSError:
        commit = "unknown"
    meta = {"commit": os.environ.get("SSMTP_GIT_COMMIT", commit), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ",
            time.gmtime()), "device": args.device, "checkpoint": "ssmtp/data/tiny-mamba-bytes",
            "windows": args.windows, "length": args.length, "tokens": args.windows * args.length}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    print(f"{'config':28s} {'ppl':>8s} {'top1 agree':>11s} {'top5 overlap':>13s} {'max rel err':>12s}")
    for k, m in results.items():
        print(f"{k:28s} {m['ppl']:8.4f} {m['top1_agreement']:11.4%} {m['top5_overlap']:13.4%} "
              f"{m['max_rel_logit_err']:12.2e}")


if __name__ == "__main__":
    main()
