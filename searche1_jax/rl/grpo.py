"""GRPO: group-normalised advantages and the clipped policy-gradient loss (METHOD §2).

Per token t, with ρ = exp(logp − old_logp) and the trajectory's advantage A:
    L_t = max(−ρA, −clip(ρ, 1−ε_low, 1+ε_high)·A)      (PPO clip; dual clip caps it at −c·A for A<0)
          + β·KL(π_θ‖π_ref)_t − c_H·entropy_t
aggregated over unmasked tokens (token-mean by default; `aggregate` lists the modes). Arrays in,
arrays out.
"""
from __future__ import annotations

from typing import Hashable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

AGGREGATIONS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "micro_token_mean")
KL_ESTIMATORS = ("k1", "k2", "k3")


def has_spread(rewards) -> np.ndarray:
    """[Q, G] rewards -> [Q] bool: the groups whose rewards are not all equal, the only ones
    with non-zero advantages (group_advantages), i.e. GRPO's policy-gradient signal."""
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 2:
        raise ValueError(f"rewards must be [questions, group_size], got shape {r.shape}")
    return r.max(axis=1, initial=-np.inf) > r.min(axis=1, initial=np.inf)


def group_advantages(rewards, group_ids, eps: float = 1e-6) -> np.ndarray:
    """A_i = (r_i − mean_g r) / (std_g r + eps), std unbiased (ddof 1) within each group.

    rewards: [B] float; group_ids: [B] any hashable/array values, equal for the G
    trajectories of one question. A group of size 1 has no spread to normalise by
    (its unbiased std is undefined), so its advantage is 0: it contributes no policy
    gradient. Returns [B] float32.
    """
    r = np.asarray(rewards, dtype=np.float64)
    ids = np.asarray(group_ids)
    if r.ndim != 1 or ids.shape != r.shape:
        raise ValueError(f"rewards and group_ids must both be [B], got {r.shape} and {ids.shape}")
    _, inv = np.unique(ids, return_inverse=True)
    inv = inv.reshape(-1)
    n_groups = inv.max() + 1 if inv.size else 0
    count = np.bincount(inv, minlength=n_groups).astype(np.float64)
    mean = np.bincount(inv, weights=r, minlength=n_groups) / np.maximum(count, 1)
    sq = np.bincount(inv, weights=(r - mean[inv]) ** 2, minlength=n_groups)
    std = np.sqrt(sq / np.maximum(count - 1, 1))
    adv = (r - mean[inv]) / (std[inv] + eps)
    adv = np.where(count[inv] > 1, adv, 0.0)
    return adv.astype(np.float32)


def check_unique_group_ids(step_group_ids: Iterable[Hashable],
                           seen: frozenset = frozenset()) -> frozenset:
    """Refuse group ids reused across steps; return `seen` plus this step's ids.

    Group ids must be unique per question and step (METHOD §2). Search-R1 keys groups by a
    per-source row index, so NQ row k and HotpotQA row k landing in one batch merge into one
    group (about 0.7 merged pairs a step); it never merges across steps. Our ids are (step,
    question index), unique within a step by construction; this check guards them across
    steps too. Call once per step with that step's ids (rows of one group repeat the same id,
    which is fine) and the set returned by the previous call. Pure: `seen` is not mutated.
    """
    ids = frozenset(np.asarray(step_group_ids).reshape(-1).tolist())
    reused = ids & seen
    if reused:
        shown = sorted(map(repr, reused))[:5]
        raise ValueError(f"group ids {', '.join(shown)} were already used by an earlier step; "
                         "group ids must be unique per question per step (METHOD §2)")
    return seen | ids


K3_CLAMP = 10.0  # veRL's low_var_kl clamps the k3 term to [-10, 10] (METHOD §2)


