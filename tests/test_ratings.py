"""Bradley-Terry Elo ratings: a naive MM oracle, recovery of known strengths, invariants, intervals, errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from itertools import combinations

import numpy as np
import pytest

from rlhf_core.ratings import ELO_SCALE, Comparison, PlayerRating, elo_ratings, win_probability

from .conftest import REPO


def by_name(rows: list[PlayerRating]) -> dict[str, PlayerRating]:
    return {row.name: row for row in rows}


def simulate(true: dict[str, float], games_per_pair: int, seed: int, *, tie_rate: float = 0.0) -> list[Comparison]:
    """Round robin: every pair plays ``games_per_pair`` games; a's expected score is the Elo probability.

    A game is a tie with probability ``tie_rate``, else a win for a with probability q chosen so that
    ``tie_rate / 2 + (1 - tie_rate) q`` equals the Elo probability (ties count half, as in the fit).
    """
    rng = np.random.default_rng(seed)
    out: list[Comparison] = []
    for a, b in combinations(sorted(true), 2):
        q = (win_probability(true[a], true[b]) - tie_rate / 2) / (1 - tie_rate)
        assert 0 <= q <= 1
        for g in range(games_per_pair):
            if rng.random() < tie_rate:
                outcome = 0.5
            else:
                outcome = 1.0 if rng.random() < q else 0.0
            out.append((a, b, outcome) if g % 2 else (b, a, 1.0 - outcome))  # both seatings
    return out


def mm_reference(comparisons: list[Comparison], prior_games: float, iters: int = 20_000) -> dict[str, float]:
    """Hunter (2004) MM in plain float64 loops, with the virtual tied games against a strength-1 player.

    gamma_i <- W_i / sum_j n_ij / (gamma_i + gamma_j), W_i = score of i (ties half) + prior/2,
    j running over real opponents and the virtual one (gamma = 1, n = prior). Returns Elo, mean 1000.
    """
    players = sorted({p for a, b, _ in comparisons for p in (a, b)})
    score = {p: prior_games / 2 for p in players}
    n: dict[tuple[str, str], float] = {}
    for a, b, s in comparisons:
        score[a] += s
        score[b] += 1 - s
        n[(a, b)] = n.get((a, b), 0) + 1
        n[(b, a)] = n.get((b, a), 0) + 1
    gamma = {p: 1.0 for p in players}
    for _ in range(iters):
        new = {}
        for i in players:
            denom = prior_games / (gamma[i] + 1.0)
            for j in players:
                if (i, j) in n:
                    denom += n[(i, j)] / (gamma[i] + gamma[j])
            new[i] = score[i] / denom
        gamma = new
    elo = {p: 400 * math.log10(g) for p, g in gamma.items()}
    mean = sum(elo.values()) / len(elo)
    return {p: 1000 + e - mean for p, e in elo.items()}


# ----------------------------------------------------------------------------- the fit against references
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_newton_fit_matches_a_naive_mm_reference(seed):
    rng = np.random.default_rng(seed)
    players = [f"v{i}" for i in range(5)]
    comps: list[Comparison] = []
    for _ in range(60):  # random schedule, incl. lopsided records and ties
        a, b = rng.choice(players, size=2, replace=False)
        comps.append((str(a), str(b), float(rng.choice([0.0, 0.5, 1.0], p=[0.3, 0.2, 0.5]))))
    comps += [(players[i], players[i + 1], 1.0) for i in range(4)]  # keep the graph connected
    got = by_name(elo_ratings(comps, n_boot=1, prior_games=1.0))
    want = mm_reference(comps, prior_games=1.0)
    for p in players:
        assert got[p].rating == pytest.approx(want[p], abs=1e-6)


def test_hand_computed_two_players_and_the_prior():
    # a wins 3 of 4: without a prior the MLE has P(a beats b) = 3/4, i.e. a difference of 400 log10 3
    comps = [("a", "b", 1.0)] * 3 + [("a", "b", 0.0)]
    almost_no_prior = by_name(elo_ratings(comps, prior_games=1e-9, n_boot=10))
    gap = almost_no_prior["a"].rating - almost_no_prior["b"].rating
    assert gap == pytest.approx(400 * math.log10(3), abs=1e-4)
    assert almost_no_prior["a"].rating + almost_no_prior["b"].rating == pytest.approx(2000)  # mean at 1000
    assert win_probability(almost_no_prior["a"].rating, almost_no_prior["b"].rating) == pytest.approx(0.75, abs=1e-6)
    # the virtual tie pulls towards the pack: the one-tie prior shrinks the gap, more prior shrinks it more
    gaps = []
    for prior in (1.0, 4.0):
        r = by_name(elo_ratings(comps, prior_games=prior, n_boot=10))
        gaps.append(r["a"].rating - r["b"].rating)
    assert 0 < gaps[1] < gaps[0] < gap


def test_recovers_known_strengths_from_simulated_games():
    true = {"sft": 1000.0, "v1": 1080.0, "v2": 1150.0, "v3": 1190.0, "base": 850.0}
    comps = simulate(true, games_per_pair=400, seed=3, tie_rate=0.1)
    got = by_name(elo_ratings(comps, anchor="sft", n_boot=200))
    for name, rating in true.items():
        assert got[name].rating == pytest.approx(rating, abs=45)  # ~3.5 standard errors of a gap to the anchor
        assert got[name].ci_low <= got[name].rating <= got[name].ci_high
    assert [r.name for r in elo_ratings(comps, n_boot=20)] == ["v3", "v2", "v1", "sft", "base"]


# ----------------------------------------------------------------------------- invariants
def test_swapping_seats_changes_nothing_and_order_only_the_intervals():
    comps = simulate({"a": 1000, "b": 1100, "c": 1250}, games_per_pair=30, seed=4, tie_rate=0.2)
    base = elo_ratings(comps, n_boot=200, seed=7)
    swapped = elo_ratings([(b, a, 1.0 - s) for a, b, s in comps], n_boot=200, seed=7)
    for r, s in zip(base, swapped, strict=True):
        assert r.name == s.name and (r.wins, r.losses, r.ties, r.games) == (s.wins, s.losses, s.ties, s.games)
        assert (r.rating, r.ci_low, r.ci_high) == pytest.approx((s.rating, s.ci_low, s.ci_high), abs=1e-9)
    shuffled = [comps[i] for i in np.random.default_rng(0).permutation(len(comps))]
    for r, s in zip(base, elo_ratings(shuffled, n_boot=200, seed=7), strict=True):
        assert r.name == s.name and r.rating == pytest.approx(s.rating, abs=1e-9)


def test_even_records_give_equal_ratings_and_the_same_call_the_same_answer():
    comps = [("a", "b", 1.0), ("b", "a", 1.0), ("a", "c", 0.5), ("b", "c", 0.5), ("c", "a", 0.5), ("c", "b", 0.5)]
    rows = elo_ratings(comps, n_boot=50)
    assert [r.rating for r in rows] == pytest.approx([1000.0] * 3, abs=1e-9)
    assert [r.name for r in rows] == ["a", "b", "c"]  # equal ratings listed by name
    assert elo_ratings(comps, n_boot=50) == rows


def test_dominating_player_is_on_top_but_finite():
    comps = simulate({"a": 1000, "b": 1050, "c": 1100}, games_per_pair=20, seed=5)
    comps += [("champ", p, 1.0) for p in "abc" for _ in range(20)]  # never loses
    rows = elo_ratings(comps, n_boot=100)
    top = rows[0]
    assert top.name == "champ" and (top.wins, top.losses, top.games) == (60, 0, 60)
    assert all(math.isfinite(v) for v in (top.rating, top.ci_low, top.ci_high))
    assert top.rating - rows[1].rating > 200
    assert win_probability(top.rating, rows[-1].rating) < 1.0
    # even one single unbeaten game stays finite
    one = by_name(elo_ratings([("x", "y", 1.0)], n_boot=10))
    assert math.isfinite(one["x"].rating) and one["x"].rating > one["y"].rating


def test_anchor_puts_the_named_player_at_its_rating_and_keeps_the_gaps():
    comps = simulate({"sft": 1000, "p1": 1100, "p2": 1200}, games_per_pair=40, seed=6, tie_rate=0.1)
    free = by_name(elo_ratings(comps, n_boot=100))
    anchored = by_name(elo_ratings(comps, anchor="sft", anchor_rating=1500.0, n_boot=100))
    assert anchored["sft"].rating == pytest.approx(1500.0)
    assert (anchored["sft"].ci_low, anchored["sft"].ci_high) == pytest.approx((1500.0, 1500.0))  # relative to itself
    for p in ("p1", "p2"):
        assert anchored[p].rating - 1500.0 == pytest.approx(free[p].rating - free["sft"].rating, abs=1e-9)
        assert anchored[p].ci_low < anchored[p].rating < anchored[p].ci_high
    assert sum(r.rating for r in free.values()) / 3 == pytest.approx(1000.0)


def test_intervals_contain_the_point_and_narrow_with_more_games():
    true = {"a": 1000.0, "b": 1120.0, "c": 1200.0}
    widths = []
    for games in (25, 400):
        rows = by_name(elo_ratings(simulate(true, games, seed=8), anchor="a", n_boot=300, confidence=0.9))
        for name in ("b", "c"):
            assert rows[name].ci_low <= rows[name].rating <= rows[name].ci_high
        widths.append(rows["b"].ci_high - rows["b"].ci_low)
    assert widths[1] < widths[0] / 2.5  # 16x the games: about 1/4 of the width
    wider = by_name(elo_ratings(simulate(true, 25, seed=8), anchor="a", n_boot=300, confidence=0.99))["b"]
    assert wider.ci_high - wider.ci_low > widths[0]


def test_records_count_wins_losses_ties_for_both_seats():
    comps = [("a", "b", 1.0), ("b", "a", 1.0), ("b", "a", 0.5), ("a", "c", 0.0), ("c", "b", 0)]
    rows = by_name(elo_ratings(comps, n_boot=5))
    assert (rows["a"].wins, rows["a"].losses, rows["a"].ties, rows["a"].games) == (1, 2, 1, 4)
    assert (rows["b"].wins, rows["b"].losses, rows["b"].ties, rows["b"].games) == (2, 1, 1, 4)
    assert (rows["c"].wins, rows["c"].losses, rows["c"].ties, rows["c"].games) == (1, 1, 0, 2)
    json.dumps([r.to_dict() for r in rows.values()])


def test_win_probability_is_the_elo_curve():
    assert win_probability(1000, 1000) == 0.5
    assert win_probability(1400, 1000) == pytest.approx(10 / 11)
    assert win_probability(1234, 1100) + win_probability(1100, 1234) == pytest.approx(1.0)
    # the Elo curve is the logistic in log-strengths: 400 Elo / ln 10 per nat
    assert win_probability(1000 + ELO_SCALE, 1000) == pytest.approx(1 / (1 + math.exp(-1)))


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("comparisons", "kwargs", "message"),
    [
        ([], {}, "no comparisons"),
        ([("a", "b", 1.0), ("a", "a", 0.5)], {}, "comparison 1: player 'a' is compared with itself"),
        ([("a", "b", 0.7)], {}, "outcome must be 1.0"),
        ([("a", "b", 2)], {}, "got 2"),
        ([("a", "b", float("nan"))], {}, "outcome must be"),
        ([("a", "b", True)], {}, "outcome must be"),
        ([("a", "b", "1")], {}, "outcome must be"),
        ([("a", "b")], {}, "expected (player_a, player_b, outcome)"),
        ([("a", 3, 1.0)], {}, "players must be strings"),
        ([("a", "b", 1.0)], {"anchor": "sft"}, "anchor 'sft' is not among the players ['a', 'b']"),
        ([("a", "b", 1.0), ("c", "d", 0.5), ("d", "e", 1.0)], {},
         "2 groups never compared with each other: {a, b} | {c, d, e}"),
        ([("a", "b", 1.0)], {"prior_games": 0.0}, "prior_games must be"),
        ([("a", "b", 1.0)], {"n_boot": 0}, "n_boot must be >= 1"),
        ([("a", "b", 1.0)], {"confidence": 1.0}, "confidence must be in (0, 1)"),
    ],
)
def test_bad_input_raises_a_clear_value_error(comparisons, kwargs, message):
    with pytest.raises(ValueError) as err:
        elo_ratings(comparisons, **kwargs)
    assert message in str(err.value)


def test_importing_ratings_and_diversity_loads_no_torch():
    code = "import sys, rlhf_core.ratings, rlhf_core.diversity; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"
