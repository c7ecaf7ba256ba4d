"""The jitted decode loop against transformers' greedy generate, and its compile behaviour."""
import dataclasses
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from flax import nnx

from searche1_jax.model.checkpoint import load_hf
from searche1_jax.model.speed import SpeedPolicy
from searche1_jax.model.transformer import init_cache
from searche1_jax.rollout import sampler
from tests.model.hf_tiny import make_tiny_hf
from searche1_jax.rollout.sampler import (BUDGET, EOS, STOPPED, SamplingParams, decode_window, empty_state,
                                          filter_logits)


def _on_a_copy(step):
    """decode / append donate their state; these tests run several calls from one state."""
    def call(model, state, *args, **kw):
        return step(model, jax.tree.map(jnp.copy, state), *args, **kw)
    return call


decode, append = _on_a_copy(sampler.decode), _on_a_copy(sampler.append)

NO_STOP = dict(stop_table=jnp.zeros((1, 384), jnp.int32), stop_rank=jnp.array([[1]], jnp.int32))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("qwen2"))
    hf = make_tiny_hf("qwen2", d, tied=True, seed=7, scale=0.3)
    model, cfg = load_hf(d)
    return hf, model, cfg


def prefill(model, prompts, max_len):
    b = len(prompts)
    cache = init_cache(model.cfg, b, max_len)
    st = empty_state(cache, model.cfg.vocab_size)
    width = max(len(p) for p in prompts)
    toks = np.zeros((b, width), np.int32)
    for i, p in enumerate(prompts):
        toks[i, :len(p)] = p
    return append(model, st, jnp.asarray(toks), jnp.asarray([len(p) for p in prompts]), jnp.int32(0))


@pytest.mark.parametrize("few_rows", [False, True], ids=["stored_kernels", "few_row_kernels"])
def test_greedy_equals_transformers_generate_for_rows_of_different_lengths(tiny, few_rows):
    hf, model, cfg = tiny
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(0, cfg.vocab_size, n)) for n in (9, 4, 13)]
    st = prefill(model, prompts, 64)
    out, _ = decode(model, st, jnp.ones(3, bool), jax.random.key(0), **NO_STOP,
                    stop_enabled=jnp.ones((3, 1), bool), eos_ids=jnp.array([-1], jnp.int32),
                    max_new=20, params=SamplingParams(greedy=True),
                    speed=SpeedPolicy(few_row_kernels=few_rows))
    assert list(np.asarray(out.n_new)) == [20, 20, 20]
    assert list(np.asarray(out.status)) == [BUDGET] * 3
    for i, p in enumerate(prompts):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([p]), max_new_tokens=20, do_sample=False, min_new_tokens=20,
                              pad_token_id=0)[0, len(p):].tolist()
        assert np.asarray(out.tokens[i]).tolist() == ref
    # sampling log-probs of greedy tokens are the model's log-softmax at those tokens
    full = np.asarray(jax.nn.log_softmax(model(jnp.asarray([prompts[0] + np.asarray(out.tokens[0]).tolist()])), -1))[0]
    expect = [full[len(prompts[0]) - 1 + j, int(out.tokens[0, j])] for j in range(20)]
    np.testing.assert_allclose(np.asarray(out.logps[0]), expect, atol=1e-4)


def test_inactive_rows_and_eos_and_stop_automaton(tiny):
    _, model, cfg = tiny
    prompts = [[1, 2, 3], [4, 5], [6]]
    st = prefill(model, prompts, 48)
    greedy = SamplingParams(greedy=True)
    # learn the greedy continuation of row 0, then make its 3rd token EOS and row 1's 2nd a stop
    out, _ = decode(model, st, jnp.ones(3, bool), jax.random.key(0), **NO_STOP,
                    stop_enabled=jnp.ones((3, 1), bool), eos_ids=jnp.array([-1], jnp.int32),
                    max_new=6, params=greedy)
    toks = np.asarray(out.tokens)
    # a 2-state automaton: any state --toks[1,1]--> accepting state 1 (stop id 0)
    table = np.zeros((2, cfg.vocab_size), np.int32)
    table[:, toks[1, 1]] = 1
    rank = np.array([[1], [0]], np.int32)  # state 1: stop 0 completed first; n=1 means "not"
    out2, st2 = decode(model, st, jnp.array([True, True, False]), jax.random.key(0),
                       stop_table=jnp.asarray(table), stop_rank=jnp.asarray(rank),
                       stop_enabled=jnp.ones((3, 1), bool), eos_ids=jnp.array([toks[0, 2]], jnp.int32),
                       max_new=6, params=greedy)
    n = np.asarray(out2.n_new)
    first_eos = int(np.flatnonzero(toks[0] == toks[0, 2])[0])
    first_stop = int(np.flatnonzero(toks[1] == toks[1, 1])[0])
    assert n[0] == first_eos + 1 and out2.status[0] == EOS
    assert n[1] == first_stop + 1 and out2.status[1] == STOPPED and out2.stop_hit[1] == 0
    assert n[2] == 0 and out2.status[2] == BUDGET
    assert list(np.asarray(st2.cache.length)) == [3 + n[0], 2 + n[1], 1]
    # a disabled stop string does not stop the row
    out3, _ = decode(model, st, jnp.array([False, True, False]), jax.random.key(0),
                     stop_table=jnp.asarray(table), stop_rank=jnp.asarray(rank),
                     stop_enabled=jnp.zeros((3, 1), bool), eos_ids=jnp.array([-1], jnp.int32),
                     max_new=6, params=greedy)
    assert int(out3.n_new[1]) == 6 and int(out3.stop_hit[1]) == -1


