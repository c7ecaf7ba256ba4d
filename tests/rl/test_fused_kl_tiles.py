"""The vocabulary-tiled fused divergences (rl/fused_kl_tiles.py): gradients and memory."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from searche1_jax.rl.fused_kl import fused_forward_kl

from tests.rl.kl_cases import fused_and_naive, inputs


@pytest.mark.parametrize("kind,logps,chunk,vocab_chunk,temperature,eager", [
    # 4 does not divide N = 11, 10 does not divide V = 83: remainder steps in both loops
    *[(k, lp, 4, 10, 0.7, False) for k in ("forward", "reverse", "jsd") for lp in (False, True)],
    ("forward", False, 32, 83, 1.3, False),  # one token chunk larger than N, one slice of exactly V
    # grad_in_forward adds each chunk's head gradient a vocabulary slice at a time
    ("forward", False, 4, 10, 0.7, True),   # the hand-written forward-KL gradient
    ("forward", True, 4, 10, 1.3, True),    # ... with the teacher given as log-probs
    ("jsd", True, 4, 10, 1.3, True),
])
def test_vocab_chunked_grad_matches_naive(kind, logps, chunk, vocab_chunk, temperature, eager):
    # The default path: online log-sum-exp forward, backward over vocabulary slices writing each
    # slice of d/dhead once. Exact gradients: jax.grad of the naive [N, V] loss is the oracle.
    hs, w, ht, wt, mask = inputs(8)
    (v1, g1), (v2, g2) = fused_and_naive(hs, w, ht, wt, mask, chunk=chunk, kind=kind,
                                          temperature=temperature, eager=eager, logps=logps,
                                          vocab_chunk=vocab_chunk)
    np.testing.assert_allclose(float(v1), float(v2), rtol=1e-5, atol=1e-6)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_vocab_chunked_backward_builds_no_vocab_wide_temporary():
    # XLA's planned temporaries (from shapes, nothing runs): the tile path holds neither a
    # [chunk, V] logit buffer nor a [d, V] head-gradient temporary (only the [d, V] output);
    # the token-chunked path holds both. d = 32, V = 8192: [d, V] f32 is 1 MiB, [chunk, V] 2 MiB.
    n, d, v = 512, 32, 8192
    args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in ((n, d), (d, v), (n, d), (d, v), (n,))]

    def temp_bytes(vocab_chunk):
        loss = lambda hs, w, ht, wt, m: fused_forward_kl(hs, w, ht, wt, None, m, chunk=64,  # noqa: E731
                                                         vocab_chunk=vocab_chunk, grad_in_forward=False)
        fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
        return fn.lower(*args).compile().memory_analysis().temp_size_in_bytes

    assert temp_bytes(500) < d * v * 4 <= temp_bytes(None)
