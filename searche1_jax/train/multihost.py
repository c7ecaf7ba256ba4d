"""Multi-process data path: process-local rows <-> global arrays, agreed shapes, rollout replicas.

Under `jax.distributed` every process runs the same program. Each one reads its own shard of
the questions (`QuestionStream(process_index=...)`), rolls them out, and packs its own rows;
the train steps then see one global batch whose rows are the processes' rows side by side
(split over the mesh's data x fsdp axes). Jitted calls must have the same shapes everywhere,
so lengths and row counts are agreed (the max over processes) before arrays are built.
With one process every helper is the identity (or a plain `np.asarray`).

A process that fails alone (its retriever timed out in a rollout) would leave the others
waiting in their next collective until jax.distributed's heartbeat ends the job, each with an
unrelated error. `failures_agreed` makes the end of a host-side phase a meeting point instead:
every process learns there whether any failed, and all raise the same `ProcessFailed`.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from searche1_jax.model.sharding import DEFAULT_RULES, make_mesh, named_sharding


def is_multi_process() -> bool:
    return jax.process_count() > 1


def per_process(n: int, field: str) -> int:
    """Split a global count (questions per step, rows per update) evenly over processes."""
    p = jax.process_count()
    if n % p:
        raise ValueError(f"{field} ({n}) must be a multiple of the number of processes ({p})")
    return n // p


class ProcessFailed(RuntimeError):
    """A process failed in a phase every process ends together; raised on every process with the
    same message, which names the first failing process and its own error."""


FAILURE_BYTES = 1024  # of the failing process's message that every process receives


def agree_failure(message: str | None, where: str) -> None:
    """Raise ProcessFailed on every process if any process passes a `message` (its failure).

    A collective (one all-gather of FAILURE_BYTES + 1 bytes): every process calls it at the same
    point, failed or not. The error names the lowest failing process and carries its message
    (cut to FAILURE_BYTES of UTF-8), so every process raises the same text.
    """
    mine = np.zeros((FAILURE_BYTES + 1,), np.uint8)  # [0]: failed; then the message, 0-padded
    if message is not None:
        raw = message.encode()[:FAILURE_BYTES]
        mine[0], mine[1:1 + len(raw)] = 1, np.frombuffer(raw, np.uint8)
    rows = np.asarray(multihost_utils.process_allgather(mine)) if is_multi_process() else mine[None]
    failed = [int(p) for p in np.flatnonzero(rows[:, 0])]
    if not failed:
        return
    text = rows[failed[0], 1:].tobytes().rstrip(b"\0").decode("utf-8", "ignore")
    also = f" (processes {failed} failed; the first one's error)" if len(failed) > 1 else ""
    raise ProcessFailed(f"process {failed[0]} of {rows.shape[0]} failed during {where}{also}: {text}; "
                        f"every process stops here")


@contextlib.contextmanager
def failures_agreed(where: str, describe: Callable[[Exception], str] = lambda e: f"{type(e).__name__}: {e}"
                    ) -> Iterator[None]:
    """Run a host-side phase (rollouts: no collective inside), then agree on failures: an
    Exception in the block on any process becomes the same ProcessFailed on all of them (the
    failing one chains its own error). `describe(e)` is the failure's text."""
    try:
        yield
    except Exception as e:
        agree_failure(describe(e), where)
        raise  # unreachable: agree_failure raised
    agree_failure(None, where)


def agree_shapes(batch: dict[str, np.ndarray] | None, dtypes: dict[str, np.dtype],
                 max_ndim: int = 3) -> dict[str, np.ndarray] | None:
    """Zero-pad every array to the max shape over processes (None on a process: all zeros).

    Zero rows and columns are padding: valid=False and every mask 0, so they add nothing to a
    loss. Returns None when no process has a batch. `dtypes` names the keys (and their dtypes
    for a process without a batch; one with a batch keeps its own).
    """
    keys = sorted(dtypes)
    mine = np.zeros((len(keys), max_ndim), np.int64)
    for i, k in enumerate(keys):
        if batch is not None:
            mine[i, :batch[k].ndim] = batch[k].shape
    shapes = np.asarray(multihost_utils.process_allgather(mine)).max(axis=0) if is_multi_process() else mine
    if not shapes.any():
        return None
    out = {}
    for i, k in enumerate(keys):
        ndim = batch[k].ndim if batch is not None else int((shapes[i] > 0).sum())
        arr = np.zeros(tuple(shapes[i, :ndim]), batch[k].dtype if batch is not None else dtypes[k])
        if batch is not None:
            arr[tuple(slice(0, s) for s in batch[k].shape)] = batch[k]
        out[k] = arr
    return out


