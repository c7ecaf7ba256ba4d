"""Run a hyper-parameter sweep as vmapped populations.

    python -m searche1_jax.sweep --config=configs/tiny.py \
        --sweep="seed=0,1,2,3;train.lr=1e-6,3e-6" --workdir=runs/sweep
    # structural fields (shapes / code) run as separate populations, one after another:
    python -m searche1_jax.sweep --config=configs/tiny.py \
        --sweep="seed=0,1;ofsd.rendering=queries,no_docs" --workdir=runs/sweep2

Writes WORKDIR/popK/{metrics.jsonl,checkpoints/}, WORKDIR/summary.{md,json} and
WORKDIR/curves.png. Re-running the same command resumes.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

config_flags.DEFINE_config_file("config", os.path.join(_ROOT, "configs", "tiny.py"),
                                "experiment config file (ml_collections)", lock_config=True)
flags.DEFINE_string("sweep", "", "fields and values: 'seed=0,1,2,3;train.lr=1e-6,3e-6'")
flags.DEFINE_string("population", "auto", "'auto' (every numeric hyper-parameter in the sweep is "
                    "vmapped) or a comma list of the fields to vmap")
flags.DEFINE_string("workdir", "runs/sweep", "one sub-directory per population, summary and plot")
flags.DEFINE_integer("dev_limit", 16, "dev questions for the final greedy EM (0: skip)")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    from searche1_jax.hostmem import tune_malloc
    tune_malloc()  # before JAX allocates: freed buffers go back to the OS
    import jax
    from absl import logging
    logging.set_verbosity(logging.WARNING)
    from searche1_jax.sweep.run import run_command

    print(f"searche1_jax.sweep: {jax.device_count()} devices ({jax.devices()[0].platform}), "
          f"workdir {os.path.abspath(FLAGS.workdir)}", flush=True)
    return run_command(FLAGS.config, FLAGS.sweep, FLAGS.workdir, population=FLAGS.population,
                       dev_limit=FLAGS.dev_limit)


if __name__ == "__main__":
    sys.exit(app.run(main))
