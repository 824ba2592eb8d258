"""CUDA-graph decode: one graph per batch-size bucket, replayed for every decode step.

Each graph runs the whole decode step of ``runner.decode`` - embeddings, every layer's in_proj, conv step, x_proj +
all-reduce, SSM state update, out_proj + all-reduce, the final norm and lm_head - from static buffers:
    inputs   (4 max_bs,) int32 device buffer: a bucket of bs rows reads its bs token ids from [0, bs) and their slot
             indices (-1 = padding row) from [bs, 2 bs), both in the dtype the kernels take (no conversion kernel);
             past 2 bs, run()'s index lists for rows whose ids come from an earlier step's device output
    outputs  logits (bs, V) fp32, and their greedy tokens (bs,) int64 (ops.argmax; greedy rows need nothing else)
Per step at most one host-to-device copy of the inputs (from pinned memory) and, with async decode (the engine),
one device copy of the previous step's tokens into the ids (then no host copy at all when the rows and their slots
are unchanged), one replay, no Python per layer. The
slot pool's tensors have fixed addresses, so the graphs read and write the states in place; padding rows (slot -1)
leave every slot untouched, which is also what makes warm-up safe: it runs with all rows as padding.

All-reduces are captured inside the graphs (torch.distributed NCCL collectives and the communicator's own backends
are capturable). Every rank captures the same buckets in the same order (decided from the batch size alone), so the
collectives line up. Graphs share one memory pool; the larger buckets are captured first when pre-capturing.

GraphPrefill does the same for prefill chunks (time to first token): for one request one graph per chunk-length bucket
(16 ... 2048 tokens), the chunk right-padded to its bucket and masked by seq_lens (the ops ignore positions past it);
for several requests prefilled in one step, one graph per (batch bucket, chunk-length bucket) of at most
PREFILL_GRAPH_MAX_TOKENS padded tokens, the batch padded with rows of slot -1.
Eager, one prefill forward of mamba-2.8b costs ~40 ms of host time (Python + op dispatch for 64 layers, measured on
the H200 machine: B=1 L=512 took 44 ms for ~10 ms of GPU work), which would make every prefix-cache checkpoint
boundary, and every short resumed prefill, cost 40 ms; replayed, a chunk costs its GPU time.

Staging: per-call host tensors come from torch's pinned caching allocator (torch.empty(..., pin_memory=True)), which
does not hand a block out again before the asynchronous copy that read it has completed. (Measured against one
persistent pinned buffer filled through numpy and copied by a one-node graph behind an event: no faster for a
prefix hit, slower per decode step; benchmarks/results/graph-staging-h200-not-kept.json.)
"""
from __future__ import annotations

import bisect
import logging
import os
from typing import Optional, Sequence

import torch

from .. import ops
from .state_cache import SlotPool

log = logging.getLogger("ssmtp")

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def buckets_for(max_batch: int, sizes: Optional[Sequence[int]] = None) -> list[int]:
    sizes = sorted({int(s) for s in (sizes or DEFAULT_BUCKETS) if 0 < int(s) <= max_batch})
    if not sizes or sizes[-1] < max_batch:
        sizes.append(max_batch)
    return sizes


