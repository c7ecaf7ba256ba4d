"""The jitted decode loop: one `lax.while_loop` over a batch with a KV cache and per-row status.

Each row has its own write position (the cache's `length`), a stop-automaton state and a
status. The loop samples one token for every running row, appends it with `Transformer.extend`
(rows that are not running append nothing), steps the stop automaton, and ends when no row is
running or the per-turn budget is spent. Compiles once per (batch, cache length, budget) shape.

Working sets: `decode` and `append` may run on some rows of the state only (`rows`, gathered
into a smaller batch and scattered back in the same call), so their cost follows the rows that
take part; `prefill_shared` prefills each distinct prompt once and copies its cache to every row
with that prompt. Sampling draws each row's i-th token of a call with fold_in(keys[row],
offset[row] + i) when the caller gives per-row keys: a row then samples the same tokens whichever
batch it runs in.

Status codes:
    RUNNING  still decoding
    STOPPED  a stop string completed (which one: `stop_hit`)
    EOS      an end-of-sequence token was sampled (it is in the cache and in `tokens`; a caller
             that must not keep it, like the agent, `rewind`s the row)
    BUDGET   the per-turn budget or the cache ran out
"""
from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from searche1_jax.model.speed import SpeedPolicy
from searche1_jax.model.kv_cache import KVCache, cache_prefix, cache_put_prefix, cache_rows
from searche1_jax.programs import LeanJit
from searche1_jax.rollout.packing import put_rows, take_rows
from searche1_jax.rollout.stop import step as stop_step
from searche1_jax.shapes import next_pow2

RUNNING, STOPPED, EOS, BUDGET = 0, 1, 2, 3
NUCLEUS = ("bisect", "sort")


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """greedy overrides the rest. top_k = 0 and top_p = 1.0 disable those filters. nucleus: how
    the top-p set is found, one of NUCLEUS: "bisect" (default) or "sort" (a sort of the whole
    vocabulary: the form as written, and the rollout before issue 21; on XLA:CPU it made a
    40-row sampling step 8x slower)."""
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    greedy: bool = False
    nucleus: str = "bisect"

    def __post_init__(self):
        if not self.greedy and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (or greedy=True), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.nucleus not in NUCLEUS:
            raise ValueError(f"nucleus must be one of {NUCLEUS}, got {self.nucleus!r}")


class DecodeState(NamedTuple):
    """What persists between decode calls: the cache, the next-token logits and stop states."""
    cache: KVCache
    logits: jax.Array      # [B, V] f32: logits for each row's next token
    stop_state: jax.Array  # [B] int32 automaton state


class DecodeOut(NamedTuple):
    tokens: jax.Array      # [B, N] int32 sampled tokens (0 past n_new)
    logps: jax.Array       # [B, N] f32 log-prob of each sampled token under the sampling distribution
    n_new: jax.Array       # [B] int32 tokens sampled in this call
    status: jax.Array      # [B] int32 STOPPED / EOS / BUDGET; RUNNING only for a row still
                           # running when the call left early (`exit_below`)
    stop_hit: jax.Array    # [B] int32 index of the stop string that fired, -1 if none
    steps: jax.Array       # [] int32 loop iterations run (each computes all B rows)


def filter_logits(logits: jax.Array, params: SamplingParams) -> jax.Array:
    """Temperature, then top-k, then top-p (nucleus) on [B, V] logits; removed tokens get -inf."""
    logits = logits / params.temperature
    if params.top_k:
        kth = jax.lax.top_k(logits, params.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if params.top_p < 1.0:
        keep = (_nucleus if params.nucleus == "bisect" else _nucleus_sorted)(logits, params.top_p)
        logits = jnp.where(keep, logits, -jnp.inf)
    return logits


def _nucleus_sorted(logits: jax.Array, top_p: float) -> jax.Array:
    """[B, V] bool: the top-p nucleus by a stable descending sort of each row: keep a token if
    the mass strictly before it is < top_p (always keeps the first): the first n_keep tokens of
    the order, since that mass only grows along it."""
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    n_keep = jnp.sum((jnp.cumsum(probs, axis=-1) - probs) < top_p, axis=-1, keepdims=True)
    return _first_in_order(logits, sorted_logits, n_keep)


def _first_in_order(logits, sorted_logits, n_keep):
    """[B, V] bool: the tokens among the first n_keep [B, 1] of the stable descending order,
    without scattering the sorted mask back (a scatter over rows sharded on the mesh makes XLA
    all-gather its [B, V] indices and mask at every decode step). Above the n-th logit (the
    cutoff) a token is kept; at it, tied tokens are kept in index order (the stable sort's
    order) up to the count that fits."""
    cutoff = jnp.take_along_axis(sorted_logits, n_keep - 1, axis=-1)
    above = logits > cutoff
    tied = logits == cutoff
    room = n_keep - jnp.sum(above, axis=-1, keepdims=True)
    return above | (tied & (jnp.cumsum(tied, axis=-1) <= room))


def _ordered_keys(x: jax.Array) -> jax.Array:
    """uint32 keys of f32 values in the same order as the values (-inf lowest, +inf highest; -0
    and +0 one key, as they compare equal)."""
    bits = jax.lax.bitcast_convert_type(jnp.where(x == 0, 0.0, x).astype(jnp.float32), jnp.uint32)
    return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(0x80000000))


