"""Prefix state cache: the states (every layer, this rank's shard) after an exact token prefix, for time-to-first-token.

An SSM's whole context is its state, so a cached prefix is one fixed-size snapshot per position, not per token. What is
saved, for every prompt:
  * at the end of the prompt, with the last-position logits (so a fully cached prompt needs no forward at all);
  * every ``interval`` (K) tokens (positions K, 2K, ...), which the engine makes chunk boundaries of the prefill;
  * at the branch point where the prompt leaves the longest prefix it shares with an earlier prompt (see BranchIndex):
    the next request with the same shared prefix then resumes exactly there, whatever K is.
The first is what prefix caches that store only whole blocks miss for prompts shorter than a block (vllm#40696); the
third is what fixed-interval checkpoints miss for a shared prefix followed by a long suffix (sglang#22935).

Keys. A position p = m*K + t (0 <= t < K) is keyed by H(chain_m || tokens[m*K : p]) where chain_0 is a constant
and chain_{m+1} = H(chain_m || tokens[m*K : (m+1)*K]) - a hash chain over K-token blocks plus the exact tail, so
a key names one exact token prefix. H is SHA-256 cut to 128 bits: with the SHA instructions of current x86 and Arm
CPUs it hashes an 8k-token prompt's ids in ~2/3 of blake2b's time, and the hash is on the time to first token.
``tails[chain_m]`` lists the tail lengths t stored under each chain, so finding the longest cached prefix of an
L-token prompt costs floor(L/K)+1 chain hashes plus one dict probe per stored tail, not one hash per position.

Storage is a preallocated pool of ``capacity`` entries (same per-layer layout as the slot pool) plus an fp32 logits
row per entry; capacity comes from a byte budget; eviction is least-recently-used. Copies between slot pool and entry
pool are device-to-device copies on the current stream (ordered with the forwards; no host sync): one strided copy
per state tensor and slot for a few slots, index_select/index_copy_ for more (SlotPool._copy).

"Pending" entries are positions that a running prefill has promised to save; a new request whose best hit is pending
waits for it (the engine defers its admission) instead of recomputing the shared prefix next to it.

Everything here is decided from token ids alone, so every TP rank builds the same cache and makes the same choices.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from .state_cache import SlotPool, bytes_per_slot

_CHAIN0 = hashlib.sha256(b"ssmtp-prefix-v2").digest()[:16]


def _h(*parts: bytes) -> bytes:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.digest()[:16]


def as_tokens(tokens) -> np.ndarray:
    """A prompt as a contiguous int64 numpy array (the form every hash here reads)."""
    return np.ascontiguousarray(np.asarray(tokens, dtype=np.int64).reshape(-1))


def chain_hashes(tokens: np.ndarray, interval: int) -> list[bytes]:
    """chain_0 .. chain_{floor(L/K)}: chain_m covers tokens[0 : m*K]."""
    out = [_CHAIN0]
    for m in range(len(tokens) // interval):
        out.append(_h(out[-1], tokens[m * interval:(m + 1) * interval].tobytes()))
    return out


@dataclass
class PrefixKey:
    pos: int
    chain: bytes  # chain_m, m = pos // K
    tail: int  # pos - m*K
    key: bytes


@dataclass
class _Entry:
    key: PrefixKey
    index: int = -1  # row in the entry pool; -1 while pending
    has_logits: bool = False
    owner: object = None  # the request that promised it, while pending


@dataclass
class Lookup:
    pos: int = 0  # longest ready prefix (0 = none)
    entry: Optional[_Entry] = None
    pending_pos: int = 0  # longest promised prefix (0 = none)
    pending_owner: object = None


@dataclass
class CacheStats:
    lookups: int = 0
    hits: int = 0
    hit_tokens: int = 0
    lookup_tokens: int = 0
    saves: int = 0
    evictions: int = 0
    extra: dict = field(default_factory=dict)


class PrefixCache:
    """LRU cache of per-prefix states. ``capacity`` entries (0 disables it)."""

    def __init__(self, specs: dict, capacity: int, interval: int, vocab_size: int, device, store_logits: bool = True):
        if not isinstance(interval, int) or interval < 1:
            raise ValueError(f"prefix_interval must be an integer >= 1, got {interval!r}")
        self.interval = interval
        self.capacity = max(0, int(capacity))
        self.vocab_size = vocab_size
        self.device = torch.device(device)
        self.store_logits = store_logits
        self._store = SlotPool(specs, self.capacity, device) if self.capacity > 0 else None
        self._logits = (torch.zeros(self.capacity, vocab_size, dtype=torch.float32, device=self.device)
                        if self.capacity > 0 and store_logits else None)
        self._entries: "OrderedDict[bytes, _Entry]" = OrderedDict()  # ready entries in LRU order (oldest first)
        self._pending: dict[bytes, _Entry] = {}
        self._tails: dict[bytes, dict[int, int]] = {}  # chain -> {tail length: reference count (ready + pending)}
        self.stats = CacheStats()

    @staticmethod
    def entry_bytes(specs: dict, vocab_size: int, store_logits: bool = True) -> int:
        return bytes_per_slot(specs) + (4 * vocab_size if store_logits else 0)

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    @property
    def nbytes(self) -> int:
        if not self.enabled:
            return 0
        return self._store.nbytes + (self._logits.numel() * 4 if self._logits is not None else 0)

    def __len__(self):
        return len(self._entries)

    # ------------------------------------------------------------------ keys

    def key_at(self, tokens: np.ndarray, chains: list[bytes], pos: int) -> PrefixKey:
        m, t = divmod(pos, self.interval)
        c = chains[m]
        return PrefixKey(pos, c, t, _h(c, tokens[m * self.interval:pos].tobytes()))

    def _tail_add(self, k: PrefixKey):
        d = self._tails.setdefault(k.chain, {})
        d[k.tail] = d.get(k.tail, 0) + 1

    def _tail_remove(self, k: PrefixKey):
        d = self._tails.get(k.chain)
        if d is None:
            return
        d[k.tail] -= 1
        if d[k.tail] <= 0:
            del d[k.tail]
        if not d:
            del self._tails[k.chain]

    # ------------------------------------------------------------------ lookup

    def lookup(self, tokens: np.ndarray, chains: list[bytes], count: bool = True) -> Lookup:
        """Longest ready (and longest pending) cached prefix of ``tokens``. A ready prefix equal to the whole prompt
        counts only when its logits were stored (the first new token needs them); otherwise a shorter one is used."""
        res = Lookup()
        if not self.enabled:
            return res
        L = len(tokens)
        K = self.interval
        for m in range(len(chains) - 1, -1, -1):
            if res.pos > m * K + K - 1:
                break  # every position under chain m or below is shorter than the ready hit in hand
            tails = self._tails.get(chains[m])
            if not tails:
                continue
            for t in sorted(tails, reverse=True):
                pos = m * K + t
                if pos == 0 or pos > L or (pos <= res.pos and pos <= res.pending_pos):
                    continue
                k = _h(chains[m], tokens[m * K:pos].tobytes())
                e = self._entries.get(k)
                if e is not None and (pos < L or e.has_logits) and pos > res.pos:
                    res.pos, res.entry = pos, e
                p = self._pending.get(k)
                if p is not None and pos > res.pending_pos:
                    res.pending_pos, res.pending_owner = pos, p.owner
        if count:
            self.count(res, L)
        return res

    def count(self, res: Lookup, length: int) -> None:
        """Count a lookup (of a ``length``-token prompt, result ``res``) in the hit statistics."""
        self.stats.lookups += 1
        self.stats.lookup_tokens += length
        if res.pos:
            self.stats.hits += 1
            self.stats.hit_tokens += res.pos

    def contains(self, key: PrefixKey) -> bool:
        return key.key in self._entries or key.key in self._pending

    # ------------------------------------------------------------------ promises

    def promise(self, key: PrefixKey, owner) -> bool:
        """Record that ``owner`` will save ``key``. False (nothing recorded) when it is already ready or promised."""
        if not self.enabled or key.key in self._entries or key.key in self._pending:
            return False
        self._pending[key.key] = _Entry(key, owner=owner)
        self._tail_add(key)
        return True

    def owns(self, key: PrefixKey, owner) -> bool:
        p = self._pending.get(key.key)
        return p is not None and p.owner is owner

    def drop_promises(self, owner) -> None:
        for k in [k for k, e in self._pending.items() if e.owner is owner]:
            self._tail_remove(self._pending.pop(k).key)

    # ------------------------------------------------------------------ save / restore

    def _free_index(self, flush) -> int:
        if self._store.num_free == 0:
            _, victim = self._entries.popitem(last=False)  # least recently used
            flush(victim.index)  # a row written earlier in this batch must be copied before it is reused
            self._tail_remove(victim.key)
            self._store.free([victim.index])
            self.stats.evictions += 1
        return self._store.allocate(1, zero=False)[0]

    def save(self, pool: SlotPool, items: list) -> None:
        """items: (slot, PrefixKey, logits row (V,) fp32 or None, owner). Copies the slots' states into entries: new
        ones, or the pending ones this owner promised (a key another request promised is left to that one); an
        existing ready entry is refreshed in the LRU order (and gains the logits if it had none)."""
        if not self.enabled or not items:
            return
        slots, rows, logit_rows, logit_src = [], [], [], []

        def flush(reused: int = -1):
            if reused >= 0 and reused not in rows and reused not in logit_rows:
                return
            if slots:
                pool.gather(slots, self._store.tensors, rows)
            for row, src in zip(logit_rows, logit_src):  # device copies (an index tensor would sync the host)
                self._logits[row].copy_(src)
            for lst in (slots, rows, logit_rows, logit_src):
                lst.clear()

        for slot, key, logits, owner in items:
            pend = self._pending.get(key.key)
            if pend is not None and pend.owner is not owner:
                continue
            e = self._entries.get(key.key)
            if e is not None:
                self._entries.move_to_end(key.key)
                if logits is not None and not e.has_logits and self._logits is not None:
                    logit_rows.append(e.index)
                    logit_src.append(logits)
                    e.has_logits = True
                continue
            if pend is not None:
                del self._pending[key.key]  # its tail reference carries over to the ready entry
            else:
                self._tail_add(key)
            e = _Entry(key, index=self._free_index(flush))
            self._entries[key.key] = e
            slots.append(slot)
            rows.append(e.index)
            if logits is not None and self._logits is not None:
                logit_rows.append(e.index)
                logit_src.append(logits)
                e.has_logits = True
            self.stats.saves += 1
        flush()

    def restore(self, entry: _Entry, pool: SlotPool, slot: int) -> Optional[torch.Tensor]:
        """Copy an entry's states into ``slot``; returns its logits (V,) when stored, else None."""
        self._entries.move_to_end(entry.key.key)
        pool.scatter([slot], self._store.tensors, [entry.index])
        if entry.has_logits and self._logits is not None:
            return self._logits[entry.index].clone()
        return None

    def clear(self) -> None:
        for e in self._entries.values():
            self._store.free([e.index])
        self._entries.clear()
        self._pending.clear()
        self._tails.clear()

    def __repr__(self):
        return (f"PrefixCache(interval={self.interval}, entries={len(self._entries)}/{self.capacity}, "
                f"pending={len(self._pending)}, {self.nbytes / 2**20:.1f} MiB)")


