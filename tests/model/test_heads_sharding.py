"""Heads kept whole: golden PartitionSpecs of every parameter kind of the qwen3b and qwen7b configs'
models on the meshes users run (abstract shapes and meshes: nothing is allocated), and the
attention kernels' heads axis through a sharded forward."""
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from searche1_jax import config as C
from searche1_jax.model.config import get_preset
from searche1_jax.model.create import abstract_model, create_model, flat_params, model_from_arrays
from searche1_jax.model.sharding import MESH_AXES, logical_to_spec, make_mesh

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MESHES = {"fsdp8": {"fsdp": 8}, "fsdp4_tensor2": {"fsdp": 4, "tensor": 2},
          "fsdp16_tensor4": {"fsdp": 16, "tensor": 4}}

# parameter kind -> PartitionSpec, per mesh, written out by hand from the shapes:
# qwen2.5-3b: D 2048, 16 heads, 2 KV heads, head_dim 128, mlp 11008, V 151,936, tied head;
# qwen2.5-7b: D 3584, 28 heads, 4 KV heads, head_dim 128, mlp 18944, V 152,064, own head.
_FSDP8 = {"embed": P(None, "fsdp"), "lm_head": P("fsdp", None), "scale": P(None),
          "q.kernel": P("fsdp", None, None), "q.bias": P(None, None),
          "kv.kernel": P("fsdp", None, None), "kv.bias": P(None, None),
          "o.kernel": P(None, None, "fsdp"), "gate_up": P("fsdp", None), "down": P(None, "fsdp")}
_TP = {"embed": P("tensor", "fsdp"), "lm_head": P("fsdp", "tensor"), "scale": P(None),
       "q.kernel": P("fsdp", "tensor", None), "q.bias": P("tensor", None),
       "kv.kernel": P("fsdp", "tensor", None), "kv.bias": P("tensor", None),
       "o.kernel": P("tensor", None, "fsdp"), "gate_up": P("fsdp", "tensor"), "down": P("tensor", "fsdp")}
# 2 KV heads on tensor 4: replicated over tensor (each head whole), never a quarter of one
_KV_REPLICATED = {"kv.kernel": P("fsdp", None, None), "kv.bias": P(None, None)}
GOLDEN = {
    ("qwen3b", "fsdp8"): _FSDP8, ("qwen7b", "fsdp8"): _FSDP8,
    ("qwen3b", "fsdp4_tensor2"): _TP, ("qwen7b", "fsdp4_tensor2"): _TP,
    ("qwen3b", "fsdp16_tensor4"): {**_TP, **_KV_REPLICATED}, ("qwen7b", "fsdp16_tensor4"): _TP,
}
KINDS = [(r"^embed$", "embed"), (r"^lm_head$", "lm_head"), (r"\.scale$", "scale"),
         (r"attn\.q_proj\.(kernel|bias)$", "q."), (r"attn\.[kv]_proj\.(kernel|bias)$", "kv."),
         (r"attn\.o_proj\.(kernel)$", "o."), (r"mlp\.(gate|up)_proj\.kernel$", "gate_up"),
         (r"mlp\.down_proj\.kernel$", "down")]


def kind_of(path: str) -> str:
    for pattern, kind in KINDS:
        m = re.search(pattern, path)
        if m:
            return kind + (m.group(1) if kind.endswith(".") else "")
    raise AssertionError(f"no parameter kind for {path}")


def abstract_mesh(shape: dict) -> AbstractMesh:
    return AbstractMesh(tuple(shape.get(a, 1) for a in MESH_AXES), MESH_AXES)


@pytest.fixture(scope="module", params=["qwen3b", "qwen7b"])
def config_model(request):
    typed = C.from_config_dict(C.load_config_file(os.path.join(ROOT, "configs", f"{request.param}.py")))
    cfg = get_preset(typed.model.shapes_preset)
    _, _, flat = abstract_model(cfg)
    return request.param, cfg, typed.logical_axis_rules, flat