def _key_value(key: jax.Array) -> jax.Array:
    """The f32 value of an `_ordered_keys` key."""
    bits = jnp.where(key >> 31 == 1, key & jnp.uint32(0x7FFFFFFF), ~key)
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


def _nucleus(logits: jax.Array, top_p: float) -> jax.Array:
    """[B, V] bool: the top-p nucleus of each row, without sorting the vocabulary.

    The nucleus as written (Search-R1's, HF's): in the stable descending order, keep a token if
    the probability mass strictly before it is < top_p. Its last value c* is the lowest logit
    whose mass strictly above it, M(c*), is < top_p; since M only grows as the threshold falls,
    a bisection over the 2^32 ordered keys of f32 finds c* exactly in 32 masked sums over the
    vocabulary. Tokens above c* are kept; tokens tied at c* are kept in index order (the stable
    sort's) while the mass before them stays < top_p. Every step is a row-wise pass, so rows
    split over devices communicate nothing (a `lax.top_k` pre-selection would: XLA gathers its
    rows; and a branch on any row's state needs every row's). At 16 rows x 49,152 on XLA:CPU a
    decode step of SmolLM2 took 248 ms with the sort, 65 with this, 57 greedy (benchmarks/
    sampler.py profile). Masses are summed in index order rather than sorted order, so a cutoff
    within f32 rounding of top_p may fall one token apart."""
    lse = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
    probs = jnp.exp(logits - lse)
    keys = _ordered_keys(logits)

    def above(key):
        return jnp.sum(jnp.where(keys > key, probs, 0.0), axis=-1, keepdims=True)

    def halve(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        ok = above(mid) < top_p
        return jnp.where(ok, lo, mid), jnp.where(ok, mid, hi)

    # M(max) = 0 < top_p holds at hi, M(below min) = 1 >= top_p fails at lo: hi - lo < 2^32
    # halves to 1 in 32 steps, and hi is c*'s key
    hi = jnp.max(keys, axis=-1, keepdims=True)
    _, cut = jax.lax.fori_loop(0, 32, halve, (jnp.min(keys, axis=-1, keepdims=True) - 1, hi))
    tied = keys == cut
    rank = jnp.cumsum(tied, axis=-1) - 1                  # 0, 1, ... among the tied, by index
    p_tied = jnp.exp(_key_value(cut) - lse)
    return (keys > cut) | (tied & (above(cut) + rank * p_tied < top_p))


def sample(logits: jax.Array, key: jax.Array, params: SamplingParams):
    """-> (token [B] int32, logp [B] f32) with logp under the filtered sampling distribution.

    key: one key for the batch, or [B] keys, one per row (each row's draw then depends on its
    own key only, not on the batch it runs in)."""
    if params.greedy:
        token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        logp = jax.nn.log_softmax(logits, axis=-1)
    else:
        filtered = filter_logits(logits, params)
        if key.ndim == 1:
            token = jax.vmap(lambda k, row: jax.random.categorical(k, row))(key, filtered)
        else:
            token = jax.random.categorical(key, filtered, axis=-1)
        token = token.astype(jnp.int32)
        logp = jax.nn.log_softmax(filtered, axis=-1)
    return token, jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0]


def decode_window(lengths, max_new: int, max_len: int, smallest: int = 64) -> int:
    """The `window` for a `decode` / `append` call: the rows' longest length + max_new, rounded
    up to a power of two (at least `smallest`), at most the cache's max_len. Powers of two keep
    the compiled executables to about log2(max_len / smallest) + 1 per shape (each window is
    one compile), and a step reads at most twice the slots it needs.
    lengths: the rows' current cache lengths (host ints; rows that will not decode may be left
    out)."""
    need = max((int(n) for n in lengths), default=0) + max_new
    return min(next_pow2(need, smallest), max_len)


