"""A reward model on any labelled preference file, as reward-bench evaluates published models.

``rlhf reward eval`` (flows/cli_reward.py) calls :func:`evaluate_reward_model`: read the files with
the data importers (every layout they know: TRL, HH-RLHF transcripts, UltraFeedback, rankings;
JSONL/JSON/Parquet/CSV, ``.gz``, ``datasets`` directories and hub ids), set aside the pairs that
cannot be scored (each named ``file:row: rule``), score the rest with
:func:`rlhf_core.reward.train.score_pairs` in the model's own prompt format, then
:func:`pair_figures`. Definitions (every figure is a mean over pairs, with a 95% percentile
bootstrap interval from :func:`rlhf_core.stats.estimate`):

* **agreement**: 1 when ``r_chosen > r_rejected``, 0.5 on an exact tie, 0 otherwise
  (:func:`rlhf_core.reward.agreement.preference_score`).
* **prefer the shorter / longer reply**: the same score for a rule that picks the reply with
  fewer / more tokens (the model's tokenizer, the reply text alone; equal lengths 0.5). On HH-RLHF
  harmless-base the shorter reply is preferred ~56% of the time: a reward model has to beat that
  to show it learnt more than length.
* **by user turns** (1, 2, 3, 4+): from the row's ``prompt_messages`` (None = one user turn).
* **by length**: quartiles of the pair's reply tokens (chosen + rejected); each bucket is labelled
  with the lengths it holds.
* **calibration**: the Bradley-Terry probability the model gives its own preference,
  ``sigmoid(|r_c - r_r|)`` in [0.5, 1] (its confidence), against how often that preference is the
  human one, in ``n_bins`` equal-width bins over [0.5, 1]; ECE is the count-weighted mean
  |confidence - accuracy| (Guo et al. 2017). Every pair's label says ``chosen`` won, so the
  confidence view is the informative one (``P(chosen)`` binned against an always-1 outcome is not).

Pairs set aside (never silently dropped; pairs in = scored + set aside, per file): whatever the
importer quarantines (bad JSON, transcripts without a shared prompt, ...), ``empty_reply``,
``same_reply`` (chosen == rejected: no preference to agree with), ``too_long`` (over
``max_length`` even with the prompt cut, or at all when prompts are not cut) and ``not_scorable``
(anything else the tokenizer or chat template refuses).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rlhf_core.errors import DataError, TooLongError
from rlhf_core.reward.agreement import Calibration, CalibrationBin, preference_score
from rlhf_core.stats import Estimate, estimate, finite_or_none

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase

    from rlhf_core.reward.model import RewardModel

TURN_GROUPS = ("1", "2", "3", "4+")
STAGE = "reward eval"  # the stage name set-aside rows carry


@dataclass(frozen=True)
class Group:
    """The pairs of one turn count or length bucket: agreement, and the shorter-reply rule beside it."""

    label: str
    agreement: Estimate
    prefer_shorter: float


@dataclass(frozen=True)
class PairFigures:
    n: int
    agreement: Estimate
    prefer_shorter: Estimate
    prefer_longer: Estimate
    by_turns: list[Group]
    by_length: list[Group]
    calibration: Calibration
    mean_chosen_reward: float
    mean_rejected_reward: float

    def to_dict(self) -> dict[str, Any]:
        def group(g: Group) -> dict[str, Any]:
            return {"label": g.label, "n": g.agreement.n, "agreement": g.agreement.to_dict(),
                    "prefer_shorter": finite_or_none(g.prefer_shorter)}

        return {
            "n": self.n, "agreement": self.agreement.to_dict(),
            "baselines": {"prefer_shorter": self.prefer_shorter.to_dict(), "prefer_longer": self.prefer_longer.to_dict()},
            "by_user_turns": [group(g) for g in self.by_turns], "by_length": [group(g) for g in self.by_length],
            "calibration": {"ece": self.calibration.ece, "n": self.calibration.n,
                            "bins": [asdict(b) for b in self.calibration.bins]},
            "rewards": {"mean_chosen": self.mean_chosen_reward, "mean_rejected": self.mean_rejected_reward,
                        "mean_margin": self.mean_chosen_reward - self.mean_rejected_reward},
        }


# ----------------------------------------------------------------------------- the figures (numpy only)
def length_rule_scores(chosen_tokens: Sequence[int], rejected_tokens: Sequence[int], *, prefer: str) -> np.ndarray:
    """Per-pair score (1 / 0.5 / 0) of the rule "prefer the ``shorter`` (or ``longer``) reply"."""
    c = np.asarray(chosen_tokens, dtype=np.float64)
    r = np.asarray(rejected_tokens, dtype=np.float64)
    if prefer == "shorter":
        return preference_score(r, c)  # chosen wins when it is the shorter one
    if prefer == "longer":
        return preference_score(c, r)
    raise ValueError(f"prefer must be 'shorter' or 'longer', got {prefer!r}")


def confidence_calibration(chosen_rewards: Sequence[float], rejected_rewards: Sequence[float], n_bins: int = 10) -> Calibration:
    """The model's confidence ``sigmoid(|r_c - r_r|)`` against its accuracy, in ``n_bins`` bins over [0.5, 1].

    ``mean_predicted`` of a bin is its mean confidence, ``mean_observed`` the fraction of its pairs
    whose preferred reply is ``chosen`` (a tie counts 0.5). ECE: count-weighted mean gap.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    margin = np.asarray(chosen_rewards, dtype=np.float64) - np.asarray(rejected_rewards, dtype=np.float64)  # (n,)
    confidence = 1.0 / (1.0 + np.exp(-np.abs(margin)))  # (n,) in [0.5, 1]
    correct = preference_score(margin, np.zeros_like(margin))  # (n,)
    which = np.clip(np.floor((confidence - 0.5) * 2 * n_bins).astype(np.int64), 0, n_bins - 1)
    n, bins, ece = len(margin), [], 0.0
    for b in range(n_bins):
        sel = which == b
        count = int(sel.sum())
        conf = float(confidence[sel].mean()) if count else None
        acc = float(correct[sel].mean()) if count else None
        if count:
            ece += count / n * abs(conf - acc)
        bins.append(CalibrationBin(lower=0.5 + b / (2 * n_bins), upper=0.5 + (b + 1) / (2 * n_bins), count=count,
                                   mean_predicted=conf, mean_observed=acc))
    return Calibration(bins=bins, ece=float(ece), n=n)


