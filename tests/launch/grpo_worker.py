"""One process of the 2-process GRPO step test (run by test_multiprocess.py, not by pytest).

    python grpo_worker.py PROCESS_ID PORT DATA_DIR
Reads DATA_DIR/params.npz and batch.npz, takes this process's rows of the batch, runs one
tiny GRPO step on an fsdp mesh over all global devices; process 0 writes DATA_DIR/out.npz.
"""
import sys

import jax

pid, port, data = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid)
jax.config.update("jax_default_matmul_precision", "highest")

import numpy as np  # noqa: E402
import optax  # noqa: E402

from searche1_jax.model.config import get_preset  # noqa: E402
from searche1_jax.model.create import model_from_arrays  # noqa: E402
from searche1_jax.model.sharding import make_mesh  # noqa: E402
from searche1_jax.train import steps as steps_module  # noqa: E402
from searche1_jax.train.multihost import rollout_replica, to_global, to_local  # noqa: E402
from searche1_jax.train.state import Binder, flatten, params_of  # noqa: E402
from searche1_jax.train.steps import StepConfig, hyper, make_steps  # noqa: E402

cfg = get_preset("tiny")
mesh = make_mesh({"fsdp": -1})
assert jax.device_count() == 8 and jax.local_device_count() == 4
params = params_of(model_from_arrays(cfg, dict(np.load(f"{data}/params.npz")), mesh=mesh))
batch = dict(np.load(f"{data}/batch.npz"))          # [M, 8, T]: the global batch, for slicing only
half = batch["tokens"].shape[1] // 2
local = {k: v[:, pid * half:(pid + 1) * half] for k, v in batch.items()}
binder = Binder(model_from_arrays(cfg, dict(np.load(f"{data}/params.npz")), mesh=mesh))

# plain SGD(1.0) in place of AdamW (after the same global-norm clip), as in the one-process oracle
steps_module._adamw_alone = lambda h: optax.sgd(1.0)
steps = make_steps(binder, StepConfig(grpo_chunk=64))
h = hyper(lr=1.0, weight_decay=0.0, grad_clip=1.0, kl_coef=0.001, entropy_coef=0.001, temperature=1.0,
          ofsd_temperature=1.0)

# old log-probs of this process's rows through the global model, back to host rows
g = to_global({"tokens": local["tokens"][0], "valid": local["valid"][0]}, mesh)
old0 = to_local(steps.logps(params, g["tokens"], g["valid"], h), mesh)
replica = rollout_replica(params, cfg)             # the process-local policy of the rollouts
rep_logits = np.asarray(replica(local["tokens"][0], local["valid"][0]))
# rollout.replica_tensor = 2: the process's 4 devices as (fsdp 2, tensor 2), the replica split by heads
from searche1_jax.model.sharding import DEFAULT_RULES  # noqa: E402
from searche1_jax.rollout.weights import decode_rules  # noqa: E402
tp = rollout_replica(params, cfg, decode_rules(DEFAULT_RULES), tensor=2)
q_kernel = tp.layers[0].attn.q_proj.kernel.value   # [d, heads, head_dim]: heads over the tensor axis
tp_split = q_kernel.addressable_shards[0].data.shape[1] * 2 == q_kernel.shape[1]
tp_logits = np.asarray(tp(local["tokens"][0], local["valid"][0]))

out, _, metrics = steps.grpo(params, steps.init(params, h), to_global(local, mesh, row_axis=1), h)
host = jax.experimental.multihost_utils.process_allgather(flatten(out), tiled=True)
loss = float(metrics["loss"])
if pid == 0:
    np.savez(f"{data}/out.npz", loss=loss, old0=old0, rep_logits=rep_logits, tp_logits=tp_logits, tp_split=tp_split,
             **{f"param/{k}": np.asarray(v) for k, v in host.items()})
print(f"process {pid} done, loss {loss}", flush=True)
