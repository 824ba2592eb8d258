"""ssmtp.LLM: the batch generation engine (continuous batching over a slot pool, prefix state cache, CUDA graphs).

    llm = ssmtp.LLM("mamba-2.8b", max_batch=64)               # preset, HF directory, hub id or HF model object
    outs = llm.generate([[1, 2, 3], [4, 5]], max_new_tokens=32, temperature=0.7, top_p=0.9, seed=1)
    outs[0].token_ids, outs[0].cached_tokens, outs[0].finish_reason

Under torchrun every rank constructs the same LLM and calls the same methods with the same arguments; each rank holds
its shard of the model and of every state. Scheduling decisions are made from token ids and request order only, so
all ranks take the same ones; sampled tokens are broadcast from rank 0.

One engine step (``step()``):
  1. admit waiting requests while fewer than max_batch run and slots are free: look up the longest cached prefix,
     copy its states into the new slot (or zero it), plan the prefill chunk boundaries (prefix-cache save points and
     the max_prefill_tokens limit). A request whose shared prefix another running prefill is about to save waits one
     step for it instead of recomputing it.
  2. one prefill chunk for the prefilling requests (right-padded batch, seq_lens, state_idx; every row continues from
     its slot; replayed from a CUDA graph of its (batch, chunk length) bucket where GraphPrefill has one, else
     eager); save states at save points; requests whose prompt is done sample their first token. Runners with
     inner saves (Mamba / Falcon-Mamba) write the states of up to INNER_SAVES save points inside the chunk to spare
     slots in the same forward, so save points do not cut the prefill into K-token chunks; the hybrid runners end a
     chunk at each save point.
  3. one decode step for every decoding request (a CUDA graph of the bucket's batch size, or eager), sample, and
     retire finished requests (their slots are freed and zeroed when handed out again). With async_decode the step
     is launched first and the previous step's tokens are taken while it runs (LLM._decode).
"""
from __future__ import annotations

import logging
import os
import time
from array import array
from dataclasses import dataclass, field, replace
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from .. import _C, ops
from ..parallel.comm import Communicator, get_communicator
from .graphs import INNER_SAVES, GraphDecoder, GraphPrefill, prefill_staged, stage_prefill
from .prefix_cache import BranchIndex, PrefixCache, as_tokens, chain_hashes
from .runner import runner_class
from .sampling import SamplingParams, sample
from .state_cache import SlotPool, bytes_per_slot

log = logging.getLogger("ssmtp")

WAITING, PREFILL, DECODE, DONE = "waiting", "prefill", "decode", "done"
_DEFAULT_MAX_MODEL_LEN = 1 << 17  # SSMs have no positional limit; this bounds a request's host-side work


@dataclass
class RequestOutput:
    """One finished request. finish_reason: "length" (max_new_tokens reached), "stop" (a stop/eos token was
    produced; it is included in token_ids), "abort" (LLM.abort, or a stream closed early: the tokens generated until
    then) or "error" (the request was rejected; ``error`` says why)."""

    index: int
    prompt_token_ids: list
    token_ids: list
    finish_reason: str
    cached_tokens: int = 0  # prompt tokens resumed from the prefix cache instead of prefilled
    text: Optional[str] = None
    error: Optional[str] = None
    ttft_s: Optional[float] = None  # time from submission to the first token
    latency_s: Optional[float] = None
    logits: Optional[list] = None  # per generated token, (V,) fp32 CPU tensors, when asked for


@dataclass
class StreamOutput:
    """One event of LLM.stream: the tokens request ``index`` (its position in the prompts) generated since its
    previous event; the last event of a request has finished=True and its RequestOutput in ``output``."""

    index: int
    request_id: Optional[int]  # None for a prompt rejected before it ran (errors="return")
    new_token_ids: list
    finished: bool = False
    output: Optional[RequestOutput] = None


@dataclass(eq=False)
class _Request:
    id: int
    prompt: np.ndarray
    params: SamplingParams
    seed: int
    stop: frozenset
    want_logits: bool = False
    use_cache: bool = True
    state: str = WAITING
    slot: int = -1
    progress: int = 0  # prompt tokens already in the slot's state
    cached: int = 0
    chains: list = field(default_factory=list)
    save_points: dict = field(default_factory=dict)  # position -> PrefixKey
    out: list = field(default_factory=list)
    logits: list = field(default_factory=list)
    prompt_list: Optional[list] = None  # the prompt as Python ints for its RequestOutput (see _prefill_step)
    t_submit: float = 0.0
    t_first: Optional[float] = None
    finish_reason: Optional[str] = None

    @property
    def length(self) -> int:
        return len(self.prompt)

    def take(self, tok: int) -> bool:
        """Append a generated token; True (finish_reason set) when it ends the request."""
        out = self.out
        out.append(tok)
        if tok in self.stop:
            self.finish_reason = "stop"
        elif len(out) >= self.params.max_new_tokens:
            self.finish_reason = "length"
        else:
            return False
        return True


@dataclass(eq=False)
class _Inflight:
    """A launched decode step whose tokens the host has not taken yet (LLM._decode)."""

    rows: list  # its requests, in batch order
    index: dict  # request -> row
    toks: torch.Tensor  # (n,) int64 on the device, the same on every rank
    host: torch.Tensor  # (n,) their copy on the host (pinned on CUDA), complete once `event` has
    event: Optional["torch.cuda.Event"]
    logits: torch.Tensor  # (n, V): a view of the graph's output buffer, valid until the next replay
    stream: Optional["torch.cuda.Stream"]  # the stream it was launched on (CUDA)
    kept: Optional[tuple] = None  # (rows, their logits copied out before the next step's replay)
    stale: bool = False  # a later replay may have overwritten `logits`


def _merge_ids(ids: torch.Tensor, prev: torch.Tensor, moved: list) -> torch.Tensor:
    """ids with ids[i] = prev[j] for each (i, j) in moved (device-side: no host synchronisation)."""
    dst = torch.tensor([i for i, _ in moved], dtype=torch.int64).to(ids.device, non_blocking=True)
    src = torch.tensor([j for _, j in moved], dtype=torch.int64).to(ids.device, non_blocking=True)
    return ids.index_copy(0, dst, prev.index_select(0, src).to(ids.dtype))


