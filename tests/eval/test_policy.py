"""eval/policy.py: a training workdir's latest params, restored alone onto abstract shapes."""
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from searche1_jax.eval.policy import abstract_params, model_config, restore_workdir_params
from searche1_jax.model.config import get_preset
from searche1_jax.model.create import create_model, flat_params
from searche1_jax.train.checkpoint import Checkpointer
from searche1_jax.train.state import TrainState, flatten, params_of


def save_run(workdir, cfg, *, saves=2):
    """A workdir as training leaves it: `saves` checkpoints of params + an optimiser state whose
    structure evaluation never needs to know (a chain with a schedule), reference, rng, meta."""
    params = params_of(create_model(cfg, seed=3))
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(optax.linear_schedule(0.0, 1e-3, 5)))
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    for i in range(saves):  # the latest save wins: its params are shifted by its index
        p = jax.tree.map(lambda x, i=i: x + i, params)
        ckpt.save(TrainState(p, opt.init(p), params, 7 + i, jax.random.key(0), {"round": i, "phase": "grpo"}))
    ckpt.close()
    return jax.tree.map(lambda x: x + (saves - 1), params)


def test_restores_the_latest_params_only(tmp_path):
    cfg = get_preset("tiny")
    want = save_run(str(tmp_path), cfg)
    logs = []
    model = restore_workdir_params(str(tmp_path), cfg, log=logs.append)
    got, expect = flat_params(model), flatten(want)
    assert set(got) == set(expect)
    for k in expect:
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(expect[k]), err_msg=k)
    assert logs == [f"policy: {tmp_path}/checkpoints (train step 8)"]
    # the bound model runs
    logits = model(jnp.asarray([[1, 2, 3]]))
    assert logits.shape == (1, 3, cfg.vocab_size) and bool(jnp.isfinite(logits).all())


def test_the_checkpoints_directory_names_the_same_policy_as_its_workdir(tmp_path):
    cfg = get_preset("tiny")
    want = flatten(save_run(str(tmp_path), cfg))
    logs = []
    got = flat_params(restore_workdir_params(str(tmp_path / "checkpoints") + "/", cfg, log=logs.append))
    for k in want:
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]), err_msg=k)
    assert logs == [f"policy: {tmp_path}/checkpoints/ (train step 8)"]


def test_abstract_params_allocate_nothing_and_match_the_model():
    cfg = get_preset("tiny")
    abstract = abstract_params(cfg)
    leaves = jax.tree.leaves(abstract)
    assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    real = params_of(create_model(cfg, seed=0))
    assert jax.tree.structure(abstract) == jax.tree.structure(real)
    assert jax.tree.map(lambda a, r: (a.shape, a.dtype) == (r.shape, r.dtype), abstract, real) == \
        jax.tree.map(lambda r: True, real)


def test_a_workdir_of_another_model_or_without_checkpoints_is_refused(tmp_path):
    save_run(str(tmp_path / "run"), get_preset("tiny"), saves=1)
    with pytest.raises(ValueError, match="written by a different model"):
        restore_workdir_params(str(tmp_path / "run"), get_preset("tiny", mlp_dim=96))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        restore_workdir_params(str(tmp_path / "nothing"), get_preset("tiny"))
    os.makedirs(tmp_path / "plain")
    with pytest.raises(FileNotFoundError, match="no checkpoints/"):
        restore_workdir_params(str(tmp_path / "plain"), get_preset("tiny"))
    os.makedirs(tmp_path / "empty" / "checkpoints")
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        restore_workdir_params(str(tmp_path / "empty"), get_preset("tiny"))


def test_model_config_of_a_preset_grows_to_the_tokenizer_vocabulary():
    c = types.SimpleNamespace(model=types.SimpleNamespace(preset="tiny", checkpoint="", dtype="float32",
                                                          param_dtype="float32", remat=False, scan_layers=False))
    assert model_config(c, types.SimpleNamespace(vocab_size=600)).vocab_size == 600
    assert model_config(c, types.SimpleNamespace(vocab_size=100)).vocab_size == get_preset("tiny").vocab_size
