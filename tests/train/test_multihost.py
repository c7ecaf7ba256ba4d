"""Multi-host data path (issue 20 item 6): `to_local` builds no jit per call, so XLA compiles
stay flat over steps, and each process gets its own rows back (2 processes x 2 CPU devices); a
failure on one process stops every process with the same error (2 processes x 1 CPU device)."""
import json
import os
import subprocess
import sys
import types

import pytest

from searche1_jax.retrieval.client import RetrieverError
from searche1_jax.train.loop import rollout_failure
from searche1_jax.train.multihost import FAILURE_BYTES, ProcessFailed, agree_failure, failures_agreed
from tests.launch.test_multiprocess import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_to_local_compiles_once_per_layout_not_once_per_call(tmp_path):
    port, out = str(free_port()), str(tmp_path / "out.json")
    worker = os.path.join(ROOT, "tests", "train", "multihost_worker.py")
    procs = [subprocess.Popen([sys.executable, worker, str(i), port, out], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    got = json.load(open(out))
    assert got["same"]  # each process's rows came back, on both row axes
    counts = got["counts"]  # compilations after each of 5 steps of the same shapes
    assert counts[0] >= 1 and counts[1:] == [counts[0]] * 4, counts


def run_pair(worker: str, *args: str, timeout: float = 300) -> list[tuple[int, str]]:
    """Run `worker` as processes 0 and 1 of a jax.distributed job: [(exit status, output)]."""
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "train", worker), str(i), port, *args],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    try:
        return [(p.wait(timeout=timeout), p.stdout.read()) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def test_a_retriever_timeout_on_one_process_stops_every_process_with_the_same_error():
    """Process 1's retriever stops answering after its first search (client timeout 0.5 s,
    deadline 1 s); process 0's keeps answering. Both pass the first rollout's agreement, then
    both exit 1 at the second with one error naming process 1, its retriever and the fix, within
    seconds of the rollout's start: not when the 600 s sleep or jax's heartbeat would end."""
    outs = run_pair("failure_worker.py")
    errors = []
    for status, out in outs:
        assert status == 1, out[-3000:]
        assert "rollout 0 agreed: ['a', 'a']" in out and "rollout 1 agreed" not in out, out[-3000:]
        errors.append([line for line in out.splitlines() if line.startswith("error: ")])
        start = float(out.split("rollout 1 starts at ")[1].split()[0])
        stopped = float(out.split("stopped at ")[1].split()[0])
        assert stopped - start < 30, out[-3000:]
    assert errors[0] == errors[1] and len(errors[0]) == 1, errors
    error = errors[0][0]
    assert error.startswith("error: process 1 of 2 failed during rollouts: RetrieverDownError: retriever at "
                            "http://127.0.0.1:"), error
    for part in ("no whole reply within", "config.retrieval.kind='http'", "config.retrieval.timeout (0.5 s)",
                 "config.retrieval.deadline (1 s)", "check the server", "every process stops here"):
        assert part in error, (part, error)


def test_one_process_failures_are_reported_as_on_many():
    """With one process the agreement is local: the same error type and text shape."""
    with failures_agreed("rollouts"):
        pass
    with pytest.raises(ProcessFailed, match=r"^process 0 of 1 failed during rollouts: ValueError: boom; "
                                            r"every process stops here$") as e:
        with failures_agreed("rollouts"):
            raise ValueError("boom")
    assert isinstance(e.value.__context__, ValueError)
    long = "x" + "é" * FAILURE_BYTES  # cut to FAILURE_BYTES of UTF-8: 1 + 2 x 511, half an é dropped
    with pytest.raises(ProcessFailed) as e:
        agree_failure(long, "x")
    assert str(e.value).endswith(": x" + "é" * (FAILURE_BYTES // 2 - 1) + "; every process stops here")


def test_rollout_failure_names_the_retriever_and_the_fix_only_for_retriever_errors():
    r = types.SimpleNamespace(kind="bm25", url="", index="", corpus="/data/c.jsonl", timeout=30.0, deadline=60.0)
    text = rollout_failure(r)(RetrieverError("bad reply"))
    assert text.startswith("RetrieverError: bad reply [retriever: config.retrieval.kind='bm25', index /data/c.jsonl]")
    assert "config.retrieval.timeout (30 s)" in text and "config.retrieval.deadline (60 s)" in text
    assert rollout_failure(r)(KeyError("x")) == "KeyError: 'x'"


def test_the_train_steps_compile_once_over_steps_across_two_processes(tmp_path):
    """Four GRPO steps (global log-probs, then the update) with other rows of the same shapes:
    Steps.compile_count() is the same after each, on a 2-process mesh. (Params placed as
    P(None, None) came back from an update as P(): the second step compiled both steps again,
    before `sharding.named_sharding` wrote specs as jit returns them.)"""
    out = str(tmp_path / "out.json")
    for status, log in run_pair("steps_worker.py", out):
        assert status == 0, log[-3000:]
    got = json.load(open(out))
    assert got["loss_finite"]
    counts = got["counts"]
    assert counts[0] >= 2 and counts == [counts[0]] * 4, counts  # logps and grpo, compiled once each
