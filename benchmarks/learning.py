"""The paper's claim in miniature: warm start only vs GRPO-only vs GRPO + OFSD, from the same
warm start and the same seeds, on the real SmolLM2-135M-Instruct with BM25.

    python benchmarks/learning.py                      # ~75-90 min on 2 quiet CPU cores
    python benchmarks/learning.py --out runs/learning --rounds 2 --steps_per_round 3 --questions 4 --lr 1e-5 \
        --skip_flat_groups 0 --max_rows 8 --ofsd_questions 4   # runs 1-2

Every arm is a real `python -m searche1_jax.main --config=configs/demo.py` run with overrides,
in its own workdir under --out, so a killed benchmark resumes where it stopped when run again
(finished runs only re-read their metrics):

1. `warm_start/`: the demo's supervised warm start (config.sft), with greedy dev EM before and
   after it; no RL round.
2. `grpo/`, `grpo_ofsd/`: each starts from a copy of the warm start's checkpoint and runs the
   same number of GRPO steps (rounds x steps_per_round) with the same config and seed; the
   second also runs an OFSD round after each GRPO round (alternating, METHOD §3). Both end with
   greedy dev EM on the same questions.

Data: with ../shared/data (or --shared), a larger selection by the shipped demo's own rule
(`scripts/make_demo_data.py --train N --dev M`: its first 300 / 50 items are the shipped ones),
so dev EM is measured on more held-out questions than the demo's 50; without it, the shipped
demo data. Reported (table + PNG, written to --out and printed): dev EM with bootstrap 95%
intervals, overall and on the questions whose answer is not yes/no; what the policy does on dev
(answered, searches, sampled tokens per question); GRPO's reward, groups with a signal (mixed
rewards), clip fraction, KL to the reference and searches / sampled tokens per trajectory by
step; OFSD's students and loss.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ARMS = {"grpo": False, "grpo_ofsd": True}  # arm -> OFSD rounds on


def prepare_data(args) -> dict[str, str]:
    """{train, dev, corpus, contexts} paths: a larger selection from shared data, or the shipped demo."""
    if args.shared and os.path.isdir(args.shared):
        out = os.path.join(args.out, "data")
        if not os.path.exists(os.path.join(out, "contexts.json")):
            subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_demo_data.py"),
                            "--shared", args.shared, "--out", out, "--train", str(args.train),
                            "--dev", str(args.dev)], check=True)
    else:
        print(f"no shared data at {args.shared!r}: the shipped demo data (50 dev questions)", flush=True)
        out = os.path.join(ROOT, "searche1_jax", "assets", "demo")
    return {k: os.path.join(out, f) for k, f in
            (("train", "train.jsonl"), ("dev", "dev.jsonl"), ("corpus", "corpus.jsonl"), ("contexts", "contexts.json"))}


def overrides(args, data: dict) -> list[str]:
    """The settings every run shares (on top of configs/demo.py)."""
    o = {"data.train": data["train"], "data.dev": data["dev"], "retrieval.corpus": data["corpus"],
         "sft.contexts": data["contexts"], "sft.eval_dev": args.eval_dev,
         "train.rounds": args.rounds, "grpo.steps_per_round": args.steps_per_round,
         "grpo.questions_per_step": args.questions, "rollout.group_size": args.group_size,
         "grpo.mini_batch": args.mini_batch, "train.lr": args.lr,
         "ofsd.questions": args.ofsd_questions, "ofsd.group_size": args.group_size,
         "checkpoint.every_steps": args.steps_per_round, "train.seed": args.seed, "sft.steps": args.sft_steps,
         "grpo.skip_flat_groups": bool(args.skip_flat_groups), "rollout.max_rows": args.max_rows}
    return [f"--config.{k}={v}" for k, v in o.items()]


def run_main(workdir: str, extra: list[str]) -> float:
    """One `searche1_jax.main` run (resumes from its workdir); its output goes to workdir/run.log
    and to stdout. -> wall seconds."""
    os.makedirs(workdir, exist_ok=True)
    cmd = [sys.executable, "-m", "searche1_jax.main", f"--config={os.path.join(ROOT, 'configs', 'demo.py')}",
           f"--workdir={workdir}", *extra]
    t0 = time.time()
    with open(os.path.join(workdir, "run.log"), "a", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log.write(line)
            log.flush()
            if not line.startswith(("I1", "W1")):  # absl INFO/WARNING lines of libraries
                sys.stdout.write(f"[{os.path.basename(workdir)}] {line}")
                sys.stdout.flush()
        if proc.wait():
            raise SystemExit(f"error: {' '.join(cmd)} failed (exit {proc.returncode}); see {workdir}/run.log")
    return time.time() - t0


def read_rows(workdir: str) -> list[dict]:
    """metrics.jsonl rows; null (a NaN metric, e.g. the loss of an OFSD round without students) -> nan."""
    path = os.path.join(workdir, "metrics.jsonl")
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [{k: float("nan") if v is None else v for k, v in r.items()} for r in rows]


def branch(warm: str, workdir: str) -> None:
    """Start an arm from the warm start: its checkpoints (the last is the warm-started policy,
    phase grpo), the reference policy the warm start saved once beside them (`reference/`, which
    its checkpoints name), and its metrics rows (base / warm-start evals, the warm-start losses)."""
    ref = os.path.join(warm, "reference")
    if os.path.isdir(ref) and not os.path.exists(os.path.join(workdir, "reference")):
        os.makedirs(workdir, exist_ok=True)
        part = os.path.join(workdir, "reference.partial")
        shutil.rmtree(part, ignore_errors=True)
        shutil.copytree(ref, part)
        os.rename(part, os.path.join(workdir, "reference"))
    if os.path.exists(os.path.join(workdir, "checkpoints")):
        return  # started before: the run resumes from its own checkpoints
    os.makedirs(workdir, exist_ok=True)
    part = os.path.join(workdir, "checkpoints.partial")  # a copy cut short (disk full, killed) is redone
    shutil.rmtree(part, ignore_errors=True)
    shutil.copytree(os.path.join(warm, "checkpoints"), part)
    os.rename(part, os.path.join(workdir, "checkpoints"))
    shutil.copy(os.path.join(warm, "metrics.jsonl"), os.path.join(workdir, "metrics.jsonl"))
    if os.path.isdir(os.path.join(warm, "evals")):
        shutil.copytree(os.path.join(warm, "evals"), os.path.join(workdir, "evals"))


def dev_answers(workdir: str, label: str) -> dict[str, dict] | None:
    """{question id: row} of an eval's per-question file (evals/LABEL.jsonl), None if absent."""
    path = os.path.join(workdir, "evals", f"{label}.jsonl")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return {r["id"]: r for r in map(json.loads, f) if r}


