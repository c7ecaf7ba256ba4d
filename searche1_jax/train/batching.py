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


def head_positions(loss_mask: np.ndarray, *, bucket: int, at_least: int = 0) -> np.ndarray:
    """The positions where a train step needs the LM head: [B, T] loss mask -> [B, K] int32.

    Row b lists, in order, each position t whose hidden state predicts a loss token
    (loss_mask[b, t + 1] != 0), then 0 up to K: position 0 predicts the prompt's second token,
    never a loss token, so a padded slot scores nothing (zero padding by `agree_shapes` and a
    population's `pad_stack` is the same). K = at_least (the rollout's bound on a trajectory's
    sampled tokens), or, where a row has more such positions (or at_least is 0), the most a row
    has rounded up to `bucket`; at most T - 1. With the bound K is a function of T alone, so the
    train steps compile no more programs than before. The head is ~20% of a 135M model's FLOPs
    a token, and a GRPO or warm-start row's policy tokens are a fraction of it: the prompt and
    the observations are context, loss-masked (METHOD §1)."""
    if loss_mask.ndim != 2 or loss_mask.shape[1] < 2:
        raise ValueError(f"head_positions: loss_mask must be [B, T] with T >= 2, got {loss_mask.shape}")
    target = loss_mask[:, 1:] != 0        # position t predicts token t + 1
    if target[:, 0].any():
        raise ValueError("head_positions: a loss token at position 1; a trajectory's loss tokens follow its "
                         "prompt (at least 2 tokens), so position 0 can pad the head positions")
    counts = target.sum(axis=1)
    most = int(counts.max(initial=0))
    k = min(target.shape[1], at_least if 0 < at_least and most <= at_least else bucket_length(most, bucket))
    out = np.zeros((loss_mask.shape[0], k), np.int32)
    for b in range(loss_mask.shape[0]):
        pos = np.flatnonzero(target[b])
        out[b, :len(pos)] = pos
    return out


def pack_trajectories(trajs, *, length_bucket: int, rows_multiple: int, pad_id: int,
                      head_at_least: int | None = None) -> dict[str, np.ndarray]:
    """Whole trajectories (.prompt_ids, .response_ids, .loss_mask: 1 on the policy's tokens)
    packed to [B, T] tokens / valid / loss_mask: T the longest rounded up to length_bucket, B the
    count rounded up to rows_multiple. With head_at_least (not None), head_idx [B, K]: the
    positions a train step runs the LM head at (`head_positions`, K at least that many)."""
    seqs = [t.prompt_ids + t.response_ids for t in trajs]
    masks = [[0] * len(t.prompt_ids) + t.loss_mask for t in trajs]
    batch = pack(seqs, masks, length=bucket_length(max(len(s) for s in seqs), length_bucket),
                 rows=round_up(len(seqs), rows_multiple), pad_id=pad_id)
    if head_at_least is not None:
        batch["head_idx"] = head_positions(batch["loss_mask"], bucket=length_bucket, at_least=head_at_least)
    return batch


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
