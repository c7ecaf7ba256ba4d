import numpy as np
import pytest

from searche1_jax.rl.ofsd import (aligned_positions, privileged_prompt, render_context, sibling_index,
                                  sibling_indices, student_mask, student_masks)
from searche1_jax.rollout.protocol import strip_information


@pytest.mark.parametrize("rewards,searches,tokens,want", [
    ([0, 1, 1, 0, 1], [0, 3, 1, 1, 2], [10, 50, 90, 5, 20], 2),     # fewest searches wins, not tokens
    ([1, 1, 1, 0, 0], [2, 1, 1, 0, 0], [30, 80, 40, 5, 5], 2),      # tie on searches: fewest tokens
    ([1, 0, 1, 1, 0], [1, 0, 1, 1, 0], [40, 1, 40, 40, 1], 0),      # tie on both: lowest index
    ([0, 0, 0, 0, 0], [0, 1, 2, 3, 4], [9, 9, 9, 9, 9], -1),        # no correct rollout
    ([1, 1, 1, 1, 1], [3, 2, 2, 4, 2], [10, 12, 11, 1, 11], 2),     # all correct
])
def test_sibling_index_on_hand_built_groups(rewards, searches, tokens, want):
    assert sibling_index(rewards, searches, tokens) == want


@pytest.mark.parametrize("rewards,searches,tokens,include_equal,want", [
    # sibling 2 (1 search, 90 tokens): wrong ones and the 3-search correct one are students
    ([0, 1, 1, 0, 1], [0, 3, 1, 1, 2], [10, 50, 90, 5, 20], False, [1, 1, 0, 1, 1]),
    # sibling 2 (1 search, 40 tokens); 1 has same searches but more tokens -> student
    ([1, 1, 1, 0, 0], [2, 1, 1, 0, 0], [30, 80, 40, 5, 5], False, [1, 1, 0, 1, 1]),
    # equally efficient correct rollouts: excluded by default, included with the switch
    ([1, 0, 1, 1, 0], [1, 0, 1, 1, 0], [40, 1, 40, 40, 1], False, [0, 1, 0, 0, 1]),
    ([1, 0, 1, 1, 0], [1, 0, 1, 1, 0], [40, 1, 40, 40, 1], True, [0, 1, 1, 1, 1]),
    # no correct rollout: group skipped
    ([0, 0, 0, 0, 0], [0, 1, 2, 3, 4], [9, 9, 9, 9, 9], True, [0, 0, 0, 0, 0]),
    # all correct: only the less efficient ones
    ([1, 1, 1, 1, 1], [3, 2, 2, 4, 2], [10, 12, 11, 1, 11], False, [1, 1, 0, 1, 0]),
    ([1, 1, 1, 1, 1], [3, 2, 2, 4, 2], [10, 12, 11, 1, 11], True, [1, 1, 0, 1, 1]),
])
def test_student_mask_on_hand_built_groups(rewards, searches, tokens, include_equal, want):
    got = student_mask(rewards, searches, tokens, include_equal=include_equal)
    np.testing.assert_array_equal(got, np.array(want, bool))


def test_batched_forms_agree_with_per_group():
    r = np.random.default_rng(0)
    R = r.integers(0, 2, (6, 5))
    S = r.integers(0, 3, (6, 5))
    T = r.integers(1, 4, (6, 5))
    np.testing.assert_array_equal(sibling_indices(R, S, T), [sibling_index(R[q], S[q], T[q]) for q in range(6)])
    for inc in (False, True):
        np.testing.assert_array_equal(student_masks(R, S, T, include_equal=inc),
                                      [student_mask(R[q], S[q], T[q], include_equal=inc) for q in range(6)])


def test_selection_refuses_bad_shapes():
    with pytest.raises(ValueError, match="must all be"):
        sibling_index([1, 0], [1], [1, 2])
    with pytest.raises(ValueError, match=r"\[Q, G\]"):
        sibling_indices([1, 0], [1, 0], [1, 2])


SIBLING = ("<think>need the director</think>\n<search> director of Jaws </search>\n\n"
           "<information>Doc 1(Title: Jaws) directed by Steven Spielberg</information>\n\n"
           "<search>Spielberg birthplace</search>\n\n<information>Doc 1(Title: S) born in Cincinnati"
           "</information>\n\n<answer> Cincinnati </answer>")
