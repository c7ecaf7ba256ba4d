"""Metrics: JSONL (one object per line, what `plot` reads), TensorBoard when available, and a
progress line with step, reward, tokens/s and ETA. Only process 0 writes.

A resumed run writes the same rows as an uninterrupted one: every checkpoint records how many
rows were written when it was saved (meta["metrics_rows"], `MetricsWriter.rows`), and
`MetricsWriter.resume` drops the rows after that (written by the killed run after its last
checkpoint, about steps it redoes). TensorBoard event files are append-only: the resumed run
opens a new event file with `purge_step` = restored step + 1, which TensorBoard honours by
hiding the older events at steps >= that; rows at the restored step itself (an OFSD or eval row
written after its checkpoint) can show twice there, never in the JSONL.
"""
from __future__ import annotations

import json
import sys
import time

import jax
import numpy as np

from searche1_jax.train.paths import append_text, atomic_write_text, workdir_path


def _scalar(v):
    if isinstance(v, (str, int)):  # names and member indices stay as they are (bool is an int)
        return v
    v = np.asarray(v)
    if v.size != 1:
        return v.tolist()
    v = float(v)
    return v if np.isfinite(v) else None  # JSON has no NaN


def _tb_writer(logdir: str, purge_step: int | None = None):
    try:  # optional: tensorboardX writes event files without TensorFlow
        from tensorboardX import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(logdir, purge_step=purge_step)


def truncate_rows(path, rows: int) -> int:
    """Keep the first `rows` complete lines of a JSONL file (atomically; a local path or a URI);
    the number dropped, a partial last line (a kill mid-write) included. A missing or shorter
    file is left alone."""
    path = workdir_path(path)
    if not path.exists():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    complete = [x for x in lines if x.endswith("\n")]
    if len(lines) <= rows and len(complete) == len(lines):
        return 0
    atomic_write_text(path, "".join(complete[:rows]))
    return len(lines) - min(rows, len(complete))


class MetricsWriter:
    def __init__(self, workdir: str, *, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0
        self.path = workdir_path(workdir) / "metrics.jsonl"  # a gs:// workdir stays a URI (paths.py)
        self.tb_dir = str(workdir_path(workdir) / "tb")
        self.rows = 0  # rows written by this run and the ones it resumed (every process counts)
        self._tb = None
        if self.enabled:
            workdir_path(workdir).mkdir(parents=True, exist_ok=True)
            if tensorboard:
                self._tb = _tb_writer(self.tb_dir)

    def resume(self, rows: int | None, step: int) -> None:
        """Continue after a checkpoint saved when `rows` rows had been written (None: a checkpoint
        older than this bookkeeping, the file is left as it is) at train step `step`: drop the
        later rows, and hide TensorBoard's events past `step` (see the module docstring)."""
        if rows is None:
            return
        self.rows = rows
        if not self.enabled:
            return
        dropped = truncate_rows(self.path, rows)
        if dropped:
            print(f"{self.path}: dropped {dropped} rows written after the checkpoint being resumed "
                  f"(step {step}); they are written again", flush=True)
        if self._tb is not None:
            self._tb.close()
            self._tb = _tb_writer(self.tb_dir, purge_step=step + 1)

    def write(self, step: int, phase: str, metrics: dict) -> dict:
        row = {"step": int(step), "phase": phase, "time": time.time(),
               **{k: _scalar(v) for k, v in metrics.items()}}
        self.rows += 1
        if self.enabled:
            append_text(self.path, json.dumps(row) + "\n")
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