def _int64_ids(seq) -> np.ndarray:
    """A list or tuple of token ids as an int64 array, or ValueError naming the first element that is not an integer
    (a float, a string, a bool). A list of plain ints (what tokenizers return) goes through one C loop (_C.token_ids:
    ~16 us for 8k ids where array("q") took ~110; 0.13-0.2 ms on the GPU machines' hosts); anything else through
    array("q"), which refuses non-integers itself (a per-element Python test cost ~1.7 ms, a set of the element types
    ~0.25 ms more); bools are ints to Python, so the only elements looked at are those that came out as 0 or 1."""
    fast = _C.token_ids(seq)
    if fast is not None:
        return np.frombuffer(fast, dtype=np.int64)
    try:
        arr = np.frombuffer(array("q", seq), dtype=np.int64)
    except OverflowError:
        big = next(t for t in seq if isinstance(t, (int, np.integer)) and not -2**63 <= int(t) < 2**63)
        raise ValueError(f"prompt token id {big} is out of range") from None
    except TypeError:
        arr = None
    if arr is not None and not any(isinstance(seq[i], (bool, np.bool_)) for i in np.flatnonzero(arr <= 1).tolist()):
        return arr
    bad = next(t for t in seq if not isinstance(t, (int, np.integer)) or isinstance(t, (bool, np.bool_)))
    raise ValueError(f"prompt token ids must be integers, got {bad!r}")


