"""Token-level divergences between a teacher and a student over the full vocabulary (METHOD §3.4).

Naive forms take [..., V] logits. Fused forms take hidden states and LM heads and never build
[N, V]. The fused forward KL (the OFSD loss) defaults to `grad_in_forward`: token chunks of
[chunk, V] logits whose gradient is formed in the forward pass (4 matmuls, as many as the naive
loss; measured 0.88x its time). Otherwise they work on [chunk, vocab_chunk] logit tiles: the
forward pass keeps an online log-sum-exp per token, and a custom VJP scans vocabulary slices,
recomputing their logits and writing each slice of the head gradient once, so the working
memory beside the [d, V] head gradient is O(chunk × vocab_chunk + N × d). With vocab_chunk=None they scan token chunks only
(O(chunk × V) plus a per-chunk [d, V] head-gradient temporary). Teacher inputs are always under
stop-gradient. Per-token divergences, with p_T = softmax(z_T/τ), p_S = softmax(z_S/τ):
    forward:  KL(T‖S) = Σ_v p_T (log p_T − log p_S)            (the OFSD default)
    reverse:  KL(S‖T) = Σ_v p_S (log p_S − log p_T)
    jsd(β):   β·KL(T‖M) + (1−β)·KL(S‖M),  M = β p_T + (1−β) p_S  (β = ½: the symmetric JSD)
Losses average over masked tokens: Σ_t m_t D_t / max(Σ_t m_t, 1).
"""
from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp

from searche1_jax.rl.logprobs import chunk_logits, logit_dot, to_chunks

KINDS = ("forward", "reverse", "jsd")
VOCAB_CHUNK = 2048   # vocabulary columns per logit tile of the fused losses (about d)


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


# ---- fused, chunked ----

def _teacher_scaled(tc, extra, temperature):
    """Teacher logits / τ [C, V] of one chunk: from hidden tc [C, d] and extra = (head [d, V],),
    or from given log-probs tc [C, V] (extra = ()). Log-probs are logits up to a per-token
    constant, so their softmax at τ is exactly the teacher's distribution at temperature τ."""
    if extra:
        return chunk_logits(tc, extra[0], temperature)
    return tc.astype(jnp.float32) / temperature


def _teacher_logp(teacher_chunk, temperature):
    """Teacher log-probs [C, V] of one chunk: from (hidden [C,d], head [d,V]) or (logps [C,V],)."""
    return jax.nn.log_softmax(_teacher_scaled(teacher_chunk[0], teacher_chunk[1:], temperature), axis=-1)


def _chunk_xs(hs, teacher, mask, chunk):
    t_hidden_or_logps = to_chunks(teacher[0], chunk)
    return to_chunks(hs, chunk), t_hidden_or_logps, to_chunks(mask, chunk)


@partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _fused_sum(hs, head, teacher, mask, chunk, temperature, kind, beta):
    """Σ_t mask_t · D(p_T,t ‖ p_S,t): hs [N,d], head [d,V], teacher = (th [N,d], thead) or (tlogp,)."""
    xs = _chunk_xs(hs, teacher, mask, chunk)
    extra = teacher[1:]

    def body(acc, x):
        hc, tc, mc = x
        logp_t = _teacher_logp((tc,) + extra, temperature)
        logp_s = jax.nn.log_softmax(chunk_logits(hc, head, temperature), axis=-1)
        d = divergence_from_logps(logp_s, logp_t, kind, beta)
        return acc + jnp.sum(jnp.where(mc > 0, d * mc, 0.0)), None

    total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), xs)
    return total


def _fused_sum_fwd(hs, head, teacher, mask, chunk, temperature, kind, beta):
    return _fused_sum(hs, head, teacher, mask, chunk, temperature, kind, beta), (hs, head, teacher, mask)


