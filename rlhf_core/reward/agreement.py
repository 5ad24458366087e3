"""Reward-model agreement: how often the reward model ranks held-out pairs the way people did.

Inputs are plain sequences (one entry per held-out preference pair), so this module needs
neither torch nor a model: score the pairs first, then call :func:`reward_model_agreement`.

Definitions (every per-pair figure is averaged over pairs, so each pair weighs the same):

* **model preference score** of a pair: 1 if ``r_chosen > r_rejected``, 0.5 on an exact
  tie, 0 otherwise (a tie is a coin flip, so it earns half).
* **agreement with the majority**: mean model preference score. ``chosen`` is the
  annotators' majority choice by the data contract, so this is agreement with the majority
  label of *all* annotators of the pair.
* **agreement with gold**: the same, against the gold scorer's preference.
* **annotator ceiling** (``agreement_ceiling``): how well a *single human* predicts the
  majority of the *other* annotators of the same pair. For pair i with n_i >= 2 annotators,
  each annotator a is scored against the majority vote of the other n_i - 1 (1 if equal,
  0.5 if the others are tied, 0 otherwise); the pair's ceiling is the mean over its
  annotators, and the reported ceiling is the mean over pairs with n_i >= 2.
* **model agreement on the ceiling's footing** (``agreement_majority_loo``): the model's
  preference scored against those same leave-one-out majorities, averaged the same way.
  This — not the all-annotator agreement, whose majority is less noisy — is what to set
  beside the ceiling: a model reaching it predicts held-out majorities as well as one more
  human would. ``ceiling_gap = agreement_ceiling - agreement_majority_loo``.
* **pairwise inter-annotator agreement**: per pair, the fraction of annotator pairs that
  voted alike, averaged over pairs with n_i >= 2 (InstructGPT reports ~73% for its
  labelers, Ouyang et al. 2022 sec. 5.1). With two annotators it equals the ceiling.
* **unanimous / split**: pairs with n_i >= 2 whose annotators all agreed / did not.
* **calibration**: predicted P(chosen) = sigmoid(r_c - r_r) (the Bradley-Terry
  probability the model was trained to output) against the observed fraction of annotators
  preferring ``chosen``, in ``n_bins`` equal-width bins over [0, 1]; ECE is the
  count-weighted mean |mean predicted - mean observed| over bins.

Intervals are 95% percentile bootstraps over pairs (:func:`rlhf_core.stats.estimate`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from rlhf_core.errors import DataError, TrainingError
from rlhf_core.stats import Estimate, estimate
from rlhf_core.tracking import metric_name

NO_TOPIC = "(none)"


@dataclass(frozen=True)
class TopicAgreement:
    topic: str
    n: int
    agreement_majority: Estimate
    agreement_gold: Estimate | None


@dataclass(frozen=True)
class VoteGroup:
    """Pairs whose annotators split ``votes_chosen`` of ``n_annotators`` for ``chosen``."""

    votes_chosen: int
    n_annotators: int
    n: int
    agreement_majority: float


@dataclass(frozen=True)
class CalibrationBin:
    lower: float
    upper: float
    count: int
    mean_predicted: float | None  # None for an empty bin
    mean_observed: float | None


@dataclass(frozen=True)
class Calibration:
    bins: list[CalibrationBin]
    ece: float
    n: int  # pairs with annotator labels (the sum of bin counts)


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float
    min: float
    p25: float
    median: float
    p75: float
    max: float


@dataclass(frozen=True)
class RewardDistribution:
    chosen: Summary
    rejected: Summary
    margin: Summary  # r_chosen - r_rejected
    bin_edges: list[float]  # shared histogram edges, len = len(counts) + 1
    chosen_counts: list[int]
    rejected_counts: list[int]


@dataclass(frozen=True)
class AgreementReport:
    n_pairs: int
    agreement_majority: Estimate
    agreement_gold: Estimate | None
    agreement_majority_loo: Estimate | None
    agreement_ceiling: Estimate | None
    annotator_pairwise_agreement: Estimate | None
    agreement_unanimous: Estimate | None
    agreement_split: Estimate | None
    n_without_annotators: int  # pairs with fewer than 2 annotators (left out of the ceiling)
    n_label_conflicts: int  # pairs whose annotator votes favour `rejected` (contract says they should not)
    by_votes: list[VoteGroup]
    topics: list[TopicAgreement]
    calibration: Calibration | None
    reward_distribution: RewardDistribution
    definitions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON-serialisable)."""
        return asdict(self)

    def metrics(self) -> dict[str, float]:
        """Flat ``rm/...`` figures for a tracker (MLflow metric names)."""
        out: dict[str, float] = {"rm/n_pairs": float(self.n_pairs)}

        def put(name: str, est: Estimate | None, *, ci: bool = True) -> None:
            if est is None:
                return
            out[f"rm/{name}"] = est.value
            out[f"rm/n_{name.removeprefix('agreement_')}"] = float(est.n)
            if ci:
                out[f"rm/{name}_ci_low"] = est.ci_low
                out[f"rm/{name}_ci_high"] = est.ci_high

        put("agreement_majority", self.agreement_majority)
        put("agreement_gold", self.agreement_gold)
        put("agreement_majority_loo", self.agreement_majority_loo)
        put("agreement_ceiling", self.agreement_ceiling)
        put("annotator_pairwise_agreement", self.annotator_pairwise_agreement)
        put("agreement_unanimous", self.agreement_unanimous)
        put("agreement_split", self.agreement_split)
        if self.agreement_ceiling is not None and self.agreement_majority_loo is not None:
            out["rm/ceiling_gap"] = self.agreement_ceiling.value - self.agreement_majority_loo.value
        out["rm/n_label_conflicts"] = float(self.n_label_conflicts)
        for row in self.topics:
            topic = row.topic.replace("/", "_")  # a topic is one level of the name
            out[metric_name(f"rm/agreement_topic/{topic}")] = row.agreement_majority.value
            out[metric_name(f"rm/n_topic/{topic}")] = float(row.n)
            if row.agreement_gold is not None:
                out[metric_name(f"rm/agreement_gold_topic/{topic}")] = row.agreement_gold.value
        if self.calibration is not None:
            out["rm/ece"] = self.calibration.ece
        dist = self.reward_distribution
        out["rm/chosen_reward_mean"] = dist.chosen.mean
        out["rm/rejected_reward_mean"] = dist.rejected.mean
        out["rm/margin_mean"] = dist.margin.mean
        out["rm/reward_std"] = _pooled_std(dist)
        return out


