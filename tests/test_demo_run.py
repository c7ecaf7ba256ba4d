"""The README's first command: the demo config end to end (real SmolLM2-135M, shipped corpus).

Slow (11 min, 13 GB peak RSS on a 2-core CPU), so CI does not run it: `pytest -m slow`.
"""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_demo_runs_end_to_end_and_resumes(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    cmd = [sys.executable, "-m", "searche1_jax.main", f"--workdir={tmp_path}"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [(r["phase"], r["step"]) for r in rows] == [("grpo", 1), ("grpo", 2), ("ofsd", 2)]
    for r in rows[:2]:
        assert 0.0 <= r["reward"] <= 1.0 and r["tokens_per_s"] > 0 and r["response_length"] > 0
    assert "done: 2 GRPO steps, 1 rounds" in out.stdout
    # a finished run started again resumes from its last checkpoint and does nothing more
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from step 2" in again.stdout
    assert len(open(tmp_path / "metrics.jsonl").readlines()) == 3
