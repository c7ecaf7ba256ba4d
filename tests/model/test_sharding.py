"""The rules table decides the PartitionSpecs: golden specs for the default table, another table
from a config changes them, and a table the model cannot use is refused naming the row."""
import pytest
from jax.sharding import PartitionSpec as P

from searche1_jax.config import base, from_config_dict
from searche1_jax.model.sharding import DEFAULT_RULES, check_rules, logical_to_spec, make_mesh


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