def _pooled_std(dist: RewardDistribution) -> float:
    """Std of all rewards (chosen and rejected together), the reward model's output scale."""
    n_c, n_r = dist.chosen.n, dist.rejected.n
    mean = (n_c * dist.chosen.mean + n_r * dist.rejected.mean) / (n_c + n_r)
    second = (n_c * (dist.chosen.std**2 + dist.chosen.mean**2) + n_r * (dist.rejected.std**2 + dist.rejected.mean**2)) / (
        n_c + n_r
    )
    return math.sqrt(max(second - mean**2, 0.0))


# ----------------------------------------------------------------------------- per-pair pieces
def preference_score(chosen: np.ndarray, rejected: np.ndarray) -> np.ndarray:
    """1 where chosen scores higher, 0.5 on a tie, 0 otherwise: (n,), (n,) -> (n,)."""
    return (chosen > rejected).astype(np.float64) + 0.5 * (chosen == rejected)


def _agree(vote: float, majority: float) -> float:
    """Score a 0/1 vote against a majority in {0, 0.5 (tie), 1}."""
    return 0.5 if majority == 0.5 else float(vote == majority)


def _majority(votes_for_chosen: int, n: int) -> float:
    """1 if most voted chosen, 0 if most voted rejected, 0.5 on a tie."""
    return 1.0 if 2 * votes_for_chosen > n else 0.0 if 2 * votes_for_chosen < n else 0.5