def _fused_sum_bwd(chunk, temperature, kind, beta, res, g):
    hs, head, teacher, mask = res
    n = hs.shape[0]
    xs = _chunk_xs(hs, teacher, mask, chunk)
    extra = teacher[1:]

    def body(d_head, x):
        hc, tc, mc = x
        logp_t = _teacher_logp((tc,) + extra, temperature)
        z, pull_z = jax.vjp(lambda hh, ww: chunk_logits(hh, ww, temperature), hc, head)
        w = jnp.where(mc > 0, mc, 0.0) * g
        _, pull = jax.vjp(
            lambda zz: divergence_from_logps(jax.nn.log_softmax(zz, axis=-1), logp_t, kind, beta), z)
        (dz,) = pull(w)
        dh, dw = pull_z(dz)
        return d_head + dw.astype(jnp.float32), dh

    d_head, dh = jax.lax.scan(body, jnp.zeros(head.shape, jnp.float32), xs)
    dh = dh.reshape((-1,) + hs.shape[1:])[:n]
    # Teacher and mask get zero cotangents: the teacher is under stop-gradient (METHOD §3.4).
    return dh.astype(hs.dtype), d_head.astype(head.dtype), None, None


_fused_sum.defvjp(_fused_sum_fwd, _fused_sum_bwd)


def _chunk_value_and_grads(hc, head, tc, mc, extra, temperature, kind, beta):
    """One chunk: (Σ m·D, d/dhc [C, d], d/dz [C, V]) with cotangent 1 on the chunk's masked sum,
    z = hc @ head (before the temperature; the 1/τ is in d/dz)."""
    w = jnp.where(mc > 0, mc, 0.0)
    z = logit_dot(hc, head)
    if kind == "forward":
        d, dz = _forward_kl_and_grad(z / temperature, _teacher_scaled(tc, extra, temperature),
                                     w / temperature)
    else:
        logp_t = _teacher_logp((tc,) + extra, temperature)
        d, pull = jax.vjp(
            lambda zz: divergence_from_logps(jax.nn.log_softmax(zz / temperature, axis=-1), logp_t,
                                             kind, beta), z)
        (dz,) = pull(w)
    dh = jnp.dot(dz.astype(head.dtype), head.T, preferred_element_type=jnp.float32)
    return jnp.sum(jnp.where(mc > 0, d * mc, 0.0)), dh, dz


def _forward_kl_and_grad(us, ut, w):
    """Per-token KL(p_T‖p_S) [C] and w_t · (p_S − p_T) [C, V] from scaled logits u = z/τ.

    Written out (rather than through jax.vjp of log_softmax) so that XLA needs only the two
    logit buffers and the gradient: two row-max passes, one pass of sums, one elementwise pass.
    KL_t = Σ_v p_T (u_T − u_S) − lse_T + lse_S."""
    ms, mt = us.max(-1, keepdims=True), ut.max(-1, keepdims=True)
    et = jnp.exp(ut - mt)
    st, ss = et.sum(-1), jnp.exp(us - ms).sum(-1)
    cross = (et * (ut - us)).sum(-1) / st
    lse_s, lse_t = ms[:, 0] + jnp.log(ss), mt[:, 0] + jnp.log(st)
    kl = cross - lse_t + lse_s
    dz = w[:, None] * (jnp.exp(us - lse_s[:, None]) - jnp.exp(ut - lse_t[:, None]))
    return kl, dz


@partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8))
def _fused_sum_eager(hs, head, teacher, mask, chunk, vc, temperature, kind, beta):
    """Same value as `_fused_sum`; under differentiation its forward pass also computes the
    gradients (the output is a scalar, so the backward pass only scales them by g). Four
    [chunk, d] x [d, V] matmuls per chunk instead of six, at the cost of holding d/dhead
    [d, V] f32 and d/dhs [N, d] from the forward to the backward pass. Each chunk's logits
    [chunk, V] exist once; its head gradient is added into d/dhead a [d, vocab_chunk] slice at
    a time (no [d, V] temporary), so the memory it adds is a few [chunk, V] buffers."""
    return _fused_sum(hs, head, teacher, mask, chunk, temperature, kind, beta)


def _fused_sum_eager_fwd(hs, head, teacher, mask, chunk, vc, temperature, kind, beta):
    n, v = hs.shape[0], head.shape[1]
    extra = teacher[1:]

    def body(carry, x):
        acc, d_head = carry
        hc, tc, mc = x
        val, dh, dz = _chunk_value_and_grads(hc, head, tc, mc, extra, temperature, kind, beta)
        dz = dz.astype(head.dtype)

        def add_slice(d_head, v0, size):   # d/dhead[:, v] += hcᵀ dz[:, v], in place
            cols = jnp.dot(hc.T, _cols(dz, v0, size), preferred_element_type=jnp.float32)
            return jax.lax.dynamic_update_slice_in_dim(d_head, _cols(d_head, v0, size) + cols, v0, axis=1)

        return (acc + val, _vocab_fold(add_slice, d_head, v, vc)), dh

    (total, d_head), dh = jax.lax.scan(
        body, (jnp.zeros((), jnp.float32), jnp.zeros(head.shape, jnp.float32)),
        _chunk_xs(hs, teacher, mask, chunk))
    dh = dh.reshape((-1,) + hs.shape[1:])[:n]
    return total, (dh.astype(hs.dtype), d_head.astype(head.dtype))


