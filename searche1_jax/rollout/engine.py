"""The device side of one agent rollout: a KV cache with one row per trajectory, and the calls
that prefill it, decode turns and append context on the rows that need it (issue 21).

Two engines, the same trajectories (tests/rollout/test_engine.py):
- "packed" (default): each distinct prompt is prefilled once and its cache copied to the G rows
  of its group, and where there are many distinct prompts the tokens they all start with (the
  chat template and the instruction) are computed once (`shared_prefix`: the demo's eval batch
  of 20 prompts of ~160 tokens computes 1 x 192 + 20 x 64 positions, not 20 x 192); a decode
  call runs only the rows still decoding, gathered into the next row bucket (`row_buckets`: 2^k
  and 3 x 2^(k-1), at most the batch; config.rollout.row_buckets "pow2": 2^k alone), and leaves
  the loop as soon as the running rows fit the bucket below (they are re-packed and go on from
  where they were); an append computes only the rows that have something to append, in their own
  bucket. Decode cost follows live rows: a decode step computes at most 4/3 (3/2 for the
  smallest) of the rows that run at the call's start and at most 3/2 (2) of those still running
  at its end ("pow2": at most 2x and 2x). On a mesh the cache's rows are split over devices and
  each device packs its own live rows into its part of the bucket (`packing.pack_rows`: buckets
  are per shard x shards, set by the fullest shard), so the gather never crosses devices (issue
  20); the bounds above then hold for the fullest shard. A call whose bucket is the whole batch
  runs it in place (no gather of the rows' windows), and an append's tokens are padded to
  `shapes.append_width` (96 observation tokens compute 96 positions, not 128).
- "padded": the engine before issue 21, kept for comparison: every row prefills its own prompt,
  and every row of the batch is computed in every decode step and every append, finished or not,
  appends padded to a multiple of the prompts' bucket.

A row's i-th token of a turn is drawn with fold_in(fold_in(fold_in(key, turn), row), i) in both,
so a row samples the same tokens whichever batch it runs in.
"""
from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from searche1_jax.model.speed import SpeedPolicy
from searche1_jax.model.transformer import init_cache
from searche1_jax.rollout.packing import pack_rows, row_shards
from searche1_jax.rollout.sampler import (RUNNING, SamplingParams, append, decode, decode_window, empty_state,
                                          prefill_shared, rewind)
from searche1_jax.shapes import append_width, round_up, row_bucket, row_buckets  # noqa: F401 (row_buckets: tests)

ENGINES = ("packed", "padded")


@dataclasses.dataclass
class EngineStats:
    """Counters of one or more rollouts (summed by `add`); `metrics` gives the figures to log."""
    rows: int = 0               # trajectories
    questions: int = 0          # distinct prompts among them
    prefill_tokens: int = 0     # prompt tokens the model computed (padding excluded)
    sampled_tokens: int = 0     # tokens the policy sampled (all of them, kept or not)
    row_steps: int = 0          # sum over decode loop steps of the rows each step computed
    decode_calls: int = 0
    append_calls: int = 0       # prefills included
    decode_compiles: int = 0    # new executables of `decode` built during the rollouts
    append_compiles: int = 0    # ... of `append` and `prefill_shared`
    decode_s: float = 0.0       # wall seconds in decode calls (device, and fetching the tokens)
    append_s: float = 0.0       # ... in prefills and appends
    retrieval_s: float = 0.0    # ... in the retriever
    wall_s: float = 0.0         # whole rollouts; host = wall - decode - append - retrieval

    def add(self, other: "EngineStats") -> "EngineStats":
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def metrics(self) -> dict[str, float]:
        """row_steps_per_token: 1.0 = no row computed in vain; prefill_tokens_per_question."""
        host = self.wall_s - self.decode_s - self.append_s - self.retrieval_s
        return {"row_steps_per_token": self.row_steps / max(self.sampled_tokens, 1),
                "prefill_tokens_per_question": self.prefill_tokens / max(self.questions, 1),
                "decode_compiles": float(self.decode_compiles),
                "append_compiles": float(self.append_compiles),
                "decode_calls": float(self.decode_calls), "append_calls": float(self.append_calls),
                "decode_s": self.decode_s, "append_s": self.append_s, "retrieval_s": self.retrieval_s,
                "host_s": host}


def compiled_counts() -> tuple[int, int]:
    """(decode, append + prefill_shared) executables this process holds now (built so far, less
    those `free_compiled` dropped)."""
    return (decode.jitted._cache_size(),
            append.jitted._cache_size() + prefill_shared.jitted._cache_size())


def free_compiled() -> None:
    """Drop every decode / append / prefill executable (one per row bucket, window and budget;
    ~65 MB each on CPU for SmolLM2-135M): the next rollout compiles what it needs again. Call
    between rollouts, never inside one (the engine counts compilations as differences)."""
    for f in (decode, append, prefill_shared):
        f.jitted.clear_cache()


