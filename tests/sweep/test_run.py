"""A sweep end to end on a very small tiny config: a vmapped population per structural value,
per-member metrics, one stacked checkpoint each, summary + plot, and a re-run that resumes."""
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "configs"))
from tiny import get_config  # noqa: E402


def small_config():
    c = get_config()
    c.grpo.steps_per_round, c.grpo.questions_per_step, c.grpo.mini_batch, c.grpo.micro_batch = 2, 2, 2, 2
    c.rollout.group_size, c.rollout.max_turns, c.rollout.max_response_tokens = 2, 1, 64
    c.ofsd.questions, c.ofsd.group_size, c.ofsd.mini_batch = 2, 2, 2
    return c


@pytest.mark.slow
def test_sweep_runs_population_and_structural_fields_and_resumes(tmp_path):
    from searche1_jax.sweep.run import run_sweep
    workdir = str(tmp_path / "sweep")
    logs = []
    rows = run_sweep(small_config(), "seed=0,1;ofsd.rendering=queries,no_docs", workdir, dev_limit=2,
                     log=logs.append)
    assert [(r["population"], r["member"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [r["name"] for r in rows] == ["seed=0", "seed=1"] * 2
    assert [r["structural"] for r in rows] == [{"ofsd.rendering": "queries"}] * 2 + [{"ofsd.rendering": "no_docs"}] * 2
    for r in rows:
        assert r["steps"] == 2 and 0.0 <= r["final_reward"] <= 1.0 and 0.0 <= r["dev_em"] <= 1.0
    assert any("2 members on a ('member',) mesh of 2 cpu devices" in line for line in logs)
    table = open(os.path.join(workdir, "summary.md")).read()
    assert table.count("seed=") == 4 and "ofsd.rendering=no_docs seed=1" in table
    assert json.load(open(os.path.join(workdir, "summary.json"))) == rows
    assert open(os.path.join(workdir, "curves.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    metrics = [json.loads(line) for line in open(os.path.join(workdir, "pop0", "metrics.jsonl"))]
    assert sorted((m["member"], m["step"], m["phase"]) for m in metrics) == [
        (0, 1, "grpo"), (0, 2, "grpo"), (0, 2, "ofsd"), (1, 1, "grpo"), (1, 2, "grpo"), (1, 2, "ofsd")]
    # members with different seeds start from different params: their rollouts differ
    assert metrics[0]["response_length"] != metrics[1]["response_length"] or \
        metrics[0]["reward"] != metrics[1]["reward"] or metrics[0]["loss"] != metrics[1]["loss"]

    # the same command again resumes: nothing is retrained, the summary is the same
    n_lines = len(metrics)
    again = run_sweep(small_config(), "seed=0,1;ofsd.rendering=queries,no_docs", workdir, dev_limit=2,
                      log=logs.append)
    assert again == rows
    assert len(open(os.path.join(workdir, "pop0", "metrics.jsonl")).readlines()) == n_lines
    with pytest.raises(ValueError, match="holds a different sweep"):
        run_sweep(small_config(), "seed=0,1,2", workdir)



def test_a_preempted_sweep_exits_0_and_says_how_to_resume(monkeypatch, capsys):
    """SIGTERM inside a population: the trainer saved and raised Preempted (train/preemption.py,
    tested end to end in tests/train/test_preemption.py); the sweep command exits 0 with the
    resume hint instead of a traceback. Bad input still exits 2."""
    import types

    from searche1_jax.sweep import run as sweep_run
    from searche1_jax.train.preemption import Preempted

    def preempted(*a, **k):
        raise Preempted(types.SimpleNamespace(step=3, meta={"round": 1, "phase": "grpo"}))
    monkeypatch.setattr(sweep_run, "run_sweep", preempted)
    assert sweep_run.run_command(None, "train.lr=1e-5", "/nonexistent", population="auto", dev_limit=0) == 0
    assert "preempted: saved at GRPO step 3 (round 1, grpo); rerun the same command" in capsys.readouterr().out
    monkeypatch.setattr(sweep_run, "run_sweep", lambda *a, **k: (_ for _ in ()).throw(ValueError("bad field")))
    assert sweep_run.run_command(None, "x=1", "/nonexistent", population="auto", dev_limit=0) == 2
    assert "error: bad field" in capsys.readouterr().err
