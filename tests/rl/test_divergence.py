from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from searche1_jax.rl import ofsd
from searche1_jax.rl.divergence import (forward_kl, fused_divergence_sum, fused_forward_kl,
                                        fused_forward_kl_sum, generalized_jsd, reverse_kl)

# ---- independent numpy oracle, float64 ----


def np_logsoftmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_div(zs, zt, mask, kind="forward", beta=0.5, temperature=1.0):
    ls = np_logsoftmax(np.asarray(zs, np.float64) / temperature)
    lt = np_logsoftmax(np.asarray(zt, np.float64) / temperature)
    ps, pt = np.exp(ls), np.exp(lt)
    if kind == "forward":
        d = (pt * (lt - ls)).sum(-1)
    elif kind == "reverse":
        d = (ps * (ls - lt)).sum(-1)
    else:
        m = beta * pt + (1 - beta) * ps
        d = beta * (pt * (lt - np.log(m))).sum(-1) + (1 - beta) * (ps * (ls - np.log(m))).sum(-1)
    mask = np.asarray(mask, np.float64)
    return (d * mask).sum() / max(mask.sum(), 1.0)


def _inputs(seed, n=11, d=12, v=83):
    r = np.random.default_rng(seed)
    f = lambda *s: r.normal(size=s).astype(np.float32)  # noqa: E731
    hs, ht = f(n, d), f(n, d)
    w, wt = f(d, v) / np.sqrt(d), f(d, v) / np.sqrt(d)
    mask = (r.random(n) < 0.7).astype(np.float32)
    mask[0] = 1.0
    return hs, w.astype(np.float32), ht, wt.astype(np.float32), mask


NAIVE = {"forward": forward_kl, "reverse": reverse_kl,
         "jsd": lambda s, t, m, temperature: generalized_jsd(s, t, m, beta=0.3, temperature=temperature)}


@pytest.mark.parametrize("kind", ["forward", "reverse", "jsd"])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_naive_losses_match_numpy(kind, temperature):
    hs, w, ht, wt, mask = _inputs(0)
    zs, zt = hs @ w, ht @ wt
    got = NAIVE[kind](jnp.asarray(zs), jnp.asarray(zt), mask, temperature=temperature)
    np.testing.assert_allclose(float(got), np_div(zs, zt, mask, kind, 0.3, temperature), rtol=1e-6, atol=1e-7)


def test_forward_kl_gradient_is_softmax_minus_teacher_probs():
    # METHOD §3.4: d/dz_S of Σ_v p_T (log p_T − log p_S) is softmax(z_S) − p_T (per token,
    # divided by the number of masked tokens); masked tokens and the teacher get none.
    _, _, _, _, mask = _inputs(1)
    r = np.random.default_rng(1)
    zs, zt = r.normal(size=(11, 83)).astype(np.float32), r.normal(size=(11, 83)).astype(np.float32)
    gs, gt = jax.grad(forward_kl, argnums=(0, 1))(zs, zt, mask)
    ps, pt = np.exp(np_logsoftmax(zs.astype(np.float64))), np.exp(np_logsoftmax(zt.astype(np.float64)))
    np.testing.assert_allclose(gs, (ps - pt) * mask[:, None] / mask.sum(), rtol=1e-5, atol=1e-7)
    assert np.all(np.asarray(gt) == 0)


@partial(jax.jit, static_argnames=("chunk", "kind", "temperature", "eager", "logps", "vocab_chunk"))
def _fused_and_naive(hs, w, ht, wt, mask, *, chunk, kind, temperature, eager, logps,
                     vocab_chunk=2048):
    def fused(hs, w):
        kw = dict(teacher_logps=jax.nn.log_softmax(ht @ wt, -1)) if logps else dict(
            teacher_hidden=ht, teacher_head=wt)
        s, c = fused_divergence_sum(hs, w, mask=mask, chunk=chunk, temperature=temperature, kind=kind,
                                    beta=0.3, grad_in_forward=eager, vocab_chunk=vocab_chunk, **kw)
        return s / c

    def naive(hs, w):
        return NAIVE[kind](hs @ w, ht @ wt, mask, temperature=temperature)

    return (jax.value_and_grad(fused, argnums=(0, 1))(hs, w),
            jax.value_and_grad(naive, argnums=(0, 1))(hs, w))


