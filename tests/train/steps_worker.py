"""One of two processes (1 CPU device each) for tests/train/test_multihost.py: four GRPO steps of
the tiny model on global batches of one shape (old and reference log-probs from the global
model, then the update), `Steps.compile_count()` recorded after each.

    python steps_worker.py PROCESS_ID PORT OUT_JSON
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # this checkout
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

pid, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid)

import numpy as np  # noqa: E402

from searche1_jax.model.config import get_preset  # noqa: E402
from searche1_jax.model.create import create_model  # noqa: E402
from searche1_jax.model.sharding import make_mesh  # noqa: E402
from searche1_jax.train.batching import pack, to_micro  # noqa: E402
from searche1_jax.train.multihost import to_global, to_local  # noqa: E402
from searche1_jax.train.state import Binder, params_of  # noqa: E402
from searche1_jax.train.steps import StepConfig, hyper, make_steps  # noqa: E402

cfg = get_preset("tiny")
mesh = make_mesh({"fsdp": -1})  # 2 devices over the 2 processes
model = create_model(cfg, mesh=mesh, seed=1)
params = params_of(model)
steps = make_steps(Binder(model), StepConfig(grpo_chunk=64))
h = hyper(lr=1e-3, weight_decay=0.01, grad_clip=1.0, kl_coef=0.001, entropy_coef=0.001, temperature=1.0,
          ofsd_temperature=1.0)
opt_state = steps.init(params, h)
rng = np.random.default_rng(pid)
counts = []
for _ in range(4):  # this process's 4 rows of length 24 (other contents each step), 2 micro-batches
    seqs, masks = [], []
    for _row in range(4):
        p, r = rng.integers(3, 8), rng.integers(4, 16)
        seqs.append(list(rng.integers(0, cfg.vocab_size, p + r)))
        masks.append([0] * p + [1] * r)
    local = pack(seqs, masks, length=24)
    local["advantages"] = rng.normal(size=4).astype(np.float32)
    g = to_global({"tokens": local["tokens"], "valid": local["valid"]}, mesh)
    local["old_logps"] = to_local(steps.logps(params, g["tokens"], g["valid"], h), mesh)
    local["ref_logps"] = local["old_logps"]
    params, opt_state, metrics = steps.grpo(params, opt_state, to_global(to_micro(local, 2), mesh, row_axis=1), h)
    jax.block_until_ready(metrics)
    counts.append(steps.compile_count())
if pid == 0:
    with open(out, "w") as f:
        json.dump({"counts": counts, "loss_finite": bool(np.isfinite(float(metrics["loss"])))}, f)
print(f"process {pid} done: {counts}", flush=True)
