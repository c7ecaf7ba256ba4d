"""Train state as plain pytrees: params are nested dicts (nnx pure dicts), bound to the model
graph only inside jitted functions. This keeps optax, orbax and sharding code model-agnostic.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from flax import nnx

from searche1_jax.model.create import _nest, flatten


class Binder:
    """Turns a params pytree back into a `Transformer` (inside jit: no copies)."""

    def __init__(self, model: nnx.Module):
        self.graphdef, state = nnx.split(model)
        self._template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
        self.cfg = model.cfg

    def bind(self, params) -> nnx.Module:
        state = jax.tree.map(lambda x: x, self._template)
        nnx.replace_by_pure_dict(state, params)
        return nnx.merge(self.graphdef, state)


def params_of(model: nnx.Module) -> dict:
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def unflatten(flat: dict[str, Any]) -> dict:
    return _nest(flat)


@dataclasses.dataclass
class TrainState:
    """Everything a resumed run needs. `meta` is small JSON (round, phase, data position)."""
    params: dict
    opt_state: Any
    ref_params: dict | None
    step: int
    rng: jax.Array
    meta: dict

    def arrays(self) -> dict:
        """What a checkpoint's `state` item holds. Never the reference policy (`reference.py`:
        rebuilt from the initial model, or saved once); "ref_params" stays, empty, so the tree
        keeps the layout of checkpoints written before (which held it)."""
        return {"params": flatten(self.params), "opt_state": self.opt_state, "ref_params": {},
                # host numpy, not single-device jax arrays: orbax refuses those with several processes
                "rng": np.asarray(jax.random.key_data(self.rng)), "step": np.asarray(self.step, np.int32)}
