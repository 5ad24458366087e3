"""Elo ratings of players (policy versions) from head-to-head comparisons, by Bradley-Terry.

Iterated online RLHF (Bai et al. 2022, "Training a Helpful and Harmless Assistant with RLHF",
sec. 4.5) ranks successive policy snapshots by having them play each other: a judge (people, a
reward model, a gold scorer) picks the better reply of two to the same prompt. This module turns
such games into ratings with intervals; it needs numpy only.

Model (Bradley & Terry 1952). Player i has a log-strength theta_i and

    P(i beats j) = sigma(theta_i - theta_j) = 1 / (1 + exp(theta_j - theta_i)).

A comparison ``(a, b, outcome)`` scores ``s = outcome`` for a and ``1 - s`` for b, with s in
{1 (a wins), 0 (b wins), 0.5 (tie)}: a tie counts as half a win for each side, so the
log-likelihood of the games is

    L(theta) = sum_k [ s_k log sigma(theta_a - theta_b) + (1 - s_k) log sigma(theta_b - theta_a) ].

Prior. L alone has no finite maximum when a player wins (or loses) every game (Hunter 2004,
assumption 1: the win graph must be strongly connected). Each player therefore also plays
``prior_games`` (default 1) virtual games against a virtual player of log-strength 0, all ties:

    L_prior(theta) = L(theta) + prior_games * sum_i [ 0.5 log sigma(theta_i) + 0.5 log sigma(-theta_i) ].

The penalty is strictly concave, so the maximum exists, is unique and finite, and an unbeaten
player gets a high but finite rating. It also fixes the free shift of L (only differences of
theta are identified) by centring the players on the virtual one; with a few dozen games per
player its pull on the differences is a few Elo points. The maximum is found by Newton's method
with a backtracking line search on the concave L_prior (Hunter 2004 gives the MM alternative;
tests/test_ratings.py checks one against the other).

Elo scale. ``rating = 400 * log10(strength) = 400 * theta / ln 10`` plus a shift, so

    P(a beats b) = 1 / (1 + 10^((R_b - R_a) / 400))             (:func:`win_probability`)

i.e. 400 points are odds of 10:1. The shift puts ``anchor`` at ``anchor_rating`` (e.g. the SFT
model at 1000), or, without an anchor, the mean rating at ``anchor_rating``.

Intervals. A percentile bootstrap over comparisons, stratified by pair: each resample redraws,
with replacement, as many games of each pair of players as that pair played. Who played whom how
often is the experiment's design; the outcomes are the random part. Stratifying keeps every
resample's comparison graph the one that was played (an unstratified resample can drop a
player's only game and leave its rating undefined). Each resample is refitted and re-anchored
the same way, so an interval is relative to the anchor (the anchor's own interval is the point
``anchor_rating``) or, without one, to the pool's mean. The percentile convention is
:func:`rlhf_core.stats.bootstrap_ci`'s; that helper bootstraps one scalar of i.i.d. values,
whereas here all players' ratings come from the same refit of each stratified resample.

Players in two groups that never met have no rating difference the data can tell; the fit
refuses them (ValueError naming the groups) rather than report the prior's guess.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

ELO_SCALE = 400.0 / math.log(10.0)  # Elo points per nat of log-strength: 400 * log10(e^theta) = theta * 400 / ln 10

Comparison = tuple[str, str, float]
"""``(player_a, player_b, outcome)``: outcome 1.0 = a wins, 0.0 = b wins, 0.5 = tie."""


@dataclass(frozen=True)
class PlayerRating:
    """One player's Elo rating, its bootstrap interval, and its record (ties count in neither wins nor losses)."""

    name: str
    rating: float
    ci_low: float
    ci_high: float
    wins: int
    losses: int
    ties: int
    games: int

    def to_dict(self) -> dict[str, str | float | int]:
        return asdict(self)


def win_probability(rating_a: float, rating_b: float) -> float:
    """Expected score of a against b on the Elo scale: ``1 / (1 + 10^((rating_b - rating_a) / 400))``.

    Equal ratings give 0.5, a lead of 400 points gives 10/11 (odds 10:1). A tie counts as half a
    win, so this is also a's expected score per game.
    """
    return 1.0 / (1.0 + 10.0 ** ((rating_b - rating_a) / 400.0))


