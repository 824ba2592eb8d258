"""Zamba and Zamba2 on CUDA: the TP modules (ssmtp.parallelize) at TP=1 and TP=2 over NCCL against HF on the same
GPU (fp32 logits, left padding, greedy tokens); the engine's CUDA-graph decode == eager decode for the hybrid models
(K/V written in place by the graph, attention over max_model_len keys with a length mask) and prefill from graphs
(per batch, chunk and key bucket) == eager, == HF greedy; padding rows of a decode or prefill graph bucket leave every
slot untouched; a prefix hit (K/V restored) == a cold prefill on the GPU. Skipped without CUDA (marker `cuda`;
`multigpu` needs 2 GPUs)."""
import pytest
import torch

import ssmtp
from distributed import run_ranks
from tiny_models import build_zamba, build_zamba2, close_rel

BUILD = {"zamba": build_zamba, "zamba2": build_zamba2}
CASES = [("zamba", "odd"), ("zamba", "hf-tester"), ("zamba2", "odd"), ("zamba2", "g1")]
NEW = 32
MAX_LEN = 96
LENGTHS = (13, 5, 21, 1, 9)  # 5 requests: graph bucket 8 with 3 padding rows


def _prompts():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(3, 99, (n,), generator=g).tolist() for n in LENGTHS]


def _inputs(device):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 99, (3, 13), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    mask[2, :7] = 0
    return ids.to(device), ids.masked_fill(mask == 0, 0).to(device), mask.to(device)


# ------------------------------------------------------------------------------------------------ TP modules vs HF

def _model_checks(rank, world, family, config):
    """fp32: rel 1e-4 of the logit range (CUDA kernels vs HF's torch fallbacks: summation order only)."""
    dev = torch.device("cuda", rank)
    model = BUILD[family](config).to(dev)
    ids, ids_pad, mask = _inputs(dev)
    with torch.no_grad():
        ref = model(ids).logits
        ref_pad = model(ids_pad, attention_mask=mask).logits
        ref_gen = model.generate(ids, max_new_tokens=NEW, do_sample=False)
        ref_gen_pad = model.generate(ids_pad, attention_mask=mask, max_new_tokens=NEW, do_sample=False)
    ssmtp.parallelize(model)
    what = f"{family}/{config} tp={world}"
    with torch.no_grad():
        close_rel(model(ids).logits, ref, 1e-4, f"{what}: logits")
        valid = mask.bool()
        close_rel(model(ids_pad, attention_mask=mask).logits[valid], ref_pad[valid], 1e-4, f"{what}: left-padded logits")
        assert torch.equal(model.generate(ids, max_new_tokens=NEW, do_sample=False), ref_gen), f"{what}: greedy"
        gen_pad = model.generate(ids_pad, attention_mask=mask, max_new_tokens=NEW, do_sample=False)
        assert torch.equal(gen_pad, ref_gen_pad), f"{what}: greedy with left padding"
    torch.cuda.synchronize(dev)


@pytest.mark.cuda
@pytest.mark.parametrize("family,config", CASES)
def test_hybrid_tp1_matches_hf_on_gpu(family, config):
    _model_checks(0, 1, family, config)


def _model_checks_all(rank, world):
    for family, config in CASES:
        _model_checks(rank, world, family, config)


@pytest.mark.cuda
@pytest.mark.multigpu
def test_hybrid_tp2_matches_hf_on_gpus_nccl():
    run_ranks(2, _model_checks_all, backend="nccl", timeout=600)


# ------------------------------------------------------------------------------------------------ engine graphs

