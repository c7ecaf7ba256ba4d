"""The supervised warm start: protocol-exact trajectories rendered from questions with evidence.

A small model (the demo's SmolLM2-135M) cannot follow the search protocol zero-shot, so GRPO
gets no reward to learn from. The warm start teaches the protocol first: for each training
question whose paragraphs are known (gold among distractors, unmarked: `config.sft.contexts`),
`plan_searches` picks what to search (the titles the question names, and the paragraph that
holds the answer), `script_turns` writes the turns (a short thought, the search; finally the gold
answer), and `render` drives the real `SearchAgent` with a `ScriptedPolicy` emitting those turns,
so the trajectories carry the real retriever's observations (context, loss-masked) and exactly
the tokens, cuts and bytes of a rollout. The loss is the masked NLL of the policy's turns.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import jax
import numpy as np

from searche1_jax.rl.rewards import normalize_answer
from searche1_jax.rollout.agent import SearchAgent, Trajectory
from searche1_jax.rollout.engine import free_compiled
from searche1_jax.rollout.sampler import SamplingParams
from searche1_jax.rollout.scripted import ScriptedPolicy
from searche1_jax.shapes import round_up


def load_contexts(path: str) -> dict[str, list[tuple[str, str]]]:
    """{question id: [(title, corpus id), ...]} from a contexts JSON file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config.sft.contexts {path!r} not found: a JSON file "
                                "{question id: [[title, corpus id], ...]}")
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object {{question id: [[title, corpus id], ...]}}")
    return {qid: [(str(t), str(i)) for t, i in paras] for qid, paras in raw.items()}


def _contains(haystack: str, needle: str) -> bool:
    n = normalize_answer(needle)
    return bool(n) and f" {n} " in f" {normalize_answer(haystack)} "


def plan_searches(question: str, golds: Sequence[str], paragraphs: Sequence[tuple[str, str]],
                  max_searches: int) -> list[str]:
    """The queries a competent agent would issue, from the question's paragraphs (title, text).

    The titles the question names, in the order it names them, and the title of the first
    paragraph whose text holds a gold answer (the bridge entity of a multi-hop question) when
    the question does not name it; at most `max_searches` (the answer's paragraph kept). A
    question naming none and with no answer paragraph searches its own text."""
    q = normalize_answer(question)
    named = sorted({t for t, _ in paragraphs if _contains(question, t)}, key=lambda t: q.find(normalize_answer(t)))
    holder = next((t for t, text in paragraphs if any(_contains(text, g) for g in golds)), None)
    plan = list(named)
    if holder is not None and holder not in plan:
        plan = plan[:max(max_searches - 1, 0)] + [holder]
    plan = plan[:max_searches]
    return plan or ([question.strip()] if max_searches else [])


def script_turns(queries: Sequence[str], answer: str) -> list[str]:
    """The policy's turns: a thought and a search per query, then a thought and the answer."""
    turns = [f"<think> I need to find {q}. </think>\n<search> {q} </search>" for q in queries]
    return turns + [f"<think> I have what I need. </think>\n<answer> {answer} </answer>"]


def render(agent: SearchAgent, tokenizer, scripts: Sequence[Sequence[str]], questions: Sequence[str],
           batch: int = 64) -> list[Trajectory]:
    """Run `agent` with a `ScriptedPolicy` emitting each question's turns (tokenised turn by
    turn, as a policy samples them); returns the trajectories, in order.

    Every batch has the same shapes (one script width for all, the last batch filled up with
    repeats of its first row, dropped after), so the engine's decode / append programs are
    compiled for the first batch and reused: measured on the demo's 160 questions, 268 programs
    and ~0.65 GB of resident memory before, when each batch had its own widths. They are dropped
    when the rendering ends (`free_compiled`): no model program ever runs a script."""
    eos = tokenizer.eos_ids[0]
    rows = [sum((tokenizer.encode(t) for t in s), []) for s in scripts]
    width = round_up(max(len(r) for r in rows) + 1, 64)
    batch = min(batch, len(questions))
    out = []
    for lo in range(0, len(questions), batch):
        idx = list(range(lo, min(lo + batch, len(questions))))
        idx += [idx[0]] * (batch - len(idx))
        script = np.full((batch, width), eos, np.int32)
        for i, r in enumerate(idx):
            script[i, :len(rows[r])] = rows[r]
        policy = ScriptedPolicy(script, tokenizer.vocab_size)
        out += agent.run(policy, [questions[r] for r in idx], jax.random.key(0),
                         SamplingParams(greedy=True))[:min(batch, len(questions) - lo)]
    free_compiled()
    return out


def build_warm_start(agent: SearchAgent, tokenizer, examples: Sequence, contexts: dict, corpus_text,
                     *, max_searches: int, limit: int = 0, log=print) -> list[Trajectory]:
    """Rendered trajectories for the examples that have contexts (the first `limit`; 0 = all).

    corpus_text: corpus id -> passage contents (`"Title"\\ntext`). Trajectories that did not end
    with their scripted answer and searches (a budget cut them) are dropped and counted."""
    chosen = [ex for ex in examples if ex.id in contexts]
    if limit:
        chosen = chosen[:limit]
    if not chosen:
        raise ValueError("config.sft: no training question has an entry in config.sft.contexts "
                         "(question ids must match data.train ids)")
    plans, scripts = [], []
    for ex in chosen:
        paragraphs = []
        for title, pid in contexts[ex.id]:
            contents = corpus_text(pid)
            paragraphs.append((title, contents.partition("\n")[2]))
        plan = plan_searches(ex.question, ex.golden_answers, paragraphs, max_searches)
        plans.append(plan)
        scripts.append(script_turns(plan, ex.golden_answers[0]))
    trajs = render(agent, tokenizer, scripts, [ex.question for ex in chosen])
    kept = [t for t, plan, ex in zip(trajs, plans, chosen)
            if t.finish_reason == "answer" and t.queries == plan and t.answer == ex.golden_answers[0].strip()]
    log(f"[sft] rendered {len(kept)} of {len(chosen)} trajectories "
        f"({sum(len(p) for p in plans) / len(plans):.2f} searches each; {len(chosen) - len(kept)} cut by budgets)")
    if not kept:
        raise ValueError("config.sft: every rendered trajectory was cut by the rollout budgets; raise "
                         "config.rollout.max_turn_tokens / max_response_tokens")
    return kept
