"""The evaluation's figures and reports: per-method :class:`EvalReport`, the :class:`MethodComparison`.

What one :class:`EvalReport` measures, for a policy against the SFT model on the same prompts
(one SFT sample per prompt, drawn with the same seed as the policy's):

* ``mean_gold`` / ``mean_rm``: the gold scorer (``rlhf_core.gold``, the stand-in for human
  judgement) and the reward model (what PPO optimised), averaged over prompts;
* ``gold_win_rate_vs_sft`` / ``rm_win_rate_vs_sft``: share of prompts where the policy's response
  beats the SFT response, ties (and identical responses) count half;
* ``gold_delta``: mean over prompts of gold(policy) - gold(SFT). Its interval is a *paired*
  bootstrap: prompts are resampled and each keeps both of its responses, so the prompt-to-prompt
  spread of difficulty does not widen the interval;
* ``kl_to_ref``: KL(policy || SFT) in nats per response, measured on the policy's own samples as
  the sum over response tokens of ``k1 = log p - log q`` (logits / temperature, as PPO's ``ppo/kl``;
  unbiased, so a mean can dip below 0 by noise). ``sqrt_kl_to_ref`` is the x-axis of Gao et al.
  (2022). For best-of-N the KL is analytic (:func:`rlhf_core.best_of_n.best_of_n_kl`);
* ``refusal_rate_benign`` / ``refusal_rate_harmful``: share of responses that refuse
  (``gold.is_refusal``) among benign and among harmful prompts (NaN when there are none);
* ``repetition_rate``: share of responses caught in a loop: the gold scorer's repetition penalty
  (repeated word 3-grams / content-word pairs / lines / a tiny vocabulary) leaves
  ``non_repetition < 0.5``, i.e. at least 20% repeated material;
* ``length``: response tokens (EOS included) under the policy's tokenizer.

Real data has no gold scorer (``build_report(gold=False)``, ``eval.gold: false``): the gold figures
are then not computed at all (no column, metric or plot with a made-up value), and two figures
take their place beside the rest (:data:`NO_GOLD_ESTIMATES`): ``refusal_rate`` over all prompts and
``finished_rate``, the share of responses that ended (EOS) within ``max_new_tokens``.

Beside the methods, :class:`MethodComparison` carries ``rm_gold_agreement_on_policy``: over the
best-of-N candidates (N samples from the SFT model per prompt), the share of pairs the reward
model orders as the gold scorer does (:func:`ranking_agreement`). The reward model's agreement on
the held-out preference pairs says how well it learnt those pairs; this one says how well it ranks
what PPO and best-of-N actually show it. Near 0.5 neither can raise the gold score, whatever
happens to the reward.

Every figure comes with a percentile-bootstrap interval over prompts (``rlhf_core.stats.bootstrap_ci``).
:func:`rlhf_core.evaluation.compare_methods` runs the same evaluation for the SFT model, best-of-N (N = 1, 4, 16 from
one draw of the largest N) and any number of policies (PPO checkpoints, DPO), which gives the
comparison table and the gold-vs-sqrt(KL) over-optimisation picture; this module turns the
responses and scores it collects into figures (pure numpy + the gold scorer, no torch).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rlhf_core.errors import DataError, TrainingError
from rlhf_core.eval_prompts import EvalPrompts
from rlhf_core.gold import gold_components, is_refusal
from rlhf_core.stats import Estimate, estimate, finite_or_none
from rlhf_core.tracking import metric_name

# A response "loops" when the gold scorer's non-repetition factor falls below this: its
# repetition share is then >= 20% (non_repetition = 1 - 2.5 * repetition), several times the
# 0-5% of ordinary prose and well below the ~90% of "Boil an egg: Boil an egg: ...".
LOOP_NON_REPETITION = 0.5

# The names dashboards read (each also has _ci_low / _ci_high).
ESTIMATES = (
    "mean_gold",
    "mean_rm",
    "gold_win_rate_vs_sft",
    "rm_win_rate_vs_sft",
    "gold_delta",
    "rm_delta",
    "kl_to_ref",
    "sqrt_kl_to_ref",
    "refusal_rate_benign",
    "refusal_rate_harmful",
    "repetition_rate",
    "length",
    "sft_mean_gold",
    "sft_mean_rm",
)

# Without a gold scorer (real data): no gold figures; all-prompt refusals and finished replies instead.
GOLD_ESTIMATES = ("mean_gold", "gold_win_rate_vs_sft", "gold_delta", "sft_mean_gold")
NO_GOLD_ESTIMATES = (*(n for n in ESTIMATES if n not in GOLD_ESTIMATES), "refusal_rate", "finished_rate")

# What the report, the pipeline summary, the CLI and MLflow say when there is no gold scorer.
NO_GOLD_NOTE = (
    "No gold score for this data (eval.gold=false): real human data has no gold scorer, so this evaluation "
    "reports the reward model's score (what PPO optimised, not a judgement of quality), KL to the SFT model, "
    "refusals, reply length, finished replies and the reward model's held-out agreement with the human choices."
)

_STEP_SUFFIX = re.compile(r"-step-(\d+)$")


# ----------------------------------------------------------------------------- estimates
def constant(value: float, n: int) -> Estimate:
    """A figure known exactly (e.g. the analytic KL of best-of-N): a zero-width interval."""
    return Estimate(float(value), float(value), float(value), n)


def win_scores(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
               tie: Sequence[bool] | np.ndarray | None = None) -> np.ndarray:
    """Per-prompt win of ``a`` over ``b``: 1 if a > b, 0.5 on a tie, 0 if a < b -> (B,) float64.

    ``tie`` marks pairs that count as ties whatever their scores (identical responses, whose
    reward-model scores may differ in the last bits between batches).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"win_scores: expected two (B,) arrays, got {a.shape} and {b.shape}")
    wins = np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0))
    if tie is not None:
        wins = np.where(np.asarray(tie, dtype=bool), 0.5, wins)
    return wins