def _fused_sum_eager_bwd(chunk, vc, temperature, kind, beta, res, g):
    dh, d_head = res
    return (g * dh).astype(dh.dtype), (g * d_head).astype(d_head.dtype), None, None


_fused_sum_eager.defvjp(_fused_sum_eager_fwd, _fused_sum_eager_bwd)


# ---- fused, vocabulary-chunked (the default) ----
#
# Neither pass builds [chunk, V] nor a per-chunk [d, V] temporary. The forward pass scans token
# chunks and, inside each, folds over vocabulary slices with an online log-sum-exp (the
# flash-attention rescaling), saving per-token log-partitions lse_S, lse_T [N] (and, for the
# reverse KL and JSD, one more per-token sum) as residuals. The backward pass scans vocabulary
# slices v: it recomputes z[:, v] for the tokens (in token chunks), forms the logit gradient
# G[:, v] from p = exp(u − lse) alone, writes d/dhead[:, v] = Hᵀ G[:, v] into its slice once (no
# [d, V] accumulation) and adds G[:, v] head[:, v]ᵀ into d/dhidden. Working memory is
# O(chunk·vocab_chunk + N·d + d·vocab_chunk) beside the [d, V] head gradient itself.

def _vocab_fold(f, carry, v: int, vc: int):
    """carry = f(carry, v0, size) over slices [v0, v0+size) covering [0, v): a scan over the
    full slices (v0 traced) and, when vc does not divide v, one remainder step (v0 static)."""
    n_full = v // vc
    if n_full:
        carry, _ = jax.lax.scan(lambda c, j: (f(c, j * vc, vc), None), carry,
                                jnp.arange(n_full, dtype=jnp.int32))
    if v % vc:
        carry = f(carry, n_full * vc, v % vc)
    return carry


def _cols(x, v0, size):
    """x[:, v0:v0+size] (v0 may be traced; size is static)."""
    return jax.lax.dynamic_slice_in_dim(x, v0, size, axis=1)


def _scaled_logits(h, cols, temperature, is_logps):
    """u = z/τ for one [C, size] tile: h [C, d] @ cols [d, size], or given teacher log-probs."""
    if is_logps:
        return cols.astype(jnp.float32) / temperature
    return chunk_logits(h, cols, temperature)


def _lse_step(m, l, u):
    """Online log-sum-exp over the last axis: (running max m [C], Σexp(u−m) l [C]) ⊕ tile u."""
    m_new = jnp.maximum(m, u.max(-1))
    return m_new, l * jnp.exp(m - m_new) + jnp.exp(u - m_new[:, None]).sum(-1)


