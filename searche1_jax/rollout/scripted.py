"""A policy that emits a fixed token script: the agent's own code path for rendered trajectories.

`ScriptedPolicy(script [B, N], vocab)` emits script[b, i] as row b's i-th sampled token,
whatever the context, so `SearchAgent.run` turns a scripted text into a trajectory exactly as
it does a sampled one (the same prompt, turn cuts, retrieval, observations, loss mask and
bytes). The warm start renders its training trajectories this way; tests script scenarios.
It has no weights: its KV cache is a few floats a slot.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from searche1_jax.model.config import ModelConfig
from searche1_jax.model.transformer import KVCache


class ScriptedPolicy(nnx.Module):
    """The count of tokens a row has sampled lives in cache.k[0][:, 0, 0, 0]: decode steps
    (T == 1) advance it, appends (prompt, observation: T > 1) do not. Which script a row follows
    lives in cache.k[0][:, 0, 1, 0] (`tag_rows`), so a row keeps its script in any batch the
    engine gathers it into. Past its script's end a row repeats the script's last token (pad
    scripts with EOS)."""

    def __init__(self, script: np.ndarray, vocab: int):
        self.script = nnx.Variable(jnp.asarray(script, jnp.int32))
        self.cfg = ModelConfig(vocab_size=vocab, d_model=8, n_layers=1, n_heads=1, n_kv_heads=1,
                               head_dim=2, mlp_dim=8)

    def _logits(self, row, count):
        script = self.script[...]
        nxt = script[jnp.clip(row, 0, script.shape[0] - 1), jnp.minimum(count, script.shape[1] - 1)]
        return jnp.where(jax.nn.one_hot(nxt, self.cfg.vocab_size) > 0, 0.0, -1e9)

    def tag_rows(self, state):
        """The engine calls this once, right after the prefill: row b of the batch follows
        script[b] from then on (and its next-token logits are its script's first token). A shared
        prefill gives every row of a group one cache; the scripts are per row."""
        b = state.cache.length.shape[0]
        row = jnp.arange(b)
        k0 = state.cache.k[0].at[:, 0, 1, 0].set(row.astype(state.cache.k[0].dtype))
        count = k0[:, 0, 0, 0].astype(jnp.int32)
        return state._replace(cache=state.cache._replace(k=(k0,) + tuple(state.cache.k[1:])),
                              logits=self._logits(row, count))

    def extend(self, tokens, n_valid, cache, output="last"):
        count = cache.k[0][:, 0, 0, 0].astype(jnp.int32)
        if tokens.shape[1] == 1:
            count = count + n_valid
        k0 = cache.k[0].at[:, 0, 0, 0].set(count.astype(cache.k[0].dtype))
        row = cache.k[0][:, 0, 1, 0].astype(jnp.int32)
        return self._logits(row, count), KVCache((k0,), cache.v, cache.length + n_valid.astype(jnp.int32))