def test_decode_window_matches_full_cache(tiny):
    """Attending to a window of the cache gives the same tokens, log-probs and cache as the whole
    cache, leaves the slots past the window alone, and a row that reaches the window stops."""
    _, model, cfg = tiny
    rng = np.random.default_rng(3)
    prompts = [list(rng.integers(0, cfg.vocab_size, n)) for n in (9, 4, 13, 70)]
    st = prefill(model, prompts, 96)
    active = jnp.array([True, True, True, False])  # row 3 (70 tokens) is past the window, idle
    kw = dict(**NO_STOP, stop_enabled=jnp.ones((4, 1), bool), eos_ids=jnp.array([-1], jnp.int32),
              params=SamplingParams(temperature=0.8, top_k=50))
    assert decode_window([9, 4, 13], 20, 96, 16) == 64   # 13 + 20 = 33 -> the next power of two
    assert decode_window([9, 4, 12], 20, 96, 16) == 32   # 32 fits exactly
    assert decode_window([1], 2, 96, 16) == 16           # at least `smallest`
    assert decode_window([9, 4, 13], 20, 40, 16) == 40   # capped at the cache
    full, st_full = decode(model, st, active, jax.random.key(1), max_new=20, **kw)
    win, st_win = decode(model, st, active, jax.random.key(1), max_new=20, window=48, **kw)  # any width works
    np.testing.assert_array_equal(np.asarray(win.tokens), np.asarray(full.tokens))
    np.testing.assert_allclose(np.asarray(win.logps), np.asarray(full.logps), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(win.status), np.asarray(full.status))
    np.testing.assert_array_equal(np.asarray(st_win.cache.length), np.asarray(st_full.cache.length))
    for a, b in zip(st_win.cache.k + st_win.cache.v, st_full.cache.k + st_full.cache.v):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    # the idle row's 70 slots, most of them past the window, are intact
    np.testing.assert_array_equal(np.asarray(st_win.cache.v[0][3]), np.asarray(st.cache.v[0][3]))
    # appending an observation to rows 0 and 2 through a window of 32 slots: same logits and cache
    obs = jnp.asarray(rng.integers(0, cfg.vocab_size, (4, 16)), jnp.int32)
    n_obs = jnp.array([5, 0, 16, 0], jnp.int32)
    a_full = append(model, st, obs, n_obs, jnp.int32(0))
    a_win = append(model, st, obs, n_obs, jnp.int32(0), window=decode_window([9 + 5, 13 + 16], 0, 96, 16))
    np.testing.assert_allclose(np.asarray(a_win.logits), np.asarray(a_full.logits), atol=1e-5)
    for a, b in zip(a_win.cache.k + a_win.cache.v, a_full.cache.k + a_full.cache.v):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    # a window of 16 stops the 13-token row after 3 tokens (BUDGET), the others go on
    short, _ = decode(model, st, jnp.array([False, True, True, False]), jax.random.key(1),
                      max_new=8, window=16, **kw)
    assert list(np.asarray(short.n_new)) == [0, 8, 3, 0]
    assert int(short.status[2]) == BUDGET
    np.testing.assert_array_equal(np.asarray(short.tokens[2, :3]), np.asarray(full.tokens[2, :3]))