def _vocab_forward(hs, head, teacher, mask, chunk, vc, temperature, kind, beta):
    """(Σ_t m_t D_t, lse_S [N], lse_T [N], stat [N]); stat_t = D_t for forward/reverse, and
    KL(S‖M)_t for the JSD (what its backward pass needs)."""
    n, v = hs.shape[0], head.shape[1]
    is_logps = len(teacher) == 1
    t_head = None if is_logps else teacher[1]

    def tiles(hc, tc, v0, size):
        us = _scaled_logits(hc, _cols(head, v0, size), temperature, False)
        ut = _scaled_logits(tc, _cols(tc if is_logps else t_head, v0, size), temperature, is_logps)
        return us, ut

    def body(acc, x):
        hc, tc, mc = x
        c = hc.shape[0]
        neg = jnp.full((c,), -jnp.inf, jnp.float32)
        zero = jnp.zeros((c,), jnp.float32)

        def pass1(carry, v0, size):
            ms, ls, mt, lt, cross = carry
            us, ut = tiles(hc, tc, v0, size)
            ms2, ls2 = _lse_step(ms, ls, us)
            mt2, lt2 = _lse_step(mt, lt, ut)
            if kind == "forward":    # Σ_v exp(u_T − m_T)(u_T − u_S), rescaled as m_T grows
                cross = cross * jnp.exp(mt - mt2) + (jnp.exp(ut - mt2[:, None]) * (ut - us)).sum(-1)
            elif kind == "reverse":  # Σ_v exp(u_S − m_S)(u_S − u_T)
                cross = cross * jnp.exp(ms - ms2) + (jnp.exp(us - ms2[:, None]) * (us - ut)).sum(-1)
            return ms2, ls2, mt2, lt2, cross

        ms, ls, mt, lt, cross = _vocab_fold(pass1, (neg, zero, neg, zero, zero), v, vc)
        lse_s, lse_t = ms + jnp.log(ls), mt + jnp.log(lt)
        if kind == "forward":    # Σ p_T(u_T − u_S) − lse_T + lse_S
            d = cross / lt - lse_t + lse_s
            stat = d
        elif kind == "reverse":
            d = cross / ls - lse_s + lse_t
            stat = d
        else:                    # the JSD's log M needs both partitions: a second sweep
            def pass2(carry, v0, size):
                kt, ks = carry
                us, ut = tiles(hc, tc, v0, size)
                lps, lpt = us - lse_s[:, None], ut - lse_t[:, None]
                logm = jnp.logaddexp(lpt + math.log(beta), lps + math.log1p(-beta))
                return (kt + (jnp.exp(lpt) * (lpt - logm)).sum(-1),
                        ks + (jnp.exp(lps) * (lps - logm)).sum(-1))

            kl_t, kl_s = _vocab_fold(pass2, (zero, zero), v, vc)
            d = beta * kl_t + (1.0 - beta) * kl_s
            stat = kl_s
        return acc + jnp.sum(jnp.where(mc > 0, d * mc, 0.0)), (lse_s, lse_t, stat)

    total, per_token = jax.lax.scan(body, jnp.zeros((), jnp.float32),
                                    _chunk_xs(hs, teacher, mask, chunk))
    lse_s, lse_t, stat = (x.reshape(-1)[:n] for x in per_token)
    return total, lse_s, lse_t, stat


def _logit_grad(us, ut, lse_s, lse_t, stat, kind, beta):
    """d D_t / d u_S for one tile (p = exp(u − lse)); see the module docstring's divergences.
    forward: p_S − p_T.  reverse: p_S (c − D), c = log p_S − log p_T.
    jsd: p_S (c − (1−β) KL(S‖M)), c = (1−β)(log p_S − log M)."""
    lps, lpt = us - lse_s[:, None], ut - lse_t[:, None]
    ps = jnp.exp(lps)
    if kind == "forward":
        return ps - jnp.exp(lpt)
    if kind == "reverse":
        return ps * ((lps - lpt) - stat[:, None])
    logm = jnp.logaddexp(lpt + math.log(beta), lps + math.log1p(-beta))
    return ps * ((1.0 - beta) * ((lps - logm) - stat[:, None]))


@partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8))
def _fused_sum_vocab(hs, head, teacher, mask, chunk, vc, temperature, kind, beta):
    """Same value as `_fused_sum`, computed tile by tile ([chunk, vc]); see the section note."""
    return _vocab_forward(hs, head, teacher, mask, chunk, vc, temperature, kind, beta)[0]


def _fused_sum_vocab_fwd(hs, head, teacher, mask, chunk, vc, temperature, kind, beta):
    total, lse_s, lse_t, stat = _vocab_forward(hs, head, teacher, mask, chunk, vc, temperature,
                                               kind, beta)
    return total, (hs, head, teacher, mask, lse_s, lse_t, stat)