def leave_one_out_ceiling(labels: Sequence[int]) -> float:
    """Mean over annotators of agreement with the majority of the others (needs >= 2 labels)."""
    n, k = len(labels), int(sum(labels))
    return sum(_agree(v, _majority(k - v, n - 1)) for v in labels) / n


def model_vs_leave_one_out(labels: Sequence[int], model_score: float) -> float:
    """The model's preference scored against the same leave-one-out majorities as the ceiling.

    ``model_score`` is the pair's preference score (1 chosen, 0 rejected, 0.5 tie); a tie
    agrees half with any majority.
    """
    n, k = len(labels), int(sum(labels))
    total = 0.0
    for v in labels:
        maj = _majority(k - v, n - 1)
        total += 0.5 if model_score == 0.5 else _agree(model_score, maj)
    return total / n


def pairwise_annotator_agreement(labels: Sequence[int]) -> float:
    """Fraction of annotator pairs of one item that voted alike (needs >= 2 labels)."""
    n, k = len(labels), int(sum(labels))
    return (math.comb(k, 2) + math.comb(n - k, 2)) / math.comb(n, 2)


def calibration_table(predicted: np.ndarray, observed: np.ndarray, n_bins: int) -> Calibration:
    """Equal-width bins of ``predicted`` on [0, 1] (the last bin includes 1.0); ECE over bins."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    which = np.clip(np.floor(predicted * n_bins).astype(np.int64), 0, n_bins - 1)  # (n,)
    n = len(predicted)
    bins, ece = [], 0.0
    for b in range(n_bins):
        sel = which == b
        count = int(sel.sum())
        mp = float(predicted[sel].mean()) if count else None
        mo = float(observed[sel].mean()) if count else None
        if count:
            ece += count / n * abs(mp - mo)
        bins.append(CalibrationBin(lower=b / n_bins, upper=(b + 1) / n_bins, count=count, mean_predicted=mp, mean_observed=mo))
    return Calibration(bins=bins, ece=float(ece), n=n)


def _summary(x: np.ndarray) -> Summary:
    p25, med, p75 = np.quantile(x, [0.25, 0.5, 0.75])
    return Summary(
        n=int(x.size), mean=float(x.mean()), std=float(x.std()), min=float(x.min()),
        p25=float(p25), median=float(med), p75=float(p75), max=float(x.max()),
    )  # fmt: skip


def _estimate(values: Sequence[float] | np.ndarray, n_boot: int, seed: int) -> Estimate | None:
    """The mean with its 95% interval; None for no values (the figure does not apply)."""
    est = estimate(values, n_boot=n_boot, seed=seed)
    return est if est.n else None


# ----------------------------------------------------------------------------- the evaluation
def reward_model_agreement(
    chosen_rewards: Sequence[float],
    rejected_rewards: Sequence[float],
    *,
    annotator_labels: Sequence[Sequence[int] | None] | None = None,
    gold_prefers_chosen: Sequence[bool | None] | None = None,
    topics: Sequence[str | None] | None = None,
    n_bins: int = 10,
    hist_bins: int = 20,
    n_boot: int = 1000,
    seed: int = 0,
) -> AgreementReport:
    """Agreement of a reward model with held-out preference pairs (see the module docstring).

    chosen_rewards, rejected_rewards: one reward per pair (n,). annotator_labels: per pair the
    annotators' votes (1 = preferred ``chosen``), any number per pair, None/empty where
    unknown. gold_prefers_chosen: per pair, whether the gold scorer ranks ``chosen`` higher;
    None where gold scores both the same (such pairs are left out of the gold agreement).
    topics: per pair topic (None -> "(none)"). Optional inputs left None skip their figures.
    """
    chosen = np.asarray(chosen_rewards, dtype=np.float64)
    rejected = np.asarray(rejected_rewards, dtype=np.float64)
    _check_inputs(chosen, rejected, annotator_labels=annotator_labels, gold_prefers_chosen=gold_prefers_chosen,
                  topics=topics)
    n = chosen.size
    score = preference_score(chosen, rejected)  # (n,)
    gold_score = _gold_scores(score, gold_prefers_chosen) if gold_prefers_chosen is not None else None
    labels = _check_labels(annotator_labels, n) if annotator_labels is not None else [None] * n
    annotators = _annotator_figures(labels, score, chosen - rejected, n_bins=n_bins, n_boot=n_boot, seed=seed)
    return AgreementReport(
        n_pairs=n,
        agreement_majority=_estimate(score, n_boot, seed),
        agreement_gold=_estimate(_known(gold_score), n_boot, seed) if gold_score is not None else None,
        **annotators,
        topics=_topic_agreement(topics, score, gold_score, n_boot, seed) if topics is not None else [],
        reward_distribution=_reward_distribution(chosen, rejected, hist_bins),
        definitions=DEFINITIONS,
    )


def _check_inputs(
    chosen: np.ndarray,
    rejected: np.ndarray,
    **per_pair: Sequence[Any] | None,
) -> None:
    """Two equal-length finite 1-d reward arrays, and one entry per pair in every optional input."""
    n = chosen.size
    if chosen.ndim != 1 or rejected.shape != chosen.shape:
        raise ValueError(f"reward_model_agreement: need two equal-length 1-d reward lists, got {chosen.shape} and {rejected.shape}")
    if n == 0:
        raise DataError("reward-model agreement: no held-out preference pairs to evaluate")
    for name, arr in (("chosen", chosen), ("rejected", rejected)):
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise TrainingError(f"reward-model agreement: pair {int(bad[0])}: the {name} reward is {arr[bad[0]]} (model output is not finite)")
    for name, seq in per_pair.items():
        if seq is not None and len(seq) != n:
            raise ValueError(f"reward_model_agreement: {name} has {len(seq)} entries for {n} pairs")


def _gold_scores(score: np.ndarray, gold_prefers_chosen: Sequence[bool | None]) -> np.ndarray:
    """The model's preference score against the gold scorer's preference: (n,), NaN where gold ties."""
    known = np.asarray([not _is_na(g) for g in gold_prefers_chosen], dtype=bool)
    gold = np.asarray([bool(g) if k else False for g, k in zip(gold_prefers_chosen, known)])
    return np.where(known, np.where(gold, score, 1.0 - score), np.nan)


def _annotator_figures(
    labels: list[list[int] | None], score: np.ndarray, margin: np.ndarray, *, n_bins: int, n_boot: int, seed: int
) -> dict[str, Any]:
    """The annotator-based fields of :class:`AgreementReport` (ceiling, leave-one-out, vote groups, calibration)."""
    ceiling, loo, pairwise, unanimous, split = [], [], [], [], []
    votes: dict[tuple[int, int], list[float]] = {}
    predicted, observed = [], []
    conflicts, without = 0, 0
    p_chosen = 1.0 / (1.0 + np.exp(-margin))  # (n,) Bradley-Terry P(chosen)
    for i, lab in enumerate(labels):
        if not lab:
            without += 1
            continue
        k, m = sum(lab), len(lab)
        conflicts += 2 * k < m
        predicted.append(p_chosen[i])
        observed.append(k / m)
        votes.setdefault((k, m), []).append(score[i])
        if m < 2:
            without += 1
            continue
        ceiling.append(leave_one_out_ceiling(lab))
        loo.append(model_vs_leave_one_out(lab, score[i]))
        pairwise.append(pairwise_annotator_agreement(lab))
        (unanimous if k in (0, m) else split).append(score[i])
    return dict(
        agreement_majority_loo=_estimate(loo, n_boot, seed),
        agreement_ceiling=_estimate(ceiling, n_boot, seed),
        annotator_pairwise_agreement=_estimate(pairwise, n_boot, seed),
        agreement_unanimous=_estimate(unanimous, n_boot, seed),
        agreement_split=_estimate(split, n_boot, seed),
        n_without_annotators=without,
        n_label_conflicts=int(conflicts),
        by_votes=[
            VoteGroup(votes_chosen=k, n_annotators=m, n=len(v), agreement_majority=float(np.mean(v)))
            for (k, m), v in sorted(votes.items(), key=lambda kv: (kv[0][1], -kv[0][0]))
        ],
        calibration=calibration_table(np.asarray(predicted), np.asarray(observed), n_bins) if predicted else None,
    )


def _topic_agreement(
    topics: Sequence[str | None], score: np.ndarray, gold_score: np.ndarray | None, n_boot: int, seed: int
) -> list[TopicAgreement]:
    """Agreement with the majority (and gold) per topic, topics sorted by name."""
    names = np.asarray([NO_TOPIC if t is None or t == "" else str(t) for t in topics], dtype=object)
    rows = []
    for topic in sorted(set(names)):
        sel = names == topic
        rows.append(
            TopicAgreement(
                topic=topic,
                n=int(sel.sum()),
                agreement_majority=_estimate(score[sel], n_boot, seed),
                agreement_gold=_estimate(_known(gold_score[sel]), n_boot, seed) if gold_score is not None else None,
            )
        )
    return rows


def _reward_distribution(chosen: np.ndarray, rejected: np.ndarray, hist_bins: int) -> RewardDistribution:
    edges = np.histogram_bin_edges(np.concatenate([chosen, rejected]), bins=hist_bins)
    return RewardDistribution(
        chosen=_summary(chosen),
        rejected=_summary(rejected),
        margin=_summary(chosen - rejected),
        bin_edges=[float(e) for e in edges],
        chosen_counts=[int(c) for c in np.histogram(chosen, bins=edges)[0]],
        rejected_counts=[int(c) for c in np.histogram(rejected, bins=edges)[0]],
    )


def _is_na(value: Any) -> bool:
    """None, NaN or pandas' NA: a missing cell as pandas/pyarrow hand it over."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or type(value).__name__ == "NAType"


