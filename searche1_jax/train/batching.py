"""Host-side packing of trajectories into fixed-shape arrays (bucketed so jit compiles rarely)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from searche1_jax.shapes import round_up


def bucket_length(n: int, bucket: int) -> int:
    """Round up to a multiple of `bucket` (at least one bucket)."""
    return max(bucket, round_up(n, bucket))


def pack(sequences: Sequence[Sequence[int]], masks: Sequence[Sequence[int]], *, length: int,
         rows: int | None = None, pad_id: int = 0) -> dict[str, np.ndarray]:
    """Right-pad token lists to [rows, length]: tokens, valid, loss_mask.

    Extra rows (rows > len(sequences)) are all padding and contribute nothing to any loss.
    """
    rows = len(sequences) if rows is None else rows
    if rows < len(sequences):
        raise ValueError(f"rows={rows} < {len(sequences)} sequences")
    tokens = np.full((rows, length), pad_id, np.int32)
    valid = np.zeros((rows, length), bool)
    loss_mask = np.zeros((rows, length), np.int32)
    for i, (seq, m) in enumerate(zip(sequences, masks)):
        if len(seq) > length:
            raise ValueError(f"sequence {i} has {len(seq)} tokens > bucket length {length}")
        if len(m) != len(seq):
            raise ValueError(f"sequence {i}: mask length {len(m)} != {len(seq)} tokens")
        tokens[i, :len(seq)] = seq
        valid[i, :len(seq)] = True
        loss_mask[i, :len(seq)] = m
    return {"tokens": tokens, "valid": valid, "loss_mask": loss_mask}


def pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    if x.shape[0] == rows:
        return x
    pad = np.zeros((rows - x.shape[0],) + x.shape[1:], x.dtype)
    return np.concatenate([x, pad], axis=0)


def to_micro(batch: dict[str, np.ndarray], micro_batch: int) -> dict[str, np.ndarray]:
    """[B, ...] -> [B / micro_batch, micro_batch, ...] (B must be a multiple of micro_batch)."""
    b = next(iter(batch.values())).shape[0]
    if b % micro_batch:
        raise ValueError(f"batch of {b} rows is not a multiple of micro_batch={micro_batch}")
    return {k: v.reshape((b // micro_batch, micro_batch) + v.shape[1:]) for k, v in batch.items()}
