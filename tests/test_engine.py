"""The engine (ssmtp.LLM) on CPU: fp32 tiny HF models at TP 1, 2 and 4 (gloo ranks spawned by run_ranks).

Per spawned run, several checks (spawning costs seconds): greedy tokens and logits == HF generate on the unsharded
model, for prompts of different lengths under continuous batching (more prompts than slots); chunked prefill == one
prefill; prefix-cache resume == cold prefill (same greedy tokens, logits within fp32 rounding) for a short prompt
(< K), a shared prefix + long suffix, and siblings submitted together; slot reuse leaves no stale state; padding rows
(state_idx -1) leave every slot untouched; loading from a save_pretrained directory (sharded safetensors) == the
in-memory model; the tiny preset gives the same tokens at every TP degree. In-process: sampling, the prefix cache's
bookkeeping, presets, bad input (each with a test), the CLI and a CPU smoke run of the benchmark.
"""
import ast
import json
import os
import subprocess
import sys

import ssmtp

import numpy as np
import pytest
import torch
import torch.distributed as dist

from distributed import run_ranks as _run_ranks
from ssmtp.engine import LLM, SamplingParams, SlotPool, SlotPoolExhausted
from ssmtp.engine.prefix_cache import BranchIndex, PrefixCache, as_tokens, chain_hashes
from ssmtp.engine.sampling import gumbel_noise, sample
from ssmtp.engine.state_cache import StateSpec
from tiny_models import build, close_rel, prompts as make_prompts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEW = 10
K = 8  # prefix interval in these tests: prompts span several blocks
pytestmark = pytest.mark.usefixtures("one_thread")


def run_ranks(world, fn, *args, timeout=300.0):
    """Ranks forked from a forkserver that imported torch, transformers and ssmtp once."""
    _run_ranks(world, fn, *args, timeout=timeout, preload=["transformers", "ssmtp", "tiny_models", __name__])


def _hf_reference(family, config):
    """HF greedy tokens and per-step logits for every prompt (one at a time, no padding), unsharded model."""
    model = build(family, config)
    out = []
    with torch.no_grad():
        for p in make_prompts():
            g = model.generate(torch.tensor([p]), max_new_tokens=NEW, do_sample=False, output_logits=True,
                               return_dict_in_generate=True)
            out.append((g.sequences[0, len(p):].tolist(), torch.stack([lg[0] for lg in g.logits])))
    return out


def _rand(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 99, (n,), generator=g).tolist()


def _same_as_cold(llm, prompt, out, what, rel=1e-5):
    cold = llm.generate([prompt], max_new_tokens=NEW, return_logits=True, use_prefix_cache=False)[0]
    assert out.token_ids == cold.token_ids, f"{what}: tokens differ from a cold prefill"
    for i, (x, y) in enumerate(zip(out.logits, cold.logits)):
        close_rel(x, y, rel, f"{what}: logits of token {i}")


ALL = ("hf", "chunked", "prefix", "reuse", "padding", "load", "preset")


def _engine_checks(rank, world, family, config, ref, tmpdir, preset_tokens, parts=ALL):
    model = build(family, config)
    prompts = make_prompts()

    # 1. greedy tokens == HF, continuous batching (6 prompts, 4 slots), prefix cache on (K = 8)
    llm = LLM(model, num_slots=4, prefix_interval=K, progress=False)
    outs = llm.generate(prompts, max_new_tokens=NEW, return_logits=True)
    for i, (o, (ref_tok, ref_logits)) in enumerate(zip(outs, ref)):
        assert o.token_ids == ref_tok, f"prompt {i} (len {len(prompts[i])}): engine {o.token_ids} != HF {ref_tok}"
        close_rel(torch.stack(o.logits), ref_logits, 1e-4, f"prompt {i} logits vs HF")
        assert o.finish_reason == "length" and o.cached_tokens == 0
    assert llm.pool.num_used == 0, "slots leaked"

    # 2. chunked prefill (chunks of <= 3 tokens, continuing from the slot) == one prefill
    one = LLM(model, num_slots=4, prefix_cache=False, progress=False)
    a = one.generate(prompts, max_new_tokens=NEW, return_logits=True)
    if "chunked" in parts:
        chunked = LLM(model, num_slots=4, prefix_cache=False, max_prefill_tokens=3, progress=False)
        b = chunked.generate(prompts, max_new_tokens=NEW, return_logits=True)
        assert chunked.steps["prefill"] > one.steps["prefill"] + 5, "the prompts were not chunked"
        for i, (x, y) in enumerate(zip(a, b)):
            assert x.token_ids == y.token_ids
            close_rel(torch.stack(y.logits), torch.stack(x.logits), 1e-5, f"chunked prefill, prompt {i}")
    if "prefix" in parts:
        _prefix_checks(llm)
    if "reuse" in parts:
        _reuse_check(model)
    if "padding" in parts:
        _padding_check(llm)
    if "load" in parts:
        _load_check(rank, world, model, family, config, tmpdir, prompts, a)
    # 7. the tiny preset gives the same tokens at every TP degree (tile-deterministic random weights)
    if preset_tokens is not None:
        tiny = LLM("tiny", progress=False)
        assert tiny.generate([[5, 6, 7, 8, 9]], max_new_tokens=12, ignore_eos=True)[0].token_ids == preset_tokens


