"""Builds an experiment from a config: mesh, model, tokenizer, retriever, data, agent, steps."""
from __future__ import annotations

import jax

from searche1_jax.model.checkpoint import load_pretrained, smollm2_gguf_path
from searche1_jax.model.config import get_preset
from searche1_jax.model.create import create_model
from searche1_jax.model.sharding import make_mesh
from searche1_jax.model.tokenizer import Tokenizer
from searche1_jax.rollout.agent import STOP_STRINGS, AgentConfig, SearchAgent
from searche1_jax.rollout.stop import build_stop_automaton, token_bytes_from_tokenizer
from searche1_jax.train.state import Binder, TrainState, make_optimizer, params_of
from searche1_jax.train.steps import GRPOLossConfig, OFSDLossConfig, make_grpo_step, make_logps_fn, make_ofsd_step


def resolve_checkpoint(path: str) -> str:
    return smollm2_gguf_path() if path == "smollm2" else path


def build_retriever(c):
    r = c.retrieval
    if r.kind == "http":
        from searche1_jax.retrieval.client import RetrievalClient
        if not r.url:
            raise ValueError("config.retrieval.kind='http' needs config.retrieval.url, e.g. http://127.0.0.1:8000")
        return RetrievalClient(r.url)
    if r.index:
        from searche1_jax.retrieval.store import load_index
        return load_index(r.index)
    if r.kind == "bm25" and r.corpus:
        from searche1_jax.retrieval.bm25 import BM25Index
        from searche1_jax.retrieval.corpus import Corpus
        return BM25Index.build(Corpus(r.corpus))
    raise ValueError(f"config.retrieval: kind={r.kind!r} needs config.retrieval.index (built by "
                     f"python -m searche1_jax.retrieval.build), or kind='bm25' with config.retrieval.corpus")


def check_config(c) -> None:
    """Refuse batch geometries that cannot be split evenly, naming the fields to change."""
    g, r, o = c.grpo, c.rollout, c.ofsd
    if g.questions_per_step % g.mini_batch:
        raise ValueError(f"config.grpo.questions_per_step ({g.questions_per_step}) must be a multiple "
                         f"of config.grpo.mini_batch ({g.mini_batch})")
    if (g.mini_batch * r.group_size) % g.micro_batch:
        raise ValueError(f"config.grpo.mini_batch x config.rollout.group_size ({g.mini_batch} x "
                         f"{r.group_size}) trajectories must be a multiple of config.grpo.micro_batch "
                         f"({g.micro_batch})")
    if o.mini_batch % o.micro_batch:
        raise ValueError(f"config.ofsd.mini_batch ({o.mini_batch}) must be a multiple of "
                         f"config.ofsd.micro_batch ({o.micro_batch})")
    if o.rendering not in ("queries", "no_docs", "full", "all_siblings"):
        raise ValueError(f"config.ofsd.rendering must be queries|no_docs|full|all_siblings, got {o.rendering!r}")
    if o.teacher not in ("snapshot", "live"):
        raise ValueError(f"config.ofsd.teacher must be 'snapshot' or 'live', got {o.teacher!r}")


class Experiment:
    def __init__(self, config, *, need_train_data: bool = True):
        self.config = c = config
        check_config(c)
        self.train_data = None  # read first: a malformed line fails before minutes of model loading
        if need_train_data:
            from searche1_jax.data.loader import QuestionStream
            if not c.data.train:
                raise ValueError("config.data.train must name a training file (jsonl or Search-R1 parquet)")
            self.train_data = QuestionStream.from_file(c.data.train, seed=c.data.seed,
                                                       process_index=jax.process_index(),
                                                       process_count=jax.process_count())

        self.mesh = make_mesh(dict(c.mesh)) if len(jax.devices()) > 1 else None
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
            model = create_model(cfg, mesh=self.mesh, seed=c.train.seed)
        else:
            if not c.model.checkpoint:
                raise ValueError("set config.model.checkpoint to a HF directory (e.g. Qwen2.5-3B-Instruct) "
                                 "or a .gguf file, or config.model.preset for a random model")
            model, cfg = load_pretrained(resolve_checkpoint(c.model.checkpoint), mesh=self.mesh, **overrides)
        self.model_cfg = cfg
        self.binder = Binder(model)
        self._init_params = params_of(model)
        del model

        self.retriever = build_retriever(c)
        stop = build_stop_automaton(list(STOP_STRINGS), token_bytes_from_tokenizer(self.tokenizer.backend))
        r = c.rollout
        self.agent = SearchAgent(self.tokenizer, self.retriever, stop, AgentConfig(
            max_turns=r.max_turns, topk=c.retrieval.topk, max_turn_tokens=r.max_turn_tokens,
            max_obs_tokens=r.max_obs_tokens, max_prompt_tokens=r.max_prompt_tokens,
            max_response_tokens=r.max_response_tokens, prompt_bucket=r.prompt_bucket),
            use_chat_template=r.chat_template)

        total = c.train.rounds * c.grpo.steps_per_round
        self.optimizer = make_optimizer(c.train.lr, total_steps=total, warmup_ratio=c.train.warmup_ratio,
                                        weight_decay=c.train.weight_decay, grad_clip=c.train.grad_clip)
        g = c.grpo
        loss_cfg = GRPOLossConfig(clip_eps=g.clip_eps, kl_coef=g.kl_coef, kl_estimator=g.kl_estimator,
                                  entropy_coef=g.entropy_coef, agg=g.agg, chunk=g.logit_chunk,
                                  temperature=r.temperature)
        self.logps_fn = make_logps_fn(self.binder, loss_cfg)
        self.grpo_step = make_grpo_step(self.binder, self.optimizer, loss_cfg)
        self.ofsd_step = make_ofsd_step(self.binder, self.optimizer, OFSDLossConfig(
            temperature=c.ofsd.temperature, chunk=c.ofsd.logit_chunk))

    def compile_count(self) -> int:
        """Compiled executables of the train steps (flat across steps once buckets are warm)."""
        return sum(f._cache_size() for f in (self.logps_fn, self.grpo_step, self.ofsd_step))

    def initial_state(self) -> TrainState:
        params = self._init_params
        opt_state = jax.jit(self.optimizer.init)(params)
        ref = jax.tree.map(lambda x: x.copy(), params)
        return TrainState(params, opt_state, ref, 0, jax.random.key(self.config.train.seed),
                          {"round": 0, "phase": "grpo", "round_step": 0,
                           "data": self.train_data.get_state() if self.train_data else {}})

