"""The policy an evaluation samples from, built for inference only: tokenizer, model, agent.

Parameters come from a pretrained checkpoint (HF directory or .gguf), a random preset, or a
training workdir's latest orbax checkpoint. For a workdir only the parameters are read, onto
abstract shapes (`nnx.eval_shape`): no optimiser state, no reference copy, no random init.
"""
from __future__ import annotations

import dataclasses
import json
import os

import jax
from flax import nnx

from searche1_jax.config import model_overrides
from searche1_jax.model.checkpoint import config_from_gguf, config_from_hf, load_pretrained, resolve_checkpoint
from searche1_jax.model.config import ModelConfig, get_preset
from searche1_jax.model.create import abstract_model, create_model, param_shardings
from searche1_jax.model.sharding import make_mesh
from searche1_jax.model.tokenizer import Tokenizer
from searche1_jax.retrieval.factory import build_retriever
from searche1_jax.rollout.agent import STOP_STRINGS, AgentConfig, SearchAgent
from searche1_jax.rollout.stop import build_stop_automaton, token_bytes_from_tokenizer


@dataclasses.dataclass
class Policy:
    tokenizer: Tokenizer
    agent: SearchAgent
    model: nnx.Module


def load_tokenizer(c) -> Tokenizer:
    path = resolve_checkpoint(c.model.tokenizer or c.model.checkpoint)
    if not path:
        raise ValueError("config.model.tokenizer (or config.model.checkpoint) must name a HF "
                         "directory, a .gguf file or 'smollm2'")
    return Tokenizer.load(path)


def model_config(c, tokenizer: Tokenizer) -> ModelConfig:
    """The architecture the config names, read from the preset or the checkpoint's metadata (no
    weights are loaded); a preset's vocabulary grows to the tokenizer's, as in training."""
    overrides = model_overrides(c)
    if c.model.preset:
        cfg = get_preset(c.model.preset, **overrides)
        return cfg.replace(vocab_size=tokenizer.vocab_size) if cfg.vocab_size < tokenizer.vocab_size else cfg
    path = resolve_checkpoint(c.model.checkpoint)
    if path.endswith(".gguf"):
        import gguf
        return config_from_gguf(gguf.GGUFReader(path), **overrides)[0]
    cfg_path = os.path.join(path, "config.json")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{cfg_path} not found: config.model.checkpoint must be a HF directory "
                                f"with config.json or a .gguf file")
    with open(cfg_path) as f:
        return config_from_hf(json.load(f), **overrides)


def abstract_params(cfg: ModelConfig, mesh=None) -> dict:
    """The policy's parameters as a nested dict of `jax.ShapeDtypeStruct` (from `nnx.eval_shape`),
    each with the sharding it is placed with on `mesh` (None: the default device); nothing is
    allocated."""
    _, state, _ = abstract_model(cfg, mesh)
    pure = nnx.to_pure_dict(state)
    if mesh is None:
        return pure
    shardings = param_shardings(cfg, mesh)
    return jax.tree_util.tree_map_with_path(
        lambda path, x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=shardings[
            ".".join(str(k.key) for k in path)]), pure)


def bind(cfg: ModelConfig, params: dict, mesh=None) -> nnx.Module:
    """A `Transformer` holding `params` (a nested params dict)."""
    graphdef, state, _ = abstract_model(cfg, mesh)
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)


def checkpoints_dir(path: str) -> str:
    """WORKDIR/checkpoints of a training workdir given as WORKDIR or as WORKDIR/checkpoints."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: name a training workdir (the --workdir of "
                                f"`python -m searche1_jax.main`) or its checkpoints/ directory")
    inside = os.path.join(path, "checkpoints")
    if os.path.isdir(inside):
        return inside
    if os.path.basename(os.path.normpath(path)) == "checkpoints" and os.path.isdir(path):
        return path
    raise FileNotFoundError(f"{path} is not a training workdir: it has no checkpoints/ directory")


def restore_workdir_params(workdir: str, cfg: ModelConfig, mesh=None, log=print) -> nnx.Module:
    """The policy of a training workdir's latest checkpoint (params only); workdir may also be
    WORKDIR/checkpoints itself."""
    from searche1_jax.train.checkpoint import Checkpointer

    ckpt_dir = checkpoints_dir(workdir)
    ckpt = Checkpointer(ckpt_dir, async_save=False)
    try:
        out = ckpt.restore_latest_params(abstract_params(cfg, mesh))
    finally:
        ckpt.close()
    if out is None:
        raise FileNotFoundError(f"{ckpt_dir} holds no checkpoint")
    params, meta = out
    log(f"policy: {ckpt_dir} (train step {meta['step']})")
    return bind(cfg, params, mesh)


def load_model(c, tokenizer: Tokenizer, workdir: str = "", mesh=None, log=print) -> nnx.Module:
    """The model to evaluate: a workdir's latest params, else the config's checkpoint or preset."""
    if workdir:
        return restore_workdir_params(workdir, model_config(c, tokenizer), mesh, log)
    if c.model.preset:
        return create_model(model_config(c, tokenizer), mesh=mesh, seed=c.train.seed)
    model, _ = load_pretrained(resolve_checkpoint(c.model.checkpoint), mesh=mesh, **model_overrides(c))
    return model


def build_agent(c, tokenizer: Tokenizer, retriever) -> SearchAgent:
    stop = build_stop_automaton(list(STOP_STRINGS), token_bytes_from_tokenizer(tokenizer.backend))
    return SearchAgent(tokenizer, retriever, stop, AgentConfig.from_config(c),
                       chat_template=c.rollout.chat_template)


def build_policy(c, workdir: str = "", log=print) -> Policy:
    """Tokenizer, model (on the config's mesh when there are several devices) and agent."""
    mesh = make_mesh(dict(c.mesh)) if len(jax.devices()) > 1 else None
    tokenizer = load_tokenizer(c)
    model = load_model(c, tokenizer, workdir, mesh, log)
    return Policy(tokenizer, build_agent(c, tokenizer, build_retriever(c.retrieval)), model)
