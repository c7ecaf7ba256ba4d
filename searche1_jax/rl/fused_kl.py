"""Fused chunked divergences from hidden states and LM heads, never building [N, V] (METHOD §3.4).

`fused_divergence_sum` (and the forward-KL / reverse-KL / JSD losses on it) checks its
arguments and picks one of three forms of one loss (definitions: `kl.py`):
- grad_in_forward (the OFSD forward KL's default): token chunks of [chunk, V] logits whose
  gradient is formed in the forward pass, written out by hand for the forward KL; 4 matmuls, as
  many as the naive loss (measured 0.88x its time);
- vocab_chunk (the default of the other divergences): [chunk, vocab_chunk] logit tiles,
  `fused_kl_tiles.py`;
- vocab_chunk=None: token chunks only; the backward pass recomputes each chunk's [chunk, V]
  logits and adds a per-chunk [d, V] head-gradient temporary.
Teacher inputs are always under stop-gradient.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from searche1_jax.rl.fused_kl_tiles import VOCAB_CHUNK, columns, fused_sum_tiles, vocab_fold
from searche1_jax.rl.kl import KINDS, divergence_from_logps
from searche1_jax.rl.logprobs import chunk_logits
from searche1_jax.rl.rows import (as_rows, constrain, from_row_chunks, grouped_outer, groups, head_for_rows,
                                  row_chunk, rows_of, to_row_chunks, ungroup, zeros_grouped)


def _teacher_scaled(tc, extra, temperature, barrier, layout=None):
    """Teacher logits / τ [B, c, V] of one chunk: from hidden tc [B, c, d] and extra =
    (head [d, V],), or from given log-probs tc [B, c, V] (extra = ()). Log-probs are logits up to
    a per-token constant, so their softmax at τ is exactly the teacher's distribution at τ."""
    if extra:
        z = chunk_logits(rows_of(tc, layout), extra[0], temperature, barrier)
    else:
        z = tc.astype(jnp.float32) / temperature
    return constrain(z, ("batch", None, "vocab"), layout)


def _teacher_logp(teacher_chunk, temperature, barrier, layout=None):
    """Teacher log-probs [B, c, V] of one chunk: from (hidden [B,c,d], head [d,V]) or (logps,)."""
    return jax.nn.log_softmax(_teacher_scaled(teacher_chunk[0], teacher_chunk[1:], temperature, barrier,
                                              layout), axis=-1)


def _student_logits(hc, head, temperature, barrier, layout):
    return constrain(chunk_logits(rows_of(hc, layout), head, temperature, barrier),
                     ("batch", None, "vocab"), layout)


def _chunk_xs(hs, teacher, mask, chunk):
    """Scan inputs [n, B, c, ...]: chunks of `chunk` positions within rows (`rows.py`)."""
    return to_row_chunks(hs, chunk), to_row_chunks(teacher[0], chunk), to_row_chunks(mask, chunk)


def _heads(head, teacher, layout):
    """The student head and the teacher's extra inputs as the rows' devices multiply by them."""
    return head_for_rows(head, layout), tuple(head_for_rows(x, layout) for x in teacher[1:])


@partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8, 9))
def _fused_sum(hs, head, teacher, mask, chunk, temperature, kind, beta, barrier, layout):
    """Σ m · D(p_T ‖ p_S): hs [B,R,d], head [d,V], teacher = (th [B,R,d], thead) or (tlogp [B,R,V],)."""
    xs = _chunk_xs(hs, teacher, mask, chunk)
    head, extra = _heads(head, teacher, layout)

    def body(acc, x):
        hc, tc, mc = x
        logp_t = _teacher_logp((tc,) + extra, temperature, barrier, layout)
        logp_s = jax.nn.log_softmax(_student_logits(hc, head, temperature, barrier, layout), axis=-1)
        d = divergence_from_logps(logp_s, logp_t, kind, beta)
        return acc + jnp.sum(jnp.where(mc > 0, d * mc, 0.0)), None

    total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), xs)
    return total