class RowEngine:
    """The KV cache of one batch of trajectories (row r = trajectory r) and its device calls.

    n_rows rows of max_len slots; `start` is the stop automaton's reset state. The engine keeps
    each row's cache length on the host (`length`), from which it sizes every call's window.
    """

    def __init__(self, model, n_rows: int, max_len: int, start: int, *, engine: str, stats: EngineStats,
                 buckets: str = "half"):
        if engine not in ENGINES:
            raise ValueError(f"config.rollout.engine must be one of {ENGINES}, got {engine!r}")
        self.model, self.b, self.start, self.stats = model, n_rows, start, stats
        self.packed = engine == "packed"
        self.buckets = buckets  # shapes.ROW_BUCKETS: the packed calls' row buckets
        # created sharded on the model's mesh (a Transformer's own init_cache), rows over data x fsdp
        cache = (model.init_cache(n_rows, max_len) if hasattr(model, "init_cache")
                 else init_cache(model.cfg, n_rows, max_len))
        self.state = empty_state(cache, model.cfg.vocab_size, start)
        self.max_len = max_len
        self.length = np.zeros((n_rows,), np.int64)
        self._few_row = None  # the model's few-row view, built the first time a batch wants it
        # the blocks the cache's rows are split into over devices: packed calls gather within them
        self.shards = row_shards(cache.k[0])

    def _decoder(self, batch: int):
        """(model to decode with, speed policy) for a decode of `batch` rows."""
        speed = SpeedPolicy.for_backend(batch=batch)
        if speed.few_row_kernels and hasattr(self.model, "few_row_view"):
            if self._few_row is None:
                self._few_row = self.model.few_row_view()
            return self._few_row, speed
        return self.model, speed

    def _bucket(self, rows: list[int]) -> tuple[np.ndarray, int]:
        """(rows [shards, n] packed per shard and padded to the bucket n with the out-of-range
        index n_rows, the bucket below n): `packing.pack_rows`."""
        return pack_rows(rows, self.b, self.shards, self.buckets)

    def prefill(self, prompts: list[list[int]], bucket: int):
        """Prefill row r with prompts[r]; "packed": each distinct prompt once."""
        t0 = time.perf_counter()
        width = round_up(max(len(p) for p in prompts), bucket)
        window = decode_window([len(p) for p in prompts], 0, self.max_len)
        if self.packed:
            distinct: dict[tuple, int] = {}
            owner = np.asarray([distinct.setdefault(tuple(p), len(distinct)) for p in prompts], np.int32)
            uniq = [list(p) for p in distinct]
            u_rows = row_bucket(len(uniq), self.b, self.buckets)
            shared, kw = shared_prefix(uniq, u_rows, bucket), {}
            if shared:  # the prompts' common start computed once, then each prompt's own tokens
                pre, _ = _padded([uniq[0][:shared]], 1, round_up(shared, bucket))
                kw = dict(prefix=jnp.asarray(pre), prefix_n=jnp.int32(shared))
                width = round_up(max(len(p) for p in uniq) - shared, bucket)
            toks, n = _padded([p[shared:] for p in uniq], u_rows, width)
            self.state = prefill_shared(self.model, self.state, jnp.asarray(toks), jnp.asarray(n),
                                        jnp.asarray(owner), jnp.int32(self.start), window=window, **kw)
            computed = shared + sum(len(p) - shared for p in uniq)
        else:
            computed = sum(len(p) for p in prompts)
            toks, n = _padded(prompts, self.b, width)
            self.state = append(self.model, self.state, jnp.asarray(toks), jnp.asarray(n), jnp.int32(self.start),
                                window=window)
        if hasattr(self.model, "tag_rows"):  # a scripted policy: row r follows script r
            self.state = self.model.tag_rows(self.state)
        jax.block_until_ready(self.state)
        self.length[:] = [len(p) for p in prompts]
        self.stats.questions += len({tuple(p) for p in prompts})
        self.stats.rows += len(prompts)
        self.stats.prefill_tokens += computed  # prompt tokens the model computed (padding excluded)
        self.stats.append_calls += 1
        self.stats.append_s += time.perf_counter() - t0

    def decode_turn(self, live: list[int], keys: jax.Array, max_new: int, params: SamplingParams,
                    stop: dict) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """One turn of up to max_new tokens for rows `live`: {row: (tokens, log-probs)} as sampled,
        up to and including the token that stopped it (a stop string, EOS, the budget or the
        cache's end). keys: [n_rows] the rows' keys for this turn. stop: decode's stop_table,
        stop_rank, eos_ids and n_stops (the number of stop strings, all enabled)."""
        toks = {r: [] for r in live}
        lps = {r: [] for r in live}
        done = np.zeros((self.b,), np.int32)  # tokens each row sampled so far this turn
        running = list(live)
        while running:
            t0 = time.perf_counter()
            idx, rows, exit_below = np.arange(self.b, dtype=np.int32), None, 0
            if self.packed:  # leave when every shard's running rows fit the bucket below
                blocks, exit_below = self._bucket(running)
                if blocks.size < self.b:  # (a full bucket runs the batch in place: no gather)
                    idx, rows = blocks.reshape(-1), jnp.asarray(blocks)
            active = np.isin(idx, running)
            nb, safe = len(idx), np.minimum(idx, self.b - 1)
            window = decode_window([self.length[r] + max_new - done[r] for r in running], 0, self.max_len)
            model, speed = self._decoder(nb)
            out, self.state = decode(
                model, self.state, jnp.asarray(active), keys[jnp.asarray(safe)], rows=rows,
                stop_table=stop["stop_table"], stop_rank=stop["stop_rank"], eos_ids=stop["eos_ids"],
                stop_enabled=jnp.ones((nb, stop["n_stops"]), bool), max_new=max_new, params=params,
                speed=speed, window=window, budget=jnp.asarray(max_new - done[safe], jnp.int32),
                offset=jnp.asarray(done[safe], jnp.int32), exit_below=jnp.int32(exit_below))
            o_toks, o_lps, n_new, status, steps = jax.device_get(
                (out.tokens, out.logps, out.n_new, out.status, out.steps))
            still = []
            for j, r in enumerate(idx):
                if not active[j]:
                    continue
                toks[r].append(o_toks[j, :n_new[j]])
                lps[r].append(o_lps[j, :n_new[j]])
                done[r] += n_new[j]
                self.length[r] += n_new[j]
                if status[j] == RUNNING:
                    still.append(int(r))
            running = still
            self.stats.sampled_tokens += int(n_new[active].sum())
            self.stats.row_steps += nb * int(steps)
            self.stats.decode_calls += 1
            self.stats.decode_s += time.perf_counter() - t0
        return {r: (np.concatenate(toks[r]), np.concatenate(lps[r])) for r in live}

    def rewind(self, lengths: dict[int, int]):
        """Forget the slots of row r past lengths[r] (<= its length)."""
        if not lengths:
            return
        for r, n in lengths.items():
            self.length[r] = min(self.length[r], n)
        self.state = rewind(self.state, self.length.astype(np.int32))

    def append(self, rows: dict[int, list[int]], bucket: int):
        """Append token lists to some rows (fresh logits, stop automaton reset); "packed": only
        those rows are computed, their tokens padded to `shapes.append_width` ("padded": to a
        multiple of `bucket`, the prompts' multiple)."""
        if not rows:
            return
        t0 = time.perf_counter()
        longest = max(len(v) for v in rows.values())
        width = append_width(longest, bucket) if self.packed else round_up(longest, bucket)
        ends = [self.length[r] + len(ids) for r, ids in rows.items()]
        window = decode_window(ends, 0, self.max_len)  # the filled part of the cache
        seqs, kw = [rows.get(r, []) for r in range(self.b)], {}
        if self.packed:
            blocks, _ = self._bucket(sorted(rows))
            if blocks.size < self.b:  # (a full bucket appends in place: no gather)
                seqs = [rows.get(int(r), []) for r in blocks.reshape(-1)]
                kw = dict(rows=jnp.asarray(blocks))
        toks, n = _padded(seqs, len(seqs), width)
        self.state = append(self.model, self.state, jnp.asarray(toks), jnp.asarray(n), jnp.int32(self.start),
                            window=window, **kw)
        jax.block_until_ready(self.state)
        for r, ids in rows.items():
            self.length[r] += len(ids)
        self.stats.append_calls += 1
        self.stats.append_s += time.perf_counter() - t0


