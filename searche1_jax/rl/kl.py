"""Token-level divergences between a teacher and a student over the full vocabulary (METHOD §3.4).

The definitions on log-probs, and the naive losses on [..., V] logits that are the oracle for
the fused ones (`fused_kl.py`, `fused_kl_tiles.py`). With p_T = softmax(z_T/τ), p_S = softmax(z_S/τ):
    forward:  KL(T‖S) = Σ_v p_T (log p_T − log p_S)            (the OFSD default)
    reverse:  KL(S‖T) = Σ_v p_S (log p_S − log p_T)
    jsd(β):   β·KL(T‖M) + (1−β)·KL(S‖M),  M = β p_T + (1−β) p_S  (β = ½: the symmetric JSD)
Losses average over masked tokens: Σ_t m_t D_t / max(Σ_t m_t, 1). Teacher inputs are under
stop-gradient.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

KINDS = ("forward", "reverse", "jsd")


def divergence_from_logps(logp_s, logp_t, kind: str = "forward", beta: float = 0.5):
    """Per-token divergence [...] from student and teacher log-probs [..., V] (f32)."""
    if kind == "forward":
        return jnp.sum(jnp.exp(logp_t) * (logp_t - logp_s), axis=-1)
    if kind == "reverse":
        return jnp.sum(jnp.exp(logp_s) * (logp_s - logp_t), axis=-1)
    if kind == "jsd":
        if not 0.0 < beta < 1.0:
            raise ValueError(f"generalized JSD needs 0 < beta < 1, got {beta}")
        logm = jnp.logaddexp(logp_t + math.log(beta), logp_s + math.log1p(-beta))
        kl_t = jnp.sum(jnp.exp(logp_t) * (logp_t - logm), axis=-1)
        kl_s = jnp.sum(jnp.exp(logp_s) * (logp_s - logm), axis=-1)
        return beta * kl_t + (1.0 - beta) * kl_s
    raise ValueError(f"divergence kind must be one of {KINDS}, got {kind!r}")


def _masked_mean(per_token, mask):
    mask = jnp.asarray(mask, jnp.float32)
    per_token = jnp.where(mask > 0, per_token * mask, 0.0)
    return per_token.sum() / jnp.maximum(mask.sum(), 1.0)


def _naive(student_logits, teacher_logits, mask, temperature, kind, beta):
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logp_s = jax.nn.log_softmax(jnp.asarray(student_logits, jnp.float32) / temperature, axis=-1)
    logp_t = jax.nn.log_softmax(
        jax.lax.stop_gradient(jnp.asarray(teacher_logits, jnp.float32)) / temperature, axis=-1)
    return _masked_mean(divergence_from_logps(logp_s, logp_t, kind, beta), mask)


def forward_kl(student_logits, teacher_logits, mask, temperature: float = 1.0):
    """mean over masked tokens of KL(p_T‖p_S); logits [..., V], mask [...]. Naive (builds [..., V])."""
    return _naive(student_logits, teacher_logits, mask, temperature, "forward", 0.5)


def reverse_kl(student_logits, teacher_logits, mask, temperature: float = 1.0):
    """mean over masked tokens of KL(p_S‖p_T). Naive."""
    return _naive(student_logits, teacher_logits, mask, temperature, "reverse", 0.5)


def generalized_jsd(student_logits, teacher_logits, mask, beta: float = 0.5,
                    temperature: float = 1.0):
    """mean over masked tokens of β·KL(T‖M) + (1−β)·KL(S‖M), M = βp_T + (1−β)p_S. Naive."""
    return _naive(student_logits, teacher_logits, mask, temperature, "jsd", beta)
