"""Packed calls' working rows, chosen and gathered within each device's rows (issue 20).

A KV cache's rows are split over the mesh's batch axes (data x fsdp) into S contiguous blocks of
B / S rows, one per device group (S = 1 on one device). A packed call names its working rows as
`rows` [S, r]: block s lists r rows of shard s's own block (global row indices; B = a padding
row). The gather and the scatter back are then a take / set batched over the S blocks, the axis
the cache is split on: each device reads and writes its own rows only, with no collective. A
plain `jnp.take` over the sharded row axis instead makes XLA replicate the whole cache on every
device (plan --aot, Qwen2.5-3B, 2,560 rows on 8 x H100: 1,336 GB of temporaries per device).

Packing per shard changes which rows share a call on a mesh, not what any row computes: rows are
independent (attention reads a row's own cache, each row samples with its own key), so a row's
tokens do not depend on its batch-mates (tests/rollout/test_engine.py checks 8 devices against 1).
"""
from __future__ import annotations

import bisect

import jax
import jax.numpy as jnp
import numpy as np

from searche1_jax.shapes import row_buckets


def row_shards(x: jax.Array) -> int:
    """S: the blocks x's leading (row) axis is split into over devices (1: not split).
    Devices that hold the same block (replicas over other mesh axes) count once."""
    return x.shape[0] // x.sharding.shard_shape(x.shape)[0]


def pack_rows(live, n_rows: int, shards: int, kind: str = "half") -> tuple[np.ndarray, int]:
    """The working rows of a call on rows `live` of a batch split into `shards` blocks.

    -> (rows [shards, n] int32, exit_below): block s holds the live rows of shard s (rows
    s*m .. (s+1)*m - 1, m = n_rows / shards) in `live`'s order, then padding (n_rows); n is the
    smallest `row_buckets(m, kind)` size that holds the fullest shard's rows, exit_below the bucket
    below it (0 for the smallest): a decode can leave once no shard runs more rows than that,
    and the rows still running are re-packed into the smaller bucket. With one shard this is the
    single-device packing: live rows in order, padded to the next of `row_buckets(n_rows)`."""
    if shards < 1 or n_rows % shards:
        raise ValueError(f"pack_rows: {n_rows} rows do not split into {shards} equal shards; "
                         f"make the rollout rows a multiple of the devices they are split over")
    live = [int(r) for r in live]
    bad = [r for r in live if not 0 <= r < n_rows]
    if bad or len(set(live)) != len(live):
        raise ValueError(f"pack_rows: live rows must be distinct rows of 0..{n_rows - 1}, got {live}")
    m = n_rows // shards
    per = [[] for _ in range(shards)]
    for r in live:
        per[r // m].append(r)
    buckets = row_buckets(m, kind)
    i = bisect.bisect_left(buckets, max((len(p) for p in per), default=0))
    n = buckets[i]
    rows = np.asarray([p + [n_rows] * (n - len(p)) for p in per], np.int32)
    return rows, (buckets[i - 1] if i else 0)


def _local(rows: jax.Array, n_rows: int) -> jax.Array:
    """[S, r] global row indices -> indices within each shard's block (padding n_rows stays
    out of every block's range: >= m)."""
    s = rows.shape[0]
    return rows - (jnp.arange(s, dtype=rows.dtype) * (n_rows // s))[:, None]


def _blocks(x: jax.Array, s: int) -> jax.Array:
    return x.reshape((s, x.shape[0] // s) + x.shape[1:])


def take_rows(x: jax.Array, rows: jax.Array) -> jax.Array:
    """x [B, ...] -> its rows `rows` [S, r] as [S * r, ...] (flattened block by block). A padding
    index gives a copy of its block's last row."""
    s = rows.shape[0]
    got = jax.vmap(lambda blk, i: jnp.take(blk, i, axis=0, mode="clip"))(_blocks(x, s), _local(rows, x.shape[0]))
    return got.reshape((-1,) + x.shape[1:])


def put_rows(full: jax.Array, rows: jax.Array, part: jax.Array, trailing: tuple = ()) -> jax.Array:
    """`full` [B, ...] with part [S * r, ...] written to its rows `rows` [S, r] (padding rows
    dropped); `trailing` indexes the dims after the row (e.g. (Ellipsis, slice(None, w)): the
    first w slots of the last dim)."""
    s = rows.shape[0]
    # a 16-bit float cache is written as its bits: XLA:CPU's float normalisation runs a bf16
    # scatter in f32 (an f32 copy of the whole cache, twice its bytes: plan --aot, issue 20); a
    # copy of bits is the same write
    dtype = full.dtype
    bits = jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize == 2
    if bits:
        full, part = (jax.lax.bitcast_convert_type(x, jnp.uint16) for x in (full, part.astype(dtype)))
    put = lambda blk, i, p: blk.at[(i,) + tuple(trailing)].set(p, mode="drop")  # noqa: E731
    out = jax.vmap(put)(_blocks(full, s), _local(rows, full.shape[0]), _blocks(part, s)).reshape(full.shape)
    return jax.lax.bitcast_convert_type(out, dtype) if bits else out