class GraphDecoder:
    def __init__(self, runner, pool: SlotPool, max_batch: int, sizes: Optional[Sequence[int]] = None):
        if pool.device.type != "cuda":
            raise ValueError("CUDA graphs need the model and the slot pool on a CUDA device")
        self.runner = runner
        self.pool = pool
        self.device = pool.device
        self.sizes = buckets_for(max_batch, sizes)
        self.max_bs = self.sizes[-1]
        # [ids, slots] of the replayed bucket, then room for the index lists of run()'s moved rows
        self._inputs = torch.zeros(4 * self.max_bs, dtype=torch.int32, device=self.device)
        self._staged = None  # (bucket, rows, slots) the input buffer holds from run()'s last host copy
        self._graphs: dict[int, tuple] = {}  # bs -> (graph, logits, argmax)
        # hybrid runners (K/V per slot): graphs also per key-length bucket T, attending over T keys, not max_model_len;
        # _graphs holds the full-length ones (captured up front), _graphs_kv[(bs, T)] the shorter ones (on first use)
        self.kv_buckets = list(getattr(runner, "kv_buckets", None) or [])
        self._graphs_kv: dict[tuple, tuple] = {}
        self._mempool = torch.cuda.graph_pool_handle()

    def bucket(self, n: int) -> int:
        i = bisect.bisect_left(self.sizes, n)
        if i == len(self.sizes):
            raise ValueError(f"decode batch of {n} exceeds the largest captured bucket {self.max_bs}")
        return self.sizes[i]

    @property
    def captured(self) -> list[int]:
        return sorted(self._graphs)

    @property
    def captured_kv(self) -> list[tuple]:
        return sorted(self._graphs_kv)

    def _body(self, bs: int, kv_len: Optional[int] = None):
        ids, idx = self._inputs[:bs], self._inputs[bs:2 * bs]
        pos = torch.zeros_like(ids)  # Mamba ignores positions; a hybrid runner takes them from its own buffers
        if kv_len is None:
            logits = self.runner.decode(ids, pos, idx, self.pool)
        else:
            logits = self.runner.decode(ids, pos, idx, self.pool, kv_len=kv_len)
        return logits, ops.argmax(logits)

    def kv_bucket(self, kv_len: Optional[int]) -> Optional[int]:
        """The key-length bucket for a step whose longest row needs kv_len keys (None: the full-length graph)."""
        if kv_len is None or not self.kv_buckets:
            return None
        i = bisect.bisect_left(self.kv_buckets, kv_len)
        return None if i >= len(self.kv_buckets) - 1 else self.kv_buckets[i]

    @torch.no_grad()
    def capture(self, bs: int, kv_len: Optional[int] = None) -> None:
        if (bs in self._graphs) if kv_len is None else ((bs, kv_len) in self._graphs_kv):
            return
        self._staged = None
        self._inputs[:bs].zero_()
        self._inputs[bs:2 * bs].fill_(-1)  # warm-up rows are padding: no slot is touched
        s = torch.cuda.Stream(self.device)
        s.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(s):
            for _ in range(2):
                self._body(bs, kv_len)
        torch.cuda.current_stream(self.device).wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=self._mempool):
            logits, greedy = self._body(bs, kv_len)
        if kv_len is None:
            self._graphs[bs] = (g, logits, greedy)
            log.info("ssmtp: captured the decode graph for batch %d", bs)
        else:
            self._graphs_kv[(bs, kv_len)] = (g, logits, greedy)
            log.info("ssmtp: captured the decode graph for batch %d over %d keys", bs, kv_len)

    def capture_all(self, progress: bool = False) -> None:
        sizes = sorted(self.sizes, reverse=True)
        if progress:
            try:
                from tqdm.auto import tqdm

                sizes = tqdm(sizes, desc="capturing decode graphs", unit="graph")
            except ImportError:  # pragma: no cover
                pass
        for bs in sizes:
            self.capture(bs)

    def run(self, ids: Sequence[int], slots: Sequence[int], kv_len: Optional[int] = None,
            prev: Optional[torch.Tensor] = None, moved: Sequence = ()):
        """Decode one token for each of n rows; returns (logits (n, V) fp32, greedy tokens (n,) int64) - views of the
        graph's output buffers, valid until the next run. kv_len (hybrid runners): keys the longest row attends
        (its position + 1); the graph of the smallest key-length bucket holding it is replayed. prev, moved: the
        input token of row i is prev[j] (a device tensor: an earlier step's tokens) for each (i, j) in moved."""
        n = len(ids)
        bs = self.bucket(n)
        T = self.kv_bucket(kv_len)
        if T is None and bs not in self._graphs:
            self.capture(bs)
        if T is not None and (bs, T) not in self._graphs_kv:
            self.capture(bs, T)
        # the rows moved over from prev: a leading run in order (the usual case: one copy), else index lists
        k = len(moved)
        run = prev is not None and all(i == j == q for q, (i, j) in enumerate(moved))
        m = 0 if run or prev is None else k
        staged = (bs, n, tuple(slots))
        if not (run and k == n and self._staged == staged):  # else: every id comes from prev, the slots are in place
            st = torch.empty(2 * bs + 2 * m, dtype=torch.int32, pin_memory=True)
            a = st.numpy()  # through numpy: the decode wall per token 17-30 us shorter than with torch indexing
            # (H200, benchmarks/results/graph-input-fill-h200.json)
            a[:n] = ids
            a[n:bs] = 0
            a[bs:bs + n] = slots
            a[bs + n:2 * bs] = -1
            if m:
                a[2 * bs:2 * bs + m] = [i for i, _ in moved]
                a[2 * bs + m:] = [j for _, j in moved]
            self._inputs[:2 * bs + 2 * m].copy_(st, non_blocking=True)
            self._staged = staged
        if prev is not None and k:
            if run:
                self._inputs[:k].copy_(prev[:k])
            else:
                dst, src = self._inputs[2 * bs:2 * bs + m].long(), self._inputs[2 * bs + m:2 * bs + 2 * m].long()
                self._inputs.index_copy_(0, dst, prev.index_select(0, src).to(torch.int32))
        g, logits, greedy = self._graphs[bs] if T is None else self._graphs_kv[(bs, T)]
        g.replay()
        return logits[:n], greedy[:n]

    def replay(self, bs: int, kv_len: Optional[int] = None) -> None:
        """Replay a captured bucket (and key-length bucket, hybrid runners) on whatever its input buffer holds
        (benchmarks)."""
        (self._graphs[bs] if kv_len is None else self._graphs_kv[(bs, kv_len)])[0].replay()

    def set_inputs(self, ids: Sequence[int], slots: Sequence[int]) -> int:
        """Fill the input buffers for a batch (benchmarks); returns the bucket."""
        n = len(ids)
        bs = self.bucket(n)
        self._staged = None
        self._inputs[:bs] = 0
        self._inputs[bs:2 * bs] = -1
        self._inputs[:n] = torch.as_tensor(ids, dtype=torch.int32, device=self.device)
        self._inputs[bs:bs + n] = torch.as_tensor(slots, dtype=torch.int32, device=self.device)
        return bs


