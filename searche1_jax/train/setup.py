"""Builds an experiment from its config(s): tokenizer, model(s), retriever, data, agent, steps.

A single run is `Experiment(config)`: one member over the (data, fsdp, tensor) mesh. A sweep
population is `Experiment([config, ...])`: members that differ only in population fields
(numbers the compiled steps take as inputs, or the sampler's), stacked on a member axis.
Both train with the same steps (`steps.py`) and the same loop (`loop.py`).
"""
from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from searche1_jax.config import ExperimentConfig, from_config_dict, model_overrides
from searche1_jax.model.checkpoint import load_pretrained, resolve_checkpoint
from searche1_jax.model.config import get_preset
from searche1_jax.model.create import create_model
from searche1_jax.model.sharding import check_model_split, make_mesh
from searche1_jax.model.tokenizer import Tokenizer
from searche1_jax.retrieval.factory import build_retriever, check_service
from searche1_jax.rollout.agent import STOP_STRINGS, AgentConfig, SearchAgent
from searche1_jax.rollout.engine import compiled_counts
from searche1_jax.rollout.sampler import SamplingParams
from searche1_jax.rollout.stop import build_stop_automaton, token_bytes_from_tokenizer
from searche1_jax.train.geometry import check_geometry
from searche1_jax.train.layout import Population, SingleRun, member_mesh
from searche1_jax.train.placement import abstract, committed
from searche1_jax.train.reference import INITIAL
from searche1_jax.train.state import Binder, TrainState, params_of
from searche1_jax.train.steps import HYPER_FIELDS, StepConfig, hyper_of, lr_at, make_steps

# fields that may differ between the members of one population, and what each one feeds:
# a traced input of the compiled steps, or the member's own sampler / rng
POPULATION_FIELDS = {
    **{field: f"traced step input {name!r}" for name, field in HYPER_FIELDS.items()},
    "train.seed": "initial params (random presets) and the member's rng",
    "ofsd.lr": "traced step input 'lr' of the OFSD updates (when set)",
    "rollout.top_p": "sampler (per member)",
    "rollout.top_k": "sampler (per member)",
}


