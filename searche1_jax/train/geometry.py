"""Startup check of every global batch size against the mesh and the process count.

A pure function of the config, the mesh shape and the process count (no devices needed), run
before anything is built. Why each size must divide (see `multihost.py`, `layout.py`):

- questions a step (GRPO, OFSD) and trajectories an update (mini-batches, SFT batch) are
  global: each of the P processes takes 1/P of them.
- a micro-batch (GRPO, OFSD, SFT: rows a forward/backward) is one global array whose rows are
  split over data x fsdp devices; a count they do not divide is *replicated* (`sharding.py`
  drops the axis: every device computes every row) with one process and fails in
  `to_global` with several, so it must be a multiple of lcm(data x fsdp, P) and divide its
  mini-batch.
- a rollout chunk (`rollout.max_rows`, 0 = all of a process's rows at once) decodes whole
  groups over the devices a process rolls out on (data x fsdp of the mesh with one process,
  the process's own devices with several: `rollout_replica`), and the process's rows of a
  step come in equal chunks (one decode program, not two).

`check_geometry` raises `GeometryError` naming each field that does not fit, why, and the
nearest values that would. The model's own dimensions against the mesh:
`model.sharding.check_model_split`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping

from searche1_jax.model.sharding import MESH_AXES
from searche1_jax.shapes import nearest, rollout_chunk_ok, rollout_devices, rollout_phases


class GeometryError(ValueError):
    """Batch sizes that do not fit the mesh / process count; the message names every field."""


@dataclasses.dataclass(frozen=True)
class Geometry:
    data: int
    fsdp: int
    tensor: int
    processes: int
    replica_tensor: int = 1   # rollout.replica_tensor: a process's devices splitting one decode replica

    @property
    def devices(self) -> int:
        return self.data * self.fsdp * self.tensor

    @property
    def batch_devices(self) -> int:
        """Devices a batch's rows are split over (data x fsdp); tensor devices share rows."""
        return self.data * self.fsdp

    @property
    def rollout_devices(self) -> int:
        """Devices one process's rollout rows are split over (several processes: the process's
        own devices, less the rollout.replica_tensor that share each row)."""
        return rollout_devices(self.batch_devices, self.devices, self.processes, self.replica_tensor)

    def describe(self) -> str:
        return (f"mesh data:{self.data},fsdp:{self.fsdp},tensor:{self.tensor} ({self.devices} devices) "
                f"x {self.processes} process{'es' if self.processes > 1 else ''}")


def mesh_shape(mesh: Mapping[str, int], devices: int) -> dict[str, int]:
    """config.mesh with its -1 resolved on `devices` devices (what `sharding.make_mesh` builds)."""
    sizes = {a: int(mesh[a]) for a in MESH_AXES}
    known = math.prod(s for s in sizes.values() if s != -1)
    free = [a for a, s in sizes.items() if s == -1]
    if free:
        if devices % known:
            raise GeometryError(f"config.mesh {sizes} does not divide {devices} devices")
        sizes[free[0]] = devices // known
    if math.prod(sizes.values()) != devices:
        raise GeometryError(f"config.mesh {sizes} needs {math.prod(sizes.values())} devices, have {devices}")
    return sizes


def _problem(field: str, value: int, why: str, ok: Callable[[int], bool], limit: int,
             stuck: str = "change the fields it must divide too") -> str:
    near = nearest(value, ok, limit)
    fix = f"nearest valid: {' or '.join(str(v) for v in near)}" if near else f"no value fits: {stuck}"
    return f"{field} = {value}: {why}; {fix}"


def _split(problems: list, field: str, value: int, g: Geometry, what: str, limit: int,
           also: Callable[[int], bool] = lambda v: True) -> None:
    """A global count each process takes 1/P of (`also`: what else a valid value satisfies)."""
    p = g.processes
    if value % p:
        problems.append(_problem(field, value, f"{what} must split evenly over {p} processes",
                                 lambda v: v % p == 0 and also(v), limit))


