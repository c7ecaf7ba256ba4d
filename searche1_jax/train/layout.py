"""Where a run's members live, so that one training loop serves a single run and a population.

`SingleRun`: one member whose arrays carry no member axis; its params are laid out over the
(data, fsdp, tensor) model mesh and the run may span several processes (`multihost.py`: each
process rolls out its own questions and contributes its rows to every global batch).

`Population`: N members stacked on a leading member axis, one process, the axis split over a
("member",) mesh of the devices that divide N (each member's params whole on its device).

Both expose the same host-side operations; the loop never asks which one it has.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from searche1_jax.model.sharding import DEFAULT_RULES
from searche1_jax.rollout.weights import decode_rules, rollout_model
from searche1_jax.train.batching import to_micro
from searche1_jax.train.multihost import (agree_shapes, is_multi_process, per_process, rollout_replica,
                                          to_global, to_local)


def stack(trees: Sequence):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def pad_stack(batches: list[dict[str, np.ndarray]], pad_ids: dict[str, int]) -> dict[str, np.ndarray]:
    """Per-member dicts of [B_i, L_i, ...] arrays -> [N, max B, max L, ...] (zero / pad-id filled)."""
    out = {}
    for k in batches[0]:
        shape = tuple(max(b[k].shape[d] for b in batches) for d in range(batches[0][k].ndim))
        arr = np.full((len(batches),) + shape, pad_ids.get(k, 0), batches[0][k].dtype)
        for i, b in enumerate(batches):
            arr[(i,) + tuple(slice(0, s) for s in b[k].shape)] = b[k]
        out[k] = arr
    return out


def member_mesh(n_members: int, devices: Sequence[jax.Device] | None = None) -> Mesh | None:
    """1-D mesh ("member",) over the most devices that divide the population; None on one."""
    devices = list(devices if devices is not None else jax.devices())
    d = max(k for k in range(1, min(n_members, len(devices)) + 1) if n_members % k == 0)
    return Mesh(np.asarray(devices[:d]), ("member",)) if d > 1 else None


class SingleRun:
    """One member over the model mesh `mesh` (None: one device), any number of processes."""
    population = False
    n = 1

    def __init__(self, mesh: Mesh | None, rules=DEFAULT_RULES, weights: str = "replica", replica_tensor: int = 1):
        self.mesh, self.rules, self.weights, self.replica_tensor = mesh, rules, weights, replica_tensor

    def describe(self) -> str:
        return f"one run on {jax.device_count()} {jax.devices()[0].platform} device(s)"

    def share(self, n: int, field: str) -> int:
        """This process's part of a global count (questions, trajectories per update)."""
        return per_process(n, field)

    def key(self, key: jax.Array) -> jax.Array:
        """Each process samples its own questions with its own noise."""
        return jax.random.fold_in(key, jax.process_index()) if is_multi_process() else key

    # ---- state: the member's own pytrees, unchanged ----
    def stack(self, trees: list):
        return trees[0]

    def member(self, tree, i: int):
        return tree

    def place(self, tree):
        return tree

    def hyper(self, hypers: list[dict]) -> dict:
        return hypers[0]

    def policy_params(self, params, i: int, binder, model_cfg):
        """The model the rollouts of member i sample from, made once a step (config.rollout.weights):
        "replica": a compute-dtype copy whole over data x fsdp (`rollout/weights.py`); "train": the
        params bound in place. With several processes each rolls out its own rows, on a
        process-local replica (FSDP over the process's devices under "train")."""
        replica = self.weights == "replica"
        if is_multi_process():
            return rollout_replica(params, model_cfg, decode_rules(self.rules) if replica else self.rules,
                                   tensor=self.replica_tensor)
        model = rollout_model(params, model_cfg, self.mesh, self.rules) if replica else None
        return model if model is not None else binder.bind(params)

    # ---- batches ----
    def combine(self, batches: list[dict | None], dtypes: dict, pad_ids: dict) -> dict | None:
        """Per-member host batches -> the run's batch (shapes agreed over processes)."""
        return agree_shapes(batches[0], dtypes)

    def rows(self, batch: dict) -> list[int]:
        return [next(iter(batch.values())).shape[0]]

    def take(self, batch: dict, orders: list[np.ndarray], lo: int, hi: int, micro: int) -> dict:
        """Rows order[lo:hi] as a global [M, micro, ...] batch."""
        return to_global(to_micro({k: v[orders[0][lo:hi]] for k, v in batch.items()}, micro), self.mesh,
                         row_axis=1, rules=self.rules)

    def logps(self, fn, params, tokens: np.ndarray, valid: np.ndarray, hyper, rows: int,
              head_idx: np.ndarray | None = None) -> np.ndarray:
        """Log-probs of this process's rows, `rows` at a time (global batches across processes):
        [B, T-1], or [B, K] at head_idx [B, K] (`steps.member_functions`' logps)."""
        out = []
        for i in range(0, tokens.shape[0], rows):
            part = {"tokens": tokens[i:i + rows], "valid": valid[i:i + rows]}
            if head_idx is not None:
                part["head_idx"] = head_idx[i:i + rows]
            g = to_global(part, self.mesh, rules=self.rules)
            extra = (g["head_idx"],) if head_idx is not None else ()
            out.append(to_local(fn(params, g["tokens"], g["valid"], hyper, *extra), self.mesh, rules=self.rules))
        return np.concatenate(out, axis=0)

    def metric(self, m: dict, k: str, i: int) -> float:
        return float(m[k])


