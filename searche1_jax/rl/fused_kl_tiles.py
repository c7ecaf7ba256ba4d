"""The fused divergences on vocabulary tiles: neither pass builds [chunk, V] (METHOD §3.4).

For when even [chunk, V] logits are too much (`fused_divergence_sum(..., vocab_chunk=...)`
without grad_in_forward). The forward pass scans token chunks and, inside each, folds over
vocabulary slices with an online log-sum-exp (the flash-attention rescaling), saving per-token
log-partitions lse_S, lse_T [N] (and, for the reverse KL and JSD, one more per-token sum) as
residuals. The backward pass scans vocabulary slices v: it recomputes z[:, v] for the tokens (in
token chunks), forms the logit gradient G[:, v] from p = exp(u − lse) alone, writes
d/dhead[:, v] = Hᵀ G[:, v] into its slice once (no [d, V] accumulation) and adds
G[:, v] head[:, v]ᵀ into d/dhidden. Working memory is O(chunk·vocab_chunk + N·d + d·vocab_chunk)
beside the [d, V] head gradient itself; 6 tile matmuls per token.
"""
from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp

from searche1_jax.rl.logprobs import chunk_logits
from searche1_jax.rl.rows import (from_row_chunks, grouped_outer, head_for_rows, rows_of, to_row_chunks,
                                  ungroup, zeros_grouped)

VOCAB_CHUNK = 2048   # vocabulary columns per logit tile of the fused losses (about d)


def vocab_fold(f, carry, v: int, vc: int):
    """carry = f(carry, v0, size) over slices [v0, v0+size) covering [0, v): a scan over the
    full slices (v0 traced) and, when vc does not divide v, one remainder step (v0 static)."""
    n_full = v // vc
    if n_full:
        carry, _ = jax.lax.scan(lambda c, j: (f(c, j * vc, vc), None), carry,
                                jnp.arange(n_full, dtype=jnp.int32))
    if v % vc:
        carry = f(carry, n_full * vc, v % vc)
    return carry


def columns(x, v0, size):
    """x[..., v0:v0+size] (v0 may be traced; size is static)."""
    return jax.lax.dynamic_slice_in_dim(x, v0, size, axis=x.ndim - 1)


def _scaled_logits(h, cols, temperature, is_logps, barrier, layout=None):
    """u = z/τ for one [B, c, size] tile: h [B, c, d] @ cols [d, size], or given teacher log-probs."""
    if is_logps:
        return rows_of(cols.astype(jnp.float32) / temperature, layout)
    return rows_of(chunk_logits(rows_of(h, layout), cols, temperature, barrier), layout)


def _lse_step(m, s, u):
    """Online log-sum-exp over the last axis: (running max m [...], Σexp(u−m) s [...]) ⊕ tile u."""
    m_new = jnp.maximum(m, u.max(-1))
    return m_new, s * jnp.exp(m - m_new) + jnp.exp(u - m_new[..., None]).sum(-1)


def _vocab_forward(hs, head, teacher, mask, chunk, vc, temperature, kind, beta, barrier, layout):
    """(Σ_t m_t D_t, lse_S [B, R], lse_T [B, R], stat [B, R]); stat_t = D_t for forward/reverse,
    and KL(S‖M)_t for the JSD (what its backward pass needs)."""
    r, v = hs.shape[1], head.shape[1]
    is_logps = len(teacher) == 1
    # whole heads on every device: a tile's columns are then a local slice
    head = head_for_rows(head, layout, vocab=False)
    t_head = None if is_logps else head_for_rows(teacher[1], layout, vocab=False)

    def tiles(hc, tc, v0, size):
        us = _scaled_logits(hc, columns(head, v0, size), temperature, False, barrier, layout)
        ut = _scaled_logits(tc, columns(tc if is_logps else t_head, v0, size), temperature, is_logps,
                            barrier, layout)
        return us, ut

    def body(acc, x):
        hc, tc, mc = x
        neg = jnp.full(hc.shape[:-1], -jnp.inf, jnp.float32)
        zero = jnp.zeros(hc.shape[:-1], jnp.float32)

        def pass1(carry, v0, size):
            ms, ls, mt, lt, cross = carry
            us, ut = tiles(hc, tc, v0, size)
            ms2, ls2 = _lse_step(ms, ls, us)
            mt2, lt2 = _lse_step(mt, lt, ut)
            if kind == "forward":    # Σ_v exp(u_T − m_T)(u_T − u_S), rescaled as m_T grows
                cross = cross * jnp.exp(mt - mt2) + (jnp.exp(ut - mt2[..., None]) * (ut - us)).sum(-1)
            elif kind == "reverse":  # Σ_v exp(u_S − m_S)(u_S − u_T)
                cross = cross * jnp.exp(ms - ms2) + (jnp.exp(us - ms2[..., None]) * (us - ut)).sum(-1)
            return ms2, ls2, mt2, lt2, cross

        ms, ls, mt, lt, cross = vocab_fold(pass1, (neg, zero, neg, zero, zero), v, vc)
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
                lps, lpt = us - lse_s[..., None], ut - lse_t[..., None]
                logm = jnp.logaddexp(lpt + math.log(beta), lps + math.log1p(-beta))
                return (kt + (jnp.exp(lpt) * (lpt - logm)).sum(-1),
                        ks + (jnp.exp(lps) * (lps - logm)).sum(-1))

            kl_t, kl_s = vocab_fold(pass2, (zero, zero), v, vc)
            d = beta * kl_t + (1.0 - beta) * kl_s
            stat = kl_s
        return acc + jnp.sum(jnp.where(mc > 0, d * mc, 0.0)), (lse_s, lse_t, stat)

    xs = tuple(to_row_chunks(x, chunk) for x in (hs, teacher[0], mask))
    total, per_token = jax.lax.scan(body, jnp.zeros((), jnp.float32), xs)
    lse_s, lse_t, stat = (from_row_chunks(x, r) for x in per_token)
    return total, lse_s, lse_t, stat