def _prefix_checks(llm):
    # 3. prefix cache: resume == cold. Short prompt (< K): the end-of-prompt entry (logits stored: no forward)
    short = _rand(5, 11)
    first = llm.generate([short], max_new_tokens=NEW, return_logits=True)[0]
    again = llm.generate([short], max_new_tokens=NEW, return_logits=True)[0]
    assert again.cached_tokens == 5, f"short prompt: {again.cached_tokens} cached tokens, expected 5"
    assert again.token_ids == first.token_ids
    _same_as_cold(llm, short, again, "short prompt, full hit")
    ext = short + _rand(2, 12)  # still < K
    o = llm.generate([ext], max_new_tokens=NEW, return_logits=True)[0]
    assert o.cached_tokens == 5, f"extended short prompt: {o.cached_tokens} cached, expected 5"
    _same_as_cold(llm, ext, o, "short prompt extended")

    # shared prefix (19 tokens, not a multiple of K) + long suffixes: the 2nd request hits the K-block checkpoint
    # (16) and saves its branch point; the 3rd hits the whole shared prefix
    P = _rand(19, 13)
    llm.generate([P + _rand(30, 14)], max_new_tokens=2)
    b1 = P + _rand(25, 15)
    o1 = llm.generate([b1], max_new_tokens=NEW, return_logits=True)[0]
    assert o1.cached_tokens == 16, f"first sibling: {o1.cached_tokens} cached, expected 16"
    _same_as_cold(llm, b1, o1, "first sibling")
    b2 = P + _rand(40, 16)
    o2 = llm.generate([b2], max_new_tokens=NEW, return_logits=True)[0]
    assert o2.cached_tokens == 19, f"shared prefix + long suffix: {o2.cached_tokens} cached, expected 19"
    _same_as_cold(llm, b2, o2, "shared prefix + long suffix")

    # siblings submitted together: the first saves the branch point, the others wait one step and resume there
    P2 = _rand(11, 17)
    sib = [P2 + _rand(20 + j, 18 + j) for j in range(3)]
    os_ = llm.generate(sib, max_new_tokens=NEW, return_logits=True)
    assert [o.cached_tokens for o in os_] == [0, 11, 11], [o.cached_tokens for o in os_]
    for j, o in enumerate(os_):
        _same_as_cold(llm, sib[j], o, f"sibling {j}")

    # in-pass saves (Mamba runners): a cold prompt with five save points inside is ONE prefill step (not six), and a
    # resume from one of those points equals a cold prefill
    assert llm.inner_saves > 0
    Q = _rand(45, 30)
    s0 = llm.steps["prefill"]
    llm.generate([Q], max_new_tokens=1)
    assert llm.steps["prefill"] - s0 == 1, f"{llm.steps['prefill'] - s0} prefill steps for one cold prompt"
    q2 = Q[:42] + _rand(9, 31)
    o = llm.generate([q2], max_new_tokens=NEW, return_logits=True)[0]
    assert o.cached_tokens == 40, f"resume after an in-pass save: {o.cached_tokens} cached, expected 40"
    _same_as_cold(llm, q2, o, "resume from an in-pass save")
    # more save points than spare slots: the chunk ends at the first point past them; with inner saves off, every
    # save point ends a chunk
    spare, llm.inner_saves = llm.inner_saves, 2
    R, R2 = _rand(50, 32), _rand(50, 34)  # save points 8, 16, ..., 48 and the end
    for prompt, inner, steps in ((R, 2, 3), (R2, 0, 7)):  # 2: chunks [0, 24) [24, 48) [48, 50)
        llm.inner_saves = inner
        s0 = llm.steps["prefill"]
        llm.generate([prompt], max_new_tokens=1)
        assert llm.steps["prefill"] - s0 == steps, f"{llm.steps['prefill'] - s0} prefill steps, expected {steps}"
    llm.inner_saves = spare
    for prompt, cut, what in ((R, 33, "an in-pass save"), (R2, 41, "a chunk-end save")):
        q = prompt[:cut] + _rand(5, 35)
        o = llm.generate([q], max_new_tokens=NEW, return_logits=True)[0]
        assert o.cached_tokens == cut - 1, f"{what}: {o.cached_tokens} cached, expected {cut - 1}"
        _same_as_cold(llm, q, o, f"resume from {what}")

    # a generated continuation is cached too (multi-turn): prompt + output[:-1] resumes with its logits
    turn = llm.generate([P2], max_new_tokens=6)[0]
    follow = P2 + turn.token_ids[:-1]
    o = llm.generate([follow], max_new_tokens=NEW, return_logits=True)[0]
    assert o.cached_tokens == len(follow), f"multi-turn: {o.cached_tokens} of {len(follow)} cached"
    assert o.token_ids[0] == turn.token_ids[-1]
    _same_as_cold(llm, follow, o, "multi-turn")
    assert llm.pool.num_used == 0


def _reuse_check(model):
    # 4. slot reuse: one slot, used by a long request, then reused: same as a fresh engine
    reuse = LLM(model, num_slots=1, prefix_cache=False, progress=False)
    reuse.generate([_rand(23, 20)], max_new_tokens=NEW)
    y = _rand(7, 21)
    got = reuse.generate([y], max_new_tokens=NEW, return_logits=True)[0]
    fresh = LLM(model, num_slots=1, prefix_cache=False, progress=False).generate([y], max_new_tokens=NEW,
                                                                                 return_logits=True)[0]
    assert got.token_ids == fresh.token_ids
    for x, z in zip(got.logits, fresh.logits):
        assert torch.equal(x, z), "a reused slot changed the result (stale state)"


def _padding_check(llm):
    # 5. padding rows (state_idx -1) leave every slot untouched; real rows touch only their own slot
    r, pool = llm.runner, llm.pool
    for t in pool.tensors.values():
        t.copy_(torch.randn(t.shape, generator=torch.Generator().manual_seed(5)).to(t.dtype))
    before = {k: v.clone() for k, v in pool.tensors.items()}
    idx = torch.tensor([2, -1], dtype=torch.int32)
    r.prefill(torch.tensor([_rand(6, 22), _rand(6, 23)]), torch.tensor([6, 4], dtype=torch.int32),
              torch.zeros(2, dtype=torch.long), idx, pool, torch.tensor([0, 1]))
    r.decode(torch.tensor([5, 6]), torch.zeros(2, dtype=torch.long), torch.tensor([-1, 1], dtype=torch.int32), pool)
    for k, v in pool.tensors.items():
        for s in range(pool.num_slots):
            same = torch.equal(v[:, s], before[k][:, s])
            assert same == (s not in (1, 2)), f"{k} slot {s}: {'unchanged' if same else 'changed'}"


def test_staged_prefill_inputs_equal_separate_prefills():
    """The inputs a prefill graph replays (stage_prefill's layout read by prefill_staged; the graphs themselves need
    CUDA): three chunks of different lengths with in-pass saves in a 4 x 16 bucket (the ending row's index staged
    after them) == each chunk prefilled alone, each save == the state after its prefix, the padding row touches no
    slot."""
    from ssmtp.engine.graphs import prefill_staged, stage_prefill

    llm = LLM(build("mamba", "odd"), device="cpu", max_batch=4, progress=False)
    r, pool = llm.runner, llm.pool
    S = llm.inner_saves
    assert S > 0
    for t in pool.tensors.values():
        t.copy_(torch.randn(t.shape, generator=torch.Generator().manual_seed(6)).to(t.dtype))
    toks = [_rand(11, 1), _rand(16, 2), _rand(3, 3)]
    slots, spare = pool.allocate(3), pool.allocate(2)
    chunks = [(toks[0], 0, slots[0], [(4, spare[0])]), (toks[1], 0, slots[1], []),
              (toks[2], 0, slots[2], [(2, spare[1])])]
    B, L = 4, 16
    a = np.full(3 * B + 2 * B * S + B * L + 1, 77, dtype=np.int64)
    assert stage_prefill(a, B, L, S, chunks, ends=[2]) == len(a) and a[-1] == 2
    before = {k: v.clone() for k, v in pool.tensors.items()}
    logits = prefill_staged(r, pool, torch.from_numpy(a), B, L, S, torch.arange(B))
    for k, v in pool.tensors.items():
        for s in range(pool.num_slots):
            if s not in slots + spare:
                assert torch.equal(v[:, s], before[k][:, s]), f"{k} slot {s} changed (a padding row wrote it?)"

    def alone(ids):
        ref = pool.allocate(1)
        out = r.prefill(torch.tensor([ids]), torch.tensor([len(ids)], dtype=torch.int32),
                        torch.zeros(1, dtype=torch.long), torch.tensor(ref, dtype=torch.int32), pool, torch.tensor([0]))
        return out[0], ref[0]

    for i, (ids, _, slot, saves) in enumerate(chunks):
        ref, ref_slot = alone(ids)
        close_rel(logits[i], ref, 1e-5, f"row {i}: staged vs alone logits")
        for q, sp in [(len(ids), slot)] + saves:
            want = alone(ids[:q])[1]
            for k, v in pool.tensors.items():
                close_rel(v[:, sp], v[:, want], 1e-5, f"row {i}: {k} after {q} tokens")


