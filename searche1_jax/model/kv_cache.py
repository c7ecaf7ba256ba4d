"""The KV cache of `Transformer.extend`: its layout, its sharding and its creation.

Keys k [B, K, H, S] and values v [B, K, S, H] per layer (the layouts the two attention dots read
without copying) and each row's number of written slots `length` [B]. On a mesh the rows split
over the batch axes (data x fsdp) and the KV heads over tensor where it divides their count
(else they replicate: a head is never cut), and the cache is created already sharded.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from searche1_jax.model.config import ModelConfig
from searche1_jax.model.sharding import DEFAULT_RULES, named_sharding


class KVCache(NamedTuple):
    """Per-layer keys k [B, K, D, S] and values v [B, K, S, D], and each row's number of written
    slots `length` [B].

    Keys are stored transposed (slots last) and values slot-major, the layouts the two
    attention dots read without copying. Only valid tokens are written, so slot index == RoPE
    position for every row.
    """
    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    length: jax.Array

    @property
    def max_len(self) -> int:
        return self.v[0].shape[2]


# logical axes of the cache arrays (`sharding.py` maps them): rows over the batch axes (data x
# fsdp), KV heads over tensor where it divides their count (else replicated: heads stay whole)
CACHE_K_AXES = ("batch", "kv_heads", "head_dim", "length")
CACHE_V_AXES = ("batch", "kv_heads", "length", "head_dim")


def cache_shardings(cfg: ModelConfig, batch: int, max_len: int, mesh, rules=DEFAULT_RULES) -> KVCache:
    """The NamedSharding of each array of a [batch, max_len] cache on `mesh` (a KVCache of them)."""
    k_shape = (batch, cfg.n_kv_heads, cfg.head_dim, max_len)
    v_shape = (batch, cfg.n_kv_heads, max_len, cfg.head_dim)
    k = named_sharding(CACHE_K_AXES, k_shape, mesh, rules)
    v = named_sharding(CACHE_V_AXES, v_shape, mesh, rules)
    return KVCache((k,) * cfg.n_layers, (v,) * cfg.n_layers,
                   named_sharding(("batch",), (batch,), mesh, rules))


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=None, *, mesh=None,
               rules=DEFAULT_RULES) -> KVCache:
    """An empty cache for `batch` rows of `max_len` slots. With a mesh it is created sharded,
    inside one jit (`cache_shardings`): no device ever holds more than its share, where plain
    zeros would put every row's cache on one device first."""
    dtype = jnp.dtype(dtype or cfg.dtype)
    k_shape = (batch, cfg.n_kv_heads, cfg.head_dim, max_len)
    v_shape = (batch, cfg.n_kv_heads, max_len, cfg.head_dim)

    def zeros():
        return KVCache(tuple(jnp.zeros(k_shape, dtype) for _ in range(cfg.n_layers)),
                       tuple(jnp.zeros(v_shape, dtype) for _ in range(cfg.n_layers)),
                       jnp.zeros((batch,), jnp.int32))

    if mesh is None:
        return zeros()
    return jax.jit(zeros, out_shardings=cache_shardings(cfg, batch, max_len, mesh, rules))()
