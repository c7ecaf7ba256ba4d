"""Multi-host data path (issue 20 item 6): `to_local` builds no jit per call, so XLA compiles
stay flat over steps, and each process gets its own rows back (2 processes x 2 CPU devices)."""
import json
import os
import subprocess
import sys

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