def test_prefill_graph_shape_rule():
    from ssmtp.engine.graphs import DEFAULT_PREFILL_BATCHES as BS, DEFAULT_PREFILL_BUCKETS as LS, prefill_graph_shape

    cases = {(1, 1000): (1, 1024), (1, 1025): (1, 1280), (1, 2049): None, (2, 2000): (2, 2048), (3, 1100): None,
             (3, 100): (4, 128), (2, 1024): (2, 1024), (4, 1024): (4, 1024), (8, 500): (8, 512), (5, 512): None,
             (7, 510): None, (16, 300): None, (64, 16): (64, 16),
             (65, 16): None, (0, 16): None, (33, 60): None, (33, 30): (64, 32)}
    for (b, n), want in cases.items():
        assert prefill_graph_shape(BS, LS, 4096, b, n) == want, (b, n)
    assert prefill_graph_shape(BS, LS, 1024, 4, 512) is None  # a smaller token bound
    assert prefill_graph_shape(BS, LS, 1024, 1, 1000) == (1, 1024)  # one request: any chunk bucket


def test_prefill_graph_warmup_buckets():
    """LLM.warmup's prefill graphs (GraphPrefill.capture_all, its captures recorded here: graphs need CUDA): every
    one-request chunk bucket, the largest first; with attention (a hybrid runner's key buckets), none past the bucket
    holding the longest sequence, each over the key bucket holding its chunk."""
    from ssmtp.engine.graphs import DEFAULT_PREFILL_BUCKETS, GraphPrefill

    def warmup(kv_buckets):
        g = GraphPrefill.__new__(GraphPrefill)
        g.sizes, g.kv_buckets, calls = list(DEFAULT_PREFILL_BUCKETS), kv_buckets, []
        g.capture = lambda B, L, kv=None: calls.append((B, L, g.kv_bucket(kv)))
        g.capture_all()
        return calls

    assert warmup([]) == [(1, L, None) for L in sorted(DEFAULT_PREFILL_BUCKETS, reverse=True)]
    assert warmup([96]) == [(1, 128, 96), (1, 64, 96), (1, 32, 96), (1, 16, 96)]
    kv = [256, 512, 1024, 2048, 2560]
    assert warmup(kv)[:3] == [(1, 2048, 2048), (1, 1792, 2048), (1, 1536, 2048)]
    assert warmup(kv)[-2:] == [(1, 32, 256), (1, 16, 256)]
    assert len(warmup(kv)) == len(DEFAULT_PREFILL_BUCKETS)


def _load_check(rank, world, model, family, config, tmpdir, prompts, a):
    # 6. loading from an HF directory (sharded safetensors; each rank reads its slices) == the in-memory model
    path = os.path.join(tmpdir, f"{family}-{config}")
    if rank == 0:
        model.save_pretrained(path, max_shard_size="20KB")
        assert os.path.isfile(os.path.join(path, "model.safetensors.index.json"))
    if world > 1:
        dist.barrier()
    disk = LLM(path, num_slots=4, prefix_cache=False, progress=False)
    assert disk.runner.family == family
    assert disk.eos == {model.config.eos_token_id}  # the checkpoint's eos (the in-memory model had none set)
    d = disk.generate(prompts, max_new_tokens=NEW, return_logits=True, ignore_eos=True)  # the same batches as `a`
    for x, y in zip(d, a):
        assert x.token_ids == y.token_ids
        for lx, ly in zip(x.logits, y.logits):
            assert torch.equal(lx, ly), "loaded from disk != in memory"


def _tiny_preset_tokens():
    return LLM("tiny", progress=False).generate([[5, 6, 7, 8, 9]], max_new_tokens=12, ignore_eos=True)[0].token_ids


@pytest.mark.parametrize("family,config", [("mamba", "odd"), ("falcon_mamba", "hf-tester")])
def test_engine_tp1(family, config, tmp_path):
    _engine_checks(0, 1, family, config, _hf_reference(family, config), str(tmp_path), None)


def test_engine_tp2_both_families(tmp_path):
    refs = {fc: _hf_reference(*fc) for fc in [("mamba", "hf-tester"), ("falcon_mamba", "odd")]}
    run_ranks(2, _tp_runs, refs, str(tmp_path), _tiny_preset_tokens())


def test_engine_tp4(tmp_path):
    """TP-specific checks at 4 ranks (the slot mechanics - chunking, reuse, padding - are the same at every TP degree
    and are checked at 1 and 2)."""
    refs = {("mamba", "odd"): _hf_reference("mamba", "odd")}
    run_ranks(4, _tp_runs, refs, str(tmp_path), _tiny_preset_tokens(), ("hf", "prefix", "load", "preset"))


def _tp_runs(rank, world, refs, tmpdir, preset_tokens, parts=ALL):
    for i, ((family, config), ref) in enumerate(refs.items()):
        _engine_checks(rank, world, family, config, ref, tmpdir, preset_tokens if i == 0 else None, parts)


# ------------------------------------------------------------------------------------------------ slot pool