SIBLING_QUERIES = ["director of Jaws", "Spielberg birthplace"]  # its Trajectory.queries
# the response text each rendering is given (no_docs: observation blocks removed by the caller)
SIBLING_TEXT = {"queries": None, "no_docs": strip_information(SIBLING), "full": SIBLING}


def test_queries_rendering_shows_queries_and_never_the_answer():
    ctx = render_context(SIBLING_QUERIES, "queries")
    assert "director of Jaws" in ctx and "Spielberg birthplace" in ctx
    assert "Cincinnati" not in ctx and "<answer>" not in ctx and "<information>" not in ctx
    assert "no search" in render_context([], "queries")


def test_no_docs_and_full_renderings():
    no_docs = render_context(SIBLING_QUERIES, "no_docs", text=SIBLING_TEXT["no_docs"])
    assert "<information>" not in no_docs and "directed by Steven" not in no_docs
    assert "<search> director of Jaws </search>" in no_docs and "<answer> Cincinnati </answer>" in no_docs
    full = render_context(SIBLING_QUERIES, "full", text=SIBLING_TEXT["full"])
    assert "directed by Steven Spielberg" in full and "<answer> Cincinnati </answer>" in full


def test_all_siblings_rendering_lists_outcomes_without_answers():
    all_queries = [SIBLING_QUERIES, ["jaws cast"]]
    ctx = render_context(SIBLING_QUERIES, "all_siblings", all_queries=all_queries, all_rewards=[1.0, 0.0])
    assert "Attempt 1 (correct): director of Jaws; Spielberg birthplace" in ctx
    assert "Attempt 2 (incorrect): jaws cast" in ctx
    assert "Cincinnati" not in ctx and "Boston" not in ctx
    with pytest.raises(ValueError, match="needs all_queries"):
        render_context(SIBLING_QUERIES, "all_siblings")
    with pytest.raises(ValueError, match="rendering must be one of"):
        render_context(SIBLING_QUERIES, "everything")


def _tok(text):
    """A toy tokenizer: one id per character (any str -> list[int] callable will do)."""
    return [ord(c) for c in text]


@pytest.mark.parametrize("rendering", ["queries", "no_docs", "full"])
def test_privileged_prompt_aligns_the_same_response_tokens(rendering):
    prompt = "Instr.\nQuestion: where was the director of Jaws born?\n"
    response = "<think>x</think><answer> Cincinnati </answer>"
    student = _tok(prompt + response)
    insert_at = prompt.index("Question:")
    teacher, stud, offset = privileged_prompt(_tok, student, insert_at, SIBLING_QUERIES, rendering=rendering,
                                              text=SIBLING_TEXT[rendering])
    assert stud == student
    ctx = _tok(render_context(SIBLING_QUERIES, rendering, text=SIBLING_TEXT[rendering]))
    assert offset == len(ctx)
    assert teacher == student[:insert_at] + ctx + student[insert_at:]
    for p in range(insert_at, len(student)):
        assert teacher[p + offset] == student[p]
    # the positions that predict each response token hold the same next tokens
    start = len(_tok(prompt))
    s_idx, t_idx = aligned_positions(start, len(response), offset)
    np.testing.assert_array_equal(np.array(student)[s_idx + 1], np.array(teacher)[t_idx + 1])
    np.testing.assert_array_equal(np.array(student)[s_idx + 1], _tok(response))


def test_privileged_prompt_queries_does_not_leak_answer():
    teacher, _, offset = privileged_prompt(_tok, _tok("Question: q?\n"), 0, SIBLING_QUERIES)
    assert "Cincinnati" not in "".join(map(chr, teacher[:offset]))


def test_privileged_prompt_refuses_bad_insert_position():
    with pytest.raises(ValueError, match="insert_at must be"):
        privileged_prompt(_tok, [1, 2, 3], 5, SIBLING_QUERIES)


def test_text_renderings_need_the_text():
    for rendering in ("no_docs", "full"):
        with pytest.raises(ValueError, match="needs the sibling's response text"):
            render_context(SIBLING_QUERIES, rendering)
