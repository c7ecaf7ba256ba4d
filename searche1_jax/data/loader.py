"""A deterministic, shuffled, per-process-sharded, epoch-aware stream of training questions.

    stream = QuestionStream.from_file("train.jsonl", seed=0, process_index=jax.process_index(),
                                      process_count=jax.process_count())
    batch = stream.next_batch(512)          # list[QAExample]; crosses epochs as needed
    meta["data"] = stream.get_state()       # {"seed", "epoch", "position", ...}: goes into the checkpoint
    stream.set_state(meta["data"])          # resumes at exactly the next example

Order: epoch e visits `perm_e = default_rng([seed, e]).permutation(N)` (numpy PCG64, so the
order is the same on every machine and numpy 2.x). Process p of P takes `perm_e[p::P]`, cut to
`N // P` examples so every process has the same number of steps per epoch (a multi-host step
needs all processes in lockstep); the up to P-1 examples left over differ from epoch to epoch.
Pure numpy: no TensorFlow, no grain.
"""
from __future__ import annotations

import hashlib
import os
from typing import Iterator, Sequence

import numpy as np

from searche1_jax.data.qa import QAExample, read_examples

STATE_KEYS = ("seed", "epoch", "position", "process_index", "process_count", "num_examples", "fingerprint")


def question_file(path: str | os.PathLike) -> str:
    """The training file a config names: "demo" is the shipped demo training set."""
    if os.fspath(path) == "demo":
        from searche1_jax.data.demo import demo_file
        return demo_file("train")
    return os.fspath(path)


def fingerprint(examples: Sequence[QAExample]) -> str:
    """16 hex digits of sha256 over the ids in file order: a resumed run must see the same data."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(ex.id.encode("utf-8") + b"\n")
    return h.hexdigest()[:16]


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """[n] int64: the global visiting order of epoch `epoch`."""
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int64)


def shard_order(n: int, seed: int, epoch: int, process_index: int, process_count: int,
                shuffle: bool = True) -> np.ndarray:
    """[n // process_count] int64: the example indices process `process_index` visits in `epoch`."""
    per = n // process_count
    return epoch_order(n, seed, epoch, shuffle)[process_index::process_count][:per]


class QuestionStream:
    """Endless iterator over `examples` in the order described in the module docstring."""

    def __init__(self, examples: Sequence[QAExample], seed: int = 0, process_index: int = 0,
                 process_count: int = 1, shuffle: bool = True):
        if process_count < 1 or not 0 <= process_index < process_count:
            raise ValueError(f"process_index must be in [0, process_count), got {process_index} of {process_count}")
        if len(examples) < process_count:
            raise ValueError(f"{len(examples)} examples cannot be sharded over {process_count} processes "
                             f"(each process needs at least one)")
        self.examples = list(examples)
        self.seed, self.shuffle = int(seed), bool(shuffle)
        self.process_index, self.process_count = process_index, process_count
        self.fingerprint = fingerprint(self.examples)
        self.epoch, self.position = 0, 0
        self._order = self._order_of(0)

    @classmethod
    def from_file(cls, path: str | os.PathLike, **kwargs) -> "QuestionStream":
        """From a .jsonl / .parquet file; `path="demo"` is the shipped demo training set."""
        return cls(read_examples(question_file(path)), **kwargs)

    def _order_of(self, epoch: int) -> np.ndarray:
        return shard_order(len(self.examples), self.seed, epoch, self.process_index,
                           self.process_count, self.shuffle)

    @property
    def examples_per_epoch(self) -> int:
        """Examples this process sees per epoch."""
        return len(self._order)

    def __len__(self) -> int:
        return self.examples_per_epoch

    def next_batch(self, batch_size: int) -> list[QAExample]:
        """The next `batch_size` examples of this process; an epoch boundary inside a batch starts
        the next epoch's order (so every batch is full)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out = []
        while len(out) < batch_size:
            if self.position >= len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._order_of(self.epoch)
            take = self._order[self.position:self.position + batch_size - len(out)]
            out.extend(self.examples[i] for i in take)
            self.position += len(take)
        return out

    def batches(self, batch_size: int, num_batches: int | None = None) -> Iterator[list[QAExample]]:
        """Yield `num_batches` (None: endless) batches; the state advances with every yield, so
        `get_state()` between two yields resumes at the next batch."""
        i = 0
        while num_batches is None or i < num_batches:
            yield self.next_batch(batch_size)
            i += 1

    def __iter__(self) -> Iterator[QAExample]:
        while True:
            yield self.next_batch(1)[0]

    def get_state(self) -> dict:
        """JSON-serialisable state: ints and one string."""
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position,
                "process_index": self.process_index, "process_count": self.process_count,
                "num_examples": len(self.examples), "fingerprint": self.fingerprint}

    def set_state(self, state: dict) -> None:
        """Resume from `get_state()`. The data and the process layout must match the saved ones."""
        missing = [k for k in ("seed", "epoch", "position") if k not in state]
        if missing:
            raise ValueError(f"data iterator state lacks {missing}; got keys {sorted(state)}")
        for key, mine in (("num_examples", len(self.examples)), ("fingerprint", self.fingerprint),
                          ("process_count", self.process_count), ("process_index", self.process_index)):
            if key in state and state[key] != mine:
                raise ValueError(f"data iterator state was saved with {key}={state[key]!r} but this "
                                 f"stream has {key}={mine!r}: resuming would not continue the same order")
        seed, epoch, position = int(state["seed"]), int(state["epoch"]), int(state["position"])
        if epoch < 0:
            raise ValueError(f"data iterator state epoch must be >= 0, got {epoch}")
        order = shard_order(len(self.examples), seed, epoch, self.process_index, self.process_count,
                            self.shuffle)
        if not 0 <= position <= len(order):
            raise ValueError(f"data iterator state position {position} is outside epoch {epoch} "
                             f"(which has {len(order)} examples on this process)")
        self.seed, self.epoch, self.position, self._order = seed, epoch, position, order
