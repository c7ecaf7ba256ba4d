"""The alternating loop end to end on the tiny config: metrics, checkpoints, kill and resume."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAST = ["--config.grpo.steps_per_round=3", "--config.grpo.questions_per_step=2",
        "--config.grpo.mini_batch=2", "--config.grpo.micro_batch=2", "--config.rollout.group_size=2",
        "--config.ofsd.questions=2",
        "--config.ofsd.group_size=2", "--config.rollout.max_response_tokens=96",
        "--config.rollout.max_turns=1", "--config.ofsd.mini_batch=2"]


def run_main(workdir, extra=(), **popen):
    cmd = [sys.executable, "-m", "searche1_jax.main", f"--config={ROOT}/configs/tiny.py",
           f"--workdir={workdir}", *FAST, *extra]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **popen)


def final_arrays(workdir):
    import orbax.checkpoint as ocp
    ckpt = os.path.join(workdir, "checkpoints")
    latest = max(int(d) for d in os.listdir(ckpt) if d.isdigit())
    tree = ocp.StandardCheckpointer().restore(os.path.join(ckpt, str(latest), "state"))
    meta = json.load(open(os.path.join(ckpt, str(latest), "meta", "metadata")))
    return tree, meta


def test_kill_and_resume_equals_uninterrupted_run(tmp_path):
    ref_dir, killed_dir = str(tmp_path / "ref"), str(tmp_path / "killed")
    ref = run_main(ref_dir)
    out, _ = ref.communicate(timeout=900)
    assert ref.returncode == 0, out[-3000:]
    rows = [json.loads(line) for line in open(os.path.join(ref_dir, "metrics.jsonl"))]
    assert [r["step"] for r in rows if r["phase"] == "grpo"] == [1, 2, 3]
    assert [r["phase"] for r in rows][-1] == "ofsd"
    for key in ("reward", "entropy", "clip_frac", "kl_ref", "response_length", "searches", "tokens_per_s",
                "rollout_row_steps_per_token", "rollout_prefill_tokens_per_question", "rollout_decode_compiles",
                "rollout_decode_s", "rollout_host_s"):
        assert key in rows[0], key
    for r in rows:  # every row: the process's resident memory after it (a tiny model: under 8 GB)
        assert 0.1 < r["host_rss_gb"] <= r["host_peak_rss_gb"] + 0.01 < 8, r
    # mini_batch counts trajectories (Search-R1's ppo_mini_batch_size): 2 questions x G=2 = 4
    # trajectories a step / mini-batch 2 = 2 updates a step, each at the step's lr (no warm-up:
    # floor(0.285 x 3 steps) = 0)
    grpo = [r for r in rows if r["phase"] == "grpo"]
    assert [r["updates"] for r in grpo] == [2, 2, 2]
    assert all(abs(r["lr"] - 1e-3) < 1e-9 for r in grpo)

    # kill -9 right after the first step's checkpoint is on disk, then restart; this run keeps its
    # reference and AdamW's state parked on disk between steps (config.train.reference_resident
    # and optimizer_resident off), so the final params' equality also says the parked reference
    # and optimiser state give the resident ones' updates, bit for bit
    parked = ["--config.train.reference_resident=False", "--config.train.optimizer_resident=False"]
    proc = run_main(killed_dir, parked)
    first = os.path.join(killed_dir, "checkpoints", "1")  # index 0 = after step 1, 1 = after step 2
    deadline = time.time() + 900
    while not os.path.isdir(first) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = run_main(killed_dir, parked)
    out, _ = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, out[-3000:]
    assert "resumed from step" in out

    a, meta_a = final_arrays(ref_dir)
    b, meta_b = final_arrays(killed_dir)
    assert meta_a["round"] == meta_b["round"] == 1 and a["step"] == b["step"] == 3
    assert meta_a["data"] == meta_b["data"]
    for k in a["params"]:
        np.testing.assert_allclose(np.asarray(b["params"][k]), np.asarray(a["params"][k]), atol=1e-6, err_msg=k)
    # the reference is the initial model, never written into a checkpoint: rebuilt at a restart
    # when resident; parked, written once beside the checkpoints and read back
    assert meta_a["reference"] == "initial" and meta_b["reference"] == "saved"
    assert a["ref_params"] == b["ref_params"] == {}
    assert meta_a["reference_fingerprint"] == meta_b["reference_fingerprint"]
    assert not os.path.exists(os.path.join(ref_dir, "reference"))
    assert os.path.isdir(os.path.join(killed_dir, "reference"))
    # and training did something: the final params are not the reference (per-parameter sums)
    final = {k: [float(np.abs(v).sum()), float(np.square(v.astype(np.float64)).sum())] for k, v in a["params"].items()}
    assert any(not np.allclose(final[k], meta_a["reference_fingerprint"][k], rtol=1e-5) for k in final)


def test_uneven_batch_geometry_is_refused(tmp_path):
    proc = run_main(str(tmp_path), extra=["--config.grpo.micro_batch=3"])
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert "must be a multiple of config.grpo.micro_batch (3)" in out


def test_warm_start_then_rl_with_dev_evals(tmp_path):
    """Phase sft before the first GRPO step: its losses fall, then the warm policy becomes the
    reference (a GRPO step at lr 0 leaves params == ref_params); dev EM rows base / warm_start /
    final are written once, also across a restart of the finished run."""
    from searche1_jax.config import DEMO_DIR
    workdir = str(tmp_path / "sft")
    extra = ["--config.sft.enabled=True", f"--config.sft.contexts={DEMO_DIR}/contexts.json",
             "--config.sft.questions=16", "--config.sft.steps=3", "--config.sft.batch=4",
             "--config.sft.micro_batch=2", "--config.sft.lr=3e-3", "--config.sft.eval_dev=4",
             "--config.rollout.max_turn_tokens=48", "--config.rollout.max_response_tokens=320",
             "--config.grpo.steps_per_round=1", "--config.ofsd.enabled=False",
             "--config.train.warmup_ratio=1.0",  # floor(1.0 x 1 step) = 1: GRPO step 0 runs at lr 0
             "--config.train.free_programs=True"]  # as the demo: programs dropped, executables only
    proc = run_main(workdir, extra)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:]
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [(r["phase"], r.get("label")) for r in rows] == [
        ("eval", "base"), ("sft", None), ("sft", None), ("sft", None), ("eval", "warm_start"),
        ("grpo", None), ("eval", "final")]
    sft = [r["sft_loss"] for r in rows if r["phase"] == "sft"]
    assert sft[-1] < sft[0] and all(np.isfinite(sft))
    lrs = [r["lr"] for r in rows if r["phase"] == "sft"]
    np.testing.assert_allclose(lrs, [1.5e-3, 3e-3, 3e-3], rtol=1e-6)  # 2 warm-up steps
    for r in rows:
        if r["phase"] == "eval":
            assert r["dev_n"] == 4 and r["dev_em_lo"] <= r["dev_em"] <= r["dev_em_hi"]
            # an eval's rollouts carry the engine's counters, as a GRPO step's do
            assert r["rollout_decode_calls"] >= 1 and r["rollout_prefill_tokens_per_question"] > 0
            assert 0 < r["rollout_decode_s"] < r["eval_s"] and r["rollout_row_steps_per_token"] >= 1.0
    tree, meta = final_arrays(workdir)
    assert meta["phase"] == "grpo" and meta["sft_step"] == 3 and meta["evals"] == ["base", "warm_start", "final"]
    # the reference is the warm-started policy, saved once beside the checkpoints, never in them
    assert meta["reference"] == "saved" and tree["ref_params"] == {}
    import orbax.checkpoint as ocp
    ref = ocp.StandardCheckpointer().restore(os.path.join(workdir, "reference"))
    assert sorted(ref) == sorted(tree["params"])
    for k in tree["params"]:
        np.testing.assert_array_equal(np.asarray(tree["params"][k]), np.asarray(ref[k]), err_msg=k)
    again = run_main(workdir, extra)
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out[-3000:]
    assert len(open(os.path.join(workdir, "metrics.jsonl")).readlines()) == len(rows)
