"""SIGTERM (a preempted or cancelled job) ends a run cleanly: the current update finishes, the
state is saved, the process exits 0, and the next start resumes there (issue 23).

    guard = Preemption(); guard.install()     # in Trainer.run
    if guard.agreed(): save; raise Preempted(state)   # between updates, on every process
    guard.uninstall()

The handler only sets a flag, so the update in flight is never cut. Every process must stop at
the same update (a multi-process step is collective): `agreed` ORs the flags of all processes
with one tiny all-gather (the role orbax's `reached_preemption` plays with jax.distributed's
preemption service), each time it is asked, so a signal seen by any process stops them all.
"""
from __future__ import annotations

import signal
import threading

import jax
import numpy as np


class Preempted(Exception):
    """Raised by the train loop after it saved on SIGTERM; `state` is the saved state."""

    def __init__(self, state):
        super().__init__(f"preempted at step {state.step}")
        self.state = state


class Preemption:
    def __init__(self):
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame):
        self.requested = True
        print("SIGTERM: finishing the current update, then saving a checkpoint and exiting", flush=True)

    def install(self) -> None:
        """Catch SIGTERM from now on (only the main thread may install a handler; elsewhere a
        no-op, and SIGTERM keeps its default)."""
        if threading.current_thread() is threading.main_thread() and self._previous is None:
            self._previous = signal.signal(signal.SIGTERM, self._handler)

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def agreed(self) -> bool:
        """Whether any process has been asked to stop (every process gets the same answer)."""
        flag = self.requested
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            flag = bool(np.any(multihost_utils.process_allgather(np.int32(flag))))
        return flag
