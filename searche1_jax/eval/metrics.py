"""Evaluation bookkeeping: per-example scores, per-benchmark means, bootstrap intervals, reports.

    rec = score_example("hotpotqa", ex.id, ex.question, ex.golden_answers, response_text,
                        searches=2, length=187)            # one predictions.jsonl row
    log = PredictionLog("out/predictions.jsonl")         # resumable: log.done holds finished keys
    log.append(rec)
    report = build_report(log.records(), method="ours")  # per benchmark + plain average + CIs
    write_json_report(report, "out/report.json"); print(markdown_report(report))

The scalar metrics (SQuAD-normalised EM, token F1, cover-EM) are those of
`searche1_jax.rl.rewards` and the answer extraction that of `searche1_jax.rollout.protocol`, the
same functions the GRPO reward uses (METHOD §1).
Averages: a benchmark's score is the mean over its examples; the overall average is the plain
(unweighted) mean over benchmarks, as Search-R1 reports it (METHOD §5).
"""
from __future__ import annotations

import json
import math
import os
from typing import Iterable, Mapping, Sequence

import numpy as np

from searche1_jax.data.benchmarks import BENCHMARKS, PUBLISHED, SHORT_NAMES, PublishedRow
from searche1_jax.rl.rewards import cover_exact_match, exact_match, f1_score
from searche1_jax.stats import bootstrap_ci, bootstrap_means  # noqa: F401  (bootstrap_ci: part of this API)
from searche1_jax.rollout.protocol import count_searches, extract_answer, is_valid_format

METRICS = ("em", "f1", "cover_em", "searches", "length")
SCORE_METRICS = ("em", "f1", "cover_em")  # bootstrapped
RECORD_KEYS = ("benchmark", "id", "em", "f1", "cover_em", "searches", "length")


_EXTRACT = object()  # score_example's default: extract the prediction from the text


def score_example(benchmark: str, example_id: str, question: str, golden_answers: Sequence[str],
                  response: str, searches: int, length: int, *, answer_text: str | None = None,
                  prediction=_EXTRACT, **extra) -> dict:
    """One predictions row. `response` is the trajectory's text (all turns); the prediction is the
    last `<answer>` span of `answer_text` (the policy's sampled text, so the corrective message's
    `<answer> and </answer>` never counts) or of `response` when it is not given; None if there is
    none (then every score is 0). `prediction`: the answer already extracted (`Trajectory.answer`,
    None for none), which skips the extraction. `length` is the number of response tokens the
    policy sampled; `searches` the number of retriever calls."""
    pred = (extract_answer(response if answer_text is None else answer_text) if prediction is _EXTRACT
            else prediction)
    golds = list(golden_answers)
    if pred is None:
        em = f1 = cover = 0.0
    else:
        em, f1, cover = exact_match(pred, golds), f1_score(pred, golds), cover_exact_match(pred, golds)
    return {"benchmark": benchmark, "id": example_id, "question": question, "golden_answers": golds,
            "prediction": pred, "em": float(em), "f1": float(f1), "cover_em": float(cover),
            "searches": int(searches), "length": int(length), "response": response, **extra}


def _f32(xs) -> np.ndarray:
    return np.asarray(xs, dtype=np.float32)


def batch_metrics(texts: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, np.ndarray]:
    """Per-text em, f1, cover_em, num_searches and valid_format, each [B] float32, of responses
    given as text (e.g. a foreign model's outputs; our trajectories carry answer and queries)."""
    if len(texts) != len(golds):
        raise ValueError(f"batch_metrics needs one gold list per text, got {len(texts)} texts "
                         f"and {len(golds)} gold lists")
    preds = [extract_answer(t) for t in texts]
    return {
        "em": _f32([exact_match(p, g) for p, g in zip(preds, golds)]),
        "f1": _f32([f1_score(p, g) for p, g in zip(preds, golds)]),
        "cover_em": _f32([cover_exact_match(p, g) for p, g in zip(preds, golds)]),
        "num_searches": _f32([count_searches(t) for t in texts]),
        "valid_format": _f32([is_valid_format(t) for t in texts]),
    }


def _check_record(rec: Mapping, where: str) -> None:
    missing = [k for k in RECORD_KEYS if k not in rec]
    if missing:
        raise ValueError(f"{where}: prediction record lacks {missing}")


