"""The KV cache of `Transformer.extend`: its layout, its sharding and its creation.

Keys k [B, K, H, S] and values v [B, K, S, H] per layer (the layouts the two attention dots read
without copying) and each row's number of written slots `length` [B]. A `scan_layers` model
keeps them stacked instead, k [L, B, K, H, S] and v [L, B, K, S, H] (what its scan reads and
writes); the row and slot helpers here (`cache_rows`, `cache_prefix`, ...) take either form. On a
mesh the rows split over the batch axes (data x fsdp) and the KV heads over tensor where it
divides their count (else they replicate: a head is never cut), and the cache is created already
sharded.
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
    k: tuple[jax.Array, ...] | jax.Array   # per layer, or stacked [L, ...] (scan_layers)
    v: tuple[jax.Array, ...] | jax.Array
    length: jax.Array

    @property
    def stacked(self) -> bool:
        """True for the scan_layers form: k and v are single [L, ...] arrays."""
        return not isinstance(self.k, (tuple, list))

    @property
    def max_len(self) -> int:
        return (self.v if self.stacked else self.v[0]).shape[-2]


def cache_prefix(cache: KVCache, window: int) -> KVCache:
    """The cache's first `window` slots (either layout: slots are k's last axis, v's second last)."""
    return KVCache(jax.tree.map(lambda k: k[..., :window], cache.k),
                   jax.tree.map(lambda v: v[..., :window, :], cache.v), cache.length)


def cache_put_prefix(full: KVCache, part: KVCache) -> KVCache:
    """`full` with its first slots overwritten by `part` (a `cache_prefix` of it)."""
    put = lambda f, p: jax.lax.dynamic_update_slice(f, p, (0,) * f.ndim)  # noqa: E731
    return KVCache(jax.tree.map(put, full.k, part.k), jax.tree.map(put, full.v, part.v), part.length)


def cache_rows(cache: KVCache, rows: jax.Array) -> KVCache:
    """Rows `rows` [R] of the cache (an index >= B clips to the last row, a padding row)."""
    axis = 1 if cache.stacked else 0
    take = lambda x, a=axis: jnp.take(x, rows, axis=a, mode="clip")  # noqa: E731
    return KVCache(jax.tree.map(take, cache.k), jax.tree.map(take, cache.v), take(cache.length, 0))


def cache_put_rows(full: KVCache, part: KVCache, rows: jax.Array) -> KVCache:
    """`full` with rows `rows` (and their first part.max_len slots) set from `part`, a
    `cache_rows` (and prefix) of it; indices >= B (padding rows) are dropped."""
    w = part.max_len
    lead = (slice(None),) if full.stacked else ()
    k_at = lead + (rows, Ellipsis, slice(0, w))
    v_at = lead + (rows, slice(None), slice(0, w))
    return KVCache(jax.tree.map(lambda f, p: f.at[k_at].set(p, mode="drop"), full.k, part.k),
                   jax.tree.map(lambda f, p: f.at[v_at].set(p, mode="drop"), full.v, part.v),
                   full.length.at[rows].set(part.length, mode="drop"))


# logical axes of the cache arrays (`sharding.py` maps them): rows over the batch axes (data x
# fsdp), KV heads over tensor where it divides their count (else replicated: heads stay whole)
CACHE_K_AXES = ("batch", "kv_heads", "head_dim", "length")
CACHE_V_AXES = ("batch", "kv_heads", "length", "head_dim")


def cache_shardings(cfg: ModelConfig, batch: int, max_len: int, mesh, rules=DEFAULT_RULES) -> KVCache:
    """The NamedSharding of each array of a [batch, max_len] cache on `mesh` (a KVCache of them)."""
    k_shape = (batch, cfg.n_kv_heads, cfg.head_dim, max_len)
    v_shape = (batch, cfg.n_kv_heads, max_len, cfg.head_dim)
    length = named_sharding(("batch",), (batch,), mesh, rules)
    if cfg.scan_layers:  # the stacked axis maps to no mesh axis (rules: "layers" -> None)
        L = (cfg.n_layers,)
        return KVCache(named_sharding(("layers",) + CACHE_K_AXES, L + k_shape, mesh, rules),
                       named_sharding(("layers",) + CACHE_V_AXES, L + v_shape, mesh, rules), length)
    k = named_sharding(CACHE_K_AXES, k_shape, mesh, rules)
    v = named_sharding(CACHE_V_AXES, v_shape, mesh, rules)
    return KVCache((k,) * cfg.n_layers, (v,) * cfg.n_layers, length)


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=None, *, mesh=None,
               rules=DEFAULT_RULES) -> KVCache:
    """An empty cache for `batch` rows of `max_len` slots. With a mesh it is created sharded,
    inside one jit (`cache_shardings`): no device ever holds more than its share, where plain
    zeros would put every row's cache on one device first."""
    dtype = jnp.dtype(dtype or cfg.dtype)
    k_shape = (batch, cfg.n_kv_heads, cfg.head_dim, max_len)
    v_shape = (batch, cfg.n_kv_heads, max_len, cfg.head_dim)

    def zeros():
        if cfg.scan_layers:
            L = (cfg.n_layers,)
            return KVCache(jnp.zeros(L + k_shape, dtype), jnp.zeros(L + v_shape, dtype),
                           jnp.zeros((batch,), jnp.int32))
        return KVCache(tuple(jnp.zeros(k_shape, dtype) for _ in range(cfg.n_layers)),
                       tuple(jnp.zeros(v_shape, dtype) for _ in range(cfg.n_layers)),
                       jnp.zeros((batch,), jnp.int32))

    if mesh is None:
        return zeros()
    return jax.jit(zeros, out_shardings=cache_shardings(cfg, batch, max_len, mesh, rules))()
