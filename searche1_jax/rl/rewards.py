"""SQuAD-normalised answer metrics and the GRPO reward (METHOD §1).

Strings in, floats out; no model, config, I/O or protocol tags. Every function takes an answer
already extracted from a response (`rollout.protocol.extract_answer`, the content of the LAST
complete answer span of the text the policy sampled; `Trajectory.answer` holds it), None when
there was none. The training reward is `em_rewards`: 1.0 if the answer exact-matches any gold
answer after SQuAD normalisation, else 0.0 (no format bonus). F1 and cover-EM are reported in
evaluation only.
"""
from __future__ import annotations

import collections
import re
import string
from typing import Sequence

import numpy as np

_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lowercase, drop ASCII punctuation, drop articles a/an/the, collapse
    whitespace (the order of the official SQuAD v1.1 script, which Search-R1 uses)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _golds(golds: Sequence[str] | str) -> list[str]:
    # A bare string is one gold answer, never a sequence of characters.
    return [golds] if isinstance(golds, str) else list(golds)


def exact_match(pred: str | None, golds: Sequence[str]) -> float:
    """1.0 if normalize(pred) equals normalize(g) for some gold g; 0.0 for pred None."""
    if pred is None:
        return 0.0
    p = normalize_answer(pred)
    return float(any(p == normalize_answer(g) for g in _golds(golds)))


def cover_exact_match(pred: str | None, golds: Sequence[str]) -> float:
    """1.0 if some normalised gold is a substring of the normalised prediction."""
    if pred is None:
        return 0.0
    p = normalize_answer(pred)
    return float(any(normalize_answer(g) in p for g in _golds(golds)))


def _f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score(pred: str | None, golds: Sequence[str]) -> float:
    """SQuAD token F1 of the normalised prediction, max over golds; 0.0 for pred None."""
    if pred is None:
        return 0.0
    p = normalize_answer(pred).split()
    return max((_f1(p, normalize_answer(g).split()) for g in _golds(golds)), default=0.0)


def em_rewards(answers: Sequence[str | None], golds: Sequence[Sequence[str]]) -> np.ndarray:
    """The GRPO reward of METHOD §1 for a batch: [B] float32, exact_match(answers[i], golds[i]).

    answers: each trajectory's extracted answer (None: it gave none, reward 0)."""
    if len(answers) != len(golds):
        raise ValueError(f"em_rewards needs one gold list per text (its extracted answer), got "
                         f"{len(answers)} answers and {len(golds)} gold lists")
    return np.asarray([exact_match(a, g) for a, g in zip(answers, golds)], dtype=np.float32)
