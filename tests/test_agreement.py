"""Reward-model agreement, the annotator ceiling, calibration, bootstrap intervals and plots."""

from __future__ import annotations

import json
import math
import random
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from rlhf_core.errors import DataError, TrainingError
from rlhf_core.reward.agreement import (
    leave_one_out_ceiling,
    model_vs_leave_one_out,
    pairwise_annotator_agreement,
    reward_model_agreement,
)
from rlhf_core.stats import bootstrap_ci


def logit(p: float) -> float:
    return math.log(p / (1 - p))


# ----------------------------------------------------------------------------- agreement by hand
def test_agreement_on_hand_made_pairs() -> None:
    chosen = [2.0, 1.0, 0.5, 3.0, 0.0]
    rejected = [1.0, 2.0, 0.5, 1.0, -1.0]
    # model: right, wrong, tie, right, right -> (1 + 0 + .5 + 1 + 1) / 5
    gold = [True, True, False, False, True]
    # vs gold: 1, 0, .5, 0, 1 -> 2.5 / 5
    topics = ["cooking", "cooking", "math", None, "math"]
    rep = reward_model_agreement(chosen, rejected, annotator_labels=None, gold_prefers_chosen=gold, topics=topics, n_bins=4)
    assert rep.n_pairs == 5
    assert rep.agreement_majority.value == pytest.approx(3.5 / 5)
    assert rep.agreement_majority.n == 5
    assert rep.agreement_gold.value == pytest.approx(2.5 / 5)
    by_topic = {t.topic: t for t in rep.topics}
    assert by_topic["cooking"].agreement_majority.value == pytest.approx(0.5)
    assert by_topic["math"].agreement_majority.value == pytest.approx(0.75)
    assert by_topic["(none)"].n == 1 and by_topic["(none)"].agreement_gold.value == 0.0
    assert rep.agreement_ceiling is None and rep.calibration is None and rep.n_without_annotators == 5
    m = rep.metrics()
    assert m["rm/agreement_majority"] == pytest.approx(0.7)
    assert m["rm/agreement_topic/cooking"] == pytest.approx(0.5)
    # "(none)" made metric-safe: the name MLflow has always stored for it (the tracker trimmed the last "_")
    assert m["rm/agreement_topic/_none"] == pytest.approx(1.0)
    assert "rm/agreement_ceiling" not in m and "rm/ece" not in m
    assert m["rm/agreement_majority_ci_low"] <= m["rm/agreement_majority"] <= m["rm/agreement_majority_ci_high"]
    json.dumps(rep.to_dict())  # serialisable as is


def test_unanimous_vs_split_and_vote_groups() -> None:
    labels = [[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 0, 1], [1, 1], [1]]
    chosen = [1.0, 1.0, 1.0, -1.0, -1.0, 1.0]
    rejected = [0.0, 2.0, 0.0, 0.0, 0.0, 0.0]
    rep = reward_model_agreement(chosen, rejected, annotator_labels=labels, gold_prefers_chosen=None, topics=None)
    # unanimous (>= 2 annotators, all agree): pairs 0, 1, 4 -> model 1, 0, 0
    assert rep.agreement_unanimous.value == pytest.approx(1 / 3) and rep.agreement_unanimous.n == 3
    # split: pairs 2, 3 -> model 1, 0
    assert rep.agreement_split.value == pytest.approx(0.5) and rep.agreement_split.n == 2
    assert rep.n_without_annotators == 1  # the single-annotator pair has no ceiling
    groups = {(g.votes_chosen, g.n_annotators): g for g in rep.by_votes}
    assert groups[(3, 3)].n == 2 and groups[(2, 3)].n == 2 and groups[(2, 3)].agreement_majority == 0.5
    assert rep.n_label_conflicts == 0


def test_missing_cells_as_pandas_hands_them_over() -> None:
    """Parquet list columns arrive as numpy arrays, missing cells as None/NaN; gold ties as None."""
    labels = [np.array([1, 1, 0]), None, float("nan"), [True, True]]
    gold = [True, None, False, float("nan")]
    rep = reward_model_agreement([1.0, 1.0, 0.0, 2.0], [0.0, 0.0, 1.0, 1.0], annotator_labels=labels, gold_prefers_chosen=gold, topics=None)
    assert rep.agreement_ceiling.n == 2 and rep.n_without_annotators == 2
    assert rep.calibration.n == 2
    # gold known on pairs 0 and 2: model right on 0 (prefers chosen), right on 2 (prefers rejected, as gold does)
    assert rep.agreement_gold.n == 2 and rep.agreement_gold.value == 1.0


