"""The engine (ssmtp.LLM) with the hybrid families, Zamba (v1) and Zamba2, on CPU: fp32 tiny HF models (eager
attention) at TP 1, 2 and 4 (gloo ranks spawned by run_ranks).

Per run: greedy tokens and logits == HF generate (32 tokens) on the unsharded model, for prompts of different lengths
under continuous batching (more prompts than slots, right-padded prefill batches); the same from a model already
ssmtp.parallelize'd; chunked prefill == one prefill; prefix-cache hits (a block boundary inside a shared prefix, a
whole cached prompt, a multi-turn continuation) == cold prefills, so the restored state carries the K/V up to the
prefix; slot reuse leaves no stale state (K/V and the token count included); padding rows (slot -1) leave every slot
untouched; the tiny presets give the same tokens at every TP degree. In-process: the presets load into HF with every
tensor named as HF names it, and give HF's tokens.
"""
import functools
import tempfile

import pytest
import torch

import ssmtp
import ssmtp.ops as ops
from distributed import run_ranks as _run_ranks
from ssmtp.engine import LLM
from tiny_models import build_zamba, build_zamba2, close_rel, prompts as make_prompts

NEW = 32
K = 8  # prefix interval: prompts span several blocks
MAX_LEN = 96  # K/V per slot (longest prompt 21 + 32 new tokens fits)
pytestmark = pytest.mark.usefixtures("one_thread")
BUILD = {"zamba": build_zamba, "zamba2": build_zamba2}
# (family, config, TP degrees): Zamba "hf-tester" splits its 2 mamba heads at TP 4; Zamba2 "odd" has RoPE, adapters,
# biases and a B/C group spanning 2 ranks at TP 4; "g1" one B/C group (replicated), 2 shared blocks
CASES = [("zamba", "hf-tester", (1, 2, 4)), ("zamba", "odd", (1, 2, 4)), ("zamba2", "odd", (1, 2, 4)),
         ("zamba2", "g1", (1, 2, 4))]
FULL = {("zamba", "odd"), ("zamba2", "odd")}  # the configs that also get the chunked / prefix / reuse / padding checks


def run_ranks(world, fn, *args, timeout=600.0):
    _run_ranks(world, fn, *args, timeout=timeout, preload=["transformers", "ssmtp", "tiny_models", __name__])


@functools.lru_cache(maxsize=None)
def _hf_reference(family, config):
    """HF greedy tokens and per-step logits, one prompt at a time (no padding), unsharded fp32 model."""
    model = BUILD[family](config)
    out = []
    with torch.no_grad():
        for p in make_prompts():
            g = model.generate(torch.tensor([p]), max_new_tokens=NEW, do_sample=False, output_logits=True,
                               return_dict_in_generate=True)
            out.append((g.sequences[0, len(p):].tolist(), torch.stack([lg[0] for lg in g.logits])))
    return out


@functools.lru_cache(maxsize=None)
def _preset_tokens(name):
    llm = LLM(name, progress=False, max_model_len=64)
    return [o.token_ids for o in llm.generate([[5, 6, 7, 8, 9], [10, 11]], max_new_tokens=12, ignore_eos=True)]


def _engine(model, **kw):
    kw.setdefault("num_slots", 4)
    kw.setdefault("max_model_len", MAX_LEN)
    kw.setdefault("prefix_interval", K)
    return LLM(model, progress=False, **kw)


def _check_vs_hf(outs, ref, prompts, what):
    for i, (o, (ref_tok, ref_logits)) in enumerate(zip(outs, ref)):
        assert o.token_ids == ref_tok, f"{what}, prompt {i} (len {len(prompts[i])}): engine {o.token_ids} != HF " \
                                       f"{ref_tok}"
        close_rel(torch.stack(o.logits), ref_logits, 1e-4, f"{what}, prompt {i} logits vs HF")


def _same_as_cold(llm, prompt, out, what, rel=1e-5):
    cold = llm.generate([prompt], max_new_tokens=NEW, return_logits=True, use_prefix_cache=False)[0]
    assert out.token_ids == cold.token_ids, f"{what}: tokens differ from a cold prefill"
    close_rel(torch.stack(out.logits), torch.stack(cold.logits), rel, f"{what}: logits vs a cold prefill")


