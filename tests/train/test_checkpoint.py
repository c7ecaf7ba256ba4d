"""Checkpointer: a warm-start checkpoint holds no reference policy; restore follows what was saved."""
import jax
import jax.numpy as jnp
import numpy as np

from searche1_jax.train.checkpoint import Checkpointer
from searche1_jax.train.state import TrainState


def state(ref: bool, phase: str, scale: float = 1.0) -> TrainState:
    params = {"w": jnp.arange(6.0).reshape(2, 3) * scale, "b": {0: jnp.ones(3) * scale}}
    opt = {"mu": jax.tree.map(jnp.zeros_like, params)}
    return TrainState(params, opt, jax.tree.map(lambda x: x + 100.0, params) if ref else None, 3,
                      jax.random.key(7), {"round": 0, "phase": phase, "round_step": 0, "sft_step": 2, "data": {}})


def test_a_state_without_reference_round_trips_whatever_the_template(tmp_path):
    ck = Checkpointer(str(tmp_path / "a"), async_save=False)
    ck.save(state(ref=False, phase="sft", scale=2.0), force=True)
    out = ck.restore_latest(state(ref=True, phase="grpo"))  # the template's reference is ignored
    assert out.ref_params is None and out.meta["phase"] == "sft" and "has_ref" not in out.meta
    np.testing.assert_array_equal(out.params["w"], np.arange(6.0).reshape(2, 3) * 2.0)
    ck.close()


def test_a_saved_reference_is_restored_onto_a_template_without_one(tmp_path):
    ck = Checkpointer(str(tmp_path / "b"), async_save=False)
    ck.save(state(ref=True, phase="grpo", scale=3.0), force=True)
    out = ck.restore_latest(state(ref=False, phase="sft"))
    np.testing.assert_array_equal(out.ref_params["w"], np.arange(6.0).reshape(2, 3) * 3.0 + 100.0)
    np.testing.assert_array_equal(out.ref_params["b"][0], np.full(3, 103.0))
    assert out.step == 3 and out.meta["phase"] == "grpo"
    ck.close()
