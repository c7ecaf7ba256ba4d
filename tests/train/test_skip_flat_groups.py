"""config.grpo.skip_flat_groups: the update sees only the groups whose rewards differ.

Oracle: a flat group's advantages are all 0, so a step on [mixed group, flat group] with the
filter must equal a step on [mixed group] alone without it (same rows, same permutation); a
step whose groups are all flat makes no update at all."""
import os
import sys

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "configs"))
from tiny import get_config  # noqa: E402

from searche1_jax.rl.grpo import has_spread  # noqa: E402
from searche1_jax.rollout.agent import SearchAgent, Trajectory  # noqa: E402


def test_has_spread_by_hand():
    r = np.array([[0, 0, 0], [1, 1, 1], [0, 1, 0], [0.5, 0.5, 0.25]])
    assert has_spread(r).tolist() == [False, False, True, True]
    assert has_spread(np.zeros((0, 4))).shape == (0,)
    with pytest.raises(ValueError, match=r"\[questions, group_size\]"):
        has_spread(np.zeros(4))


def scripted(golds, mixed):
    """Trajectories fixed by the question: in `mixed` questions every other sample is wrong."""
    def run(self, model, questions, key, sampling=None):
        out = []
        for j, q in enumerate(questions):
            t = Trajectory(*self.prompt_ids(q))
            answer = "nothing" if q in mixed and j % 2 else golds[q]
            text = f"<search> {q[:12]} </search>\n\n<information>doc</information>\n\n<answer> {answer} </answer>"
            t.add(self.tok.encode(text), True)
            t.queries, t.response_text, t.policy_text = [q[:12]], text, text
            t.answer, t.finish_reason = answer, "answer"
            out.append(t)
        return out
    return run


def one_step(tmp_path, name, questions, skip, golds, mixed, monkeypatch):
    from searche1_jax.sweep.spec import with_overrides
    from searche1_jax.train.loop import Trainer
    from searche1_jax.train.metrics import Progress
    from searche1_jax.train.setup import Experiment
    c = get_config()
    c.grpo.steps_per_round, c.grpo.mini_batch, c.grpo.micro_batch, c.rollout.group_size = 1, 2, 2, 2
    c = with_overrides(c, {"grpo.questions_per_step": questions, "grpo.skip_flat_groups": skip, "train.lr": 1e-2})
    monkeypatch.setattr(SearchAgent, "run", scripted(golds, mixed))
    monkeypatch.setattr("searche1_jax.train.setup.make_mesh", lambda shape: None)
    exp = Experiment(c)
    tr = Trainer(exp, str(tmp_path / name))
    tr.progress = Progress(1)
    start = exp.initial_state()
    before = jax.tree.map(np.asarray, start.params)
    after = tr.grpo_step(start)
    row = [eval_row(line) for line in open(tr.metrics_path)][-1]
    return before, jax.tree.map(np.asarray, after.params), row


def eval_row(line):
    import json
    return json.loads(line)


@pytest.fixture
def data(monkeypatch):
    from searche1_jax.data.qa import read_examples
    from searche1_jax.train.setup import Experiment
    monkeypatch.setattr("searche1_jax.train.setup.make_mesh", lambda shape: None)  # one device
    c = get_config()
    golds = {ex.question: ex.golden_answers[0] for ex in read_examples(c.data.train)}
    first_two = [ex.question for ex in Experiment(c).train_data.next_batch(2)]
    return golds, first_two


def test_flat_groups_are_left_out_of_the_update(tmp_path, monkeypatch, data):
    golds, (q1, q2) = data
    _, filtered, row_f = one_step(tmp_path, "filtered", 2, True, golds, {q1}, monkeypatch)
    _, alone, row_a = one_step(tmp_path, "alone", 1, False, golds, {q1}, monkeypatch)
    _, unfiltered, _ = one_step(tmp_path, "unfiltered", 2, False, golds, {q1}, monkeypatch)
    assert row_f["updates"] == row_a["updates"] == 1
    assert row_f["mixed_groups"] == 0.5 and row_f["reward"] == 0.75  # metrics see every group
    for a, b in zip(jax.tree.leaves(filtered), jax.tree.leaves(alone)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # without the filter the flat group's tokens enter the token mean: a different update
    assert any(not np.allclose(a, b, rtol=1e-6, atol=1e-7)
               for a, b in zip(jax.tree.leaves(filtered), jax.tree.leaves(unfiltered)))


def test_a_step_of_flat_groups_makes_no_update(tmp_path, monkeypatch, data):
    golds, _ = data
    before, after, row = one_step(tmp_path, "flat", 2, True, golds, set(), monkeypatch)
    assert row["updates"] == 0 and row["mixed_groups"] == 0 and "loss" not in row
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
        np.testing.assert_array_equal(a, b)
