"""What a run holds between its uses: AdamW's state made by the first update, not at the start
(`Trainer._optimizer`), and the reference parked in its saved-once directory with
config.train.reference_resident off (`reference.ParkedReference`)."""
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from searche1_jax.train.reference import ParkedReference, ReferenceStore, fingerprint
from searche1_jax.train.state import flatten
from tests.train.test_bad_input import tiny_config
from tests.train.test_placement import assert_placed_like, moments


def leaves_bytes(tree) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(tree))


def distinct_live_bytes() -> int:
    seen = {}
    for x in jax.live_arrays():
        for shard in x.addressable_shards:
            seen[shard.data.unsafe_buffer_pointer()] = shard.data.nbytes
    return sum(seen.values())


@pytest.fixture(scope="module")
def experiment():
    from searche1_jax.train.setup import Experiment
    return Experiment(tiny_config())


def test_a_fresh_run_holds_no_optimiser_state_and_saves_adamw_initial_one(experiment, tmp_path):
    from searche1_jax.train.loop import Trainer
    exp = experiment
    tr = Trainer(exp, str(tmp_path))
    state = tr.start()
    assert state.opt_state is None
    # the save writes AdamW's initial state (oracle: Steps.init on the same params), made for it
    tr._save(state, force=True)
    tr.ckpt.wait()
    assert state.opt_state is None
    want = exp.steps.init(state.params, exp.hyper(0))
    saved = ocp.StandardCheckpointer().restore(os.path.join(str(tmp_path), "checkpoints", "0", "state"))
    got, ref = jax.tree.leaves(saved["opt_state"]), jax.tree.leaves(want)
    assert len(got) == len(ref) and len(ref) > 0
    for g, w in zip(got, ref):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    mu, nu, count = moments(tr._optimizer(state))  # the first update's: zeros placed like the params
    assert int(count) == 0
    assert all(not np.asarray(x).any() for x in jax.tree.leaves((mu, nu)))
    assert_placed_like(mu, state.params, exp.mesh)
    tr.ckpt.close()


def test_a_parked_reference_is_read_back_bit_exact_and_placed(experiment, tmp_path):
    exp = experiment
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: jax.device_put(rng.standard_normal(a.shape).astype(a.dtype), a.sharding),
                          exp.abstract_params)
    store = ReferenceStore(tmp_path / "reference")
    parked = ParkedReference.park(store, params)
    assert parked.fingerprint == fingerprint(params)
    assert store._written is None  # the store keeps no handle: the caller's drop frees them
    back = parked.load()
    for k, v in flatten(params).items():
        np.testing.assert_array_equal(np.asarray(flatten(back)[k]), np.asarray(v), err_msg=k)
    assert_placed_like(back, params, exp.mesh)
    assert store._written is None  # read back for one use, not kept


def test_with_the_reference_parked_a_started_run_holds_the_params_alone(tmp_path):
    """reference_resident off, a run without a warm start: the reference (the initial model) is
    written to WORKDIR/reference and the start holds only the params; a checkpoint names it
    "saved" with its fingerprint, writes nothing of it, and a restart parks it again."""
    from searche1_jax.train.loop import Trainer
    from searche1_jax.train.setup import Experiment
    c = tiny_config()
    c.train.reference_resident = False
    exp = Experiment(c)
    before = distinct_live_bytes()
    tr = Trainer(exp, str(tmp_path))
    state = tr.start()
    param_bytes = leaves_bytes(state.params)
    assert isinstance(state.ref_params, ParkedReference) and state.opt_state is None
    # the Experiment's handle on the initial params went to the state: nothing else stays
    assert distinct_live_bytes() - before < 0.01 * param_bytes
    tr._save(state, force=True)
    tr.ckpt.close()
    meta_dir = os.path.join(str(tmp_path), "checkpoints", "0")
    meta = json.load(open(os.path.join(meta_dir, "meta", "metadata")))
    assert meta["reference"] == "saved" and meta["reference_fingerprint"] == state.ref_params.fingerprint
    assert ocp.StandardCheckpointer().restore(os.path.join(meta_dir, "state"))["ref_params"] == {}
    ref = ocp.StandardCheckpointer().restore(str(tmp_path / "reference"))
    for k, v in flatten(state.params).items():  # no update yet: the reference is the params
        np.testing.assert_array_equal(np.asarray(ref[k]), np.asarray(v), err_msg=k)

    again = Trainer(Experiment(c), str(tmp_path)).start()
    assert isinstance(again.ref_params, ParkedReference)
    assert again.ref_params.fingerprint == state.ref_params.fingerprint
    assert again.opt_state is not None  # restored: AdamW's initial state as it was saved


def test_a_parked_optimiser_state_is_read_back_bit_exact_and_placed(experiment, tmp_path):
    """AdamW's state after one update (non-zero moments, count 1), parked and read back: the
    same structure, values and placement (config.train.optimizer_resident off)."""
    from searche1_jax.train.reference import ParkedOptimizer
    exp = experiment
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda a: jax.device_put(rng.standard_normal(a.shape).astype(a.dtype), a.sharding),
                          exp.abstract_params)
    grads = jax.tree.map(lambda p: p * 0.5, params)
    from searche1_jax.train.steps import adamw
    opt = adamw(exp.hyper(0)).init(params)
    _, opt = adamw(exp.hyper(0)).update(grads, opt, params)
    parked = ParkedOptimizer.park(tmp_path / "offload" / "optimizer", opt)
    back = parked.load()
    assert jax.tree.structure(back) == jax.tree.structure(opt)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(opt)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert a.sharding.is_equivalent_to(b.sharding, a.ndim)
    mu, _, count = moments(back)
    assert int(count) == 1 and any(np.asarray(x).any() for x in jax.tree.leaves(mu))