def to_global(batch: dict[str, np.ndarray], mesh: Mesh | None, row_axis: int = 0, rules=DEFAULT_RULES) -> dict:
    """Process-local rows -> global arrays whose `row_axis` is split over data x fsdp.

    The global row count is process_count x the local one; process p's rows come after
    process p-1's (the mesh lists devices process by process).
    """
    if mesh is None or not is_multi_process():
        return batch
    out = {}
    n_batch = mesh.shape["data"] * mesh.shape["fsdp"]
    for k, v in batch.items():
        shape = v.shape[:row_axis] + (v.shape[row_axis] * jax.process_count(),) + v.shape[row_axis + 1:]
        if shape[row_axis] % n_batch:
            raise ValueError(f"{shape[row_axis]} rows per micro-batch cannot be split over data x fsdp = "
                             f"{n_batch} devices: make config.grpo.micro_batch / config.ofsd.micro_batch "
                             f"a multiple of it")
        names = (None,) * row_axis + ("batch",) + (None,) * (v.ndim - row_axis - 1)
        out[k] = jax.make_array_from_process_local_data(named_sharding(names, shape, mesh, rules), v, shape)
    return out


@functools.lru_cache(maxsize=None)
def resharder(sharding: NamedSharding):
    """The one jitted identity that lays an array out as `sharding` (cached: a jax.jit made per
    call compiles again on every call, hundreds of times a step with the log-prob chunks)."""
    return jax.jit(lambda a: a, out_shardings=sharding)


def to_local(x: jax.Array, mesh: Mesh | None, row_axis: int = 0, rules=DEFAULT_RULES) -> np.ndarray:
    """This process's rows of a global array (the rows `to_global` took from it); one process: all."""
    if mesh is None or not is_multi_process():
        return np.asarray(x)
    names = (None,) * row_axis + ("batch",) + (None,) * (x.ndim - row_axis - 1)
    x = resharder(named_sharding(names, x.shape, mesh, rules))(x)
    blocks = {}
    for shard in x.addressable_shards:
        blocks.setdefault(shard.index[row_axis].start or 0, np.asarray(shard.data))
    return np.concatenate([blocks[s] for s in sorted(blocks)], axis=row_axis)


@functools.lru_cache(maxsize=None)
def caster(dtype: str):
    """The one jitted cast of a params tree to `dtype` (cached, as `resharder`)."""
    return jax.jit(lambda tree: jax.tree.map(lambda a: a.astype(dtype), tree))


def rollout_replica(params: dict, cfg, rules=DEFAULT_RULES, tensor: int = 1):
    """A process-local copy of the policy for rollouts (one process: None, bind the params).

    Rollouts are host-driven and differ per process (own questions, own retrieval), so they
    run on the process's own devices: the global params are all-gathered in the compute dtype
    (exact: every matmul and norm casts weights to it) and placed on a mesh of the local devices
    by `rules` (`rollout.weights.decode_rules`: whole on every local device; the run's rules:
    FSDP over them, for a model one device cannot hold). tensor > 1 (config.rollout.replica_tensor):
    the local mesh is (fsdp: local / tensor, tensor), so `tensor` devices split each replica by
    heads / MLP / vocabulary and the rows split over the fsdp axis.
    """
    if not is_multi_process():
        return None
    from searche1_jax.model.create import model_from_arrays, unstack_layers
    from searche1_jax.rollout.weights import replica_config
    from searche1_jax.train.state import flatten
    flat = flatten(params)
    cast = caster(str(cfg.dtype))(flat)
    host = multihost_utils.process_allgather(cast, tiled=True)
    local = jax.local_devices()
    mesh = make_mesh({"fsdp": -1, "tensor": tensor}, devices=local) if len(local) > 1 else None
    # layers unrolled, as the one-process replica (rollout/weights.py: a stacked decode copies them)
    return model_from_arrays(replica_config(cfg), unstack_layers(host, cfg), mesh=mesh, rules=rules,
                             source="rollout replica")
