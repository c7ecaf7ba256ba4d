"""benchmarks/learning.py's arm set-up: an arm starts from a copy of the warm start's workdir."""
from __future__ import annotations

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _learning():
    spec = importlib.util.spec_from_file_location("learning_bench", os.path.join(ROOT, "benchmarks", "learning.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def _warm(tmp_path):
    warm = tmp_path / "warm_start"
    _write(warm / "checkpoints" / "16" / "state", "ckpt")
    _write(warm / "reference" / "params", "ref")
    _write(warm / "metrics.jsonl", '{"step": 0}\n')
    _write(warm / "evals" / "base.jsonl", "{}\n")
    return str(warm)


def test_an_arm_gets_the_checkpoints_and_the_reference_they_name(tmp_path):
    warm, arm = _warm(tmp_path), tmp_path / "grpo"
    _learning().branch(warm, str(arm))
    assert (arm / "checkpoints" / "16" / "state").read_text() == "ckpt"
    assert (arm / "reference" / "params").read_text() == "ref"  # the saved-once reference (issue 20)
    assert (arm / "metrics.jsonl").read_text() == '{"step": 0}\n'
    assert (arm / "evals" / "base.jsonl").exists()
    assert not (arm / "reference.partial").exists() and not (arm / "checkpoints.partial").exists()


def test_an_arm_branched_without_its_reference_gets_it_and_keeps_its_own_checkpoints(tmp_path):
    warm, arm = _warm(tmp_path), tmp_path / "grpo"
    _write(arm / "checkpoints" / "18" / "state", "own")  # branched before the reference moved out
    _learning().branch(warm, str(arm))
    assert (arm / "reference" / "params").read_text() == "ref"
    assert sorted(os.listdir(arm / "checkpoints")) == ["18"]  # resumes from its own, not overwritten
