"""A gs:// workdir stays a URI (issue 20 item 6): metrics, pages, dev answers and the write probe go
through etils.epath. epath's test mock sends every gs:// operation to a local folder, so what a
run would write to the bucket is checked here, and that nothing lands in a local `gs:` folder."""
import json
import os

import pytest
from etils.epath import testing as epath_testing

from searche1_jax.train.paths import is_uri, workdir_path

BUCKET = "gs://bucket/run1"


@pytest.fixture
def fake_bucket(tmp_path, monkeypatch):
    """gs://X -> tmp_path/gs/X for every epath operation; the test runs from an empty cwd."""
    root = tmp_path / "gs"

    def local(p):
        p = os.fspath(p)
        return str(root / p[len("gs://"):]) if p.startswith("gs://") else p

    def one(orig, path, *args, **kwargs):
        return orig(local(path), *args, **kwargs)

    def two(orig, path, dst, *args, **kwargs):
        return orig(local(path), local(dst), *args, **kwargs)

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    fns = {k: one for k in ("exists", "glob", "isdir", "listdir", "makedirs", "mkdir", "open", "remove",
                            "rmtree", "stat", "walk")}
    with epath_testing.mock_epath(**fns, rename=two, replace=two, copy=two):
        yield root / "bucket" / "run1"
    assert os.listdir(cwd) == []  # nothing written to a local ./gs:/bucket/run1


def test_a_uri_is_left_as_it_is_and_a_local_path_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert str(workdir_path(BUCKET)) == BUCKET and is_uri(BUCKET)
    assert str(workdir_path("runs/demo")) == os.path.join(str(tmp_path), "runs", "demo")
    assert str(workdir_path(BUCKET) / "checkpoints") == "gs://bucket/run1/checkpoints"


def test_metrics_rows_are_written_and_truncated_in_the_bucket(fake_bucket):
    from searche1_jax.train.metrics import MetricsWriter
    w = MetricsWriter(BUCKET, tensorboard=False)
    assert str(w.path) == f"{BUCKET}/metrics.jsonl"
    for step in (1, 2, 3):
        w.write(step, "grpo", {"reward": step / 10})
    rows = [json.loads(line) for line in open(fake_bucket / "metrics.jsonl")]
    assert [(r["step"], r["reward"]) for r in rows] == [(1, 0.1), (2, 0.2), (3, 0.3)]
    again = MetricsWriter(BUCKET, tensorboard=False)
    again.resume(2, 2)  # a restart from the checkpoint written after row 2
    assert [json.loads(line)["step"] for line in open(fake_bucket / "metrics.jsonl")] == [1, 2]
    from searche1_jax.plot import read_jsonl
    assert [r["step"] for r in read_jsonl(f"{BUCKET}/metrics.jsonl")] == [1, 2]


def test_the_write_probe_pages_and_dev_answers_go_to_the_bucket(fake_bucket):
    from searche1_jax.data.qa import QAExample
    from searche1_jax.train.checkpoint import check_workdir
    from searche1_jax.train.loop import write_dev_answers
    from searche1_jax.train.trajectory_pages import write_index, write_page

    check_workdir(BUCKET)
    assert os.path.isdir(fake_bucket) and os.listdir(fake_bucket) == []  # the probe is removed
    path = write_page(BUCKET, "step_0001.html", "<html><title>GRPO step 1</title></html>")
    assert path == f"{BUCKET}/trajectories/step_0001.html"
    write_index(BUCKET)
    index = open(fake_bucket / "trajectories" / "index.html").read()
    assert 'href="step_0001.html"' in index and "GRPO step 1" in index

    class T:
        answer, num_searches, num_sampled, finish_reason = "paris", 1, 12, "answer"

    write_dev_answers(f"{BUCKET}/evals/base.jsonl", [QAExample("q1", "capital of france?", ("Paris",), "")],
                      [1.0], [T()])
    row = json.loads(open(fake_bucket / "evals" / "base.jsonl").read())
    assert row == {"id": "q1", "golden_answers": ["Paris"], "answer": "paris", "em": 1.0, "searches": 1,
                   "sampled_tokens": 12, "finish_reason": "answer"}
