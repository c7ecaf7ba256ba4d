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


@pytest.mark.slow  # ~45 s on a 2-core CPU (tokenizer, tiny model, 3 rollouts): CI's 25-minute budget
def test_greedy_em_is_the_same_whatever_its_batch():
    """config.sft.eval_rows only changes how many rows a dev eval decodes at once: rows are
    independent, so the trajectories and the EM are those of any other batch (5 questions, a
    steered model that searches and answers, rows finishing at different turns)."""
    import jax.numpy as jnp
    from flax import nnx

    from searche1_jax.model.checkpoint import smollm2_gguf_path
    from searche1_jax.model.config import get_preset
    from searche1_jax.model.create import create_model
    from searche1_jax.model.tokenizer import Tokenizer
    from searche1_jax.train.rollouts import greedy_em
    from tests.rollout.test_engine import SAMPLED, make_agent, steer

    tok = Tokenizer.from_gguf(smollm2_gguf_path())
    model = create_model(get_preset("tiny", vocab_size=tok.vocab_size), seed=3)
    nnx.update(model, jax.tree.map(lambda x: x * 8.0 if x.ndim >= 2 else jnp.asarray(x), nnx.state(model, nnx.Param)))
    policy = steer(model, tok, {p: 1.0 for p in SAMPLED}, 1.0)
    examples = [types.SimpleNamespace(question=q, golden_answers=[a]) for q, a in
                [("Who wrote Hamlet?", "x"), ("Where is Paris?", "France"), ("What is 2+2?", "x"),
                 ("Who painted the Mona Lisa?", "da Vinci"), ("Name a river.", "x")]]
    agent = make_agent(tok, "packed", row_buckets="pow2")
    em5, t5 = greedy_em(agent, policy, examples, batch=5)
    em2, t2 = greedy_em(agent, policy, examples, batch=2)
    assert [t.response_ids for t in t5] == [t.response_ids for t in t2]
    np.testing.assert_array_equal(em5, em2)
    assert len({len(t.sampled_segments()) for t in t5}) >= 2  # rows end at different turns
