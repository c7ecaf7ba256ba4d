from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from searche1_jax.rl.grpo import (AGGREGATIONS, aggregate, aggregate_count, check_unique_group_ids,
                                  group_advantages, grpo_loss, grpo_loss_terms, kl_penalty)

# ---- independent numpy oracle (written from METHOD §2, loops not vectorised tricks) ----


def np_advantages(r, ids, eps=1e-6):
    out = np.zeros(len(r))
    for i in range(len(r)):
        grp = [r[j] for j in range(len(r)) if ids[j] == ids[i]]
        if len(grp) == 1:
            out[i] = 0.0
            continue
        mu = sum(grp) / len(grp)
        sd = (sum((x - mu) ** 2 for x in grp) / (len(grp) - 1)) ** 0.5
        out[i] = (r[i] - mu) / (sd + eps)
    return out


def np_grpo(lp, old, ref, adv, mask, ent, clip=0.2, clip_high=None, dual=None, beta=0.001,
            est="k3", ent_coef=0.001, agg="token-mean"):
    lp, old, mask = (np.asarray(x, np.float64) for x in (lp, old, mask))
    adv = np.asarray(adv, np.float64)
    if adv.ndim == 1:
        adv = np.repeat(adv[:, None], lp.shape[1], 1)
    hi = clip if clip_high is None else clip_high
    ratio = np.exp(lp - old)
    per = np.zeros_like(lp)
    clipped = np.zeros_like(lp)
    B, T = lp.shape
    for b in range(B):
        for t in range(T):
            a, rho = adv[b, t], ratio[b, t]
            unclipped, cl = -a * rho, -a * min(max(rho, 1 - clip), 1 + hi)
            pg = max(unclipped, cl)
            clipped[b, t] = float(cl > unclipped)
            if dual is not None and a < 0:
                pg = min(pg, -dual * a)
            x = pg
            if ref is not None:
                d = ref[b, t] - lp[b, t]
                kl = {"k1": -d, "k2": 0.5 * d * d, "k3": min(np.exp(d) - d - 1, 10.0)}[est]
                x += beta * kl
            if ent is not None:
                x -= ent_coef * ent[b, t]
            per[b, t] = x
    if agg == "token-mean":
        loss = (per * mask).sum() / max(mask.sum(), 1)
    else:
        rows = []
        for b in range(B):
            if mask[b].sum() == 0:
                continue
            s = (per[b] * mask[b]).sum()
            rows.append(s if agg == "seq-mean-token-sum" else s / mask[b].sum())
        loss = np.mean(rows) if rows else 0.0
    n = max(mask.sum(), 1)
    return loss, {"clip_frac": (clipped * mask).sum() / n, "ratio_mean": (ratio * mask).sum() / n,
                  "approx_kl": ((old - lp) * mask).sum() / n}


def _batch(seed, B=4, T=7, adv_2d=False):
    r = np.random.default_rng(seed)
    lp = r.normal(-2, 0.5, (B, T)).astype(np.float32)
    old = (lp + r.normal(0, 0.3, (B, T))).astype(np.float32)
    ref = (lp + r.normal(0, 0.3, (B, T))).astype(np.float32)
    adv = r.normal(0, 1, (B, T) if adv_2d else (B,)).astype(np.float32)
    mask = (r.random((B, T)) < 0.7).astype(np.float32)
    mask[0] = 0  # one fully masked row
    ent = r.random((B, T)).astype(np.float32) * 3
    return lp, old, ref, adv, mask, ent


def test_group_advantages_match_numpy_oracle():
    r = np.array([1, 0, 0, 1, 1, 0.5, 0, 0, 1], np.float32)
    ids = np.array([7, 7, 7, 3, 3, 3, 9, 9, 42])
    np.testing.assert_allclose(group_advantages(r, ids), np_advantages(r, ids), rtol=1e-6, atol=1e-6)


def test_group_of_one_and_constant_group_get_zero_advantage():
    adv = group_advantages([1.0, 1.0, 1.0, 0.3], ["a", "a", "a", "b"])
    np.testing.assert_array_equal(adv, [0, 0, 0, 0])


def test_group_advantages_refuse_bad_shapes():
    with pytest.raises(ValueError, match="must both be"):
        group_advantages([1.0, 0.0], [1])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.sampled_from([0.0, 1.0, 0.5])), min_size=1, max_size=20))
def test_advantages_have_zero_mean_per_group(rows):
    ids = np.array([g for g, _ in rows])
    r = np.array([x for _, x in rows], np.float32)
    adv = group_advantages(r, ids)
    for g in np.unique(ids):
        assert abs(adv[ids == g].mean()) < 1e-5
    np.testing.assert_allclose(adv, np_advantages(r, ids), rtol=1e-5, atol=1e-5)


