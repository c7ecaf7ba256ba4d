"""dev_summary / is_yes_no / rollout_metrics / needs_teacher_copy by hand: dev EM overall and on
the open (not yes/no) questions, solved and mixed groups, when an OFSD round copies its teacher."""
import types

import numpy as np
import pytest

from searche1_jax.stats import bootstrap_ci
from searche1_jax.train.loop import dev_summary, is_yes_no


def test_is_yes_no_normalises_and_needs_every_gold():
    assert is_yes_no(["Yes"]) and is_yes_no(["no."]) and is_yes_no(["yes", "No"])
    assert not is_yes_no(["yes", "Paris"]) and not is_yes_no(["Norway"]) and not is_yes_no([])


def test_dev_summary_by_hand():
    golds = [["yes"], ["Paris"], ["no"], ["K. Jayakumar"], ["1999"]]
    em = [1.0, 1.0, 0.0, 0.0, 1.0]
    t = lambda answer, s, n: types.SimpleNamespace(answer=answer, num_searches=s, num_sampled=n)  # noqa: E731
    trajs = [t("yes", 1, 40), t("paris", 2, 60), t(None, 0, 100), t("x", 1, 50), t("1999", 2, 50)]
    out = dev_summary(em, golds, trajs)
    assert out["dev_em"] == pytest.approx(0.6) and out["dev_n"] == 5
    assert out["dev_em_open"] == pytest.approx(2 / 3) and out["dev_n_open"] == 3  # Paris, Jayakumar, 1999
    assert (out["dev_em_lo"], out["dev_em_hi"]) == bootstrap_ci(em)
    assert (out["dev_em_open_lo"], out["dev_em_open_hi"]) == bootstrap_ci([1.0, 0.0, 1.0])
    assert out["dev_answered"] == pytest.approx(0.8)
    assert out["dev_searches"] == pytest.approx(1.2) and out["dev_sampled_tokens"] == pytest.approx(60.0)
    only_yes_no = dev_summary([1.0], [["no"]], trajs[:1])
    assert only_yes_no["dev_n_open"] == 0 and np.isnan(only_yes_no["dev_em_open"])


def test_rollout_metrics_solved_and_mixed_groups_by_hand():
    from searche1_jax.train.rollouts import Group, rollout_metrics
    t = lambda answer: types.SimpleNamespace(answer=answer, response_ids=[1, 2], num_sampled=2,  # noqa: E731
                                             num_searches=1, finish_reason="answer")
    groups = [Group("q0", ("a",), [t("a"), t("b")], np.asarray([1.0, 0.0], np.float32)),  # mixed
              Group("q1", ("c",), [t("c"), t("c")], np.asarray([1.0, 1.0], np.float32)),  # solved, no signal
              Group("q2", ("d",), [t("x"), t(None)], np.asarray([0.0, 0.0], np.float32))]  # no signal
    m = rollout_metrics(groups)
    assert m["solved_groups"] == pytest.approx(2 / 3) and m["mixed_groups"] == pytest.approx(1 / 3)
    assert m["reward"] == pytest.approx(0.5) and m["em"] == pytest.approx(0.5)


def test_write_dev_answers_one_row_per_question(tmp_path):
    import json

    from searche1_jax.data.qa import QAExample
    from searche1_jax.train.loop import write_dev_answers
    exs = [QAExample("q1", "Who?", ("Paris",), "hotpotqa"), QAExample("q2", "Is it?", ("yes",), "hotpotqa")]
    t = lambda answer, s, n, why: types.SimpleNamespace(answer=answer, num_searches=s, num_sampled=n,  # noqa: E731
                                                        finish_reason=why)
    path = tmp_path / "evals" / "final.jsonl"
    write_dev_answers(str(path), exs, np.asarray([1.0, 0.0]), [t("paris", 2, 61, "answer"), t(None, 1, 96, "length")])
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert rows == [{"id": "q1", "golden_answers": ["Paris"], "answer": "paris", "em": 1.0, "searches": 2,
                     "sampled_tokens": 61, "finish_reason": "answer"},
                    {"id": "q2", "golden_answers": ["yes"], "answer": None, "em": 0.0, "searches": 1,
                     "sampled_tokens": 96, "finish_reason": "length"}]
    assert not (tmp_path / "evals" / "final.jsonl.tmp").exists()
    with pytest.raises(ValueError):  # a trajectory missing for a question is an error, not a short file
        write_dev_answers(str(path), exs, np.asarray([1.0, 0.0]), [t("paris", 2, 61, "answer")])


def test_an_ofsd_round_copies_its_teacher_only_for_several_snapshot_updates():
    from searche1_jax.train.loop import needs_teacher_copy
    assert not needs_teacher_copy("snapshot", 1, 3, 4)      # 3 students, mini-batch 4: one update
    assert not needs_teacher_copy("snapshot", 1, 4, 4)
    assert needs_teacher_copy("snapshot", 1, 5, 4)          # two updates: the second needs theta_k
    assert needs_teacher_copy("snapshot", 2, 3, 4)          # two epochs of one update each
    assert not needs_teacher_copy("live", 3, 64, 4)         # the live teacher is the params themselves