def _logit_grad(us, ut, lse_s, lse_t, stat, kind, beta):
    """d D_t / d u_S for one tile (p = exp(u − lse)); see `kl.py`'s definitions.
    forward: p_S − p_T.  reverse: p_S (c − D), c = log p_S − log p_T.
    jsd: p_S (c − (1−β) KL(S‖M)), c = (1−β)(log p_S − log M)."""
    lps, lpt = us - lse_s[..., None], ut - lse_t[..., None]
    ps = jnp.exp(lps)
    if kind == "forward":
        return ps - jnp.exp(lpt)
    if kind == "reverse":
        return ps * ((lps - lpt) - stat[..., None])
    logm = jnp.logaddexp(lpt + math.log(beta), lps + math.log1p(-beta))
    return ps * ((1.0 - beta) * ((lps - logm) - stat[..., None]))


@partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8, 9, 10))
def fused_sum_tiles(hs, head, teacher, mask, chunk, vc, temperature, kind, beta, barrier, layout):
    """Σ_t mask_t · D(p_T,t ‖ p_S,t) computed tile by tile ([B, c, vc]; see the module docstring).

    hs [B, R, d], head [d, V]; teacher = (th [B, R, d], thead [d, V]) or (tlogp [B, R, V],),
    under stop-gradient; mask [B, R]; chunk: positions per row a step (`rows.py`); barrier:
    `logit_dot`'s; layout: `rows.py`'s. Arguments are checked by the caller
    (`fused_kl.fused_divergence_sum`)."""
    return _vocab_forward(hs, head, teacher, mask, chunk, vc, temperature, kind, beta, barrier, layout)[0]


def _fused_sum_tiles_fwd(hs, head, teacher, mask, chunk, vc, temperature, kind, beta, barrier, layout):
    total, lse_s, lse_t, stat = _vocab_forward(hs, head, teacher, mask, chunk, vc, temperature,
                                               kind, beta, barrier, layout)
    return total, (hs, head, teacher, mask, lse_s, lse_t, stat)


def _fused_sum_tiles_bwd(chunk, vc, temperature, kind, beta, barrier, layout, res, g):
    hs, head, teacher, mask, lse_s, lse_t, stat = res
    b, r, d = hs.shape
    v = head.shape[1]
    is_logps = len(teacher) == 1
    w_head = head_for_rows(head, layout, vocab=False)
    t_head = None if is_logps else head_for_rows(teacher[1], layout, vocab=False)
    # Per-token weight of the logit gradient: m_t · g / τ (u = z/τ); masked tokens get 0.
    w = jnp.where(mask > 0, mask, 0.0) * (g / temperature)
    token_xs = tuple(to_row_chunks(x, chunk) for x in (hs, w, lse_s, lse_t, stat))
    t_chunks = None if is_logps else to_row_chunks(teacher[0], chunk)
    n_chunks = token_xs[0].shape[0]

    def vocab_step(carry, v0, size):
        d_head, d_hs = carry
        w_cols = columns(w_head, v0, size)
        t_cols = columns(teacher[0], v0, size) if is_logps else columns(t_head, v0, size)
        t_xs = to_row_chunks(t_cols, chunk) if is_logps else t_chunks

        def token_step(carry, x):
            d_cols, d_hs = carry
            i, (hc, wc, lsc, ltc, sc), tc = x
            us = _scaled_logits(hc, w_cols, temperature, False, barrier, layout)
            ut = _scaled_logits(tc, tc if is_logps else t_cols, temperature, is_logps, barrier, layout)
            gz = wc[..., None] * _logit_grad(us, ut, lsc, ltc, sc, kind, beta)   # [B, c, size] d/dz
            # per row group, summed after the vocabulary fold (`rows.grouped_outer`)
            d_cols = d_cols + grouped_outer(rows_of(hc, layout), gz, layout, vocab=False)
            # In place into the [n_chunks, B, c, d] carry: no stacked per-slice copy of d/dhidden.
            d_hs = d_hs.at[i].add(jnp.einsum("bcv,dv->bcd", gz, w_cols, preferred_element_type=jnp.float32))
            return (d_cols, d_hs), None

        (d_cols, d_hs), _ = jax.lax.scan(token_step, (zeros_grouped(b, (d, size), layout, vocab=False), d_hs),
                                         (jnp.arange(n_chunks), token_xs, t_xs))
        d_head = jax.lax.dynamic_update_slice_in_dim(d_head, d_cols.astype(d_head.dtype), v0, axis=d_head.ndim - 1)
        return d_head, d_hs

    d_head, d_hs = vocab_fold(vocab_step, (zeros_grouped(b, (d, v), layout, vocab=False, dtype=head.dtype),
                                            jnp.zeros((n_chunks, b, chunk, d), jnp.float32)), v, vc)
    # Teacher and mask get zero cotangents: the teacher is under stop-gradient (METHOD §3.4).
    return (from_row_chunks(d_hs, r).astype(hs.dtype), ungroup(d_head).astype(head.dtype), None, None)


fused_sum_tiles.defvjp(_fused_sum_tiles_fwd, _fused_sum_tiles_bwd)
