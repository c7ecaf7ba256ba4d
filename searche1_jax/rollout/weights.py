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
training params' own. Where nothing would change (no mesh, param_dtype == dtype, layers not
stacked) the training params are used as they are: no copy.

A `scan_layers` model trains with its layers stacked [L, ...] (one block's code per program, a
fraction of the compile time and temp), but a decode step that slices each layer's weights and
cache out of the stacked arrays copies them, per layer per token (1.42x slower a step on CPU;
MaxText's inference configs unstack for the same reason). The replica is therefore always
unrolled: layer i of the copy is slice i of the stack, and its KV cache is per layer.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from searche1_jax.model.config import ModelConfig
from searche1_jax.model.create import _nest, abstract_model, flatten, param_shardings, unstack_layers
from searche1_jax.model.sharding import hashable_rules

WEIGHTS = ("train", "replica")


def decode_rules(rules) -> tuple:
    """`rules` with the parameters' FSDP axis (`embed`) replicated: weights whole over data x
    fsdp, the rest (batch over data x fsdp, heads / mlp / vocab over tensor) as the run has it."""
    return tuple((name, None if name == "embed" else axes) for name, axes in rules)


@functools.lru_cache(maxsize=8)
def _copier(cfg: ModelConfig, mesh: Mesh | None, rules: tuple):
    """One jitted cast (and, on a mesh, reshard; for scan_layers, unstacking) of the params (nnx
    pure dict) into the decode layout of `replica_config(cfg)`, cached: made once, not a new jit
    (and compile) every step."""
    out = replica_config(cfg)
    shardings = _nest(param_shardings(out, mesh, rules)) if mesh is not None else None

    def copy(tree):  # unstack_layers: layer i = slice i of a scan_layers stack (else unchanged)
        return _nest(unstack_layers(flatten(jax.tree.map(lambda v: v.astype(cfg.dtype), tree)), cfg))
    return jax.jit(copy, out_shardings=shardings)


def replica_config(cfg: ModelConfig) -> ModelConfig:
    """The replica's model config: parameters in the compute dtype, layers unrolled."""
    return cfg.replace(param_dtype=cfg.dtype, scan_layers=False)


@functools.lru_cache(maxsize=8)
def _abstract(cfg: ModelConfig, mesh: Mesh | None, rules: tuple):
    """(graphdef, abstract state) of the decode-layout model, made once (an `nnx.eval_shape` of
    the whole model), not every step."""
    graphdef, state, _ = abstract_model(cfg, mesh, rules)
    return graphdef, state


def rollout_model(params: dict, cfg: ModelConfig, mesh: Mesh | None, rules):
    """The replica of `params` (nested pure dict) as a Transformer in cfg.dtype, layers unrolled,
    on `mesh` with `decode_rules(rules)`; None where it would equal the training params (bind
    those)."""
    if mesh is None and jnp.dtype(cfg.param_dtype) == jnp.dtype(cfg.dtype) and not cfg.scan_layers:
        return None
    rules = hashable_rules(decode_rules(rules))
    copied = _copier(cfg, mesh, rules)(params)
    graphdef, abstract = _abstract(replica_config(cfg), mesh, rules)
    state = jax.tree.map(lambda v: v, abstract)   # new Variables: the cached ones stay abstract
    nnx.replace_by_pure_dict(state, copied)
    return nnx.merge(graphdef, state)
