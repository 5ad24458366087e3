"""Small statistics helpers shared by the evaluations (reward-model agreement, SFT ablations).

numpy only; no torch, so evaluation code can use it on plain lists.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    *,
    confidence: float = 0.95,
    statistic: Callable[[np.ndarray], float] | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` (default: the mean) of ``values``.

    Resamples the n values with replacement ``n_boot`` times (seeded: the same inputs give
    the same interval) and returns the ``(1-confidence)/2`` and ``(1+confidence)/2``
    quantiles of the resampled statistic. Use per-item values, e.g. one 0/0.5/1 agreement
    score per preference pair or one 0/1 refusal flag per prompt: the interval is then over
    the population of items the figure was averaged over.

    A single value gives a zero-width interval at that value; no values is an error.
    """
    data = np.asarray(values, dtype=np.float64)
    if data.ndim != 1:
        raise ValueError(f"bootstrap_ci: expected a 1-d sequence of values, got shape {data.shape}")
    if data.size == 0:
        raise ValueError("bootstrap_ci: no values")
    if not np.isfinite(data).all():
        raise ValueError("bootstrap_ci: values contain NaN or inf")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"bootstrap_ci: confidence must be in (0, 1), got {confidence}")
    if n_boot < 1:
        raise ValueError(f"bootstrap_ci: n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    rows_per_chunk = max(1, 4_000_000 // data.size)  # cap the index matrix at ~32 MB
    chunks = []
    for start in range(0, n_boot, rows_per_chunk):
        idx = rng.integers(0, data.size, size=(min(rows_per_chunk, n_boot - start), data.size))  # (chunk, n)
        if statistic is None:
            chunks.append(data[idx].mean(axis=1))
        else:
            chunks.append(np.array([statistic(data[row]) for row in idx], dtype=np.float64))
    stats = np.concatenate(chunks)
    alpha = 1.0 - confidence
    low, high = np.quantile(stats, [alpha / 2, 1.0 - alpha / 2])
    return float(low), float(high)


@dataclass(frozen=True)
class Estimate:
    """A mean over ``n`` items (prompts, preference pairs) and its bootstrap interval (NaN when ``n == 0``)."""

    value: float
    ci_low: float
    ci_high: float
    n: int

    def to_dict(self) -> dict[str, float | int | None]:
        return {"value": finite_or_none(self.value), "ci_low": finite_or_none(self.ci_low),
                "ci_high": finite_or_none(self.ci_high), "n": self.n}


def estimate(values: Sequence[float] | np.ndarray, *, n_boot: int, seed: int, confidence: float = 0.95) -> Estimate:
    """Mean of per-item ``values`` with its percentile-bootstrap interval (:func:`bootstrap_ci`); no values -> NaN."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    low, high = bootstrap_ci(data, n_boot=n_boot, seed=seed, confidence=confidence)
    return Estimate(float(data.mean()), low, high, int(data.size))


def finite_or_none(value: float | None) -> float | None:
    """``value`` as a float, None when missing or NaN/inf (strict JSON has no NaN)."""
    return float(value) if value is not None and math.isfinite(value) else None
