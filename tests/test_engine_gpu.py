"""The engine on CUDA: CUDA-graph decode == eager decode token for token (TP=1; TP=2 over NCCL, graphs capturing the
all-reduces), == HF greedy on the same GPU; prefill chunks replayed from graphs (one request's, several requests')
== eager prefill; padding rows of a graph bucket leave the other slots untouched; a prefix hit == a cold prefill on
the GPU; async decode == sync decode with graphs. Skipped without CUDA (marker `cuda`; `multigpu` needs 2 GPUs)."""
import pytest
import torch

from distributed import run_ranks
from tiny_models import build, close_rel

NEW = 12
LENGTHS = (13, 5, 21, 1, 9)  # 5 requests: graph bucket 8 with 3 padding rows, then smaller buckets as they finish


def _prompts():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(3, 99, (n,), generator=g).tolist() for n in LENGTHS]


def _graph_vs_eager(device, family, config, dtype, hf_check):
    from ssmtp.engine import LLM

    model = build(family, config, dtype).to(device)
    prompts = _prompts()
    # different max_new_tokens make requests finish at different steps: the batch shrinks through the buckets
    kw = dict(max_new_tokens=NEW, return_logits=True)
    g = LLM(model, device=device, cuda_graphs=True, graph_batch_sizes=(1, 2, 4, 8), max_batch=8, progress=False)
    e = LLM(model, device=device, cuda_graphs=False, max_batch=8, progress=False)
    og = g.generate(prompts, **kw)
    oe = e.generate(prompts, **kw)
    assert g.graphs.captured, "no decode graph was captured"
    assert (8, 32) in g.prefill_graphs.captured, "the 5 prompts' prefill (bucket 8 x 32) was not a graph replay"
    rel = 1e-4 if dtype == torch.float32 else 2e-2  # bucket padding changes GEMM shapes -> rounding, not results
    for i, (x, y) in enumerate(zip(og, oe)):
        assert x.token_ids == y.token_ids, f"prompt {i}: graph {x.token_ids} != eager {y.token_ids}"
        close_rel(torch.stack(x.logits), torch.stack(y.logits), rel, f"prompt {i} graph vs eager logits")
    # single requests: prefill chunks replayed from graphs (padded to a bucket) == eager chunks; a long prompt spans
    # several 512-token chunks (prefill_interval 512: checkpoint boundaries)
    assert g.prefill_graphs is not None and e.prefill_graphs is None
    long = torch.randint(3, 99, (1100,), generator=torch.Generator().manual_seed(2)).tolist()
    for i, p in enumerate(prompts[:2] + [long]):
        x = g.generate([p], use_prefix_cache=False, **kw)[0]
        y = e.generate([p], use_prefix_cache=False, **kw)[0]
        assert x.token_ids == y.token_ids, f"single prompt {i}: graph prefill {x.token_ids} != eager {y.token_ids}"
        close_rel(torch.stack(x.logits), torch.stack(y.logits), rel, f"single prompt {i} graph vs eager prefill")
    assert g.prefill_graphs.captured, "no prefill graph was captured"
    # padding rows of a bucket touch no slot: 3 live rows in bucket 4, every other slot keeps its bytes (decode and
    # batched prefill graphs)
    pool = g.pool
    steps = (lambda: g.graphs.run([5, 6, 7], [0, 1, 2]),
             lambda: g.prefill_graphs.run([([5, 6], 0, 0, []), ([7], 0, 1, []), ([8, 9, 10], 0, 2, [])]))
    for step in steps:
        for t in pool.tensors.values():
            t.normal_()
        before = {k: v.clone() for k, v in pool.tensors.items()}
        step()
        torch.cuda.synchronize()
        for k, v in pool.tensors.items():
            for s in range(pool.num_slots):
                assert torch.equal(v[:, s], before[k][:, s]) == (s > 2), f"{k} slot {s}"

    # a prefix hit resumes on the GPU exactly like a cold prefill
    shared = _prompts()[2]
    g.generate([shared + [7] * 9], max_new_tokens=2)
    p = shared + [8] * 30
    hit = g.generate([p], **kw)[0]
    cold = g.generate([p], use_prefix_cache=False, **kw)[0]
    assert hit.cached_tokens >= len(shared), hit.cached_tokens
    assert hit.token_ids == cold.token_ids
    close_rel(torch.stack(hit.logits), torch.stack(cold.logits), rel, "prefix hit vs cold")
    g.close()

    # in-pass prefix saves inside a graph-replayed chunk (K = 64: four save points inside one 300-token chunk, bucket
    # 320) == the eager engine's, and a resume from one of them == a cold prefill
    P = torch.randint(3, 99, (300,), generator=torch.Generator().manual_seed(3)).tolist()
    q = P[:200] + [9] * 20
    hits = []
    for graphs in (True, False):
        eng = LLM(model, device=device, cuda_graphs=graphs, max_batch=2, prefix_interval=64, progress=False)
        eng.generate([P], max_new_tokens=1)
        assert eng.steps["prefill"] == 1, eng.steps
        if graphs:
            assert (1, 320) in eng.prefill_graphs.captured, eng.prefill_graphs.captured
        hits.append(eng.generate([q], **kw)[0])
        cold = eng.generate([q], use_prefix_cache=False, **kw)[0]
        assert hits[-1].cached_tokens == 192, hits[-1].cached_tokens
        assert hits[-1].token_ids == cold.token_ids, f"graphs={graphs}: resume from an in-pass save != cold"
        close_rel(torch.stack(hits[-1].logits), torch.stack(cold.logits), rel, f"graphs={graphs}: in-pass save resume")
        eng.close()
    assert hits[0].token_ids == hits[1].token_ids

    # several requests in one graph-replayed prefill step, not all ending there: a 300-token prompt's chunk ends at its
    # 17th save point (K = 16, 16 in-pass saves) beside a short prompt that ends and one cut at its first save point
    # (no spare slot left): bucket 4 x 320, the ending row's logits picked out of the bucket's == the eager engine's
    P2 = torch.randint(3, 99, (300,), generator=torch.Generator().manual_seed(4)).tolist()
    batch = [P2, prompts[0], prompts[2]]
    outs = []
    for graphs in (True, False):
        eng = LLM(model, device=device, cuda_graphs=graphs, max_batch=4, prefix_interval=16, progress=False)
        outs.append(eng.generate(batch, **kw))
        if graphs:
            assert (4, 320) in eng.prefill_graphs.captured, eng.prefill_graphs.captured
        eng.close()
    for i, (x, y) in enumerate(zip(*outs)):
        assert x.token_ids == y.token_ids, f"batched prompt {i}: graph prefill {x.token_ids} != eager {y.token_ids}"
        close_rel(torch.stack(x.logits), torch.stack(y.logits), rel, f"batched prompt {i} graph vs eager prefill")


