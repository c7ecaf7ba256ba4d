"""The GRPO reference policy across restarts, never rewritten into every checkpoint.

`TrainState.meta["reference"]` says where a restarted run gets it back:
  "initial": the model the run started from (no warm start): rebuilt at restore from the base
      checkpoint (or seeded init) the Experiment loads anyway; nothing is written for it.
  "saved" (the default for any other reference, e.g. the warm start's result): written once to
      its own directory (WORKDIR/reference) the first time a checkpoint needs it, read back at
      restore.
With config.train.reference_resident off, the reference is not held between its uses at all: a
`ParkedReference` names its saved copy, and each GRPO step reads it back for its one log-prob
pass (Search-R1 offloads veRL's reference parameters the same way, `ref.fsdp_config.param_offload`;
on CPU, host memory is the device's, so here it goes to the directory it is saved in anyway).

Each checkpoint's meta holds the reference's fingerprint (per parameter, float32 sum of |x| and of
x²), so a reference rebuilt from another base checkpoint, or a reference directory of another run,
is refused by name instead of silently changing the KL term of every later update.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from searche1_jax.train.placement import abstract
from searche1_jax.train.state import flatten, unflatten

INITIAL, SAVED = "initial", "saved"
KINDS = (INITIAL, SAVED)
# float32 sums of up to ~1e9 terms in another reduction order (another mesh) agree to ~1e-6
FINGERPRINT_RTOL = 1e-4


@jax.jit
def _stats(flat: dict) -> dict:
    return {k: jnp.stack([jnp.abs(v.astype(jnp.float32)).sum(), jnp.square(v.astype(jnp.float32)).sum()])
            for k, v in flat.items()}


def fingerprint(params: dict) -> dict[str, list[float]]:
    """{"a.0.b": [sum |x|, sum x²]} of a (nested, possibly sharded) params dict, as JSON floats."""
    return {k: [float(s) for s in np.asarray(v)] for k, v in _stats(flatten(params)).items()}


def check_fingerprint(saved: dict, params: dict, what: str, fix: str) -> None:
    """Refuse `params` (the reference rebuilt or read back) unless it is the one the checkpoint
    recorded: same parameter names and sums within FINGERPRINT_RTOL."""
    got = fingerprint(params)
    if sorted(saved) != sorted(got):
        raise ValueError(f"{what} has other parameters than the reference this run trained against "
                         f"({len(got)} vs {len(saved)}): {fix}")
    for k in sorted(saved):
        if not np.allclose(got[k], saved[k], rtol=FINGERPRINT_RTOL, atol=0.0):
            raise ValueError(f"{what} is not the reference this run trained against: parameter {k} has "
                             f"sum|x|, sum x^2 = {got[k]} here, {saved[k]} in the checkpoint; {fix}")


class ReferenceStore:
    """The saved-once reference: an orbax tree of the flattened params in `directory`."""

    def __init__(self, directory, concurrent_gb: float = 96.0):
        """concurrent_gb: the GB orbax has in flight while writing / reading (Checkpointer's)."""
        self.path = epath.Path(directory)
        self.concurrent_gb = concurrent_gb
        self._written = None  # the params object last written or read: not written again

    def _checkpointer(self) -> ocp.AsyncCheckpointer:
        return ocp.AsyncCheckpointer(ocp.StandardCheckpointHandler(save_concurrent_gb=self.concurrent_gb,
                                                                   restore_concurrent_gb=self.concurrent_gb))

    def exists(self) -> bool:
        return self.path.exists()

    def ensure_written(self, params: dict, *, remember: bool = True) -> None:
        """Write `params` unless this very object was written (or read) by this store. Blocks
        until the files are complete, so no checkpoint refers to a half-written reference.
        remember=False: forget the object after (the store then holds no array of it)."""
        if self._written is params:
            if not remember:
                self._written = None
            return
        checkpointer = self._checkpointer()
        checkpointer.save(self.path, args=ocp.args.StandardSave(flatten(params)), force=True)
        checkpointer.wait_until_finished()
        checkpointer.close()
        self._written = params if remember else None

    def read(self, like_params: dict, *, remember: bool = True) -> dict:
        """The saved reference, placed as `like_params` (abstract or concrete) are. remember:
        the store knows the object as written (it holds it: a resident reference)."""
        if not self.exists():
            raise ValueError(f"the checkpoint's reference policy was saved in {self.path}, which is missing: "
                             f"restore that directory from a backup, or start afresh with a new --workdir")
        checkpointer = self._checkpointer()
        try:
            target = abstract(flatten(like_params))
            params = unflatten(checkpointer.restore(self.path, args=ocp.args.StandardRestore(target)))
        except Exception as e:  # noqa: BLE001  (orbax raises many kinds for a broken directory)
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise ValueError(f"the reference policy in {self.path} is unreadable ({type(e).__name__}: {first}): "
                             f"restore it from a backup, or start afresh with a new --workdir") from None
        finally:
            checkpointer.close()
        self._written = params if remember else None
        return params


@dataclasses.dataclass(eq=False)
class ParkedReference:
    """The reference policy in its saved-once directory, not in memory (config.train.reference_resident
    off): `load()` reads it back, placed as it was. Stands in `TrainState.ref_params`; a
    checkpoint records its fingerprint and kind "saved" and writes nothing more."""
    store: ReferenceStore
    like: Any                           # abstract params: shapes, dtypes, shardings
    fingerprint: dict[str, list[float]]

    @classmethod
    def park(cls, store: ReferenceStore, params: dict, known_fingerprint: dict | None = None) -> "ParkedReference":
        """Write `params` to `store` (unless it holds them already) and describe them; nothing
        here keeps them, so they are freed when the caller drops them. No copy is made."""
        store.ensure_written(params, remember=False)
        return cls(store, abstract(params), known_fingerprint or fingerprint(params))

    def load(self) -> dict:
        """The reference, read back for one use (the store keeps no handle on it)."""
        return self.store.read(self.like, remember=False)


@dataclasses.dataclass(eq=False)
class ParkedOptimizer:
    """AdamW's state on disk between the updates that use it (config.train.optimizer_resident
    off; veRL's optimizer_offload in Search-R1's recipe): written to `directory` (a scratch
    directory of the run, rewritten each time; checkpoints are where a restart reads it from),
    `load()` reads it back placed as it was. Stands in `TrainState.opt_state`."""
    directory: Any
    like: Any  # abstract optimiser state: structure, shapes, dtypes, shardings
    concurrent_gb: float

    @classmethod
    def park(cls, directory, opt_state, concurrent_gb: float = 96.0) -> "ParkedOptimizer":
        path = epath.Path(directory)
        checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(save_concurrent_gb=concurrent_gb))
        try:
            checkpointer.save(path, args=ocp.args.PyTreeSave(opt_state), force=True)
        finally:
            checkpointer.close()
        return cls(path, abstract(opt_state), concurrent_gb)

    def load(self):
        checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(restore_concurrent_gb=self.concurrent_gb))
        try:
            return checkpointer.restore(self.directory, args=ocp.args.PyTreeRestore(
                item=self.like, restore_args=ocp.checkpoint_utils.construct_restore_args(self.like)))
        finally:
            checkpointer.close()