class BranchIndex:
    """Where a prompt leaves the longest prefix it shares with an earlier prompt (token-exact).

    Indexed by (chain_m, token at m*K) -> the latest prompt holding that K-block chain followed by that token, plus
    the set of chains seen. For a new prompt, the deepest chain it shares bounds the common prefix from below (m*K);
    if some earlier prompt also shares the next token, the exact common length with the latest such prompt is found
    by comparing tokens (at most up to the next block, since the next chain differs). A heuristic bound: with several
    earlier prompts sharing the same next token, only the latest is compared. Bounded: the oldest keys are forgotten
    beyond ``max_keys``."""

    def __init__(self, interval: int, max_keys: int = 1 << 16):
        self.interval = interval
        self.max_keys = max_keys
        self._chains: "OrderedDict[bytes, None]" = OrderedDict()
        self._next: "OrderedDict[tuple, tuple]" = OrderedDict()

    def branch_point(self, tokens: np.ndarray, chains: list[bytes]):
        """(d, owner): the longest common prefix length with an earlier prompt, and that prompt's owner when it
        continues past d's block boundary ((0, None) when nothing is shared)."""
        K = self.interval
        for m in range(len(chains) - 1, -1, -1):
            if chains[m] not in self._chains:
                continue
            start = m * K
            if start >= len(tokens):
                return start, None
            hit = self._next.get((chains[m], int(tokens[start])))
            if hit is None:
                return start, None  # no earlier prompt shares the token after this block boundary
            other, owner = hit
            end = min(len(tokens), len(other))
            neq = np.flatnonzero(tokens[start:end] != other[start:end])
            return (start + int(neq[0]) if len(neq) else end), owner
        return 0, None

    def add(self, tokens: np.ndarray, chains: list[bytes], owner) -> None:
        K = self.interval
        for m, c in enumerate(chains):
            self._chains[c] = None
            self._chains.move_to_end(c)
            if m * K < len(tokens):
                key = (c, int(tokens[m * K]))
                self._next[key] = (tokens, owner)
                self._next.move_to_end(key)
        for d in (self._chains, self._next):
            while len(d) > self.max_keys:
                d.popitem(last=False)