def _budget_bytes(value, device: torch.device, what: str) -> int:
    """An int = bytes; a float in (0, 1] = that fraction of the device's free memory now."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} must be bytes (int) or a fraction of free memory in (0, 1], got {value!r}")
    if isinstance(value, float):
        if not 0 < value <= 1:
            raise ValueError(f"{what} as a fraction of free memory must be in (0, 1], got {value}")
        if device.type == "cuda":
            free = torch.cuda.mem_get_info(device)[0]
        else:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return int(free * value)
    if value < 0:
        raise ValueError(f"{what} must be >= 0 bytes, got {value}")
    return int(value)


class LLM:
    """Batch generation with a tensor-parallel SSM (Mamba / Falcon-Mamba) or hybrid (Zamba / Zamba2).

    model               preset name (ssmtp.presets.PRESETS), HF-format directory, hub id, or an HF model object
                        (Mamba / FalconMamba / Zamba / Zamba2 ForCausalLM, plain or already ssmtp.parallelize'd); None =
                        the embedded small model (ssmtp/data/tiny-mamba-bytes when present, else the "tiny" preset)
    group / comm        TP process group (default: the default group, or one process without torch.distributed)
    device, dtype       default: this rank's current CUDA device and bfloat16, else CPU and float32 (an HF model
                        object keeps its own dtype)
    max_batch           most requests running at once (prefill + decode); also the largest decode graph
    num_slots           state slots (default max_batch); or state_memory: bytes, or a fraction of free memory;
                        with a prefix cache of >= 1 entry, Mamba / Falcon-Mamba pools hold INNER_SAVES (16) more,
                        the spare slots prefix-cache states are saved into inside a prefill chunk
    max_model_len       longest prompt + max_new_tokens accepted (SSMs have no positional limit; default 131072).
                        Zamba / Zamba2 (hybrid): also the K/V length preallocated per slot; default the config's
                        max_position_embeddings; without num_slots / state_memory on CUDA, slots = what 60% of free
                        memory holds, at most max_batch
    prefix_cache        keep prefix states (True), with prefix_interval (K) and prefix_cache_memory (bytes or a
                        fraction of free memory; default: 10% of free GPU memory up to 8 GiB, 256 MiB on a CPU),
                        and at most prefix_cache_entries entries
    cache_generated     also save the state at the end of each finished request (multi-turn prompts then hit)
    cuda_graphs         capture decode graphs per batch bucket (default: on for CUDA); graph_batch_sizes
    prefill_graphs      replay prefill chunks from CUDA graphs: one request's chunk (<= 2048 tokens, padded to a
                        bucket of prefill_graph_sizes), or several requests' chunks padded to a (batch, length)
                        bucket of at most 4096 tokens (graphs.PREFILL_GRAPH_*; captured on first use); Zamba /
                        Zamba2 also per bucket of the keys attended: cuts ~40 ms of host time per chunk off TTFT
                        (default: as cuda_graphs, unless SSMTP_PREFILL_GRAPHS=0)
    max_prefill_tokens  padded tokens per prefill step (batch x longest chunk); also the longest chunk
    fused_decode        torch.compile the norm/residual glue (decode and prefill; hybrids: decode and prefills of
                        >= 4096 tokens) into one kernel each (default: on for CUDA unless SSMTP_ENGINE_COMPILE=0;
                        falls back to plain ops, logged, if compiling fails)
    async_decode        launch each decode step before the host has taken the previous step's tokens (they go from
                        the device's output straight into the next step's input), so the GPU does not wait for the
                        host between steps; a request that ends with a stop token then computes one token more,
                        dropped (stats()["steps"]["decode_rows_dropped"]). Default: on for CUDA; env
                        SSMTP_ASYNC_DECODE=0 / 1 turns it off / on
    tokenizer           for text prompts (default: the checkpoint's, or the tiny presets' byte tokenizer)
    seed                engine seed: requests without their own seed get seed*1000003 + request number
    """

    def __init__(self, model=None, *, group: Optional["dist.ProcessGroup"] = None,
                 comm: Optional[Communicator] = None, device=None, dtype: Optional[torch.dtype] = None,
                 max_batch: int = 64, num_slots: Optional[int] = None, state_memory=None,
                 max_model_len: Optional[int] = None, prefix_cache: bool = True, prefix_interval: int = 512,
                 prefix_cache_memory=None, prefix_cache_entries: int = 4096, cache_generated: bool = True,
                 cuda_graphs: Optional[bool] = None, graph_batch_sizes: Optional[Sequence[int]] = None,
                 max_prefill_tokens: Optional[int] = None, fused_decode: Optional[bool] = None,
                 prefill_graphs: Optional[bool] = None, prefill_graph_sizes: Optional[Sequence[int]] = None,
                 async_decode: Optional[bool] = None, tokenizer=None, seed: int = 0, progress: bool = True,
                 check_same_model: bool = True):
        from ..loading import HFModelSource, resolve

        if isinstance(dtype, str):  # "bfloat16" as well as torch.bfloat16
            if dtype not in ("float32", "bfloat16", "float16"):
                raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
            dtype = getattr(torch, dtype)

        for name, v, lo in (("max_batch", max_batch, 1), ("prefix_interval", prefix_interval, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        if num_slots is not None and (isinstance(num_slots, bool) or not isinstance(num_slots, int) or num_slots < 1):
            raise ValueError(f"num_slots must be an integer >= 1, got {num_slots!r}")
        if num_slots is not None and state_memory is not None:
            raise ValueError("give num_slots or state_memory, not both")
        self.comm = comm or get_communicator(group)
        self.tp, self.rank = self.comm.world_size, self.comm.rank
        if model is None:
            from ..presets import default_model

            model = default_model()
        source = resolve(model)
        cls = runner_class(source.family)
        if device is None:
            device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
        self.device = device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            self.device = device = torch.device("cuda", torch.cuda.current_device())
        if isinstance(source, HFModelSource):
            dtype = dtype or next(model.parameters()).dtype
            if check_same_model and self.tp > 1 and not _is_parallelized(model):
                from ..models.registry import _check_same_everywhere

                _check_same_everywhere(model, self.comm)
            self.runner = cls.from_hf(model, self.comm, dtype, device)
            gen = getattr(model, "generation_config", None)
            eos = gen.eos_token_id if gen is not None else model.config.eos_token_id
        else:
            dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
            self.runner = cls.build(source, self.comm, dtype, device, progress=progress)
            eos = source.config.eos_token_id
        self.runner.eval()
        if fused_decode is None:
            fused_decode = device.type == "cuda" and os.environ.get("SSMTP_ENGINE_COMPILE", "1") != "0"
        if hasattr(self.runner, "set_fused"):
            self.runner.set_fused(bool(fused_decode))
        self.source_name = source.name
        self.config = source.config
        self.dtype = dtype
        self.vocab_size = self.runner.vocab_size
        self.tokenizer = tokenizer if tokenizer is not None else source.tokenizer
        self.eos = frozenset([eos] if isinstance(eos, int) else (eos or []))
        self.seed = int(seed)

        hybrid = hasattr(self.runner, "set_max_len")
        if hybrid:  # attention K/V per slot: sized by max_model_len (default: the model's trained context)
            max_model_len = self.runner.set_max_len(int(max_model_len or source.config.max_position_embeddings))
        specs = self.runner.state_specs()
        if num_slots is None:
            if state_memory is None:
                num_slots = max_batch
                if hybrid and device.type == "cuda":  # a K/V slot is large: take what 60% of free memory holds
                    fit = _budget_bytes(0.6, device, "state_memory") // bytes_per_slot(specs)
                    if fit < max_batch:
                        log.info("ssmtp.LLM: %d slots of %.1f MiB (K/V for max_model_len=%d) fit in 60%% of free "
                                 "memory; max_batch %d -> %d", fit, bytes_per_slot(specs) / 2**20, max_model_len,
                                 max_batch, max(1, fit))
                        num_slots = max(1, fit)
            else:
                num_slots = _budget_bytes(state_memory, device, "state_memory") // bytes_per_slot(specs)
                if num_slots < 1:
                    raise ValueError(f"state_memory={state_memory!r} holds no sequence: one needs "
                                     f"{bytes_per_slot(specs) / 2**20:.2f} MiB on this rank")
        self.num_slots = self._agree_min(num_slots)
        self.max_batch = min(max_batch, self.num_slots)
        entry = PrefixCache.entry_bytes(specs, self.vocab_size)
        cap = 0
        if prefix_cache:
            if prefix_cache_memory is None:
                budget = (min(8 << 30, int(0.1 * torch.cuda.mem_get_info(device)[0])) if device.type == "cuda"
                          else 256 << 20)
            else:
                budget = _budget_bytes(prefix_cache_memory, device, "prefix_cache_memory")
            # at most 4096 entries by default: a small model's entries are tiny, and a byte budget alone would then
            # preallocate millions of them
            cap = self._agree_min(min(budget // entry, prefix_cache_entries))
        # spare slots for in-pass saves only when there is a cache to save into
        self.inner_saves = INNER_SAVES if (cap > 0 and getattr(self.runner, "inner_saves", False)) else 0
        self.pool = SlotPool(specs, self.num_slots + self.inner_saves, device)
        self.prefix = PrefixCache(specs, cap, prefix_interval, self.vocab_size, device)
        self.branches = BranchIndex(prefix_interval)
        if cache_generated and prefix_cache and not getattr(self.runner, "decode_state_matches_prefill", True):
            log.info("ssmtp.LLM: cache_generated off for %s: its decode step computes the state differently from its "
                     "prefill (HF's dt clamp), so a cached generated turn would not equal a cold prefill of it",
                     source.family)
            cache_generated = False
        self.cache_generated = cache_generated
        # wait for another running request to save a longer prefix of this prompt when that spares this many tokens:
        # the owner computes those tokens in the same steps this request would, so waiting costs it no extra steps
        self.defer_min_tokens = 1

        self.max_model_len = int(max_model_len or _DEFAULT_MAX_MODEL_LEN)
        if max_prefill_tokens is None:
            max_prefill_tokens = 16384 if device.type == "cuda" else 2048
        if isinstance(max_prefill_tokens, bool) or not isinstance(max_prefill_tokens, int) or max_prefill_tokens < 1:
            raise ValueError(f"max_prefill_tokens must be an integer >= 1, got {max_prefill_tokens!r}")
        self.max_prefill_tokens = max_prefill_tokens

        if cuda_graphs is None:
            cuda_graphs = device.type == "cuda"
        if cuda_graphs and device.type != "cuda":
            raise ValueError("cuda_graphs=True needs a CUDA device")
        self.graphs = GraphDecoder(self.runner, self.pool, self.max_batch, graph_batch_sizes) if cuda_graphs else None
        if prefill_graphs is None:
            prefill_graphs = bool(cuda_graphs) and os.environ.get("SSMTP_PREFILL_GRAPHS", "1") != "0"
        if prefill_graphs and device.type != "cuda":
            raise ValueError("prefill_graphs=True needs a CUDA device")
        self.prefill_graphs = GraphPrefill(self.runner, self.pool, prefill_graph_sizes) if prefill_graphs else None

        self._src = dist.get_global_rank(self.comm.group, 0) if (self.tp > 1 and self.comm.group is not None) else 0
        self._next_id = 0
        self._waiting: list[_Request] = []
        self._running: list[_Request] = []
        self._done: dict[int, RequestOutput] = {}
        self.steps = {"prefill": 0, "decode": 0, "decode_rows_dropped": 0}
        if async_decode is None:  # SSMTP_ASYNC_DECODE=0 / 1: off / on (on a CPU too); unset: on for CUDA
            env = os.environ.get("SSMTP_ASYNC_DECODE", "")
            async_decode = env == "1" or (env != "0" and device.type == "cuda")
        self.async_decode = bool(async_decode)
        self._inflight: Optional[_Inflight] = None
        log.info("ssmtp.LLM: %s %s on %s, tp=%d, %d slots (%.1f MiB each), prefix cache %d entries (K=%d)",
                 source.name, str(dtype).replace("torch.", ""), device, self.tp, self.num_slots,
                 self.pool.slot_bytes / 2**20, cap, prefix_interval)

    # ------------------------------------------------------------------ cross-rank agreement

    def _agree_min(self, value: int) -> int:
        """The minimum of an integer over the TP ranks (sizes derived from free memory can differ per rank)."""
        if self.tp == 1:
            return int(value)
        t = torch.tensor([int(value)], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.comm.group)
        return int(t.item())

    def _agree(self, tokens: torch.Tensor) -> torch.Tensor:
        """Rank 0's sampled tokens on every rank (one small broadcast per step)."""
        if self.tp > 1:
            tokens = tokens.contiguous()
            dist.broadcast(tokens, src=self._src, group=self.comm.group)
        return tokens

    # ------------------------------------------------------------------ requests

    def _params(self, base, i: int, overrides: dict) -> SamplingParams:
        if isinstance(base, (list, tuple)):
            p = base[i]
        else:
            p = base
        if p is None:
            p = SamplingParams()
        if not isinstance(p, SamplingParams):
            raise ValueError(f"sampling_params must be a SamplingParams (or a list of them), got {type(p).__name__}")
        ov = {k: v for k, v in overrides.items() if v is not None}
        return replace(p, **ov).validated() if ov else p.validated()

    def _tokens(self, prompt) -> np.ndarray:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("prompt is text but this model has no tokenizer; pass token ids (a list of ints) "
                                 "or give LLM(tokenizer=...)")
            prompt = self.tokenizer.encode(prompt)
        if isinstance(prompt, torch.Tensor):
            if prompt.dim() != 1 or prompt.dtype.is_floating_point or prompt.dtype == torch.bool:
                raise ValueError(f"prompt must be a 1-D integer tensor, got shape {tuple(prompt.shape)} {prompt.dtype}")
            prompt = prompt.tolist()
        if isinstance(prompt, np.ndarray) and prompt.ndim == 1 and np.issubdtype(prompt.dtype, np.integer):
            arr = as_tokens(prompt)
        else:
            try:
                seq = prompt if isinstance(prompt, (list, tuple)) else list(prompt)
            except TypeError:
                raise ValueError(f"prompt must be a list of token ids or a string, got {type(prompt).__name__}") from None
            arr = _int64_ids(seq)
        if len(arr) == 0:
            raise ValueError("prompt is empty: at least one token is needed")
        bad = arr[(arr < 0) | (arr >= self.vocab_size)]
        if len(bad):
            raise ValueError(f"prompt token id {int(bad[0])} is out of range [0, vocab_size={self.vocab_size})")
        return arr

    def _make_request(self, prompt, params: SamplingParams, want_logits: bool, use_cache: bool = True) -> _Request:
        arr = self._tokens(prompt)
        if len(arr) + params.max_new_tokens > self.max_model_len:
            raise ValueError(f"prompt of {len(arr)} tokens + max_new_tokens={params.max_new_tokens} exceeds "
                             f"max_model_len={self.max_model_len}")
        rid = self._next_id
        self._next_id += 1
        seed = params.seed if params.seed is not None else (self.seed * 1000003 + rid)
        seed = (seed + 2**63) % 2**64 - 2**63  # the noise hashes a seed's low 64 bits: any Python int works
        if params.stop_token_ids is not None:
            stop = frozenset(params.stop_token_ids)
        else:
            stop = frozenset() if params.ignore_eos else self.eos
        return _Request(rid, arr, params, seed, stop, want_logits=want_logits, use_cache=use_cache,
                        t_submit=time.perf_counter())

    def add_request(self, prompt, sampling_params: Optional[SamplingParams] = None, *,
                    return_logits: bool = False, use_prefix_cache: bool = True, **overrides) -> int:
        """Queue one request (continuous batching: it joins the running batch at the next step); returns its id.
        Raises ValueError naming the bad argument; nothing is queued then."""
        params = self._params(sampling_params, 0, overrides)
        r = self._make_request(prompt, params, return_logits, use_prefix_cache)
        self._waiting.append(r)
        return r.id

    def has_unfinished(self) -> bool:
        return bool(self._waiting or self._running)

    def take_finished(self) -> dict:
        out, self._done = self._done, {}
        return out

    def _submit(self, prompts, sampling_params, errors: str, return_logits: bool, use_prefix_cache: bool,
                overrides: dict) -> tuple:
        """Check and queue a batch of prompts: (results with the rejected prompts' outputs filled in, {request id:
        index})."""
        if errors not in ("raise", "return"):
            raise ValueError(f"errors must be 'raise' or 'return', got {errors!r}")
        if isinstance(prompts, str) or (isinstance(prompts, (list, tuple)) and prompts
                                        and all(isinstance(t, (int, np.integer)) for t in prompts)):
            prompts = [prompts]
        if isinstance(prompts, torch.Tensor):
            prompts = [prompts] if prompts.dim() == 1 else list(prompts)
        prompts = list(prompts)
        if isinstance(sampling_params, (list, tuple)) and len(sampling_params) != len(prompts):
            raise ValueError(f"sampling_params has {len(sampling_params)} entries for {len(prompts)} prompts")
        if overrides.get("stop_token_ids") is not None:
            overrides["stop_token_ids"] = tuple(overrides["stop_token_ids"])
        reqs: list = []
        for i, p in enumerate(prompts):
            try:
                params = self._params(sampling_params, i, overrides)
                reqs.append(self._make_request(p, params, return_logits, use_prefix_cache))
            except ValueError as e:
                if errors == "raise":
                    raise ValueError(f"prompt {i}: {e}") from None
                reqs.append(e)
        mine = {r.id: i for i, r in enumerate(reqs) if isinstance(r, _Request)}
        self._waiting.extend(r for r in reqs if isinstance(r, _Request))
        results: list = [None] * len(prompts)
        for i, r in enumerate(reqs):
            if not isinstance(r, _Request):
                pl = prompts[i] if isinstance(prompts[i], (list, tuple)) else []
                results[i] = RequestOutput(i, list(pl), [], "error", error=str(r))
        return results, mine

    def stream(self, prompts, sampling_params=None, *, max_new_tokens: Optional[int] = None,
               temperature: Optional[float] = None, top_k: Optional[int] = None, top_p: Optional[float] = None,
               seed: Optional[int] = None, stop_token_ids=None, ignore_eos: Optional[bool] = None,
               errors: str = "raise", return_logits: bool = False,
               use_prefix_cache: bool = True) -> Iterator[StreamOutput]:
        """generate(), as a generator of StreamOutput events: after each engine step, one event per request that
        produced tokens (new_token_ids), the last with finished=True and the RequestOutput. Same arguments and the
        same tokens as generate(). The prompts are checked and queued when iteration starts. Closing the generator
        early (break) aborts the requests still running. Under tensor parallelism every rank must consume the stream
        the same way (each step is collective)."""
        results, mine = self._submit(prompts, sampling_params, errors, return_logits, use_prefix_cache,
                                     dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                          top_p=top_p, seed=seed, stop_token_ids=stop_token_ids,
                                          ignore_eos=ignore_eos))
        for i, out in enumerate(results):
            if out is not None:  # rejected (errors="return")
                yield StreamOutput(i, None, [], True, out)
        reqs = {r.id: r for r in self._waiting if r.id in mine}
        sent = dict.fromkeys(mine, 0)
        pending = sorted(mine, key=mine.get)
        try:
            while pending:
                self.step()
                left = []
                for rid in pending:
                    out = self._done.pop(rid, None)
                    toks = reqs[rid].out
                    if out is None and len(toks) == sent[rid]:
                        left.append(rid)
                        continue
                    new, sent[rid] = toks[sent[rid]:], len(toks)
                    if out is None:
                        left.append(rid)
                        yield StreamOutput(mine[rid], rid, new)
                    else:
                        out.index = mine[rid]
                        yield StreamOutput(mine[rid], rid, new, True, out)
                pending = left
        finally:
            for rid in pending:  # the caller stopped early
                self.abort(rid)
                self._done.pop(rid, None)

    def abort(self, request_id: int) -> bool:
        """Stop a queued or running request: its slot is freed at once and its RequestOutput (finish_reason "abort",
        the tokens the host has taken so far: a decode step in flight is not waited for) goes to take_finished().
        False if no such request is queued or running. Under tensor parallelism call it on every rank."""
        for queue in (self._waiting, self._running):
            for i, r in enumerate(queue):
                if r.id == request_id:
                    queue.pop(i)
                    r.finish_reason = "abort"
                    self._retire(r)
                    return True
        return False

    def generate(self, prompts, sampling_params=None, *, max_new_tokens: Optional[int] = None,
                 temperature: Optional[float] = None, top_k: Optional[int] = None, top_p: Optional[float] = None,
                 seed: Optional[int] = None, stop_token_ids=None, ignore_eos: Optional[bool] = None,
                 errors: str = "raise", return_logits: bool = False, use_prefix_cache: bool = True,
                 progress: bool = False) -> list:
        """Generate for a batch of prompts (lists of token ids, or strings with a tokenizer); one RequestOutput per
        prompt, in order. Keyword sampling arguments override ``sampling_params`` (one SamplingParams or a list).

        errors="raise": every prompt and parameter is checked first, and the first problem raises ValueError naming
        the prompt and the argument (nothing runs). errors="return": a bad request gets an output with
        finish_reason "error" and the message, and the others run. use_prefix_cache=False: these requests neither
        read nor fill the prefix cache. return_logits: each output carries the logits of every generated token."""
        results, mine = self._submit(prompts, sampling_params, errors, return_logits, use_prefix_cache,
                                     dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                          top_p=top_p, seed=seed, stop_token_ids=stop_token_ids,
                                          ignore_eos=ignore_eos))
        bar = None
        if progress and self.rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(mine), desc="generate", unit="req")
        pending = set(mine)
        while pending:
            self.step()
            for rid in [rid for rid in pending if rid in self._done]:
                out = self._done.pop(rid)
                out.index = mine[rid]
                results[mine[rid]] = out
                pending.discard(rid)
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        return results

    # ------------------------------------------------------------------ the engine step

    def step(self) -> None:
        """One engine step: admit, one prefill chunk, one decode step. Finished requests go to take_finished()."""
        h = self._inflight
        if h is not None and h.event is not None and h.stream != torch.cuda.current_stream(self.device):
            # the caller's stream changed since the step in flight: this step's work (slots handed out again
            # included) waits for it, and its tensors are not reused on the old stream while this one reads them
            cur = torch.cuda.current_stream(self.device)
            cur.wait_event(h.event)
            for t in (h.toks, h.logits, h.kept[1] if h.kept is not None else None):
                if t is not None:
                    t.record_stream(cur)
            h.stream = cur
        self._admit()
        pre = [r for r in self._running if r.state == PREFILL]
        if pre:
            self._prefill_step(pre)
        self._decode()
        self._running = [r for r in self._running if r.state != DONE]

    def _admit(self) -> None:
        i = 0
        while i < len(self._waiting) and len(self._running) < self.max_batch and self.pool.num_free > 0:
            if self._try_admit(self._waiting[i]):
                self._waiting.pop(i)
            else:
                i += 1

    def _try_admit(self, r: _Request) -> bool:
        T, L, K = r.prompt, r.length, self.prefix.interval
        use_cache = self.prefix.enabled and r.use_cache
        d = 0
        if use_cache:
            r.chains = chain_hashes(T, K)
            look = self.prefix.lookup(T, r.chains, count=False)
            d, other = self.branches.branch_point(T, r.chains)
            if (other is not None and other is not r and other.state == PREFILL and look.pos < d
                    and other.progress < d < other.length and self.prefix.capacity > 1):
                # the shared prefix is still being prefilled by `other`: have it save the branch point for us
                key = self.prefix.key_at(other.prompt, other.chains, d)
                if self.prefix.promise(key, other):
                    other.save_points[d] = key
                look = self.prefix.lookup(T, r.chains, count=False)
            owner = look.pending_owner
            if (look.pending_pos >= look.pos + self.defer_min_tokens and owner is not None
                    and getattr(owner, "state", None) == PREFILL):
                return False  # deferred: the next steps save a longer prefix of this prompt
            self.prefix.count(look, L)  # nothing changed the cache since that lookup
            self.branches.add(T, r.chains, r)
        restore = use_cache and look.entry is not None
        r.slot = self.pool.allocate(1, zero=not restore)[0]  # a restored slot is overwritten whole
        r.state = PREFILL
        self._running.append(r)
        logits = None
        if use_cache:
            if restore:
                logits = self.prefix.restore(look.entry, self.pool, r.slot)
            r.progress = r.cached = look.pos
            points = set(range(K * (look.pos // K + 1), L, K)) | {L}
            if look.pos < d < L:
                points.add(d)
            for p in sorted(points):
                if p > look.pos:
                    key = self.prefix.key_at(T, r.chains, p)
                    r.save_points[p] = key
                    self.prefix.promise(key, r)
        if r.progress == L:  # the whole prompt was cached, logits included: no forward needed
            toks = self._sample([r], logits[None].to(self.device))
            self._accept(r, toks[0], logits)
        return True

    def _next_chunk(self, r: _Request, inner: int = 0) -> tuple:
        """r's next chunk: (its length, the save points inside it). It ends at the prompt's end or the
        max_prefill_tokens limit, cut at the first save point past the ``inner`` ones saved inside the chunk."""
        end = min(r.length, r.progress + self.max_prefill_tokens)
        pts = sorted(p for p in r.save_points if r.progress < p < end)
        stop = pts[inner] if len(pts) > inner else end
        return stop - r.progress, pts[:inner]

    def _prefill_step(self, pre: list) -> None:
        sel, segs, inner, lmax = [], [], [], 0
        spare = min(self.inner_saves, self.pool.num_free)  # slots for in-pass saves this step
        for r in pre:
            seg, pts = self._next_chunk(r, spare)
            if sel and (len(sel) + 1) * max(lmax, seg) > self.max_prefill_tokens:
                continue
            sel.append(r)
            segs.append(seg)
            # in-pass saves: (position in the chunk, spare slot (allocated below), key)
            inner.append([(p - r.progress, None, r.save_points[p]) for p in pts])
            lmax = max(lmax, seg)
            spare -= len(pts)
        B = len(sel)
        ends = [i for i, (r, s) in enumerate(zip(sel, segs)) if r.progress + s == r.length]
        tmp = self.pool.allocate(sum(map(len, inner)), zero=False) if any(inner) else []
        it = iter(tmp)
        inner = [[(q, next(it), key) for q, _, key in row] for row in inner]
        # runners with attention: the keys in use after this chunk (no host sync in the forward)
        kv = max(r.progress + s for r, s in zip(sel, segs)) if self.runner.prefill_kv_buckets else None
        # per request: (its chunk's ids, tokens in its slot already, slot, in-pass saves (position, spare slot))
        chunks = [(r.prompt[r.progress:r.progress + s], r.progress, r.slot, [(q, slot) for q, slot, _ in row])
                  for r, s, row in zip(sel, segs, inner)]
        graph = self.prefill_graphs is not None and self.prefill_graphs.shape(B, lmax) is not None
        if graph:
            try:
                logits = self.prefill_graphs.run(chunks, ends, kv)
            except Exception as e:  # a failed capture: say so once and prefill eagerly from now on
                if torch.cuda.is_current_stream_capturing():
                    raise
                log.warning("ssmtp: prefill graph capture failed (%s: %s); prefilling eagerly", type(e).__name__, e)
                self.prefill_graphs = None
                graph = False
        if not graph:
            logits = self._prefill_eager(chunks, lmax, ends, kv)
        self.steps["prefill"] += 1
        row_of = {i: j for j, i in enumerate(ends)}
        saves = []
        for i, (r, s) in enumerate(zip(sel, segs)):
            saves.extend((slot, key, None, r) for _, slot, key in inner[i])
            r.progress += s
            key = r.save_points.get(r.progress)
            if key is not None:
                saves.append((r.slot, key, logits[row_of[i]] if i in row_of else None, r))
        self.prefix.save(self.pool, saves)
        if tmp:
            self.pool.free(tmp)  # stream-ordered after the copies into the cache
        if ends:
            done = [sel[i] for i in ends]
            for r in done:  # requests that end with this token: their outputs' prompt lists, built while the GPU
                if r.params.max_new_tokens == 1:  # computes it (~0.15 ms for 8k ids on a GPU machine's host), not
                    r.prompt_list = r.prompt.tolist()  # after it; longer requests build theirs when they finish
            toks = self._sample(done, logits)
            for j, r in enumerate(done):
                self.prefix.drop_promises(r)
                self._accept(r, toks[j], logits[j])

    def _prefill_eager(self, chunks: list, lmax: int, ends: list, kv_len: Optional[int]):
        """One right-padded prefill forward of the chunks (_prefill_step's), the inputs laid out as a prefill graph's
        (graphs.stage_prefill, no padding rows) and sent in one host-to-device copy (pinned on CUDA)."""
        B, S = len(chunks), max(len(c[3]) for c in chunks)  # S: in-pass saves per row, -1 slots = none
        pin = self.device.type == "cuda"
        st = torch.empty(3 * B + 2 * B * S + B * lmax + len(ends), dtype=torch.int64, pin_memory=pin)
        n = stage_prefill(st.numpy(), B, lmax, S, chunks, ends)
        dev = st.to(self.device, non_blocking=True) if pin else st
        return prefill_staged(self.runner, self.pool, dev, B, lmax, S, dev[n - len(ends):n], kv_len)

    def warmup(self) -> float:
        """Capture every decode and prefill graph now (otherwise each is captured on first use); returns seconds."""
        t = time.perf_counter()
        if self.graphs is not None:
            self.graphs.capture_all()
        if self.prefill_graphs is not None:
            self.prefill_graphs.capture_all()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - t

    def _decode(self) -> None:
        """The decode part of a step. With async_decode, step t+1 is launched before step t's tokens reach the host:
        its rows that were in step t read their input token from step t's device output, so the GPU goes on while
        the host takes step t's tokens (stop tokens, streaming, retiring). A row step t ends by length is left out
        of step t+1; one that step t ends with a stop token has computed one token too many, which is dropped."""
        h = self._inflight
        self._inflight = None
        dec = [r for r in self._running if r.state == DECODE]
        if h is None:
            if dec:
                h = self._launch_decode(dec, None)
                if self.async_decode:
                    self._inflight = h
                else:
                    self._finish_decode(h, None)
            return
        ahead = h.index  # request -> its row in h, whose token the host has not taken yet
        nxt = [r for r in dec if r not in ahead or len(r.out) + 1 < r.params.max_new_tokens]
        try:
            nh = self._launch_decode(nxt, h) if nxt else None
        except BaseException:  # h's tokens are on the device: take them, so that no request loses one
            self._finish_decode(h, None)
            raise
        self._finish_decode(h, nh)
        if nh is not None and any(r.state == DECODE for r in nh.rows):
            self._inflight = nh

    def _launch_decode(self, dec: list, prev: Optional["_Inflight"]) -> "_Inflight":
        """Enqueue one decode step for the rows dec (graph replay or eager forward, sampling, the tokens' copy to the
        host). Rows that were in ``prev`` (a step whose tokens the host has not taken) take its token from the device;
        before the replay overwrites prev's logits, the rows of prev the host still needs them for are copied."""
        ahead = prev.index if prev is not None else {}
        src = [ahead.get(r, -1) for r in dec]  # row of prev holding the input token, -1 = the host has it
        ids = [r.out[-1] if j < 0 else 0 for r, j in zip(dec, src)]
        if prev is not None:
            keep = [i for i, r in enumerate(prev.rows) if r.state == DECODE and (r.want_logits or (
                len(r.out) + 1 >= r.params.max_new_tokens and self._saves_generated(r)))]
            if keep:  # rows needing prev's logits once its tokens are taken; the others then use nh's
                prev.kept = (keep, prev.logits[keep].float())
        slots = [r.slot for r in dec]
        greedy = None
        # hybrid runners attend over the keys in use (the longest row's position + 1), rounded up to a bucket
        kv = {}
        if getattr(self.runner, "kv_buckets", None):
            kv["kv_len"] = self.runner.kv_bucket(max(r.length + len(r.out) + (r in ahead) for r in dec))
        moved = [(i, j) for i, j in enumerate(src) if j >= 0]
        if self.graphs is not None:
            if prev is not None:
                prev.stale = True  # the replay may overwrite prev's logits (the same bucket's output buffer)
            logits, greedy = self.graphs.run(ids, slots, prev=prev.toks if moved else None, moved=moved, **kv)
        else:
            dev = self.device
            ids_t = torch.tensor(ids, dtype=torch.int64).to(dev)
            if moved:
                ids_t = _merge_ids(ids_t, prev.toks, moved)
            pos = torch.tensor([r.length + len(r.out) + (r in ahead) - 1 for r in dec], dtype=torch.int64).to(dev)
            logits = self.runner.decode(ids_t, pos, torch.tensor(slots, dtype=torch.int32).to(dev), self.pool, **kv)
        self.steps["decode"] += 1
        toks = self._sample_dev(dec, logits, greedy, ahead)
        stream = None
        if toks.device.type == "cuda":
            stream = torch.cuda.current_stream(self.device)
            host = torch.empty(toks.shape, dtype=toks.dtype, pin_memory=True)
            host.copy_(toks, non_blocking=True)
            ev = torch.cuda.Event()
            ev.record(stream)
        else:
            host, ev = toks, None
        return _Inflight(dec, {r: i for i, r in enumerate(dec)}, toks, host, ev, logits, stream)

    def _saves_generated(self, r: _Request) -> bool:
        return self.cache_generated and self.prefix.enabled and r.use_cache

    def _finish_decode(self, h: "_Inflight", nh: Optional["_Inflight"]) -> None:
        """Take step h's tokens on the host. nh: the step launched after h (async_decode), None if none is."""
        if h.event is not None:
            h.event.synchronize()
        toks = h.host.tolist()
        kept = dict(zip(h.kept[0], range(len(h.kept[0])))) if h.kept is not None else {}

        def row_logits(i: int) -> Optional[torch.Tensor]:  # h's logits of row i: copied out, or still in place
            if i in kept:
                return h.kept[1][kept[i]]
            return None if h.stale else h.logits[i]

        # _accept for decode rows without a call or a logits view per row (this loop runs between two graph replays)
        finished, want = [], []
        for i, (r, tok) in enumerate(zip(h.rows, toks)):
            if r.state != DECODE:  # ended (stop token) or aborted after h was launched: h's row was not needed
                self.steps["decode_rows_dropped"] += 1
                continue
            if r.want_logits:
                want.append(i)
            if r.take(tok):
                r.state = DONE
                finished.append((r, i))
        if want:  # one device-to-host copy for every row that keeps its logits
            rows = (torch.stack([row_logits(i) for i in want]) if h.stale else h.logits[want]).float().cpu()
            for j, i in enumerate(want):
                h.rows[i].logits.append(rows[j].clone())
        if finished and self.cache_generated and self.prefix.enabled:
            saves = []
            for r, i in finished:
                if not self._saves_generated(r):
                    continue
                j = nh.index.get(r) if nh is not None else None
                if j is None:  # the state covers prompt + out[:-1]; the logits that chose out[-1] belong to it
                    lg = row_logits(i)
                    if lg is None:  # overwritten (a failed launch after the replay): nothing to save
                        continue
                    full = np.concatenate([r.prompt, np.asarray(r.out[:-1], dtype=np.int64)])
                else:  # nh, already enqueued, fed out[-1] too: the state covers prompt + out, nh's logits follow it
                    full = np.concatenate([r.prompt, np.asarray(r.out, dtype=np.int64)])
                    lg = nh.logits[j]
                key = self.prefix.key_at(full, chain_hashes(full, self.prefix.interval), len(full))
                saves.append((r.slot, key, lg, r))
            self.prefix.save(self.pool, saves)
        for r, _ in finished:
            self._retire(r)

    def _sample(self, reqs: list, logits: torch.Tensor, greedy: Optional[torch.Tensor] = None) -> list:
        return self._sample_dev(reqs, logits, greedy, {}).tolist()

    def _sample_dev(self, reqs: list, logits: torch.Tensor, greedy: Optional[torch.Tensor], ahead) -> torch.Tensor:
        """The rows' next tokens on the device (agreed over the TP ranks). ahead: requests with one token not yet
        taken on the host (it counts in their step number)."""
        if all(r.params.greedy for r in reqs):
            toks = greedy if greedy is not None else ops.argmax(logits)
        else:
            # one upload of the rows' settings (pinned, asynchronous: the host does not wait for the decode graph)
            n = len(reqs)
            dev = logits.device
            st = torch.empty(4, n, dtype=torch.int64, pin_memory=dev.type == "cuda")
            st[0] = torch.as_tensor([min(r.params.top_k, 1 << 62) for r in reqs], dtype=torch.int64)  # any int
            st[1] = torch.as_tensor([r.seed for r in reqs], dtype=torch.int64)
            st[2] = torch.as_tensor([len(r.out) + (r in ahead) for r in reqs], dtype=torch.int64)
            f = st[3].view(torch.float32).view(2, n)
            f[0] = torch.as_tensor([r.params.temperature for r in reqs], dtype=torch.float32)
            f[1] = torch.as_tensor([r.params.top_p for r in reqs], dtype=torch.float32)
            d = st.to(dev, non_blocking=True) if dev.type == "cuda" else st
            fd = d[3].view(torch.float32).view(2, n)
            toks = sample(logits, fd[0], d[0], fd[1], d[1], d[2])
        return self._agree(toks)

    def _accept(self, r: _Request, tok: int, logits_row: Optional[torch.Tensor], retire: bool = True) -> None:
        if r.t_first is None:
            r.t_first = time.perf_counter()
        if r.want_logits and logits_row is not None:
            r.logits.append(logits_row.detach().float().cpu().clone())
        if not r.take(int(tok)):
            r.state = DECODE
            return
        r.state = DONE
        if retire:
            self._retire(r)

    def _retire(self, r: _Request) -> None:
        self.prefix.drop_promises(r)
        if r.slot >= 0:
            self.pool.free([r.slot])
            r.slot = -1
        r.state = DONE
        now = time.perf_counter()
        text = None
        if self.tokenizer is not None:
            try:
                text = self.tokenizer.decode(r.out, skip_special_tokens=True)
            except Exception as e:  # a decode failure must not lose the tokens
                text = f"<decode failed: {e}>"
        prompt = r.prompt_list if r.prompt_list is not None else r.prompt.tolist()
        r.prompt_list = None
        self._done[r.id] = RequestOutput(r.id, prompt, list(r.out), r.finish_reason, r.cached, text,
                                         None, None if r.t_first is None else r.t_first - r.t_submit, now - r.t_submit,
                                         r.logits if r.want_logits else None)
        r.logits = []  # the branch index may keep the request object (as a prompt owner) for a while

    # ------------------------------------------------------------------ misc

    def stats(self) -> dict:
        s = self.prefix.stats
        return {"tp": self.tp, "slots": self.num_slots, "slots_used": self.pool.num_used,
                "slot_mib": self.pool.slot_bytes / 2**20, "prefix_entries": len(self.prefix),
                "prefix_capacity": self.prefix.capacity, "prefix_hits": s.hits, "prefix_lookups": s.lookups,
                "prefix_hit_tokens": s.hit_tokens, "prefix_lookup_tokens": s.lookup_tokens,
                "prefix_saves": s.saves, "prefix_evictions": s.evictions, "steps": dict(self.steps),
                "graphs": self.graphs.captured if self.graphs is not None else None,
                "prefill_graphs": self.prefill_graphs.captured if self.prefill_graphs is not None else None}

    def close(self) -> None:
        """Drop the CUDA graphs (before the process group is destroyed: captured collectives pin it)."""
        if self.graphs is not None or self.prefill_graphs is not None:
            import gc

            torch.cuda.synchronize(self.device)
            self._inflight = None
            self.graphs = None
            self.prefill_graphs = None
            gc.collect()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _is_parallelized(model) -> bool:
    from ..models.mamba import TPMambaMixer
    from ..models.zamba import TPZambaMambaMixer
    from ..models.zamba2 import TPZamba2MambaMixer

    return any(isinstance(m, (TPMambaMixer, TPZambaMambaMixer, TPZamba2MambaMixer)) for m in model.modules())