def _known(values: np.ndarray) -> np.ndarray:
    return values[~np.isnan(values)]


def _check_labels(annotator_labels: Sequence[Sequence[int] | None], n: int) -> list[list[int] | None]:
    out: list[list[int] | None] = []
    for i, row in enumerate(annotator_labels):
        if not hasattr(row, "__iter__") or isinstance(row, str):
            if _is_na(row):
                out.append(None)
                continue
            raise DataError(f"held-out preference pair {i}: annotator_labels must be a list of 0/1 votes, got {row!r}")
        values = list(row)  # lists, tuples, numpy arrays (parquet list columns)
        for v in values:
            if v not in (0, 1):  # True/False pass as 1/0
                raise DataError(f"held-out preference pair {i}: annotator label {v!r} is not 0 or 1 (1 = preferred chosen)")
        out.append([int(v) for v in values])
    return out


DEFINITIONS = {
    "agreement_majority": "mean over pairs of [r_chosen > r_rejected] (ties 0.5); chosen = all annotators' majority",
    "agreement_gold": "same, against the gold scorer's preference",
    "agreement_majority_loo": "model preference vs the majority of all-but-one annotator, averaged over annotators then pairs (same footing as the ceiling)",
    "agreement_ceiling": "a single annotator vs the majority of the other annotators of the pair, averaged over annotators then pairs (pairs with >= 2 annotators)",
    "ceiling_gap": "agreement_ceiling - agreement_majority_loo",
    "annotator_pairwise_agreement": "fraction of annotator pairs voting alike, averaged over pairs",
    "agreement_unanimous": "agreement_majority on pairs whose >= 2 annotators all agreed",
    "agreement_split": "agreement_majority on pairs whose annotators disagreed",
    "ece": "sum over bins of count/n * |mean sigmoid(r_c - r_r) - mean fraction of annotators preferring chosen|",
    "ci": "95% percentile bootstrap over pairs",
}