def turn_group(user_turns: int) -> str:
    """``"1"``, ``"2"``, ``"3"`` or ``"4+"``."""
    return str(user_turns) if user_turns < 4 else "4+"


def length_buckets(total_tokens: Sequence[int], n_buckets: int = 4) -> tuple[np.ndarray, list[str]]:
    """Bucket index of each pair by quantiles of ``total_tokens``, and each bucket's label ``"lo-hi"`` (empty ones dropped)."""
    total = np.asarray(total_tokens, dtype=np.float64)
    edges = np.quantile(total, [k / n_buckets for k in range(1, n_buckets)])  # (n_buckets - 1,)
    raw = np.searchsorted(edges, total, side="left")  # (n,) a pair on an edge joins the bucket below it
    used = sorted(set(raw.tolist()))
    index = np.array([used.index(b) for b in raw.tolist()], dtype=np.int64)
    labels = [f"{int(total[raw == b].min())}-{int(total[raw == b].max())}" for b in used]
    return index, labels


def pair_figures(
    chosen_rewards: Sequence[float],
    rejected_rewards: Sequence[float],
    *,
    chosen_tokens: Sequence[int],
    rejected_tokens: Sequence[int],
    user_turns: Sequence[int],
    n_boot: int = 1000,
    seed: int = 0,
    n_bins: int = 10,
) -> PairFigures:
    """Every figure of the module docstring for scored pairs (all sequences one entry per pair)."""
    chosen = np.asarray(chosen_rewards, dtype=np.float64)
    rejected = np.asarray(rejected_rewards, dtype=np.float64)
    n = len(chosen)
    if n == 0:
        raise DataError("no preference pair left to score")
    for name, values in (("rejected_rewards", rejected), ("chosen_tokens", chosen_tokens),
                         ("rejected_tokens", rejected_tokens), ("user_turns", user_turns)):
        if len(values) != n:
            raise ValueError(f"{name} has {len(values)} entries, chosen_rewards {n}")
    agree = preference_score(chosen, rejected)  # (n,)
    shorter = length_rule_scores(chosen_tokens, rejected_tokens, prefer="shorter")  # (n,)

    def est(values: np.ndarray) -> Estimate:
        return estimate(values, n_boot=n_boot, seed=seed)

    def groups(index: np.ndarray, labels: list[str]) -> list[Group]:
        return [Group(label, est(agree[index == k]), float(shorter[index == k].mean()))
                for k, label in enumerate(labels) if (index == k).any()]

    turns = np.array([TURN_GROUPS.index(turn_group(t)) for t in user_turns], dtype=np.int64)
    bucket, bucket_labels = length_buckets(np.add(chosen_tokens, rejected_tokens))
    return PairFigures(
        n=n, agreement=est(agree), prefer_shorter=est(shorter),
        prefer_longer=est(length_rule_scores(chosen_tokens, rejected_tokens, prefer="longer")),
        by_turns=groups(turns, list(TURN_GROUPS)), by_length=groups(bucket, bucket_labels),
        calibration=confidence_calibration(chosen, rejected, n_bins),
        mean_chosen_reward=float(chosen.mean()), mean_rejected_reward=float(rejected.mean()),
    )


# ----------------------------------------------------------------------------- rows -> scorable pairs
@dataclass(frozen=True)
class SetAside:
    """A row not scored, and why (``file:row: rule: detail``, as the importers' quarantine names it)."""

    file: str
    row: int
    rule: str
    detail: str
    id: str | None = None  # the pair's id (a ranking row's pairs share its row); None for an unreadable row

    @property
    def message(self) -> str:
        from data_checks.importers import location

        return f"{location(self.file, self.row)}: {self.rule}: {self.detail}"


