"""The weights rollouts decode from (`config.rollout.weights`, issue 21 item 4).

- "train": the training params as they lie. Under FSDP each device holds 1/F of every weight,
  so every step of the decode loop all-gathers each layer's weights (in param_dtype, fp32).
- "replica": once per step, a copy in the compute dtype laid out for decoding: whole on every
  device of data x fsdp (a data-parallel replica; the rows are split over those devices) and
  split over `tensor` as the rules split heads, MLP and vocabulary (tensor parallel, for a
  model one device cannot hold). The decode loop then moves no weight between devices and
  reads compute-dtype bytes (half of fp32 in bf16). vLLM in Search-R1 decodes the same way,
  from a bf16 copy of the actor that veRL re-shards once per step.

The copy is exact: every matmul, norm, embedding lookup and the LM head cast their weights to
the compute dtype before use (model/transformer.py), so the copy's trajectories are the
training params' own. Where nothing would change (no mesh, param_dtype == dtype) the training
params are used as they are: no copy.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from searche1_jax.model.config import ModelConfig
from searche1_jax.model.create import _nest, abstract_model, param_shardings
from searche1_jax.model.sharding import hashable_rules

WEIGHTS = ("train", "replica")


def decode_rules(rules) -> tuple:
    """`rules` with the parameters' FSDP axis (`embed`) replicated: weights whole over data x
    fsdp, the rest (batch over data x fsdp, heads / mlp / vocab over tensor) as the run has it."""
    return tuple((name, None if name == "embed" else axes) for name, axes in rules)


@functools.lru_cache(maxsize=8)
def _copier(cfg: ModelConfig, mesh: Mesh | None, rules: tuple):
    """One jitted cast (and, on a mesh, reshard) of the params (nnx pure dict) into the decode
    layout, cached: made once, not a new jit (and compile) every step."""
    shardings = _nest(param_shardings(cfg, mesh, rules)) if mesh is not None else None
    return jax.jit(lambda tree: jax.tree.map(lambda v: v.astype(cfg.dtype), tree), out_shardings=shardings)


@functools.lru_cache(maxsize=8)
def _abstract(cfg: ModelConfig, mesh: Mesh | None, rules: tuple):
    """(graphdef, abstract state) of the decode-layout model, made once (an `nnx.eval_shape` of
    the whole model), not every step."""
    graphdef, state, _ = abstract_model(cfg, mesh, rules)
    return graphdef, state


def rollout_model(params: dict, cfg: ModelConfig, mesh: Mesh | None, rules):
    """The replica of `params` (nested pure dict) as a Transformer in cfg.dtype on `mesh` with
    `decode_rules(rules)`; None where it would equal the training params (bind those)."""
    if mesh is None and jnp.dtype(cfg.param_dtype) == jnp.dtype(cfg.dtype):
        return None
    cfg = cfg.replace(param_dtype=cfg.dtype)
    rules = hashable_rules(decode_rules(rules))
    copied = _copier(cfg, mesh, rules)(params)
    graphdef, abstract = _abstract(cfg, mesh, rules)
    state = jax.tree.map(lambda v: v, abstract)   # new Variables: the cached ones stay abstract
    nnx.replace_by_pure_dict(state, copied)
    return nnx.merge(graphdef, state)