# Measured and not kept (H200, 2026-11-24, benchmarks/results/prefill-graph-split-h200-not-kept.json): each bucket as
# two graphs (the first 4 layers, then the rest) so that the GPU starts while the host launches the larger one; the
# prefix hit's time did not change.
# 128-token steps above 512: 64-token steps measured slower on H200 (TTFT of a resumed 819-token prefill: 17.5 ms
# padded to 896, 19.3-21.0 ms padded to 832; profiled, the projections' GEMMs at M = 832 took as long as at 1024)
# 256-token steps above 1024, up to 2048: a one-request chunk up to there is host-bound eager (~25 ms of mamba-2.8b
# kernels at 2048 tokens against ~35-45 ms of host time), so a replay wins even when padded by a quarter.
DEFAULT_PREFILL_BUCKETS = (16, 32, 64, 128, 192, 256, 320, 384, 448, 512, 640, 768, 896, 1024, 1280, 1536, 1792, 2048)
# prefix-cache save points one prefill chunk saves in-pass (each into a spare slot, copied to the cache after the
# forward; ssmtp/engine/llm.py); the slot pool holds this many slots beyond num_slots for it when the prefix cache is
# on. A prompt with more save points inside one chunk ends the chunk at the first one past these.
INNER_SAVES = 16


