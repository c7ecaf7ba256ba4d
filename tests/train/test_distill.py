"""OFSD round data (train/distill.py): the teacher sees a sibling's record, not a re-parse of
its text."""
import types

import numpy as np

from searche1_jax.rollout import protocol as P
from searche1_jax.rollout.agent import Trajectory
from searche1_jax.train.distill import Pair, ofsd_arrays, select_pairs


class CharTokenizer:
    """One id per character: teacher tokens decode back to text exactly."""
    pad_id = 0

    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids if i)


def trajectory(tok, prompt, turns, queries, answer):
    """turns: (text, sampled) in order; queries: the searches the agent really ran."""
    t = Trajectory(tok.encode(prompt), prompt.index("Question:"))
    for text, sampled in turns:
        t.add(tok.encode(text), sampled)
    t.queries = list(queries)
    t.response_text = "".join(text for text, _ in turns)
    t.policy_text = "\n".join(text for text, sampled in turns if sampled)
    t.answer = answer
    return t


def corrected_group(tok):
    prompt = "Instruction.\nQuestion: where was the director of Jaws born?\n"
    obs = P.format_observation([types.SimpleNamespace(contents='"Jaws"\ndirected by Spielberg')])
    # the sibling: one turn without a tag (answered with the corrective message, which itself
    # holds `<search> and </search>`), one real search, then the right answer
    sibling = trajectory(tok, prompt, [("I am not sure.", 1), (P.INVALID_ACTION_MESSAGE, 0),
                                       ("<search> director of Jaws </search>", 1), (obs, 0),
                                       ("<answer> Cincinnati </answer>", 1)],
                         ["director of Jaws"], "Cincinnati")
    student = trajectory(tok, prompt, [("<search> Jaws </search>", 1), (obs, 0),
                                       ("<search> Spielberg </search>", 1), (obs, 0),
                                       ("<answer> Boston </answer>", 1)],
                         ["Jaws", "Spielberg"], "Boston")
    return types.SimpleNamespace(question="q", golds=("Cincinnati",), trajectories=[sibling, student],
                                 rewards=np.array([1.0, 0.0], np.float32))


def teacher_context(tok, group, rendering):
    arrays = ofsd_arrays([Pair(0, 0, 1)], [group], tok, rendering=rendering, length_bucket=8, rows_multiple=1)
    student = group.trajectories[1]
    text = tok.decode(arrays["teacher_tokens"][0])
    start = student.question_start
    # the context block sits between the instruction and the question
    return text[start:text.index("Question:", start)]


def test_sibling_with_a_corrective_message_renders_only_its_real_queries():
    tok = CharTokenizer()
    group = corrected_group(tok)
    assert P.search_queries(group.trajectories[0].response_text) == ["and", "director of Jaws"]  # the trap
    assert select_pairs([group]) == [Pair(0, 0, 1)]
    ctx = teacher_context(tok, group, "queries")
    assert ctx == "Searches that led to a correct answer to this question:\n1. director of Jaws\n\n"
    ctx = teacher_context(tok, group, "all_siblings")
    assert ctx == ("Earlier attempts at this question:\nAttempt 1 (correct): director of Jaws\n"
                   "Attempt 2 (incorrect): Jaws; Spielberg\n\n")


def test_text_renderings_show_the_sibling_response():
    tok = CharTokenizer()
    group = corrected_group(tok)
    sib = group.trajectories[0].response_text
    full = teacher_context(tok, group, "full")
    assert full == f"A correct solution to this question:\n{sib.strip()}\n\n"
    no_docs = teacher_context(tok, group, "no_docs")
    assert no_docs == f"A correct solution to this question:\n{P.strip_information(sib)}\n\n"
    assert "directed by Spielberg" in full and "directed by Spielberg" not in no_docs
