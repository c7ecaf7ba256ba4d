"""Sweep summary: a table of every member (final reward, dev EM) as markdown and JSON, and a
PNG of the learning curves, one line per member."""
from __future__ import annotations

import json
import math
import os

from searche1_jax.plot import read_jsonl


def member_curves(metrics_path: str, phase: str = "grpo") -> dict[int, list[dict]]:
    """{member: rows sorted by step}; a step written twice (killed before its checkpoint and
    redone on resume) keeps its last row."""
    rows = {}
    for r in read_jsonl(metrics_path) if os.path.exists(metrics_path) else []:
        if r.get("phase") == phase and "member" in r:
            rows[(r["member"], r["step"])] = r
    out: dict[int, list[dict]] = {}
    for (m, _), r in sorted(rows.items()):
        out.setdefault(m, []).append(r)
    return out


def summarize_population(pop: int, workdir: str, names: list[str], overrides: list[dict],
                         structural: dict, dev_em: list) -> list[dict]:
    curves = member_curves(os.path.join(workdir, "metrics.jsonl"))
    rows = []
    for i, name in enumerate(names):
        pts = curves.get(i, [])
        rewards = [p["reward"] for p in pts if isinstance(p.get("reward"), (int, float))]
        rows.append({"population": pop, "member": i, "name": name, "structural": structural,
                     "overrides": overrides[i], "steps": pts[-1]["step"] if pts else 0,
                     "final_reward": rewards[-1] if rewards else None,
                     "mean_reward": sum(rewards) / len(rewards) if rewards else None,
                     "dev_em": dev_em[i], "workdir": workdir})
    return rows


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def markdown_table(rows: list[dict]) -> str:
    head = "| population | member | setting | steps | final reward | mean reward | dev EM |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        setting = " ".join([r["structural_name"], r["name"]]).strip() if r.get("structural_name") else r["name"]
        lines.append(f"| {r['population']} | {r['member']} | {setting} | {r['steps']} | "
                     f"{_fmt(r['final_reward'])} | {_fmt(r['mean_reward'])} | {_fmt(r['dev_em'])} |")
    return "\n".join(lines)


def write_summary(rows: list[dict], out_dir: str) -> str:
    table = markdown_table(rows)
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write("# Sweep summary\n\n" + table + "\n")
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(rows, f, indent=1)
    return table


def plot_curves(populations: list[tuple[str, str, list[str]]], out: str,
                metrics=("reward", "em", "kl_ref", "searches")) -> None:
    """populations: (label, workdir, member names). One panel per metric, one line per member."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(2, len(metrics))
    n_rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(5.5 * cols, 3.4 * n_rows), squeeze=False)
    for ax, name in zip(axes.flat, metrics):
        for label, workdir, names in populations:
            for m, pts in member_curves(os.path.join(workdir, "metrics.jsonl")).items():
                xy = [(p["step"], p[name]) for p in pts if isinstance(p.get(name), (int, float))]
                if xy:
                    xs, ys = zip(*xy)
                    ax.plot(xs, ys, "-o", ms=3, label=f"{label} {names[m]}".strip())
        ax.set_title(name)
        ax.set_xlabel("GRPO step")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    legend_rows = math.ceil(len(labels) / 4)
    fig.tight_layout(rect=(0, 0.04 * legend_rows + 0.02, 1, 1))
    if handles:
        fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=min(4, len(labels)))
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)
