"""Sweep spec parsing: cross product, population/structural split, and refusals that name the field."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "configs"))
from tiny import get_config  # noqa: E402

from searche1_jax.sweep.spec import describe, parse_sweep, plan_sweep, with_overrides  # noqa: E402
from searche1_jax.train.setup import check_members  # noqa: E402


@pytest.fixture
def config():
    return get_config()


def test_cross_product_and_split(config):
    axes = parse_sweep("seed=0,1,2,3;train.lr=1e-6,3e-6;ofsd.rendering=queries,no_docs", config)
    plan = plan_sweep(axes)
    assert [a.field for a in plan.population] == ["train.seed", "train.lr"]
    assert [a.field for a in plan.structural] == ["ofsd.rendering"]
    members = plan.members()
    assert len(members) == 8 and members[1] == {"train.seed": 0, "train.lr": 3e-6}
    assert isinstance(members[0]["train.seed"], int) and isinstance(members[0]["train.lr"], float)
    assert plan.populations() == [{"ofsd.rendering": "queries"}, {"ofsd.rendering": "no_docs"}]
    c = with_overrides(config, {**plan.populations()[1], **members[7]})
    assert (c.train.seed, c.train.lr, c.ofsd.rendering) == (3, 3e-6, "no_docs")
    assert config.train.seed == 0  # the base config is untouched
    assert describe(members[1]) == "seed=0 lr=3e-06"


def test_only_structural_fields_give_one_member_populations(config):
    plan = plan_sweep(parse_sweep("rollout.group_size=2,4", config))
    assert plan.members() == [{}] and len(plan.populations()) == 2


def test_unknown_field_names_the_closest_valid_one(config):
    with pytest.raises(ValueError, match=r"'train.learning_rate' is not a config field; did you mean 'train.lr'"):
        parse_sweep("train.learning_rate=1e-6", config)
    with pytest.raises(ValueError, match=r"'sed' is not a config field; did you mean 'seed'"):
        parse_sweep("sed=1,2", config)


def test_wrong_value_type_names_field_and_type(config):
    with pytest.raises(ValueError, match=r"train.seed takes int values, got '1.5'"):
        parse_sweep("seed=0,1.5", config)
    with pytest.raises(ValueError, match=r"train.lr takes float values, got 'fast'"):
        parse_sweep("train.lr=fast", config)
    with pytest.raises(ValueError, match=r"ofsd.enabled takes bool values, got 'maybe'"):
        parse_sweep("ofsd.enabled=true,maybe", config)


def test_empty_value_list_is_refused(config):
    with pytest.raises(ValueError, match=r"train.lr has an empty value"):
        parse_sweep("seed=0,1;train.lr=", config)
    with pytest.raises(ValueError, match=r"train.seed has an empty value"):
        parse_sweep("seed=0,,1", config)
    with pytest.raises(ValueError, match="the sweep is empty"):
        parse_sweep(" ; ", config)


def test_shape_changing_field_in_a_population_is_refused(config):
    axes = parse_sweep("seed=0,1;rollout.group_size=2,4", config)
    with pytest.raises(ValueError, match=r"rollout.group_size cannot vary inside a population"):
        plan_sweep(axes, "seed,rollout.group_size", config)
    # and at the library level: member configs that differ in a structural field
    a, b = with_overrides(config, {"model.preset": "tiny"}), with_overrides(config, {"model.preset": "smollm2-135m"})
    with pytest.raises(ValueError, match=r"model.preset cannot vary inside a population"):
        check_members([a, b])
    check_members([a, with_overrides(a, {"train.lr": 0.5, "train.seed": 3})])


def test_ofsd_lr_is_a_population_field(config):
    # the OFSD updates take their lr as a traced input (config.ofsd.lr overrides the GRPO step's lr,
    # METHOD §3.6), so its members share one step
    plan = plan_sweep(parse_sweep("ofsd.lr=1e-6,2e-6", config))
    assert [a.field for a in plan.population] == ["ofsd.lr"] and not plan.structural


def test_other_refusals_name_the_field(config):
    with pytest.raises(ValueError, match=r"data.dev cannot be swept: the dev file is not a hyper-parameter"):
        parse_sweep("data.dev=a.jsonl,b.jsonl", config)
    with pytest.raises(ValueError, match=r"train.lr appears twice"):
        parse_sweep("lr=1e-6;train.lr=2e-6", config)
    with pytest.raises(ValueError, match=r"'temperature' is ambiguous"):
        parse_sweep("temperature=1.0", config)
    with pytest.raises(ValueError, match=r"population field train.lr is not in the sweep"):
        plan_sweep(parse_sweep("seed=0,1", config), "seed,lr", config)
