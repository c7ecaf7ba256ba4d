"""Builds what a population shares (tokenizer, retriever, agent, question stream, one compiled
set of vmapped steps) and its stacked initial state. Like `train/setup.Experiment`, but the
model is created without a (data, fsdp, tensor) mesh: members are laid out on a ("member",)
mesh instead, each member's params whole on its device.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from searche1_jax.model.checkpoint import load_pretrained
from searche1_jax.model.config import get_preset
from searche1_jax.model.create import create_model
from searche1_jax.model.tokenizer import Tokenizer
from searche1_jax.rollout.agent import STOP_STRINGS, AgentConfig, SearchAgent
from searche1_jax.rollout.sampler import SamplingParams
from searche1_jax.rollout.stop import build_stop_automaton, token_bytes_from_tokenizer
from searche1_jax.sweep.population import (make_population_optimizer, make_population_steps, member_hypers,
                                           member_mesh, stack)
from searche1_jax.sweep.spec import check_members
from searche1_jax.train.setup import build_retriever, check_config, resolve_checkpoint
from searche1_jax.train.state import Binder, TrainState, params_of
from searche1_jax.train.steps import GRPOLossConfig, OFSDLossConfig


class PopulationSetup:
    """`configs`: one per member, differing only in population fields (checked)."""

    def __init__(self, configs: Sequence, *, need_train_data: bool = True, devices=None):
        check_members(configs)
        self.configs = list(configs)
        self.config = c = configs[0]  # shared fields are read from member 0
        for mc in configs:
            check_config(mc)
        self.n = len(configs)
        overrides = dict(dtype=c.model.dtype, param_dtype=c.model.param_dtype, remat=c.model.remat)
        tok_path = resolve_checkpoint(c.model.tokenizer or c.model.checkpoint)
        if not tok_path:
            raise ValueError("config.model.tokenizer (or config.model.checkpoint) must name a HF "
                             "directory, a .gguf file or 'smollm2'")
        self.tokenizer = Tokenizer.load(tok_path)
        if c.model.preset:
            cfg = get_preset(c.model.preset, **overrides)
            if cfg.vocab_size < self.tokenizer.vocab_size:
                cfg = cfg.replace(vocab_size=self.tokenizer.vocab_size)
            models = [create_model(cfg, seed=mc.train.seed) for mc in configs]
            self._init_params = stack([params_of(m) for m in models])
            model = models[0]
        else:
            if not c.model.checkpoint:
                raise ValueError("set config.model.checkpoint or config.model.preset")
            # a checkpoint is the same start for every member; the seed only changes the rng
            model, cfg = load_pretrained(resolve_checkpoint(c.model.checkpoint), mesh=None, **overrides)
            self._init_params = stack([params_of(model)] * self.n)
        self.model_cfg = cfg
        self.binder = Binder(model)
        del model

        self.retriever = build_retriever(c)
        stop = build_stop_automaton(list(STOP_STRINGS), token_bytes_from_tokenizer(self.tokenizer.backend))
        r = c.rollout
        self.agent = SearchAgent(self.tokenizer, self.retriever, stop, AgentConfig(
            max_turns=r.max_turns, topk=c.retrieval.topk, max_turn_tokens=r.max_turn_tokens,
            max_obs_tokens=r.max_obs_tokens, max_prompt_tokens=r.max_prompt_tokens,
            max_response_tokens=r.max_response_tokens, prompt_bucket=r.prompt_bucket),
            use_chat_template=r.chat_template)
        self.sampling = [SamplingParams(temperature=mc.rollout.temperature, top_p=mc.rollout.top_p,
                                        top_k=mc.rollout.top_k) for mc in configs]

        self.train_data = None
        if need_train_data:  # data.* is structural: one question stream for all members
            from searche1_jax.data.loader import QuestionStream
            if not c.data.train:
                raise ValueError("config.data.train must name a training file (jsonl or Search-R1 parquet)")
            self.train_data = QuestionStream.from_file(c.data.train, seed=c.data.seed)

        self.mesh = member_mesh(self.n, devices)
        g = c.grpo
        self.optimizer, opt_init = make_population_optimizer(
            total_steps=c.train.rounds * g.steps_per_round, warmup_ratio=c.train.warmup_ratio)
        self.steps = make_population_steps(
            self.binder, self.optimizer, opt_init,
            GRPOLossConfig(clip_eps=g.clip_eps, kl_estimator=g.kl_estimator, agg=g.agg, chunk=g.logit_chunk),
            OFSDLossConfig(chunk=c.ofsd.logit_chunk), self.mesh)
        self.hyper = self.steps.shard(member_hypers(configs))

    def layout(self) -> str:
        if self.mesh is None:
            return f"{self.n} member(s) on 1 device ({jax.devices()[0].platform})"
        d = self.mesh.shape["member"]
        return (f"{self.n} members on a ('member',) mesh of {d} {jax.devices()[0].platform} devices "
                f"({self.n // d} per device)")

    def initial_state(self) -> TrainState:
        params = self.steps.shard(self._init_params)
        opt_state = self.steps.init(params, self.hyper)
        ref = jax.tree.map(jnp.copy, params)
        rng = jnp.stack([jax.random.key(mc.train.seed) for mc in self.configs])
        return TrainState(params, opt_state, ref, 0, rng,
                          {"round": 0, "phase": "grpo", "round_step": 0,
                           "data": self.train_data.get_state() if self.train_data else {}})

    def member_params(self, params, i: int):
        """Member i's params on the default device (the sampler is compiled once for it)."""
        return jax.device_put(jax.tree.map(lambda x: x[i], params), jax.devices()[0])

    def logps(self, params, tokens: np.ndarray, valid: np.ndarray, rows: int) -> np.ndarray:
        """[N, B, T] -> [N, B, T-1] in row chunks of `rows` (the micro-batch)."""
        out = [self.steps.logps(params, *self.steps.shard((tokens[:, i:i + rows], valid[:, i:i + rows])),
                                self.hyper) for i in range(0, tokens.shape[1], rows)]
        return np.concatenate([np.asarray(o) for o in out], axis=1)