def _row_blocks(rows: jax.Array | None) -> jax.Array | None:
    """`rows` as [S, r] blocks (`packing`): a flat [R] list is one block (one device)."""
    return rows if rows is None or rows.ndim == 2 else rows[None]


def _working_set(state: DecodeState, rows: jax.Array | None, window: int | None) -> DecodeState:
    """Rows `rows` [S, r] of `state` (`packing.take_rows`: each block within its shard's rows;
    None: all, in order; a padding index gives a copy of its block's last row) and the cache's
    first `window` slots (None: all)."""
    cache = state.cache
    if window is not None and window < cache.max_len:
        cache = cache_prefix(cache, window)
    if rows is None:
        return state._replace(cache=cache)
    take = lambda x: take_rows(x, rows)  # noqa: E731
    # a stacked cache (scan_layers, [L, B, ...]) takes the same rows of every layer
    take_c = (lambda x: jax.vmap(take)(x)) if cache.stacked else take  # noqa: E731
    cache = KVCache(jax.tree.map(take_c, cache.k), jax.tree.map(take_c, cache.v), take(cache.length))
    return DecodeState(cache, take(state.logits), take(state.stop_state))


def _put_back(full: DecodeState, part: DecodeState, rows: jax.Array | None) -> DecodeState:
    """`full` with `part` (a `_working_set` of it) written back; padding rows are dropped."""
    if rows is None:
        if part.cache.max_len < full.cache.max_len:
            part = part._replace(cache=cache_put_prefix(full.cache, part.cache))
        return part
    w = part.cache.max_len
    put = lambda f, p, slots=(): put_rows(f, rows, p, slots)  # noqa: E731
    k_slots, v_slots = (Ellipsis, slice(None, w)), (slice(None), slice(None, w))  # slots: k last, v third axis
    if full.cache.stacked:  # [L, B, ...]: the same rows of every layer
        put_k = jax.vmap(lambda f, p: put(f, p, k_slots))
        put_v = jax.vmap(lambda f, p: put(f, p, v_slots))
    else:
        put_k, put_v = (lambda f, p: put(f, p, k_slots)), (lambda f, p: put(f, p, v_slots))
    cache = KVCache(jax.tree.map(put_k, full.cache.k, part.cache.k), jax.tree.map(put_v, full.cache.v, part.cache.v),
                    put(full.cache.length, part.cache.length))
    return DecodeState(cache, put(full.logits, part.logits), put(full.stop_state, part.stop_state))


def _read_only_model_jit(*, static_argnames: tuple[str, ...] = ()):
    """jit for `fn(model, state, *args, **kw)` that reads the model and donates `state`.

    nnx.jit returns every Variable of its graph arguments as outputs (to carry mutations back):
    XLA then writes a fresh copy of all the weights on every call (measured: 0 of a model's
    buffers survive one `append`), an extra copy of the weights in memory and a weights-sized
    memcpy per decode turn. The model is split here instead: the graph definition is static,
    the weights are an input only, and nothing the model holds changes (decode and append
    mutate nothing in it)."""
    def wrap(fn):
        def run(graphdef, weights, state, *args, **kw):
            return fn(nnx.merge(graphdef, weights), state, *args, **kw)
        # LeanJit: with config.train.free_programs, the executables alone are kept (programs.py)
        pure = LeanJit(jax.jit(run, static_argnums=(0,), static_argnames=static_argnames, donate_argnums=(2,)),
                       static_argnums=(0,), static_argnames=static_argnames)

        @functools.wraps(fn)
        def call(model, state, *args, **kw):
            return pure(*nnx.split(model), state, *args, **kw)

        call.lower = lambda model, state, *args, **kw: pure.lower(*nnx.split(model), state, *args, **kw)
        call.jitted = pure  # its compile cache (tests count compilations)
        return call
    return wrap


