"""roll_out in chunks of whole groups (config.rollout.max_rows): calls, keys and assembly by hand."""
import types

import jax
import numpy as np
import pytest

from searche1_jax.train.rollouts import chunk_questions, roll_out


def test_chunk_questions_by_hand():
    assert chunk_questions(5, 4, 0) == [range(0, 5)]
    assert chunk_questions(5, 4, 8) == [range(0, 2), range(2, 4), range(4, 5)]
    assert chunk_questions(5, 4, 9) == [range(0, 2), range(2, 4), range(4, 5)]   # whole groups only
    assert chunk_questions(3, 4, 2) == [range(0, 1), range(1, 2), range(2, 3)]   # at least one group
    assert chunk_questions(2, 4, 64) == [range(0, 2)]


class RecordingAgent:
    """agent.run stand-in: row r of a call answers "<question>-<r mod G>"; records each call."""

    def __init__(self, group_size):
        self.g, self.calls = group_size, []

    def run(self, model, questions, key, sampling):
        self.calls.append((list(questions), np.asarray(jax.random.key_data(key))))
        return [types.SimpleNamespace(answer=f"{q}-{r % self.g}") for r, q in enumerate(questions)]


@pytest.mark.parametrize("max_rows", [0, 4, 8])
def test_roll_out_chunks_whole_groups_with_folded_keys(max_rows):
    g = 2
    examples = [types.SimpleNamespace(question=f"q{i}", golden_answers=[f"q{i}-{i % 2}"]) for i in range(5)]
    agent, key = RecordingAgent(g), jax.random.key(3)
    groups = roll_out(agent, None, examples, g, key, None, max_rows=max_rows)
    sizes = [len(qs) for qs, _ in agent.calls]
    assert sizes == {0: [10], 4: [4, 4, 2], 8: [8, 2]}[max_rows]
    if max_rows == 0:  # one call: the key itself (the unchunked rollout is unchanged)
        np.testing.assert_array_equal(agent.calls[0][1], jax.random.key_data(key))
    else:
        for i, (_, k) in enumerate(agent.calls):
            np.testing.assert_array_equal(k, jax.random.key_data(jax.random.fold_in(key, i)))
    # question-major groups in example order; gold q_i-(i mod 2) is sampled by row i mod 2 of the group
    assert [gr.question for gr in groups] == [f"q{i}" for i in range(5)]
    for i, gr in enumerate(groups):
        assert [t.answer for t in gr.trajectories] == [f"q{i}-0", f"q{i}-1"]
        np.testing.assert_array_equal(gr.rewards, [1.0, 0.0] if i % 2 == 0 else [0.0, 1.0])