# Batch buckets of the multi-request prefill graphs (rows padded with slot -1, which touch no slot), and the most
# padded tokens (batch bucket x chunk bucket) one of them takes. Below ~2k tokens an eager prefill forward is
# host-bound (~35-45 ms of Python and op dispatch for mamba-2.8b's 64 layers against ~24 ms of kernels at 4x512, H200,
# benchmarks/results/hostprof-eager-prefill-h200-8d61016.txt), so a replay wins even when the bucket pads the work up
# to twice; up to PREFILL_GRAPH_MAX_TOKENS (env SSMTP_PREFILL_GRAPH_TOKENS; 0: one request's chunks only) a replay is
# taken when the bucket pads by at most PREFILL_GRAPH_PAD.
DEFAULT_PREFILL_BATCHES = (1, 2, 4, 8, 16, 32, 64)
PREFILL_GRAPH_HOST_BOUND_TOKENS = 2048
PREFILL_GRAPH_PAD = 1.1


def _env_graph_tokens() -> int:
    v = os.environ.get("SSMTP_PREFILL_GRAPH_TOKENS", "4096")
    if not v.isdigit():
        raise ValueError(f"SSMTP_PREFILL_GRAPH_TOKENS={v!r}: expected a number of tokens (0: no multi-request prefill "
                         "graphs; default 4096)")
    return int(v)


PREFILL_GRAPH_MAX_TOKENS = _env_graph_tokens()


def stage_prefill(a, B: int, L: int, S: int, chunks: Sequence, ends: Sequence[int] = ()) -> int:
    """Fill the int64 array ``a`` with the inputs of a prefill forward (a graph's, or LLM's eager one) of B rows of L
    tokens and S in-pass saves per row: [valid lengths (B), start positions (B), slots (B), save positions (B, S),
    save slots (B, S), ids (B, L), rows whose logits are wanted (len(ends))]. chunks: up to B (tokens, start, slot,
    saves) with saves up to S (position in the chunk, spare slot); rows past them are padding (1 token, slot -1, no
    saves). Returns the number of elements written."""
    n = len(chunks)
    o = 3 * B + 2 * B * S
    a[0:B], a[B:2 * B], a[2 * B:3 * B] = 1, 0, -1  # padding rows: one token, no slot
    sv = a[3 * B:o].reshape(2, B, S) if S else None
    if S:
        sv[0], sv[1] = 0, -1
    ids = a[o:o + B * L].reshape(B, L)
    ids[:] = 0
    for i, (tokens, start, slot, saves) in enumerate(chunks):
        a[i], a[B + i], a[2 * B + i] = len(tokens), start, slot
        ids[i, :len(tokens)] = tokens
        for j, (q, s) in enumerate(saves):
            sv[0, i, j], sv[1, i, j] = q, s
    e = o + B * L
    a[e:e + len(ends)] = ends
    return e + len(ends)


def prefill_staged(runner, pool: SlotPool, buf: torch.Tensor, B: int, L: int, S: int, rows: torch.Tensor,
                   kv_len: Optional[int] = None):
    """runner.prefill on the inputs stage_prefill(B, L, S) put in the int64 tensor buf (on the pool's device), the
    logits of ``rows`` (every row, in a graph); kv_len: the keys attended (runners with attention). What a prefill
    graph runs, and LLM's eager prefill."""
    o = 3 * B + 2 * B * S
    ids = buf[o:o + B * L].view(B, L)
    seq_lens = buf[0:B].to(torch.int32)
    idx = buf[2 * B:3 * B].to(torch.int32)
    saves = buf[3 * B:o].view(2, B, S).to(torch.int32).unbind(0) if S else None
    return runner.prefill(ids, seq_lens, buf[B:2 * B], idx, pool, rows, saves, kv_len)


def prefill_graph_shape(batches: Sequence[int], sizes: Sequence[int], max_tokens: int, B: int,
                        lmax: int) -> Optional[tuple]:
    """The prefill graph (batch bucket, chunk bucket), from the sorted batches and sizes, that takes B chunks of at
    most lmax tokens; None where an eager forward is the better choice (see PREFILL_GRAPH_*) or no bucket holds
    them. One chunk: any chunk bucket."""
    i = bisect.bisect_left(batches, B)
    j = bisect.bisect_left(sizes, lmax)
    if B < 1 or i == len(batches) or j == len(sizes):
        return None
    Bb, L = batches[i], sizes[j]
    padded = Bb * L
    if Bb == 1 or padded <= min(PREFILL_GRAPH_HOST_BOUND_TOKENS, max_tokens):
        return (Bb, L)
    if padded <= max_tokens and padded <= PREFILL_GRAPH_PAD * B * lmax:
        return (Bb, L)
    return None


