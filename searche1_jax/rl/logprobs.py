"""Per-token log-probs and entropy from hidden states and the LM head, in token chunks.

GRPO needs log π(token) and the entropy at every position of long sequences; building the
[B, T, V] logits (V = 151,936) for all positions at once does not fit. `token_logps_and_entropy`
scans over chunks of positions within rows (`rows.py`: the batch sharding is kept) with a custom
VJP whose backward pass recomputes each chunk's logits, so the peak extra memory is O(chunk × V)
in both passes.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from searche1_jax.rl.rows import (as_rows, constrain, from_row_chunks, grouped_outer, head_for_rows,
                                  row_chunk, rows_of, to_row_chunks, ungroup, zeros_grouped)


def to_chunks(x: jax.Array, chunk: int) -> jax.Array:
    """[N, ...] -> [N_pad / chunk, chunk, ...], zero rows appended up to a multiple of chunk."""
    n_pad = -x.shape[0] % chunk
    if n_pad:
        x = jnp.pad(x, [(0, n_pad)] + [(0, 0)] * (x.ndim - 1))
    return x.reshape((x.shape[0] // chunk, chunk) + x.shape[1:])


def logit_dot(h: jax.Array, head: jax.Array, barrier: bool = False) -> jax.Array:
    """h [..., d] @ head [d, V] in float32. barrier=True fences the product off
    (`optimization_barrier`) from what reads it: XLA:CPU otherwise fuses this matmul with the
    softmax's row max into one kernel that runs ~3x below its plain GEMM rate (measured with
    jax 0.10.2: a [512, 2048] x [2048, 151,936] logits product at ~35 GFLOP/s fused vs ~120
    alone). On GPU/TPU the fusion is the fast path (the logits need not round-trip through
    memory). The caller decides (`model.speed.SpeedPolicy.logit_barrier`); the value is the same."""
    z = jnp.dot(h, head, preferred_element_type=jnp.float32)
    return jax.lax.optimization_barrier(z) if barrier else z


def chunk_logits(h: jax.Array, head: jax.Array, temperature: float, barrier: bool = False) -> jax.Array:
    """h [..., d] @ head [d, V] / temperature, accumulated and returned in float32."""
    return logit_dot(h, head, barrier) / temperature


def _logp_entropy_from_logits(z: jax.Array, targets: jax.Array):
    """z [..., V] f32, targets [...] int -> (log softmax(z)[target] [...], entropy [...]).

    The target's log-prob is picked by a masked sum over V (one nonzero term: exact), which
    stays a per-device reduction when the vocabulary is split over devices."""
    logp_all = jax.nn.log_softmax(z, axis=-1)
    hit = jnp.arange(z.shape[-1], dtype=jnp.int32) == targets[..., None]
    logp = jnp.sum(jnp.where(hit, logp_all, 0.0), axis=-1)
    entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
    return logp, entropy


def _row_logits(hc, head, temperature, barrier, layout):
    """One scan step's logits [B, c, V] / τ, f32, computed where the rows are."""
    hc = rows_of(hc, layout)
    return constrain(chunk_logits(hc, head, temperature, barrier), ("batch", None, "vocab"), layout)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _chunked(h, head, targets, chunk, temperature, barrier, layout):
    """h [B, T, d], head [d, V], targets [B, T] -> (logps [B, T], entropy [B, T]) f32; chunk =
    positions per row a scan step takes (`rows.row_chunk`)."""
    head = head_for_rows(head, layout)

    def body(_, xs):
        hc, tc = xs
        return None, _logp_entropy_from_logits(_row_logits(hc, head, temperature, barrier, layout), tc)

    _, (lp, ent) = jax.lax.scan(body, None, (to_row_chunks(h, chunk), to_row_chunks(targets, chunk)))
    return from_row_chunks(lp, h.shape[1]), from_row_chunks(ent, h.shape[1])


def _chunked_fwd(h, head, targets, chunk, temperature, barrier, layout):
    return _chunked(h, head, targets, chunk, temperature, barrier, layout), (h, head, targets)


def _chunked_bwd(chunk, temperature, barrier, layout, res, cts):
    h, head, targets = res
    g_lp, g_ent = cts
    b, t = targets.shape
    w = head_for_rows(head, layout)

    def body(d_head, xs):
        hc, tc, glc, gec = xs
        z, pull_z = jax.vjp(lambda hh: _row_logits(hh, w, temperature, barrier, layout), hc)
        _, pull = jax.vjp(lambda zz: _logp_entropy_from_logits(zz, tc), z)
        (dz,) = pull((glc, gec))
        (dh,) = pull_z(dz)
        # d/dhead = Σ h ⊗ dz / τ, kept per row group until after the scan (`rows.grouped_outer`)
        return d_head + grouped_outer(rows_of(hc, layout), dz / temperature, layout), dh

    xs = (to_row_chunks(h, chunk), to_row_chunks(targets, chunk),
          to_row_chunks(g_lp.astype(jnp.float32), chunk), to_row_chunks(g_ent.astype(jnp.float32), chunk))
    d_head, dh = jax.lax.scan(body, zeros_grouped(b, head.shape, layout), xs)
    return (from_row_chunks(dh, t).astype(h.dtype), ungroup(d_head).astype(head.dtype), None)


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


def token_logps_and_entropy(hidden: jax.Array, head: jax.Array, targets: jax.Array, *,
                            chunk: int = 1024, temperature: float = 1.0, barrier: bool = False,
                            layout=None):
    """Log-prob of each target token and the entropy of each position's distribution.

    hidden: [B, T, d] or [N, d], the final hidden states (after the last norm);
    head: [d, V], the LM head (the transposed embedding when tied);
    targets: [B, T] or [N] int, the token whose log-prob each position scores;
    chunk: tokens a device takes per scan step (peak extra memory ~ a few × chunk × V × 4
        bytes): positions of every row it holds (`rows.row_chunk`), never across rows;
    temperature: logits are divided by it (the sampling temperature, METHOD §2 uses 1);
    barrier: fence each chunk's logit product from its softmax (`logit_dot`; True on CPU);
    layout: how the rows lie on the devices (`rows`; None: one device).
    Returns (logps, entropy), both float32 with the leading shape of `targets`:
    logps = log softmax(h·W/τ)[target], entropy = −Σ_v p_v log p_v.
    Differentiable w.r.t. hidden and head (the backward pass recomputes chunk logits).
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    lead = targets.shape
    if hidden.shape[:-1] != lead or len(lead) not in (1, 2):
        raise ValueError(f"hidden {hidden.shape} and targets {targets.shape} disagree on the "
                         "leading (token) shape, or it is neither [B, T] nor [N]")
    if head.shape[0] != hidden.shape[-1]:
        raise ValueError(f"head must be [d, V] with d = {hidden.shape[-1]}, got {head.shape}")
    h = as_rows(hidden, len(lead))
    t = as_rows(targets, len(lead)).astype(jnp.int32)
    c = row_chunk(chunk, h.shape[0], h.shape[1], layout)
    lp, ent = _chunked(h, head, t, c, float(temperature), bool(barrier), layout)
    return lp.reshape(lead), ent.reshape(lead)