def record_key(rec: Mapping) -> tuple[str, str]:
    return str(rec["benchmark"]), str(rec["id"])


# ---- per-example predictions: append-only jsonl, resumable ----

def read_predictions(path: str | os.PathLike) -> list[dict]:
    """Rows of a predictions file, first occurrence of each (benchmark, id) only. A record counts
    once its newline is written: an unterminated last line (the run was killed mid-write) is
    ignored; any other bad line is a ValueError naming path:LINE."""
    path = os.fspath(path)
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    lines = lines[:-1]  # after the last newline: b"" or an unterminated (torn) record
    out, seen = [], set()
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError(f"{path}:{lineno}: not a JSON prediction record: {raw[:60]!r}") from None
        _check_record(rec, f"{path}:{lineno}")
        key = record_key(rec)
        if key not in seen:
            seen.add(key)
            out.append(rec)
    return out


class PredictionLog:
    """Append-only predictions.jsonl. On open it drops a torn last line and loads the finished
    (benchmark, id) keys into `done`; `append` skips a key already done, so a resumed evaluation
    never counts an example twice."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._repair_tail()
        self._records = read_predictions(self.path)
        self.done: set[tuple[str, str]] = {record_key(r) for r in self._records}

    def _repair_tail(self) -> None:
        if not os.path.exists(self.path):
            return
        with open(self.path, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)

    def is_done(self, benchmark: str, example_id: str) -> bool:
        return (benchmark, str(example_id)) in self.done

    def pending(self, benchmark: str, examples: Iterable) -> list:
        """The examples (anything with `.id`) of `benchmark` that have no record yet."""
        return [ex for ex in examples if not self.is_done(benchmark, ex.id)]

    def append(self, rec: Mapping) -> bool:
        """Write one record (flushed + fsynced); False, and nothing written, if its key is done."""
        _check_record(rec, self.path)
        key = record_key(rec)
        if key in self.done:
            return False
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.done.add(key)
        self._records.append(dict(rec))
        return True

    def records(self) -> list[dict]:
        return list(self._records)


# ---- aggregation ----

def _means(recs: Sequence[Mapping]) -> dict:
    return {m: float(np.mean([float(r[m]) for r in recs])) for m in METRICS}


def aggregate(records: Iterable[Mapping], benchmarks: Sequence[str] | None = None) -> dict[str, dict]:
    """{benchmark: {"n", "em", "f1", "cover_em", "searches", "length"}} (means over examples),
    in METHOD §5 order (then any other benchmark names, sorted). Duplicate keys count once."""
    by: dict[str, list] = {}
    seen = set()
    for r in records:
        _check_record(r, "aggregate")
        if record_key(r) in seen:
            continue
        seen.add(record_key(r))
        by.setdefault(str(r["benchmark"]), []).append(r)
    names = list(benchmarks) if benchmarks is not None else (
        [b for b in BENCHMARKS if b in by] + sorted(b for b in by if b not in BENCHMARKS))
    out = {}
    for b in names:
        if b not in by:
            raise ValueError(f"no prediction records for benchmark {b!r}; have {sorted(by)}")
        out[b] = {"n": len(by[b]), **_means(by[b])}
    return out


def average_over_benchmarks(per_benchmark: Mapping[str, Mapping]) -> dict:
    """Plain mean over benchmarks of each metric (every benchmark weighs the same)."""
    if not per_benchmark:
        raise ValueError("no benchmark to average")
    return {m: float(np.mean([s[m] for s in per_benchmark.values()])) for m in METRICS}


def build_report(records: Iterable[Mapping], method: str = "ours", benchmarks: Sequence[str] | None = None,
                 n_resamples: int = 1000, seed: int = 0, **meta) -> dict:
    """The JSON report: per-benchmark means with bootstrap 95% intervals for EM/F1/cover-EM, the
    plain average (its interval resamples each benchmark independently and averages), and the
    published rows of METHOD §5."""
    records = [dict(r) for r in records]
    per = aggregate(records, benchmarks)
    uniq: dict[tuple[str, str], dict] = {}
    for r in records:  # duplicates count once, as in `aggregate`
        uniq.setdefault(record_key(r), r)
    values = {b: {m: np.array([float(r[m]) for r in uniq.values() if r["benchmark"] == b])
                  for m in SCORE_METRICS} for b in per}
    avg = average_over_benchmarks(per)
    avg_draws = {}
    for m in SCORE_METRICS:
        rng = np.random.default_rng([seed, SCORE_METRICS.index(m)])
        draws = [bootstrap_means(values[b][m], n_resamples, rng) for b in per]
        for b, d in zip(per, draws):
            per[b][f"{m}_ci"] = [float(x) for x in np.quantile(d, [0.025, 0.975])]
        avg_draws[m] = np.mean(draws, axis=0)
        avg[f"{m}_ci"] = [float(x) for x in np.quantile(avg_draws[m], [0.025, 0.975])]
    return {"method": method, "benchmarks": per, "average": avg, "n_benchmarks": len(per),
            "bootstrap": {"n_resamples": n_resamples, "seed": seed, "level": 0.95},
            "published": [{"method": p.method, "em": p.em, "average": p.average} for p in PUBLISHED],
            **meta}


# ---- rendering ----

def _fmt(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def em_table(report: Mapping, published: Sequence[PublishedRow] = PUBLISHED) -> str:
    """METHOD §5's layout: one row per method, EM per benchmark (NQ … Bamboogle) and the average;
    our row first, then the published 3B rows ('–' where a number was not published or a
    benchmark was not run)."""
    cols = list(BENCHMARKS)
    lines = ["| Method | " + " | ".join(SHORT_NAMES[b] for b in cols) + " | Avg |",
             "|---|" + "---:|" * (len(cols) + 1)]
    per = report["benchmarks"]
    avg_label = _fmt(report["average"]["em"])
    if len(per) != len(cols):
        avg_label += f" ({len(per)}/{len(cols)})"
    lines.append(f"| {report['method']} | " + " | ".join(_fmt(per[b]["em"]) if b in per else "–" for b in cols)
                 + f" | {avg_label} |")
    for p in published:
        lines.append(f"| {p.method} (published) | "
                     + " | ".join(_fmt(p.em[b]) if p.em else "–" for b in cols) + f" | {_fmt(p.average)} |")
    return "\n".join(lines)


def detail_table(report: Mapping) -> str:
    """Per benchmark: n, EM / F1 / cover-EM with 95% bootstrap intervals, mean searches and length."""
    lines = ["| Benchmark | n | EM [95% CI] | F1 [95% CI] | cover-EM [95% CI] | searches | length |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    rows = list(report["benchmarks"].items()) + [("average", report["average"])]
    for b, s in rows:
        cells = [f"{_fmt(s[m])} [{_fmt(s[m + '_ci'][0])}, {_fmt(s[m + '_ci'][1])}]" for m in SCORE_METRICS]
        n = str(s["n"]) if "n" in s else f"{report['n_benchmarks']} benchmarks"
        name = SHORT_NAMES.get(b, b) if b != "average" else "**average**"
        lines.append(f"| {name} | {n} | " + " | ".join(cells) + f" | {s['searches']:.2f} | {s['length']:.1f} |")
    return "\n".join(lines)


_READS = {"policy": "the last answer pair the policy sampled",
          "search_r1": "Search-R1's qa_em.py extraction over prompt + response"}


def markdown_report(report: Mapping) -> str:
    b = report["bootstrap"]
    return (f"## Exact match (greedy) beside the published Qwen2.5-3B rows\n\n{em_table(report)}\n\n"
            f"Average = plain mean over the {report['n_benchmarks']} benchmarks run. Published rows are "
            f"on the full Search-R1 test/dev sets; ours on the examples counted in `n` below.\n\n"
            f"## Per benchmark\n\n{detail_table(report)}\n\n"
            f"Intervals: percentile bootstrap over examples, {b['n_resamples']} resamples, seed {b['seed']}; "
            f"the average's interval resamples each benchmark independently.\n"
            + (f"Answers: reward_text = {report['reward_text']!r} "
               f"({_READS.get(report['reward_text'], '?')}).\n" if "reward_text" in report else ""))


def write_json_report(report: Mapping, path: str | os.PathLike) -> None:
    """Atomic write (temp file + rename) of the JSON report."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def write_markdown_report(report: Mapping, path: str | os.PathLike) -> None:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(markdown_report(report))