def elo_ratings(
    comparisons: Sequence[Comparison],
    *,
    anchor: str | None = None,
    anchor_rating: float = 1000.0,
    prior_games: float = 1.0,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> list[PlayerRating]:
    """Bradley-Terry ratings on the Elo scale with percentile-bootstrap intervals, best player first.

    ``comparisons``: ``(a, b, outcome)`` per game (module docstring). ``anchor``: the player put at
    ``anchor_rating``; None puts the players' mean there. ``prior_games`` (> 0): virtual tied games
    per player against a log-strength-0 player that keep an unbeaten player's rating finite.
    ``n_boot`` stratified resamples (seeded by ``seed``) give the ``confidence`` intervals.

    Deterministic: the same comparisons in the same order give the same ratings and intervals;
    the point ratings do not depend on the order at all. Ratings tied to within 1e-9 are listed
    by name.

    Raises ValueError for: no comparisons, a player compared with itself, an outcome not in
    {0, 0.5, 1}, an ``anchor`` that played no game, players split into groups never compared.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"elo_ratings: confidence must be in (0, 1), got {confidence}")
    if n_boot < 1:
        raise ValueError(f"elo_ratings: n_boot must be >= 1, got {n_boot}")
    if not (prior_games > 0.0 and math.isfinite(prior_games)):
        raise ValueError(f"elo_ratings: prior_games must be a finite number > 0 (it keeps unbeaten players finite), "
                         f"got {prior_games}")
    games = _parse(comparisons)
    if anchor is not None and anchor not in games.players:
        raise ValueError(f"elo_ratings: anchor {anchor!r} is not among the players {sorted(games.players)}")
    _require_connected(games)
    anchor_idx = None if anchor is None else games.players.index(anchor)

    # Point estimate: one fit on the games as played.
    theta = _fit_log_strengths(games.pair_lo, games.pair_hi, games.pair_games, games.pair_score_lo,
                               len(games.players), prior_games)
    ratings = _to_elo(theta, anchor_idx, anchor_rating)  # (P,)

    # Bootstrap: per pair, redraw its games with replacement; refit from the point estimate.
    boot_scores = _stratified_pair_scores(games, n_boot, seed)  # (n_boot, pairs)
    boot = np.empty((n_boot, len(games.players)))  # (n_boot, P)
    for r in range(n_boot):
        th = _fit_log_strengths(games.pair_lo, games.pair_hi, games.pair_games, boot_scores[r],
                                len(games.players), prior_games, start=theta)
        boot[r] = _to_elo(th, anchor_idx, anchor_rating)
    alpha = 1.0 - confidence
    low, high = np.quantile(boot, [alpha / 2, 1.0 - alpha / 2], axis=0)  # (P,) each

    rows = [
        PlayerRating(name=name, rating=float(ratings[i]), ci_low=float(low[i]), ci_high=float(high[i]),
                     wins=int(games.wins[i]), losses=int(games.losses[i]), ties=int(games.ties[i]),
                     games=int(games.wins[i] + games.losses[i] + games.ties[i]))
        for i, name in enumerate(games.players)
    ]
    return sorted(rows, key=lambda row: (-round(row.rating, 9), row.name))


# ----------------------------------------------------------------------------- games in array form
@dataclass(frozen=True)
class _Games:
    """Comparisons validated and grouped by unordered pair of players.

    Players are indexed in sorted-name order. Pair g is ``(pair_lo[g], pair_hi[g])`` with
    ``pair_lo < pair_hi``; ``pair_score_lo[g]`` is the lower-indexed player's total score over the
    ``pair_games[g]`` games of the pair. ``scores_by_pair`` holds each game's score for the
    lower-indexed player, the games of pair g at ``pair_start[g] : pair_start[g] + pair_games[g]``.
    """

    players: list[str]
    pair_lo: np.ndarray  # (G,) int
    pair_hi: np.ndarray  # (G,) int
    pair_games: np.ndarray  # (G,) float
    pair_score_lo: np.ndarray  # (G,) float
    pair_start: np.ndarray  # (G,) int
    scores_by_pair: np.ndarray  # (M,) float
    wins: np.ndarray  # (P,) int
    losses: np.ndarray  # (P,) int
    ties: np.ndarray  # (P,) int


def _parse(comparisons: Sequence[Comparison]) -> _Games:
    if len(comparisons) == 0:
        raise ValueError("elo_ratings: no comparisons; need at least one (a, b, outcome) game")
    for k, comparison in enumerate(comparisons):
        if len(comparison) != 3:
            raise ValueError(f"elo_ratings: comparison {k} is {comparison!r}; expected (player_a, player_b, outcome)")
        a, b, outcome = comparison
        if not isinstance(a, str) or not isinstance(b, str):
            raise ValueError(f"elo_ratings: comparison {k}: players must be strings, got {a!r} and {b!r}")
        if a == b:
            raise ValueError(f"elo_ratings: comparison {k}: player {a!r} is compared with itself")
        if isinstance(outcome, bool) or not isinstance(outcome, (int, float)) or float(outcome) not in (0.0, 0.5, 1.0):
            raise ValueError(f"elo_ratings: comparison {k} ({a!r} vs {b!r}): outcome must be 1.0 (a wins), "
                             f"0.0 (b wins) or 0.5 (tie), got {outcome!r}")
    players = sorted({p for a, b, _ in comparisons for p in (a, b)})
    index = {name: i for i, name in enumerate(players)}
    a_idx = np.array([index[a] for a, _, _ in comparisons])  # (M,)
    b_idx = np.array([index[b] for _, b, _ in comparisons])  # (M,)
    s = np.array([float(o) for _, _, o in comparisons])  # (M,) a's score

    n = len(players)
    wins = np.bincount(a_idx, s == 1.0, n) + np.bincount(b_idx, s == 0.0, n)
    losses = np.bincount(a_idx, s == 0.0, n) + np.bincount(b_idx, s == 1.0, n)
    ties = np.bincount(a_idx, s == 0.5, n) + np.bincount(b_idx, s == 0.5, n)

    lo, hi = np.minimum(a_idx, b_idx), np.maximum(a_idx, b_idx)
    s_lo = np.where(a_idx == lo, s, 1.0 - s)  # (M,) score of the lower-indexed player
    pair_key = lo * n + hi
    order = np.argsort(pair_key, kind="stable")  # stable: a game's place within its pair follows the input order
    keys, pair_start, pair_games = np.unique(pair_key[order], return_index=True, return_counts=True)
    scores_by_pair = s_lo[order]
    return _Games(
        players=players,
        pair_lo=keys // n, pair_hi=keys % n,
        pair_games=pair_games.astype(np.float64),
        pair_score_lo=np.add.reduceat(scores_by_pair, pair_start),
        pair_start=pair_start, scores_by_pair=scores_by_pair,
        wins=wins.astype(int), losses=losses.astype(int), ties=ties.astype(int),
    )


def _require_connected(games: _Games) -> None:
    """Raise when the comparison graph has more than one component (union-find over the pairs)."""
    parent = list(range(len(games.players)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(games.pair_lo.tolist(), games.pair_hi.tolist(), strict=True):
        parent[root(i)] = root(j)
    groups: dict[int, list[str]] = {}
    for i, name in enumerate(games.players):
        groups.setdefault(root(i), []).append(name)
    if len(groups) > 1:
        listed = " | ".join("{" + ", ".join(g) + "}" for g in sorted(groups.values()))
        raise ValueError(f"elo_ratings: the players form {len(groups)} groups never compared with each other: "
                         f"{listed}; ratings across groups are undefined: add games between them")


def _stratified_pair_scores(games: _Games, n_boot: int, seed: int) -> np.ndarray:
    """Per resample, each pair's total score for its lower-indexed player after redrawing its games: (n_boot, G)."""
    rng = np.random.default_rng(seed)
    m = games.scores_by_pair.size
    pair_of_game = np.repeat(np.arange(games.pair_games.size), games.pair_games.astype(int))  # (M,)
    start = games.pair_start[pair_of_game]  # (M,)
    size = games.pair_games[pair_of_game]  # (M,)
    rows_per_chunk = max(1, 4_000_000 // m)  # cap the index matrix at ~32 MB, as rlhf_core.stats.bootstrap_ci does
    chunks = []
    for first in range(0, n_boot, rows_per_chunk):
        u = rng.random((min(rows_per_chunk, n_boot - first), m))  # (chunk, M)
        offset = np.minimum((u * size).astype(np.int64), (size - 1).astype(np.int64))  # (chunk, M) in [0, pair size)
        drawn = start + offset  # (chunk, M): a game of the same pair
        chunks.append(np.add.reduceat(games.scores_by_pair[drawn], games.pair_start, axis=1))  # (chunk, G)
    return np.concatenate(chunks)


# ----------------------------------------------------------------------------- the fit
def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # = 1 / (1 + exp(-x)), without overflow


def _log_likelihood(theta: np.ndarray, lo: np.ndarray, hi: np.ndarray, n_games: np.ndarray,
                    score_lo: np.ndarray, prior_games: float) -> float:
    """L_prior(theta) of the module docstring, from per-pair totals (log sigma(x) = -log(1 + exp(-x)))."""
    d = theta[lo] - theta[hi]  # (G,)
    data = -(score_lo * np.logaddexp(0.0, -d) + (n_games - score_lo) * np.logaddexp(0.0, d)).sum()
    prior = -0.5 * prior_games * (np.logaddexp(0.0, -theta) + np.logaddexp(0.0, theta)).sum()
    return float(data + prior)


def _fit_log_strengths(lo: np.ndarray, hi: np.ndarray, n_games: np.ndarray, score_lo: np.ndarray,
                       n_players: int, prior_games: float, *, start: np.ndarray | None = None,
                       tol: float = 1e-10, max_iter: int = 200) -> np.ndarray:
    """argmax of L_prior by damped Newton: theta (P,) in nats.

    Gradient  g_i = sum_{pairs with i} (score_i - n_ij sigma(theta_i - theta_j)) + prior_games (0.5 - sigma(theta_i)).
    Minus the Hessian is the weighted graph Laplacian with weights n_ij p_ij (1 - p_ij), plus the
    diagonal prior_games sigma(theta_i)(1 - sigma(theta_i)) that makes it positive definite.
    The step is halved until L_prior rises enough (Armijo), so the concave problem always converges.
    """
    theta = np.zeros(n_players) if start is None else start.copy()
    value = _log_likelihood(theta, lo, hi, n_games, score_lo, prior_games)
    for _ in range(max_iter):
        p = _sigmoid(theta[lo] - theta[hi])  # (G,) P(lo beats hi)
        q = _sigmoid(theta)  # (P,) P(beats the virtual player)
        resid = score_lo - n_games * p  # (G,)
        grad = np.bincount(lo, resid, n_players) - np.bincount(hi, resid, n_players) + prior_games * (0.5 - q)
        w = n_games * p * (1.0 - p)  # (G,)
        neg_hess = np.diag(np.bincount(lo, w, n_players) + np.bincount(hi, w, n_players) + prior_games * q * (1.0 - q))
        np.add.at(neg_hess, (lo, hi), -w)
        np.add.at(neg_hess, (hi, lo), -w)
        step = np.linalg.solve(neg_hess, grad)  # (P,)
        slope = float(grad @ step)  # > 0: the Newton direction ascends
        t = 1.0
        while True:
            candidate = theta + t * step
            new_value = _log_likelihood(candidate, lo, hi, n_games, score_lo, prior_games)
            if new_value >= value + 1e-4 * t * slope or t < 1e-12:
                break
            t *= 0.5
        theta, value = candidate, new_value
        if float(np.max(np.abs(t * step))) < tol:
            return theta
    raise RuntimeError(f"elo_ratings: Newton's method did not converge in {max_iter} iterations")  # pragma: no cover


def _to_elo(theta: np.ndarray, anchor_idx: int | None, anchor_rating: float) -> np.ndarray:
    """Elo ratings (P,): ELO_SCALE * theta shifted so the anchor (or, without one, the mean) is at anchor_rating."""
    elo = ELO_SCALE * theta
    reference = elo.mean() if anchor_idx is None else elo[anchor_idx]
    return anchor_rating + (elo - reference)