@_read_only_model_jit(static_argnames=("max_new", "params", "speed", "window"))
def decode(model, state: DecodeState, active: jax.Array, key: jax.Array, *,
           stop_table: jax.Array, stop_rank: jax.Array, stop_enabled: jax.Array,
           eos_ids: jax.Array, max_new: int, params: SamplingParams,
           speed: SpeedPolicy | None = None, window: int | None = None,
           rows: jax.Array | None = None, budget: jax.Array | None = None,
           offset: jax.Array | None = None, exit_below: jax.Array | None = None):
    """Decode up to `max_new` tokens for the rows where `active` [B] is true.

    key: one key for the batch (split at every step: a row's draws depend on the batch), or [B]
    keys, one per row: a row's i-th token of the call is then drawn with fold_in(its key,
    offset[b] + i) (offset: [B] int32, its tokens sampled before this call in the same turn;
    default 0), whatever batch it runs in (what the rollout engine uses).
    rows: None, or [S, B / S] int32 indices into `state`'s rows, block s within the state's
    shard s (`packing.pack_rows`; a flat [B] list is one block): the call gathers those rows
    (and the `window` slots) on the devices that hold them, decodes them as a batch of B
    (flattened block by block) and writes them back (indices >= the state's rows: padding,
    inactive). active, keys, stop_enabled, budget, offset and the outputs are then per working
    row.
    budget: [B] int32 tokens each row may still sample (default max_new; each <= max_new).
    exit_below: [] int32; the call returns as soon as no block of `rows` (the whole batch when
    rows is None or flat) has more than this many rows running (default 0): those rows keep
    status RUNNING, and a later call with their offset and budget continues them.

    stop_table [S, V] int32 and stop_rank [S, n_stops] int32 are the stop automaton
    (`stop.StopAutomaton`); stop_enabled [B, n_stops] bool says which stop strings pause each
    row (a disabled one, e.g. `</search>` in the last turn, is just text). eos_ids [E] int32.
    Returns (DecodeOut, DecodeState). Rows stop early when the cache is full (BUDGET).

    Speed options (the tokens are the same with any of them):
    - speed: the backend's fast paths (None: `SpeedPolicy.for_backend(batch=B)`). With
      few_row_kernels the loop runs `model.few_row_view()`; a rollout that makes many calls
      passes that view as `model` (built once; a view's view is itself).
    - window: attend to (and write) only the cache's first `window` slots, e.g.
      `decode_window(lengths, max_new, max_len)`: each step reads window slots instead of
      all of them. A row that reaches the window stops as if the cache were full (BUDGET),
      so pick window >= length + max_new for the rows that decode.
    """
    b = active.shape[0]
    speed = SpeedPolicy.for_backend(batch=b) if speed is None else speed
    # a policy without a few-row view (e.g. a scripted test policy) decodes as it is
    if speed.few_row_kernels and hasattr(model, "few_row_view"):
        model = model.few_row_view()
    full_state = state
    rows = _row_blocks(rows)
    blocks = 1 if rows is None else rows.shape[0]
    state = _working_set(state, rows, window)
    max_len = state.cache.max_len
    per_row = key.ndim == 1
    budget = jnp.full((b,), max_new, jnp.int32) if budget is None else budget
    offset = jnp.zeros((b,), jnp.int32) if offset is None else offset
    exit_below = jnp.int32(0) if exit_below is None else exit_below
    tokens0 = jnp.zeros((b, max_new), jnp.int32)
    logps0 = jnp.zeros((b, max_new), jnp.float32)
    status0 = jnp.where(active & (budget > 0), RUNNING, BUDGET).astype(jnp.int32)
    # a row with no room left cannot even start
    status0 = jnp.where(state.cache.length >= max_len, BUDGET, status0)

    def cond(carry):
        i, _, _, _, _, status, _, _ = carry
        # per block: the engine re-packs once every shard's running rows fit a smaller bucket
        running = jnp.sum((status == RUNNING).reshape(blocks, -1), axis=1)
        return (i < max_new) & (jnp.max(running) > exit_below)

    def body(carry):
        i, st, toks, lps, n_new, status, hit, key = carry
        running = status == RUNNING
        if per_row:
            sub = jax.vmap(jax.random.fold_in)(key, offset + n_new)
        else:
            key, sub = jax.random.split(key)
        token, logp = sample(st.logits, sub, params)
        # every row writes at its own count of new tokens (rows stop at different steps), row by
        # row (vmap): indexed by a row iota, XLA all-gathers the writes over rows on the mesh
        col = jnp.where(running, n_new, max_new)  # out of range = dropped
        put = jax.vmap(lambda row, c, x: row.at[c].set(x, mode="drop"))
        toks, lps = put(toks, col, token), put(lps, col, logp)
        n_new = n_new + running
        logits, cache = model.extend(token[:, None], running.astype(jnp.int32), st.cache)
        new_stop_state, fired = stop_step(stop_table, stop_rank, st.stop_state, token, stop_enabled)
        stop_state = jnp.where(running, new_stop_state, st.stop_state)
        fired_enabled = fired >= 0
        is_eos = jnp.any(token[:, None] == eos_ids[None, :], axis=-1)
        new_status = jnp.where(is_eos, EOS, jnp.where(fired_enabled, STOPPED, RUNNING))
        out_of_room = (cache.length >= max_len) | (n_new >= budget)  # the cache or the turn's budget
        new_status = jnp.where((new_status == RUNNING) & out_of_room, BUDGET, new_status)
        status = jnp.where(running, new_status, status)
        hit = jnp.where(running & fired_enabled & ~is_eos, fired, hit)
        logits = jnp.where(running[:, None], logits, st.logits)
        return i + 1, DecodeState(cache, logits, stop_state), toks, lps, n_new, status, hit, key

    zeros = jnp.zeros((b,), jnp.int32)
    carry = (jnp.int32(0), state, tokens0, logps0, zeros, status0, zeros - 1, key)
    steps, state, toks, lps, n_new, status, hit, _ = jax.lax.while_loop(cond, body, carry)
    return DecodeOut(toks, lps, n_new, status, hit, steps), _put_back(full_state, state, rows)


