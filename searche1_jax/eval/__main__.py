"""Evaluate a policy on the seven QA benchmarks with greedy rollouts (METHOD §5).

    python -m searche1_jax.eval --config=configs/demo.py --data_dir=../shared/data/qa \
        --benchmarks=nq,triviaqa,popqa,hotpotqa,2wikimultihopqa,musique,bamboogle --out=runs/eval
    # a HF checkpoint (e.g. a released Search-R1 model) or a training workdir:
    python -m searche1_jax.eval --config=configs/qwen3b.py --checkpoint=/models/SearchR1-3B ...
    # against any Search-R1-compatible retrieval service:
    python -m searche1_jax.eval ... --retriever_url=http://127.0.0.1:8000

Writes OUT/predictions.jsonl (resumable: finished examples are skipped), OUT/report.json and
OUT/report.md (EM / F1 / cover-EM per benchmark, plain average, bootstrap 95% intervals,
searches and length, beside the published rows).
"""
from __future__ import annotations

import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
config_flags.DEFINE_config_file("config", os.path.join(_ROOT, "configs", "demo.py"), "experiment config")
flags.DEFINE_string("checkpoint", "", "HF directory, .gguf file, or a training workdir (its latest "
                    "orbax checkpoint); default: the config's model")
flags.DEFINE_string("benchmarks", "nq,triviaqa,popqa,hotpotqa,2wikimultihopqa,musique,bamboogle", "comma list")
flags.DEFINE_string("data_dir", os.path.join(_ROOT, "..", "shared", "data", "qa"), "benchmark files")
flags.DEFINE_string("split", "dev", "file split: dev | test | ...")
flags.DEFINE_integer("limit", 0, "examples per benchmark (0 = all)")
flags.DEFINE_integer("batch", 16, "questions rolled out together")
flags.DEFINE_string("retriever_url", "", "Search-R1-compatible /retrieve service (overrides the config)")
flags.DEFINE_string("out", "runs/eval", "output directory")
flags.DEFINE_string("method", "ours", "name of this row in the report")
FLAGS = flags.FLAGS


def evaluate(policy, model, benchmarks, *, data_dir, split, limit, batch, out, method, log=print):
    """Greedy rollouts of `model` with `policy.agent` (an `eval.policy.Policy` or anything with an
    `.agent`) over the benchmarks; returns (report, markdown table)."""
    import jax

    from searche1_jax.data.benchmarks import load_benchmark
    from searche1_jax.eval.metrics import (PredictionLog, build_report, markdown_report, score_example,
                                           write_json_report, write_markdown_report)
    from searche1_jax.rollout.sampler import SamplingParams

    preds = PredictionLog(os.path.join(out, "predictions.jsonl"))
    greedy = SamplingParams(greedy=True)
    for name in benchmarks:
        examples = load_benchmark(name, data_dir, split, limit=limit or None)
        todo = preds.pending(name, examples)
        log(f"[eval] {name}: {len(examples)} examples, {len(examples) - len(todo)} already done")
        t0 = time.time()
        for lo in range(0, len(todo), batch):
            chunk = todo[lo:lo + batch]
            questions = [ex.question for ex in chunk]
            # a short last batch is padded with copies of its last question (their rollouts are
            # dropped): every call has the same batch size, so nothing is compiled again for it
            questions += questions[-1:] * (batch - len(chunk))
            trajs = policy.agent.run(model, questions, jax.random.key(0), greedy)[:len(chunk)]
            for ex, t in zip(chunk, trajs):
                preds.append(score_example(name, ex.id, ex.question, ex.golden_answers, t.response_text,
                                           searches=t.num_searches, length=t.num_sampled, prediction=t.answer,
                                           queries=t.queries, finish_reason=t.finish_reason))
            done = lo + len(chunk)
            rate = done / max(time.time() - t0, 1e-9)
            log(f"[eval] {name}: {done}/{len(todo)} ({rate:.2f} q/s, ETA {(len(todo) - done) / rate:.0f}s)")
    report = build_report(preds.records(), method=method, benchmarks=benchmarks,
                          reward_text=policy.agent.cfg.reward_text)
    write_json_report(report, os.path.join(out, "report.json"))
    write_markdown_report(report, os.path.join(out, "report.md"))
    return report, markdown_report(report)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    from searche1_jax.hostmem import tune_malloc
    tune_malloc()  # before JAX allocates: freed buffers go back to the OS
    from searche1_jax.data.benchmarks import parse_benchmarks
    from searche1_jax.eval.policy import build_policy

    benchmarks = parse_benchmarks(FLAGS.benchmarks)  # unknown names list the valid ones
    config = FLAGS.config
    if FLAGS.retriever_url:
        config.retrieval.kind, config.retrieval.url = "http", FLAGS.retriever_url
    is_workdir = FLAGS.checkpoint and os.path.isdir(os.path.join(FLAGS.checkpoint, "checkpoints"))
    if FLAGS.checkpoint and not is_workdir:
        config.model.checkpoint, config.model.preset = FLAGS.checkpoint, ""
    # inference only: a workdir's latest params (never its optimiser state), else the config's model
    policy = build_policy(config, FLAGS.checkpoint if is_workdir else "")
    _, table = evaluate(policy, policy.model, benchmarks, data_dir=FLAGS.data_dir, split=FLAGS.split,
                        limit=FLAGS.limit, batch=FLAGS.batch, out=FLAGS.out, method=FLAGS.method)
    print(table)


if __name__ == "__main__":
    sys.exit(app.run(main))