def _fused_sum_vocab_bwd(chunk, vc, temperature, kind, beta, res, g):
    hs, head, teacher, mask, lse_s, lse_t, stat = res
    n, d = hs.shape
    v = head.shape[1]
    is_logps = len(teacher) == 1
    # Per-token weight of the logit gradient: m_t · g / τ (u = z/τ); masked tokens get 0.
    w = jnp.where(mask > 0, mask, 0.0) * (g / temperature)
    token_xs = tuple(to_chunks(x, chunk) for x in (hs, w, lse_s, lse_t, stat))
    t_chunks = None if is_logps else to_chunks(teacher[0], chunk)

    def vocab_step(carry, v0, size):
        d_head, d_hs = carry
        w_cols = _cols(head, v0, size)
        t_cols = _cols(teacher[0], v0, size) if is_logps else _cols(teacher[1], v0, size)
        t_xs = to_chunks(t_cols, chunk) if is_logps else t_chunks

        def token_step(carry, x):
            d_cols, d_hs = carry
            i, (hc, wc, lsc, ltc, sc), tc = x
            us = _scaled_logits(hc, w_cols, temperature, False)
            ut = _scaled_logits(tc, tc if is_logps else t_cols, temperature, is_logps)
            gz = wc[:, None] * _logit_grad(us, ut, lsc, ltc, sc, kind, beta)   # [C, size] d/dz
            d_cols = d_cols + jnp.dot(hc.T, gz, preferred_element_type=jnp.float32)
            # In place into the [n_chunks, C, d] carry: no stacked per-slice copy of d/dhidden.
            d_hs = d_hs.at[i].add(jnp.dot(gz, w_cols.T, preferred_element_type=jnp.float32))
            return (d_cols, d_hs), None

        (d_cols, d_hs), _ = jax.lax.scan(token_step, (jnp.zeros((d, size), jnp.float32), d_hs),
                                         (jnp.arange(n_chunks), token_xs, t_xs))
        d_head = jax.lax.dynamic_update_slice_in_dim(d_head, d_cols.astype(head.dtype), v0, axis=1)
        return d_head, d_hs

    n_chunks = token_xs[0].shape[0]
    d_head, d_hs = _vocab_fold(vocab_step, (jnp.zeros(head.shape, head.dtype),
                                            jnp.zeros((n_chunks, chunk, d), jnp.float32)), v, vc)
    # Teacher and mask get zero cotangents: the teacher is under stop-gradient (METHOD §3.4).
    return d_hs.reshape(-1, d)[:n].astype(hs.dtype), d_head, None, None


_fused_sum_vocab.defvjp(_fused_sum_vocab_fwd, _fused_sum_vocab_bwd)


