"""OFSD data side: sibling and student selection, privileged teacher context (METHOD §3.1–§3.3).

The losses (forward KL and its fused chunked form, reverse KL, generalised JSD) live in
`kl.py` (definitions, naive forms) and `fused_kl.py` (fused forms) and are re-exported here, so
`from searche1_jax.rl.ofsd import fused_forward_kl` works. Arrays and strings in, arrays and
token lists out; the tokenizer is a plain callable.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from searche1_jax.rl.fused_kl import (  # noqa: F401  (re-exported API)
    fused_divergence_sum, fused_forward_kl, fused_forward_kl_sum, fused_generalized_jsd,
    fused_reverse_kl)
from searche1_jax.rl.kl import (  # noqa: F401  (re-exported API)
    divergence_from_logps, forward_kl, generalized_jsd, reverse_kl)

RENDERINGS = ("queries", "no_docs", "full", "all_siblings")


def _correct(rewards) -> np.ndarray:
    # Rewards are 0/1 (METHOD §1); "correct" is reward 1.
    return np.asarray(rewards, dtype=np.float64) >= 1.0 - 1e-6


def sibling_index(rewards, num_searches, num_tokens) -> int:
    """Index of the most efficient correct trajectory of one group, or -1 if none is correct.

    rewards, num_searches, num_tokens: [G]. Among trajectories with reward 1: fewest
    searches, then fewest sampled tokens, then the lowest index (METHOD §3.1).
    """
    r, s, t = np.asarray(rewards), np.asarray(num_searches), np.asarray(num_tokens)
    if not (r.ndim == 1 and r.shape == s.shape == t.shape):
        raise ValueError(f"rewards, num_searches, num_tokens must all be [G], got "
                         f"{r.shape}, {s.shape}, {t.shape}")
    ok = np.flatnonzero(_correct(r))
    if ok.size == 0:
        return -1
    # np.lexsort sorts by the last key first; the stable sort keeps the lowest index on ties.
    order = np.lexsort((ok, t[ok], s[ok]))
    return int(ok[order[0]])


def sibling_indices(rewards, num_searches, num_tokens) -> np.ndarray:
    """Batched `sibling_index`: [Q, G] inputs -> [Q] int (-1 for groups with no correct rollout)."""
    r, s, t = np.asarray(rewards), np.asarray(num_searches), np.asarray(num_tokens)
    if not (r.ndim == 2 and r.shape == s.shape == t.shape):
        raise ValueError(f"rewards, num_searches, num_tokens must all be [Q, G], got "
                         f"{r.shape}, {s.shape}, {t.shape}")
    return np.asarray([sibling_index(r[q], s[q], t[q]) for q in range(r.shape[0])], np.int64)


def student_mask(rewards, num_searches, num_tokens, *, include_equal: bool = False,
                 sibling: int | None = None) -> np.ndarray:
    """[G] bool: trajectories of one group that are distilled towards the sibling (METHOD §3.2).

    A trajectory is a student if it is not the sibling and is less efficient than it:
    wrong, or correct with more searches, or correct with as many searches and more tokens.
    include_equal (off by default) also takes correct trajectories exactly as efficient
    as the sibling (same searches and tokens). All False when the group has no sibling.
    `sibling` may be passed if already computed.
    """
    r, s, t = np.asarray(rewards), np.asarray(num_searches), np.asarray(num_tokens)
    sib = sibling_index(r, s, t) if sibling is None else int(sibling)
    out = np.zeros(r.shape, bool)
    if sib < 0:
        return out
    correct = _correct(r)
    worse = ~correct | (s > s[sib]) | ((s == s[sib]) & (t > t[sib]))
    if include_equal:
        worse |= correct & (s == s[sib]) & (t == t[sib])
    out[:] = worse
    out[sib] = False
    return out


def student_masks(rewards, num_searches, num_tokens, *, include_equal: bool = False) -> np.ndarray:
    """Batched `student_mask`: [Q, G] inputs -> [Q, G] bool."""
    r, s, t = np.asarray(rewards), np.asarray(num_searches), np.asarray(num_tokens)
    if not (r.ndim == 2 and r.shape == s.shape == t.shape):
        raise ValueError(f"rewards, num_searches, num_tokens must all be [Q, G], got "
                         f"{r.shape}, {s.shape}, {t.shape}")
    return np.stack([student_mask(r[q], s[q], t[q], include_equal=include_equal)
                     for q in range(r.shape[0])]) if r.shape[0] else np.zeros(r.shape, bool)


def render_context(queries: Sequence[str], rendering: str = "queries", *, text: str | None = None,
                   all_queries: Sequence[Sequence[str]] | None = None,
                   all_rewards: Sequence[float] | None = None) -> str:
    """The privileged context block (text) for the teacher, ending in a blank line.

    Takes the sibling's record, never re-parses a response (a corrective message in it names
    the search tags): queries are `Trajectory.queries`, the searches the agent really ran.
    queries (default): the sibling's search queries only; never its answer.
    no_docs: `text` = the sibling's response with its observation blocks already removed by the
      caller (`rollout.protocol.strip_information`).
    full: `text` = the sibling's full response.
    all_siblings (SD-Search ablation): for every rollout of the question, its queries
      (all_queries) and whether it was correct (all_rewards); no answers are printed.
    """
    if rendering == "queries":
        body = "\n".join(f"{i}. {q}" for i, q in enumerate(queries, 1)) if queries else "(no search needed)"
        return f"Searches that led to a correct answer to this question:\n{body}\n\n"
    if rendering in ("no_docs", "full"):
        if text is None:
            raise ValueError(f"rendering {rendering!r} needs the sibling's response text (text=...)")
        return f"A correct solution to this question:\n{text.strip()}\n\n"
    if rendering == "all_siblings":
        if all_queries is None or all_rewards is None or len(all_queries) != len(all_rewards):
            raise ValueError("rendering 'all_siblings' needs all_queries and all_rewards of equal length")
        lines = []
        for i, (qs, rew) in enumerate(zip(all_queries, all_rewards), 1):
            outcome = "correct" if _correct([rew])[0] else "incorrect"
            shown = "; ".join(qs) if qs else "(no search)"
            lines.append(f"Attempt {i} ({outcome}): {shown}")
        return "Earlier attempts at this question:\n" + "\n".join(lines) + "\n\n"
    raise ValueError(f"rendering must be one of {RENDERINGS}, got {rendering!r}")


def privileged_prompt(tokenize: Callable[[str], list[int]], student_ids: Sequence[int],
                      insert_at: int, queries: Sequence[str], *, rendering: str = "queries",
                      text: str | None = None, all_queries: Sequence[Sequence[str]] | None = None,
                      all_rewards: Sequence[float] | None = None):
    """Teacher and student token ids for one student trajectory (METHOD §3.3).

    tokenize: text -> token ids (no special tokens added); student_ids: the student's exact
    sequence (prompt + response); insert_at: index in student_ids where the question starts
    (the context block goes right before it); queries, text, all_queries, all_rewards: the
    sibling's record as `render_context` takes it.
    Returns (teacher_ids, student_ids, offset): teacher_ids = student_ids[:insert_at] +
    tokenize(context) + student_ids[insert_at:], so for every position p >= insert_at,
    teacher_ids[p + offset] == student_ids[p] (the same response tokens, aligned by offset).
    """
    student_ids = [int(x) for x in student_ids]
    if not 0 <= insert_at <= len(student_ids):
        raise ValueError(f"insert_at must be in [0, {len(student_ids)}], got {insert_at}")
    ctx = [int(x) for x in tokenize(render_context(queries, rendering, text=text, all_queries=all_queries,
                                                   all_rewards=all_rewards))]
    teacher_ids = student_ids[:insert_at] + ctx + student_ids[insert_at:]
    return teacher_ids, student_ids, len(ctx)


def aligned_positions(response_start: int, response_len: int, offset: int):
    """(student_idx, teacher_idx) [R] int32: positions whose hidden state predicts each response
    token (position p predicts token p + 1) in the student and teacher sequences."""
    if response_start < 1:
        raise ValueError(f"response_start must be >= 1 (a token predicts the next), got {response_start}")
    s = np.arange(response_start - 1, response_start - 1 + response_len, dtype=np.int32)
    return s, s + np.int32(offset)