def kl_penalty(logps, ref_logps, estimator: str = "k3"):
    """Per-token estimate of KL(π_θ‖π_ref) from sampled-token log-probs.

    k1 = logp − ref; k2 = ½(logp − ref)²; k3 = clip(exp(ref − logp) − (ref − logp) − 1, −10, 10)
    (Schulman's low-variance estimator as veRL's "low_var_kl" computes it, clamped: METHOD §2
    default; where the clamp binds the gradient is 0).
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")
    diff = ref_logps - logps
    if estimator == "k1":
        return -diff
    if estimator == "k2":
        return 0.5 * diff ** 2
    return jnp.clip(jnp.exp(diff) - diff - 1.0, -K3_CLAMP, K3_CLAMP)


def grpo_loss_terms(logps, old_logps, ref_logps, advantages, mask, entropy=None, *,
                    clip_eps: float = 0.2, clip_eps_high: float | None = None,
                    dual_clip_c: float | None = None, kl_coef: float = 0.001,
                    kl_estimator: str = "k3", entropy_coef: float = 0.001) -> dict:
    """Per-token loss pieces, each [B, T] float32 and already multiplied by the mask.

    logps, old_logps, ref_logps (or None): [B, T] log-probs of the sampled tokens under the
    current, rollout and reference policies; advantages: [B] (broadcast over tokens) or
    [B, T]; mask: [B, T], 1 on tokens the policy sampled; entropy: [B, T] or None.
    Keys: loss (the full per-token loss), pg_loss, kl_ref, entropy, ratio, clipped (1 where
    the clip is active), approx_kl (old_logp − logp, the k1 estimate of KL(π_old‖π_θ)), mask.
    Sum `loss` and `mask` over micro-batches and divide once for an exact token-mean.
    """
    if clip_eps <= 0:
        raise ValueError(f"clip_eps must be > 0, got {clip_eps}")
    if dual_clip_c is not None and dual_clip_c <= 1.0:
        raise ValueError(f"dual_clip_c must be > 1 (it caps −ρA at −c·A for A < 0), got {dual_clip_c}")
    high = clip_eps if clip_eps_high is None else clip_eps_high
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    logps, old_logps, mask = f32(logps), f32(old_logps), f32(mask)
    adv = f32(advantages)
    if adv.ndim == 1:
        adv = adv[:, None]
    adv = jnp.broadcast_to(adv, logps.shape)

    log_ratio = logps - old_logps
    ratio = jnp.exp(log_ratio)
    pg1 = -adv * ratio
    pg2 = -adv * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + high)
    pg = jnp.maximum(pg1, pg2)
    clipped = (pg2 > pg1).astype(jnp.float32)
    if dual_clip_c is not None:
        pg = jnp.where(adv < 0, jnp.minimum(pg, -dual_clip_c * adv), pg)
    loss = pg
    if ref_logps is not None:
        kl = kl_penalty(logps, f32(ref_logps), kl_estimator)
        loss = loss + kl_coef * kl
    else:
        kl = jnp.zeros_like(logps)
    if entropy is not None:
        ent = f32(entropy)
        loss = loss - entropy_coef * ent
    else:
        ent = jnp.zeros_like(logps)
    # jnp.where, not a product, so a NaN/inf on a masked-out token cannot leak into the sum.
    m = lambda x: jnp.where(mask > 0, x * mask, 0.0)  # noqa: E731
    return {"loss": m(loss), "pg_loss": m(pg), "kl_ref": m(kl), "entropy": m(ent),
            "ratio": m(ratio), "clipped": m(clipped), "approx_kl": m(-log_ratio), "mask": mask}


def _unit_axes(agg: str) -> tuple[int, ...]:
    """The axes one averaged unit spans: a row [T] (seq-mean-*) or a micro-batch [B, T]."""
    return (-1,) if agg.startswith("seq-mean") else (-2, -1)


def aggregate_count(mask, agg: str = "token-mean"):
    """How many units `aggregate` averages over (float32 scalar): unmasked tokens (token-mean),
    rows with an unmasked token (seq-mean-*), micro-batches with one (micro_token_mean)."""
    if agg not in AGGREGATIONS:
        raise ValueError(f"agg must be one of {AGGREGATIONS}, got {agg!r}")
    mask = jnp.asarray(mask, jnp.float32)
    if agg == "token-mean":
        return mask.sum()
    return (mask.sum(_unit_axes(agg)) > 0).astype(jnp.float32).sum()


def aggregate(per_token, mask, agg: str = "token-mean"):
    """Reduce a masked per-token quantity, [B, T] or [M, B, T], to a scalar.

    token-mean: Σ x / Σ m over every token.
    seq-mean-token-sum: mean over rows (all axes but the last) of Σ_t x.
    seq-mean-token-mean: mean over rows of (Σ_t x / Σ_t m).
    micro_token_mean: mean over micro-batches of their token-means Σ x / Σ m, a micro-batch being
        one [B, T] slice of an [M, B, T] input (a [B, T] input is one micro-batch, so this equals
        token-mean there). It is veRL's aggregation, as Search-R1's vendored veRL runs it
        (`verl/workers/actor/dp_actor.py::update_policy`: each micro-batch's loss is the
        `masked_mean` over its response tokens of the pg, k3-KL and entropy terms of
        `verl/trainer/ppo/core_algos.py`, divided by the gradient-accumulation count).
    Units (rows, micro-batches) with no unmasked token are left out of the means (rather than
    counted as 0 or NaN); an all-masked input gives 0. Every mode is Σ units / `aggregate_count`
    over disjoint units, so for micro-batches k of one batch, Σ_k aggregate_k · count_k / Σ_k
    count_k is the aggregate of the whole batch (for micro_token_mean, of the [M, B, T] stack).
    """
    count = aggregate_count(mask, agg)  # checks agg
    mask = jnp.asarray(mask, jnp.float32)
    if agg == "token-mean":
        return per_token.sum() / jnp.maximum(count, 1.0)
    axes = _unit_axes(agg)
    unit_tokens = mask.sum(axes)
    unit = per_token.sum(axes)
    if agg != "seq-mean-token-sum":
        unit = unit / jnp.maximum(unit_tokens, 1.0)
    return (unit * (unit_tokens > 0)).sum() / jnp.maximum(count, 1.0)


def grpo_loss(logps, old_logps, ref_logps, advantages, mask, entropy=None, *,
              clip_eps: float = 0.2, clip_eps_high: float | None = None,
              dual_clip_c: float | None = None, kl_coef: float = 0.001, kl_estimator: str = "k3",
              entropy_coef: float = 0.001, agg: str = "token-mean"):
    """The GRPO loss of METHOD §2 and its metrics; arguments as in `grpo_loss_terms`.

    Returns (loss scalar, metrics) with metrics token-means over unmasked tokens:
    pg_loss, clip_frac, approx_kl (to π_old, k1), kl_ref (chosen estimator; 0 without ref),
    entropy (0 without entropy), ratio_mean, and tokens (the unmasked count).
    """
    terms = grpo_loss_terms(logps, old_logps, ref_logps, advantages, mask, entropy,
                            clip_eps=clip_eps, clip_eps_high=clip_eps_high,
                            dual_clip_c=dual_clip_c, kl_coef=kl_coef, kl_estimator=kl_estimator,
                            entropy_coef=entropy_coef)
    mask = terms["mask"]
    loss = aggregate(terms["loss"], mask, agg)
    n = jnp.maximum(mask.sum(), 1.0)
    mean = lambda k: jax.lax.stop_gradient(terms[k].sum() / n)  # noqa: E731
    metrics = {"pg_loss": mean("pg_loss"), "clip_frac": mean("clipped"),
               "approx_kl": mean("approx_kl"), "kl_ref": mean("kl_ref"),
               "entropy": mean("entropy"), "ratio_mean": mean("ratio"), "tokens": mask.sum()}
    return loss, metrics
