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
    (T == 1) advance it, appends (prompt, observation: T > 1) do not. Past its script's end a
    row repeats the script's last token (pad scripts with EOS)."""

    def __init__(self, script: np.ndarray, vocab: int):
        self.script = nnx.Variable(jnp.asarray(script, jnp.int32))
        self.cfg = ModelConfig(vocab_size=vocab, d_model=8, n_layers=1, n_heads=1, n_kv_heads=1,
                               head_dim=2, mlp_dim=8)

    def extend(self, tokens, n_valid, cache, output="last"):
        count = cache.k[0][:, 0, 0, 0].astype(jnp.int32)
        if tokens.shape[1] == 1:
            count = count + n_valid
        k0 = cache.k[0].at[:, 0, 0, 0].set(count.astype(cache.k[0].dtype))
        script = self.script[...]
        nxt = script[jnp.arange(script.shape[0]), jnp.minimum(count, script.shape[1] - 1)]
        logits = jnp.where(jax.nn.one_hot(nxt, self.cfg.vocab_size) > 0, 0.0, -1e9)
        return logits, KVCache((k0,), cache.v, cache.length + n_valid.astype(jnp.int32))
