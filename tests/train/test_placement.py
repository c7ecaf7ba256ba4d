"""The train state is created where it lives (issue 20 item 1): AdamW's m and v carry their
parameters' shardings on 8 fake devices, before and after an update, and the restore target is
abstract (ShapeDtypeStructs with those shardings: nothing allocated)."""
import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding

from searche1_jax.model.config import get_preset
from searche1_jax.model.create import create_model
from searche1_jax.model.sharding import make_mesh
from searche1_jax.train.batching import to_micro
from searche1_jax.train.placement import abstract
from searche1_jax.train.state import Binder, params_of
from searche1_jax.train.steps import StepConfig, hyper, make_steps
from tests.train.batches import random_grpo_batch

CFG = get_preset("tiny")
HYPER = hyper(lr=1e-2, weight_decay=0.01, grad_clip=1.0, kl_coef=0.001, entropy_coef=0.001,
              temperature=1.0, ofsd_temperature=1.0)


@pytest.fixture(scope="module")
def sharded():
    mesh = make_mesh({"fsdp": 4, "tensor": 2})
    model = create_model(CFG, mesh=mesh, seed=3)
    return mesh, model, make_steps(Binder(model), StepConfig(grpo_chunk=64))


def moments(opt_state):
    """AdamW's (mu, nu) param-shaped trees and its step count, found by name in optax's chain."""
    (adam,) = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: hasattr(x, "mu")) if hasattr(s, "mu")]
    return adam.mu, adam.nu, adam.count


def shard_shapes(x) -> list:
    """Per device, the shape of the block it holds: the oracle of where an array lives."""
    return sorted((s.device.id, s.data.shape) for s in x.addressable_shards)


def assert_placed_like(tree, params, mesh):
    for key, p in jax.tree_util.tree_leaves_with_path(params):
        leaf = tree
        for k in key:
            leaf = leaf[k.key]
        assert leaf.sharding.is_equivalent_to(p.sharding, p.ndim), (jax.tree_util.keystr(key), leaf.sharding)
        assert shard_shapes(leaf) == shard_shapes(p), jax.tree_util.keystr(key)


def test_adamw_moments_are_born_with_their_parameters_shardings_and_keep_them(sharded):
    mesh, model, steps = sharded
    params = params_of(model)
    specs = {str(p.sharding.spec) for p in jax.tree.leaves(params)}
    assert len(specs) >= 3  # the tiny model on fsdp 4 x tensor 2 has several layouts to follow
    opt_state = steps.init(params, HYPER)
    mu, nu, count = moments(opt_state)
    assert_placed_like(mu, params, mesh)
    assert_placed_like(nu, params, mesh)
    # the step count is replicated over the mesh: on all 8 devices, not on device 0 alone
    assert isinstance(count.sharding, NamedSharding) and count.sharding.is_fully_replicated
    assert sorted(d.id for d in count.sharding.device_set) == list(range(8))
    for leaf in jax.tree.leaves(opt_state):
        assert len(leaf.sharding.device_set) == 8

    # an update (donating params and state) hands back the same layout
    batch = to_micro(random_grpo_batch(CFG.vocab_size, seed=0, rows=8, length=24), 8)
    new_params, new_state, _ = steps.sft(jax.tree.map(lambda x: x.copy(), params), opt_state, batch, HYPER)
    mu2, nu2, count2 = moments(new_state)
    assert_placed_like(new_params, params, mesh)
    assert_placed_like(mu2, params, mesh)
    assert_placed_like(nu2, params, mesh)
    assert int(count2) == 1 and count2.sharding.is_fully_replicated


def live_bytes() -> int:
    return sum(x.nbytes for x in jax.live_arrays())


def test_the_abstract_optimiser_state_is_the_created_one_and_allocates_nothing(sharded):
    _, model, steps = sharded
    params = params_of(model)
    real = steps.init(params, HYPER)
    target_params = abstract(params)
    before = live_bytes()
    target = steps.abstract_opt_state(target_params, HYPER)
    assert live_bytes() == before
    assert jax.tree.structure(target) == jax.tree.structure(real)
    for t, r in zip(jax.tree.leaves(target), jax.tree.leaves(real)):
        assert isinstance(t, jax.ShapeDtypeStruct)
        assert (t.shape, t.dtype) == (r.shape, r.dtype)
        assert t.sharding.is_equivalent_to(r.sharding, len(r.shape))


