"""One sweep end to end: every structural combination in turn, each as one vmapped population;
then the summary table and the learning-curve plot. Re-running the same sweep in the same
workdir resumes each population from its checkpoint (finished ones are not retrained)."""
from __future__ import annotations

import json
import os

import jax
import numpy as np

from searche1_jax.sweep.report import plot_curves, summarize_population, write_summary
from searche1_jax.sweep.spec import describe, parse_sweep, plan_sweep, with_overrides


def _check_workdir(workdir: str, identity: dict) -> None:
    path = os.path.join(workdir, "sweep.json")
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old != identity:
            raise ValueError(f"{workdir} holds a different sweep ({old['sweep']!r}, population "
                             f"{old['population']!r}); use another --workdir")
    else:
        with open(path, "w") as f:
            json.dump(identity, f, indent=1)


def run_sweep(config, sweep: str, workdir: str, *, population: str = "auto", dev_limit: int = 16,
              log=print) -> list[dict]:
    """Train every population of the sweep; returns the summary rows (one per member)."""
    from searche1_jax.train.loop import Trainer
    from searche1_jax.train.setup import Experiment

    plan = plan_sweep(parse_sweep(sweep, config), population, config)
    os.makedirs(workdir, exist_ok=True)
    _check_workdir(workdir, {"sweep": sweep, "population": population,
                             "config": json.loads(config.to_json_best_effort())})
    members = plan.members()
    pops = plan.populations()
    log(f"sweep: {len(pops)} population(s) x {len(members)} member(s); vmapped fields "
        f"{[a.field for a in plan.population] or 'none'}, structural {[a.field for a in plan.structural] or 'none'}")
    rows, curves = [], []
    for k, structural in enumerate(pops):
        pop_dir = os.path.join(workdir, f"pop{k}")
        base = with_overrides(config, structural)
        configs = [with_overrides(base, m) for m in members]
        names = [describe(m) for m in members]
        label = describe(structural) if structural else ""
        exp = Experiment(configs, population=True)
        log(f"population {k} ({label or 'base'}): {exp.layout.describe()}")
        trainer = Trainer(exp, pop_dir, names)
        state = trainer.run()
        final_path = os.path.join(pop_dir, "final.json")
        final = json.load(open(final_path)) if os.path.exists(final_path) else None
        if final is None or final["step"] != state.step:
            final = {"step": state.step, "dev_em": dev_em(exp, state, dev_limit)}
            with open(final_path, "w") as f:
                json.dump(final, f)
        pop_rows = summarize_population(k, pop_dir, names, members, structural, final["dev_em"])
        for r in pop_rows:
            r["structural_name"] = label
        rows.extend(pop_rows)
        curves.append((label, pop_dir, names))
        del exp, trainer, state
        jax.clear_caches()  # the next population compiles other shapes
    table = write_summary(rows, workdir)
    plot_curves(curves, os.path.join(workdir, "curves.png"))
    log(table)
    log(f"summary: {os.path.join(workdir, 'summary.md')}, curves: {os.path.join(workdir, 'curves.png')}")
    return rows


def run_command(config, sweep: str, workdir: str, *, population: str, dev_limit: int) -> int:
    """The sweep command's body: run_sweep, with its exit status (0 done or preempted, 2 bad input)."""
    import sys

    from searche1_jax.train.preemption import Preempted
    try:
        run_sweep(config, sweep, workdir, population=population, dev_limit=dev_limit,
                  log=lambda s: print(s, flush=True))
    except Preempted as p:  # SIGTERM: the population in training is saved; finished ones are kept
        print(f"preempted: saved at GRPO step {p.state.step} (round {p.state.meta['round']}, "
              f"{p.state.meta['phase']}); rerun the same command to resume the sweep", flush=True)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def dev_em(exp, state, limit: int) -> list[float | None]:
    """Greedy EM of each member on the first `limit` dev questions (None without a dev file)."""
    if not exp.config.data.dev or limit <= 0:
        return [None] * exp.n
    from searche1_jax.data.qa import read_examples
    from searche1_jax.train.rollouts import greedy_em
    examples = read_examples(exp.config.data.dev)[:limit]
    return [float(np.mean(greedy_em(exp.agent, exp.policy(state.params, i), examples)[0])) for i in range(exp.n)]
