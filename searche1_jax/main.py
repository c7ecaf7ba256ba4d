"""Train Search-E1: alternating GRPO and OFSD rounds.

    python -m searche1_jax.main                                  # the demo (configs/demo.py)
    python -m searche1_jax.main --config=configs/qwen3b.py --workdir=/ckpt/run1 \
        --config.model.checkpoint=/models/Qwen2.5-3B-Instruct --config.train.lr=2e-6

A run resumes from its workdir by itself. Metrics: WORKDIR/metrics.jsonl (plot with
`python -m searche1_jax.plot WORKDIR/metrics.jsonl`).
"""
from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEMO = os.path.join(_ROOT, "configs", "demo.py")

config_flags.DEFINE_config_file("config", _DEMO, "experiment config file (ml_collections)",
                                lock_config=True)
flags.DEFINE_string("workdir", "runs/demo", "checkpoints, metrics.jsonl and TensorBoard logs")
flags.DEFINE_string("coordinator", "", "jax.distributed coordinator host:port (multi-process runs); "
                    "'auto' lets jax detect the cluster (Cloud TPU pods, Slurm, Open MPI)")
flags.DEFINE_integer("num_processes", 1, "number of processes (jax.distributed)")
flags.DEFINE_integer("process_id", 0, "this process's index (jax.distributed)")
FLAGS = flags.FLAGS


def _config_keys(config, prefix: str = "") -> list[str]:
    keys = []
    for k, v in config.items():
        keys.append(prefix + k)
        if hasattr(v, "items"):
            keys += _config_keys(v, prefix + k + ".")
    return keys


def check_overrides(argv: list[str]) -> None:
    """Refuse `--config.KEY=...` overrides that name no field, before absl's traceback does.

    Names the unknown key and the closest valid ones (difflib), e.g. train.learning_rate ->
    train.lr. Loads the same config file absl will load (default: configs/demo.py).
    """
    import difflib

    from searche1_jax.config import load_config_file

    path, overrides = _DEMO, []
    for arg in argv[1:]:
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        elif arg.startswith("--config."):
            overrides.append(arg[len("--config."):].split("=", 1)[0])
    if not overrides:
        return
    if not os.path.isfile(path.partition(":")[0]):
        return  # absl reports a missing config file itself
    config = load_config_file(path)
    valid = _config_keys(config)
    for key in overrides:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
            parent = key.rpartition(".")[0]
            if not close and parent:
                close = [k for k in valid if k.startswith(parent + ".")][:8]
            hint = f"; did you mean {' or '.join('--config.' + c for c in close)}?" if close else ""
            file = path.partition(":")[0]
            raise SystemExit(f"error: unknown config key --config.{key} (not a field of {file}){hint}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; use --config.KEY=VALUE overrides")
    from searche1_jax.hostmem import tune_malloc
    tune_malloc()  # before JAX allocates: freed buffers go back to the OS
    import jax
    from absl import logging
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    if FLAGS.coordinator == "auto":
        jax.distributed.initialize()
    elif FLAGS.coordinator:
        jax.distributed.initialize(coordinator_address=FLAGS.coordinator,
                                   num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
    from searche1_jax.config import from_config_dict
    from searche1_jax.train.checkpoint import check_workdir
    from searche1_jax.retrieval.client import RetrieverDownError, RetrieverError
    from searche1_jax.train.data_check import InvalidDataError
    from searche1_jax.train.geometry import GeometryError
    from searche1_jax.train.loop import Trainer
    from searche1_jax.train.multihost import ProcessFailed
    from searche1_jax.train.preemption import Preempted
    from searche1_jax.train.setup import Experiment

    try:  # every field checked before anything is built, each error naming its field
        config = from_config_dict(FLAGS.config)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    from searche1_jax.train.compile_cache import cache_dir, use_compilation_cache
    from searche1_jax.train.paths import workdir_path
    check_workdir(FLAGS.workdir)
    use_compilation_cache(cache_dir(config.train.compilation_cache_dir, FLAGS.workdir))  # before any jit
    print(f"searche1_jax: {jax.device_count()} devices ({jax.devices()[0].platform}), "
          f"workdir {workdir_path(FLAGS.workdir)}", flush=True)  # a gs:// URI stays one
    try:
        exp = Experiment(config)
    except (InvalidDataError, RetrieverDownError, GeometryError) as e:  # each names the file:line, URL or field
        raise SystemExit(f"error: {e}") from None
    try:
        state = Trainer(exp, FLAGS.workdir).run()
    except Preempted as p:  # SIGTERM: the state is saved; the same command resumes it
        print(f"preempted: saved at GRPO step {p.state.step} (round {p.state.meta['round']}, "
              f"{p.state.meta['phase']}); rerun the same command to resume", flush=True)
        return 0
    except ProcessFailed as e:  # every process raises this same error at the same point (multihost.py)
        if e.__context__ is not None and not isinstance(e.__context__, RetrieverError):
            raise  # this process's own unexpected error: its traceback says where it came from
        raise SystemExit(f"error: {e}") from None
    print(f"done: {state.step} GRPO steps, {state.meta['round']} rounds; metrics in "
          f"{workdir_path(FLAGS.workdir) / 'metrics.jsonl'}", flush=True)
    if jax.process_index() == 0:
        summarize(FLAGS.workdir)


def summarize(workdir: str) -> None:
    """Print the run's dev EM at each evaluation and write its curves (metrics.png; local
    directories and bucket URIs alike)."""
    import tempfile

    from searche1_jax.plot import plot, read_jsonl
    from searche1_jax.train.paths import workdir_path
    root = workdir_path(workdir)
    if not (root / "metrics.jsonl").exists():
        return
    rows = read_jsonl(str(root / "metrics.jsonl"))
    evals = [r for r in rows if r.get("phase") == "eval" and "dev_em" in r]
    if evals:
        print("dev EM (greedy, 95% CI): " + " -> ".join(
            f"{r['label']} {r['dev_em']:.3f} ({r['dev_em_lo']:.3f}-{r['dev_em_hi']:.3f})" for r in evals), flush=True)
    try:
        png, pages = root / "metrics.png", root / "trajectories" / "index.html"
        with tempfile.TemporaryDirectory() as tmp:  # matplotlib writes local files: copied where the run lives
            plot(rows, os.path.join(tmp, "metrics.png"))
            png.write_bytes(open(os.path.join(tmp, "metrics.png"), "rb").read())
        print(f"curves: {png}" + (f"; trajectories: {pages}" if pages.exists() else ""), flush=True)
    except ValueError:  # nothing plottable yet
        pass


if __name__ == "__main__":
    check_overrides(sys.argv)
    sys.exit(app.run(main))
