"""Host memory of rollouts on CPU: glibc's default malloc vs `hostmem.tune_malloc()`.

Each side runs in its own fresh process (malloc settings are per process): the demo's
SmolLM2-135M policy (configs/demo.py, BM25 over the shipped corpus) rolls out `--rounds`
greedy batches of `--rows` dev questions. Reported per side: the peak resident set
(ru_maxrss), the resident set at the end, and the bytes of live JAX arrays at the end (what
the run actually holds: params, reference, AdamW moments, the few-row view of the weights).
Prints the ratios tuned / default.

    python benchmarks/host_memory.py [--rows 4] [--rounds 3]
"""
import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, resource, sys
tuned = sys.argv[1] == "tuned"
if tuned:
    from searche1_jax.hostmem import tune_malloc
    assert tune_malloc()
import jax
from searche1_jax.config import from_config_dict, load_config_file
from searche1_jax.data.qa import read_examples
from searche1_jax.train.rollouts import greedy_em
from searche1_jax.train.setup import Experiment
cd = load_config_file("configs/demo.py"); cd.log.trajectory_groups = 0
c = from_config_dict(cd)
exp = Experiment(c); state = exp.initial_state()
rows, rounds = int(sys.argv[2]), int(sys.argv[3])
examples = read_examples(c.data.dev)[:rows]
for _ in range(rounds):
    greedy_em(exp.agent, exp.policy(state.params, 0), examples, batch=rows)
print("RESULT", json.dumps({
    "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
    "end_gb": int(open("/proc/self/statm").read().split()[1]) * 4096 / 1e9,
    "live_gb": sum(a.nbytes for a in jax.live_arrays()) / 1e9}))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    res = {}
    for side in ("default", "tuned"):
        out = subprocess.run([sys.executable, "-c", CHILD, side, str(args.rows), str(args.rounds)], cwd=root,
                             env=env, capture_output=True, text=True, check=True)
        res[side] = json.loads(next(x for x in out.stdout.splitlines() if x.startswith("RESULT"))[7:])
    print(f"{args.rounds} greedy rollouts of {args.rows} dev questions, SmolLM2-135M (configs/demo.py)")
    print(f"{'':10s} {'peak RSS':>10s} {'end RSS':>10s} {'live arrays':>12s}")
    for side, r in res.items():
        print(f"{side:10s} {r['peak_gb']:9.2f}G {r['end_gb']:9.2f}G {r['live_gb']:11.2f}G")
    d, t = res["default"], res["tuned"]
    print(f"tuned / default: peak {t['peak_gb'] / d['peak_gb']:.2f}x, end {t['end_gb'] / d['end_gb']:.2f}x; "
          f"RSS above live arrays at the end: {d['end_gb'] - d['live_gb']:.2f} G -> {t['end_gb'] - t['live_gb']:.2f} G")


if __name__ == "__main__":
    main()