def shared_prefix(prompts: list[list[int]], rows: int, bucket: int) -> int:
    """How many leading tokens to prefill once for all of `prompts` (distinct; `rows` of them
    after padding to the row bucket) before each prompt's own tokens: their common prefix, less
    one token (every prompt keeps a token of its own, whose logits start its first turn), or 0.

    0 unless the split at least halves the positions computed, widths padded to multiples of
    `bucket` as the engine pads them: the split prefill is a program of its own (two passes
    over the layers, so about twice a whole prefill's compile), worth it for many prompts (an
    eval batch, a GRPO batch of many questions), not for a few (one prompt; the demo's GRPO
    steps of 2 questions) or a short common start."""
    if len(prompts) < 2:
        return 0
    longest = max(len(p) for p in prompts)
    n = min(len(os.path.commonprefix(prompts)), min(len(p) for p in prompts) - 1)
    if n <= 0:
        return 0
    split = round_up(n, bucket) + rows * round_up(longest - n, bucket)
    return n if 2 * split <= rows * round_up(longest, bucket) else 0


def _padded(seqs: list[list[int]], rows: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """([rows, width] int32 right-padded tokens, [rows] int32 lengths); rows past seqs are empty."""
    toks = np.zeros((rows, width), np.int32)
    n = np.zeros((rows,), np.int32)
    for r, ids in enumerate(seqs):
        toks[r, :len(ids)] = ids
        n[r] = len(ids)
    return toks, n