@pytest.mark.parametrize("chunk", [1, 4, 32])    # 4 does not divide N = 11; 32 > N
def test_fused_forward_kl_value_and_grad_match_naive(chunk):
    hs, w, ht, wt, mask = _inputs(2)
    (v1, g1), (v2, g2) = _fused_and_naive(hs, w, ht, wt, mask, chunk=chunk, kind="forward",
                                          temperature=1.0, eager=False, logps=False)
    np.testing.assert_allclose(float(v1), float(v2), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(float(v1), np_div(hs @ w, ht @ wt, mask), rtol=1e-5)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind,temperature,eager,logps", [
    ("forward", 0.7, True, False),
    ("forward", 0.7, False, True),    # teacher given as precomputed log-probs
    ("reverse", 1.3, True, True),
    ("jsd", 0.8, False, False),
])
def test_token_chunked_variants_match_naive(kind, temperature, eager, logps):
    hs, w, ht, wt, mask = _inputs(3)
    (v1, g1), (v2, g2) = _fused_and_naive(hs, w, ht, wt, mask, chunk=3, kind=kind,
                                          temperature=temperature, eager=eager, logps=logps,
                                          vocab_chunk=None)
    np.testing.assert_allclose(float(v1), float(v2), rtol=1e-5, atol=1e-6)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind,logps,chunk,vocab_chunk,temperature,eager", [
    # 4 does not divide N = 11, 10 does not divide V = 83: remainder steps in both loops
    *[(k, lp, 4, 10, 0.7, False) for k in ("forward", "reverse", "jsd") for lp in (False, True)],
    ("forward", False, 32, 83, 1.3, False),  # one token chunk larger than N, one slice of exactly V
    # grad_in_forward adds each chunk's head gradient a vocabulary slice at a time
    ("forward", False, 4, 10, 0.7, True),   # the hand-written forward-KL gradient
    ("forward", True, 4, 10, 1.3, True),    # ... with the teacher given as log-probs
    ("jsd", True, 4, 10, 1.3, True),
])
def test_vocab_chunked_grad_matches_naive(kind, logps, chunk, vocab_chunk, temperature, eager):
    # The default path: online log-sum-exp forward, backward over vocabulary slices writing each
    # slice of d/dhead once. Exact gradients: jax.grad of the naive [N, V] loss is the oracle.
    hs, w, ht, wt, mask = _inputs(8)
    (v1, g1), (v2, g2) = _fused_and_naive(hs, w, ht, wt, mask, chunk=chunk, kind=kind,
                                          temperature=temperature, eager=eager, logps=logps,
                                          vocab_chunk=vocab_chunk)
    np.testing.assert_allclose(float(v1), float(v2), rtol=1e-5, atol=1e-6)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_vocab_chunked_backward_builds_no_vocab_wide_temporary():
    # XLA's planned temporaries (from shapes, nothing runs): the tile path holds neither a
    # [chunk, V] logit buffer nor a [d, V] head-gradient temporary (only the [d, V] output);
    # the token-chunked path holds both. d = 32, V = 8192: [d, V] f32 is 1 MiB, [chunk, V] 2 MiB.
    n, d, v = 512, 32, 8192
    args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in ((n, d), (d, v), (n, d), (d, v), (n,))]

    def temp_bytes(vocab_chunk):
        loss = lambda hs, w, ht, wt, m: fused_forward_kl(hs, w, ht, wt, None, m, chunk=64,  # noqa: E731
                                                         vocab_chunk=vocab_chunk, grad_in_forward=False)
        fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
        return fn.lower(*args).compile().memory_analysis().temp_size_in_bytes

    assert temp_bytes(500) < d * v * 4 <= temp_bytes(None)


def test_grad_in_forward_memory_is_a_few_chunk_logit_buffers():
    # grad_in_forward holds one chunk's [chunk, V] logits and their gradient (2 MiB each here)
    # and adds the chunk's head gradient into d/dhead slice by slice; its planned temporaries
    # must not grow with N beyond the [N, d] hidden-state gradient.
    d, v, chunk = 32, 8192, 64

    def temp_bytes(n):
        args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in ((n, d), (d, v), (n, d), (d, v), (n,))]
        loss = lambda hs, w, ht, wt, m: fused_forward_kl(hs, w, ht, wt, None, m, chunk=chunk,  # noqa: E731
                                                         vocab_chunk=512, grad_in_forward=True)
        fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
        return fn.lower(*args).compile().memory_analysis().temp_size_in_bytes

    small, large = temp_bytes(512), temp_bytes(2048)
    assert small <= 6 * chunk * v * 4, small
    assert large - small <= 4 * (2048 - 512) * d * 4, (small, large)   # [N, d]-sized growth only


def test_fused_teacher_is_under_stop_gradient():
    hs, w, ht, wt, mask = _inputs(4)
    g = jax.grad(lambda ht, wt: fused_forward_kl(hs, w, ht, wt, None, mask, chunk=4), argnums=(0, 1))(ht, wt)
    assert all(np.all(np.asarray(x) == 0) for x in g)
    lt = jax.nn.log_softmax(ht @ wt, -1)
    g = jax.grad(lambda lt: fused_forward_kl(hs, w, None, None, lt, mask, chunk=4))(lt)
    assert np.all(np.asarray(g) == 0)