@_read_only_model_jit(static_argnames=("window",))
def append(model, state: DecodeState, tokens: jax.Array, n_valid: jax.Array, start_state: jax.Array,
           *, window: int | None = None, rows: jax.Array | None = None):
    """Append the first n_valid[b] of tokens[b] (prompt, observation, message) to each row.

    Rows with n_valid > 0 get fresh next-token logits and their stop automaton reset to
    `start_state` (stop strings are matched on generated text only, per turn); other rows
    are untouched. window: as in `decode`, attend to and write only the cache's first
    `window` slots (>= length + n_valid of the appended rows; tokens past it are dropped).
    rows: as in `decode` ([S, R / S] blocks, or flat), the state's rows that tokens [R, T] go to
    (only they are computed).
    Returns the new DecodeState.
    """
    rows = _row_blocks(rows)
    work = _working_set(state, rows, window)
    logits, cache = model.extend(tokens, n_valid, work.cache)
    touched = n_valid > 0
    work = DecodeState(cache, jnp.where(touched[:, None], logits, work.logits),
                       jnp.where(touched, start_state, work.stop_state))
    return _put_back(state, work, rows)


@_read_only_model_jit(static_argnames=("window",))
def prefill_shared(model, state: DecodeState, tokens: jax.Array, n_valid: jax.Array, owner: jax.Array,
                   start_state: jax.Array, *, window: int | None = None, prefix: jax.Array | None = None,
                   prefix_n: jax.Array | None = None):
    """Prefill each distinct prompt once and give its cache to every row that has it.

    state: empty (every row's length 0), B rows; tokens [U, T] / n_valid [U]: the distinct
    prompts (right-padded; rows with n_valid 0 are padding); owner [B] int32: the prompt of each
    row. Each row then holds exactly what `append` of its own prompt would give it (the same
    keys, values and next-token logits; the stop automaton at `start_state`), for U prompts'
    compute instead of B. window: as in `append`, the slots computed (>= the longest prompt).

    prefix [1, P] / prefix_n (int32 scalar): tokens every prompt starts with (right-padded). They
    are computed once, in one row; each of the U rows starts from a copy of that row's cache and
    `tokens` are then the prompts' remaining tokens (each at least one). A token's key and value
    depend on the tokens before it alone (causal attention), so this is the same cache as the
    prompts' own prefill, for P + U x (T - P) tokens' compute instead of U x T.
    """
    u = tokens.shape[0]
    # an empty cache of the window's slots (either layout: zeros, the gather is dead code)
    empty = lambda n: jax.tree.map(jnp.zeros_like, cache_rows(_working_set(state, None, window).cache,  # noqa: E731
                                                              jnp.zeros((n,), jnp.int32)))
    if prefix is None:
        start = empty(u)
    else:
        _, shared = model.extend(prefix, jnp.reshape(prefix_n, (1,)), empty(1))
        start = cache_rows(shared, jnp.zeros((u,), jnp.int32))
    logits, cache = model.extend(tokens, n_valid, start)
    spread = lambda x: jnp.take(x, owner, axis=0)  # noqa: E731
    shared = DecodeState(cache_rows(cache, owner), spread(logits),
                         jnp.full(owner.shape, start_state, jnp.int32))
    return _put_back(state, shared, None)


def rewind(state: DecodeState, lengths) -> DecodeState:
    """Set each row's cache length to lengths[b] (host ints, <= its current length): the slots
    past it are forgotten and the next `append` overwrites them. The row's next-token logits
    are stale until that append (which every continuing row gets)."""
    lengths = jnp.asarray(lengths, jnp.int32)
    return state._replace(cache=state.cache._replace(length=jnp.minimum(lengths, state.cache.length)))


def empty_state(cache: KVCache, vocab_size: int, start_state: int = 0) -> DecodeState:
    b = cache.length.shape[0]
    return DecodeState(cache, jnp.zeros((b, vocab_size), jnp.float32),
                       jnp.full((b,), start_state, jnp.int32))
