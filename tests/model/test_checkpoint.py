"""Checkpoint import/export round trips and the errors bad checkpoints raise."""
import json
import os

import numpy as np
import pytest
import torch

from searche1_jax.model.checkpoint import load_gguf, load_hf, save_hf
from searche1_jax.model.config import get_preset
from searche1_jax.model.create import create_model, flat_params
from searche1_jax.model.weight_map import flax_to_hf, hf_to_flax
from searche1_jax.model.weight_tables import gguf_rules, hf_rules

from tests.model.hf_tiny import make_tiny_hf


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scan_layers"])
@pytest.mark.parametrize("family,tied", [("qwen2", True), ("llama", False)])
def test_export_then_transformers_reload_gives_identical_tensors(tmp_path, family, tied, scan):
    from transformers import AutoModelForCausalLM

    src = make_tiny_hf(family, str(tmp_path / "src"), tied=tied, seed=3)
    model, cfg = load_hf(str(tmp_path / "src"), scan_layers=scan)  # scan: stacked on import, split on export
    assert cfg.scan_layers == scan
    save_hf(model, str(tmp_path / "out"))
    back = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), dtype=torch.float32)
    assert type(back).__name__ == type(src).__name__
    a, b = src.state_dict(), back.state_dict()
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_array_equal(a[name].numpy(), b[name].numpy(), err_msg=name)


def test_sharded_safetensors_index_loads(tmp_path):
    src = make_tiny_hf("qwen2", str(tmp_path / "one"), tied=False, seed=4)
    src.save_pretrained(str(tmp_path / "sharded"), max_shard_size="40KB")
    assert os.path.exists(tmp_path / "sharded" / "model.safetensors.index.json")
    m1, _ = load_hf(str(tmp_path / "one"))
    m2, _ = load_hf(str(tmp_path / "sharded"))
    p1, p2 = flat_params(m1), flat_params(m2)
    for k in p1:
        np.testing.assert_array_equal(np.asarray(p1[k]), np.asarray(p2[k]))


def test_weight_map_round_trip_is_exact_for_every_preset_layout():
    cfg = get_preset("tiny")
    params = {k: np.asarray(v) for k, v in flat_params(create_model(cfg)).items()}
    back = hf_to_flax(flax_to_hf(params, hf_rules(cfg)), hf_rules(cfg))
    assert set(back) == set(params)
    for k in params:
        np.testing.assert_array_equal(back[k], params[k])
    # GGUF (llama.cpp permuted q/k) tables invert too.
    rules = gguf_rules(cfg, "llama")
    back = hf_to_flax(flax_to_hf(params, rules), rules)
    for k in params:
        np.testing.assert_array_equal(back[k], params[k])


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown model preset 'qwen9b'.*qwen2.5-3b"):
        get_preset("qwen9b")


def test_missing_tensor_is_named(tmp_path):
    from safetensors.numpy import load_file, save_file

    make_tiny_hf("qwen2", str(tmp_path), tied=True)
    path = tmp_path / "model.safetensors"
    tensors = load_file(str(path))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(path))
    with pytest.raises(ValueError, match=r"missing.*layers\.1\.mlp\.up_proj\.kernel"):
        load_hf(str(tmp_path))


def test_shape_mismatch_names_tensor_expected_and_got(tmp_path):
    make_tiny_hf("qwen2", str(tmp_path), tied=True)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["intermediate_size"] = 80  # config says 80, tensors say 96
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    want = r"shape mismatch for layers\.0\.mlp\.\w+_proj\.kernel: expected .*80.*got .*96"
    with pytest.raises(ValueError, match=want):
        load_hf(str(tmp_path))


def test_unknown_tensor_name_fails_loudly(tmp_path):
    from safetensors.numpy import load_file, save_file

    make_tiny_hf("llama", str(tmp_path), tied=True)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    tensors["model.layers.0.self_attn.q_norm.weight"] = np.ones(16, np.float32)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="match no row of the weight map.*q_norm"):
        load_hf(str(tmp_path))


def test_missing_checkpoint_files_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    with pytest.raises(ValueError, match=r"config.json lacks \['vocab_size'.*'num_attention_heads'"):
        load_hf(str(tmp_path))


def test_unsupported_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match=r"unsupported model_type 'gpt2'"):
        load_hf(str(tmp_path))


def test_gguf_of_unsupported_architecture(tmp_path):
    import gguf

    path = str(tmp_path / "gpt2.gguf")
    w = gguf.GGUFWriter(path, "gpt2")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match=r"unsupported GGUF architecture 'gpt2'"):
        load_gguf(path)