def _graph_vs_eager(device, family, config, hf_check):
    from ssmtp.engine import LLM

    model = BUILD[family](config).to(device)
    prompts = _prompts()
    kw = dict(max_new_tokens=NEW, return_logits=True)
    common = dict(device=device, max_batch=8, max_model_len=MAX_LEN, prefix_interval=8, progress=False)
    g = LLM(model, cuda_graphs=True, graph_batch_sizes=(1, 2, 4, 8), **common)
    e = LLM(model, cuda_graphs=False, **common)
    og = g.generate(prompts, **kw)
    oe = e.generate(prompts, **kw)
    assert g.graphs.captured, "no decode graph was captured"
    # prefill from graphs too: the 5 prompts' first chunks (cut at the first save point, K = 8) as one bucket of 8 x 16
    # tokens over 96 keys (max_model_len)
    assert (8, 16, MAX_LEN) in g.prefill_graphs.captured, g.prefill_graphs.captured
    for i, (x, y) in enumerate(zip(og, oe)):
        assert x.token_ids == y.token_ids, f"prompt {i}: graph {x.token_ids} != eager {y.token_ids}"
        close_rel(torch.stack(x.logits), torch.stack(y.logits), 1e-4, f"prompt {i} graph vs eager logits")
    if hf_check:
        with torch.no_grad():
            for i, p in enumerate(prompts):
                ref = model.generate(torch.tensor([p], device=device), max_new_tokens=NEW, do_sample=False)
                assert og[i].token_ids == ref[0, len(p):].tolist(), f"prompt {i}: graph engine != HF greedy"

    # padding rows of a bucket touch no slot: 3 live rows in bucket 4 (K/V compared without the scratch column), in a
    # decode graph and in a prefill graph (slots holding 0 / 3 / 6 tokens take 2 / 1 / 3 more)
    pool, M = g.pool, g.runner.max_len
    steps = ((lambda: g.graphs.run([5, 6, 7], [0, 1, 2]), [1, 4, 7]),
             (lambda: g.prefill_graphs.run([([5, 6], 0, 0, []), ([7], 3, 1, []), ([8, 9, 10], 6, 2, [])], kv_len=9),
              [2, 4, 9]))
    for step, lens in steps:
        for t in pool.tensors.values():
            if t.dtype.is_floating_point:
                t.normal_()
        pool.tensors["len"].copy_(torch.arange(pool.num_slots, device=device).view(1, -1) * 3)
        before = {k: v.clone() for k, v in pool.tensors.items()}
        step()
        torch.cuda.synchronize(device)
        for k, v in pool.tensors.items():
            for s in range(pool.num_slots):
                a, b = (v[:, s, :M], before[k][:, s, :M]) if k in ("k", "v") else (v[:, s], before[k][:, s])
                assert torch.equal(a, b) == (s > 2), f"{k} slot {s}"
        assert pool.tensors["len"][0, :3].tolist() == lens
    for t in pool.tensors.values():
        t.zero_()

    # a prefix hit (K/V and SSM states restored) resumes on the GPU exactly like a cold prefill
    shared = _prompts()[2]
    g.generate([shared + [7] * 9], max_new_tokens=2)
    p = shared + [8] * 30
    hit = g.generate([p], **kw)[0]
    cold = g.generate([p], use_prefix_cache=False, **kw)[0]
    assert hit.cached_tokens >= 16, hit.cached_tokens
    assert hit.token_ids == cold.token_ids
    close_rel(torch.stack(hit.logits), torch.stack(cold.logits), 1e-4, "prefix hit vs cold")
    g.close()


@pytest.mark.cuda
@pytest.mark.parametrize("family,config", [("zamba", "odd"), ("zamba2", "odd"), ("zamba2", "g1")])
def test_hybrid_graph_decode_equals_eager_tp1_fp32(family, config):
    _graph_vs_eager(torch.device("cuda", 0), family, config, hf_check=True)