def _prefix_checks(llm, what):
    prompts = make_prompts()
    shared = prompts[2]  # 21 tokens: block boundaries at 8 and 16 inside it
    llm.generate([shared + [7] * 9], max_new_tokens=2)
    p = shared + [8] * 12
    hit = llm.generate([p], max_new_tokens=NEW, return_logits=True)[0]
    assert hit.cached_tokens >= 16, f"{what}: expected a prefix hit, got {hit.cached_tokens} cached tokens"
    _same_as_cold(llm, p, hit, f"{what}: prefix hit at {hit.cached_tokens}")
    again = llm.generate([p], max_new_tokens=NEW, return_logits=True)[0]  # the whole prompt, logits included
    assert again.cached_tokens == len(p), again.cached_tokens
    _same_as_cold(llm, p, again, f"{what}: whole prompt cached")
    turn2 = p + hit.token_ids[:-1] + [9, 10, 11]  # multi-turn: the finished request's state was saved
    nxt = llm.generate([turn2], max_new_tokens=8, return_logits=True)[0]
    # Zamba2 decodes without HF's prefill dt clamp: its generated turns are not cached (they would not equal a cold
    # prefill), so the hit is the prompt
    assert llm.cache_generated == (llm.runner.family == "zamba")
    assert nxt.cached_tokens == (len(p) + NEW - 1 if llm.cache_generated else len(p)), nxt.cached_tokens
    cold = llm.generate([turn2], max_new_tokens=8, return_logits=True, use_prefix_cache=False)[0]
    assert nxt.token_ids == cold.token_ids, f"{what}: multi-turn hit != cold"
    close_rel(torch.stack(nxt.logits), torch.stack(cold.logits), 1e-5, f"{what}: multi-turn hit logits")
    # siblings submitted together: the second waits for the first to save the branch point, then resumes there
    a, b = shared[:19] + [3, 4, 5], shared[:19] + [6]
    sib = llm.generate([a, b], max_new_tokens=NEW, return_logits=True)
    assert sib[1].cached_tokens >= 16
    _same_as_cold(llm, a, sib[0], f"{what}: sibling a")
    _same_as_cold(llm, b, sib[1], f"{what}: sibling b")


def _reuse_check(model, what):
    """One slot: a long request then a short one in the same slot == the short one in a fresh engine."""
    prompts = make_prompts()
    fresh = _engine(model, num_slots=1, prefix_cache=False).generate([prompts[1]], max_new_tokens=NEW,
                                                                      return_logits=True)[0]
    llm = _engine(model, num_slots=1, prefix_cache=False)
    llm.generate([prompts[2]], max_new_tokens=NEW)
    assert int(llm.pool.tensors["len"][0, 0]) == len(prompts[2]) + NEW - 1, "the slot's token count is wrong"
    assert llm.pool.tensors["k"][:, 0].abs().sum() > 0, "no K was written"
    slot = llm.pool.allocate(1)[0]  # handed out again: zeroed, K/V and token count included
    for name, t in llm.pool.tensors.items():
        assert not t[:, slot].any(), f"{name} of a reused slot is not zeroed"
    llm.pool.free([slot])
    llm.generate([prompts[2]], max_new_tokens=NEW)
    again = llm.generate([prompts[1]], max_new_tokens=NEW, return_logits=True)[0]
    assert again.token_ids == fresh.token_ids, f"{what}: stale state after slot reuse"
    close_rel(torch.stack(again.logits), torch.stack(fresh.logits), 0.0, f"{what}: logits after slot reuse")