def fused_divergence_sum(student_hidden, head, teacher_hidden=None, teacher_head=None,
                         teacher_logps=None, mask=None, *, chunk: int = 512,
                         temperature: float = 1.0, kind: str = "forward", beta: float = 0.5,
                         grad_in_forward: bool = False, vocab_chunk: int | None = VOCAB_CHUNK):
    """(Σ_t m_t D_t, Σ_t m_t) without building [N, V]; for exact accumulation over micro-batches.

    student_hidden: [N, d] hidden states whose logits score the response tokens;
    head: [d, V] student LM head (gradients flow to it and to student_hidden);
    teacher: either teacher_hidden [N, d] + teacher_head [d, V], or teacher_logps [N, V]
    (precomputed log-probs at temperature 1); both under stop-gradient;
    mask: [N], 1 on sampled tokens (None: all tokens); chunk: tokens per scan step.
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
    if student_hidden.ndim != 2 or head.ndim != 2 or head.shape[0] != student_hidden.shape[1]:
        raise ValueError(f"need student_hidden [N, d] and head [d, V], got {student_hidden.shape} "
                         f"and {head.shape}")
    n = student_hidden.shape[0]
    if teacher_logps is not None:
        if teacher_hidden is not None or teacher_head is not None:
            raise ValueError("give the teacher either as teacher_logps or as teacher_hidden + "
                             "teacher_head, not both")
        if teacher_logps.shape != (n, head.shape[1]):
            raise ValueError(f"teacher_logps must be [N, V] = {(n, head.shape[1])}, "
                             f"got {teacher_logps.shape}")
        teacher = (jax.lax.stop_gradient(teacher_logps),)
    else:
        if teacher_hidden is None or teacher_head is None:
            raise ValueError("the teacher needs teacher_hidden and teacher_head, or teacher_logps")
        if teacher_hidden.shape[0] != n or teacher_head.shape[1] != head.shape[1]:
            raise ValueError(f"teacher_hidden {teacher_hidden.shape} / teacher_head "
                             f"{teacher_head.shape} do not match N = {n}, V = {head.shape[1]}")
        teacher = (jax.lax.stop_gradient(teacher_hidden), jax.lax.stop_gradient(teacher_head))
    mask = jnp.ones((n,), jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32)
    if mask.shape != (n,):
        raise ValueError(f"mask must be [N] = ({n},), got {mask.shape}")
    chunk = min(chunk, max(n, 1))
    mask = jax.lax.stop_gradient(mask)
    vc = head.shape[1] if vocab_chunk is None else min(int(vocab_chunk), head.shape[1])
    if grad_in_forward:
        total = _fused_sum_eager(student_hidden, head, teacher, mask, chunk, vc, float(temperature),
                                 kind, float(beta))
    elif vocab_chunk is None:
        total = _fused_sum(student_hidden, head, teacher, mask, chunk, float(temperature), kind,
                           float(beta))
    else:
        total = _fused_sum_vocab(student_hidden, head, teacher, mask, chunk, vc, float(temperature),
                                 kind, float(beta))
    return total, mask.sum()


def fused_forward_kl_sum(student_hidden, head, teacher_hidden=None, teacher_head=None,
                         teacher_logps=None, mask=None, *, chunk: int = 512, temperature: float = 1.0,
                         grad_in_forward: bool = True, vocab_chunk: int | None = VOCAB_CHUNK):
    """(Σ_t m_t KL(p_T‖p_S)_t, Σ_t m_t), fused and chunked; see `fused_divergence_sum`.

    Defaults to `grad_in_forward` (token chunks of `chunk`, the gradient written out by hand):
    the fastest form, 4 matmuls like the naive loss, holding three [chunk, V] f32 buffers; pass
    grad_in_forward=False for the vocabulary-tiled form (6 tile matmuls, O(chunk x vocab_chunk))
    when even [chunk, V] is too much."""
    return fused_divergence_sum(student_hidden, head, teacher_hidden, teacher_head, teacher_logps,
                                mask, chunk=chunk, temperature=temperature, kind="forward",
                                grad_in_forward=grad_in_forward, vocab_chunk=vocab_chunk)


def fused_forward_kl(student_hidden, head, teacher_hidden=None, teacher_head=None,
                     teacher_logps=None, mask=None, *, chunk: int = 512, temperature: float = 1.0,
                     grad_in_forward: bool = True, vocab_chunk: int | None = VOCAB_CHUNK):
    """The OFSD loss of METHOD §3.4, fused: Σ_t m_t KL(p_T‖p_S)_t / max(Σ_t m_t, 1).

    Gradient w.r.t. the student logits is m_t (softmax(z_S/τ) − p_T)/(τ Σm). By default it is
    formed in the forward pass, [chunk, V] logits at a time (see `fused_forward_kl_sum`);
    grad_in_forward=False recomputes [chunk, vocab_chunk] logit tiles in the backward pass."""
    total, count = fused_forward_kl_sum(student_hidden, head, teacher_hidden, teacher_head,
                                        teacher_logps, mask, chunk=chunk, temperature=temperature,
                                        grad_in_forward=grad_in_forward, vocab_chunk=vocab_chunk)
    return total / jnp.maximum(count, 1.0)


def fused_reverse_kl(student_hidden, head, teacher_hidden=None, teacher_head=None,
                     teacher_logps=None, mask=None, *, chunk: int = 512, temperature: float = 1.0,
                     grad_in_forward: bool = False, vocab_chunk: int | None = VOCAB_CHUNK):
    """mean over masked tokens of KL(p_S‖p_T), fused and chunked."""
    total, count = fused_divergence_sum(student_hidden, head, teacher_hidden, teacher_head,
                                        teacher_logps, mask, chunk=chunk, temperature=temperature,
                                        kind="reverse", grad_in_forward=grad_in_forward,
                                        vocab_chunk=vocab_chunk)
    return total / jnp.maximum(count, 1.0)


def fused_generalized_jsd(student_hidden, head, teacher_hidden=None, teacher_head=None,
                          teacher_logps=None, mask=None, *, beta: float = 0.5, chunk: int = 512,
                          temperature: float = 1.0, grad_in_forward: bool = False,
                          vocab_chunk: int | None = VOCAB_CHUNK):
    """mean over masked tokens of the generalised JSD(β), fused and chunked."""
    total, count = fused_divergence_sum(student_hidden, head, teacher_hidden, teacher_head,
                                        teacher_logps, mask, chunk=chunk, temperature=temperature,
                                        kind="jsd", beta=beta, grad_in_forward=grad_in_forward,
                                        vocab_chunk=vocab_chunk)
    return total / jnp.maximum(count, 1.0)