@pytest.mark.cuda
@pytest.mark.parametrize("attn_op", [True, False], ids=["decode-attention-op", "key-buckets"])
def test_hybrid_graph_decode_key_buckets(attn_op, monkeypatch):
    """A request crossing 256 keys: with the decode attention op one graph per batch bucket serves every length;
    with SSMTP_DECODE_ATTN=0 it replays the bucketed graphs (captured on first use). Either way == eager == HF."""
    from ssmtp.engine import LLM
    from ssmtp.engine.hybrid import HybridRunner

    monkeypatch.setattr(HybridRunner, "attn_op", attn_op)
    dev = torch.device("cuda", 0)
    model = build_zamba2("odd").to(dev)
    p = torch.randint(3, 99, (250,), generator=torch.Generator().manual_seed(4)).tolist()
    common = dict(device=dev, max_batch=2, max_model_len=600, prefix_cache=False, progress=False)
    g = LLM(model, cuda_graphs=True, **common)
    e = LLM(model, cuda_graphs=False, **common)
    x = g.generate([p], max_new_tokens=12, return_logits=True)[0]
    y = e.generate([p], max_new_tokens=12, return_logits=True)[0]
    assert (1, 256, 256) in g.prefill_graphs.captured, g.prefill_graphs.captured  # 250 tokens over <= 256 keys
    if attn_op:
        assert g.graphs.captured_kv == [], g.graphs.captured_kv
    else:
        assert (1, 256) in g.graphs.captured_kv and (1, 512) in g.graphs.captured_kv, g.graphs.captured_kv
    assert x.token_ids == y.token_ids
    close_rel(torch.stack(x.logits), torch.stack(y.logits), 1e-4, "graph vs eager across a key bucket")
    with torch.no_grad():
        ref = model.generate(torch.tensor([p], device=dev), max_new_tokens=12, do_sample=False)
    assert x.token_ids == ref[0, len(p):].tolist()
    g.close()


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["tiny-zamba", "tiny-zamba2"])
def test_hybrid_graph_decode_equals_eager_tp1_bf16_preset(name):
    """bf16 presets: 4 prompts fill bucket 4 exactly (the same GEMM shapes eager and graphed), greedy tokens equal.
    Decode graphs only: a prefill graph takes the compiled glue at every size and pads the chunk to its bucket, an
    eager prefill of a few tokens the plain ops, and in bf16 those roundings move later tokens (prefill graphs
    against eager prefill: the fp32 tests above)."""
    from ssmtp.engine import LLM

    dev = torch.device("cuda", 0)
    kw = dict(max_new_tokens=24, ignore_eos=True)
    p = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16, 17], [18]]
    a = LLM(name, device=dev, cuda_graphs=True, prefill_graphs=False, max_batch=4, max_model_len=128, progress=False)
    b = LLM(name, device=dev, cuda_graphs=False, max_batch=4, max_model_len=128, progress=False)
    assert a.dtype == torch.bfloat16
    assert [o.token_ids for o in a.generate(p, **kw)] == [o.token_ids for o in b.generate(p, **kw)]
    a.close()


def _tp2(rank, world):
    dev = torch.device("cuda", rank)
    _graph_vs_eager(dev, "zamba", "odd", True)
    _graph_vs_eager(dev, "zamba2", "odd", True)
    torch.cuda.synchronize(dev)


@pytest.mark.cuda
@pytest.mark.multigpu
def test_hybrid_graph_decode_equals_eager_tp2_nccl():
    run_ranks(2, _tp2, backend="nccl", timeout=600)


@pytest.mark.cuda
def test_zamba2_ssd_kernel_in_the_model_as_accurate_as_the_selective_path_bf16(monkeypatch):
    """scan_impl="ssd" (the chunked SSD prefill kernel; "auto" takes the selective kernels on CUDA) in a bf16 model
    whose shapes the kernel takes (head_dim 32, d_state 16), prompts over several 64-token chunks with left padding,
    against HF's fp32 model: within 3% of the logit range and no further off than the selective path (both bf16
    models; HF's init scale, as the larger one of the other tests makes bf16 runs of this model chaotic), and the
    kernel really ran."""
    from ssmtp import ops
    from ssmtp.models.zamba2 import TPZamba2MambaMixer

    dev = torch.device("cuda")
    kw = dict(hidden_size=64, n_mamba_heads=4, mamba_d_state=16, initializer_range=0.02)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 99, (2, 150), generator=g).to(dev)
    mask = torch.ones_like(ids)
    mask[1, :37] = 0
    valid = mask.bool()
    with torch.no_grad():
        ref = build_zamba2("g1", **kw).to(dev)(ids, attention_mask=mask).logits.float()[valid]
    model = build_zamba2("g1", **kw).to(dev, torch.bfloat16)
    ssmtp.parallelize(model)
    mixers = [m for m in model.modules() if isinstance(m, TPZamba2MambaMixer)]
    assert mixers and ops.ssd_cuda_supports(torch.bfloat16, mixers[0].head_dim, mixers[0].ssm_state_size)
    calls = []
    real = ops.ssd_scan
    monkeypatch.setattr(ops, "ssd_scan", lambda *a: calls.append(1) or real(*a))

    def err(impl):
        for m in mixers:
            m.scan_impl = impl
        with torch.no_grad():
            got = model(ids, attention_mask=mask).logits.float()[valid]
        close_rel(got, ref, 3e-2, f"zamba2 bf16 {impl} vs HF fp32: logits")
        return (got - ref).abs().max().item()

    e_sel = err("selective")
    assert not calls
    e_ssd = err("ssd")
    assert len(calls) == len(mixers)
    assert e_ssd <= 1.5 * e_sel + 2e-3 * ref.abs().max().item(), (e_ssd, e_sel)
    # generation with scan_impl="ssd": the prefill through the kernel, decode steps through the selective update
    calls.clear()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
    assert out.shape == (2, 154) and len(calls) == len(mixers)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("family,config", [("zamba", "odd"), ("zamba", "divisible"), ("zamba2", "odd"),
                                           ("zamba2", "g1")])