def ranking_agreement(rm: Sequence[Sequence[float]] | np.ndarray, gold: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Per prompt: the share of its candidate pairs the reward model orders as the gold scorer does.

    ``rm`` and ``gold`` are (B, N) scores of the same N responses to each of B prompts. Pairs the
    gold scorer ties carry no preference and are left out; a pair the reward model ties counts a
    half. Returns the (B',) shares of the prompts with at least one gold-untied pair (0.5 = chance).
    """
    rm, gold = np.asarray(rm, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    if rm.shape != gold.shape or rm.ndim != 2:
        raise ValueError(f"ranking_agreement: expected two (B, N) arrays, got {rm.shape} and {gold.shape}")
    i, j = np.triu_indices(rm.shape[1], k=1)
    d_gold = np.sign(gold[:, i] - gold[:, j])  # (B, pairs)
    d_rm = np.sign(rm[:, i] - rm[:, j])
    untied = d_gold != 0
    agree = np.where(d_rm == 0, 0.5, (d_rm == d_gold).astype(np.float64))
    counts = untied.sum(axis=1)
    keep = counts > 0
    return (np.where(untied, agree, 0.0).sum(axis=1)[keep] / counts[keep]).astype(np.float64)


def sqrt_kl(kl: Estimate) -> Estimate:
    """sqrt of a KL estimate and of its interval ends (negative noise clipped to 0)."""
    root = lambda x: math.sqrt(max(x, 0.0)) if math.isfinite(x) else math.nan  # noqa: E731
    return Estimate(root(kl.value), root(kl.ci_low), root(kl.ci_high), kl.n)


def refuses(response: str) -> bool:
    """True when the response refuses (``gold.is_refusal`` on the stripped text, as the gold scorer reads it)."""
    text = response.strip()
    return bool(text) and is_refusal(text)


def is_looping(response: str) -> bool:
    """True when the response is caught in a repetition loop (see ``LOOP_NON_REPETITION``)."""
    if not any(ch.isalnum() for ch in response):
        return False  # nothing to repeat: an empty reply is bad, but not a loop
    return gold_components("", response).non_repetition < LOOP_NON_REPETITION


# ----------------------------------------------------------------------------- the report
@dataclass
class EvalReport:
    """One method's figures on the held-out prompts, and the per-prompt samples behind them."""

    method: str
    series: str
    kl_source: str  # "measured" (k1 on own samples), "analytic" (best-of-N), "reference" (the SFT model itself)
    estimates: dict[str, Estimate]
    samples: list[dict[str, Any]]  # one row per prompt, see build_report
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def n_prompts(self) -> int:
        return len(self.samples)

    def metrics(self, prefix: str = "eval") -> dict[str, float]:
        """Flat ``{prefix}/<name>``, ``{prefix}/<name>_ci_low``, ``{prefix}/<name>_ci_high`` (NaN = undefined)."""
        out: dict[str, float] = {f"{prefix}/n_prompts": float(self.n_prompts)}
        for name, est in self.estimates.items():
            out[f"{prefix}/{name}"] = est.value
            out[f"{prefix}/{name}_ci_low"] = est.ci_low
            out[f"{prefix}/{name}_ci_high"] = est.ci_high
        out[f"{prefix}/n_benign"] = float(self.estimates["refusal_rate_benign"].n)
        out[f"{prefix}/n_harmful"] = float(self.estimates["refusal_rate_harmful"].n)
        return out

    def summary(self) -> dict[str, float | None]:
        """One flat row: every estimate's value and interval (JSON-safe), for a comparison table."""
        row: dict[str, Any] = {"method": self.method, "series": self.series, "kl_source": self.kl_source,
                               "n_prompts": self.n_prompts}
        for name, est in self.estimates.items():
            row[name] = finite_or_none(est.value)
            row[f"{name}_ci_low"] = finite_or_none(est.ci_low)
            row[f"{name}_ci_high"] = finite_or_none(est.ci_high)
        return row

    def to_dict(self, *, include_samples: bool = True) -> dict[str, Any]:
        """JSON-safe (NaN -> None)."""
        out: dict[str, Any] = {
            "method": self.method,
            "series": self.series,
            "kl_source": self.kl_source,
            "n_prompts": self.n_prompts,
            "estimates": {name: est.to_dict() for name, est in self.estimates.items()},
            "settings": self.settings,
        }
        if include_samples:
            out["samples"] = [{k: finite_or_none(v) if isinstance(v, float) else v for k, v in row.items()}
                              for row in self.samples]
        return out


def build_report(
    *,
    method: str,
    prompts: EvalPrompts,
    policy_texts: Sequence[str],
    sft_texts: Sequence[str],
    policy_rm: Sequence[float] | np.ndarray,
    sft_rm: Sequence[float] | np.ndarray,
    kl: Sequence[float] | float,
    kl_source: str,
    lengths: Sequence[int],
    finished: Sequence[bool] | None = None,
    gold: bool = True,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    series: str | None = None,
    settings: Mapping[str, Any] | None = None,
) -> EvalReport:
    """The figures from per-prompt responses and reward-model scores (pure numpy + the gold scorer).

    All sequences are (B,), aligned with ``prompts``; ``kl`` is per-prompt sequence KL or one
    analytic number; ``finished``: whether each policy response ended (EOS) within the token budget.
    Gold scores, refusals and loops are computed here from the texts. ``gold=False`` (data without
    a gold scorer) reports :data:`NO_GOLD_ESTIMATES` and needs ``finished``; no gold is computed.
    """
    B = len(prompts)
    if B == 0:
        raise DataError(f"evaluation of {method}: no prompts to evaluate")
    _check_sizes(method, B, policy_texts=policy_texts, sft_texts=sft_texts, policy_rm=policy_rm, sft_rm=sft_rm,
                 lengths=lengths, kl=None if isinstance(kl, (int, float)) else kl, finished=finished)
    if not gold and finished is None:
        raise ValueError(f"build_report({method}): without a gold scorer the finished-reply rate needs `finished`")
    numbers = {"policy reward-model scores": policy_rm, "SFT reward-model scores": sft_rm,
               "KL": [kl] if isinstance(kl, (int, float)) else kl}
    for what, values in numbers.items():
        bad_values = int((~np.isfinite(np.asarray(values, dtype=np.float64))).sum())
        if bad_values:
            raise TrainingError(f"evaluation of {method}: {bad_values} of the {what} are NaN or inf "
                                "(a diverged policy or reward model); nothing to report")
    harmful = np.asarray(prompts.harmful, dtype=bool)
    pol_rm, sft_rm_a = np.asarray(policy_rm, dtype=np.float64), np.asarray(sft_rm, dtype=np.float64)
    same = np.array([a == b for a, b in zip(policy_texts, sft_texts, strict=True)])
    refusal = np.array([float(refuses(t)) for t in policy_texts])
    loops = np.array([float(is_looping(t)) for t in policy_texts])

    def est(values: Sequence[float] | np.ndarray) -> Estimate:
        return estimate(values, n_boot=n_boot, seed=seed, confidence=confidence)

    if isinstance(kl, (int, float)):
        kl_est = constant(float(kl), B)
        kl_rows = [float(kl)] * B
    else:
        kl_rows = [float(v) for v in kl]
        kl_est = est(kl_rows)
    figures = {
        "mean_rm": est(pol_rm),
        "rm_win_rate_vs_sft": est(win_scores(pol_rm, sft_rm_a, tie=same)),
        "rm_delta": est(np.where(same, 0.0, pol_rm - sft_rm_a)),
        "kl_to_ref": kl_est,
        "sqrt_kl_to_ref": sqrt_kl(kl_est),
        "refusal_rate_benign": est(refusal[~harmful]),
        "refusal_rate_harmful": est(refusal[harmful]),
        "repetition_rate": est(loops),
        "length": est(np.asarray(lengths, dtype=np.float64)),
        "sft_mean_rm": est(sft_rm_a),
    }
    rows: list[dict[str, Any]] = [{} for _ in range(B)]
    if gold:
        pol_gold, sft_gold = _gold_scores(prompts, policy_texts), _gold_scores(prompts, sft_texts)
        figures.update({
            "mean_gold": est(pol_gold),
            "gold_win_rate_vs_sft": est(win_scores(pol_gold, sft_gold, tie=same)),
            "gold_delta": est(pol_gold - sft_gold),  # paired: one difference per prompt
            "sft_mean_gold": est(sft_gold),
        })
        rows = [{"sft_gold": float(a), "policy_gold": float(b)} for a, b in zip(sft_gold, pol_gold, strict=True)]
    else:
        figures["refusal_rate"] = est(refusal)
        figures["finished_rate"] = est(np.asarray(finished, dtype=np.float64))
    estimates = {name: figures[name] for name in (ESTIMATES if gold else NO_GOLD_ESTIMATES)}
    samples = [
        {
            "id": prompts.ids[i], "prompt": prompts.prompts[i], "topic": prompts.topics[i], "harmful": bool(harmful[i]),
            "sft_response": sft_texts[i], "policy_response": policy_texts[i], **rows[i],
            "sft_rm": float(sft_rm_a[i]), "policy_rm": float(pol_rm[i]),
            "kl": kl_rows[i], "policy_refusal": bool(refusal[i]), "policy_loops": bool(loops[i]),
            "policy_tokens": int(lengths[i]),
            **({"policy_finished": bool(finished[i])} if finished is not None else {}),
        }
        for i in range(B)
    ]
    return EvalReport(method=method, series=series or method, kl_source=kl_source, estimates=estimates,
                      samples=samples, settings=dict(settings or {}))


def _check_sizes(method: str, n: int, **columns: Sequence[Any] | None) -> None:
    """ValueError naming every given column whose length is not ``n`` (None: not given)."""
    bad = {k: len(v) for k, v in columns.items() if v is not None and len(v) != n}
    if bad:
        raise ValueError(f"build_report({method}): {n} prompts but {bad}")


def _gold_scores(prompts: EvalPrompts, texts: Sequence[str]) -> np.ndarray:
    """The gold scorer's score of each response (B,), judged against its prompt and harmfulness."""
    return np.array([gold_components(p, r, harmful=h).score
                     for p, r, h in zip(prompts.prompts, texts, prompts.harmful, strict=True)])


# ----------------------------------------------------------------------------- comparing methods
@dataclass
class MethodComparison:
    """Every method's :class:`EvalReport` on the same prompts, in evaluation order."""

    reports: dict[str, EvalReport]
    # How often the reward model orders two SFT samples of a prompt as the gold scorer does
    # (the best-of-N candidates): its accuracy on what PPO and best-of-N actually show it.
    rm_gold_agreement_on_policy: Estimate | None = None
    gold: bool = True  # False: data without a gold scorer (the reports hold NO_GOLD_ESTIMATES)
    # Output diversity: "sft" -> DiversityReport, each final policy -> DiversityComparison with SFT
    # (rlhf_core.diversity); empty when eval.diversity_samples is 0
    diversity: dict[str, Any] = field(default_factory=dict)
    # Elo of every method from gold head-to-heads on the same prompts, SFT at 1000 (rlhf_core.ratings); [] without gold
    elo: list[Any] = field(default_factory=list)

    def table(self) -> list[dict[str, Any]]:
        """One JSON-safe row per method (values and intervals of every estimate)."""
        return [report.summary() for report in self.reports.values()]

    def points(self) -> list[dict[str, Any]]:
        """Gold (None without a gold scorer) and reward-model score against sqrt(KL) per method: the Gao
        et al. over-optimisation picture."""
        out = []
        missing = Estimate(math.nan, math.nan, math.nan, 0)
        for name, r in self.reports.items():
            gold, root = r.estimates.get("mean_gold", missing), r.estimates["sqrt_kl_to_ref"]
            out.append({
                "series": r.series, "label": name, "kl_source": r.kl_source,
                "kl": finite_or_none(r.estimates["kl_to_ref"].value), "sqrt_kl": finite_or_none(root.value),
                "gold": finite_or_none(gold.value), "gold_ci_low": finite_or_none(gold.ci_low),
                "gold_ci_high": finite_or_none(gold.ci_high), "rm": finite_or_none(r.estimates["mean_rm"].value),
            })
        return out

    def metrics(self) -> dict[str, float]:
        """``eval/<method>/<name>`` for every method, and ``eval/<method>/diversity/...`` (MLflow-safe names)."""
        out: dict[str, float] = {}
        for name, report in self.reports.items():
            out.update({metric_name(key): value for key, value in report.metrics(prefix=f"eval/{name}").items()})
        agreement = self.rm_gold_agreement_on_policy
        if agreement is not None and math.isfinite(agreement.value):
            out["eval/rm_gold_agreement_on_policy"] = agreement.value
        for name, div in self.diversity.items():
            out.update(div.metrics(f"eval/{name}/diversity"))
        for rating in self.elo:
            out[metric_name(f"eval/{rating.name}/elo")] = rating.rating
        return out

    def to_dict(self, *, include_samples: bool = False) -> dict[str, Any]:
        agreement = self.rm_gold_agreement_on_policy
        return {
            "gold": self.gold,
            "rm_gold_agreement_on_policy": agreement.to_dict() if agreement is not None else None,
            "methods": list(self.reports),
            "table": self.table(),
            "gold_vs_sqrt_kl": self.points(),
            "reports": {n: r.to_dict(include_samples=include_samples) for n, r in self.reports.items()},
            "diversity": {n: d.to_dict() for n, d in self.diversity.items()},
            "elo": [r.to_dict() for r in self.elo],
        }


def gold_head_to_heads(reports: Mapping[str, EvalReport]) -> list[tuple[str, str, float]]:
    """Every pair of methods on every prompt, judged by the gold scorer: ``(a, b, 1 | 0 | 0.5)`` (equal gold: a tie).

    The reports must cover the same prompts in the same order (:func:`compare_methods`' do).
    """
    names = list(reports)
    golds = {name: [row["policy_gold"] for row in reports[name].samples] for name in names}
    ids = [row["id"] for row in reports[names[0]].samples] if names else []
    for name in names:
        if [row["id"] for row in reports[name].samples] != ids:
            raise ValueError(f"gold_head_to_heads: {name} was evaluated on other prompts than {names[0]}")
    games = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            for ga, gb in zip(golds[a], golds[b], strict=True):
                games.append((a, b, 1.0 if ga > gb else 0.0 if ga < gb else 0.5))
    return games


def series_of(name: str) -> str:
    """The plot series of a method name: ``ppo-step-000010`` -> ``ppo``; other names are their own series."""
    return _STEP_SUFFIX.sub("", name)