def user_turns_of(prompt_messages: Any) -> int:
    """User turns of a conversation's prompt (``prompt_messages``; None or empty = one user turn)."""
    if prompt_messages is None or isinstance(prompt_messages, float) or len(prompt_messages) == 0:
        return 1
    return sum(1 for m in prompt_messages if m.get("role") == "user") or 1


def _row_problem(row: dict[str, Any], tokenizer: PreTrainedTokenizerBase, settings: ScoreSettings) -> tuple[str, str] | None:
    """``(rule, detail)`` when the row cannot be scored, else None (tokenised the way score_pairs will)."""
    from rlhf_core.batching import tokenize_preference_row

    for side in ("chosen", "rejected"):
        if isinstance(row.get(side), str) and not row[side].strip():
            return "empty_reply", f"the {side} reply is empty"
    if row.get("chosen") == row.get("rejected"):
        return "same_reply", "chosen and rejected are the same reply: no preference to agree with"
    probe = {**row, "id": "-"}  # so the error's "where" prefix is known and can be cut off
    try:
        tokenize_preference_row(probe, tokenizer, fmt=settings.fmt, max_length=settings.max_length,
                                truncate=settings.truncate, source=STAGE)
    except DataError as exc:  # the first clause: what is wrong (the advice after it names training options)
        detail = re.sub(r" \([^()]*\)$", "", str(exc).removeprefix(f"{STAGE}: row -: ").split("; ")[0])
        return ("too_long" if isinstance(exc, TooLongError) else "not_scorable"), detail
    return None


@dataclass(frozen=True)
class ScoreSettings:
    """How pairs are rendered and batched: the reward stage's own settings (see RewardConfig)."""

    fmt: str  # "chat" | "plain" (resolved)
    max_length: int
    truncate: bool
    share_prompt: bool = True
    batch_size: int = 16


@dataclass
class PairsRead:
    """The rows of the ``--pairs`` files that can be scored, and every one set aside."""

    rows: list[dict[str, Any]]
    set_aside: list[SetAside] = field(default_factory=list)
    # file -> {"pairs", "scored", "set_aside"}: pairs = scored + set_aside, where a ranking row counts as its
    # K(K-1)/2 pairs and a row the importer could not read as one
    per_file: dict[str, dict[str, int]] = field(default_factory=dict)


def read_pairs(paths: Sequence[str | Path], tokenizer: PreTrainedTokenizerBase, settings: ScoreSettings) -> PairsRead:
    """Read every file as preferences and set aside, with its rule, each row that cannot be scored."""
    from data_checks.importers import load_dataset_file

    out = PairsRead(rows=[])
    for path in paths:
        frame, quarantined = load_dataset_file(path, "preferences")
        aside = [SetAside(q.file, q.row, q.rule, q.detail) for q in quarantined]
        scored = 0
        for row in frame.to_dict("records"):
            problem = _row_problem(row, tokenizer, settings)
            if problem:
                aside.append(SetAside(row["_file"], int(row["_row"]), *problem, id=str(row["id"])))
            else:
                out.rows.append(row)
                scored += 1
        out.set_aside.extend(sorted(aside, key=lambda s: s.row))
        out.per_file[str(path)] = {"pairs": len(frame) + len(quarantined), "scored": scored, "set_aside": len(aside)}
    return out


def reply_tokens(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[int]:
    """Tokens of each reply text alone (no template, no special tokens)."""
    return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def evaluate_reward_model(
    reward_model: RewardModel,
    tokenizer: PreTrainedTokenizerBase,
    paths: Sequence[str | Path],
    settings: ScoreSettings,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    n_bins: int = 10,
) -> tuple[PairFigures, PairsRead]:
    """Score every usable pair of ``paths`` and compute :func:`pair_figures`; DataError when none is usable."""
    from rlhf_core.reward.train import score_pairs

    pairs = read_pairs(paths, tokenizer, settings)
    if not pairs.rows:
        reasons = "; ".join(s.message for s in pairs.set_aside[:3]) or "the files hold no rows"
        raise DataError(f"{', '.join(map(str, paths))}: no pair can be scored ({reasons})")
    chosen_r, rejected_r = score_pairs(
        reward_model, tokenizer, pairs.rows, max_length=settings.max_length, prompt_format=settings.fmt,
        truncate=settings.truncate, batch_size=settings.batch_size, share_prompt=settings.share_prompt,
    )
    figures = pair_figures(
        chosen_r, rejected_r,
        chosen_tokens=reply_tokens(tokenizer, [r["chosen"] for r in pairs.rows]),
        rejected_tokens=reply_tokens(tokenizer, [r["rejected"] for r in pairs.rows]),
        user_turns=[user_turns_of(r.get("prompt_messages")) for r in pairs.rows],
        n_boot=n_boot, seed=seed, n_bins=n_bins,
    )
    return figures, pairs
