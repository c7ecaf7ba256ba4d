"""Bad input to a training run fails early with a message that names the problem and the fix."""
import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from searche1_jax.train.checkpoint import Checkpointer, check_workdir
from searche1_jax.train.state import TrainState

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# a CLI run of configs/tiny.py on one device (on the tests' 8 fake ones its micro-batch 4 would
# be replicated compute, which the run refuses at startup: train/geometry.py)
ONE_DEVICE = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")


def tiny_config():
    """configs/tiny.py with micro-batches the tests' 8 fake devices divide (geometry.py refuses
    replicated compute): 8 trajectories a forward/backward, 8 OFSD students an update."""
    spec = importlib.util.spec_from_file_location("tiny_cfg", os.path.join(ROOT, "configs", "tiny.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.grpo.micro_batch, c.ofsd.mini_batch, c.ofsd.micro_batch = 8, 8, 8
    return c


def state_with(d_model):
    params = {"embed": {"embedding": jnp.zeros((10, d_model))}, "norm": {"scale": jnp.ones((d_model,))}}
    rng = jax.random.key(0)[None]  # [N] member keys: a single run is a population of one
    return TrainState(params, {"count": jnp.int32(0)}, None, 0, rng,
                      {"round": 0, "phase": "grpo", "round_step": 0, "data": {}})


def test_unknown_config_key_names_the_closest_valid_one(tmp_path):
    out = subprocess.run([sys.executable, "-m", "searche1_jax.main", f"--config={ROOT}/configs/tiny.py",
                          f"--workdir={tmp_path}", "--config.train.learning_rate=1e-6"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    msg = out.stdout + out.stderr
    assert "unknown config key --config.train.learning_rate" in msg
    assert "--config.train.lr" in msg.split("did you mean", 1)[1]


def test_checkpoint_from_a_different_model_shape_is_refused(tmp_path):
    ckpt = Checkpointer(str(tmp_path / "ckpt"), keep=2, async_save=False)
    ckpt.save(state_with(8), force=True)
    ckpt.wait()
    # same shapes restore fine, with the meta intact
    restored = ckpt.restore_latest(state_with(8))
    assert restored.meta == {"round": 0, "phase": "grpo", "round_step": 0, "data": {}}
    assert restored.rng.shape == (1,)
    np.testing.assert_array_equal(restored.params["norm"]["scale"], np.ones(8))
    with pytest.raises(ValueError, match=r"different model: parameter embed\.embedding has shape "
                                         r"\(10, 8\) in the checkpoint, \(10, 16\) in this model.*new --workdir"):
        ckpt.restore_latest(state_with(16))
    ckpt.close()


def test_workdir_not_writable_is_named(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match=r"workdir .*a_file/run is not a writable directory.*--workdir"):
        check_workdir(str(blocker / "run"))
    check_workdir(str(tmp_path / "fine"))  # creates it
    assert os.path.isdir(tmp_path / "fine") and os.listdir(tmp_path / "fine") == []


def test_data_line_without_an_answer_is_reported_with_file_and_line(tmp_path):
    from searche1_jax.train.setup import Experiment
    good = {"id": "q1", "question": "who wrote hamlet?", "golden_answers": ["Shakespeare"]}
    bad = {"id": "q2", "question": "capital of france?"}
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    c = tiny_config()
    c.data.train = str(path)
    with pytest.raises(ValueError, match=r"train\.jsonl:2: missing 'golden_answers'"):
        Experiment(c)


def test_a_retrieval_service_that_is_down_stops_the_run_before_the_model_is_built(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = subprocess.run([sys.executable, "-m", "searche1_jax.main", f"--config={ROOT}/configs/tiny.py",
                          f"--workdir={tmp_path}", "--config.retrieval.kind=http", "--config.retrieval.corpus=",
                          f"--config.retrieval.url=http://127.0.0.1:{port}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, env=ONE_DEVICE)
    assert out.returncode != 0
    assert f"error: retriever at http://127.0.0.1:{port} is down" in out.stderr
    assert "python -m searche1_jax.retrieval.serve --index DIR" in out.stderr and "Traceback" not in out.stderr
    assert not os.path.exists(tmp_path / "checkpoints")  # nothing was built or trained
