"""The rules table decides the PartitionSpecs: golden specs for the default table, another table
from a config changes them, and a table the model cannot use is refused naming the row."""
import pytest
from jax.sharding import PartitionSpec as P

from searche1_jax.config import base, from_config_dict
from searche1_jax.model.config import get_preset
from searche1_jax.model.sharding import DEFAULT_RULES, check_model_split, check_rules, logical_to_spec, make_mesh


@pytest.fixture(scope="module")
def mesh():
    return make_mesh({"data": 2, "fsdp": 2, "tensor": 2})


def test_default_rules_golden_specs(mesh):
    assert logical_to_spec(("vocab", "embed"), (512, 64), mesh) == P("tensor", "fsdp")
    assert logical_to_spec(("embed", "mlp"), (64, 128), mesh) == P("fsdp", "tensor")
    assert logical_to_spec(("batch", "length", "act_embed"), (8, 16, 64), mesh) == P(("data", "fsdp"), None, None)
    # 3 KV heads do not divide tensor=2: that dim replicates
    assert logical_to_spec(("embed", "kv_heads", "head_dim"), (64, 3, 16), mesh) == P("fsdp", None, None)


def test_rules_from_the_config_change_the_specs(mesh):
    cd = base()
    cd.logical_axis_rules = tuple((n, ("tensor",) if n == "embed" else (None if n in ("heads", "mlp", "vocab")
                                                                       else a)) for n, a in DEFAULT_RULES)
    rules = from_config_dict(cd).logical_axis_rules
    assert logical_to_spec(("vocab", "embed"), (512, 64), mesh, rules) == P(None, "tensor")
    assert logical_to_spec(("embed", "mlp"), (64, 128), mesh, rules) == P("tensor", None)


def test_check_rules_names_the_bad_row():
    check_rules(DEFAULT_RULES)
    with pytest.raises(ValueError, match="row 'embed' names mesh axes \\['pipe'\\]"):
        check_rules(tuple((n, ("pipe",) if n == "embed" else a) for n, a in DEFAULT_RULES))
    with pytest.raises(ValueError, match="row 'batch' repeats a mesh axis"):
        check_rules(tuple((n, ("data", "data") if n == "batch" else a) for n, a in DEFAULT_RULES))
    with pytest.raises(ValueError, match="no row for logical axes \\['length'\\]"):
        check_rules(tuple(r for r in DEFAULT_RULES if r[0] != "length"))


# --- the model's own dimensions against the mesh (check_model_split, issue 20 item 3) ---

RULES = base().logical_axis_rules


@pytest.mark.parametrize("preset,mesh", [
    ("qwen2.5-3b", {"data": 1, "fsdp": 8, "tensor": 1}),
    ("qwen2.5-3b", {"data": 1, "fsdp": 4, "tensor": 2}),
    ("qwen2.5-3b", {"data": 1, "fsdp": 16, "tensor": 4}),   # 2 KV heads on tensor 4: replicated pairs
    ("qwen2.5-7b", {"data": 1, "fsdp": 16, "tensor": 4}),
    ("qwen2.5-7b", {"data": 2, "fsdp": 32, "tensor": 1}),
])
def test_the_papers_meshes_split_every_dimension_evenly(preset, mesh):
    check_model_split(get_preset(preset), mesh, RULES)


def test_a_tensor_axis_that_cuts_query_heads_is_refused_with_the_sizes_that_divide():
    # Qwen2.5-7B: 28 query heads, 4 KV heads, MLP 18944, vocab 151936. tensor 8: 28 % 8 = 4, so
    # the query heads replicate; the 4 KV heads are fine (8 is a multiple of 4); 18944 = 2^8 x 74
    # and 151936 = 2^7 x 1187 divide by 8. Valid tensor sizes near 8 for 28 heads: 7 and 14.
    with pytest.raises(ValueError) as e:
        check_model_split(get_preset("qwen2.5-7b"), {"data": 1, "fsdp": 2, "tensor": 8}, RULES)
    msg = str(e.value)
    assert "the 28 query heads (model.n_heads, logical axis 'heads') do not split over tensor = 8" in msg
    assert "nearest valid tensor: 7 or 14" in msg
    assert "KV heads" not in msg and "MLP" not in msg and "vocabulary" not in msg


def test_kv_heads_neither_dividing_nor_divided_by_tensor_are_refused():
    # Qwen2.5-3B: 16 query heads, 2 KV heads; tensor 16 divides the query heads and is a multiple
    # of 2 (fine); a 3-KV-head model on tensor 2 is neither.
    check_model_split(get_preset("qwen2.5-3b"), {"data": 1, "fsdp": 1, "tensor": 16}, RULES)
    m = get_preset("qwen2.5-3b").replace(n_heads=12, n_kv_heads=3, mlp_dim=11008)
    with pytest.raises(ValueError, match=r"the 3 KV heads .* tensor = 2.*nearest valid tensor: 1 or 3"):
        check_model_split(m, {"data": 1, "fsdp": 1, "tensor": 2}, RULES)


def test_fsdp_that_does_not_divide_the_model_width_is_refused_unless_the_rules_say_otherwise():
    m = get_preset("qwen2.5-0.5b")  # d_model 896 = 2^7 x 7: fsdp 128 divides, 256 does not
    check_model_split(m, {"data": 1, "fsdp": 128, "tensor": 1}, RULES)
    with pytest.raises(ValueError, match=r"the 896 model width .*fsdp = 256.*nearest valid fsdp: 224 or 448"):
        check_model_split(m, {"data": 1, "fsdp": 256, "tensor": 1}, RULES)
    replicated_embed = tuple((n, None if n == "embed" else a) for n, a in RULES)
    check_model_split(m, {"data": 1, "fsdp": 256, "tensor": 1}, replicated_embed)