def test_check_unique_group_ids_refuses_reuse_across_steps():
    seen = check_unique_group_ids([0, 0, 0, 1, 1, 1])       # rows of a group share an id
    seen = check_unique_group_ids(["s1-0", "s1-1"], seen)
    assert seen == frozenset({0, 1, "s1-0", "s1-1"})
    with pytest.raises(ValueError, match="already used by an earlier step"):
        check_unique_group_ids([2, 1], seen)


@pytest.mark.parametrize("est", ["k1", "k2", "k3"])
def test_kl_estimators(est):
    lp = np.array([-1.0, -2.0, -0.5], np.float32)
    ref = np.array([-1.5, -2.0, -0.1], np.float32)
    d = ref.astype(np.float64) - lp
    want = {"k1": -d, "k2": 0.5 * d ** 2, "k3": np.exp(d) - d - 1}[est]
    np.testing.assert_allclose(kl_penalty(jnp.asarray(lp), jnp.asarray(ref), est), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"])
@pytest.mark.parametrize("variant", [
    dict(),
    dict(clip_high=0.28),
    dict(dual=3.0),
    dict(est="k1", beta=0.1, ent_coef=0.01),
    dict(est="k2", beta=0.05),
    dict(no_ref=True, no_ent=True),
    dict(adv_2d=True),
])
def test_grpo_loss_matches_numpy_oracle(agg, variant):
    v = dict(variant)
    lp, old, ref, adv, mask, ent = _batch(1, adv_2d=v.pop("adv_2d", False))
    if v.pop("no_ref", False):
        ref = None
    if v.pop("no_ent", False):
        ent = None
    want, wm = np_grpo(lp, old, ref, adv, mask, ent, clip=0.2, clip_high=v.get("clip_high"),
                       dual=v.get("dual"), beta=v.get("beta", 0.001), est=v.get("est", "k3"),
                       ent_coef=v.get("ent_coef", 0.001), agg=agg)
    loss, m = grpo_loss(lp, old, ref, adv, mask, ent, clip_eps=0.2, clip_eps_high=v.get("clip_high"),
                        dual_clip_c=v.get("dual"), kl_coef=v.get("beta", 0.001),
                        kl_estimator=v.get("est", "k3"), entropy_coef=v.get("ent_coef", 0.001), agg=agg)
    np.testing.assert_allclose(float(loss), want, rtol=1e-6, atol=1e-6)
    for k in wm:
        np.testing.assert_allclose(float(m[k]), wm[k], rtol=1e-6, atol=1e-6)


def test_dual_clip_caps_negative_advantage_loss():
    # A = -1, ratio e^2 ≈ 7.39: PPO loss would be 7.39; dual clip c=3 caps it at 3.
    loss, _ = grpo_loss(jnp.array([[0.0]]), jnp.array([[-2.0]]), None, jnp.array([-1.0]),
                        jnp.array([[1.0]]), None, dual_clip_c=3.0)
    assert float(loss) == pytest.approx(3.0)


def test_token_sum_terms_reassemble_token_mean_over_micro_batches():
    lp, old, ref, adv, mask, ent = _batch(2, B=6)
    full, _ = grpo_loss(lp, old, ref, adv, mask, ent)
    parts = [grpo_loss_terms(lp[s], old[s], ref[s], adv[s], mask[s], ent[s])
             for s in (slice(0, 2), slice(2, 6))]
    total = sum(p["loss"].sum() for p in parts) / sum(p["mask"].sum() for p in parts)
    np.testing.assert_allclose(float(total), float(full), rtol=1e-6)


def _uneven_micro_batches(seed):
    """[M=4, B=3, T=9] per-token values (micro-batch means near 2, 0, -1) and a mask whose
    micro-batches hold 2, 9, 27 and 0 tokens."""
    r = np.random.default_rng(seed)
    x = (r.normal(0, 1, (4, 3, 9)) + np.array([2.0, 0.0, -1.0, 0.0])[:, None, None]).astype(np.float32)
    mask = np.zeros((4, 3, 9), np.float32)
    mask[0, 0, :2] = 1                           # 2 tokens
    mask[1, :, :3] = 1                           # 9 tokens
    mask[2] = 1                                  # 27 tokens
    return np.where(mask > 0, x, 0.0).astype(np.float32), mask   # micro-batch 3: all padding


def test_micro_token_mean_is_the_mean_of_micro_batch_token_means():
    """veRL (Search-R1's `verl/workers/actor/dp_actor.py::update_policy`): loss = Σ_k
    masked_mean(x_k, m_k) / #micro-batches. Oracle: loops; the empty micro-batch is left out."""
    x, mask = _uneven_micro_batches(0)
    means = []
    for k in range(x.shape[0]):
        n = mask[k].sum()
        if n:
            means.append(sum(float(x[k, b, t]) for b in range(3) for t in range(9) if mask[k, b, t]) / n)
    want = np.mean(means)
    np.testing.assert_allclose(float(aggregate(x, mask, "micro_token_mean")), want, rtol=1e-6)
    assert float(aggregate_count(mask, "micro_token_mean")) == 3.0
    # token counts 2 / 9 / 27 weigh the micro-batches very differently under the exact token mean
    assert abs(float(aggregate(x, mask, "token-mean")) - want) > 0.5
    # one [B, T] micro-batch alone: its token-mean
    np.testing.assert_allclose(float(aggregate(x[1], mask[1], "micro_token_mean")),
                               float(aggregate(x[1], mask[1], "token-mean")), rtol=1e-6)
    assert float(aggregate(x[3], mask[3], "micro_token_mean")) == 0.0


@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_per_micro_batch_aggregates_weighted_by_their_counts_reassemble_the_whole(agg):
    """What the trainer does: Σ_k aggregate_k · count_k / Σ_k count_k == aggregate of the stack."""
    x, mask = _uneven_micro_batches(1)
    num = sum(float(aggregate(x[k], mask[k], agg)) * float(aggregate_count(mask[k], agg)) for k in range(4))
    den = sum(float(aggregate_count(mask[k], agg)) for k in range(4))
    np.testing.assert_allclose(num / den, float(aggregate(x, mask, agg)), rtol=1e-6)


@partial(jax.jit, static_argnums=6)
def _loss_and_grad(lp, old, ref, adv, mask, ent, agg):
    f = lambda lp, ent: grpo_loss(lp, old, ref, adv, mask, ent, agg=agg)[0]  # noqa: E731
    return jax.value_and_grad(f, argnums=(0, 1))(lp, ent)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), agg=st.sampled_from(["token-mean", "seq-mean-token-sum",
                                                         "seq-mean-token-mean"]))