def test_label_conflicts_and_bad_labels() -> None:
    rep = reward_model_agreement([1.0, 1.0], [0.0, 0.0], annotator_labels=[[0, 0, 1], [1, 1, 0]], gold_prefers_chosen=None, topics=None)
    assert rep.n_label_conflicts == 1
    with pytest.raises(DataError, match=r"pair 1: annotator label 2 is not 0 or 1"):
        reward_model_agreement([1.0, 1.0], [0.0, 0.0], annotator_labels=[[1], [2]], gold_prefers_chosen=None, topics=None)
    with pytest.raises(DataError, match=r"pair 0: annotator_labels must be a list of 0/1 votes"):
        reward_model_agreement([1.0], [0.0], annotator_labels=[3], gold_prefers_chosen=None, topics=None)
    with pytest.raises(DataError, match="no held-out preference pairs"):
        reward_model_agreement([], [], annotator_labels=None, gold_prefers_chosen=None, topics=None)
    with pytest.raises(TrainingError, match="pair 1: the rejected reward is nan"):
        reward_model_agreement([1.0, 1.0], [0.0, float("nan")], annotator_labels=None, gold_prefers_chosen=None, topics=None)
    with pytest.raises(ValueError, match="topics has 1 entries for 2 pairs"):
        reward_model_agreement([1.0, 1.0], [0.0, 0.0], annotator_labels=None, gold_prefers_chosen=None, topics=["a"])


# ----------------------------------------------------------------------------- ceiling by hand
@pytest.mark.parametrize(
    ("labels", "ceiling", "pairwise"),
    [
        ([1, 1, 1], 1.0, 1.0),
        # a1, a2 (vote 1) see others (1, 0): tie -> 0.5 each; a3 (vote 0) sees (1, 1) -> 0
        ([1, 1, 0], (0.5 + 0.5 + 0.0) / 3, 1 / 3),
        # two annotators: leave-one-out majority is the other vote
        ([1, 0], 0.0, 0.0),
        ([1, 1], 1.0, 1.0),
        # 1,1,1,0: each 1 sees two 1s and a 0 -> agrees; the 0 sees three 1s -> disagrees
        ([1, 1, 1, 0], 3 / 4, 3 / 6),
        # 1,1,0,0,0: each 1 sees (1,0,0,0) -> majority 0, disagrees; each 0 sees (1,1,0,0) -> tie 0.5
        ([1, 1, 0, 0, 0], (0 + 0 + 0.5 * 3) / 5, (1 + 3) / 10),
    ],
)
def test_ceiling_on_hand_made_annotator_matrices(labels: list[int], ceiling: float, pairwise: float) -> None:
    assert leave_one_out_ceiling(labels) == pytest.approx(ceiling)
    assert pairwise_annotator_agreement(labels) == pytest.approx(pairwise)


def ref_loo(labels: list[int], predict) -> float:
    """Brute force: for each held-out annotator, majority of the rest, scored with ties half."""
    scores = []
    for a in range(len(labels)):
        rest = labels[:a] + labels[a + 1 :]
        frac = sum(rest) / len(rest)
        maj = 1 if frac > 0.5 else 0 if frac < 0.5 else None
        p = predict(a)
        scores.append(0.5 if maj is None or p is None else float(p == maj))
    return sum(scores) / len(scores)


def test_ceiling_and_model_loo_vs_brute_force_on_random_matrices() -> None:
    rng = random.Random(0)
    for _ in range(200):
        labels = [rng.randint(0, 1) for _ in range(rng.randint(2, 7))]
        assert leave_one_out_ceiling(labels) == pytest.approx(ref_loo(labels, lambda a: labels[a]))
        for score, pred in ((1.0, 1), (0.0, 0), (0.5, None)):
            assert model_vs_leave_one_out(labels, score) == pytest.approx(ref_loo(labels, lambda a: pred))
        agree = [labels[a] == labels[b] for a, b in combinations(range(len(labels)), 2)]
        assert pairwise_annotator_agreement(labels) == pytest.approx(sum(agree) / len(agree))


def test_report_ceiling_beside_model_on_the_same_pairs() -> None:
    labels = [[1, 1, 1], [1, 1, 0], [1, 0], [1]]
    rep = reward_model_agreement([1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], annotator_labels=labels, gold_prefers_chosen=None, topics=None)
    # pairs with >= 2 annotators: 3; single-annotator pair excluded
    assert rep.agreement_ceiling.n == 3
    assert rep.agreement_ceiling.value == pytest.approx((1.0 + 1 / 3 + 0.0) / 3)
    # a model always preferring chosen, scored against the same leave-one-out majorities:
    # [1,1,1] -> 1; [1,1,0] -> (0.5 + 0.5 + 1)/3; [1,0] -> (0 + 1)/2
    loo = (1.0 + 2 / 3 + 0.5) / 3
    assert rep.agreement_majority_loo.value == pytest.approx(loo)
    assert rep.annotator_pairwise_agreement.value == pytest.approx((1 + 1 / 3 + 0) / 3)
    m = rep.metrics()
    assert m["rm/ceiling_gap"] == pytest.approx(rep.agreement_ceiling.value - loo)
    assert m["rm/n_majority"] == 4