def _padding_check(llm, what):
    """Rows with slot -1 (decode and prefill) write no slot's state; a live row writes only its own slot."""
    pool, r = llm.pool, llm.runner
    g = torch.Generator().manual_seed(5)
    for t in pool.tensors.values():
        if t.dtype.is_floating_point:
            t.copy_(torch.randn(t.shape, generator=g).to(t.dtype))
    pool.tensors["len"].copy_(torch.arange(pool.num_slots).view(1, -1) * 3)
    before = {k: v.clone() for k, v in pool.tensors.items()}
    M = r.max_len  # the scratch column

    def changed():
        out = set()
        for k, v in pool.tensors.items():
            for s in range(pool.num_slots):
                a, b = v[:, s], before[k][:, s]
                if k in ("k", "v"):
                    a, b = a[:, :M], b[:, :M]
                if not torch.equal(a, b):
                    out.add(s)
        return out

    with torch.no_grad():
        r.decode(torch.tensor([5, 6, 7]), torch.zeros(3, dtype=torch.long), torch.tensor([-1, 2, -1],
                                                                                         dtype=torch.int32), pool)
        assert changed() == {2}, f"{what}: decode with padding rows changed slots {changed()}"
        assert int(pool.tensors["len"][0, 2]) == 7
        r.prefill(torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]]), torch.tensor([4, 2], dtype=torch.int32),
                  torch.zeros(2, dtype=torch.long), torch.tensor([-1, 1], dtype=torch.int32), pool,
                  torch.tensor([1]))
        assert changed() == {1, 2}, f"{what}: prefill with a padding row changed slots {changed()}"
        assert int(pool.tensors["len"][0, 1]) == 5
        # the live row's K/V: positions 3, 4 written, the rest (beyond its 2 valid tokens) untouched
        k1, k0 = pool.tensors["k"][:, 1], before["k"][:, 1]
        assert torch.equal(k1[:, :3], k0[:, :3]) and torch.equal(k1[:, 5:M], k0[:, 5:M])
        assert not torch.equal(k1[:, 3:5], k0[:, 3:5])
    for t in pool.tensors.values():
        t.zero_()


def _checks(rank, world, family, config, ref, preset_tokens):
    what = f"{family}/{config} tp={world}"
    model = BUILD[family](config)
    prompts = make_prompts()

    # 1. greedy == HF, continuous batching (6 prompts, 4 slots), prefix cache on
    llm = _engine(model)
    outs = llm.generate(prompts, max_new_tokens=NEW, return_logits=True)
    _check_vs_hf(outs, ref, prompts, what)
    assert all(o.finish_reason == "length" and o.cached_tokens == 0 for o in outs)
    assert llm.pool.num_used == 0, "slots leaked"
    assert llm.pool.tensors["k"].shape[2] == MAX_LEN + 1
    heads = model.config.num_key_value_heads
    assert llm.pool.tensors["k"].shape[3] == heads // world, "K/V must hold this rank's heads only"
    if (family, config) not in FULL or world > 2:
        # the chunked / prefix / reuse / padding / parallelized checks exercise engine logic that does not depend on
        # the TP degree; they run at TP 1 and 2. TP 4 (heads split, a B/C group across ranks) is covered by the HF
        # comparison above, and 4 CPU ranks on CI's 2 cores make each extra check cost minutes.
        return

    # 2. chunked prefill (chunks of <= 3 tokens, continuing from the slot: K/V and SSM states) == one prefill
    one = _engine(model, prefix_cache=False)
    a = one.generate(prompts, max_new_tokens=NEW, return_logits=True)
    chunked = _engine(model, prefix_cache=False, max_prefill_tokens=3)
    b = chunked.generate(prompts, max_new_tokens=NEW, return_logits=True)
    assert chunked.steps["prefill"] > one.steps["prefill"] + 5, "the prompts were not chunked"
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.token_ids == y.token_ids, f"{what}: chunked prefill, prompt {i}"
        close_rel(torch.stack(y.logits), torch.stack(x.logits), 1e-5, f"{what}: chunked prefill, prompt {i}")

    _prefix_checks(llm, what)
    _reuse_check(model, what)
    _padding_check(one, what)

    # a model ssmtp.parallelize'd first: the engine reuses its shards
    ssmtp.parallelize(model)
    outs = _engine(model, prefix_cache=False).generate(prompts, max_new_tokens=NEW, return_logits=True)
    _check_vs_hf(outs, ref, prompts, what + " (parallelized model)")

    for name, toks in preset_tokens.items():
        got = [o.token_ids for o in LLM(name, progress=False, max_model_len=64).generate(
            [[5, 6, 7, 8, 9], [10, 11]], max_new_tokens=12, ignore_eos=True)]
        assert got == toks, f"preset {name} at tp={world}: {got} != tp=1 {toks}"