def paired(a: dict | None, b: dict | None, open_only: bool = False) -> str:
    """EM(a) - EM(b) on the questions both evaluated, with a bootstrap 95% interval of the mean
    per-question difference: tighter than comparing two separate intervals (same questions)."""
    import numpy as np

    from searche1_jax.stats import bootstrap_ci
    from searche1_jax.train.loop import is_yes_no
    if not a or not b:
        return "n/a"
    ids = [i for i in a if i in b and not (open_only and is_yes_no(a[i]["golden_answers"]))]
    d = np.asarray([a[i]["em"] - b[i]["em"] for i in ids], np.float64)
    lo, hi = bootstrap_ci(d)
    return f"{d.mean():+.3f} [{lo:+.3f}, {hi:+.3f}] (n={len(d)}; {int((d > 0).sum())} won, {int((d < 0).sum())} lost)"


def evals(rows: list[dict]) -> dict[str, dict]:
    return {r["label"]: r for r in rows if r.get("phase") == "eval"}


def mean(xs) -> float:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return sum(xs) / len(xs) if xs else float("nan")


def summarize(out: str, args, walls: dict) -> str:
    warm = read_rows(os.path.join(out, "warm_start"))
    ev = evals(warm)
    runs = {arm: read_rows(os.path.join(out, arm)) for arm in ARMS}
    table = [("base model", ev.get("base"), None), ("warm start only", ev.get("warm_start"), None)]
    table += [(name, evals(runs[arm]).get("final"), runs[arm])
              for arm, name in (("grpo", "GRPO only"), ("grpo_ofsd", "GRPO + OFSD"))]

    def ci(r, k):
        return f"{r[k]:.3f} [{r[k + '_lo']:.3f}, {r[k + '_hi']:.3f}]"

    n, n_open = int(ev["warm_start"]["dev_n"]), int(ev["warm_start"]["dev_n_open"])
    lines = [f"| policy | dev EM (n={n}) | not yes/no (n={n_open}) | answered | searches | sampled tokens "
             "| GRPO reward (first 3 -> last 3 steps) | mixed groups | rollout searches / tokens per traj. "
             "| OFSD students |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r, rows in table:
        if r is None:
            continue
        grpo = [x for x in rows if x.get("phase") == "grpo"] if rows else []
        ofsd = [x for x in rows if x.get("phase") == "ofsd"] if rows else []
        rw = (f"{mean(x['reward'] for x in grpo[:3]):.3f} -> {mean(x['reward'] for x in grpo[-3:]):.3f}"
              if grpo else "")
        mixed = f"{mean(x.get('mixed_groups') for x in grpo):.2f}" if grpo else ""
        traj = (f"{mean(x['searches'] for x in grpo):.2f} / {mean(x['sampled_tokens'] for x in grpo):.0f}"
                if grpo else "")
        students = f"{sum(x['ofsd_students'] for x in ofsd):.0f} in {len(ofsd)} rounds" if ofsd else ""
        lines.append(f"| {name} | {ci(r, 'dev_em')} | {ci(r, 'dev_em_open')} | {r['dev_answered']:.2f} | "
                     f"{r['dev_searches']:.2f} | {r.get('dev_sampled_tokens', float('nan')):.0f} | {rw} | {mixed} | "
                     f"{traj} | {students} |")
    warm_ans = dev_answers(os.path.join(out, "warm_start"), "warm_start")
    final = {arm: dev_answers(os.path.join(out, arm), "final") for arm in ARMS}
    lines.append("")
    lines.append("Paired differences in dev EM (same questions; bootstrap 95% interval of the mean difference):")
    lines.append("")
    lines.append("| comparison | all | not yes/no |")
    lines.append("|---|---|---|")
    for name, a, b in (("GRPO only - warm start", final["grpo"], warm_ans),
                       ("GRPO + OFSD - warm start", final["grpo_ofsd"], warm_ans),
                       ("GRPO + OFSD - GRPO only", final["grpo_ofsd"], final["grpo"])):
        lines.append(f"| {name} | {paired(a, b)} | {paired(a, b, open_only=True)} |")
    lines.append("")
    cols = "reward / mixed / updates / clip / kl_ref / entropy"
    lines.append("| GRPO step | " + " | ".join(f"{a} {cols}" for a in ARMS) + " |")
    lines.append("|---|" + "---|" * len(ARMS))
    per = {arm: [x for x in runs[arm] if x.get("phase") == "grpo"] for arm in ARMS}
    for s in range(max(len(v) for v in per.values())):
        cells = []
        for arm in ARMS:
            x = per[arm][s] if s < len(per[arm]) else None
            cells.append("" if x is None else
                         f"{x['reward']:.3f} / {x.get('mixed_groups', float('nan')):.2f} / "
                         f"{x.get('updates', float('nan')):.0f} / "
                         f"{x.get('clip_frac', float('nan')):.3f} / {x.get('kl_ref', float('nan')):.2e} / "
                         f"{x.get('entropy', float('nan')):.3f}")
        lines.append(f"| {s + 1} | " + " | ".join(cells) + " |")
    ofsd = [x for x in runs["grpo_ofsd"] if x.get("phase") == "ofsd"]
    if ofsd:
        lines.append("")
        lines.append("OFSD rounds (students, loss, teacher's searches / sampled tokens per trajectory): " + "; ".join(
            f"{x['ofsd_students']:.0f}, {x['ofsd_loss']:.4f}, {x.get('teacher_searches', float('nan')):.2f} / "
            f"{x.get('teacher_sampled_tokens', float('nan')):.0f}" for x in ofsd))
    if walls:
        lines.append("")
        lines.append("wall time this invocation: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in walls.items()))
    text = "\n".join(lines)
    with open(os.path.join(out, "learning.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    plot(out, table, per)
    return text


def plot(out: str, table, per: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    ax = axes[0][0]
    names = [name for name, r, _ in table if r is not None]
    rows = [r for _, r, _ in table if r is not None]
    for j, (key, label) in enumerate((("dev_em", "all"), ("dev_em_open", "not yes/no"))):
        xs = [i + (j - 0.5) * 0.35 for i in range(len(rows))]
        ys = [r[key] for r in rows]
        err = [[y - r[key + "_lo"] for y, r in zip(ys, rows)], [r[key + "_hi"] - y for y, r in zip(ys, rows)]]
        ax.bar(xs, ys, width=0.35, yerr=err, capsize=3, label=label)
    ax.set_xticks(range(len(rows)), names, rotation=12)
    ax.set_title("greedy dev EM (95% bootstrap CI)")
    ax.legend()
    for ax, key, title in ((axes[0][1], "reward", "GRPO rollout reward"),
                           (axes[1][0], "searches", "searches per trajectory"),
                           (axes[1][1], "sampled_tokens", "sampled tokens per trajectory")):
        for arm, xs in per.items():
            ax.plot([x["step"] for x in xs], [x[key] for x in xs], marker="o", label=arm)
        ax.set_xlabel("GRPO step")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "learning.png"), dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "learning"))
    ap.add_argument("--shared", default=os.path.join(ROOT, "..", "shared", "data"))
    ap.add_argument("--train", type=int, default=900, help="training questions (shared data)")
    ap.add_argument("--dev", type=int, default=200, help="dev questions selected (shared data)")
    ap.add_argument("--eval_dev", type=int, default=120, help="dev questions evaluated greedily")
    ap.add_argument("--sft_steps", type=int, default=16,
                    help="warm-start updates (the demo's 8 left T = 1 samples right in ~7%% of rollouts)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps_per_round", type=int, default=2)
    ap.add_argument("--questions", type=int, default=16,
                    help="questions per GRPO step (runs 1-2 had 4: 0-1 groups with a reward spread a step)")
    ap.add_argument("--group_size", type=int, default=4)
    ap.add_argument("--mini_batch", type=int, default=4, help="trajectories per PPO update")
    ap.add_argument("--ofsd_questions", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-5,
                    help="RL lr (Search-R1's 1e-6 moves a 135M model by nothing in 12 steps; 1e-5 "
                         "in runs 1-2 clipped 0-0.4%% of tokens)")
    ap.add_argument("--skip_flat_groups", type=int, default=1,
                    help="1: update only on groups with a reward spread (config.grpo.skip_flat_groups)")
    ap.add_argument("--max_rows", type=int, default=32,
                    help="rows decoded at once (config.rollout.max_rows; the demo's 8 is for its memory)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arms", default=",".join(ARMS),
                    help="arms this invocation runs (two invocations with one arm each can share a machine)")
    ap.add_argument("--report_only", action="store_true", help="only summarise finished runs")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    walls = {}
    if not args.report_only:
        data = prepare_data(args)
        common = overrides(args, data)
        warm = os.path.join(args.out, "warm_start")
        walls["warm_start"] = run_main(warm, [*common, "--config.train.rounds=0"])
        unknown = set(args.arms.split(",")) - set(ARMS)
        if unknown:
            raise SystemExit(f"error: --arms {sorted(unknown)} unknown; arms: {', '.join(ARMS)}")
        for arm, ofsd in ARMS.items():
            if arm not in args.arms.split(","):
                continue
            wd = os.path.join(args.out, arm)
            branch(warm, wd)
            walls[arm] = run_main(wd, [*common, f"--config.ofsd.enabled={ofsd}"])
    if not all(os.path.exists(os.path.join(args.out, arm, "metrics.jsonl")) for arm in ARMS):
        print("an arm has not run yet: no report", flush=True)
        return 0
    text = summarize(args.out, args, walls)
    print(text)
    print(f"\ntable: {os.path.join(args.out, 'learning.md')}; plot: {os.path.join(args.out, 'learning.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
