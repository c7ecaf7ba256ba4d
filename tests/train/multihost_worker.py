"""One of two processes (2 CPU devices each) for tests/train/test_multihost.py: moves rows to
global arrays and back for several "steps" of the same shapes and records XLA compilations."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # this checkout
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402

pid, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid)

from jax._src.dispatch import BACKEND_COMPILE_EVENT  # noqa: E402

from searche1_jax.model.sharding import make_mesh  # noqa: E402
from searche1_jax.train.multihost import to_global, to_local  # noqa: E402

compiles = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, _secs, **_: compiles.append(event) if event == BACKEND_COMPILE_EVENT else None)

if os.environ.get("LOG_COMPILES"):
    jax.config.update("jax_log_compiles", True)
mesh = make_mesh({"fsdp": -1})  # 4 devices over the 2 processes
counts, same = [], True
for step in range(5):
    rows = (np.arange(4 * 6, dtype=np.int32).reshape(4, 6) + 1000 * pid + 100 * step)  # this process's rows
    micro = rows.reshape(2, 2, 6)  # [M, mb, T]: rows on axis 1 (a micro-batched update's layout)
    g = to_global({"rows": rows, "micro": micro}, mesh)
    g_micro = to_global({"micro": micro}, mesh, row_axis=1)["micro"]
    same &= bool(np.array_equal(to_local(g["rows"], mesh), rows))
    same &= bool(np.array_equal(to_local(g_micro, mesh, row_axis=1), micro))
    counts.append(len(compiles))
if pid == 0:
    with open(out, "w") as f:
        json.dump({"counts": counts, "same": same}, f)