def _fused_sum_fwd(hs, head, teacher, mask, chunk, temperature, kind, beta, barrier, layout):
    return (_fused_sum(hs, head, teacher, mask, chunk, temperature, kind, beta, barrier, layout),
            (hs, head, teacher, mask))


def _fused_sum_bwd(chunk, temperature, kind, beta, barrier, layout, res, g):
    hs, head, teacher, mask = res
    xs = _chunk_xs(hs, teacher, mask, chunk)
    w_head, extra = _heads(head, teacher, layout)

    def body(d_head, x):
        hc, tc, mc = x
        logp_t = _teacher_logp((tc,) + extra, temperature, barrier, layout)
        z, pull_z = jax.vjp(lambda hh: _student_logits(hh, w_head, temperature, barrier, layout), hc)
        w = jnp.where(mc > 0, mc, 0.0) * g
        _, pull = jax.vjp(
            lambda zz: divergence_from_logps(jax.nn.log_softmax(zz, axis=-1), logp_t, kind, beta), z)
        (dz,) = pull(w)
        (dh,) = pull_z(dz)
        # d/dhead = Σ h ⊗ dz / τ per row group, summed after the scan (`rows.grouped_outer`)
        return d_head + grouped_outer(rows_of(hc, layout), dz / temperature, layout), dh

    d_head, dh = jax.lax.scan(body, zeros_grouped(hs.shape[0], head.shape, layout), xs)
    # Teacher and mask get zero cotangents: the teacher is under stop-gradient (METHOD §3.4).
    return (from_row_chunks(dh, hs.shape[1]).astype(hs.dtype), ungroup(d_head).astype(head.dtype),
            None, None)


_fused_sum.defvjp(_fused_sum_fwd, _fused_sum_bwd)


def _chunk_value_and_grads(hc, head, tc, mc, extra, temperature, kind, beta, barrier, layout):
    """One chunk: (Σ m·D, d/dhc [B, c, d], d/dz [B, c, V]) with cotangent 1 on the chunk's
    masked sum, z = hc @ head (before the temperature; the 1/τ is in d/dz)."""
    w = jnp.where(mc > 0, mc, 0.0)
    z = _student_logits(hc, head, 1.0, barrier, layout)
    if kind == "forward":
        d, dz = _forward_kl_and_grad(z / temperature, _teacher_scaled(tc, extra, temperature, barrier, layout),
                                     w / temperature)
    else:
        logp_t = _teacher_logp((tc,) + extra, temperature, barrier, layout)
        d, pull = jax.vjp(
            lambda zz: divergence_from_logps(jax.nn.log_softmax(zz / temperature, axis=-1), logp_t,
                                             kind, beta), z)
        (dz,) = pull(w)
    dh = jnp.einsum("bcv,dv->bcd", dz.astype(head.dtype), head, preferred_element_type=jnp.float32)
    return jnp.sum(jnp.where(mc > 0, d * mc, 0.0)), dh, dz


def _forward_kl_and_grad(us, ut, w):
    """Per-token KL(p_T‖p_S) [...] and w_t · (p_S − p_T) [..., V] from scaled logits u = z/τ.

    Written out (rather than through jax.vjp of log_softmax) so that XLA needs only the two
    logit buffers and the gradient: two row-max passes, one pass of sums, one elementwise pass.
    KL_t = Σ_v p_T (u_T − u_S) − lse_T + lse_S."""
    ms, mt = us.max(-1, keepdims=True), ut.max(-1, keepdims=True)
    et = jnp.exp(ut - mt)
    st, ss = et.sum(-1), jnp.exp(us - ms).sum(-1)
    cross = (et * (ut - us)).sum(-1) / st
    lse_s, lse_t = ms[..., 0] + jnp.log(ss), mt[..., 0] + jnp.log(st)
    kl = cross - lse_t + lse_s
    dz = w[..., None] * (jnp.exp(us - lse_s[..., None]) - jnp.exp(ut - lse_t[..., None]))
    return kl, dz


@partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8, 9, 10))
def _fused_sum_eager(hs, head, teacher, mask, chunk, vc, temperature, kind, beta, barrier, layout):
    """Same value as `_fused_sum`; under differentiation its forward pass also computes the
    gradients (the output is a scalar, so the backward pass only scales them by g). Four
    [B·c, d] x [d, V] matmuls per chunk instead of six, at the cost of holding d/dhead
    [d, V] f32 (per row group) and d/dhs [B, R, d] from the forward to the backward pass. Each
    chunk's logits [B, c, V] exist once; its head gradient is added into d/dhead a
    [d, vocab_chunk] slice at a time (no [d, V] temporary; a whole [d, V / shards] when the
    vocabulary is split over devices, whose slices would each need a gather)."""
    return _fused_sum(hs, head, teacher, mask, chunk, temperature, kind, beta, barrier, layout)


def _fused_sum_eager_fwd(hs, head, teacher, mask, chunk, vc, temperature, kind, beta, barrier, layout):
    v = head.shape[1]
    w_head, extra = _heads(head, teacher, layout)
    if groups(v, "vocab", layout) > 1:
        vc = v

    def body(carry, x):
        acc, d_head = carry
        hc, tc, mc = x
        val, dh, dz = _chunk_value_and_grads(hc, w_head, tc, mc, extra, temperature, kind, beta,
                                             barrier, layout)
        hc = rows_of(hc, layout)

        def add_slice(d_head, v0, size):   # d/dhead[:, :, v] += Σ_group hc ⊗ dz[..., v], in place
            cols = grouped_outer(hc, columns(dz, v0, size), layout)
            return jax.lax.dynamic_update_slice_in_dim(d_head, columns(d_head, v0, size) + cols, v0,
                                                       axis=d_head.ndim - 1)

        return (acc + val, vocab_fold(add_slice, d_head, v, vc)), dh

    (total, d_head), dh = jax.lax.scan(
        body, (jnp.zeros((), jnp.float32), zeros_grouped(hs.shape[0], head.shape, layout)),
        _chunk_xs(hs, teacher, mask, chunk))
    dh = from_row_chunks(dh, hs.shape[1])
    return total, (dh.astype(hs.dtype), ungroup(d_head).astype(head.dtype))


def _fused_sum_eager_bwd(chunk, vc, temperature, kind, beta, barrier, layout, res, g):
    dh, d_head = res
    return (g * dh).astype(dh.dtype), (g * d_head).astype(d_head.dtype), None, None


_fused_sum_eager.defvjp(_fused_sum_eager_fwd, _fused_sum_eager_bwd)


