"""The reference policy is never in a checkpoint (issue 20 item 1): a checkpoint is params +
optimiser state + small meta; a run without a warm start rebuilds its reference from the initial
model, a warm-started one saves it once; a wrong reference is refused by name; checkpoints of
the old format (the reference inside each) still restore and migrate."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from searche1_jax.train.checkpoint import Checkpointer
from searche1_jax.train.placement import abstract
from searche1_jax.train.reference import fingerprint
from searche1_jax.train.state import TrainState, flatten

SHAPES = {"embed": (512, 64), "layer": {0: (64, 256), 1: (256, 64)}, "norm": (64,)}  # 65,600 params


def params(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s).astype(np.float32)), SHAPES,
                        is_leaf=lambda x: isinstance(x, tuple))


def state(p, ref, kind=None, step=1) -> TrainState:
    opt = {"mu": jax.tree.map(lambda x: x * 0.5, p), "nu": jax.tree.map(jnp.square, p), "count": jnp.int32(step)}
    meta = {"round": 0, "phase": "grpo", "round_step": step, "sft_step": 0, "data": {}}
    if kind:
        meta["reference"] = kind
    return TrainState(p, opt, ref, step, jax.random.key(0)[None], meta)


def dir_bytes(path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def nbytes(tree) -> int:
    return sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("kind", ["initial", "saved"])
def test_a_checkpoint_is_params_plus_optimiser_state_plus_small_meta(tmp_path, kind):
    init = params(0)
    ck = Checkpointer(str(tmp_path / "checkpoints"), keep=3, async_save=False)
    for step in (1, 2, 3):
        s = state(params(step), init, kind, step)
        ck.save(s, force=True)
    ck.close()
    param_bytes = 65_600 * 4  # by hand: 512*64 + 64*256 + 256*64 + 64 float32
    assert nbytes(s.params) == param_bytes and nbytes(s.opt_state) == 2 * param_bytes + 4
    for save in sorted(os.listdir(tmp_path / "checkpoints")):
        size = dir_bytes(tmp_path / "checkpoints" / save)
        # the meta (JSON, fingerprint included) and orbax's manifests: a few tens of KB
        assert size <= param_bytes * 3 + 4 + 64 * 1024, (save, size)
        tree = ocp.StandardCheckpointer().restore(tmp_path / "checkpoints" / save / "state")
        assert tree["ref_params"] == {}
    reference = tmp_path / "reference"
    if kind == "initial":  # rebuilt from the base model at restore: nothing written
        assert not reference.exists()
    else:  # written once, at the first save
        # orbax compresses (random float32 by ~6%): the params' order of size, never more
        assert param_bytes // 2 <= dir_bytes(reference) <= param_bytes + 64 * 1024


def test_the_saved_reference_is_written_once_and_restored_onto_abstract_targets(tmp_path):
    init = params(0)
    ck = Checkpointer(str(tmp_path / "checkpoints"), keep=3, async_save=False)
    ck.save(state(params(1), init, "saved", 1), force=True)
    stamp = [(f, os.stat(os.path.join(d, f)).st_mtime_ns) for d, _, fs in os.walk(tmp_path / "reference") for f in fs]
    ck.save(state(params(2), init, "saved", 2), force=True)
    ck.close()
    assert stamp == [(f, os.stat(os.path.join(d, f)).st_mtime_ns)
                     for d, _, fs in os.walk(tmp_path / "reference") for f in fs]
    like = state(params(9), None, step=0)
    like = TrainState(abstract(like.params), abstract(like.opt_state), None, 0, like.rng, like.meta)
    out = Checkpointer(str(tmp_path / "checkpoints"), async_save=False).restore_latest(like)
    assert out.step == 2 and out.meta["reference"] == "saved"
    nu = state(params(2), None).opt_state["nu"]
    for got, want in ((out.params, params(2)), (out.ref_params, init), (out.opt_state["nu"], nu)):
        for k, v in flatten(want).items():
            np.testing.assert_array_equal(np.asarray(flatten(got)[k]), np.asarray(v), err_msg=k)


def test_the_initial_reference_is_rebuilt_and_checked_against_its_fingerprint(tmp_path):
    init = params(0)
    ck = Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
    ck.save(state(params(1), init, "initial", 1), force=True)
    ck.close()
    like = state(params(9), None, step=0)
    ck = Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
    out = ck.restore_latest(like, initial_reference=lambda: params(0))
    np.testing.assert_array_equal(np.asarray(out.ref_params["embed"]), np.asarray(init["embed"]))
    with pytest.raises(ValueError, match=r"initial model rebuilt from config\.model .* is not the reference this run "
                                         r"trained against: parameter embed .*config\.model\.checkpoint"):
        ck.restore_latest(like, initial_reference=lambda: params(5))
    with pytest.raises(ValueError, match="use the initial model as their reference policy: pass initial_reference"):
        ck.restore_latest(like)
    # the fingerprint is what a hand computation gives: sum |x| and sum x^2 per parameter
    fp = fingerprint(init)
    w = np.asarray(init["layer"][1]).astype(np.float64)
    np.testing.assert_allclose(fp["layer.1"], [np.abs(w).sum(), np.square(w).sum()], rtol=1e-5)


def test_a_missing_reference_directory_is_named(tmp_path):
    ck = Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
    ck.save(state(params(1), params(0), "saved", 1), force=True)
    ck.close()
    os.rename(tmp_path / "reference", tmp_path / "moved")
    with pytest.raises(ValueError, match=rf"saved in {tmp_path}/reference, which is missing.*new --workdir"):
        Checkpointer(str(tmp_path / "checkpoints"), async_save=False).restore_latest(state(params(9), None))


def test_a_format_1_checkpoint_restores_and_its_reference_moves_out_at_the_next_save(tmp_path):
    """The layout written before: the reference inside the state item, no `format` in the meta."""
    old, p, init = state(params(1), None, step=4), params(1), params(0)
    manager = ocp.CheckpointManager(str(tmp_path / "checkpoints"), item_names=("state", "meta"),
                                    options=ocp.CheckpointManagerOptions(create=True))
    arrays = {"params": flatten(p), "opt_state": old.opt_state, "ref_params": flatten(init),
              "rng": np.asarray(jax.random.key_data(old.rng)), "step": np.asarray(4, np.int32)}
    meta = dict(old.meta, param_shapes={k: list(v.shape) for k, v in flatten(p).items()}, has_ref=True)
    manager.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)))
    manager.wait_until_finished()
    manager.close()
    ck = Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
    out = ck.restore_latest(state(params(9), None))
    assert out.step == 4 and out.meta["reference"] == "saved"
    np.testing.assert_array_equal(np.asarray(out.ref_params["layer"][0]), np.asarray(init["layer"][0]))
    ck.save(out, force=True)
    ck.close()
    tree = ocp.StandardCheckpointer().restore(tmp_path / "checkpoints" / "1" / "state")
    assert tree["ref_params"] == {}
    again = Checkpointer(str(tmp_path / "checkpoints"), async_save=False).restore_latest(state(params(9), None))
    np.testing.assert_array_equal(np.asarray(again.ref_params["embed"]), np.asarray(init["embed"]))