def _all(rank, world, cases, refs, preset_tokens):
    for (family, config), ref in zip(cases, refs):
        _checks(rank, world, family, config, ref, preset_tokens)


def _run(tp):
    cases = [(f, c) for f, c, tps in CASES if tp in tps]
    refs = [_hf_reference(f, c) for f, c in cases]
    presets = {n: _preset_tokens(n) for n in ("tiny-zamba", "tiny-zamba2")} if tp > 1 else {}
    if tp == 1:
        _all(0, 1, cases, refs, presets)
    else:
        run_ranks(tp, _all, cases, refs, presets)


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_engine_hybrid_matches_hf(tp):
    _run(tp)


@pytest.mark.parametrize("name,cls", [("tiny-zamba", "ZambaForCausalLM"), ("tiny-zamba2", "Zamba2ForCausalLM")])
def test_hybrid_presets_load_into_hf_and_match_it(name, cls):
    """save_preset writes every tensor under HF's name (HF reports nothing missing or unexpected); the engine on the
    preset and on the saved directory gives HF's greedy tokens."""
    import transformers

    from ssmtp.presets import save_preset

    with tempfile.TemporaryDirectory() as d:
        save_preset(name, d)
        model, info = getattr(transformers, cls).from_pretrained(d, output_loading_info=True,
                                                                  attn_implementation="eager")
        assert not any(info.values()), info
        model.eval()
        model.generation_config.eos_token_id = None
        p = [5, 6, 7, 8, 9, 10, 11]
        with torch.no_grad():
            ref = model.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False)[0, len(p):].tolist()
        assert LLM(name, progress=False, max_model_len=64).generate([p], max_new_tokens=12,
                                                                    ignore_eos=True)[0].token_ids == ref
        assert LLM(d, progress=False, max_model_len=64).generate([p], max_new_tokens=12,
                                                                 ignore_eos=True)[0].token_ids == ref


def test_hybrid_max_model_len_bounds_requests_and_sizes_the_kv():
    llm = LLM("tiny-zamba", progress=False, max_model_len=40, num_slots=2)
    assert llm.max_model_len == 40 and llm.pool.tensors["k"].shape[2] == 41
    with pytest.raises(ValueError, match="exceeds max_model_len=40"):
        llm.generate([[5] * 30], max_new_tokens=11)
    assert LLM("tiny-zamba2", progress=False, num_slots=1, prefix_cache=False).max_model_len == 1024  # the config


@pytest.mark.parametrize("attn_op", [True, False], ids=["decode-attention-op", "key-buckets"])
def test_hybrid_decode_attends_over_the_keys_in_use(attn_op, monkeypatch):
    """Decode attends over each row's own keys (ssmtp::decode_attention), or, with SSMTP_DECODE_ATTN=0, over the keys
    in use rounded up to a bucket (256, 512, ..., max_model_len): either way a request crossing 256 keys still gives
    HF's tokens and logits."""
    from ssmtp.engine.hybrid import HybridRunner

    monkeypatch.setattr(HybridRunner, "attn_op", attn_op)
    model = build_zamba2("odd")
    p = torch.randint(3, 99, (250,), generator=torch.Generator().manual_seed(4)).tolist()
    llm = LLM(model, progress=False, max_model_len=600, num_slots=1, prefix_cache=False)
    if attn_op:
        assert llm.runner.kv_buckets == []
    else:
        assert llm.runner.kv_buckets == [256, 512, 600] and llm.runner.kv_bucket(257) == 512
    out = llm.generate([p], max_new_tokens=12, return_logits=True)[0]
    with torch.no_grad():
        g = model.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False, output_logits=True,
                           return_dict_in_generate=True)
    assert out.token_ids == g.sequences[0, len(p):].tolist()
    close_rel(torch.stack(out.logits), torch.stack([lg[0] for lg in g.logits]), 1e-4, "logits across a key bucket")


