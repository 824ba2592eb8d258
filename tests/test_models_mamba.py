"""TP Mamba / Falcon-Mamba against the unsharded HF model at TP = 1, 2 and 4 (gloo on CPU): logits, greedy
generation, left padding, prefill-then-decode and chunked prefill against a full recompute, states against HF's."""
import pytest
import torch
from transformers import DynamicCache

import ssmtp
from ssmtp.models.mamba import hf_cache_kwargs
from distributed import FakeComm, run_ranks, run_tp
from tiny_models import build

NEW_TOKENS = 32
# ranks fork from a server that imported these once (spawning re-imports torch + transformers per rank)
_PRELOAD = ["transformers", "ssmtp", "tiny_models", __name__]


def _rel_ok(out, ref, rel):
    """Elementwise |out - ref| <= rel * max|ref| (+1e-6 absolute for exact zeros)."""
    err = (out.float() - ref.float()).abs().max().item()
    bound = rel * ref.float().abs().max().item() + 1e-6
    assert err <= bound, f"max abs error {err:.3e} > {bound:.3e}"


def _inputs(seed=1, batch=3, length=13):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 99, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding of different lengths
    mask[2, :7] = 0
    ids_pad = ids.masked_fill(mask == 0, 0)
    return ids, ids_pad, mask


def _layer_states(cache, n_layers):
    return [(cache.layers[i].conv_states[0].clone(), cache.layers[i].recurrent_states[0].clone())
            for i in range(n_layers)]


def _checks(rank, world, family, config, dtype_name, device="cpu"):
    dtype = getattr(torch, dtype_name)
    device = torch.device(device, rank) if device == "cuda" else torch.device(device)
    # fp32: rel 1e-4 of the logit range (the bound); bf16: HF rounds the scan output to bf16 at every step
    # while ssmtp accumulates it in fp32, so the two differ by a few bf16 ulps -> 3e-2.
    rel = 1e-4 if dtype == torch.float32 else 3e-2
    model = build(family, config, dtype).to(device)
    n_layers = model.config.num_hidden_layers
    ids, ids_pad, mask = (t.to(device) for t in _inputs())
    with torch.no_grad():
        ref = model(ids).logits
        ref_pad = model(ids_pad, attention_mask=mask).logits
        hf_cache = DynamicCache(config=model.config)
        model(ids, **hf_cache_kwargs(model, hf_cache), use_cache=True)
        hf_states = _layer_states(hf_cache, n_layers)
        if dtype == torch.float32:
            ref_gen = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)
            ref_gen_pad = model.generate(ids_pad, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False)

    ssmtp.parallelize(model)
    d = model.config.intermediate_size
    dl = d // world
    with torch.no_grad():
        out = model(ids).logits
        _rel_ok(out, ref, rel)
        out_pad = model(ids_pad, attention_mask=mask).logits
        valid = mask.bool()
        _rel_ok(out_pad[valid], ref_pad[valid], rel)

        # the final states after a full prefill equal HF's, sliced to this rank's channels
        full = DynamicCache(config=model.config)
        model(ids, **hf_cache_kwargs(model, full), use_cache=True)
        full_states = _layer_states(full, n_layers)
        for (c, s), (hc, hs) in zip(full_states, hf_states):
            _rel_ok(c, hc[:, rank * dl:(rank + 1) * dl], rel)
            _rel_ok(s, hs[:, rank * dl:(rank + 1) * dl], rel)

        # prefill L-1 tokens, decode 1: same last logits and states as the full prefill
        cache = DynamicCache(config=model.config)
        model(ids[:, :-1], **hf_cache_kwargs(model, cache), use_cache=True)
        step = model(ids[:, -1:], **hf_cache_kwargs(model, cache), use_cache=True).logits
        _rel_ok(step[:, -1], out[:, -1], rel)
        for (c, s), (fc, fs) in zip(_layer_states(cache, n_layers), full_states):
            _rel_ok(c, fc, rel)
            _rel_ok(s, fs, rel)

        # chunked prefill (5 + 8 tokens) resumes from the cached state: same as one prefill
        cache = DynamicCache(config=model.config)
        model(ids[:, :5], **hf_cache_kwargs(model, cache), use_cache=True)
        last = model(ids[:, 5:], **hf_cache_kwargs(model, cache), use_cache=True).logits
        _rel_ok(last, out[:, 5:], rel)

        if dtype == torch.float32:
            gen = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)
            assert torch.equal(gen, ref_gen), "greedy tokens differ from HF"
            gen_pad = model.generate(ids_pad, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False)
            assert torch.equal(gen_pad, ref_gen_pad), "greedy tokens with left padding differ from HF"


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("family", ["mamba", "falcon_mamba"])
def test_tp1_matches_hf_on_gpu(family, dtype):
    _checks(0, 1, family, "odd", dtype, "cuda")


@pytest.mark.multigpu
@pytest.mark.parametrize("family", ["mamba", "falcon_mamba"])
def test_tp2_matches_hf_on_gpus(family):
    run_ranks(2, _checks, family, "odd", "float32", "cuda", backend="nccl")


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("config", ["hf-tester", "odd"])
@pytest.mark.parametrize("family", ["mamba", "falcon_mamba"])
def test_tp_matches_hf_fp32(family, config, tp):
    run_tp(tp, _checks, family, config, "float32", preload=_PRELOAD)


@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("family", ["mamba", "falcon_mamba"])
def test_tp_matches_hf_bf16(family, tp):
    run_tp(tp, _checks, family, "odd", "bfloat16", preload=_PRELOAD)


def test_tp_not_dividing_d_inner_is_a_value_error():
    from ssmtp.models.mamba import TPMambaMixer

    model = build("mamba", "odd")  # d_inner = 96
    with pytest.raises(ValueError, match=r"tensor parallel size 5 does not divide intermediate_size \(d_inner\)=96"):
        TPMambaMixer.from_hf(model.backbone.layers[0].mixer, FakeComm(5))


def test_unsupported_model_lists_supported():
    with pytest.raises(TypeError, match="MambaForCausalLM"):
        ssmtp.parallelize(torch.nn.Linear(2, 2))