@pytest.mark.cuda
@pytest.mark.parametrize("family,config", [("mamba", "odd"), ("falcon_mamba", "hf-tester")])
def test_graph_decode_equals_eager_tp1_fp32(family, config):
    _graph_vs_eager(torch.device("cuda", 0), family, config, torch.float32, hf_check=True)


@pytest.mark.cuda
def test_graph_decode_equals_eager_tp1_bf16_preset():
    from ssmtp.engine import LLM

    dev = torch.device("cuda", 0)
    kw = dict(max_new_tokens=24, ignore_eos=True)
    p = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16, 17]]
    a = LLM("tiny", device=dev, cuda_graphs=True, max_batch=4, progress=False)
    b = LLM("tiny", device=dev, cuda_graphs=False, max_batch=4, progress=False)
    assert a.dtype == torch.bfloat16
    assert [o.token_ids for o in a.generate(p, **kw)] == [o.token_ids for o in b.generate(p, **kw)]
    a.close()


@pytest.mark.cuda
def test_sampled_stream_and_abort_with_graphs():
    """Random sampling through the CUDA-graph engine (the ssmtp::sample kernel after each graph replay): the same
    tokens as the eager engine (the sampler sees the same logits up to rounding of the padded bucket's GEMMs, so this
    runs in fp32), streamed events add up to generate()'s tokens, and an abort mid-decode frees the slot."""
    from ssmtp.engine import LLM

    dev = torch.device("cuda", 0)
    kw = dict(max_new_tokens=20, ignore_eos=True, temperature=0.9, top_k=40, top_p=0.9, seed=11)
    p = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16, 17]]
    a = LLM("tiny", device=dev, dtype=torch.float32, cuda_graphs=True, max_batch=4, progress=False)
    b = LLM("tiny", device=dev, dtype=torch.float32, cuda_graphs=False, max_batch=4, progress=False)
    ref = [o.token_ids for o in a.generate(p, **kw)]
    assert ref == [o.token_ids for o in b.generate(p, **kw)]
    got = {}
    for ev in a.stream(p, **kw):
        got.setdefault(ev.index, []).extend(ev.new_token_ids)
    assert [got[i] for i in range(len(p))] == ref
    rid = a.add_request(p[0], max_new_tokens=200, ignore_eos=True)
    for _ in range(3):
        a.step()
    assert a.abort(rid) and a.pool.num_used == 0
    assert a.take_finished()[rid].finish_reason == "abort"
    a.close()