class Population:
    """N members stacked on a leading axis over `mesh` (a ("member",) mesh, or None: one device)."""
    population = True

    def __init__(self, n: int, mesh: Mesh | None):
        if jax.process_count() > 1:
            raise ValueError("a sweep population runs in one process; run multi-process jobs one "
                             "config at a time with python -m searche1_jax.main")
        self.n, self.mesh = n, mesh
        self.sharding = NamedSharding(mesh, P("member")) if mesh is not None else None

    def describe(self) -> str:
        if self.mesh is None:
            return f"{self.n} member(s) on 1 device ({jax.devices()[0].platform})"
        d = self.mesh.shape["member"]
        return (f"{self.n} members on a ('member',) mesh of {d} {jax.devices()[0].platform} devices "
                f"({self.n // d} per device)")

    def share(self, n: int, field: str) -> int:
        return n

    def key(self, key: jax.Array) -> jax.Array:
        return key

    def stack(self, trees: list):
        return self.place(stack(trees))

    def member(self, tree, i: int):
        return jax.tree.map(lambda x: x[i], tree)

    def place(self, tree):
        """Put host or device arrays on the member axis of the mesh."""
        if self.sharding is None:
            return jax.tree.map(jnp.asarray, tree)
        return jax.device_put(tree, self.sharding)

    def hyper(self, hypers: list[dict]) -> dict:
        return self.place({k: np.stack([h[k] for h in hypers]) for k in hypers[0]})

    def policy_params(self, params, i: int, binder, model_cfg):
        """Member i's params on the default device (the sampler is compiled once for it)."""
        return binder.bind(jax.device_put(self.member(params, i), jax.devices()[0]))

    def combine(self, batches: list[dict | None], dtypes: dict, pad_ids: dict) -> dict | None:
        present = [b for b in batches if b is not None]
        if not present:
            return None
        like = {k: np.zeros((0,) + v.shape[1:], v.dtype) for k, v in present[0].items()}  # a member without rows
        stacked = pad_stack([b if b is not None else like for b in batches], pad_ids)
        stacked["_rows"] = np.asarray([b[next(iter(b))].shape[0] if b is not None else 0 for b in batches])
        return stacked

    def rows(self, batch: dict) -> list[int]:
        return [int(r) for r in batch["_rows"]] if "_rows" in batch else [batch["tokens"].shape[1]] * self.n

    def take(self, batch: dict, orders: list[np.ndarray], lo: int, hi: int, micro: int) -> dict:
        """Member i's rows orders[i][lo:hi] (a member past its rows repeats its first rows; the
        step is told it is inactive) as [N, M, micro, ...]."""
        size = hi - lo
        idx = [o[lo:hi] if lo < len(o) else np.arange(size) for o in orders]
        out = {k: np.stack([to_micro({k: v[i][idx[i]]}, micro)[k] for i in range(self.n)])
               for k, v in batch.items() if k != "_rows"}
        return self.place(out)

    def logps(self, fn, params, tokens: np.ndarray, valid: np.ndarray, hyper, rows: int,
              head_idx: np.ndarray | None = None) -> np.ndarray:
        """[N, B, T] -> [N, B, T-1] (or [N, B, K] at head_idx [N, B, K]) in row chunks of `rows`
        (the micro-batch)."""
        out = []
        for i in range(0, tokens.shape[1], rows):
            tok, val = self.place((tokens[:, i:i + rows], valid[:, i:i + rows]))
            extra = (self.place(head_idx[:, i:i + rows]),) if head_idx is not None else ()
            out.append(fn(params, tok, val, hyper, *extra))
        return np.concatenate([np.asarray(o) for o in out], axis=1)

    def metric(self, m: dict, k: str, i: int) -> float:
        return float(np.asarray(m[k])[i])