def test_decode_compiles_once_per_shape_bucket(tiny):
    _, model, cfg = tiny
    st = prefill(model, [[1, 2], [3, 4]], 40)
    kw = dict(**NO_STOP, stop_enabled=jnp.ones((2, 1), bool), eos_ids=jnp.array([-1], jnp.int32),
              max_new=5, params=SamplingParams(temperature=0.7, top_p=0.9))
    decode(model, st, jnp.ones(2, bool), jax.random.key(0), **kw)
    before = decode._cache_size() if hasattr(decode, "_cache_size") else None
    with jax.log_compiles(False):
        for i in range(3):
            decode(model, st, jnp.array([True, i % 2 == 0]), jax.random.key(i), **kw)
    if before is not None:
        assert decode._cache_size() == before


def test_filter_logits_top_k_and_top_p_against_numpy():
    logits = np.log(np.array([[0.5, 0.2, 0.15, 0.1, 0.05]], np.float32))
    k2 = np.asarray(filter_logits(jnp.asarray(logits), SamplingParams(top_k=2)))
    assert np.isfinite(k2).sum() == 2 and np.isfinite(k2[0, :2]).all()
    # nucleus 0.8: mass before each token 0, .5, .7, .85 -> keep the first three
    p = np.asarray(filter_logits(jnp.asarray(logits), SamplingParams(top_p=0.8)))
    assert np.isfinite(p[0]).tolist() == [True, True, True, False, False]
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)


def mass_before(logits: np.ndarray) -> np.ndarray:
    """[B, V] float64: each token's probability mass strictly before it in the stable
    descending order."""
    out = np.zeros(logits.shape)
    for b, row in enumerate(logits.astype(np.float64)):
        order = np.argsort(-row, kind="stable")
        probs = np.exp(row[order] - row.max())
        probs /= probs.sum()
        out[b, order] = np.cumsum(probs) - probs
    return out


def numpy_top_p(logits: np.ndarray, p: float) -> np.ndarray:
    """The nucleus as written: sort each row (stable, descending), keep the tokens whose mass
    strictly before them is < p, in vocabulary order."""
    return mass_before(logits) < p


@pytest.mark.parametrize("p", [0.31, 0.81, 0.95])  # not multiples of 1/50: no rounding at the cutoff
def test_top_p_equals_the_sorted_mask_put_back_with_ties_at_the_cutoff(p):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(64, 50)).astype(np.float32)
    # ties: rows of few distinct values, so the cutoff often falls inside a tied run
    logits[:32] = np.round(logits[:32] * 2) / 2
    logits[40] = 0.0                                   # all tied: the nucleus is the first tokens by index
    logits[41, :] = -np.inf
    logits[41, [3, 7, 9]] = [1.0, 1.0, 0.5]           # -inf tokens (a top-k cut) never kept
    got = np.isfinite(np.asarray(filter_logits(jnp.asarray(logits), SamplingParams(top_p=p))))
    want = numpy_top_p(logits, p)
    np.testing.assert_array_equal(got, want)
    # all tied (1/50 each): token i is kept iff i / 50 < p, the first ceil(50 p) by index
    assert want[40].sum() == int(np.ceil(p * 50)) and want[40, :want[40].sum()].all()


def test_decode_and_append_read_the_weights_without_copying_them(tiny):
    """nnx.jit would return every weight as an output: a fresh copy of the model per call (an
    extra weights-sized buffer and memcpy per decode turn). The weights stay the same buffers,
    the compiled outputs are the decode state alone, and a second call reuses the compilation."""
    _, model, cfg = tiny
    weights = jax.tree.leaves(nnx.state(model))
    before = [w.unsafe_buffer_pointer() for w in weights]
    st = prefill(model, [[1, 2, 3], [4, 5]], 32)
    kw = dict(**NO_STOP, stop_enabled=jnp.ones((2, 1), bool), eos_ids=jnp.array([-1], jnp.int32), max_new=4,
              params=SamplingParams(greedy=True), speed=SpeedPolicy())
    _, st = decode(model, st, jnp.ones(2, bool), jax.random.key(0), **kw)
    compiled = sampler.decode.jitted._cache_size()  # (other tests' shapes are in this cache too)
    _, st = decode(model, st, jnp.ones(2, bool), jax.random.key(1), **kw)
    assert [w.unsafe_buffer_pointer() for w in jax.tree.leaves(nnx.state(model))] == before
    assert sampler.decode.jitted._cache_size() == compiled
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(st))
    compiled = sampler.append.lower(model, st, jnp.ones((2, 4), jnp.int32), jnp.array([4, 3]), jnp.int32(0)).compile()
    assert compiled.memory_analysis().output_size_in_bytes <= state_bytes + 1024
    assert sum(w.nbytes for w in weights) > 2 * state_bytes  # the check would see a copy of them


