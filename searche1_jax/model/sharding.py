"""Named sharding: logical axis names on parameters and activations, one rules table to the mesh.

Parameters are annotated with logical names (`embed`, `mlp`, `heads`, `kv_heads`, `vocab`);
activations with `batch`, `length`, `embed`, ... A rules table maps each logical name to mesh
axes (`data`, `fsdp`, `tensor`). The table an experiment uses is `config.logical_axis_rules`
(written out in `searche1_jax.config.base()` as `DEFAULT_RULES`); every function here takes it
as `rules`, so changing the parallelism plan is editing that table. A mesh axis that does not
divide a dimension is dropped for that dimension, so every preset shards on every mesh. Attention
kernels carry their heads as an axis of their own (q [embed, heads, head_dim], k/v [embed,
kv_heads, head_dim], o [heads, head_dim, embed]) and `head_dim` is never sharded: a device holds
whole heads, and heads a mesh axis does not divide (2 KV heads on tensor=4) replicate over it, as
MaxText's check that tensor parallelism never cuts a KV head.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from searche1_jax.shapes import nearest

MESH_AXES = ("data", "fsdp", "tensor")
MEMBER_AXIS = "member"   # the population mesh's only axis (train/layout.py)

# FSDP over `embed` for parameters; tensor parallel over heads / mlp / vocab; batch over
# data x fsdp for activations (MaxText's default logical rules, trimmed to what we use).
DEFAULT_RULES: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", ("fsdp",)),
    ("act_embed", None),
    ("heads", ("tensor",)),
    ("kv_heads", ("tensor",)),
    ("head_dim", None),
    ("mlp", ("tensor",)),
    ("vocab", ("tensor",)),
    ("norm", None),
    ("layers", None),
    ("member", ("member",)),
)


def hashable_rules(rules) -> tuple:
    """`rules` as nested tuples (rows from a config may hold lists): a key for caches and jit."""
    return tuple((n, None if a is None else tuple(a)) for n, a in rules)


def check_rules(rules) -> None:
    """Refuse a rules table the model cannot use, naming the row: every row is
    (logical_name, None | tuple of mesh axes); names are unique; mesh axes are MESH_AXES or
    MEMBER_AXIS, each at most once in a row; every logical name of DEFAULT_RULES (the names the
    model and trainer annotate with) has a row."""
    valid_axes = (*MESH_AXES, MEMBER_AXIS)
    seen = set()
    for row in rules:
        if len(row) != 2 or not isinstance(row[0], str):
            raise ValueError(f"each row is (logical_name, mesh_axes or None), got {row!r}")
        name, axes = row
        if name in seen:
            raise ValueError(f"logical axis {name!r} has two rows; keep one")
        seen.add(name)
        if axes is None:
            continue
        if isinstance(axes, str) or not all(isinstance(a, str) for a in axes):
            raise ValueError(f"row {name!r}: mesh axes must be a tuple of names or None, got {axes!r}")
        bad = [a for a in axes if a not in valid_axes]
        if bad:
            raise ValueError(f"row {name!r} names mesh axes {bad}; valid axes: {valid_axes}")
        if len(set(axes)) != len(axes):
            raise ValueError(f"row {name!r} repeats a mesh axis: {axes!r}")
    missing = [n for n, _ in DEFAULT_RULES if n not in seen]
    if missing:
        raise ValueError(f"no row for logical axes {missing}: the model annotates with them "
                         f"(use None to replicate)")


def make_mesh(shape: dict[str, int] | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Mesh with axes (data, fsdp, tensor); `shape` like {"fsdp": 4, "tensor": 2}.

    Missing axes get size 1; `fsdp=-1` takes all remaining devices.
    """
    devices = list(devices if devices is not None else jax.devices())
    shape = dict(shape or {"fsdp": -1})
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; valid axes: {MESH_AXES}")
    sizes = [shape.get(a, 1) for a in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {shape}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"mesh {shape} does not divide {len(devices)} devices")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, "
                         f"have {len(devices)}")
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int] | None, mesh: Mesh,
                    rules=DEFAULT_RULES) -> P:
    """PartitionSpec for a tensor whose dims carry logical `names`.

    Mesh axes absent from the mesh, already used by an earlier dim, or not dividing the
    dimension are dropped (replicated along that dim).
    """
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for i, name in enumerate(names):
        if name is not None and name not in table:
            raise ValueError(f"logical axis {name!r} has no row in the sharding rules; "
                             f"known: {sorted(table)}")
        axes = [a for a in (table.get(name) or ()) if a in mesh.shape and a not in used]
        if shape is not None:
            kept, size = [], 1
            for a in axes:
                if shape[i] % (size * mesh.shape[a]) == 0:
                    kept.append(a)
                    size *= mesh.shape[a]
            axes = kept
        axes = [a for a in axes if mesh.shape[a] > 1]
        used.update(axes)
        spec.append(tuple(axes) if len(axes) > 1 else (axes[0] if axes else None))
    return P(*spec)