def test_sum_and_count_form_accumulates_exactly():
    hs, w, ht, wt, mask = _inputs(5, n=12)
    s1, c1 = fused_forward_kl_sum(hs[:5], w, ht[:5], wt, None, mask[:5], chunk=2)
    s2, c2 = fused_forward_kl_sum(hs[5:], w, ht[5:], wt, None, mask[5:], chunk=4)
    whole = fused_forward_kl(hs, w, ht, wt, None, mask, chunk=3)
    np.testing.assert_allclose(float((s1 + s2) / (c1 + c2)), float(whole), rtol=1e-6)
    assert float(c1 + c2) == mask.sum()


def test_all_masked_gives_zero_loss_and_zero_grad():
    hs, w, ht, wt, _ = _inputs(6)
    z = np.zeros(hs.shape[0], np.float32)
    v, g = jax.value_and_grad(lambda hs: fused_forward_kl(hs, w, ht, wt, None, z, chunk=4))(hs)
    assert float(v) == 0.0 and np.all(np.asarray(g) == 0)
    assert float(forward_kl(hs @ w, ht @ wt, z)) == 0.0


def test_ofsd_reexports_the_losses():
    assert ofsd.fused_forward_kl is fused_forward_kl and ofsd.forward_kl is forward_kl


def test_fused_refuses_bad_teacher_arguments():
    hs, w, ht, wt, mask = _inputs(7)
    with pytest.raises(ValueError, match="either as teacher_logps"):
        fused_forward_kl(hs, w, ht, wt, jnp.zeros((11, 83)), mask)
    with pytest.raises(ValueError, match="needs teacher_hidden and teacher_head"):
        fused_forward_kl(hs, w, ht, None, None, mask)
    with pytest.raises(ValueError, match="teacher_logps must be"):
        fused_forward_kl(hs, w, None, None, jnp.zeros((11, 82)), mask)
    with pytest.raises(ValueError, match="kind must be one of"):
        fused_divergence_sum(hs, w, ht, wt, None, mask, kind="tv")
    with pytest.raises(ValueError, match="vocab_chunk must be >= 1"):
        fused_forward_kl(hs, w, ht, wt, None, mask, vocab_chunk=0)


# ---- properties ----

@partial(jax.jit, static_argnames=("kind",))
def _div(zs, zt, mask, kind):
    return NAIVE[kind](zs, zt, mask, temperature=1.0)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 100_000), scale=st.floats(0.01, 8.0), kind=st.sampled_from(["forward", "reverse", "jsd"]))
def test_divergence_nonnegative_and_zero_iff_equal(seed, scale, kind):
    r = np.random.default_rng(seed)
    zs = (r.normal(size=(4, 50)) * scale).astype(np.float32)
    zt = (r.normal(size=(4, 50)) * scale).astype(np.float32)
    ones = np.ones(4, np.float32)
    d = float(_div(zs, zt, ones, kind))
    assert d >= 0.0
    assert d == pytest.approx(np_div(zs, zt, ones, kind, 0.3), rel=1e-4, abs=1e-6)
    # Equal distributions (also up to a per-token logit shift) give 0.
    shift = r.normal(size=(4, 1)).astype(np.float32)
    assert abs(float(_div(zs, zs + shift, ones, kind))) < 1e-5
    # Different distributions give > 0 (the oracle says how much; it is far from 0 here).
    if np_div(zs, zt, ones, kind, 0.3) > 1e-4:
        assert d > 0.0


@partial(jax.jit, static_argnames=("chunk", "eager"))
def _fused_value_grad(hs, w, ht, wt, mask, chunk, eager=True):
    return jax.value_and_grad(lambda hs, w: fused_forward_kl(hs, w, ht, wt, None, mask, chunk=chunk,
                                                             grad_in_forward=eager),
                              argnums=(0, 1))(hs, w)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 100_000), chunk=st.sampled_from([5]), eager=st.booleans())
def test_masked_tokens_change_neither_fused_loss_nor_grad(seed, chunk, eager):
    hs, w, ht, wt, mask = _inputs(seed % 1000)
    r = np.random.default_rng(seed)
    junk = lambda x: np.where(mask[:, None] > 0, x, r.normal(0, 3, x.shape)).astype(np.float32)  # noqa: E731
    v1, (gh1, gw1) = _fused_value_grad(hs, w, ht, wt, mask, chunk, eager)
    v2, (gh2, gw2) = _fused_value_grad(junk(hs), w, junk(ht), wt, mask, chunk, eager)
    np.testing.assert_allclose(float(v1), float(v2), rtol=1e-6)
    np.testing.assert_allclose(gw1, gw2, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gh1[mask > 0], gh2[mask > 0], rtol=1e-6, atol=1e-7)
    assert np.all(np.asarray(gh2)[mask == 0] == 0)
