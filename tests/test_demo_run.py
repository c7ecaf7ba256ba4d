"""The README's first command: the demo config end to end (real SmolLM2-135M, shipped corpus).

Slow (about 19 min on a 2-core CPU), so CI does not run it: `pytest -m slow`. It shows
learning: greedy dev EM of the base model (0: it cannot follow the protocol), after the
supervised warm start, and after the RL phases; GRPO steps search; OFSD finds students; and the
run's peak resident memory is bounded.
"""
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_demo_learns_end_to_end_and_resumes(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    for name in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):
        env.pop(name, None)  # the tests' shared cache (conftest.py): the demo runs as the README's command does
    cmd = [sys.executable, "-m", "searche1_jax.main", f"--workdir={tmp_path}"]
    log = tmp_path / "demo.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, text=True)
        timer = threading.Timer(2400, proc.kill)  # a hung run fails the test instead of hanging it
        timer.start()
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own resource usage
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    out = open(log).read()
    assert proc.returncode == 0, out[-4000:]
    peak_gb = usage.ru_maxrss * 1024 / 1e9  # KiB on Linux
    # issue 20's goal, 4 GB: measured 3.89 GB (bytes / 1e9) on 13da93b with AdamW's state and the
    # reference parked between their uses and each program's executable alone (5.71 GB before)
    assert peak_gb < 4.1, f"demo peak RSS {peak_gb:.2f} GB"
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    # every row records the process's memory; the run's peak is the last row's (within a page)
    assert all(0 < r["host_rss_gb"] <= r["host_peak_rss_gb"] + 0.01 for r in rows)
    assert rows[-1]["host_peak_rss_gb"] <= peak_gb + 0.01
    assert [(r["phase"], r.get("label")) for r in rows] == (
        [("eval", "base")] + [("sft", None)] * 8 + [("eval", "warm_start"), ("grpo", None), ("grpo", None),
                                                    ("ofsd", None), ("eval", "final")])
    ev = {r["label"]: r for r in rows if r["phase"] == "eval"}
    assert ev["base"]["dev_em"] == 0.0 and ev["base"]["dev_n"] == 40 and ev["base"]["dev_n_open"] > 0
    # the warm start's gain is beyond its 95% interval; the RL phases keep it
    assert ev["warm_start"]["dev_em_lo"] > ev["base"]["dev_em"]
    assert ev["final"]["dev_em"] >= ev["warm_start"]["dev_em_lo"] and ev["final"]["dev_searches"] > 0
    sft = [r["sft_loss"] for r in rows if r["phase"] == "sft"]
    assert sft[-1] < 0.5 * sft[0]
    grpo = [r for r in rows if r["phase"] == "grpo"]
    for r in grpo:
        assert 0.0 <= r["reward"] <= 1.0 and r["searches"] > 0 and r["tokens_per_s"] > 0
    assert max(r["reward"] for r in grpo) > 0
    ofsd = rows[-2]
    assert ofsd["ofsd_students"] > 0 and np.isfinite(ofsd["ofsd_loss"])
    assert "done: 2 GRPO steps, 1 rounds" in out
    assert os.path.exists(tmp_path / "trajectories" / "index.html")
    answers = [json.loads(line) for line in open(tmp_path / "evals" / "final.jsonl")]  # one row per dev question
    assert len(answers) == 40 and np.mean([a["em"] for a in answers]) == pytest.approx(ev["final"]["dev_em"])
    # a finished run started again resumes from its last checkpoint and does nothing more
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from step 2" in again.stdout
    assert len(open(tmp_path / "metrics.jsonl").readlines()) == len(rows)