@pytest.mark.parametrize("batch", [1, 2, 3])
def test_hybrid_fused_decode_input_equals_unfused(monkeypatch, family, config, dtype, batch):
    """The hybrid decode step with ops.mamba_decode_in for each Mamba layer's input (residual add + norm + in_proj +
    conv step; batch <= 2; Zamba2 with the conv rows at d_inner) vs the unfused ops (SSMTP_DECODE_FUSED=0), from the
    same states (conv, SSM, K/V, lengths), step after step (each step from the unfused run's states, so that bf16
    differences cannot compound over steps): logits and every state agree to the tolerance of one rounding per GEMV;
    batch 3, and rows the kernel does not take (16-byte packs), run the unfused ops either way (bit-equal for Zamba2;
    Zamba's state update takes dt_proj at batch <= 8 in both modes but "0"). bf16 models
    at HF's init scale: with the tests' larger one (0.2) one rounding's difference in a step moved the logits of
    zamba/divisible by 9% of their range (0.44 of 5; H200, 2026-11-24), the model amplifying any perturbation."""
    import ssmtp.engine.runner as runner_mod
    from ssmtp.engine import LLM

    dev = torch.device("cuda", 0)
    model = BUILD[family](config, dtype, **({} if dtype == torch.float32 else {"initializer_range": 0.02})).to(dev)
    llm = LLM(model, device=dev, dtype=dtype, cuda_graphs=False, max_batch=4, max_model_len=MAX_LEN,
              prefix_cache=False, progress=False)
    runner, pool = llm.runner, llm.pool
    monkeypatch.setattr(runner_mod, "_DECODE_FUSED", "1")
    packs = model.config.hidden_size * torch.finfo(dtype).bits // 8 % 16 == 0
    fused = batch <= runner_mod.DECODE_IN_MAX_BATCH and packs
    assert runner.decode_in_applies(batch) == fused, "the tiny model's shapes"
    monkeypatch.setattr(runner_mod, "_DECODE_FUSED", "0")
    assert not runner.decode_in_applies(batch)
    g = torch.Generator(device=dev).manual_seed(3)
    for k, t in pool.tensors.items():
        if t.dtype.is_floating_point:
            t.copy_(torch.randn(t.shape, device=dev, generator=g).to(t.dtype) * 0.5)
    pool.tensors["len"].copy_(torch.arange(pool.num_slots, device=dev).view(1, -1) + 5)
    saved = {m: {k: v.clone() for k, v in pool.tensors.items()} for m in ("0", "1")}
    start = {k: v.clone() for k, v in pool.tensors.items()}
    idx = torch.arange(batch, dtype=torch.int32, device=dev).flip(0) + 1
    ids = torch.randint(3, 99, (batch,), device=dev, generator=g)
    rel = 1e-4 if dtype == torch.float32 else 5e-2
    for step in range(4):
        logits = {}
        for m in ("0", "1"):
            monkeypatch.setattr(runner_mod, "_DECODE_FUSED", m)
            for k, v in pool.tensors.items():
                v.copy_(start[k])
            logits[m] = runner.decode(ids, None, idx, pool)
            for k, v in pool.tensors.items():
                saved[m][k].copy_(v)
        what = f"{family}/{config} {dtype} B={batch} step {step}"
        if not fused and family == "zamba2":  # Zamba (v1) fuses dt_proj into the state update up to batch 8 too
            assert torch.equal(logits["1"], logits["0"]), what
        close_rel(logits["1"], logits["0"], rel, f"{what}: logits")
        for k in saved["0"]:
            if saved["0"][k].dtype.is_floating_point:
                close_rel(saved["1"][k].float(), saved["0"][k].float(), rel, f"{what}: state {k}")
            else:
                assert torch.equal(saved["1"][k], saved["0"][k]), f"{what}: state {k}"
        ids = logits["0"].argmax(-1)
        for k in start:
            start[k].copy_(saved["0"][k])
    llm.close()