def fused_divergence_sum(student_hidden, head, teacher_hidden=None, teacher_head=None,
                         teacher_logps=None, mask=None, *, chunk: int = 512,
                         temperature: float = 1.0, kind: str = "forward", beta: float = 0.5,
                         grad_in_forward: bool = False, vocab_chunk: int | None = VOCAB_CHUNK,
                         barrier: bool = False, layout=None):
    """(Σ_t m_t D_t, Σ_t m_t) without building [N, V]; for exact accumulation over micro-batches.

    student_hidden: [B, R, d] (rows of R tokens) or [N, d] (one row) hidden states whose logits
    score the response tokens;
    head: [d, V] student LM head (gradients flow to it and to student_hidden);
    teacher: either teacher_hidden [B, R, d_T] + teacher_head [d_T, V], or teacher_logps
    [B, R, V] (precomputed log-probs at temperature 1), [N, ...] with a [N, d] student; both
    under stop-gradient;
    mask: [B, R] or [N], 1 on sampled tokens (None: all tokens); chunk: tokens a device takes
    per scan step, positions within the rows it holds (`rows.py`: the batch sharding is kept);
    layout: how the rows lie on the devices (`rows.py`; None: one device).
    vocab_chunk (default): logits are built [chunk, vocab_chunk] at a time in both passes; the
    backward pass scans vocabulary slices, recomputes their logits and writes each slice of
    d/dhead once (6 tile matmuls per token, like the token-chunked recompute, but no [chunk, V]
    buffer and no per-chunk [d, V] temporary). vocab_chunk=None: token chunks only, logits
    [chunk, V], and the backward pass recomputes each chunk's logits and adds its [d, V] head
    gradient into an f32 accumulator.
    grad_in_forward: True: token chunks only, and under differentiation the forward pass
    computes the gradients too and the backward pass only scales them (4 chunk matmuls, the
    naive count; d/dhead [d, V] f32 and d/dhidden [N, d] are held between the passes); it
    takes precedence over vocab_chunk. All never build [N, V].
    barrier: fence each logit product from its softmax (`logprobs.logit_dot`; pass
    `SpeedPolicy.logit_barrier`, True on CPU); the value is the same either way.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "jsd" and not 0.0 < beta < 1.0:
        raise ValueError(f"generalized JSD needs 0 < beta < 1, got {beta}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if vocab_chunk is not None and vocab_chunk < 1:
        raise ValueError(f"vocab_chunk must be >= 1 (or None for token chunks only), got {vocab_chunk}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    lead = student_hidden.shape[:-1]
    if len(lead) not in (1, 2) or head.ndim != 2 or head.shape[0] != student_hidden.shape[-1]:
        raise ValueError(f"need student_hidden [N, d] or [B, R, d] and head [d, V], got "
                         f"{student_hidden.shape} and {head.shape}")
    if teacher_logps is not None:
        if teacher_hidden is not None or teacher_head is not None:
            raise ValueError("give the teacher either as teacher_logps or as teacher_hidden + "
                             "teacher_head, not both")
        if teacher_logps.shape != lead + (head.shape[1],):
            raise ValueError(f"teacher_logps must be [*lead, V] = {lead + (head.shape[1],)}, "
                             f"got {teacher_logps.shape}")
        teacher = (as_rows(jax.lax.stop_gradient(teacher_logps), len(lead)),)
    else:
        if teacher_hidden is None or teacher_head is None:
            raise ValueError("the teacher needs teacher_hidden and teacher_head, or teacher_logps")
        if teacher_hidden.shape[:-1] != lead or teacher_head.shape[1] != head.shape[1]:
            raise ValueError(f"teacher_hidden {teacher_hidden.shape} / teacher_head "
                             f"{teacher_head.shape} do not match the student's {lead} tokens, V = "
                             f"{head.shape[1]}")
        teacher = (as_rows(jax.lax.stop_gradient(teacher_hidden), len(lead)),
                   jax.lax.stop_gradient(teacher_head))
    mask = jnp.ones(lead, jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32)
    if mask.shape != lead:
        raise ValueError(f"mask must be {lead} like the student's tokens, got {mask.shape}")
    mask = as_rows(jax.lax.stop_gradient(mask), len(lead))
    hs = as_rows(student_hidden, len(lead))
    c = row_chunk(chunk, hs.shape[0], hs.shape[1], layout)
    vc = head.shape[1] if vocab_chunk is None else min(int(vocab_chunk), head.shape[1])
    if grad_in_forward:
        total = _fused_sum_eager(hs, head, teacher, mask, c, vc, float(temperature), kind, float(beta),
                                 bool(barrier), layout)
    elif vocab_chunk is None:
        total = _fused_sum(hs, head, teacher, mask, c, float(temperature), kind, float(beta),
                           bool(barrier), layout)
    else:
        total = fused_sum_tiles(hs, head, teacher, mask, c, vc, float(temperature), kind, float(beta),
                                bool(barrier), layout)
    return total, mask.sum()


def fused_forward_kl_sum(student_hidden, head, teacher_hidden=None, teacher_head=None,
                         teacher_logps=None, mask=None, *, chunk: int = 512, temperature: float = 1.0,
                         grad_in_forward: bool = True, vocab_chunk: int | None = VOCAB_CHUNK,
                         barrier: bool = False, layout=None):
    """(Σ_t m_t KL(p_T‖p_S)_t, Σ_t m_t), fused and chunked; see `fused_divergence_sum`.

    Defaults to `grad_in_forward` (token chunks of `chunk`, the gradient written out by hand):
    the fastest form, 4 matmuls like the naive loss, holding three [chunk, V] f32 buffers; pass
    grad_in_forward=False for the vocabulary-tiled form (6 tile matmuls, O(chunk x vocab_chunk))
    when even [chunk, V] is too much."""
    return fused_divergence_sum(student_hidden, head, teacher_hidden, teacher_head, teacher_logps,
                                mask, chunk=chunk, temperature=temperature, kind="forward",
                                grad_in_forward=grad_in_forward, vocab_chunk=vocab_chunk,
                                barrier=barrier, layout=layout)


def fused_forward_kl(student_hidden, head, teacher_hidden=None, teacher_head=None,
                     teacher_logps=None, mask=None, *, chunk: int = 512, temperature: float = 1.0,
                     grad_in_forward: bool = True, vocab_chunk: int | None = VOCAB_CHUNK,
                     barrier: bool = False, layout=None):
    """The OFSD loss of METHOD §3.4, fused: Σ_t m_t KL(p_T‖p_S)_t / max(Σ_t m_t, 1).

    Gradient w.r.t. the student logits is m_t (softmax(z_S/τ) − p_T)/(τ Σm). By default it is
    formed in the forward pass, [chunk, V] logits at a time (see `fused_forward_kl_sum`);
    grad_in_forward=False recomputes [chunk, vocab_chunk] logit tiles in the backward pass."""
    total, count = fused_forward_kl_sum(student_hidden, head, teacher_hidden, teacher_head,
                                        teacher_logps, mask, chunk=chunk, temperature=temperature,
                                        grad_in_forward=grad_in_forward, vocab_chunk=vocab_chunk,
                                barrier=barrier, layout=layout)
    return total / jnp.maximum(count, 1.0)


def fused_reverse_kl(student_hidden, head, teacher_hidden=None, teacher_head=None,
                     teacher_logps=None, mask=None, *, chunk: int = 512, temperature: float = 1.0,
                     grad_in_forward: bool = False, vocab_chunk: int | None = VOCAB_CHUNK,
                     barrier: bool = False, layout=None):
    """mean over masked tokens of KL(p_S‖p_T), fused and chunked."""
    total, count = fused_divergence_sum(student_hidden, head, teacher_hidden, teacher_head,
                                        teacher_logps, mask, chunk=chunk, temperature=temperature,
                                        kind="reverse", grad_in_forward=grad_in_forward,
                                        vocab_chunk=vocab_chunk, barrier=barrier, layout=layout)
    return total / jnp.maximum(count, 1.0)


def fused_generalized_jsd(student_hidden, head, teacher_hidden=None, teacher_head=None,
                          teacher_logps=None, mask=None, *, beta: float = 0.5, chunk: int = 512,
                          temperature: float = 1.0, grad_in_forward: bool = False,
                          vocab_chunk: int | None = VOCAB_CHUNK, barrier: bool = False, layout=None):
    """mean over masked tokens of the generalised JSD(β), fused and chunked."""
    total, count = fused_divergence_sum(student_hidden, head, teacher_hidden, teacher_head,
                                        teacher_logps, mask, chunk=chunk, temperature=temperature,
                                        kind="jsd", beta=beta, grad_in_forward=grad_in_forward,
                                        vocab_chunk=vocab_chunk, barrier=barrier, layout=layout)
    return total / jnp.maximum(count, 1.0)
