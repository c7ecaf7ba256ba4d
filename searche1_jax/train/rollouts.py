"""From questions to packed training arrays: roll out G trajectories per question, reward
them (METHOD §1), compute group advantages (METHOD §2) and pack prompt + response tokens.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

from searche1_jax.rl.grpo import group_advantages, has_spread
from searche1_jax.rl.rewards import em_rewards
from searche1_jax.rollout.agent import SearchAgent, Trajectory
from searche1_jax.rollout.sampler import SamplingParams
from searche1_jax.train.batching import pack_trajectories, pad_rows


@dataclasses.dataclass
class Group:
    """G trajectories of one question."""
    question: str
    golds: tuple[str, ...]
    trajectories: list[Trajectory]
    rewards: np.ndarray  # [G] f32


def chunk_questions(n_questions: int, group_size: int, max_rows: int) -> list[range]:
    """Question ranges of at most max_rows trajectories each, whole groups (at least one group);
    max_rows 0 = one chunk."""
    per = n_questions if max_rows <= 0 else max(1, max_rows // group_size)
    return [range(lo, min(lo + per, n_questions)) for lo in range(0, n_questions, max(per, 1))]


def roll_out(agent: SearchAgent, model, examples: Sequence, group_size: int, key: jax.Array,
             sampling: SamplingParams, max_rows: int = 0) -> list[Group]:
    """examples have .question and .golden_answers. Rows are question-major (q0 x G, q1 x G, ...).
    max_rows > 0 decodes at most that many rows at once (`chunk_questions`); with several chunks
    chunk i samples with fold_in(key, i)."""
    chunks = chunk_questions(len(examples), group_size, max_rows)
    trajs = []
    for i, qs in enumerate(chunks):
        questions = [examples[q].question for q in qs for _ in range(group_size)]
        trajs += agent.run(model, questions, key if len(chunks) == 1 else jax.random.fold_in(key, i), sampling)
    golds = [tuple(ex.golden_answers) for ex in examples for _ in range(group_size)]
    rewards = em_rewards([t.answer for t in trajs], golds)  # the last answer the policy sampled
    return [Group(ex.question, tuple(ex.golden_answers), trajs[i * group_size:(i + 1) * group_size],
                  np.asarray(rewards[i * group_size:(i + 1) * group_size], np.float32))
            for i, ex in enumerate(examples)]


def greedy_em(agent: SearchAgent, model, examples: Sequence, batch: int = 16) -> tuple[np.ndarray, list[Trajectory]]:
    """Greedy rollouts of `examples` (.question, .golden_answers), `batch` rows at a time (the KV
    cache grows with the rows): (EM [n] float32, trajectories)."""
    trajs = []
    for lo in range(0, len(examples), batch):
        trajs += agent.run(model, [ex.question for ex in examples[lo:lo + batch]], jax.random.key(0),
                           SamplingParams(greedy=True))
    return em_rewards([t.answer for t in trajs], [tuple(ex.golden_answers) for ex in examples]), trajs


def advantages(groups: list[Group], step: int) -> tuple[np.ndarray, np.ndarray]:
    """(group ids [B], advantages [B] float32) of the groups' trajectories in order."""
    rewards = np.concatenate([g.rewards for g in groups])
    # group id = (step, question index): unique per question and step, so two questions never
    # share a group (Search-R1's per-source row index can merge NQ row k with HotpotQA row k)
    group_ids = np.concatenate([np.full(len(g.trajectories), step * 1_000_000 + i) for i, g in enumerate(groups)])
    return group_ids, np.asarray(group_advantages(rewards, group_ids), np.float32)


def grpo_arrays(groups: list[Group], *, step: int, length_bucket: int, rows_multiple: int,
                pad_id: int, head_at_least: int | None = None) -> dict[str, np.ndarray]:
    """Packed [B, T] tokens/valid/loss_mask, advantages [B] and group_ids [B] (unique per question
    and step, -1 on padding rows); with head_at_least (not None), head_idx [B, K]: the positions
    the update runs the LM head at (`batching.pack_trajectories`)."""
    trajs = [t for g in groups for t in g.trajectories]
    group_ids, adv = advantages(groups, step)
    batch = pack_trajectories(trajs, length_bucket=length_bucket, rows_multiple=rows_multiple, pad_id=pad_id,
                              head_at_least=head_at_least)
    rows = batch["tokens"].shape[0]
    batch["advantages"] = pad_rows(adv, rows)
    # host-side only (the trainer checks them, METHOD §2, and drops them): -1 on padding rows
    batch["group_ids"] = np.concatenate([group_ids, np.full(rows - len(group_ids), -1)]).astype(np.int64)
    return batch


def rollout_metrics(groups: list[Group]) -> dict[str, float]:
    from searche1_jax.rl.rewards import exact_match, f1_score
    trajs = [t for g in groups for t in g.trajectories]
    golds = [g.golds for g in groups for _ in g.trajectories]
    return {
        "reward": float(np.mean(np.concatenate([g.rewards for g in groups]))),
        "em": float(np.mean([exact_match(t.answer, gs) for t, gs in zip(trajs, golds)])),
        "f1": float(np.mean([f1_score(t.answer, gs) for t, gs in zip(trajs, golds)])),
        "response_length": float(np.mean([len(t.response_ids) for t in trajs])),
        "sampled_tokens": float(np.mean([t.num_sampled for t in trajs])),
        "searches": float(np.mean([t.num_searches for t in trajs])),
        "answered": float(np.mean([t.finish_reason == "answer" for t in trajs])),
        "solved_groups": float(np.mean([g.rewards.max() > 0 for g in groups])),
        # groups whose rewards differ: the only ones with non-zero advantages (GRPO's signal)
        "mixed_groups": float(np.mean(has_spread([g.rewards for g in groups]))),
    }
