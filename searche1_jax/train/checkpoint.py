"""Orbax checkpoints of the whole train state: params, optimiser, reference, rng, step, and the
JSON meta (round, phase, data-iterator position). Asynchronous, atomic (orbax writes to a
temporary directory and renames), keep-last-k; `restore_latest` makes a restarted run resume.
"""
from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

from searche1_jax.train.state import TrainState, flatten, unflatten


def check_workdir(workdir: str) -> None:
    """Fail early, naming the directory, if a run cannot write its checkpoints and metrics."""
    path = os.path.abspath(workdir)
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write_probe_{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ValueError(f"workdir {path} is not a writable directory ({e.strerror or e}); "
                         f"pass --workdir=DIR with a directory you can write to") from None


def param_shapes(params: dict) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in flatten(params).items()}


def _shape_mismatch(saved: dict, expected: dict) -> str | None:
    missing = sorted(set(expected) - set(saved))
    extra = sorted(set(saved) - set(expected))
    if missing or extra:
        return (f"{len(missing)} parameters missing (e.g. {missing[:2]}), {len(extra)} unexpected "
                f"(e.g. {extra[:2]})")
    for k in sorted(expected):
        if list(saved[k]) != list(expected[k]):
            return f"parameter {k} has shape {tuple(saved[k])} in the checkpoint, {tuple(expected[k])} in this model"
    return None


class Checkpointer:
    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                                 create=True),
            item_names=("state", "meta"))

    def save(self, state: TrainState, *, force: bool = False) -> bool:
        """Save under the next save index (OFSD rounds change the state without a GRPO step)."""
        latest = self.manager.latest_step()
        index = 0 if latest is None else latest + 1
        meta = dict(state.meta, param_shapes=param_shapes(state.params))
        return self.manager.save(index, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state.arrays()), meta=ocp.args.JsonSave(meta)), force=force)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore_latest(self, like: TrainState) -> TrainState | None:
        """Restore the newest checkpoint onto the structure and shardings of `like`; None if none."""
        step = self.manager.latest_step()  # a save index, not the train step
        if step is None:
            return None
        meta = dict(self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
        saved = meta.pop("param_shapes", None)
        problem = _shape_mismatch(saved, param_shapes(like.params)) if saved is not None else None
        if problem:
            raise ValueError(f"checkpoint {self.directory}/{step} was written by a different model: "
                             f"{problem}. Use a new --workdir for this config, or the config that "
                             f"wrote this checkpoint")
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, like.arrays())
        out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
        arrays = out["state"]
        return TrainState(params=unflatten(arrays["params"]), opt_state=arrays["opt_state"],
                          ref_params=unflatten(arrays["ref_params"]) if arrays["ref_params"] else None,
                          step=int(arrays["step"]), rng=jax.random.wrap_key_data(arrays["rng"]),
                          meta=meta)

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()