@pytest.mark.parametrize("mesh_name", list(MESHES))
def test_every_parameter_kind_has_its_golden_spec(config_model, mesh_name):
    name, cfg, rules, flat = config_model
    mesh = abstract_mesh(MESHES[mesh_name])
    golden = GOLDEN[(name, mesh_name)]
    seen = set()
    for path, var in flat.items():
        kind = kind_of(path)
        seen.add(kind)
        spec = logical_to_spec(var.get_metadata()["logical_axes"], var.get_value().shape, mesh, rules)
        assert spec == golden[kind], (name, mesh_name, path, spec)
    assert seen == set(golden) - ({"lm_head"} if cfg.tie_embeddings else set())


@pytest.mark.parametrize("mesh_name", list(MESHES))
def test_scanned_layout_adds_an_unsharded_layers_axis_to_the_golden_spec(config_model, mesh_name):
    """model.scan_layers: each layer parameter [L, ...] gets the golden spec of its kind behind a
    `layers` axis that no mesh axis splits (every device holds its share of every layer)."""
    name, cfg, rules, _ = config_model
    _, _, flat = abstract_model(cfg.replace(scan_layers=True))
    mesh = abstract_mesh(MESHES[mesh_name])
    golden = GOLDEN[(name, mesh_name)]
    n_stacked = 0
    for path, var in flat.items():
        axes, shape = var.get_metadata()["logical_axes"], var.get_value().shape
        spec = logical_to_spec(axes, shape, mesh, rules)
        if path.startswith("layers."):
            n_stacked += 1
            assert axes[0] == "layers" and shape[0] == cfg.n_layers, (path, axes, shape)
            assert spec == P(None, *golden[kind_of(path)]), (name, mesh_name, path, spec)
        else:
            assert spec == golden[kind_of(path)], (name, mesh_name, path, spec)
    assert n_stacked == 9 + 3 * cfg.qkv_bias   # 2 norms, 4 attention and 3 MLP kernels, q/k/v biases


@pytest.mark.parametrize("mesh_name", list(MESHES))
def test_no_head_is_ever_split(config_model, mesh_name):
    """Attention kernels [D, N, H] / [N, H, D]: the head_dim axis is never sharded and the mesh
    axes on a heads axis divide the head count, so every device holds whole heads."""
    _, _, rules, flat = config_model
    mesh = abstract_mesh(MESHES[mesh_name])
    for path, var in flat.items():
        axes = var.get_metadata()["logical_axes"]
        if "head_dim" not in axes:
            continue
        shape = var.get_value().shape
        spec = logical_to_spec(axes, shape, mesh, rules)
        assert spec[axes.index("head_dim")] is None, path
        for name in ("heads", "kv_heads"):
            if name in axes:
                entry = spec[axes.index(name)]
                ways = int(np.prod([mesh.shape[a] for a in ((entry,) if isinstance(entry, str) else entry or ())]))
                assert shape[axes.index(name)] % ways == 0, (path, spec)


def test_attention_kernels_carry_a_heads_axis():
    cfg = get_preset("tiny")
    params = flat_params(create_model(cfg))
    d, n, k, h = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    assert params["layers.0.attn.q_proj.kernel"].shape == (d, n, h)
    assert params["layers.0.attn.k_proj.kernel"].shape == (d, k, h)
    assert params["layers.0.attn.v_proj.bias"].shape == (k, h)
    assert params["layers.0.attn.o_proj.kernel"].shape == (n, h, d)


def test_kv_heads_replicate_on_a_tensor_axis_wider_than_their_count():
    """tiny has 2 KV heads: on tensor 4 each device holds both whole (the q heads, 4, split), and
    the sharded forward equals the single-device one."""
    cfg = get_preset("tiny")
    model = create_model(cfg, seed=3)
    mesh = make_mesh({"fsdp": 2, "tensor": 4})
    sharded = model_from_arrays(cfg, {k: np.asarray(v) for k, v in flat_params(model).items()}, mesh=mesh)
    specs = {k: v.sharding.spec for k, v in flat_params(sharded).items()}
    assert specs["layers.0.attn.k_proj.kernel"] == P("fsdp")  # = P("fsdp", None, None), trimmed as jit returns it
    assert specs["layers.0.attn.q_proj.kernel"] == P("fsdp", "tensor")
    assert specs["layers.0.attn.o_proj.kernel"] == P("tensor", None, "fsdp")
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (4, 12)))
    np.testing.assert_allclose(np.asarray(jax.jit(lambda m, t: m(t))(sharded, tokens)),
                               np.asarray(model(tokens)), atol=1e-5)