def config_fields(config, prefix: str = "") -> dict:
    """{"section.name": value} for every leaf of a ConfigDict (or a typed config's `flat()`)."""
    if hasattr(config, "flat"):
        return config.flat()
    out = {}
    for k, v in config.items():
        if hasattr(v, "items"):
            out.update(config_fields(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_population_field(field: str) -> None:
    if field not in POPULATION_FIELDS:
        raise ValueError(f"{field} cannot vary inside a population: it changes array shapes or compiled "
                         f"code, so members could not share one step. Sweep it as a structural field "
                         f"(one population per value). Population fields: {sorted(POPULATION_FIELDS)}")


def check_members(configs: Sequence) -> None:
    """Member configs may differ only in population fields."""
    base = config_fields(configs[0])
    for c in configs[1:]:
        for f, v in config_fields(c).items():
            if v != base.get(f):
                check_population_field(f)


def _question_stream(examples, tokenizer, c):
    from searche1_jax.data.loader import QuestionStream, question_file
    from searche1_jax.train.data_check import checked_examples
    examples = checked_examples(examples, question_file(c.data.train), tokenizer, c)
    return QuestionStream(examples, seed=c.data.seed, process_index=jax.process_index(),
                          process_count=jax.process_count())


class Experiment:
    """config: one config (a single run) or a sequence of member configs (a population).
    A population of one is a single run: the same layout and compiled program (stacking one
    member on a member axis cost 1.12x the step time, benchmarks/population_of_one.py).
    Each is a ConfigDict (translated and validated once by `config.from_config_dict`) or an
    `ExperimentConfig`."""

    def __init__(self, config, *, need_train_data: bool = True, population: bool | None = None,
                 devices=None):
        configs = list(config) if isinstance(config, (list, tuple)) else [config]
        if not configs:
            raise ValueError("Experiment needs at least one config")
        population = len(configs) > 1 if population is None else population
        if len(configs) > 1 and not population:
            raise ValueError("several member configs make a population: pass population=True or one config")
        configs = [mc if isinstance(mc, ExperimentConfig) else from_config_dict(mc) for mc in configs]
        check_members(configs)
        population = population and len(configs) > 1
        self.configs = configs
        self.config = c = configs[0]  # shared fields are read from member 0
        self.n = len(configs)
        model_mesh = make_mesh(dict(c.mesh)) if (len(jax.devices()) > 1 and not population) else None
        if need_train_data and not population:  # every global batch size against mesh and processes, first
            check_geometry(c, dict(model_mesh.shape) if model_mesh is not None else {"data": 1, "fsdp": 1, "tensor": 1},
                           jax.process_count())

        self.train_data = train_examples = None  # read first: a malformed line fails before model loading
        if need_train_data:
            from searche1_jax.data.loader import question_file
            from searche1_jax.data.qa import read_examples
            if not c.data.train:
                raise ValueError("config.data.train must name a training file (jsonl or Search-R1 parquet)")
            train_examples = read_examples(question_file(c.data.train))
        # the dev questions the trainer evaluates (config.sft.eval_dev: base, warm start, final)
        dev_examples = None
        if need_train_data and c.sft.eval_dev > 0 and c.data.dev:
            from searche1_jax.data.qa import read_examples
            dev_examples = read_examples(c.data.dev)[:c.sft.eval_dev]

        if c.retrieval.kind == "http":  # a service that is down is found now, not at the first search
            check_service(c.retrieval)
        rules = c.logical_axis_rules
        self.mesh = model_mesh
        overrides = model_overrides(c)
        tok_path = resolve_checkpoint(c.model.tokenizer or c.model.checkpoint)
        if not tok_path:
            raise ValueError("config.model.tokenizer (or config.model.checkpoint) must name a HF "
                             "directory, a .gguf file or 'smollm2'")
        self.tokenizer = Tokenizer.load(tok_path)
        if train_examples is not None:  # every question's prompt fits, or the run stops here (data_check.py)
            self.train_data = _question_stream(train_examples, self.tokenizer, c)
        self.dev_examples = None  # the questions Trainer.dev_eval rolls out, checked as training's are
        if dev_examples is not None:
            from searche1_jax.train.data_check import checked_examples
            self.dev_examples = checked_examples(dev_examples, c.data.dev, self.tokenizer, c, what="dev")
        if c.model.preset:
            cfg = get_preset(c.model.preset, **overrides)
            if cfg.vocab_size < self.tokenizer.vocab_size:
                cfg = cfg.replace(vocab_size=self.tokenizer.vocab_size)
            if model_mesh is not None:  # before any weight is made
                check_model_split(cfg, dict(model_mesh.shape), rules)
            models = [create_model(cfg, mesh=model_mesh, seed=mc.train.seed, rules=rules) for mc in configs]
            member_params = [params_of(m) for m in models]
            model = models[0]
        else:
            if not c.model.checkpoint:
                raise ValueError("set config.model.checkpoint to a HF directory (e.g. Qwen2.5-3B-Instruct) "
                                 "or a .gguf file, or config.model.preset for a random model")
            # a checkpoint is the same start for every member; the seed only changes the rng
            model, cfg = load_pretrained(c.model.checkpoint, mesh=model_mesh, rules=rules, **overrides)
            if model_mesh is not None:
                check_model_split(cfg, dict(model_mesh.shape), rules)
            member_params = [params_of(model)] * self.n
        self.model_cfg = cfg
        self.binder = Binder(model)
        del model

        self.layout = (Population(self.n, member_mesh(self.n, devices)) if population
                       else SingleRun(model_mesh, rules, c.rollout.weights, c.rollout.replica_tensor))
        # committed, as every restored array is: programs then see one layout all run (placement.py)
        self._init_params = committed(self.layout.stack(member_params))
        self.abstract_params = abstract(self._init_params)  # shapes, dtypes, shardings: restore targets
        del member_params

        self.retriever = build_retriever(c.retrieval)
        stop = build_stop_automaton(list(STOP_STRINGS), token_bytes_from_tokenizer(self.tokenizer.backend))
        self.agent = SearchAgent(self.tokenizer, self.retriever, stop, AgentConfig.from_config(c),
                                 chat_template=c.rollout.chat_template)
        self.sampling = [SamplingParams(temperature=mc.rollout.temperature, top_p=mc.rollout.top_p,
                                        top_k=mc.rollout.top_k) for mc in configs]
        self.total_grpo_steps = c.train.rounds * c.grpo.steps_per_round
        self.steps = make_steps(self.binder, StepConfig.from_config(c), population=population,
                                mesh=self.layout.mesh if population else None)

    # ---- the traced hyper-parameters of an update ----
    def grpo_lr(self, mc, step: int) -> float:
        """Member config mc's lr at GRPO step `step` (0-based; METHOD §2)."""
        return lr_at(step, mc.train.lr, total_steps=self.total_grpo_steps, warmup_ratio=mc.train.warmup_ratio)

    def hyper(self, step: int, *, ofsd: bool = False) -> dict:
        """Every member's hyper-parameters for an update of GRPO step `step`; an OFSD round uses
        the lr of the GRPO step it follows, or config.ofsd.lr when that is set (METHOD §3.6)."""
        hypers = []
        for mc in self.configs:
            override = mc.ofsd.lr if ofsd else None
            lr = override if override is not None else self.grpo_lr(mc, step)
            hypers.append(hyper_of(mc, lr=lr))
        return self.layout.hyper(hypers)

    def sft_hyper(self, step: int) -> dict:
        """Every member's hyper-parameters for warm-start update `step`: config.sft.lr after
        config.sft.warmup_steps linear steps (update 0 at lr / warmup_steps, not 0)."""
        hypers = []
        for mc in self.configs:
            w = mc.sft.warmup_steps
            hypers.append(hyper_of(mc, lr=mc.sft.lr * min(1.0, (step + 1) / w) if w else mc.sft.lr))
        return self.layout.hyper(hypers)

    def compile_count(self) -> int:
        """Executables compiled so far: the train steps' and the rollouts' (decode, append and the
        shared prefill of every rollout engine in this process: `engine.compiled_counts`). Flat
        across steps once the shape buckets are warm (tests/train/test_compile_count.py)."""
        return self.steps.compile_count() + sum(compiled_counts())

    def member_params(self, params, i: int):
        return self.layout.member(params, i)

    def policy(self, params, i: int = 0):
        """The model member i's rollouts sample from."""
        return self.layout.policy_params(params, i, self.binder, self.model_cfg)

    def initial_params(self):
        """The params the run starts from (loaded or seeded at construction): a run without a
        warm start restores its reference policy as these (`reference.py`: "initial")."""
        if self._init_params is None:
            raise ValueError("the initial params were released (initial_state() hands them to the "
                             "train state, whose steps donate them): build a new Experiment")
        return self._init_params

    def release_initial_params(self) -> None:
        """Drop the Experiment's handle on the initial params (a resumed run that does not use
        them as its reference frees them)."""
        self._init_params = None

    def _start(self) -> tuple[jax.Array, dict]:
        """The initial rng [N] (member keys) and meta of a run."""
        rng = np.stack([jax.random.key_data(jax.random.key(mc.train.seed)) for mc in self.configs])
        meta = {"round": 0, "phase": "sft" if self.config.sft.enabled else "grpo", "round_step": 0,
                "sft_step": 0, "data": self.train_data.get_state() if self.train_data else {}}
        if not self.config.sft.enabled:
            meta["reference"] = INITIAL  # rebuilt from config.model at a restart, never written
        return jax.random.wrap_key_data(rng), meta

    def initial_state(self, *, optimizer: bool = True) -> TrainState:
        """The state a fresh run starts from. Once per Experiment: it takes the initial params,
        which the first update donates. AdamW's state is created sharded like the params;
        optimizer=False leaves it None (AdamW's initial state, made by the first update that
        needs it: `Trainer`), so evals and rollouts before that hold no moments."""
        params = self.initial_params()
        opt_state = self.steps.init(params, self.hyper(0)) if optimizer else None
        # with a warm start the reference is its result (made at its end): no copy held before
        ref = None if self.config.sft.enabled else jax.tree.map(lambda x: x.copy(), params)
        self.release_initial_params()
        rng, meta = self._start()
        return TrainState(params, opt_state, ref, 0, rng, meta)

    def abstract_state(self) -> TrainState:
        """initial_state()'s params and optimiser state as ShapeDtypeStructs with their shardings
        (its small rng and meta as they are): the target a checkpoint is restored onto. Nothing
        the size of the model is allocated."""
        rng, meta = self._start()
        opt_state = self.steps.abstract_opt_state(self.abstract_params, self.hyper(0))
        return TrainState(self.abstract_params, opt_state, None, 0, rng, meta)