class GraphPrefill:
    """CUDA graphs of runner.prefill for prefill chunks, per (batch bucket, chunk-length bucket) (see the module
    docstring and PREFILL_GRAPH_* above): one request's chunk of up to max_len tokens, or several requests' chunks
    right-padded to the longest one's bucket, the batch padded with rows of slot -1.

    One static int64 input buffer (stage_prefill's layout for the bucket; S = INNER_SAVES when the runner has inner
    saves, else 0), filled by one host-to-device copy per chunk; the output is the logits (B, V) fp32 of every row's
    last valid position (one lm_head row each). Graphs of one request are captured by capture_all() (warm-up), the
    batched ones on first use."""

    def __init__(self, runner, pool: SlotPool, sizes: Optional[Sequence[int]] = None,
                 batches: Optional[Sequence[int]] = None, max_tokens: int = PREFILL_GRAPH_MAX_TOKENS):
        if pool.device.type != "cuda":
            raise ValueError("CUDA graphs need the model and the slot pool on a CUDA device")
        self.runner = runner
        self.pool = pool
        self.device = pool.device
        self.sizes = sorted({int(s) for s in (sizes or DEFAULT_PREFILL_BUCKETS) if int(s) > 0})
        self.max_len = self.sizes[-1]
        self.max_tokens = int(max_tokens)
        bs = {int(b) for b in (DEFAULT_PREFILL_BATCHES if batches is None else batches) if int(b) > 0}
        self.batches = sorted(b for b in bs | {1} if b == 1 or b * self.sizes[0] <= self.max_tokens)
        self.S = INNER_SAVES if getattr(runner, "inner_saves", False) else 0
        # the largest staged input: the header, the ids and the ends rows of a bucket
        most = max(b * (4 + 2 * self.S + self._longest(b)) for b in self.batches)
        self._buf = torch.zeros(most, dtype=torch.int64, device=self.device)
        self._rows: dict[int, torch.Tensor] = {}  # batch bucket -> arange(B) (the logits rows)
        # runners with attention: one graph per bucket of the keys attended too (runner.prefill_kv_buckets)
        self.kv_buckets = sorted(int(t) for t in runner.prefill_kv_buckets)
        self._graphs: dict[tuple, tuple] = {}  # (B, L) or (B, L, keys) -> (graph, logits)
        self._mempool = torch.cuda.graph_pool_handle()

    def _longest(self, B: int) -> int:
        """The longest chunk bucket of a B-row graph."""
        if B == 1:
            return self.max_len
        fit = [s for s in self.sizes if B * s <= self.max_tokens]
        return fit[-1] if fit else 0

    def bucket(self, n: int) -> Optional[int]:
        i = bisect.bisect_left(self.sizes, n)
        return self.sizes[i] if i < len(self.sizes) else None

    def shape(self, B: int, lmax: int) -> Optional[tuple]:
        """The graph (batch bucket, chunk bucket) that takes B chunks of at most lmax tokens (prefill_graph_shape)."""
        return prefill_graph_shape(self.batches, self.sizes, self.max_tokens, B, lmax)

    def kv_bucket(self, kv_len: Optional[int]) -> Optional[int]:
        """The key-length bucket holding kv_len keys (None for runners without attention)."""
        if not self.kv_buckets:
            return None
        if kv_len is None:
            raise ValueError("this runner's prefill graphs need kv_len (the keys in use after the chunk)")
        i = bisect.bisect_left(self.kv_buckets, kv_len)
        return self.kv_buckets[min(i, len(self.kv_buckets) - 1)]

    @property
    def captured(self) -> list[tuple]:
        """(batch bucket, chunk bucket) of every captured graph (+ the key bucket, runners with attention)."""
        return sorted(self._graphs)

    def _body(self, key: tuple):
        B, L = key[:2]
        return prefill_staged(self.runner, self.pool, self._buf, B, L, self.S, self._rows[B], *key[2:])

    @torch.no_grad()
    def capture(self, B: int, L: int, kv_len: Optional[int] = None) -> None:
        key = (B, L) if not self.kv_buckets else (B, L, self.kv_bucket(kv_len))
        if key in self._graphs:
            return
        if B not in self._rows:
            self._rows[B] = torch.arange(B, dtype=torch.long, device=self.device)
        st = torch.empty(3 * B + 2 * B * self.S + B * L, dtype=torch.int64)
        stage_prefill(st.numpy(), B, L, self.S, [])  # warm-up: every row is padding, no slot is touched
        self._buf[:st.numel()].copy_(st)
        s = torch.cuda.Stream(self.device)
        s.wait_stream(torch.cuda.current_stream(self.device))
        with self.runner.graphing():
            with torch.cuda.stream(s):
                for _ in range(2):
                    self._body(key)
            torch.cuda.current_stream(self.device).wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=self._mempool):
                logits = self._body(key)
        self._graphs[key] = (g, logits)
        log.info("ssmtp: captured the prefill graph for %d chunk(s) of up to %d tokens%s", B, L,
                 f" over {key[2]} keys" if len(key) > 2 else "")

    def capture_all(self) -> None:
        """Capture the graphs of one request's chunks (every chunk bucket, the largest first; runners with attention:
        those of a prompt's first chunk, over the key bucket holding it, the others on first use, and none past the
        bucket holding their longest sequence)."""
        top = self.bucket(self.kv_buckets[-1]) if self.kv_buckets else None
        for L in sorted(self.sizes, reverse=True):
            if top is None or L <= top:
                self.capture(1, L, L)

    def run(self, chunks: Sequence, ends: Optional[Sequence[int]] = None, kv_len: Optional[int] = None) -> torch.Tensor:
        """Prefill one chunk for each of B requests. chunks: (tokens, start, slot, saves) per request - tokens a 1-D
        int sequence, start the tokens in the slot's state already, saves up to S (position in the chunk, spare
        slot) in-pass saves; shape(B, longest chunk) must not be None; kv_len (runners with attention): the keys in
        use after the chunk (the longest row's start + length). Returns the logits (len(ends), V) fp32 of the
        last token of the rows in ``ends`` (default: every row): a view of the graph's output buffer when they are
        the leading rows in order, valid until the next run."""
        B = len(chunks)
        ends = list(range(B)) if ends is None else list(ends)
        lmax = max(len(c[0]) for c in chunks)
        shape = self.shape(B, lmax)
        if shape is None:
            raise ValueError(f"no prefill graph takes {B} chunk(s) of up to {lmax} tokens")
        if any(len(c[3]) > self.S for c in chunks):
            raise ValueError(f"{max(len(c[3]) for c in chunks)} in-pass saves in a chunk, this runner's prefill "
                             f"graphs take {self.S}")
        key = shape if not self.kv_buckets else shape + (self.kv_bucket(kv_len),)
        if key not in self._graphs:
            self.capture(*shape, kv_len)
        Bb, L = shape
        lead = ends == list(range(len(ends)))
        st = torch.empty(3 * Bb + 2 * Bb * self.S + Bb * L + (0 if lead else len(ends)), dtype=torch.int64,
                         pin_memory=True)
        # filled through numpy (torch indexing took ~0.18 ms here for the 896-token bucket, H200)
        n = stage_prefill(st.numpy(), Bb, L, self.S, chunks, () if lead else ends)
        self._buf[:n].copy_(st, non_blocking=True)
        g, logits = self._graphs[key]
        g.replay()
        if lead:
            return logits[:len(ends)]
        e = n - len(ends)
        return logits.index_select(0, self._buf[e:n])