def test_slot_pool_zeroes_on_allocation_and_raises_when_exhausted():
    specs = {"a": StateSpec((2, 3, 4), torch.float32), "b": StateSpec((2, 3, 2), torch.bfloat16)}
    pool = SlotPool(specs, 3, "cpu")
    assert pool.slot_bytes == 2 * 3 * 4 * 4 + 2 * 3 * 2 * 2
    s = pool.allocate(3)
    assert s == [0, 1, 2]
    for t in pool.tensors.values():
        t.fill_(7)
    with pytest.raises(SlotPoolExhausted, match=r"1 slot\(s\) requested, 0 free of 3"):
        pool.allocate(1)
    pool.free([1])
    assert pool.allocate(1) == [1]
    assert all(bool((t[:, 1] == 0).all()) and bool((t[:, 0] == 7).all()) for t in pool.tensors.values())
    with pytest.raises(ValueError, match="slot 5 is not allocated"):
        pool.free([5])
    assert SlotPool.slots_for_budget(specs, 10 * pool.slot_bytes + 1) == 10


@pytest.mark.parametrize("n", [1, 3, 6])  # up to 4 rows: strided copies per row; more: index_select/index_copy_
def test_slot_pool_copies_and_resets_rows(n):
    specs = {"a": StateSpec((2, 3, 4), torch.float32), "b": StateSpec((2, 3), torch.bfloat16)}
    src, dst = SlotPool(specs, 8, "cpu"), SlotPool(specs, 8, "cpu")
    g = torch.Generator().manual_seed(n)
    for t in list(src.tensors.values()) + list(dst.tensors.values()):
        t.copy_(torch.randn(t.shape, generator=g).to(t.dtype))
    want = {k: t.clone() for k, t in dst.tensors.items()}
    rows, from_rows = [7, 0, 3, 5, 1, 2][:n], [2, 6, 0, 1, 4, 3][:n]
    for d, s in zip(rows, from_rows):
        for k in specs:
            want[k][:, d] = src.tensors[k][:, s]
    dst.scatter(rows, src.tensors, from_rows)
    assert all(torch.equal(dst.tensors[k], want[k]) for k in specs)
    back = {k: torch.zeros_like(t) for k, t in src.tensors.items()}
    dst.gather(rows, back, list(range(n)))
    assert all(torch.equal(back[k][:, :n], want[k][:, rows]) and not back[k][:, n:].any() for k in specs)
    dst.reset(rows)
    for k in specs:
        want[k][:, rows] = 0
    assert all(torch.equal(dst.tensors[k], want[k]) for k in specs)
    with pytest.raises(ValueError, match="2 destination rows for 1 source rows"):
        dst.scatter([0, 1], src.tensors, [0])


# ------------------------------------------------------------------------------------------------ prefix cache


def test_prefix_cache_keys_lookup_lru_and_branch_points():
    specs = {"s": StateSpec((1, 2, 2), torch.float32)}
    pool = SlotPool(specs, 2, "cpu")
    cache = PrefixCache(specs, capacity=3, interval=4, vocab_size=5, device="cpu")
    slot = pool.allocate(1)[0]

    def save(tokens, pos, value, logits=None):
        t = as_tokens(tokens)
        pool.tensors["s"][:, slot] = value
        cache.save(pool, [(slot, cache.key_at(t, chain_hashes(t, 4), pos), logits, None)])

    a = list(range(10, 20))
    save(a, 4, 1.0)
    save(a, 6, 2.0, logits=torch.arange(5.0))
    t = as_tokens(a)
    look = cache.lookup(t, chain_hashes(t, 4))
    assert look.pos == 6
    assert cache.restore(look.entry, pool, slot).tolist() == [0, 1, 2, 3, 4]
    assert float(pool.tensors["s"][0, slot, 0, 0]) == 2.0
    # exact-prefix keys: same tokens shifted, or a different first block, do not match
    b = as_tokens([99] + a[1:])
    assert cache.lookup(b, chain_hashes(b, 4)).pos == 0
    # a prompt equal to a cached prefix without logits falls back to a shorter entry
    c = as_tokens(a[:4])
    assert cache.lookup(c, chain_hashes(c, 4)).pos == 0  # position 4 has no logits, nothing shorter
    c6 = as_tokens(a[:6])
    assert cache.lookup(c6, chain_hashes(c6, 4)).pos == 6  # has logits
    # LRU under the capacity of 3: touching keeps an entry, the least recent one goes
    save(a, 8, 3.0)
    cache.lookup(t, chain_hashes(t, 4))  # lookup does not touch; restore does
    cache.restore(cache.lookup(as_tokens(a[:5]), chain_hashes(as_tokens(a[:5]), 4)).entry, pool, slot)  # pos 4
    save(a, 9, 4.0)
    assert len(cache) == 3 and cache.stats.evictions == 1
    assert cache.lookup(t, chain_hashes(t, 4)).pos == 9
    assert cache.lookup(c6, chain_hashes(c6, 4)).pos == 4  # 6 was evicted, 4 survived
    # promises: a pending position is reported as such and not double-booked
    k = cache.key_at(t, chain_hashes(t, 4), 10)
    owner = object()
    assert cache.promise(k, owner) and not cache.promise(k, object())
    look = cache.lookup(t, chain_hashes(t, 4))
    assert (look.pos, look.pending_pos, look.pending_owner) == (9, 10, owner)
    cache.drop_promises(owner)
    assert cache.lookup(t, chain_hashes(t, 4)).pending_pos == 0
    # branch points are token-exact, inside and beyond the first block
    br = BranchIndex(4)
    x = as_tokens(list(range(30)))
    br.add(x, chain_hashes(x, 4), "x")
    w = as_tokens([50, 51])
    br.add(w, chain_hashes(w, 4), "w")  # a later, unrelated prompt does not hide x
    y = as_tokens(list(range(13)) + [99, 98])
    assert br.branch_point(y, chain_hashes(y, 4)) == (13, "x")
    z = as_tokens([0, 1, 7])
    assert br.branch_point(z, chain_hashes(z, 4)) == (2, "x")
    v = as_tokens([9, 1])
    assert br.branch_point(v, chain_hashes(v, 4)) == (0, None)
    u = as_tokens(list(range(8)) + [5])
    assert br.branch_point(u, chain_hashes(u, 4)) == (8, None)  # shares 2 blocks, nobody continues with 5


# ------------------------------------------------------------------------------------------------ sampling