def _tp2(rank, world):
    dev = torch.device("cuda", rank)
    _graph_vs_eager(dev, "mamba", "odd", torch.float32, hf_check=True)
    _graph_vs_eager(dev, "falcon_mamba", "hf-tester", torch.float32, hf_check=False)
    torch.cuda.synchronize()


@pytest.mark.cuda
@pytest.mark.multigpu
def test_graph_decode_equals_eager_tp2_nccl():
    run_ranks(2, _tp2, backend="nccl", timeout=300)


@pytest.mark.cuda
@pytest.mark.parametrize("family", ["mamba", "zamba"])
def test_async_decode_equals_sync_with_graphs(family):
    """async_decode with CUDA graphs: the moved rows' tokens are device copies into the graph's input buffer (one
    copy for a leading run, index lists otherwise), the kept logits are copied before the next replay overwrites
    them; tokens, finish reasons, logits and prefix-cache hits as with async_decode off (tests/test_engine_async.py)."""
    from ssmtp.engine import LLM
    from test_engine_async import check, scenario
    from tiny_models import build_zamba

    dev = torch.device("cuda", 0)
    model = (build("mamba", "odd") if family == "mamba" else build_zamba("hf-tester")).to(dev)
    check(scenario(lambda flag: LLM(model, device=dev, num_slots=4, max_batch=4, prefix_interval=8,
                                    cuda_graphs=True, graph_batch_sizes=(1, 2, 4), async_decode=flag,
                                    progress=False)))


@pytest.mark.cuda
def test_async_decode_across_streams():
    """Steps run under different CUDA streams (a caller's stream context changing between steps): the step launched
    on the new stream waits for the previous one's tokens; the same tokens as without async_decode."""
    from ssmtp.engine import LLM

    dev = torch.device("cuda", 0)
    model = build("mamba", "odd").to(dev)
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
    kw = dict(max_new_tokens=24, temperature=0.9, seed=3, ignore_eos=True)
    ref = [o.token_ids for o in LLM(model, device=dev, max_batch=4, async_decode=False,
                                    progress=False).generate(prompts, **kw)]
    llm = LLM(model, device=dev, max_batch=4, async_decode=True, progress=False)
    ids = [llm.add_request(p, **kw) for p in prompts]
    streams = [torch.cuda.Stream(dev), torch.cuda.Stream(dev), torch.cuda.current_stream(dev)]
    done, i = {}, 0
    while llm.has_unfinished():
        with torch.cuda.stream(streams[i % 3]):
            llm.step()
        i += 1
        done.update(llm.take_finished())
    torch.cuda.synchronize()
    assert [done[r].token_ids for r in ids] == ref
    llm.close()