def _rows(tree, idx):
    return [np.asarray(x)[idx] for x in jax.tree.leaves(tree)]


def test_decode_of_gathered_rows_equals_decode_of_the_whole_batch(tiny):
    """A decode on a working set (rows [3, 1] and a padding row) samples, for each row, what a
    decode of the whole batch samples for it with the same per-row keys, writes those rows back
    (cache, logits, stop state) and leaves the other rows as they were."""
    _, model, cfg = tiny
    rng = np.random.default_rng(5)
    prompts = [list(rng.integers(0, cfg.vocab_size, n)) for n in (7, 3, 11, 5)]
    st = prefill(model, prompts, 64)
    keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(9), jnp.arange(4))
    kw = dict(**NO_STOP, eos_ids=jnp.array([-1], jnp.int32), max_new=12,
              params=SamplingParams(temperature=1.0, top_p=0.9), speed=SpeedPolicy())
    full, st_full = decode(model, st, jnp.ones(4, bool), keys, stop_enabled=jnp.ones((4, 1), bool), **kw)
    idx = np.array([3, 1, 4])  # 4: padding (out of range), inactive
    part, st_part = decode(model, st, jnp.array([True, True, False]), keys[jnp.array([3, 1, 3])],
                           stop_enabled=jnp.ones((3, 1), bool), rows=jnp.asarray(idx), window=32, **kw)
    np.testing.assert_array_equal(np.asarray(part.tokens[:2]), np.asarray(full.tokens)[[3, 1]])
    np.testing.assert_allclose(np.asarray(part.logps[:2]), np.asarray(full.logps)[[3, 1]], atol=1e-5)
    assert int(part.n_new[2]) == 0 and int(part.steps) == 12
    for a, b in zip(_rows(st_part, [3, 1]), _rows(st_full, [3, 1])):
        np.testing.assert_allclose(a, b, atol=1e-5)
    for a, b in zip(_rows(st_part, [0, 2]), _rows(st, [0, 2])):
        np.testing.assert_array_equal(a, b)


def test_a_call_left_early_and_resumed_samples_what_one_call_samples(tiny):
    """exit_below: the call returns once at most that many rows run (they stay RUNNING); a second
    call with their offset and remaining budget continues each row's token stream exactly."""
    _, model, cfg = tiny
    prompts = [[1, 2, 3], [4, 5], [6], [7, 8]]
    st = prefill(model, prompts, 48)
    keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(2), jnp.arange(4))
    kw = dict(**NO_STOP, stop_enabled=jnp.ones((4, 1), bool), eos_ids=jnp.array([-1], jnp.int32), max_new=10,
              params=SamplingParams(temperature=1.0), speed=SpeedPolicy())
    budget = jnp.array([3, 10, 6, 10], jnp.int32)  # rows 0 and 2 stop early (BUDGET)
    one, _ = decode(model, st, jnp.ones(4, bool), keys, budget=budget, **kw)
    assert list(np.asarray(one.n_new)) == [3, 10, 6, 10]
    first, st1 = decode(model, st, jnp.ones(4, bool), keys, budget=budget, exit_below=jnp.int32(2), **kw)
    assert list(np.asarray(first.n_new)) == [3, 6, 6, 6] and int(first.steps) == 6
    assert list(np.asarray(first.status)) == [BUDGET, 0, BUDGET, 0]  # 0: RUNNING
    done = first.n_new
    second, _ = decode(model, st1, jnp.array([False, True, False, True]), keys, budget=budget - done,
                       offset=done, **kw)
    for r in (1, 3):
        got = np.concatenate([np.asarray(first.tokens[r, :6]), np.asarray(second.tokens[r, :4])])
        np.testing.assert_array_equal(got, np.asarray(one.tokens[r]))
        got = np.concatenate([np.asarray(first.logps[r, :6]), np.asarray(second.logps[r, :4])])
        np.testing.assert_allclose(got, np.asarray(one.logps[r]), atol=1e-5)


