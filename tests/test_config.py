"""The typed config: every config in configs/ translates, every leaf is consumed, bad values are
refused with the field's name, and defaults live in base() only."""
import dataclasses
import glob
import importlib.util
import os
import sys

import ml_collections
import pytest

from searche1_jax import config as C
from searche1_jax.model.sharding import DEFAULT_RULES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))


def leaves(cd, prefix=""):
    """{"section.name": value} for every leaf of a ConfigDict (the oracle of consumption)."""
    out = {}
    for k, v in cd.items():
        if isinstance(v, ml_collections.ConfigDict):
            out.update(leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def variants():
    out = []
    for path in CONFIG_FILES:
        spec = importlib.util.spec_from_file_location("_probe", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        assert hasattr(mod, "VARIANTS"), f"{path} must list its get_config string args in VARIANTS"
        out += [f"{path}:{arg}" if arg else path for arg in mod.VARIANTS]
    return out


def test_configs_dir_holds_the_shipped_experiments():
    names = {os.path.basename(p) for p in CONFIG_FILES}
    assert {"tiny.py", "demo.py", "qwen3b.py", "qwen7b.py"} <= names
    assert "common.py" not in names  # the shared base lives in searche1_jax.config.base()


@pytest.mark.parametrize("spec", variants(), ids=lambda s: os.path.relpath(s, ROOT))
def test_every_config_translates_and_every_leaf_is_consumed(spec):
    before = list(sys.path)
    cd = C.load_config_file(spec)
    assert sys.path == before, "a config must import its base without touching sys.path"
    typed = C.from_config_dict(cd)
    given, consumed = leaves(cd), typed.flat()
    assert set(given) == set(consumed), (f"unconsumed: {sorted(set(given) - set(consumed))}; "
                                         f"not in the ConfigDict: {sorted(set(consumed) - set(given))}")
    for path, value in given.items():
        if path == "logical_axis_rules":
            assert consumed[path] == tuple((n, None if a is None else tuple(a)) for n, a in value)
        else:
            assert consumed[path] == value, path


def test_base_states_every_dataclass_field_and_nothing_else():
    typed = C.from_config_dict(C.base())
    assert set(leaves(C.base())) == set(typed.flat())
    assert typed.logical_axis_rules == DEFAULT_RULES
    assert typed.ofsd.lr is None and C.field_type("ofsd.lr") is float
    assert typed.grpo.agg == "token-mean" and C.GRPO_AGG_MODES == ("token-mean", "micro_token_mean")


def test_checkpoint_configs_name_the_shapes_of_their_model():
    for name, preset in (("qwen3b", "qwen2.5-3b"), ("qwen7b", "qwen2.5-7b"), ("demo", "smollm2-135m"),
                         ("tiny", "tiny")):
        typed = C.from_config_dict(C.load_config_file(os.path.join(ROOT, "configs", f"{name}.py")))
        assert typed.model.shapes_preset == preset


def test_unknown_key_is_refused_with_the_closest_name():
    cd = C.base()
    cd.grpo.minibatch = 4
    with pytest.raises(ValueError,
                       match="unknown config key config.grpo.minibatch; did you mean config.grpo.mini_batch"):
        C.from_config_dict(cd)
    cd = C.base()
    cd.optim = ml_collections.ConfigDict({"lr": 1.0})
    with pytest.raises(ValueError, match="unknown config key config.optim"):
        C.from_config_dict(cd)


def test_a_field_missing_from_the_config_dict_fails():
    cd = C.base()
    del cd.ofsd["teacher"]
    with pytest.raises(ValueError, match=r"config.ofsd.teacher is missing: start the config from searche1_jax.config"):
        C.from_config_dict(cd)
    cd = C.base()
    del cd["logical_axis_rules"]
    with pytest.raises(ValueError, match="config.logical_axis_rules is missing"):
        C.from_config_dict(cd)


BAD_VALUES = [
    ("rollout.group_size", 1, r"config.rollout.group_size must be >= 2 \(GRPO's group-normalised advantage"),
    ("ofsd.group_size", 1, r"config.ofsd.group_size must be >= 2"),
    ("grpo.mini_batch", 0, r"config.grpo.mini_batch must be >= 1, got 0"),
    ("grpo.micro_batch", 0, r"config.grpo.micro_batch must be >= 1"),
    ("ofsd.micro_batch", 0, r"config.ofsd.micro_batch must be >= 1"),
    ("checkpoint.every_steps", 0, r"config.checkpoint.every_steps must be >= 1"),
    ("grpo.questions_per_step", 0, r"config.grpo.questions_per_step must be >= 1"),
    ("train.rounds", -1, r"config.train.rounds must be >= 0"),
    ("train.rounds", 0, r"config.train.rounds = 0 trains nothing: set it >= 1, or enable config.sft"),
    ("grpo.steps_per_round", 0, r"config.grpo.steps_per_round must be >= 1"),
    ("grpo.clip_eps", 0.0, r"config.grpo.clip_eps must be in \(0, 1\), got 0.0"),
    ("grpo.clip_eps", 1.0, r"config.grpo.clip_eps must be in \(0, 1\)"),
    ("rollout.temperature", 0.0, r"config.rollout.temperature must be > 0"),
    ("ofsd.temperature", -1.0, r"config.ofsd.temperature must be > 0"),
    ("rollout.top_p", 0.0, r"config.rollout.top_p must be in \(0, 1\]"),
    ("rollout.top_p", 1.5, r"config.rollout.top_p must be in \(0, 1\]"),
    ("rollout.top_k", -1, r"config.rollout.top_k must be >= 0"),
    ("train.warmup_ratio", 1.5, r"config.train.warmup_ratio must be in \[0, 1\]"),
    ("train.warmup_ratio", -0.1, r"config.train.warmup_ratio must be in \[0, 1\]"),
    ("retrieval.kind", "faiss", r"config.retrieval.kind must be one of 'bm25', 'exact', 'scann', 'http'; got 'faiss'"),
    ("ofsd.rendering", "docs", r"config.ofsd.rendering must be one of 'queries', 'no_docs', 'full', 'all_siblings'"),
    ("ofsd.teacher", "ema", r"config.ofsd.teacher must be one of 'snapshot', 'live'"),
    ("grpo.kl_estimator", "low_var_kl", r"config.grpo.kl_estimator must be one of 'k1', 'k2', 'k3'"),
    ("grpo.agg", "seq-mean-token-mean",
     r"config.grpo.agg must be one of 'token-mean', 'micro_token_mean'; got 'seq-mean-token-mean'"),
    ("grpo.agg", "micro-token-mean", r"config.grpo.agg must be one of .*; got 'micro-token-mean'"),
    ("model.dtype", "fp8", r"config.model.dtype must be one of 'float32', 'bfloat16', 'float16'"),
    ("model.param_dtype", "int8", r"config.model.param_dtype must be one of"),
    ("model.preset", "qwen3b", r"config.model.preset must be one of .*'qwen2.5-3b'"),
    ("model.architecture", "llama-3", r"config.model.architecture must be one of"),
    ("ofsd.lr", 0.0, r"config.ofsd.lr must be > 0 when set \(None = the GRPO step's lr\)"),
    ("retrieval.topk", 0, r"config.retrieval.topk must be >= 1"),
    ("log.trajectory_groups", -1, r"config.log.trajectory_groups must be >= 0, got -1"),
    ("rollout.chat_template", "always", r"config.rollout.chat_template must be one of 'auto', 'never'"),
    ("rollout.chat_template", True, r"config.rollout.chat_template must be a string, got True"),
    ("mesh.fsdp", 0, r"config.mesh.fsdp must be >= 1 or -1"),
    ("mesh.data", -1, r"at most one of config.mesh.\{data,fsdp,tensor\} may be -1"),
    ("grpo.mini_batch", 24,
     r"config.grpo.questions_per_step x config.rollout.group_size \(512 x 5\) trajectories must be a "
     r"multiple of config.grpo.mini_batch \(24 trajectories per update\)"),
    ("grpo.micro_batch", 7, r"config.grpo.mini_batch \(256\) must be a multiple of config.grpo.micro_batch \(7\)"),
    ("ofsd.micro_batch", 5, r"config.ofsd.mini_batch \(64\) must be a multiple of config.ofsd.micro_batch \(5\)"),
    # types: the field is named too
    ("grpo.mini_batch", 2.0, r"config.grpo.mini_batch must be an int, got 2.0"),
    ("model.remat", 1, r"config.model.remat must be a bool"),
    ("model.scan_layers", "yes", r"config.model.scan_layers must be a bool"),
    ("train.lr", "1e-6", r"config.train.lr must be a number"),
]


@pytest.mark.parametrize("path,value,match", BAD_VALUES, ids=[f"{p}={v!r}" for p, v, _ in BAD_VALUES])
def test_bad_values_raise_errors_naming_the_field(path, value, match):
    cd = C.base()
    section, name = path.split(".")
    with cd.ignore_type():
        cd[section][name] = value
    with pytest.raises((ValueError, TypeError), match=match):
        C.from_config_dict(cd)


def test_grpo_agg_accepts_the_verl_compat_mode_and_the_steps_take_it():
    from searche1_jax.train.steps import StepConfig
    cd = C.base()
    cd.grpo.agg = "micro_token_mean"
    typed = C.from_config_dict(cd)
    assert typed.grpo.agg == "micro_token_mean"
    assert StepConfig.from_config(typed).agg == "micro_token_mean"


def test_inconsistent_model_and_retrieval_fields_are_refused():
    def bad(match, **fields):
        cd = C.base()
        for path, v in fields.items():
            section, name = path.split("__")
            cd[section][name] = v
        with pytest.raises(ValueError, match=match):
            C.from_config_dict(cd)
    bad(r"config.model.checkpoint \('x'\) would be ignored", model__preset="tiny", model__checkpoint="x",
        model__tokenizer="smollm2")
    bad(r"config.model.preset \('tiny'\) needs config.model.tokenizer", model__preset="tiny")
    bad(r"with config.model.preset \('tiny'\) leave it empty", model__preset="tiny", model__tokenizer="t",
        model__architecture="qwen2.5-3b")
    bad(r"config.retrieval.url is read only by kind='http'", retrieval__url="http://x")
    bad(r"kind='http' reads only config.retrieval.url", retrieval__kind="http", retrieval__url="http://x",
        retrieval__index="/idx")
    bad(r"config.retrieval.corpus is read only by kind='bm25'", retrieval__kind="scann", retrieval__corpus="c")
    bad(r"set index .* or corpus .* not both", retrieval__index="/idx", retrieval__corpus="c")


def test_ofsd_lr_is_unset_by_default_and_a_float_when_set():
    cd = C.base()
    assert cd.ofsd.lr is None
    cd.ofsd.lr = 3e-6
    assert C.from_config_dict(cd).ofsd.lr == 3e-6


def test_logical_axis_rules_are_the_configs_and_are_checked():
    cd = C.base()
    cd.logical_axis_rules = tuple((n, "tensor" if n == "embed" else a) for n, a in DEFAULT_RULES)
    rules = dict(C.from_config_dict(cd).logical_axis_rules)
    assert rules["embed"] == ("tensor",) and rules["batch"] == ("data", "fsdp")
    cd.logical_axis_rules = tuple((n, ("pipeline",) if n == "mlp" else a) for n, a in DEFAULT_RULES)
    with pytest.raises(ValueError, match=r"config.logical_axis_rules: row 'mlp' names mesh axes \['pipeline'\]"):
        C.from_config_dict(cd)
    cd.logical_axis_rules = tuple(r for r in DEFAULT_RULES if r[0] != "vocab")
    with pytest.raises(ValueError, match=r"config.logical_axis_rules: no row for logical axes \['vocab'\]"):
        C.from_config_dict(cd)
    cd.logical_axis_rules = DEFAULT_RULES + (("vocab", None),)
    with pytest.raises(ValueError, match="logical axis 'vocab' has two rows"):
        C.from_config_dict(cd)


def test_typed_config_reads_like_the_config_dict():
    cd = C.load_config_file(os.path.join(ROOT, "configs", "tiny.py"))
    typed = C.from_config_dict(cd)
    assert typed.grpo.mini_batch == cd.grpo.mini_batch == 8
    assert dict(typed.mesh) == dict(cd.mesh) == {"data": 1, "fsdp": -1, "tensor": 1}
    assert typed.to_dict()["grpo"]["mini_batch"] == 8 and typed.to_dict()["mesh"]["fsdp"] == -1
    with pytest.raises(dataclasses.FrozenInstanceError):
        typed.grpo.mini_batch = 3
    assert cd.data.train == os.path.join(C.DEMO_DIR, "train.jsonl") and os.path.exists(cd.data.train)


def test_config_variants_are_checked():
    with pytest.raises(ValueError, match="variants are"):
        C.load_config_file(os.path.join(ROOT, "configs", "qwen3b.py") + ":chat")
    base, inst = (C.load_config_file(os.path.join(ROOT, "configs", f"qwen3b.py:{v}")) for v in ("base", "instruct"))
    # Search-R1's base runs used the tokenizer's ChatML template too (METHOD §1): no raw-text variant
    assert base.rollout.chat_template == inst.rollout.chat_template == "auto"


# Every numeric field's domain, as one out-of-domain value each (the oracle is this table, not
# the checks): a numeric field added without a domain check fails the coverage test below.
NUMERIC_OUT_OF_DOMAIN = {
    "mesh.data": (0, r"config.mesh.data must be >= 1 or -1"),
    "mesh.fsdp": (-2, r"config.mesh.fsdp must be >= 1 or -1"),
    "mesh.tensor": (0, r"config.mesh.tensor must be >= 1 or -1"),
    "data.seed": (-1, r"config.data.seed must be >= 0, got -1"),
    "retrieval.topk": (0, r"config.retrieval.topk must be >= 1"),
    "retrieval.timeout": (0.0, r"config.retrieval.timeout must be > 0"),
    "retrieval.deadline": (10.0, r"config.retrieval.deadline must be >= 30.0"),
    "retrieval.max_queries": (0, r"config.retrieval.max_queries must be >= 1"),
    "rollout.group_size": (1, r"config.rollout.group_size must be >= 2"),
    "rollout.temperature": (0.0, r"config.rollout.temperature must be > 0"),
    "rollout.top_p": (0.0, r"config.rollout.top_p must be in \(0, 1\]"),
    "rollout.top_k": (-1, r"config.rollout.top_k must be >= 0"),
    "rollout.max_turns": (0, r"config.rollout.max_turns must be >= 1"),
    "rollout.max_turn_tokens": (0, r"config.rollout.max_turn_tokens must be >= 1"),
    "rollout.max_obs_tokens": (0, r"config.rollout.max_obs_tokens must be >= 1"),
    "rollout.max_prompt_tokens": (0, r"config.rollout.max_prompt_tokens must be >= 1"),
    "rollout.max_response_tokens": (-5, r"config.rollout.max_response_tokens must be >= 1"),
    "rollout.prompt_bucket": (0, r"config.rollout.prompt_bucket must be >= 1"),
    "rollout.max_rows": (-1, r"config.rollout.max_rows must be >= 0"),
    "rollout.replica_tensor": (0, r"config.rollout.replica_tensor must be >= 1"),
    "grpo.steps_per_round": (0, r"config.grpo.steps_per_round must be >= 1"),
    "grpo.questions_per_step": (-4, r"config.grpo.questions_per_step must be >= 1, got -4"),
    "grpo.mini_batch": (0, r"config.grpo.mini_batch must be >= 1, got 0"),
    "grpo.micro_batch": (0, r"config.grpo.micro_batch must be >= 1, got 0"),
    "grpo.epochs": (0, r"config.grpo.epochs must be >= 1"),
    "grpo.clip_eps": (-0.1, r"config.grpo.clip_eps must be in \(0, 1\)"),
    "grpo.kl_coef": (-0.001, r"config.grpo.kl_coef must be >= 0"),
    "grpo.entropy_coef": (-1.0, r"config.grpo.entropy_coef must be >= 0"),
    "grpo.length_bucket": (0, r"config.grpo.length_bucket must be >= 1"),
    "grpo.logit_chunk": (0, r"config.grpo.logit_chunk must be >= 1"),
    "sft.questions": (-1, r"config.sft.questions must be >= 0"),
    "sft.steps": (0, r"config.sft.steps must be >= 1"),
    "sft.batch": (0, r"config.sft.batch must be >= 1"),
    "sft.micro_batch": (0, r"config.sft.micro_batch must be >= 1"),
    "sft.lr": (0.0, r"config.sft.lr must be > 0"),
    "sft.warmup_steps": (-1, r"config.sft.warmup_steps must be >= 0"),
    "sft.length_bucket": (0, r"config.sft.length_bucket must be >= 1"),
    "sft.eval_dev": (-1, r"config.sft.eval_dev must be >= 0"),
    "sft.eval_rows": (-1, r"config.sft.eval_rows must be >= 0"),
    "ofsd.questions": (0, r"config.ofsd.questions must be >= 1"),
    "ofsd.group_size": (1, r"config.ofsd.group_size must be >= 2"),
    "ofsd.temperature": (0.0, r"config.ofsd.temperature must be > 0"),
    "ofsd.epochs": (0, r"config.ofsd.epochs must be >= 1"),
    "ofsd.mini_batch": (0, r"config.ofsd.mini_batch must be >= 1"),
    "ofsd.micro_batch": (0, r"config.ofsd.micro_batch must be >= 1, got 0"),
    "ofsd.lr": (-1e-6, r"config.ofsd.lr must be > 0 when set"),
    "ofsd.logit_chunk": (0, r"config.ofsd.logit_chunk must be >= 1"),
    "ofsd.length_bucket": (0, r"config.ofsd.length_bucket must be >= 1"),
    "train.rounds": (-1, r"config.train.rounds must be >= 0"),
    "train.lr": (-1e-6, r"config.train.lr must be >= 0"),
    "train.weight_decay": (-0.01, r"config.train.weight_decay must be >= 0"),
    "train.grad_clip": (0.0, r"config.train.grad_clip must be > 0"),
    "train.warmup_ratio": (2.0, r"config.train.warmup_ratio must be in \[0, 1\]"),
    "train.seed": (-1, r"config.train.seed must be >= 0"),
    "checkpoint.every_steps": (0, r"config.checkpoint.every_steps must be >= 1, got 0"),
    "checkpoint.keep": (0, r"config.checkpoint.keep must be >= 1"),
    "checkpoint.concurrent_gb": (0.0, r"config.checkpoint.concurrent_gb must be > 0"),
    "log.trajectory_groups": (-1, r"config.log.trajectory_groups must be >= 0"),
}


def test_every_numeric_field_has_a_stated_domain():
    numeric = {k for k in leaves(C.base()) if k != "logical_axis_rules" and C.field_type(k) in (int, float)}
    assert numeric == set(NUMERIC_OUT_OF_DOMAIN)


@pytest.mark.parametrize("path", sorted(NUMERIC_OUT_OF_DOMAIN))
def test_numeric_field_out_of_its_domain_is_refused_naming_the_field(path):
    value, match = NUMERIC_OUT_OF_DOMAIN[path]
    for bad in (value, float("nan")) if C.field_type(path) is float else (value,):
        cd = C.base()
        section, name = path.split(".")
        with cd.ignore_type():
            cd[section][name] = bad
        with pytest.raises((ValueError, TypeError), match=match if bad is value else rf"config.{path} must be"):
            C.from_config_dict(cd)


def test_data_on_invalid_is_refuse_or_skip():
    assert C.from_config_dict(C.base()).data.on_invalid == "refuse"
    cd = C.base()
    cd.data.on_invalid = "warn"
    with pytest.raises(ValueError, match=r"config.data.on_invalid must be one of 'refuse', 'skip'; got 'warn'"):
        C.from_config_dict(cd)


def test_the_retrievers_timeout_deadline_and_request_size_come_from_the_config():
    from searche1_jax.retrieval.factory import build_retriever
    cd = C.base()
    cd.retrieval.kind, cd.retrieval.url = "http", "http://127.0.0.1:9"
    cd.retrieval.timeout, cd.retrieval.deadline, cd.retrieval.max_queries = 5.0, 12.5, 64
    cd.data.train = "x.jsonl"
    client = build_retriever(C.from_config_dict(cd).retrieval)  # no request is made
    assert (client.timeout, client.deadline, client.max_queries) == (5.0, 12.5, 64)