def test_one_device_state_is_created_and_described_on_that_device():
    model = create_model(CFG, seed=3)
    steps = make_steps(Binder(model), StepConfig(grpo_chunk=64))
    params = params_of(model)
    opt_state = steps.init(params, HYPER)
    target = steps.abstract_opt_state(abstract(params), HYPER)
    for t, r in zip(jax.tree.leaves(target), jax.tree.leaves(opt_state)):
        assert t.sharding.device_set == r.sharding.device_set == {jax.devices()[0]}
        assert r.committed  # as a restored (parked) state is: one update program for both
    np.testing.assert_array_equal(np.asarray(moments(opt_state)[0]["embed"]), 0.0)


@pytest.mark.slow  # ~20 s: two tiny Experiments (tokenizer, BM25, model) on 8 fake devices
def test_a_trainer_resumes_onto_abstract_targets_with_every_leaf_placed_like_its_parameter(tmp_path, monkeypatch):
    """Experiment + Trainer on 8 fake devices: the fresh state's m and v follow their params; a
    restart restores onto `abstract_state()` (ShapeDtypeStructs: no initial state is built) and
    gets the same values and placement back, its reference rebuilt as the initial params."""
    from searche1_jax.train.loop import Trainer
    from searche1_jax.train.setup import Experiment
    from tests.train.test_bad_input import tiny_config

    exp = Experiment(tiny_config())
    assert exp.mesh is not None and exp.mesh.devices.size == 8
    s0 = exp.initial_state()
    mu, nu, _ = moments(s0.opt_state)
    assert_placed_like(mu, s0.params, exp.mesh)
    assert_placed_like(nu, s0.params, exp.mesh)
    assert_placed_like(s0.ref_params, s0.params, exp.mesh)
    first = Trainer(exp, str(tmp_path))
    first.ckpt.save(s0, force=True)
    first.ckpt.close()

    again = Experiment(tiny_config())
    monkeypatch.setattr(again, "initial_state", lambda: pytest.fail("built a real initial state to restore onto"))
    before = live_bytes()
    target = again.abstract_state()
    assert live_bytes() - before < 1024  # the rng keys, never the model's size
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves((target.params, target.opt_state)))
    initial = again.initial_params()
    state = Trainer(again, str(tmp_path)).start()
    assert state.ref_params is initial  # the initial model, not a copy read from disk
    mu, nu, count = moments(state.opt_state)
    for tree in (state.params, mu, nu, state.ref_params):
        assert_placed_like(tree, state.params, again.mesh)
    assert count.sharding.is_fully_replicated and len(count.sharding.device_set) == 8
    for got, want in ((state.params, s0.params), (state.opt_state, s0.opt_state), (state.ref_params, s0.ref_params)):
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_committed_params_lower_like_restored_ones_so_programs_do_not_compile_again(tmp_path):
    """A program's HLO records which arguments are committed, and an orbax restore (the parked
    optimiser, the parked reference, a resumed run) gives committed arrays: `committed` makes
    fresh params lower to the same HLO as restored ones (one executable, one persistent-cache
    entry), where the uncommitted ones lower to another. No copy is made."""
    import orbax.checkpoint as ocp

    from searche1_jax.train.placement import committed

    params = params_of(create_model(CFG, seed=3))
    assert not any(x.committed for x in jax.tree.leaves(params))  # as a fresh model comes
    ocp.PyTreeCheckpointer().save(tmp_path / "p", params)
    restored = ocp.PyTreeCheckpointer().restore(
        tmp_path / "p", args=ocp.args.PyTreeRestore(
            item=abstract(params), restore_args=ocp.checkpoint_utils.construct_restore_args(abstract(params))))
    fixed = committed(params)
    lower = lambda p: jax.jit(lambda q: jax.tree.map(lambda x: x * 2, q)).lower(p).as_text()  # noqa: E731
    assert lower(fixed) == lower(restored)
    assert lower(params) != lower(restored)  # the mismatch `committed` removes
    for a, b in zip(jax.tree.leaves(fixed), jax.tree.leaves(params)):
        assert a.committed and a.unsafe_buffer_pointer() == b.unsafe_buffer_pointer()
    assert committed({"n": 3, "x": np.ones(2)})["n"] == 3  # non-jax leaves pass through


def test_an_experiment_starts_with_committed_params():
    from searche1_jax.train.setup import Experiment
    from tests.train.test_bad_input import tiny_config

    exp = Experiment(tiny_config())
    assert all(x.committed for x in jax.tree.leaves(exp.initial_params()))
