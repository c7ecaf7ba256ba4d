"""Build models directly on the mesh: abstract init, then jit with out_shardings.

`create_model` (random init) and `model_from_arrays` (checkpoint import) never materialise the
full parameter set on one device: shapes come from `nnx.eval_shape`, and each parameter is
created or placed with its `NamedSharding` from the logical rules.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from searche1_jax.model.config import ModelConfig
from searche1_jax.model.sharding import DEFAULT_RULES, named_sharding
from searche1_jax.model.transformer import Transformer


def _dotted(path) -> str:
    return ".".join(str(p) for p in path)


def _nest(flat: Mapping[str, object]) -> dict:
    """{"layers.0.attn.q_proj.kernel": x} -> {"layers": {0: {"attn": ...}}} (nnx pure dict)."""
    out: dict = {}
    for key, value in flat.items():
        node = out
        parts = [int(p) if p.isdigit() else p for p in key.split(".")]
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dict (int or str keys) -> {"a.0.b": leaf}: the inverse of `_nest` (orbax wants string
    keys; the weight maps and `stack_layers` / `unstack_layers` speak dotted paths)."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")


def stack_layers(arrays: Mapping[str, object], cfg: ModelConfig) -> dict[str, object]:
    """Per-layer paths (`layers.{i}.x`, the weight tables' form) -> a scan_layers model's paths
    (`layers.x`, [L, ...]); arrays already stacked pass through. The stack is a `_LayerStack`
    view: a shard reads its slice of each layer, so no [L, ...] copy is made on the host."""
    out, per_layer = {}, {}
    for key, value in arrays.items():
        m = _LAYER.match(key)
        if m:
            per_layer.setdefault(m.group(2), {})[int(m.group(1))] = value
        else:
            out[key] = value
    for name, layers in per_layer.items():
        missing = [i for i in range(cfg.n_layers) if i not in layers]
        extra = sorted(set(layers) - set(range(cfg.n_layers)))
        if missing or extra:
            raise ValueError(f"layers.{{i}}.{name}: the model has {cfg.n_layers} layers, the arrays "
                             f"lack layers {missing[:5]} and have extra layers {extra[:5]} "
                             f"(does config n_layers match the checkpoint?)")
        out["layers." + name] = _LayerStack([layers[i] for i in range(cfg.n_layers)])
    return out


def unstack_layers(arrays: Mapping[str, object], cfg: ModelConfig) -> dict[str, object]:
    """Inverse of `stack_layers` for a scan_layers model's arrays (`layers.x` [L, ...] ->
    `layers.{i}.x`); an unrolled model's arrays pass through."""
    if not cfg.scan_layers:
        return dict(arrays)
    out = {}
    for key, value in arrays.items():
        if key.startswith("layers."):
            out.update({f"layers.{i}.{key[len('layers.'):]}": value[i] for i in range(cfg.n_layers)})
        else:
            out[key] = value
    return out


class _LayerStack:
    """L same-shaped host arrays seen as one [L, ...] array: `shape`, `astype` (lazy) and
    indexing, which stacks only the slice asked for."""

    def __init__(self, layers, dtype=None):
        self.layers, self.dtype = layers, dtype
        self.shape = (len(layers),) + tuple(np.shape(layers[0]))

    def astype(self, dtype, copy=False):
        return _LayerStack(self.layers, dtype)

    def __getitem__(self, idx):
        idx = idx if isinstance(idx, tuple) else (idx,)
        head, rest = (idx[0], idx[1:]) if idx else (slice(None), ())
        picked = range(len(self.layers))[head]
        out = np.stack([np.asarray(self.layers[i])[rest] for i in picked])
        return out if self.dtype is None else out.astype(self.dtype, copy=False)

    def __array__(self, dtype=None, copy=None):
        out = self[(slice(None),)]
        return out if dtype is None else out.astype(dtype)


def abstract_model(cfg: ModelConfig, mesh: Mesh | None = None, rules=DEFAULT_RULES):
    """(graphdef, {dotted path: abstract Param}) without allocating anything."""
    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0), mesh=mesh, rules=rules))
    graphdef, state = nnx.split(abstract)
    return graphdef, state, {_dotted(p): v for p, v in nnx.to_flat_state(state)}


def param_shardings(cfg: ModelConfig, mesh: Mesh, rules=DEFAULT_RULES) -> dict[str, jax.sharding.NamedSharding]:
    """{dotted path: NamedSharding} from each parameter's `logical_axes`."""
    _, _, flat = abstract_model(cfg, mesh)
    return {k: named_sharding(v.get_metadata()["logical_axes"], v.get_value().shape, mesh, rules)
            for k, v in flat.items()}


def flat_params(model: nnx.Module) -> dict[str, jax.Array]:
    """{dotted path: array} of a model's parameters (the form weight maps speak)."""
    return {_dotted(p): v.get_value() for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def create_model(cfg: ModelConfig, *, mesh: Mesh | None = None, seed: int = 0,
                 rules=DEFAULT_RULES) -> Transformer:
    """Random init; with a mesh, each parameter is created already sharded."""
    if mesh is None:
        return Transformer(cfg, rngs=nnx.Rngs(seed), rules=rules)
    graphdef, state, _ = abstract_model(cfg, mesh, rules)
    shardings = _nest(param_shardings(cfg, mesh, rules))

    @jax.jit
    def init():
        return nnx.to_pure_dict(nnx.state(Transformer(cfg, rngs=nnx.Rngs(seed), mesh=mesh, rules=rules)))

    pure = jax.jit(init, out_shardings=shardings)()
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


def model_from_arrays(cfg: ModelConfig, arrays: Mapping[str, np.ndarray], *,
                      mesh: Mesh | None = None, rules=DEFAULT_RULES, source: str = "checkpoint") -> Transformer:
    """Place host arrays ({dotted path: array}, e.g. from a weight map) into a model.

    Layers may come per layer (`layers.{i}.x`, the weight tables' paths) whatever the model's
    layout: a `cfg.scan_layers` model stacks them (`stack_layers`). Each array is cast to
    `cfg.param_dtype` and put on the mesh shard by shard
    (`make_array_from_callback`), so a host never holds more than the checkpoint itself.
    Raises ValueError naming missing tensors, unexpected ones and shape mismatches.
    """
    graphdef, state, flat = abstract_model(cfg, mesh, rules)
    if cfg.scan_layers:
        arrays = stack_layers(arrays, cfg)
    missing = sorted(set(flat) - set(arrays))
    if missing:
        raise ValueError(f"{source}: {len(missing)} parameters missing, e.g. {missing[:5]}")
    extra = sorted(set(arrays) - set(flat))
    if extra:
        raise ValueError(f"{source}: tensors with no parameter in this model config: {extra[:5]}")
    shardings = param_shardings(cfg, mesh, rules) if mesh is not None else {}
    placed = {}
    for path, var in flat.items():
        arr = arrays[path]
        want = tuple(var.get_value().shape)
        if tuple(arr.shape) != want:
            raise ValueError(f"{source}: shape mismatch for {path}: expected {want}, got "
                             f"{tuple(arr.shape)} (does the model config match the checkpoint?)")
        arr = (arr if isinstance(arr, _LayerStack) else np.asarray(arr)).astype(
            jnp.dtype(cfg.param_dtype), copy=False)
        if mesh is None:
            placed[path] = jnp.asarray(np.asarray(arr))
        else:
            placed[path] = jax.make_array_from_callback(want, shardings[path], lambda idx, a=arr: a[idx])
    nnx.replace_by_pure_dict(state, _nest(placed))
    return nnx.merge(graphdef, state)
