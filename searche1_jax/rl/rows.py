"""Token chunks taken within rows, so the chunked LM-head losses keep the batch sharding.

The losses scan [B, T, ...] inputs in chunks of c positions of every row ([B, c, ...] a step),
never flattening B and T: the rows stay split over the devices that hold them (data × fsdp)
and a step's logits [B, c, V] are computed where the rows are. Flattening first loses that
split, and XLA then all-reduces fp32 [chunk, V] logits at every scan step (issue 20).

`layout` is None on one device, or an object with
- `constrain(x, names)`: x with a sharding constraint by logical axis names ("batch", "vocab",
  None), e.g. `model.sharding.Layout` (the model's mesh and rules);
- `groups(size, name)`: into how many device groups an axis of that size and name splits.
rl/ imports no model: the trainer passes the model's layout in.

The LM head's gradient Σ_tokens h ⊗ dz is accumulated per row group, [S, d, V] with S over the
groups (one [d, V] slice a device, as a replicated accumulator would be), and summed over S once
after the scan: inside the loop no device needs another's partial sum.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def constrain(x, names, layout):
    return x if layout is None else layout.constrain(x, names)


def groups(size: int, name: str, layout) -> int:
    return 1 if layout is None else int(layout.groups(size, name))


def row_chunk(chunk: int, b: int, t: int, layout) -> int:
    """Positions c per row a scan step takes, so that a device holds about `chunk` tokens a step
    (its B / groups rows × c); chunks balanced over T (no more than one chunk's padding)."""
    rows = max(b // groups(b, "batch", layout), 1)
    c = min(max(chunk // rows, 1), max(t, 1))
    n = -(-t // c)
    return -(-t // n)


def to_row_chunks(x: jax.Array, c: int) -> jax.Array:
    """[B, T, ...] -> [ceil(T / c), B, c, ...], zero positions appended up to a multiple of c."""
    pad = -x.shape[1] % c
    if pad:
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    x = x.reshape((x.shape[0], x.shape[1] // c, c) + x.shape[2:])
    return jnp.moveaxis(x, 1, 0)


def from_row_chunks(y: jax.Array, t: int) -> jax.Array:
    """[n, B, c, ...] -> [B, T, ...] (the first t positions)."""
    y = jnp.moveaxis(y, 0, 1)
    return y.reshape((y.shape[0], -1) + y.shape[3:])[:, :t]


def as_rows(x: jax.Array, lead: int) -> jax.Array:
    """[B, T, ...] as it is (lead = 2) or [N, ...] as one row [1, N, ...] (lead = 1)."""
    return x if lead == 2 else x[None]


def rows_of(x, layout, *rest):
    """x [B, ...] with its rows split over the batch axes; `rest` names its other axes."""
    return constrain(x, ("batch",) + rest + (None,) * (x.ndim - 1 - len(rest)), layout)


def head_for_rows(head: jax.Array, layout, vocab: bool = True) -> jax.Array:
    """The LM head [d, V] as each device multiplies its rows by it: gathered over the embed
    axis (once, before the scan), its vocabulary split as the rules say (vocab=False: whole)."""
    return constrain(head, (None, "vocab" if vocab else None), layout)


def grouped_outer(h: jax.Array, dz: jax.Array, layout, vocab: bool = True) -> jax.Array:
    """Σ over each row group's tokens of h ⊗ dz: h [B, c, d], dz [B, c, v] -> [S, d, v] f32
    (v split over devices as the rules split the vocabulary; vocab=False: whole); [d, v] when
    the rows are in one group (S = 1: no group axis, so nothing stands between the accumulator
    and the gradient XLA returns)."""
    b = h.shape[0]
    s = groups(b, "batch", layout)
    if s == 1:
        return jnp.einsum("bcd,bcv->dv", h, dz, preferred_element_type=jnp.float32)
    hg = h.reshape((s, b // s) + h.shape[1:])
    zg = dz.reshape((s, b // s) + dz.shape[1:])
    out = jnp.einsum("sbcd,sbcv->sdv", hg, zg, preferred_element_type=jnp.float32)
    return constrain(out, ("batch", None, "vocab" if vocab else None), layout)


def zeros_grouped(b: int, shape, layout, vocab: bool = True, dtype=jnp.float32) -> jax.Array:
    """The [S, d, v] accumulator of `grouped_outer` ([d, v] when S = 1), split over the groups."""
    s = groups(b, "batch", layout)
    if s == 1:
        return jnp.zeros(tuple(shape), dtype)
    z = jnp.zeros((s,) + tuple(shape), dtype)
    return constrain(z, ("batch", None, "vocab" if vocab else None), layout)


def ungroup(acc: jax.Array) -> jax.Array:
    """[S, d, v] per-group partial sums -> their sum [d, v] (one reduction across devices, after
    the loop); a [d, v] accumulator (one group) as it is."""
    return acc.sum(0) if acc.ndim == 3 else acc
