"""Train the small byte-level Mamba used for accuracy figures (and as the engine's embedded default model).

    python benchmarks/train_tiny.py --out ssmtp/data/tiny-mamba-bytes [--steps 1500] [--device cuda]

Data: the Python standard library's own .py sources (ship with every Python, so no download), bytes as tokens
(vocab 256), the last 5% of files held out for validation. The model is an ordinary HF MambaForCausalLM saved with
save_pretrained (config.json + model.safetensors, fp32).

Training uses a chunked, differentiable form of the selective scan (below) instead of HF's per-token loop: within a
chunk of T steps the state is a sum over earlier steps weighted by exp(A * (S_t - S_s)), S the running sum of dt,
and chunks are chained through their final state. Same math as the recurrence, T times fewer sequential steps.
"""
import argparse
import glob
import json
import math
import os
import sys
import sysconfig
import time

import torch
import torch.nn.functional as F


def load_corpus(max_bytes: int):
    root = sysconfig.get_paths()["stdlib"]
    files = sorted(f for f in glob.glob(os.path.join(root, "**", "*.py"), recursive=True)
                   if "site-packages" not in f and "/test" not in f)
    n_val = max(1, len(files) // 20)
    train_files, val_files = files[:-n_val], files[-n_val:]

    def read(fs, cap):
        chunks, total = [], 0
        for f in fs:
            with open(f, "rb") as fh:
                b = fh.read()
            chunks.append(b)
            total += len(b)
            if total >= cap:
                break
        return torch.frombuffer(bytearray(b"".join(chunks)[:cap]), dtype=torch.uint8).long()

    return read(train_files, max_bytes), read(val_files, max_bytes // 10), root


def chunked_selective_scan(hidden_states, dt, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                           return_last_state=False, chunk=16, **kwargs):
    """Differentiable selective scan with HF's argument convention: x, dt, z (b, d, L); A (d, n); B, C (b, n, L)."""
    x = hidden_states.float()
    dt = dt.float()
    if delta_bias is not None:
        dt = dt + delta_bias.float()[None, :, None]
    if delta_softplus:
        dt = F.softplus(dt)
    b, d, L = x.shape
    n = A.shape[1]
    Af = A.float()[None, :, :, None]  # (1, d, n, 1)
    h = x.new_zeros(b, d, n)
    ys = []
    tri = None
    for c0 in range(0, L, chunk):
        T = min(chunk, L - c0)
        if tri is None or tri.shape[0] != T:
            tri = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        dtc, xc = dt[..., c0:c0 + T], x[..., c0:c0 + T]
        Bc, Cc = B[..., c0:c0 + T].float(), C[..., c0:c0 + T].float()  # (b, n, T)
        S = dtc.cumsum(-1)  # (b, d, T)
        diff = S[..., :, None] - S[..., None, :]  # (b, d, t, s)
        expo = (Af[..., None] * diff[:, :, None]).masked_fill(~tri, float("-inf"))  # (b, d, n, t, s)
        u = (dtc * xc)[:, :, None, None, :] * Bc[:, None, :, None, :]  # (b, d, n, 1, s)
        hs = (torch.exp(expo) * u).sum(-1) + torch.exp(Af * S[:, :, None, :]) * h[..., None]  # (b, d, n, t)
        ys.append((hs * Cc[:, None]).sum(2))  # (b, d, t)
        h = hs[..., -1]
    y = torch.cat(ys, -1)
    if D is not None:
        y = y + x * D.float()[None, :, None]
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(hidden_states.dtype)
    return (y, h) if return_last_state else y


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="ssmtp/data/tiny-mamba-bytes")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--max-bytes", type=int, default=24_000_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import transformers.models.mamba.modeling_mamba as mm
    from transformers import MambaConfig, MambaForCausalLM

    mm.mamba_selective_scan = chunked_selective_scan  # the mixer looks the function up at call time
    torch.manual_seed(args.seed)
    train, val, root = load_corpus(args.max_bytes)
    print(f"corpus {root}: train {len(train) / 1e6:.1f} MB, val {len(val) / 1e6:.2f} MB", flush=True)
    cfg = MambaConfig(vocab_size=256, hidden_size=256, num_hidden_layers=6, intermediate_size=512, state_size=16,
                      conv_kernel=4, time_step_rank=16, pad_token_id=0, bos_token_id=0, eos_token_id=0,
                      use_cache=False, tie_word_embeddings=True)
    dev = torch.device(args.device)
    model = MambaForCausalLM(cfg).to(dev).train()
    nparams = sum(p.numel() for p in model.parameters())
    print(f"params {nparams / 1e6:.2f} M", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
    g = torch.Generator().manual_seed(args.seed)

    def batch(data):
        idx = torch.randint(0, len(data) - args.seqlen - 1, (args.batch,), generator=g)
        return torch.stack([data[i:i + args.seqlen] for i in idx]).to(dev)

    t0 = time.time()
    for step in range(args.steps):
        x = batch(train)
        loss = model(x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:5d} loss {loss.item():.3f} ({time.time() - t0:.0f} s)", flush=True)
    model.eval()
    with torch.no_grad():
        losses = [model(x, labels=x).loss.item() for x in (batch(val) for _ in range(20))]
    val_loss = sum(losses) / len(losses)
    print(f"val loss {val_loss:.3f} nats/byte, ppl {math.exp(val_loss):.2f}", flush=True)
    model.config.use_cache = True
    model.to("cpu").save_pretrained(args.out, safe_serialization=True)
    with open(os.path.join(args.out, "training.json"), "w") as f:
        json.dump({"steps": args.steps, "batch": args.batch, "seqlen": args.seqlen, "lr": args.lr,
                   "params": nparams, "val_loss_nats_per_byte": val_loss, "corpus": "python stdlib *.py "
                   f"({sys.version.split()[0]})", "train_bytes": len(train), "seconds": time.time() - t0,
                   "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"}, f, indent=1)
    print("saved", args.out)


if __name__ == "__main__":
    main()