def test_masked_tokens_change_neither_loss_nor_gradient(seed, agg):
    lp, old, ref, adv, mask, ent = _batch(seed)
    r = np.random.default_rng(seed + 1)
    junk = lambda x: np.where(mask > 0, x, r.normal(0, 5, x.shape)).astype(np.float32)  # noqa: E731

    v1, g1 = _loss_and_grad(lp, old, ref, adv, mask, ent, agg)
    v2, g2 = _loss_and_grad(junk(lp), junk(old), junk(ref), adv, mask, junk(ent), agg)
    np.testing.assert_allclose(float(v1), float(v2), rtol=1e-6, atol=1e-7)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        assert np.all(np.asarray(a)[mask == 0] == 0)


def test_policy_gradient_at_ratio_one_is_minus_advantage_over_tokens():
    # At logp == old (ratio 1, inside the clip) d/dlogp of token-mean −ρA is −A/n per token.
    lp = jnp.zeros((2, 3))
    mask = jnp.array([[1, 1, 0], [1, 0, 0]], jnp.float32)
    adv = jnp.array([2.0, -1.0])
    g = jax.grad(lambda x: grpo_loss(x, lp, None, adv, mask, None)[0])(lp)
    np.testing.assert_allclose(g, np.array([[-2, -2, 0], [1, 0, 0]]) / 3.0, rtol=1e-6)


def test_aggregate_and_loss_refuse_unknown_options():
    with pytest.raises(ValueError, match="agg must be one of"):
        aggregate(jnp.zeros((1, 1)), jnp.ones((1, 1)), "sum")
    with pytest.raises(ValueError, match="agg must be one of"):
        aggregate_count(jnp.ones((1, 1)), "micro-token-mean")
    with pytest.raises(ValueError, match="kl_estimator must be one of"):
        grpo_loss(jnp.zeros((1, 1)), jnp.zeros((1, 1)), jnp.zeros((1, 1)), jnp.zeros(1),
                  jnp.ones((1, 1)), kl_estimator="k4")
    with pytest.raises(ValueError, match="dual_clip_c must be > 1"):
        grpo_loss(jnp.zeros((1, 1)), jnp.zeros((1, 1)), None, jnp.zeros(1), jnp.ones((1, 1)),
                  dual_clip_c=0.5)