def test_sampling_greedy_topk_topp_seeded_and_distribution():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 50, generator=g)
    n = logits.shape[0]
    args = lambda t, k, p, s, st: (torch.full((n,), t), torch.full((n,), k, dtype=torch.long),  # noqa: E731
                                   torch.full((n,), p), torch.full((n,), s, dtype=torch.long),
                                   torch.full((n,), st, dtype=torch.long))
    greedy = logits.argmax(-1)
    assert torch.equal(sample(logits, *args(0.0, 0, 1.0, 1, 0)), greedy)
    assert torch.equal(sample(logits, *args(1.0, 1, 1.0, 1, 0)), greedy), "top_k=1 must be greedy"
    assert torch.equal(sample(logits, *args(1.0, 0, 1e-6, 1, 0)), greedy), "a tiny top_p must be greedy"
    a = sample(logits, *args(1.0, 0, 1.0, 7, 3))
    assert torch.equal(a, sample(logits, *args(1.0, 0, 1.0, 7, 3))), "same seed and step, same tokens"
    draws = torch.stack([sample(logits, *args(1.0, 0, 1.0, 7, s)) for s in range(40)])
    assert len(set(draws[:, 0].tolist())) > 5, "different steps must give different draws"
    # top_k=3 never leaves the 3 most likely tokens (30 steps at once: rows are independent)
    rows = logits.repeat(30, 1)
    steps = torch.arange(30).repeat_interleave(n)
    one = lambda v, m, dt=torch.float32: torch.full((m,), v, dtype=dt)  # noqa: E731
    t = sample(rows, one(2.0, 30 * n), one(3, 30 * n, torch.long), one(1.0, 30 * n), one(1, 30 * n, torch.long),
               steps)
    assert bool((logits.topk(3, -1).indices.repeat(30, 1) == t[:, None]).any(-1).all())
    # the empirical distribution follows softmax(logits / T): 4000 draws (steps) over 6 tokens
    small = torch.tensor([[0.0, 1.0, 2.0, -1.0, 0.5, 1.5]]).repeat(4000, 1)
    T = 0.8
    tok = sample(small, one(T, 4000), one(0, 4000, torch.long), one(1.0, 4000), one(3, 4000, torch.long),
                 torch.arange(4000))
    freq = torch.bincount(tok, minlength=6).float() / 4000
    p = torch.softmax(small[0] / T, -1)
    assert (freq - p).abs().max() < 0.03, (freq, p)
    # top_p keeps the smallest set reaching p: here the 2 most likely tokens (0.53 + 0.23 >= 0.7)
    pp = torch.tensor([[3.0, 2.2, 1.0, 0.0, -1.0]]).repeat(300, 1)
    kept = set(sample(pp, one(1.0, 300), one(0, 300, torch.long), one(0.7, 300), one(5, 300, torch.long),
                      torch.arange(300)).tolist())
    assert kept == {0, 1}, kept
    u = gumbel_noise(torch.tensor([1, 2]), torch.tensor([0, 0]), 1000)
    assert torch.isfinite(u).all() and not torch.equal(u[0], u[1])


def test_sampling_through_the_engine_is_seeded_and_batch_independent():
    llm = LLM("tiny", progress=False)
    p = [[5, 6, 7], [8, 9, 10, 11]]
    kw = dict(max_new_tokens=12, temperature=1.0, top_k=50, top_p=0.95, ignore_eos=True)
    a = llm.generate(p, seed=3, **kw)
    b = llm.generate(p[::-1], seed=3, **kw)
    assert a[0].token_ids == b[1].token_ids and a[1].token_ids == b[0].token_ids, "batch order changed tokens"
    c = llm.generate(p, seed=4, **kw)
    assert a[0].token_ids != c[0].token_ids
    # any Python int as top_k (past V: no limit) and as seed (its low 64 bits)
    big = llm.generate(p, max_new_tokens=4, temperature=1.0, top_k=10**30, seed=10**40, ignore_eos=True)
    low = llm.generate(p, max_new_tokens=4, temperature=1.0, top_k=0, seed=10**40 % 2**64, ignore_eos=True)
    assert [o.token_ids for o in big] == [o.token_ids for o in low]
    per = llm.generate(p, [SamplingParams(max_new_tokens=5, ignore_eos=True),
                           SamplingParams(max_new_tokens=3, temperature=0.5, seed=1, ignore_eos=True)])
    assert [len(o.token_ids) for o in per] == [5, 3]


# ------------------------------------------------------------------------------------------------ streaming, abort


def test_stream_gives_generates_tokens_and_closing_it_aborts():
    llm = LLM("tiny", progress=False)
    ps = [[5, 6, 7], [8, 9, 10, 11], [12]]
    kw = dict(max_new_tokens=7, temperature=0.7, seed=3, ignore_eos=True)
    ref = llm.generate(ps, **kw)
    got, finished = {}, {}
    for ev in llm.stream(ps, **kw):
        assert not finished.get(ev.index), "an event after the request finished"
        got.setdefault(ev.index, []).extend(ev.new_token_ids)
        if ev.finished:
            finished[ev.index] = ev.output
    assert [got[i] for i in range(3)] == [o.token_ids for o in ref]
    assert [finished[i].token_ids for i in range(3)] == [o.token_ids for o in ref]
    assert [finished[i].index for i in range(3)] == [0, 1, 2]
    # a rejected prompt (errors="return") is one finished event; the others run
    evs = list(llm.stream([[5], []], max_new_tokens=2, errors="return"))
    assert evs[0].index == 1 and evs[0].finished and evs[0].output.finish_reason == "error"
    assert evs[-1].index == 0 and evs[-1].finished
    # breaking out of the stream aborts what still runs: slots free, nothing left queued or reported
    stream = llm.stream(ps, max_new_tokens=50, ignore_eos=True)
    next(stream)
    assert llm.pool.num_used > 0
    stream.close()
    assert not llm.has_unfinished() and llm.pool.num_used == 0 and llm.take_finished() == {}
    assert [o.token_ids for o in llm.generate(ps, **kw)] == [o.token_ids for o in ref], "the engine is unharmed"


def test_abort_queued_running_and_unknown_requests():
    llm = LLM("tiny", num_slots=1, progress=False)
    a = llm.add_request([5, 6], max_new_tokens=30, ignore_eos=True)
    b = llm.add_request([7, 8], max_new_tokens=3, ignore_eos=True)  # waits: one slot
    llm.step()
    llm.step()
    assert llm.abort(a) and not llm.abort(a) and not llm.abort(12345)
    out = llm.take_finished()[a]
    assert out.finish_reason == "abort" and 0 < len(out.token_ids) < 30 and out.ttft_s is not None
    while llm.has_unfinished():  # b takes the freed slot and finishes
        llm.step()
    assert llm.take_finished()[b].finish_reason == "length"
    c = llm.add_request([9], max_new_tokens=3)
    assert llm.abort(c)
    out = llm.take_finished()[c]
    assert out.finish_reason == "abort" and out.token_ids == [] and out.ttft_s is None
    assert llm.pool.num_used == 0


# ------------------------------------------------------------------------------------------------ bad input


@pytest.fixture(scope="module")
def tiny():
    return LLM("tiny", num_slots=2, max_model_len=64, progress=False)


