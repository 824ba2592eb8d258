"""async_decode: each decode step launched before the host takes the previous step's tokens (ssmtp/engine/llm.py).

On CPU the launch is synchronous, but the bookkeeping is the same as on a GPU: which rows take their input token from
the previous step's output, which are left out (ended by length), which compute a token that is dropped (ended by a
stop token), which logits are kept before the next step overwrites them, and what a finished request saves into the
prefix cache. Every check compares the engine with async_decode on against the same engine with it off: tokens,
finish reasons, logits (to fp32 rounding: batches differ in size) and prefix-cache hits. test_engine_gpu.py runs the
same scenario with CUDA graphs, where the moved tokens are device copies into the graph's input buffer.
"""
import pytest
import torch

from distributed import run_ranks
from ssmtp.engine import LLM, SamplingParams
from tiny_models import build, build_zamba, prompts as make_prompts

pytestmark = pytest.mark.usefixtures("one_thread")


def _stop_at(ref: list, k: int) -> tuple:
    """A token of ref whose first occurrence is at index >= k (as a stop-token tuple; () if there is none)."""
    for j in range(k, len(ref)):
        if ref[j] not in ref[:j]:
            return (ref[j],)
    return ()


def _sampled(i: int, n: int = 8, **kw) -> SamplingParams:
    return SamplingParams(max_new_tokens=n, temperature=1.0, seed=7 + i, ignore_eos=True, **kw)


def _params(refs: list) -> list:
    """Per prompt: sampled (seeded as the reference, so it produces the reference's tokens) with a stop token that
    the reference produces at a different step for each prompt, or greedy; different lengths, so that rows leave the
    batch at different steps for both reasons."""
    out = []
    for i, ref in enumerate(refs):
        if i % 2 == 0:
            out.append(_sampled(i, 6 + i % 3, stop_token_ids=_stop_at(ref, 1 + i % 4)))
        else:
            out.append(SamplingParams(max_new_tokens=6 + 2 * (i % 3), ignore_eos=True))
    return out


def scenario(make) -> list:
    """Everything async_decode changes, on engines built by make(async_decode): returns comparable results.

    1. generate(): continuous batching (more prompts than slots), greedy and sampled rows, stop tokens and lengths,
       logits of every token; 2. the same prompts as a stream; 3. requests added while others decode, one aborted
       with a step in flight; 4. prefix cache: a generated turn ended by a stop token and one ended by its length,
       then follow-up prompts that extend them."""
    res = []
    prompts = make_prompts()
    base = make(False)
    refs = [o.token_ids for o in base.generate(prompts, [_sampled(i) for i in range(len(prompts))])]
    params = _params(refs)
    for flag in (False, True):
        llm = make(flag)
        one = []
        outs = llm.generate(prompts, params, return_logits=True)
        one.append([(o.token_ids, o.finish_reason, torch.stack(o.logits)) for o in outs])
        got = {}
        for ev in llm.stream(prompts, params):
            got.setdefault(ev.index, []).extend(ev.new_token_ids)
        one.append([got[i] for i in range(len(prompts))])
        ids = [llm.add_request(prompts[0], params[0]), llm.add_request(prompts[1], max_new_tokens=40,
                                                                       ignore_eos=True)]
        llm.step()
        llm.step()
        ids.append(llm.add_request(prompts[2], params[2]))
        llm.step()
        llm.step()
        assert llm.abort(ids[1])
        ids.append(llm.add_request(prompts[3], params[3]))
        done = {}
        while llm.has_unfinished():
            llm.step()
            done.update(llm.take_finished())
        done.update(llm.take_finished())
        one.append([(done[i].token_ids, done[i].finish_reason) for i in ids])
        one.append(_prefix_turns(llm, prompts, refs))
        assert llm.pool.num_used == 0, "slots leaked"
        res.append(one)
        res.append(dict(llm.steps))
    return res


def _prefix_turns(llm, prompts, refs) -> list:
    """A turn ended by a stop token and one ended by its length; the follow-ups' cached tokens and outputs."""
    p = prompts[2]
    stop = _stop_at(refs[2], 3)
    assert stop, f"no token of {refs[2]} first appears at index >= 3"
    t1 = llm.generate([p], _sampled(2, stop_token_ids=stop))[0]
    t2 = llm.generate([prompts[4]], max_new_tokens=5, ignore_eos=True)[0]
    out = [t1.token_ids, t2.token_ids]
    for follow in (p + t1.token_ids, p + t1.token_ids[:-1], prompts[4] + t2.token_ids[:-1]):
        o = llm.generate([follow], max_new_tokens=4, return_logits=True, ignore_eos=True)[0]
        cold = llm.generate([follow], max_new_tokens=4, return_logits=True, ignore_eos=True,
                            use_prefix_cache=False)[0]
        assert o.token_ids == cold.token_ids, "a resumed generated turn differs from a cold prefill"
        torch.testing.assert_close(torch.stack(o.logits), torch.stack(cold.logits), rtol=1e-4, atol=1e-4)
        out.append((o.token_ids, o.cached_tokens, len(follow)))
    return out