def _micro(problems: list, field: str, value: int, of_field: str, of: int, g: Geometry) -> None:
    """Rows of a forward/backward: over data x fsdp (and processes), dividing its mini-batch."""
    m = math.lcm(g.batch_devices, g.processes)
    if value % m:
        why = (f"rows a forward/backward must be a multiple of data x fsdp = {g.batch_devices} devices"
               + (f" and of {g.processes} processes" if g.processes > 1 else "")
               + " (otherwise every device computes all of them: replicated compute)")
        problems.append(_problem(field, value, why, lambda v: v % m == 0 and of % v == 0, of,
                                 f"{of_field} ({of}) must be a multiple of {m} too"))


def _rollout(problems: list, c, g: Geometry) -> None:
    """rollout.max_rows against each phase's rows a process decodes in a step / round."""
    phases = rollout_phases(c, g.processes)
    r = g.rollout_devices

    def fits(max_rows: int) -> bool:
        return rollout_chunk_ok(max_rows, [(rows, group) for _, rows, group in phases], r)

    if fits(c.rollout.max_rows):
        return
    if c.rollout.max_rows == 0:
        why = "; ".join(f"{rows} rows a process decodes at once ({f} / {g.processes} processes x group size)"
                        for f, rows, _ in phases if rows % r)
        why += f" cannot be split over the {r} devices a process rolls out on (0 = all at once)"
    else:
        why = (f"a rollout chunk must be whole groups ({', '.join(str(gr) for _, _, gr in phases)}), a multiple of "
               f"the {r} devices a process rolls out on, and divide each phase's rows a process decodes "
               f"({', '.join(f'{rows}' for _, rows, _ in phases)})")
    limit = max(rows for _, rows, _ in phases) if phases else 1
    problems.append(_problem("config.rollout.max_rows", c.rollout.max_rows, why, fits, limit,
                             "change the questions a step / round or the group sizes"))


def check_geometry(c, mesh: Mapping[str, int], processes: int) -> Geometry:
    """Refuse batch sizes that do not fit `mesh` ({"data", "fsdp", "tensor"} sizes, resolved)
    with `processes` processes: one GeometryError naming every field, why, and the nearest
    values that fit. `c` is an ExperimentConfig (or anything with its sections)."""
    g = Geometry(int(mesh["data"]), int(mesh["fsdp"]), int(mesh["tensor"]), int(processes),
                 int(getattr(c.rollout, "replica_tensor", 1)))
    if g.processes < 1 or g.devices % g.processes:
        raise GeometryError(f"{g.devices} devices cannot be shared by {g.processes} processes")
    problems: list[str] = []
    local = g.devices // g.processes
    if g.processes > 1 and local % g.replica_tensor:
        problems.append(_problem("config.rollout.replica_tensor", g.replica_tensor,
                                 f"it must divide the {local} devices a process rolls out on",
                                 lambda v: local % v == 0, local, "use 1 for a whole replica on every device"))
    trajectories = c.grpo.questions_per_step * c.rollout.group_size
    _split(problems, "config.grpo.questions_per_step", c.grpo.questions_per_step, g, "questions a step",
           2 * c.grpo.questions_per_step + g.processes)
    _split(problems, "config.grpo.mini_batch", c.grpo.mini_batch, g, "trajectories an update", trajectories,
           lambda v: trajectories % v == 0 and v % c.grpo.micro_batch == 0)
    _micro(problems, "config.grpo.micro_batch", c.grpo.micro_batch, "config.grpo.mini_batch", c.grpo.mini_batch, g)
    if c.ofsd.enabled:
        _split(problems, "config.ofsd.questions", c.ofsd.questions, g, "questions a round",
               2 * c.ofsd.questions + g.processes)
        _split(problems, "config.ofsd.mini_batch", c.ofsd.mini_batch, g, "students an update",
               2 * c.ofsd.mini_batch + g.processes, lambda v: v % c.ofsd.micro_batch == 0)
        _micro(problems, "config.ofsd.micro_batch", c.ofsd.micro_batch, "config.ofsd.mini_batch", c.ofsd.mini_batch, g)
    if c.sft.enabled:
        _split(problems, "config.sft.batch", c.sft.batch, g, "trajectories an update", 2 * c.sft.batch + g.processes,
               lambda v: v % c.sft.micro_batch == 0)
        _micro(problems, "config.sft.micro_batch", c.sft.micro_batch, "config.sft.batch", c.sft.batch, g)
    _rollout(problems, c, g)
    if problems:
        raise GeometryError(f"batch sizes do not fit {g.describe()}:\n  " + "\n  ".join(problems))
    return g