@pytest.mark.parametrize("prompt,kw,match", [
    (list(range(3, 70)), {}, r"prompt of 67 tokens \+ max_new_tokens=16 exceeds max_model_len=64"),
    ([], {}, "prompt is empty"),
    ([5, 512], {}, r"prompt token id 512 is out of range \[0, vocab_size=512\)"),
    ([5, -1], {}, r"prompt token id -1 is out of range"),
    ([5, 1.5], {}, "prompt token ids must be integers"),
    ([5, True], {}, "prompt token ids must be integers, got True"),
    (np.array([5.0, 6.0]), {}, "prompt token ids must be integers"),
    (np.array([5, 512], dtype=np.int32), {}, r"prompt token id 512 is out of range"),
    ([5], {"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1, got 0"),
    ([5], {"max_new_tokens": -3}, "max_new_tokens must be an integer >= 1"),
    ([5], {"temperature": -0.1}, "temperature must be a finite number >= 0"),
    ([5], {"temperature": float("nan")}, "temperature must be a finite number"),
    ([5], {"top_k": -1}, "top_k must be an integer >= 0"),
    ([5], {"top_p": 0.0}, r"top_p must be a number in \(0, 1\]"),
    ([5], {"top_p": 1.5}, r"top_p must be a number in \(0, 1\]"),
    ([5], {"seed": "x"}, "seed must be an integer"),
])
def test_bad_input_is_a_clear_error(tiny, prompt, kw, match):
    with pytest.raises(ValueError, match="prompt 0: " + match):
        tiny.generate([prompt, [5, 6]], **kw)
    assert not tiny.has_unfinished() and tiny.pool.num_used == 0, "a rejected batch left work behind"


def test_prompt_forms_give_the_same_tokens(tiny):
    """A list of ints, numpy integers in a list, an int32 numpy array and a 1-D int tensor are the same prompt."""
    ref = tiny.generate([[7, 8, 9]], max_new_tokens=3, ignore_eos=True)[0].token_ids
    for p in ([np.int64(7), 8, np.int16(9)], np.array([7, 8, 9], dtype=np.int32), torch.tensor([7, 8, 9])):
        out = tiny.generate([p], max_new_tokens=3, ignore_eos=True)[0]
        assert out.token_ids == ref
        assert out.prompt_token_ids == [7, 8, 9] and all(type(t) is int for t in out.prompt_token_ids)
    # the output's prompt ids are the request's own copy: changing the caller's list after submission changes nothing
    p = [7, 8, 9]
    rid = tiny.add_request(p, SamplingParams(max_new_tokens=2, ignore_eos=True))
    p[0] = 1
    while tiny.has_unfinished():
        tiny.step()
    assert tiny.take_finished()[rid].prompt_token_ids == [7, 8, 9]
    # a prompt resumed whole from the prefix cache (no forward) gives the same prompt list as a prefilled one
    a = tiny.generate([[7, 8, 9, 10]], max_new_tokens=1, ignore_eos=True)[0]
    b = tiny.generate([[7, 8, 9, 10]], max_new_tokens=1, ignore_eos=True)[0]
    assert b.cached_tokens == 4 and a.prompt_token_ids == b.prompt_token_ids == [7, 8, 9, 10]
    assert all(type(t) is int for t in a.prompt_token_ids + b.prompt_token_ids)


def test_token_ids_fast_path_matches_the_general_one():
    """_C.token_ids (the C loop for lists / tuples of plain ints) gives the bytes array("q") gives, and None for
    anything else, which the engine then converts or rejects by its general path with the same messages."""
    from array import array

    from ssmtp import _C
    from ssmtp.engine.llm import _int64_ids

    rng = np.random.default_rng(3)
    for seq in ([], [0], [5, -7, 2**63 - 1, -2**63], rng.integers(-2**62, 2**62, 1000).tolist(),
                tuple(rng.integers(0, 50000, 257).tolist())):
        fast = _C.token_ids(seq)
        assert fast is not None and bytes(fast) == array("q", seq).tobytes()
        assert np.array_equal(_int64_ids(seq), np.asarray(seq, dtype=np.int64).reshape(-1))
    for seq in ([1, True], [np.int64(3), 4], [1, 2.0], [2**63], [-2**63 - 1], [1, "2"], np.array([1, 2]),
                type("L", (list,), {})([1, 2])):
        assert _C.token_ids(seq) is None
    assert _int64_ids([np.int64(3), 4]).tolist() == [3, 4]
    assert _int64_ids(type("L", (list,), {})([1, 2])).tolist() == [1, 2]
    for seq, msg in (([1, True], "must be integers, got True"), ([1, 2.0], "got 2.0"), ([2**63], "out of range")):
        with pytest.raises(ValueError, match=msg):
            _int64_ids(seq)


def test_bad_requests_fail_alone_and_the_others_run(tiny):
    good = [7, 8, 9]
    outs = tiny.generate([good, [], [5, 999], good], max_new_tokens=4, ignore_eos=True, errors="return")
    assert [o.finish_reason for o in outs] == ["length", "error", "error", "length"]
    assert "prompt is empty" in outs[1].error and "out of range" in outs[2].error
    assert outs[0].token_ids == outs[3].token_ids and len(outs[0].token_ids) == 4
    with pytest.raises(ValueError, match="max_new_tokens"):
        tiny.add_request([5], max_new_tokens=0)
    # more requests than slots: they queue (no error, no hang)
    many = tiny.generate([[5 + i] for i in range(7)], max_new_tokens=3, ignore_eos=True)
    assert all(len(o.token_ids) == 3 for o in many)


def test_text_prompts_need_a_tokenizer(tiny):
    assert tiny.generate("hi", max_new_tokens=2)[0].prompt_token_ids == [ord("h") + 3, ord("i") + 3]
    model = build("mamba", "hf-tester")
    with pytest.raises(ValueError, match="prompt is text but this model has no tokenizer"):
        LLM(model, progress=False).generate(["hello"])


def test_engine_argument_errors():
    with pytest.raises(ValueError, match="max_batch must be an integer >= 1"):
        LLM("tiny", max_batch=0, progress=False)
    with pytest.raises(ValueError, match="num_slots or state_memory"):
        LLM("tiny", num_slots=2, state_memory=1 << 20, progress=False)
    with pytest.raises(ValueError, match="state_memory=100 holds no sequence"):
        LLM("tiny", state_memory=100, progress=False)
    with pytest.raises(ValueError, match="unknown preset|not a preset"):
        LLM("no-such-model", progress=False)
    with pytest.raises(ValueError, match="not a preset .* hub download failed"):
        LLM("no-such-org/no-such-model", progress=False)  # offline in tests (HF_HUB_OFFLINE=1)
    llm = LLM("tiny", state_memory=10 * 81920 + 5, progress=False)  # 80 KiB per tiny sequence
    assert llm.num_slots == 10


# ------------------------------------------------------------------------------------------------ presets


def test_preset_slices_are_tp_invariant_and_match_the_full_tensor():
    from ssmtp.presets import PresetSource, preset_config

    src = PresetSource("mamba-2.8b")
    get = src.getter("backbone.layers.3.mixer.", torch.float32, "cpu")
    w = get("out_proj.weight")  # (2560, 5120): read column shards only
    half = w[:, 2560:]
    quarter = w[:, 3840:]
    assert tuple(half.shape) == (2560, 2560)
    assert torch.equal(half[:, 1280:], quarter)
    assert torch.equal(get("x_proj.weight")[:, 100:700], get("x_proj.weight")[:, :][:, 100:700])
    a = get("A_log")[10:12]
    assert torch.allclose(a[0], torch.log(torch.arange(1, 17, dtype=torch.float32)))
    assert src.num_params() == pytest.approx(2.77e9, rel=0.01)
    cfg = preset_config("falcon-mamba-7b", hf=True)
    assert cfg.intermediate_size == 8192 and cfg.model_type == "falcon_mamba"


# ------------------------------------------------------------------------------------------------ CLI, bench


def _cli(*args, timeout=120):
    # The same ssmtp this test process imported (the installed package in CI, an in-place build in a checkout),
    # run from a neutral directory as a user would.
    import tempfile

    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(ssmtp.__file__)))
    env = dict(os.environ, PYTHONPATH=pkg_parent, OMP_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as cwd:
        return subprocess.run([sys.executable, "-m", "ssmtp", *args], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=timeout)


def test_cli_default_generate_runs():
    """The README's main command, as a user runs it (a subprocess, the embedded small model on the CPU)."""
    r = _cli("generate", "--max-new-tokens", "6", "--prompt-ids", "5,6,7", "--prompt", "hi")
    assert r.returncode == 0, r.stderr
    assert "[0] ids:" in r.stdout and "[1] text:" in r.stdout and "tok/s" in r.stdout, r.stdout


def test_cli_no_async_decode(capsys, monkeypatch):
    """--no-async-decode turns async decode off even where the environment turns it on; the same tokens either way."""
    from ssmtp.__main__ import main

    monkeypatch.setenv("SSMTP_ASYNC_DECODE", "1")
    seen, init = [], ssmtp.LLM.__init__

    def spy(self, *a, **k):
        init(self, *a, **k)
        seen.append(self.async_decode)

    monkeypatch.setattr(ssmtp.LLM, "__init__", spy)
    got = []
    for extra in ([], ["--no-async-decode"]):
        assert main(["generate", "--max-new-tokens", "6", "--prompt-ids", "5,6,7", "--prompt-ids", "8,9",
                     "--json", "--threads", "1", *extra]) == 0
        lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
        got.append([x["token_ids"] for x in lines])
    assert seen == [True, False], seen
    assert got[0] == got[1] and len(got[0]) == 2 and all(len(t) == 6 for t in got[0]), got


def test_cli_generate_stream(capsys):
    """--stream prints the tokens as they come (in-process: the same main() the CLI runs), then the same summary;
    one prompt inline, several as '[i] +...' lines; the streamed tokens are the summary's."""
    from ssmtp.__main__ import main

    assert main(["generate", "--max-new-tokens", "5", "--prompt-ids", "5,6,7", "--stream", "--threads", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    h = next(k for k, line in enumerate(out) if line.startswith("ssmtp "))  # the header comes first
    i = next(k for k, line in enumerate(out) if line.startswith("[0] prompt: 3 tokens"))
    text = ast.literal_eval(next(line for line in out if line.startswith("[0] text:")).split(":", 1)[1].strip())
    assert "\n".join(out[h + 1:i]) == text, out  # the inline stream, then the summary
    assert main(["generate", "--max-new-tokens", "3", "--prompt-ids", "5,6", "--prompt", "hi", "--stream",
                 "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "[0] +" in out and "[1] +" in out and "[1] text:" in out


def test_ttft_breakdown_says_it_needs_cuda(monkeypatch, capsys):
    """benchmarks/ttft_breakdown.py times the engine's prefill graph: without CUDA it says so and exits 2."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "ttft_breakdown.py")
    spec = importlib.util.spec_from_file_location("ttft_breakdown", path)
    mod = importlib.util.module_from_spec(spec)
    # the script puts the checkout first on sys.path (as run from a checkout); undone after the test, or the ranks
    # that later tests spawn would import the unbuilt source tree instead of the installed package
    monkeypatch.setattr(sys, "path", list(sys.path))
    spec.loader.exec_module(mod)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert mod.main(["--reps", "1"]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err

    # --stamps' wrapper: records (name, entry, return) only while armed, passes results and errors through, and
    # puts the methods back on close
    class Eng:
        def f(self, x):
            return x + 1

        def g(self):
            raise KeyError("g")

    orig = Eng.f
    st = mod._Stamps([(Eng, "f"), (Eng, "g")])
    e = Eng()
    assert e.f(1) == 2 and st.rows == []
    st.armed = True
    assert e.f(2) == 3
    with pytest.raises(KeyError):
        e.g()
    assert [r[0] for r in st.rows] == ["Eng.f", "Eng.g"] and all(a <= b for _, a, b in st.rows)
    st.close()
    assert Eng.f is orig


def test_cli_errors_and_help(capsys):
    from ssmtp.__main__ import main

    assert main(["generate", "--prompt-ids", "5,x"]) == 2
    assert "--prompt-ids must be comma-separated integers" in capsys.readouterr().err
    assert main(["generate", "--prompt-ids", "5", "--top-p", "0"]) == 2
    assert "top_p must be a number in (0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = capsys.readouterr().out
    for opt in ("--model", "--prompt", "--prompt-ids", "--max-new-tokens", "--temperature", "--top-k", "--top-p",
                "--seed", "--dtype"):
        assert opt in out
    assert main(["presets"]) == 0 and "mamba-2.8b" in capsys.readouterr().out


def test_bench_smoke_on_cpu(tmp_path):
    from ssmtp.engine import bench

    assert bench.main(["--model", "tiny", "--device", "cpu", "--dtype", "float32", "--quick", "--decode-batches",
                       "1,2", "--prefill", "1x32", "--ttft-len", "64", "--prefix-interval", "16", "--out",
                       str(tmp_path)]) == 0
    res = json.load(open(tmp_path / "engine-tp1.json"))
    assert res["validation"]["prefix_hit_tokens_equal"] is True
    assert res["validation"]["prefix_hit_cached_tokens"] == res["validation"]["prefix_hit_expected_cached_tokens"]
    assert res["ttft"]["hit_cached_tokens"] == 58 and set(res["decode"]) == {"1", "2"}
    # the summary's same-run HF line: ssmtp's 8x512 prefill over HF's
    res["prefill"]["8x512"] = dict(res["prefill"]["1x32"], tok_s=60000.0)
    res["hf"] = {"prefill_tok_s": 1000.0, "decode_step_ms": 40.0, "prefill_b8_tok_s": 1200.0}
    assert "ssmtp 50.0x (target >= 50x)" in bench._table(res)


def test_bench_commit_label(monkeypatch):
    """Results name the tree that ran: SSMTP_GIT_COMMIT when set, else HEAD (+ "-dirty" when tracked files differ), so a
    copy whose .git does not match its files is not mistaken for a commit."""
    from ssmtp.engine import bench

    monkeypatch.setenv("SSMTP_GIT_COMMIT", "abc1234")
    assert bench._git_commit() == "abc1234"
    monkeypatch.delenv("SSMTP_GIT_COMMIT")
    c = bench._git_commit()
    sha = c.removesuffix("-dirty")
    assert c == "unknown" or (len(sha) == 40 and all(ch in "0123456789abcdef" for ch in sha))


def test_bench_hf_same_run_times_both_prefill_batches():
    """The HF comparison (run on the GPU only by the benchmark) on the CPU with the tiny preset: its keys and sanity."""
    import argparse

    from ssmtp.engine import bench

    llm = LLM("tiny", device="cpu", dtype=torch.float32, progress=False)
    h = bench._hf_same_run(llm, argparse.Namespace(model="tiny"), torch.device("cpu"), torch.float32,
                           torch.Generator().manual_seed(0))
    assert "error" not in h, h
    assert h["prefill_tok_s"] > 0 and h["prefill_b8_tok_s"] > 0 and h["decode_step_ms"] > 0


def test_default_model_is_the_embedded_checkpoint_when_present(tmp_path, monkeypatch):
    """LLM() / `ssmtp generate` use ssmtp/data/tiny-mamba-bytes (a byte-level checkpoint, raw UTF-8 bytes as ids) when
    it exists, and the random "tiny" preset otherwise."""
    from transformers import MambaConfig, MambaForCausalLM

    import ssmtp.presets as presets

    monkeypatch.setattr(presets, "EMBEDDED", str(tmp_path / "missing"))
    assert presets.default_model() == "tiny"
    path = tmp_path / "tiny-mamba-bytes"
    torch.manual_seed(0)
    MambaForCausalLM(MambaConfig(vocab_size=256, hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                                 state_size=8)).save_pretrained(path)
    monkeypatch.setattr(presets, "EMBEDDED", str(path))
    assert presets.default_model() == str(path)
    llm = LLM(progress=False)
    assert llm.source_name == "tiny-mamba-bytes" and llm.vocab_size == 256
    out = llm.generate("hi", max_new_tokens=3, ignore_eos=True)[0]
    assert out.prompt_token_ids == [ord("h"), ord("i")] and len(out.token_ids) == 3 and isinstance(out.text, str)


@pytest.mark.parametrize("family", ["mamba", "zamba", "zamba2"])
def test_runner_from_a_parallelized_model_in_another_dtype_is_refused(family):
    """A runner reuses a parallelized model's mixer shards in place: asked for another dtype than they hold, it raises
    (naming both) instead of mixing dtypes."""
    import ssmtp
    from ssmtp.engine.hybrid import HybridRunner
    from ssmtp.engine.runner import MambaRunner
    from ssmtp.parallel.comm import Communicator
    from tiny_models import build, build_zamba, build_zamba2

    model = {"mamba": lambda: build("mamba", "odd"), "zamba": lambda: build_zamba("hf-tester"),
             "zamba2": lambda: build_zamba2("hf-tester")}[family]()
    ssmtp.parallelize(model)
    cls = MambaRunner if family == "mamba" else HybridRunner
    with pytest.raises(ValueError, match="mixers are torch.float32 on cpu; the engine was asked for torch.bfloat16"):
        cls.from_hf(model, Communicator(), torch.bfloat16, torch.device("cpu"))
    assert cls.from_hf(model, Communicator(), torch.float32, torch.device("cpu")) is not None


def test_rank_shape_presets():
    """"<Mamba preset>@tpN": one TP=N rank's mixers (d_inner / N) as a one-GPU model that loads and generates; other
    families, sizes that do not split and unknown bases are refused or not presets."""
    from ssmtp.presets import preset_config, preset_entry

    assert preset_config("mamba-2.8b@tp2").intermediate_size == 2560
    assert preset_config("falcon-mamba-7b@tp4").intermediate_size == 2048
    assert preset_config("mamba-2.8b@tp2").hidden_size == preset_config("mamba-2.8b").hidden_size
    assert preset_entry("no-such-model@tp2") is None and preset_entry("tiny@2") is None
    with pytest.raises(ValueError, match="Mamba presets only"):
        preset_entry("tiny-zamba@tp2")
    for bad in ("tiny@tp3", "tiny@tp0"):
        with pytest.raises(ValueError, match="does not split"):
            preset_entry(bad)
    llm = LLM("tiny@tp2", progress=False, num_slots=1, prefix_cache=False)
    assert llm.runner.mixers[0].d_local == preset_config("tiny").intermediate_size // 2
    out = llm.generate([[5, 6, 7]], max_new_tokens=4, ignore_eos=True)[0]
    assert len(out.token_ids) == 4


def test_bench_decode_skips_batches_that_do_not_fit(tmp_path, monkeypatch):
    """A decode batch larger than the run's state slots is skipped with its reason (zamba-7b on one H200 holds 49
    slots); the batches that fit are still measured, not lost with it."""
    import ssmtp.engine.llm as llm_mod
    from ssmtp.engine import bench

    real = llm_mod.LLM
    monkeypatch.setattr(llm_mod, "LLM", lambda *a, **k: real(*a, **dict(k, num_slots=2)))
    assert bench.main(["--model", "tiny", "--device", "cpu", "--dtype", "float32", "--quick", "--decode-batches",
                       "1,4", "--prefill", "1x16", "--ttft-len", "32", "--prefix-interval", "16", "--no-hf", "--out",
                       str(tmp_path)]) == 0
    res = json.load(open(tmp_path / "engine-tp1.json"))
    assert set(res["decode"]) == {"1"} and "decode" not in res.get("errors", {})
    assert res["decode_skipped"] == {"4": "4 sequences do not fit in the 2 state slots of this run"}