def test_prefill_shared_equals_appending_each_rows_prompt(tiny):
    """Rows with the same prompt share one prefill: every row ends up with what `append` of its
    own prompt gives it (keys, values, length, next-token logits)."""
    _, model, cfg = tiny
    a, b = [5, 6, 7, 8, 9], [10, 11]
    prompts = [a, a, b, a, b]
    ref = prefill(model, prompts, 40)
    empty = empty_state(init_cache(model.cfg, 5, 40), model.cfg.vocab_size)
    toks = jnp.asarray([a, b + [0, 0, 0], [0] * 5, [0] * 5], jnp.int32)  # 2 distinct + 2 padding rows
    shared = sampler.prefill_shared(model, empty, toks, jnp.array([5, 2, 0, 0], jnp.int32),
                                    jnp.array([0, 0, 1, 0, 1], jnp.int32), jnp.int32(0), window=16)
    np.testing.assert_array_equal(np.asarray(shared.cache.length), [5, 5, 2, 5, 2])
    np.testing.assert_allclose(np.asarray(shared.logits), np.asarray(ref.logits), atol=1e-5)
    for x, y in zip(shared.cache.k + shared.cache.v, ref.cache.k + ref.cache.v):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5)


def test_prefill_shared_with_a_common_prefix_equals_appending_each_rows_prompt(tiny):
    """The prompts' common start computed once in one row, its cache copied to the distinct
    prompts' rows, then each prompt's own tokens: every row holds what `append` of its whole
    prompt gives it (causal attention: a token's key and value depend on the tokens before it)."""
    _, model, cfg = tiny
    head = [3, 14, 15, 9, 2, 6, 5]
    a, b, c = head + [8, 9, 7], head + [10], head + [11, 12]
    prompts = [a, b, a, c, b, c]
    ref = prefill(model, prompts, 40)
    empty = empty_state(init_cache(model.cfg, 6, 40), model.cfg.vocab_size)
    prefix = jnp.asarray([head + [0] * 9], jnp.int32)                 # 7 tokens padded to 16
    toks = jnp.asarray([[8, 9, 7, 0], [10, 0, 0, 0], [11, 12, 0, 0], [0] * 4], jnp.int32)
    shared = sampler.prefill_shared(model, empty, toks, jnp.array([3, 1, 2, 0], jnp.int32),
                                    jnp.array([0, 1, 0, 2, 1, 2], jnp.int32), jnp.int32(0), window=16,
                                    prefix=prefix, prefix_n=jnp.int32(7))
    np.testing.assert_array_equal(np.asarray(shared.cache.length), [10, 8, 10, 9, 8, 9])
    np.testing.assert_allclose(np.asarray(shared.logits), np.asarray(ref.logits), atol=1e-5)
    for x, y in zip(shared.cache.k + shared.cache.v, ref.cache.k + ref.cache.v):  # (padding: never written)
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5)


@pytest.mark.parametrize("p", [0.5, 0.95])
def test_top_p_bisection_equals_the_sort_at_a_vocabulary_of_49152(p):
    """The bisection (default) against the sort of the whole vocabulary and numpy's stable sort,
    on rows of SmolLM2's vocabulary size: peaked and flat rows, a top-k cut, a temperature."""
    rng = np.random.default_rng(1)
    logits = (rng.normal(size=(6, 49152)) * np.array([[8.0], [3.0], [1.0], [0.3], [3.0], [3.0]])).astype(np.float32)
    logits[4, :5] = logits[4].max() + 1.0        # five tied at the top
    for params in (SamplingParams(top_p=p), SamplingParams(top_p=p, top_k=100, temperature=0.7)):
        got = np.isfinite(np.asarray(filter_logits(jnp.asarray(logits), params)))
        by_sort = np.isfinite(np.asarray(filter_logits(
            jnp.asarray(logits), dataclasses.replace(params, nucleus="sort"))))
        np.testing.assert_array_equal(got, by_sort)
        scaled = logits / params.temperature
        if params.top_k:
            scaled = np.where(scaled < np.sort(scaled, axis=-1)[:, -params.top_k:-params.top_k + 1],
                              -np.inf, scaled)
        # numpy in float64: exact but where the mass before a token is within f32 rounding of
        # p (a flat row's cutoff sums ~40,000 probabilities of ~2e-5: neighbours differ by less)
        before = mass_before(scaled)
        clear = np.abs(before - p) > 1e-5
        np.testing.assert_array_equal(got[clear], (before < p)[clear])
        assert (~clear).sum() <= 12                # of 294,912
    assert 1 < got[3].sum() < got.shape[1]         # the flat row keeps many tokens, not all
    with pytest.raises(ValueError, match="nucleus"):
        SamplingParams(top_p=p, nucleus="heap")
