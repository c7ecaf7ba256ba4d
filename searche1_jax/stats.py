"""Percentile bootstrap of a mean: evaluation reports and the trainer's dev EM share it.

numpy only, imports nothing of ours (a bottom layer, like shapes.py)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def bootstrap_means(values: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """[n_resamples] means of `values` resampled with replacement (chunked: bounded memory)."""
    values = np.asarray(values, np.float64)
    n = len(values)
    out = np.empty(n_resamples, np.float64)
    chunk = max(1, 4_000_000 // max(n, 1))
    for lo in range(0, n_resamples, chunk):
        hi = min(n_resamples, lo + chunk)
        out[lo:hi] = values[rng.integers(0, n, size=(hi - lo, n))].mean(axis=1)
    return out


def bootstrap_ci(values: Sequence[float], n_resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values`."""
    if len(values) == 0:
        return (math.nan, math.nan)
    means = bootstrap_means(np.asarray(values), n_resamples, np.random.default_rng(seed))
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [a, 1.0 - a])
    return float(lo), float(hi)
