"""Build models directly on the mesh: abstract init, then jit with out_shardings.

`create_model` (random init) and `model_from_arrays` (checkpoint import) never materialise the
full parameter set on one device: shapes come from `nnx.eval_shape`, and each parameter is
created or placed with its `NamedSharding` from the logical rules.
"""
from __future__ import annotations

from typing import Mapping

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

    Each array is cast to `cfg.param_dtype` and put on the mesh shard by shard
    (`make_array_from_callback`), so a host never holds more than the checkpoint itself.
    Raises ValueError naming missing tensors, unexpected ones and shape mismatches.
    """
    graphdef, state, flat = abstract_model(cfg, mesh, rules)
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
        arr = np.asarray(arr).astype(jnp.dtype(cfg.param_dtype), copy=False)
        if mesh is None:
            placed[path] = jnp.asarray(arr)
        else:
            placed[path] = jax.make_array_from_callback(want, shardings[path], lambda idx, a=arr: a[idx])
    nnx.replace_by_pure_dict(state, _nest(placed))
    return nnx.merge(graphdef, state)