def test_hybrid_fused_glue_where_it_applies(monkeypatch):
    """The hybrid runner's compiled glue (set_fused; CUDA engines turn it on) runs in every decode step and in prefill
    calls of at least FUSED_PREFILL_MIN_TOKENS tokens; shorter prefills keep the plain ops (host-bound there). Zamba2's
    gated norm takes the compiled function in such prefills and ssmtp::gated_norm in decode steps. The glue functions
    stand in for the compiled ones here, counted; the tokens stay HF's either way."""
    import ssmtp.engine.hybrid as hy
    import ssmtp.models.zamba2 as z2

    model = build_zamba2("odd")
    p = torch.randint(3, 99, (20,), generator=torch.Generator().manual_seed(2)).tolist()
    llm = LLM(model, progress=False, max_model_len=64, num_slots=1, prefix_cache=False)
    r = llm.runner
    calls = {"glue": 0, "gated": 0}

    def counted(key, fn):
        def f(*a):
            calls[key] += 1
            return fn(*a)
        return f

    r._k = {n: counted("glue", f) for n, f in r._plain.items()}
    for m in r.mixers:
        m.gated_fn = counted("gated", z2.gated_rms_norm)
    expect = llm.generate([p], max_new_tokens=1)[0].token_ids  # a 20-token prefill: plain glue, no decode step
    assert calls == {"glue": 0, "gated": 0}
    real, normed = ops.gated_norm, []

    def op(*a):
        normed.append(a[0].shape)
        return real(*a)

    monkeypatch.setattr(ops, "gated_norm", op)
    out = llm.generate([p], max_new_tokens=3)[0].token_ids  # + 2 decode steps: compiled glue in each
    n = r.n_layers
    assert out[:1] == expect and calls["gated"] == 0 and calls["glue"] >= 2 * n
    assert normed == [(1, r.mixers[0].d_local)] * (2 * n)  # the decode steps' gated norm: the op
    calls.update(glue=0, gated=0)
    monkeypatch.setattr(hy, "FUSED_PREFILL_MIN_TOKENS", 16)
    for m in r.mixers:
        m.fused_min_tokens = 16
    assert llm.generate([p], max_new_tokens=1)[0].token_ids == expect
    assert calls["gated"] == n and calls["glue"] >= n
    with torch.no_grad():
        g = model.generate(torch.tensor([p]), max_new_tokens=3, do_sample=False)
    assert out == g[0, len(p):].tolist()


def test_hybrid_decode_with_fused_dt_proj_on_cpu(monkeypatch):
    """Zamba's decode with the state update applying dt_proj (HybridRunner.decode_dt_fused: CUDA-only in the engine)
    run with the CPU ops: every Mamba layer's state update gets the low-rank dt and dt_proj, and the tokens and logits
    stay HF's."""
    from ssmtp.engine.hybrid import HybridRunner

    model = build_zamba("odd")
    p = torch.randint(3, 99, (12,), generator=torch.Generator().manual_seed(6)).tolist()
    llm = LLM(model, progress=False, max_model_len=64, num_slots=1, prefix_cache=False)
    assert not llm.runner.decode_dt_fused(1)  # a CPU engine
    monkeypatch.setattr(HybridRunner, "decode_dt_fused", lambda self, batch: True)
    real = ops.selective_state_update
    calls = []

    def counted(*a, **k):
        calls.append(len(a) > 11 and a[11] is not None)
        return real(*a, **k)

    monkeypatch.setattr(ops, "selective_state_update", counted)
    out = llm.generate([p], max_new_tokens=4, return_logits=True)[0]
    assert calls == [True] * (3 * len(llm.runner.mixers))  # 3 decode steps after the prefill, every Mamba layer
    with torch.no_grad():
        g = model.generate(torch.tensor([p]), max_new_tokens=4, do_sample=False, output_logits=True,
                           return_dict_in_generate=True)
    assert out.token_ids == g.sequences[0, len(p):].tolist()
    close_rel(torch.stack(out.logits), torch.stack([lg[0] for lg in g.logits]), 1e-4, "logits with dt_proj fused")
