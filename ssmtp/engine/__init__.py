"""The ssmtp engine: slot-pool state cache, prefix state cache, chunked prefill, CUDA-graph decode, sampling.

    from ssmtp import LLM, SamplingParams
    llm = LLM("tiny")                                # or a preset / HF directory / hub id / HF model object
    llm.generate([[5, 6, 7]], max_new_tokens=8)

Modules: llm.py (LLM, the scheduler), runner.py (per-family forward passes; Mamba / Falcon-Mamba),
hybrid.py (Zamba / Zamba2: Mamba slots + this rank's attention K/V per slot), state_cache.py (slot pool),
prefix_cache.py (prefix state cache), graphs.py (CUDA-graph decode), sampling.py (SamplingParams, sampler),
bench.py (the engine benchmark behind ``python -m ssmtp bench``).
"""
from .llm import LLM, RequestOutput, StreamOutput  # noqa: F401
from .sampling import SamplingParams  # noqa: F401
from .state_cache import SlotPool, SlotPoolExhausted  # noqa: F401