def trimmed(spec: P) -> P:
    """`spec` without its trailing None entries (the same layout). A jitted function returns its
    arrays with specs in this form, and jit keys its executables on the spec as written: a
    parameter placed as P("fsdp", None, None) and returned by an update as P("fsdp") made the
    next update (and every log-prob pass) compile a second executable."""
    entries = list(spec)
    while entries and entries[-1] is None:
        entries.pop()
    return P(*entries)


def named_sharding(names, shape, mesh: Mesh, rules=DEFAULT_RULES) -> NamedSharding:
    """The sharding of a tensor whose dims carry logical `names`: `logical_to_spec`, `trimmed`."""
    return NamedSharding(mesh, trimmed(logical_to_spec(names, shape, mesh, rules)))


def constrain(x: jax.Array, names: Sequence[str | None], mesh: Mesh | None, rules=DEFAULT_RULES):
    """Sharding constraint on an activation; a no-op without a mesh (single device, tests)."""
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, named_sharding(names, x.shape, mesh, rules))


@dataclasses.dataclass(frozen=True)
class Layout:
    """A mesh and its rules as the two calls code that imports no model needs (the chunked
    losses of rl/, `rl.rows`): constrain an array by logical names, and count the device groups
    an axis splits into. Hashable: it is a static argument of the jitted losses."""
    mesh: Mesh
    rules: tuple = DEFAULT_RULES

    def constrain(self, x: jax.Array, names: Sequence[str | None]) -> jax.Array:
        return constrain(x, names, self.mesh, self.rules)

    def groups(self, size: int, name: str) -> int:
        """Ways an axis of `size` named `name` splits over the mesh (1: replicated)."""
        entry = logical_to_spec((name,), (size,), self.mesh, self.rules)[0]
        axes = () if entry is None else ((entry,) if isinstance(entry, str) else entry)
        return int(np.prod([self.mesh.shape[a] for a in axes]))


# (logical axis, ModelConfig field, what it is): the dimensions the sharding rules split
_MODEL_DIMS = (("heads", "n_heads", "query heads"), ("kv_heads", "n_kv_heads", "KV heads"),
               ("mlp", "mlp_dim", "MLP width"), ("vocab", "vocab_size", "vocabulary"),
               ("embed", "d_model", "model width"))


def _splits(name: str, size: int, split: int) -> bool:
    """A dimension of `size` over `split` devices: whole shares, or (KV heads) whole replicas."""
    return size % split == 0 or (name == "kv_heads" and split % size == 0)


def check_model_split(m, mesh: Mapping[str, int], rules=DEFAULT_RULES) -> None:
    """Refuse a mesh whose axes (through `rules`) would split one of the model's dimensions
    unevenly. `logical_to_spec` drops such an axis, which keeps every preset shardable but
    silently replicates that weight and its compute (16 query heads on tensor 3: every tensor
    device computes all of attention). KV heads may be fewer than the tensor devices when tensor
    is a multiple of them (2 KV heads on tensor 4 replicate, as MaxText allows); every other
    split must divide. One ValueError naming each
    dimension, the mesh axes, and the nearest sizes of the axis that would divide. `m` is a
    ModelConfig (or anything with its fields), `mesh` the resolved {"data", "fsdp", "tensor"}."""
    table = dict(rules)
    problems = []
    for name, field, what in _MODEL_DIMS:
        axes = [a for a in (table.get(name) or ()) if int(mesh.get(a, 1)) > 1]
        if not axes:
            continue
        size, split = int(getattr(m, field)), math.prod(int(mesh[a]) for a in axes)
        if _splits(name, size, split):
            continue
        rule = " x ".join(f"{a} = {mesh[a]}" for a in axes)
        rest = split // int(mesh[axes[-1]])
        near = nearest(int(mesh[axes[-1]]), lambda v, n=name, d=size, r=rest: _splits(n, d, r * v), 2 * split)
        fix = f"nearest valid {axes[-1]}: {' or '.join(map(str, near))}" if near else "change the mesh"
        problems.append(f"the {size} {what} (model.{field}, logical axis {name!r}) do not split over "
                        f"{rule}: that weight and its compute would be replicated on every device of "
                        f"the axis; {fix} (or map {name!r} to another axis in config.logical_axis_rules)")
    if problems:
        raise ValueError("the model does not fit the mesh:\n  " + "\n  ".join(problems))
