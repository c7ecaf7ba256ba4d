from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from searche1_jax.rl.logprobs import token_logps_and_entropy


def np_logps_entropy(h, w, targets, temperature):
    z = h.astype(np.float64) @ w.astype(np.float64) / temperature
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    lp = np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    return lp, -(np.exp(logp) * logp).sum(-1)


def naive(h, w, targets, temperature):
    logp = jax.nn.log_softmax(h @ w / temperature, axis=-1)
    lp = jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
    return lp, -(jnp.exp(logp) * logp).sum(-1)


def _inputs(seed, lead=(3, 5), d=16, v=97):
    r = np.random.default_rng(seed)
    h = r.normal(size=lead + (d,)).astype(np.float32)
    w = (r.normal(size=(d, v)) / np.sqrt(d)).astype(np.float32)
    t = r.integers(0, v, lead).astype(np.int32)
    return h, w, t


@pytest.mark.parametrize("chunk,temperature", [(1, 0.7), (4, 1.0), (7, 0.7), (64, 1.0)])
def test_values_match_numpy(chunk, temperature):
    h, w, t = _inputs(0)
    lp, ent = token_logps_and_entropy(h, w, t, chunk=chunk, temperature=temperature)
    want_lp, want_ent = np_logps_entropy(h, w, t, temperature)
    assert lp.shape == t.shape and ent.shape == t.shape and lp.dtype == jnp.float32
    np.testing.assert_allclose(lp, want_lp, rtol=1e-6, atol=2e-6)
    np.testing.assert_allclose(ent, want_ent, rtol=1e-6, atol=2e-6)


@partial(jax.jit, static_argnums=(5, 6))
def _grads(h, w, t, a, b, chunk, temperature):
    def obj(fn):
        def f(h, w):
            lp, ent = fn(h, w)
            return (lp * a).sum() + (ent * b).sum()
        return jax.grad(f, argnums=(0, 1))(h, w)
    fused = obj(lambda h, w: token_logps_and_entropy(h, w, t, chunk=chunk, temperature=temperature))
    ref = obj(lambda h, w: naive(h, w, t, temperature))
    return fused, ref


@pytest.mark.parametrize("chunk", [1, 7, 15])   # 7 does not divide the 15 tokens
def test_gradients_match_naive_jax_grad(chunk):
    h, w, t = _inputs(1)
    r = np.random.default_rng(2)
    a, b = r.normal(size=t.shape).astype(np.float32), r.normal(size=t.shape).astype(np.float32)
    fused, ref = _grads(h, w, t, a, b, chunk, 0.8)
    for x, y in zip(fused, ref):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


def test_flat_input_and_bf16_head():
    h, w, t = _inputs(3, lead=(6,))
    lp, ent = token_logps_and_entropy(jnp.asarray(h, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16), t, chunk=4)
    want_lp, want_ent = np_logps_entropy(np.asarray(jnp.asarray(h, jnp.bfloat16), np.float32),
                                         np.asarray(jnp.asarray(w, jnp.bfloat16), np.float32), t, 1.0)
    assert lp.dtype == jnp.float32
    np.testing.assert_allclose(lp, want_lp, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ent, want_ent, rtol=1e-4, atol=1e-4)
    g = jax.grad(lambda w: token_logps_and_entropy(jnp.asarray(h, jnp.bfloat16), w, t, chunk=4)[0].sum())(
        jnp.asarray(w, jnp.bfloat16))
    assert g.dtype == jnp.bfloat16


def test_refuses_bad_arguments():
    h, w, t = _inputs(4)
    with pytest.raises(ValueError, match="leading"):
        token_logps_and_entropy(h, w, t[:, :2], chunk=4)
    with pytest.raises(ValueError, match="chunk must be"):
        token_logps_and_entropy(h, w, t, chunk=0)
    with pytest.raises(ValueError, match="head must be"):
        token_logps_and_entropy(h, w.T, t, chunk=4)


def test_logit_barrier_changes_neither_values_nor_gradients():
    # barrier=True (SpeedPolicy.logit_barrier, CPU) only fences the logit matmul from the softmax.
    h, w, t = _inputs(4)

    def run(barrier):
        f = lambda h, w: token_logps_and_entropy(h, w, t, chunk=4, barrier=barrier)  # noqa: E731
        out = f(h, w)
        grads = jax.grad(lambda h, w: sum(x.sum() for x in f(h, w)), argnums=(0, 1))(h, w)
        return out + grads

    for a, b in zip(run(True), run(False)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
