"""The fused chunked divergences (rl/fused_kl.py) against the naive losses and a numpy oracle."""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from searche1_jax.rl import ofsd
from searche1_jax.rl.fused_kl import fused_divergence_sum, fused_forward_kl, fused_forward_kl_sum
from searche1_jax.rl.kl import forward_kl

from tests.rl.kl_cases import fused_and_naive, inputs, np_div


@pytest.mark.parametrize("chunk", [1, 4, 32])    # 4 does not divide N = 11; 32 > N
def test_fused_forward_kl_value_and_grad_match_naive(chunk):
    hs, w, ht, wt, mask = inputs(2)
    (v1, g1), (v2, g2) = fused_and_naive(hs, w, ht, wt, mask, chunk=chunk, kind="forward",
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
    hs, w, ht, wt, mask = inputs(3)
    (v1, g1), (v2, g2) = fused_and_naive(hs, w, ht, wt, mask, chunk=3, kind=kind,
                                          temperature=temperature, eager=eager, logps=logps,
                                          vocab_chunk=None)
    np.testing.assert_allclose(float(v1), float(v2), rtol=1e-5, atol=1e-6)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


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
    hs, w, ht, wt, mask = inputs(4)
    g = jax.grad(lambda ht, wt: fused_forward_kl(hs, w, ht, wt, None, mask, chunk=4), argnums=(0, 1))(ht, wt)
    assert all(np.all(np.asarray(x) == 0) for x in g)
    lt = jax.nn.log_softmax(ht @ wt, -1)
    g = jax.grad(lambda lt: fused_forward_kl(hs, w, None, None, lt, mask, chunk=4))(lt)
    assert np.all(np.asarray(g) == 0)


def test_sum_and_count_form_accumulates_exactly():
    hs, w, ht, wt, mask = inputs(5, n=12)
    s1, c1 = fused_forward_kl_sum(hs[:5], w, ht[:5], wt, None, mask[:5], chunk=2)
    s2, c2 = fused_forward_kl_sum(hs[5:], w, ht[5:], wt, None, mask[5:], chunk=4)
    whole = fused_forward_kl(hs, w, ht, wt, None, mask, chunk=3)
    np.testing.assert_allclose(float((s1 + s2) / (c1 + c2)), float(whole), rtol=1e-6)
    assert float(c1 + c2) == mask.sum()


def test_all_masked_gives_zero_loss_and_zero_grad():
    hs, w, ht, wt, _ = inputs(6)
    z = np.zeros(hs.shape[0], np.float32)
    v, g = jax.value_and_grad(lambda hs: fused_forward_kl(hs, w, ht, wt, None, z, chunk=4))(hs)
    assert float(v) == 0.0 and np.all(np.asarray(g) == 0)
    assert float(forward_kl(hs @ w, ht @ wt, z)) == 0.0


def test_ofsd_reexports_the_losses():
    from searche1_jax.rl import fused_kl, kl
    for name in ("fused_divergence_sum", "fused_forward_kl", "fused_forward_kl_sum",
                 "fused_generalized_jsd", "fused_reverse_kl"):
        assert getattr(ofsd, name) is getattr(fused_kl, name)
    for name in ("divergence_from_logps", "forward_kl", "generalized_jsd", "reverse_kl"):
        assert getattr(ofsd, name) is getattr(kl, name)
    assert ofsd.fused_forward_kl is fused_forward_kl and ofsd.forward_kl is forward_kl


def test_fused_refuses_bad_teacher_arguments():
    hs, w, ht, wt, mask = inputs(7)
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

@pytest.mark.parametrize("eager,vocab_chunk", [(True, 2048), (False, None), (False, 10)])
def test_logit_barrier_changes_nothing_but_speed(eager, vocab_chunk):
    # barrier=True (SpeedPolicy.logit_barrier, CPU) only fences the logit matmul from the softmax.
    hs, w, ht, wt, mask = inputs(9)
    args = dict(chunk=4, kind="forward", temperature=0.7, eager=eager, logps=False, vocab_chunk=vocab_chunk)
    (v0, g0), _ = fused_and_naive(hs, w, ht, wt, mask, **args)
    (v1, g1), _ = fused_and_naive(hs, w, ht, wt, mask, barrier=True, **args)
    np.testing.assert_allclose(float(v1), float(v0), rtol=1e-6)
    for a, b in zip(g1, g0):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


# ---- properties ----

@partial(jax.jit, static_argnames=("chunk", "eager"))
def _fused_value_grad(hs, w, ht, wt, mask, chunk, eager=True):
    return jax.value_and_grad(lambda hs, w: fused_forward_kl(hs, w, ht, wt, None, mask, chunk=chunk,
                                                             grad_in_forward=eager),
                              argnums=(0, 1))(hs, w)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 100_000), chunk=st.sampled_from([5]), eager=st.booleans())
def test_masked_tokens_change_neither_fused_loss_nor_grad(seed, chunk, eager):
    hs, w, ht, wt, mask = inputs(seed % 1000)
    r = np.random.default_rng(seed)
    junk = lambda x: np.where(mask[:, None] > 0, x, r.normal(0, 3, x.shape)).astype(np.float32)  # noqa: E731
    v1, (gh1, gw1) = _fused_value_grad(hs, w, ht, wt, mask, chunk, eager)
    v2, (gh2, gw2) = _fused_value_grad(junk(hs), w, junk(ht), wt, mask, chunk, eager)
    np.testing.assert_allclose(float(v1), float(v2), rtol=1e-6)
    np.testing.assert_allclose(gw1, gw2, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gh1[mask > 0], gh2[mask > 0], rtol=1e-6, atol=1e-7)
    assert np.all(np.asarray(gh2)[mask == 0] == 0)
