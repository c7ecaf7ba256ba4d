"""Metrics: JSONL (one object per line, what `plot` reads), TensorBoard when available, and a
progress line with step, reward, tokens/s and ETA. Only process 0 writes.
"""
from __future__ import annotations

import json
import os
import sys
import time

import jax
import numpy as np


def _scalar(v):
    if isinstance(v, (str, int)):  # names and member indices stay as they are (bool is an int)
        return v
    v = np.asarray(v)
    if v.size != 1:
        return v.tolist()
    v = float(v)
    return v if np.isfinite(v) else None  # JSON has no NaN


class MetricsWriter:
    def __init__(self, workdir: str, *, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            if tensorboard:
                try:  # optional: tensorboardX writes event files without TensorFlow
                    from tensorboardX import SummaryWriter
                    self._tb = SummaryWriter(os.path.join(workdir, "tb"))
                except ImportError:
                    self._tb = None

    def write(self, step: int, phase: str, metrics: dict) -> dict:
        row = {"step": int(step), "phase": phase, "time": time.time(),
               **{k: _scalar(v) for k, v in metrics.items()}}
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
            if self._tb is not None:
                for k, v in row.items():
                    if isinstance(v, float):
                        self._tb.add_scalar(f"{phase}/{k}", v, step)
                self._tb.flush()
        return row


class Progress:
    """One line per update: `[grpo] step 12/100 reward 0.31 tok/s 840 ETA 0:12:03`."""

    def __init__(self, total: int, *, stream=sys.stderr):
        self.total, self.stream = total, stream
        self.start = time.time()
        self.done0 = None

    def update(self, done: int, phase: str, **fields):
        if jax.process_index() != 0:
            return
        if self.done0 is None:  # a resumed run: count only the steps this process ran
            self.done0 = done - 1
        elapsed = time.time() - self.start
        rate = (done - self.done0) / max(elapsed, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        parts = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
        eta_s = time.strftime("%H:%M:%S", time.gmtime(eta)) if np.isfinite(eta) else "?"
        print(f"[{phase}] step {done}/{self.total} {parts} ETA {eta_s}", file=self.stream, flush=True)

    def note(self, message: str):
        """A line inside a long step (rollout done, updating), so minutes never pass silently."""
        if jax.process_index() == 0:
            print(f"  {message} ({time.time() - self.start:.0f}s)", file=self.stream, flush=True)