# ----------------------------------------------------------------------------- calibration
def _random_eval(seed: int, n: int, *, perfect: bool):
    rng = np.random.default_rng(seed)
    labels, chosen, rejected = [], [], []
    for _ in range(n):
        m = int(rng.integers(3, 6))
        k = int(rng.integers(m // 2 + 1, m + 1))  # chosen is the majority
        lab = [1] * k + [0] * (m - k)
        labels.append(lab)
        r_rej = float(rng.normal())
        if perfect:  # sigmoid(r_c - r_r) equals the observed fraction (clipped away from 1)
            frac = min(k / m, 0.99)
            chosen.append(r_rej + logit(frac))
        else:
            chosen.append(r_rej + float(rng.normal()))
        rejected.append(r_rej)
    return chosen, rejected, labels


@pytest.mark.parametrize("n_bins", [1, 5, 10, 13])
def test_calibration_bins_sum_to_n(n_bins: int) -> None:
    chosen, rejected, labels = _random_eval(1, 157, perfect=False)
    labels[3] = None  # a pair without annotators is left out of calibration
    rep = reward_model_agreement(chosen, rejected, annotator_labels=labels, gold_prefers_chosen=None, topics=None, n_bins=n_bins)
    cal = rep.calibration
    assert len(cal.bins) == n_bins
    assert sum(b.count for b in cal.bins) == cal.n == 156
    assert cal.bins[0].lower == 0.0 and cal.bins[-1].upper == 1.0
    for b in cal.bins:
        if b.count:
            assert b.lower <= b.mean_predicted <= b.upper
    # ECE by hand from the table
    ece = sum(b.count / cal.n * abs(b.mean_predicted - b.mean_observed) for b in cal.bins if b.count)
    assert cal.ece == pytest.approx(ece)
    assert rep.metrics()["rm/ece"] == pytest.approx(ece)


def test_perfect_model_agreement_one_and_small_ece() -> None:
    chosen, rejected, labels = _random_eval(2, 300, perfect=True)
    rep = reward_model_agreement(chosen, rejected, annotator_labels=labels, gold_prefers_chosen=[True] * 300, topics=None)
    assert rep.agreement_majority.value == 1.0
    assert rep.agreement_gold.value == 1.0
    assert rep.calibration.ece < 0.011  # only the 0.99 clip of unanimous pairs separates them
    noisy_c, noisy_r, noisy_labels = _random_eval(2, 300, perfect=False)
    noisy = reward_model_agreement(noisy_c, noisy_r, annotator_labels=noisy_labels, gold_prefers_chosen=None, topics=None)
    assert noisy.calibration.ece > 5 * rep.calibration.ece
    assert noisy.agreement_majority.value < 1.0


def test_reward_distribution_summary_and_histogram() -> None:
    chosen, rejected, labels = _random_eval(3, 120, perfect=False)
    rep = reward_model_agreement(chosen, rejected, annotator_labels=labels, gold_prefers_chosen=None, topics=None, hist_bins=12)
    d = rep.reward_distribution
    assert len(d.bin_edges) == 13
    assert sum(d.chosen_counts) == sum(d.rejected_counts) == 120
    assert d.chosen.mean == pytest.approx(np.mean(chosen))
    assert d.margin.median == pytest.approx(np.median(np.subtract(chosen, rejected)))
    assert rep.metrics()["rm/reward_std"] == pytest.approx(np.std(chosen + rejected))


# ----------------------------------------------------------------------------- bootstrap
def test_bootstrap_ci_contains_estimate_and_narrows_with_n() -> None:
    rng = np.random.default_rng(0)
    widths = []
    for n in (50, 500, 5000):
        values = (rng.random(n) < 0.7).astype(float)
        low, high = bootstrap_ci(values, n_boot=1000, seed=0)
        assert low <= values.mean() <= high
        widths.append(high - low)
        # about 2 * 1.96 * binomial standard error
        se = math.sqrt(values.mean() * (1 - values.mean()) / n)
        assert 0.7 * 3.92 * se < high - low < 1.3 * 3.92 * se
    assert widths[0] > widths[1] > widths[2]
    assert bootstrap_ci(values, seed=1) == bootstrap_ci(values, seed=1)  # deterministic by seed
    assert bootstrap_ci([0.25]) == (0.25, 0.25)
    median_ci = bootstrap_ci([1.0, 2.0, 3.0, 100.0], statistic=np.median)
    assert median_ci[1] <= 100.0 and median_ci[0] >= 1.0
    with pytest.raises(ValueError, match="no values"):
        bootstrap_ci([])


# ----------------------------------------------------------------------------- plots
def test_plots_written_and_non_empty(tmp_path: Path) -> None:
    from tasks.plots import plot_reliability, plot_reward_distribution

    chosen, rejected, labels = _random_eval(4, 80, perfect=False)
    rep = reward_model_agreement(chosen, rejected, annotator_labels=labels, gold_prefers_chosen=None, topics=None)
    for fn, name in ((plot_reliability, "reliability.png"), (plot_reward_distribution, "rewards.png")):
        for source in (rep, rep.to_dict()):
            out = fn(source, tmp_path / "plots" / name)
            data = out.read_bytes()
            assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    no_labels = reward_model_agreement(chosen, rejected, annotator_labels=None, gold_prefers_chosen=None, topics=None)
    placeholder = plot_reliability(no_labels, tmp_path / "none.png").read_bytes()  # says so, does not crash
    assert placeholder[:8] == b"\x89PNG\r\n\x1a\n"
