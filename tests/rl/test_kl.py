"""The divergence definitions and naive losses (rl/kl.py) against a float64 numpy oracle."""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from searche1_jax.rl.kl import forward_kl

from tests.rl.kl_cases import NAIVE, inputs, np_div, np_logsoftmax


@pytest.mark.parametrize("kind", ["forward", "reverse", "jsd"])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_naive_losses_match_numpy(kind, temperature):
    hs, w, ht, wt, mask = inputs(0)
    zs, zt = hs @ w, ht @ wt
    got = NAIVE[kind](jnp.asarray(zs), jnp.asarray(zt), mask, temperature=temperature)
    np.testing.assert_allclose(float(got), np_div(zs, zt, mask, kind, 0.3, temperature), rtol=1e-6, atol=1e-7)


def test_forward_kl_gradient_is_softmax_minus_teacher_probs():
    # METHOD §3.4: d/dz_S of Σ_v p_T (log p_T − log p_S) is softmax(z_S) − p_T (per token,
    # divided by the number of masked tokens); masked tokens and the teacher get none.
    _, _, _, _, mask = inputs(1)
    r = np.random.default_rng(1)
    zs, zt = r.normal(size=(11, 83)).astype(np.float32), r.normal(size=(11, 83)).astype(np.float32)
    gs, gt = jax.grad(forward_kl, argnums=(0, 1))(zs, zt, mask)
    ps, pt = np.exp(np_logsoftmax(zs.astype(np.float64))), np.exp(np_logsoftmax(zt.astype(np.float64)))
    np.testing.assert_allclose(gs, (ps - pt) * mask[:, None] / mask.sum(), rtol=1e-5, atol=1e-7)
    assert np.all(np.asarray(gt) == 0)


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
