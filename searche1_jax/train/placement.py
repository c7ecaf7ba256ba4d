"""Where the train state lives: AdamW's m and v created with their parameters' shardings, and
abstract (`jax.ShapeDtypeStruct` + sharding) descriptions of a state, for restoring a checkpoint
onto it without ever allocating it.

Without out_shardings, `jax.jit(optimizer.init)` puts every m and v on device 0 (24.7 GB for
Qwen2.5-3B, 61 GB for 7B): the state is created where it lives instead, each moment sharded
like its parameter, the step count replicated over the parameters' mesh.
"""
from __future__ import annotations

from typing import Callable

import jax
import optax
from jax.sharding import NamedSharding, PartitionSpec, SingleDeviceSharding


def _mesh_of(params):
    """The mesh of the first NamedSharding-placed parameter (abstract or concrete); None if none."""
    for leaf in jax.tree.leaves(params):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding):
            return sharding.mesh
    return None


def default_sharding() -> SingleDeviceSharding:
    return SingleDeviceSharding(jax.devices()[0])


def committed(tree):
    """`tree` with each uncommitted array leaf committed to the device it is on (no copy: the
    same buffer). A jitted program's HLO records which of its arguments are committed, so an
    array that becomes committed mid-run (any orbax restore is: the parked optimiser, the parked
    reference, a resumed checkpoint; and any jit output computed from one) makes every program it
    feeds compile again, with no hit in the persistent cache. Measured on the demo: after the
    second GRPO update (the first to read the parked optimiser back), OFSD's rollouts and the
    final eval compiled 28 programs again (113 s). A run's params start committed."""
    def leaf(x):
        return jax.device_put(x, x.sharding) if isinstance(x, jax.Array) and not x.committed else x
    return jax.tree.map(leaf, tree)


def abstract(tree):
    """Each array leaf as a ShapeDtypeStruct with its sharding (none: the default device).
    Concrete arrays are only described, never copied."""
    def leaf(x):
        sharding = getattr(x, "sharding", None) or default_sharding()
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
    return jax.tree.map(leaf, tree)


def opt_state_shardings(optimizer: Callable, init_fn: Callable, params, hyper):
    """Shardings of `init_fn(params, hyper)`'s leaves: a leaf that mirrors a parameter (AdamW's
    mu and nu) gets that parameter's sharding, any other (the step count) is replicated over the
    parameters' mesh. None when the params are not on a mesh (one device: nothing to place).

    optimizer: hyper -> optax.GradientTransformation (`steps.adamw`); params may be abstract."""
    mesh = _mesh_of(params)
    if mesh is None:
        return None
    shapes = jax.eval_shape(init_fn, params, hyper)
    param_shardings = jax.tree.map(lambda x: x.sharding, params)
    replicated = NamedSharding(mesh, PartitionSpec())
    return optax.tree_map_params(optimizer(hyper), lambda _, s: s, shapes, param_shardings,
                                 transform_non_params=lambda _: replicated)


class PlacedInit:
    """`init(params, hyper) -> opt_state` jitted with out_shardings = `opt_state_shardings`, so
    each moment is born on its parameter's devices (one compiled program per layout)."""

    def __init__(self, init_fn: Callable, optimizer: Callable):
        self.init_fn, self.optimizer = init_fn, optimizer
        self._jitted: dict = {}

    def _program(self, params, hyper):
        shardings = opt_state_shardings(self.optimizer, self.init_fn, params, hyper)
        key = None if shardings is None else (jax.tree.structure(shardings), tuple(jax.tree.leaves(shardings)))
        if key not in self._jitted:
            self._jitted[key] = (jax.jit(self.init_fn) if shardings is None
                                 else jax.jit(self.init_fn, out_shardings=shardings))
        return self._jitted[key]

    def __call__(self, params, hyper):
        # committed on one device too, as the state reads back from disk (`committed`): the
        # update's program is then the same before and after the optimiser is parked
        return committed(self._program(params, hyper)(params, hyper))

    def abstract(self, params, hyper):
        """The state __call__ would create, as placed ShapeDtypeStructs: nothing is allocated."""
        return abstract(jax.eval_shape(self._program(params, hyper), params, hyper))
