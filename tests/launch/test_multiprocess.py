"""Two processes x 4 CPU devices joined by jax.distributed run the tiny GRPO step exactly as one
process with 8 devices: per-process rows assemble into the same global batch and update."""
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from searche1_jax.model.config import get_preset
from searche1_jax.model.create import create_model, model_from_arrays
from searche1_jax.model.sharding import make_mesh, named_sharding
from searche1_jax.train import steps as steps_module
from searche1_jax.train.batching import pack, to_micro
from searche1_jax.train.state import Binder, flatten, params_of
from searche1_jax.train.steps import StepConfig, hyper, make_steps

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CFG = get_preset("tiny")
# METHOD §2 coefficients, temperature 1; the optimiser is SGD(1.0) (below and in grpo_worker.py)
HYPER = hyper(lr=1.0, weight_decay=0.0, grad_clip=1.0, kl_coef=0.001, entropy_coef=0.001, temperature=1.0,
              ofsd_temperature=1.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def grpo_batch(logps_fn, params, rows=16, length=24, seed=9):
    rng = np.random.default_rng(seed)
    seqs, masks = [], []
    for _ in range(rows):
        p, r = rng.integers(3, 8), rng.integers(4, length - 8)
        seqs.append(list(rng.integers(0, CFG.vocab_size, p + r)))
        masks.append([0] * p + [1] * r)
    b = pack(seqs, masks, length=length)
    b["advantages"] = rng.normal(size=rows).astype(np.float32)
    b["old_logps"] = np.asarray(logps_fn(params, b["tokens"], b["valid"], HYPER))
    b["ref_logps"] = b["old_logps"] + rng.normal(scale=0.1, size=b["old_logps"].shape).astype(np.float32)
    return b


@pytest.mark.slow  # ~2-4 min on a contended 2-core machine: three JAX processes compile
def test_two_processes_equal_one_process_with_8_devices(tmp_path, monkeypatch):
    monkeypatch.setattr(steps_module, "_adamw_alone", lambda h: optax.sgd(1.0))
    model = create_model(CFG, seed=1)
    params = params_of(model)
    step_cfg = StepConfig(grpo_chunk=64)
    flat = {k: np.asarray(v) for k, v in flatten(params).items()}
    batch = to_micro(grpo_batch(make_steps(Binder(model), step_cfg).logps, params), 8)  # [2, 8, T]
    np.savez(tmp_path / "params.npz", **flat)
    np.savez(tmp_path / "batch.npz", **batch)

    # single process, 8 devices, fsdp over all of them
    mesh = make_mesh({"fsdp": -1})
    sharded = model_from_arrays(CFG, flat, mesh=mesh)
    sp = params_of(sharded)
    sb = {k: jax.device_put(v, named_sharding((None, "batch") + (None,) * (v.ndim - 2), v.shape, mesh))
          for k, v in batch.items()}
    steps = make_steps(Binder(sharded), step_cfg)
    ref, _, ref_m = steps.grpo(sp, steps.init(sp, HYPER), sb, HYPER)

    port = str(free_port())
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    worker = os.path.join(ROOT, "tests", "launch", "grpo_worker.py")
    procs = [subprocess.Popen([sys.executable, worker, str(i), port, str(tmp_path)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]

    got = np.load(tmp_path / "out.npz")
    np.testing.assert_allclose(float(got["loss"]), float(ref_m["loss"]), rtol=1e-5, atol=1e-6)
    for k, v in flatten(ref).items():
        np.testing.assert_allclose(got[f"param/{k}"], np.asarray(v), atol=1e-5, err_msg=k)
    # process 0's rows of the first micro-batch: global log-probs came back as its own rows
    np.testing.assert_allclose(got["old0"], batch["old_logps"][0, :4], atol=1e-5)
    # the rollout replica on process 0's devices computes the same logits as the global model
    want = np.asarray(model(jnp.asarray(batch["tokens"][0, :4]), jnp.asarray(batch["valid"][0, :4])))
    np.testing.assert_allclose(got["rep_logits"], want, atol=1e-4)
    # rollout.replica_tensor = 2: the replica split by heads over 2 of the process's 4 devices
    assert bool(got["tp_split"])
    np.testing.assert_allclose(got["tp_logits"], want, atol=1e-4)


@pytest.mark.slow  # a few minutes: two processes roll out, train and checkpoint the tiny config
def test_main_runs_with_two_processes_and_only_process_0_writes_metrics(tmp_path):
    import json
    flags = ["--config=configs/tiny.py", f"--workdir={tmp_path}/run", "--config.grpo.steps_per_round=2",
             "--config.grpo.questions_per_step=2", "--config.grpo.mini_batch=4", "--config.grpo.micro_batch=2",
             "--config.rollout.group_size=2", "--config.ofsd.questions=2", "--config.ofsd.group_size=2",
             "--config.rollout.max_response_tokens=96", "--config.rollout.max_turns=1",
             "--config.ofsd.mini_batch=2", "--config.ofsd.micro_batch=2"]
    out = subprocess.run(["bash", "launch/local_multiprocess.sh", "-n", "2", "-d", "1", "--port", str(free_port()),
                          "--logdir", str(tmp_path / "logs"), "--python", sys.executable, "--", *flags],
                         cwd=ROOT, capture_output=True, text=True, timeout=1200)
    logs = "".join(open(tmp_path / "logs" / f"process_{i}.log").read()[-2000:] for i in range(2))
    assert out.returncode == 0, logs
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [(r["step"], r["phase"]) for r in rows] == [(1, "grpo"), (2, "grpo"), (2, "ofsd")]
    assert os.listdir(tmp_path / "run" / "checkpoints")
