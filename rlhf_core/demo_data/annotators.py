"""Step 3b of the demo data: a simulated panel of K annotators labels every pair.

Annotator k prefers A with probability
``sigmoid((gold(A) - gold(B)) / (tau * t_k) + b_k * tanh(dwords / 40) + p_k)``
(Bradley-Terry on the gold-score gap, a per-annotator temperature ``t_k``, a length bias ``b_k``
and a position bias ``p_k``). ``tau`` is solved for so that the expected pairwise agreement is
``target_agreement`` (InstructGPT's labelers agreed ~73%, Ouyang et al. 2022, sec. 5.1). Every
annotator's label is kept; ``chosen`` is the majority.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from rlhf_core.config.demo_data import DemoDataConfig
from rlhf_core.errors import ConfigError
from rlhf_core.gold import gold_score


def pairwise_agreement(labels: list[list[int]]) -> float:
    """Mean share of annotator pairs that gave the same label, over items with >= 2 labels."""
    shares = []
    for row in labels:
        k = len(row)
        if k < 2:
            continue
        ones = sum(row)
        same = ones * (ones - 1) / 2 + (k - ones) * (k - ones - 1) / 2
        shares.append(same / (k * (k - 1) / 2))
    return sum(shares) / len(shares) if shares else float("nan")


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, x))))


@dataclass(frozen=True)
class Annotator:
    temperature: float  # multiplies the panel's tau: higher = noisier
    length_bias: float  # > 0 prefers the longer reply
    position_bias: float  # > 0 prefers the reply shown first (A)


def make_panel(n: int, rng: random.Random) -> list[Annotator]:
    return [
        Annotator(math.exp(rng.gauss(0.0, 0.3)), rng.gauss(0.0, 0.15), rng.gauss(0.0, 0.1)) for _ in range(n)
    ]


def preference_probs(gap: float, dwords: int, panel: list[Annotator], tau: float) -> list[float]:
    """P(annotator k prefers A) for a pair with gold gap ``gold(A) - gold(B)``."""
    return [
        _sigmoid(gap / (tau * a.temperature) + a.length_bias * math.tanh(dwords / 40.0) + a.position_bias)
        for a in panel
    ]


def expected_agreement(items: list[tuple[float, int]], panel: list[Annotator], tau: float) -> float:
    """Expected pairwise agreement of ``panel`` over (gap, dwords) items, in closed form."""
    total = 0.0
    for gap, dwords in items:
        p = preference_probs(gap, dwords, panel, tau)
        k = len(p)
        same = sum(p[i] * p[j] + (1 - p[i]) * (1 - p[j]) for i in range(k) for j in range(i + 1, k))
        total += same / (k * (k - 1) / 2)
    return total / len(items)


def calibrate_tau(items: list[tuple[float, int]], panel: list[Annotator], target: float) -> float:
    """Solve expected_agreement(tau) = target by bisection on log(tau) (agreement falls as tau grows)."""
    lo, hi = math.log(1e-4), math.log(1e2)
    if expected_agreement(items, panel, math.exp(lo)) < target:
        return math.exp(lo)  # even a near-noiseless panel cannot agree that much (e.g. many ties)
    for _ in range(60):
        mid = (lo + hi) / 2
        if expected_agreement(items, panel, math.exp(mid)) > target:
            lo = mid
        else:
            hi = mid
    return math.exp((lo + hi) / 2)


def label_pairs(
    pairs: list[dict[str, Any]], cfg: DemoDataConfig, rng: random.Random
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run the simulated panel: one label per annotator, majority -> chosen. Returns rows and panel stats."""
    if cfg.n_annotators < 3 or cfg.n_annotators % 2 == 0:
        raise ConfigError(f"demo data: n_annotators must be odd and >= 3 (got {cfg.n_annotators})")
    panel = make_panel(cfg.n_annotators, rng)
    items = []
    for p in pairs:
        ga = gold_score(p["prompt"].prompt, p["a"], harmful=p["prompt"].harmful)
        gb = gold_score(p["prompt"].prompt, p["b"], harmful=p["prompt"].harmful)
        p["gold_a"], p["gold_b"] = ga, gb
        items.append((ga - gb, len(p["a"].split()) - len(p["b"].split())))
    tau = calibrate_tau(items, panel, cfg.target_agreement)
    rows = []
    for p, (gap, dwords) in zip(pairs, items, strict=True):
        probs = preference_probs(gap, dwords, panel, tau)
        votes_a = [1 if rng.random() < q else 0 for q in probs]
        a_wins = sum(votes_a) * 2 > len(votes_a)
        labels = votes_a if a_wins else [1 - v for v in votes_a]
        chosen, rejected = (p["a"], p["b"]) if a_wins else (p["b"], p["a"])
        rows.append({
            **p["prompt"].public(), "chosen": chosen, "rejected": rejected, "annotator_labels": labels,
            # Vote margin: 1.0 unanimous, 0.2 for 3-2 with five annotators.
            "margin": round((2 * sum(labels) - len(labels)) / len(labels), 4),
            "_kind": p["kind"], "_ranked": p.get("ranked", False), "_gold_chosen": p["gold_a"] if a_wins else p["gold_b"],
            "_gold_rejected": p["gold_b"] if a_wins else p["gold_a"],
        })
    stats = {
        "n_annotators": cfg.n_annotators,
        "tau": round(tau, 5),
        "annotators": [
            {"temperature": round(a.temperature, 4), "length_bias": round(a.length_bias, 4),
             "position_bias": round(a.position_bias, 4)} for a in panel
        ],
        "expected_agreement": round(expected_agreement(items, panel, tau), 4),
    }
    return rows, stats
