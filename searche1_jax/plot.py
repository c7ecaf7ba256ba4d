"""Plot a run's metrics.jsonl to PNG: one panel per metric, GRPO steps on the x axis; the warm
start's loss over its updates, and dev EM (with its 95% interval) at each evaluation point.

    python -m searche1_jax.plot runs/demo/metrics.jsonl [--out runs/demo/metrics.png]
        [--metrics reward,entropy,kl_ref,clip_frac,response_length,searches]
"""
from __future__ import annotations

import argparse
import json
import math
import os

DEFAULT = ("dev_em", "sft_loss", "reward", "em", "entropy", "kl_ref", "clip_frac", "response_length", "searches",
           "tokens_per_s", "ofsd_loss")


def read_jsonl(path: str) -> list[dict]:
    """The rows of a JSONL file (a local path or a bucket URI, through etils.epath)."""
    from etils import epath
    rows = []
    with epath.Path(path).open("r") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{i}: not a JSON line ({e.msg})") from None
    return rows


def plot(rows: list[dict], out: str, metrics=DEFAULT) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [m for m in metrics if any(m in r for r in rows)]
    if not present:
        raise ValueError(f"none of the metrics {list(metrics)} appear in the file")
    cols = min(3, len(present))
    n_rows = math.ceil(len(present) / cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(4.5 * cols, 3.2 * n_rows), squeeze=False)
    for ax, name in zip(axes.flat, present):
        if name == "dev_em":  # one point per evaluation (base, warm_start, final) with its interval
            ev = [r for r in rows if r.get("phase") == "eval" and isinstance(r.get(name), (int, float))]
            ys = [r[name] for r in ev]
            err = [[y - r.get("dev_em_lo", y) for y, r in zip(ys, ev)],
                   [r.get("dev_em_hi", y) - y for y, r in zip(ys, ev)]]
            ax.errorbar(range(len(ev)), ys, yerr=err, fmt="o-", capsize=4)
            ax.set_xticks(range(len(ev)), [r.get("label", str(r["step"])) for r in ev])
            ax.set_title("dev EM (greedy, 95% CI)")
            continue
        if name == "sft_loss":
            pts = [(r["sft_step"], r[name]) for r in rows if r.get("phase") == "sft"]
            ax.plot(*zip(*pts), "-")
            ax.set_title("warm-start loss (NLL)")
            ax.set_xlabel("warm-start update")
            continue
        for phase, marker in (("grpo", "-"), ("ofsd", "o")):
            pts = [(r["step"], r[name]) for r in rows
                   if r.get("phase") == phase and isinstance(r.get(name), (int, float))]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker, label=phase)
        ax.set_title(name)
        ax.set_xlabel("GRPO step")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return present


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("metrics_file")
    ap.add_argument("--out", default="")
    ap.add_argument("--metrics", default=",".join(DEFAULT))
    args = ap.parse_args(argv)
    out = args.out or os.path.splitext(args.metrics_file)[0] + ".png"
    shown = plot(read_jsonl(args.metrics_file), out, args.metrics.split(","))
    print(f"wrote {out} ({', '.join(shown)})")


if __name__ == "__main__":
    main()
