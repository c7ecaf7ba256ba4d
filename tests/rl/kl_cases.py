"""Shared by the KL tests: a float64 numpy oracle, small inputs, and a fused-vs-naive harness."""
from functools import partial

import jax
import numpy as np

from searche1_jax.rl.fused_kl import fused_divergence_sum
from searche1_jax.rl.kl import forward_kl, generalized_jsd, reverse_kl

# ---- independent numpy oracle, float64 ----


def np_logsoftmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_div(zs, zt, mask, kind="forward", beta=0.5, temperature=1.0):
    ls = np_logsoftmax(np.asarray(zs, np.float64) / temperature)
    lt = np_logsoftmax(np.asarray(zt, np.float64) / temperature)
    ps, pt = np.exp(ls), np.exp(lt)
    if kind == "forward":
        d = (pt * (lt - ls)).sum(-1)
    elif kind == "reverse":
        d = (ps * (ls - lt)).sum(-1)
    else:
        m = beta * pt + (1 - beta) * ps
        d = beta * (pt * (lt - np.log(m))).sum(-1) + (1 - beta) * (ps * (ls - np.log(m))).sum(-1)
    mask = np.asarray(mask, np.float64)
    return (d * mask).sum() / max(mask.sum(), 1.0)


def inputs(seed, n=11, d=12, v=83):
    r = np.random.default_rng(seed)
    f = lambda *s: r.normal(size=s).astype(np.float32)  # noqa: E731
    hs, ht = f(n, d), f(n, d)
    w, wt = f(d, v) / np.sqrt(d), f(d, v) / np.sqrt(d)
    mask = (r.random(n) < 0.7).astype(np.float32)
    mask[0] = 1.0
    return hs, w.astype(np.float32), ht, wt.astype(np.float32), mask


NAIVE = {"forward": forward_kl, "reverse": reverse_kl,
         "jsd": lambda s, t, m, temperature: generalized_jsd(s, t, m, beta=0.3, temperature=temperature)}



@partial(jax.jit, static_argnames=("chunk", "kind", "temperature", "eager", "logps", "vocab_chunk",
                                    "barrier"))
def fused_and_naive(hs, w, ht, wt, mask, *, chunk, kind, temperature, eager, logps,
                    vocab_chunk=2048, barrier=False):
    def fused(hs, w):
        kw = dict(teacher_logps=jax.nn.log_softmax(ht @ wt, -1)) if logps else dict(
            teacher_hidden=ht, teacher_head=wt)
        s, c = fused_divergence_sum(hs, w, mask=mask, chunk=chunk, temperature=temperature, kind=kind,
                                    beta=0.3, grad_in_forward=eager, vocab_chunk=vocab_chunk, barrier=barrier,
                                    **kw)
        return s / c

    def naive(hs, w):
        return NAIVE[kind](hs @ w, ht @ wt, mask, temperature=temperature)

    return (jax.value_and_grad(fused, argnums=(0, 1))(hs, w),
            jax.value_and_grad(naive, argnums=(0, 1))(hs, w))
