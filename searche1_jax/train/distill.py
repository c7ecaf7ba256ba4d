"""OFSD round data: pick siblings and students in each group (METHOD §3.1-3.2) and build the
packed student / privileged-teacher arrays with the positions that align their response tokens.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from searche1_jax.rl import ofsd
from searche1_jax.rollout import protocol
from searche1_jax.shapes import round_up
from searche1_jax.train.batching import bucket_length, pack, pad_rows


@dataclasses.dataclass(frozen=True)
class Pair:
    group: int      # index of the group (question)
    sibling: int    # index of the most efficient correct trajectory
    student: int    # index of a less efficient trajectory distilled towards it


def select_pairs(groups, *, include_equal: bool = False) -> list[Pair]:
    """Sibling/student pairs over all groups; groups without a correct rollout are skipped."""
    pairs = []
    for gi, g in enumerate(groups):
        searches = np.array([t.num_searches for t in g.trajectories])
        tokens = np.array([t.num_sampled for t in g.trajectories])
        sib = ofsd.sibling_index(g.rewards, searches, tokens)
        if sib < 0:
            continue
        students = ofsd.student_mask(g.rewards, searches, tokens, include_equal=include_equal)
        pairs.extend(Pair(gi, int(sib), int(s)) for s in np.flatnonzero(students))
    return pairs


def sibling_text(sibling, rendering: str) -> str | None:
    """The response text a rendering shows of the sibling: its full response (`full`), the
    response without its observation blocks (`no_docs`), none for the query renderings (they
    read `Trajectory.queries`, never the text)."""
    if rendering == "full":
        return sibling.response_text
    if rendering == "no_docs":
        return protocol.strip_information(sibling.response_text)
    return None


def sibling_record(group, sibling: int, rendering: str) -> dict:
    """The sibling's record as `ofsd.render_context` and `ofsd.privileged_prompt` take it
    (keyword arguments): what the teacher of any student of this group is shown."""
    sib = group.trajectories[sibling]
    return dict(queries=sib.queries, rendering=rendering, text=sibling_text(sib, rendering),
                all_queries=[t.queries for t in group.trajectories], all_rewards=list(group.rewards))


def ofsd_arrays(pairs: list[Pair], groups, tokenizer, *, rendering: str, length_bucket: int,
                rows_multiple: int, sampled_only: bool = False) -> dict[str, np.ndarray]:
    """Student tokens [B, T], teacher tokens [B, T2], aligned indices and KL mask [B, R]: every
    response position (R covers the longest response), or with sampled_only the positions of
    the sampled tokens alone, the only ones the KL counts (the same loss; the LM heads run at
    R positions: config.train.head_on_loss_tokens)."""
    students, teachers, s_idx, t_idx, kl = [], [], [], [], []
    for p in pairs:
        g = groups[p.group]
        stu = g.trajectories[p.student]
        seq = stu.prompt_ids + stu.response_ids
        teacher_ids, student_ids, offset = ofsd.privileged_prompt(
            tokenizer.encode, seq, stu.question_start, **sibling_record(g, p.sibling, rendering))
        si, ti = ofsd.aligned_positions(len(stu.prompt_ids), len(stu.response_ids), offset)
        mask = np.asarray(stu.loss_mask, np.int32)  # sampled tokens only
        if sampled_only:
            keep = mask != 0
            si, ti, mask = np.asarray(si)[keep], np.asarray(ti)[keep], mask[keep]
        students.append(student_ids)
        teachers.append(teacher_ids)
        s_idx.append(si)
        t_idx.append(ti)
        kl.append(mask)
    rows = round_up(len(pairs), rows_multiple)
    t_len = bucket_length(max(len(s) for s in students), length_bucket)
    t2_len = bucket_length(max(len(t) for t in teachers), length_bucket)
    r_len = bucket_length(max(len(i) for i in s_idx), length_bucket)
    s = pack(students, [[0] * len(x) for x in students], length=t_len, rows=rows, pad_id=tokenizer.pad_id)
    t = pack(teachers, [[0] * len(x) for x in teachers], length=t2_len, rows=rows, pad_id=tokenizer.pad_id)

    def pad2(xs):
        out = np.zeros((len(xs), r_len), np.int32)
        for i, x in enumerate(xs):
            out[i, :len(x)] = x
        return pad_rows(out, rows)

    return {"tokens": s["tokens"], "valid": s["valid"], "teacher_tokens": t["tokens"],
            "teacher_valid": t["valid"], "student_idx": pad2(s_idx), "teacher_idx": pad2(t_idx),
            "kl_mask": pad2(kl)}