def check(res: list) -> None:
    sync, sync_steps, asy, asy_steps = res
    (gen_s, stream_s, *rest_s), (gen_a, stream_a, *rest_a) = sync, asy
    for i, ((ts, fs, ls), (ta, fa, la)) in enumerate(zip(gen_s, gen_a)):
        assert ta == ts and fa == fs, f"prompt {i}: async {ta} {fa} != sync {ts} {fs}"
        # rows a stop token ended stay one step longer, so batches differ in size: fp32 GEMM rounding may differ
        torch.testing.assert_close(la, ls, rtol=1e-4, atol=1e-4, msg=f"prompt {i}: logits differ")
    assert {f for _, f, _ in gen_s} == {"stop", "length"}, "the scenario should end rows both ways"
    assert stream_a == stream_s == [t for t, _, _ in gen_s]
    for (ta, fa), (ts, fs) in zip(rest_a[0], rest_s[0]):
        assert fa == fs, f"added / aborted requests: {rest_a[0]} != {rest_s[0]}"
        if fa == "abort":  # the step in flight when it was aborted is not waited for: its token is not kept
            assert ta == ts[:len(ta)] and len(ta) >= len(ts) - 1, (ta, ts)
        else:
            assert ta == ts, f"added requests: async {ta} != sync {ts}"
    turns_s, turns_a = rest_s[-1], rest_a[-1]
    assert [t for t, *_ in turns_a] == [t for t, *_ in turns_s]
    t1_follow, t1_short, t2_short = turns_a[2:]
    # ended by a stop token with the next step already launched: the saved state covers the whole turn
    assert t1_follow[1] == t1_follow[2], f"prompt + output: {t1_follow[1]} of {t1_follow[2]} tokens cached"
    assert t1_short[1] < t1_short[2]
    # ended by its length: no step past it, the state covers prompt + output[:-1] as without async_decode
    assert t2_short[1] == t2_short[2] == turns_s[4][1], (t2_short, turns_s[4])
    assert sync_steps["decode_rows_dropped"] == 0 and asy_steps["decode_rows_dropped"] > 0


@pytest.mark.parametrize("family,config", [("mamba", "odd"), ("falcon_mamba", "hf-tester")])
def test_async_decode_equals_sync(family, config):
    model = build(family, config)
    check(scenario(lambda flag: LLM(model, num_slots=4, prefix_interval=8, async_decode=flag, progress=False)))


def test_async_decode_equals_sync_hybrid():
    """Zamba: the K/V length the step attends over counts the token still in flight."""
    model = build_zamba("hf-tester")
    check(scenario(lambda flag: LLM(model, num_slots=4, prefix_interval=8, async_decode=flag, progress=False)))


def _tp(rank, world):
    model = build("mamba", "odd")
    check(scenario(lambda flag: LLM(model, num_slots=3, prefix_interval=8, async_decode=flag, progress=False)))


def test_async_decode_equals_sync_tp2():
    run_ranks(2, _tp)


def test_async_decode_default_and_env(monkeypatch):
    monkeypatch.delenv("SSMTP_ASYNC_DECODE", raising=False)
    assert LLM("tiny", progress=False).async_decode is False  # CPU: nothing to overlap
    assert LLM("tiny", async_decode=True, progress=False).async_decode is True
    monkeypatch.setenv("SSMTP_ASYNC_DECODE", "1")
    assert LLM("tiny", progress=False).async_decode is True
    assert LLM("tiny", async_decode=False, progress=False).async_decode is False


def test_a_failed_launch_loses_no_token(monkeypatch):
    """An error while step t+1 is launched (here the forward raises once) still leaves step t's tokens taken: the
    engine goes on from there and gives the tokens and logits of an engine without async_decode (a lost token would
    feed one input twice: the state, and so the logits, would differ)."""
    model = build("mamba", "odd")
    prompts = make_prompts()[:3]
    kw = dict(max_new_tokens=9, ignore_eos=True, return_logits=True)
    ref = LLM(model, num_slots=4, async_decode=False, progress=False).generate(prompts, **kw)
    llm = LLM(model, num_slots=4, async_decode=True, progress=False)
    real, calls = llm.runner.decode, [0]

    def flaky(*a, **k):
        calls[0] += 1
        if calls[0] == 4:  # the third step launched ahead of its predecessor's tokens
            raise RuntimeError("injected")
        return real(*a, **k)

    monkeypatch.setattr(llm.runner, "decode", flaky)
    ids = [llm.add_request(p, **kw) for p in prompts]
    done, failed = {}, 0
    while llm.has_unfinished():
        try:
            llm.step()
        except RuntimeError as e:
            assert str(e) == "injected"
            failed += 1
        done.update(llm.take_finished())
    assert failed == 1 and calls[0] > 4
    for i, o in zip(ids, ref):
        assert done[i].token_ids == o.token_ids
        torch.testing.assert_close(torch.stack(done[i].logits), torch.stack(o.logits), rtol=1e-5, atol=1e-5)
    assert llm.pool.num_used == 0
