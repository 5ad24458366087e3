"""Output diversity of several samples per prompt, and the paired comparison policy vs SFT.

RLHF narrows what a model says: Kirk et al. 2023 ("Understanding the effects of RLHF on LLM
generalisation and diversity") find RLHF policies far less diverse than their SFT starting point,
most of all *per input* — k samples for one prompt say nearly the same thing. This module measures
that per-input diversity from plain strings (numpy only) so each evaluation of an iterated online
RLHF run (Bai et al. 2022) can report it beside reward and Elo.

Words. ``tokenize(text)`` lowercases and takes the maximal matches of ``\\w+(?:'\\w+)*``: runs of
Unicode letters, digits and underscores, apostrophes inside a word kept ("don't" is one word);
punctuation and whitespace separate words and are dropped. No model tokenizer, so figures
compare across policies with different vocabularies.

Per prompt, with its k >= 2 samples (:func:`prompt_diversity`):

* **distinct-n** (Li et al. 2016, "A Diversity-Promoting Objective Function for Neural
  Conversation Models"): the number of distinct word n-grams over the k samples divided by the
  total number of word n-grams in them (n-grams do not cross sample boundaries). 1.0 = no
  n-gram repeats; k identical samples give at most 1/k. With no n-gram at all (every sample
  shorter than n words) it is defined as 0.0: empty or one-word replies are as collapsed as
  replies get, and the figure must stay a number a tracker can log.
* **self-similarity**: the mean, over the k(k-1)/2 pairs of samples, of the Jaccard index of
  their word-bigram *sets*, J(A, B) = |A & B| / |A | B|. 1.0 = the same bigrams (identical
  samples), 0.0 = no bigram in common. Two samples with no bigram (under two words each) score
  1.0 if their word lists are equal and 0.0 otherwise, so identical samples always score 1.0.

Over prompts (:func:`diversity_report`): each figure is the mean over prompts, each prompt
weighing the same, with a percentile-bootstrap interval over prompts
(:func:`rlhf_core.stats.estimate`).

Policy vs SFT (:func:`compare_diversity`): both sampled on the same prompts (same order), the
per-prompt differences policy - SFT and the bootstrap interval of their mean. Mode collapse shows
as distinct-n differences below 0 and a self-similarity difference above 0, with intervals that
exclude 0. Distinct-n falls as samples get more numerous and longer (Kirk et al. use an
expectation-adjusted variant for this), so a prompt must have as many samples from each model,
and a policy that writes much longer replies than SFT is partly penalised for length.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import combinations
from typing import Any

import numpy as np

from rlhf_core.stats import Estimate, estimate
from rlhf_core.tracking import metric_name

_WORD = re.compile(r"\w+(?:'\w+)*")

FIGURES = ("distinct_1", "distinct_2", "self_similarity")
"""The per-prompt figures, in report and metric order."""


def tokenize(text: str) -> list[str]:
    """Lowercased words of ``text``: maximal matches of ``\\w+(?:'\\w+)*`` (module docstring)."""
    return _WORD.findall(text.lower())


def ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """The ``len(words) - n + 1`` contiguous n-grams of ``words`` (none when fewer than n words)."""
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct word n-grams / total word n-grams over ``texts`` (Li et al. 2016); 0.0 when there are none.

    Each text contributes its own n-grams (none span two texts). ``distinct_n(["a b a b"], 2)``:
    bigrams (a b), (b a), (a b) -> 2 distinct of 3 = 2/3.
    """
    if n < 1:
        raise ValueError(f"distinct_n: n must be >= 1, got {n}")
    grams = [g for text in texts for g in ngrams(tokenize(text), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def jaccard_similarity(text_a: str, text_b: str) -> float:
    """|A & B| / |A | B| of the word-bigram sets of two texts.

    Both without bigrams (under two words each): 1.0 if their words match, else 0.0.
    """
    words_a, words_b = tokenize(text_a), tokenize(text_b)
    a, b = set(ngrams(words_a, 2)), set(ngrams(words_b, 2))
    if not a and not b:
        return 1.0 if words_a == words_b else 0.0
    return len(a & b) / len(a | b)


def self_similarity(samples: Sequence[str]) -> float:
    """Mean :func:`jaccard_similarity` over the k(k-1)/2 pairs of ``samples`` (k >= 2); 1.0 = all identical."""
    if len(samples) < 2:
        raise ValueError(f"self_similarity: needs at least 2 samples, got {len(samples)}")
    return float(np.mean([jaccard_similarity(a, b) for a, b in combinations(samples, 2)]))


# ----------------------------------------------------------------------------- per prompt
@dataclass(frozen=True)
class PromptDiversity:
    """The diversity of one prompt's ``n_samples`` samples (module docstring)."""

    distinct_1: float
    distinct_2: float
    self_similarity: float
    n_samples: int


def prompt_diversity(samples: Sequence[str]) -> PromptDiversity:
    """distinct-1, distinct-2 and self-similarity of one prompt's samples (k >= 2, else ValueError)."""
    if isinstance(samples, str):
        raise ValueError("prompt_diversity: expected a sequence of sample strings, got one string")
    if len(samples) < 2:
        raise ValueError(f"prompt_diversity: {len(samples)} sample(s); diversity within a prompt needs at least 2")
    return PromptDiversity(distinct_1=distinct_n(samples, 1), distinct_2=distinct_n(samples, 2),
                           self_similarity=self_similarity(samples), n_samples=len(samples))


# ----------------------------------------------------------------------------- over prompts
@dataclass(frozen=True)
class DiversityReport:
    """Per-prompt diversity averaged over ``n_prompts`` prompts, with bootstrap intervals over prompts."""

    distinct_1: Estimate
    distinct_2: Estimate
    self_similarity: Estimate
    n_prompts: int
    per_prompt: tuple[PromptDiversity, ...]

    def metrics(self, prefix: str = "diversity") -> dict[str, float]:
        """``{prefix}/<figure>`` with ``_ci_low``/``_ci_high``, and ``{prefix}/n_prompts`` (MLflow names)."""
        out: dict[str, float] = {f"{prefix}/n_prompts": float(self.n_prompts)}
        for name in FIGURES:
            _put(out, f"{prefix}/{name}", getattr(self, name))
        return {metric_name(key): value for key, value in out.items()}

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (NaN -> None), per-prompt rows included."""
        return {"n_prompts": self.n_prompts, **{name: getattr(self, name).to_dict() for name in FIGURES},
                "per_prompt": [asdict(row) for row in self.per_prompt]}


def diversity_report(samples_per_prompt: Sequence[Sequence[str]], *, n_boot: int = 1000, seed: int = 0,
                     confidence: float = 0.95) -> DiversityReport:
    """:func:`prompt_diversity` of every prompt, averaged over prompts with percentile-bootstrap intervals.

    ``samples_per_prompt[i]``: prompt i's k_i >= 2 samples. ValueError when there are no prompts or
    a prompt has fewer than 2 samples (naming the prompt).
    """
    rows = _per_prompt(samples_per_prompt, "diversity_report")
    return _report(rows, n_boot=n_boot, seed=seed, confidence=confidence)


# ----------------------------------------------------------------------------- policy vs SFT
@dataclass(frozen=True)
class DiversityComparison:
    """A policy's diversity beside the reference's (SFT) on the same prompts, and the paired differences.

    ``*_diff``: mean over prompts of (policy - reference) with its bootstrap interval over prompts;
    mode collapse = distinct differences < 0, self-similarity difference > 0.
    """

    policy: DiversityReport
    reference: DiversityReport
    distinct_1_diff: Estimate
    distinct_2_diff: Estimate
    self_similarity_diff: Estimate
    reference_name: str = "sft"

    def metrics(self, prefix: str = "diversity") -> dict[str, float]:
        """The policy's ``{prefix}/<figure>``, the reference's ``{prefix}/<reference_name>/<figure>``, and
        ``{prefix}/<figure>_minus_<reference_name>`` (policy - reference), each with ``_ci_low``/``_ci_high``."""
        out = self.policy.metrics(prefix)
        out.update(self.reference.metrics(f"{prefix}/{self.reference_name}"))
        for name in FIGURES:
            _put(out, f"{prefix}/{name}_minus_{self.reference_name}", getattr(self, f"{name}_diff"))
        return {metric_name(key): value for key, value in out.items()}

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (NaN -> None)."""
        return {"reference_name": self.reference_name, "policy": self.policy.to_dict(),
                "reference": self.reference.to_dict(),
                **{f"{name}_diff": getattr(self, f"{name}_diff").to_dict() for name in FIGURES}}


def compare_diversity(policy_samples: Sequence[Sequence[str]], reference_samples: Sequence[Sequence[str]], *,
                      reference_name: str = "sft", n_boot: int = 1000, seed: int = 0,
                      confidence: float = 0.95) -> DiversityComparison:
    """Paired diversity comparison on the same prompts: prompt i is ``policy_samples[i]`` and ``reference_samples[i]``.

    Differences are per prompt (policy - reference), so prompt difficulty cancels; their mean's
    interval is a percentile bootstrap over prompts (:func:`rlhf_core.stats.estimate`). ValueError
    when the prompt counts differ, a prompt has fewer than 2 samples, or a prompt has a different
    number of samples from the two models (distinct-n falls with the number of samples).
    """
    if len(policy_samples) != len(reference_samples):
        raise ValueError(f"compare_diversity: the policy has samples for {len(policy_samples)} prompts, "
                         f"{reference_name} for {len(reference_samples)}; a paired comparison needs the same prompts")
    policy_rows = _per_prompt(policy_samples, "compare_diversity (policy)")
    reference_rows = _per_prompt(reference_samples, f"compare_diversity ({reference_name})")
    for i, (pol, ref) in enumerate(zip(policy_rows, reference_rows, strict=True)):
        if pol.n_samples != ref.n_samples:
            raise ValueError(f"compare_diversity: prompt {i} has {pol.n_samples} policy samples and {ref.n_samples} "
                             f"{reference_name} samples; distinct-n falls with the sample count, so use equal counts")

    def diff(name: str) -> Estimate:
        values = [getattr(p, name) - getattr(r, name) for p, r in zip(policy_rows, reference_rows, strict=True)]
        return estimate(values, n_boot=n_boot, seed=seed, confidence=confidence)

    return DiversityComparison(
        policy=_report(policy_rows, n_boot=n_boot, seed=seed, confidence=confidence),
        reference=_report(reference_rows, n_boot=n_boot, seed=seed, confidence=confidence),
        distinct_1_diff=diff("distinct_1"), distinct_2_diff=diff("distinct_2"),
        self_similarity_diff=diff("self_similarity"), reference_name=reference_name,
    )


# ----------------------------------------------------------------------------- helpers
def _per_prompt(samples_per_prompt: Sequence[Sequence[str]], where: str) -> list[PromptDiversity]:
    if len(samples_per_prompt) == 0:
        raise ValueError(f"{where}: no prompts")
    rows = []
    for i, samples in enumerate(samples_per_prompt):
        try:
            rows.append(prompt_diversity(samples))
        except ValueError as err:
            raise ValueError(f"{where}: prompt {i}: {str(err).removeprefix('prompt_diversity: ')}") from None
    return rows


def _report(rows: Sequence[PromptDiversity], *, n_boot: int, seed: int, confidence: float) -> DiversityReport:
    def est(name: str) -> Estimate:
        return estimate([getattr(row, name) for row in rows], n_boot=n_boot, seed=seed, confidence=confidence)

    return DiversityReport(distinct_1=est("distinct_1"), distinct_2=est("distinct_2"),
                           self_similarity=est("self_similarity"), n_prompts=len(rows), per_prompt=tuple(rows))


def _put(out: dict[str, float], name: str, est: Estimate) -> None:
    out[name] = est.value
    out[f"{name}_ci_low"] = est.ci_low
    out[f"{name}_ci_high"] = est.ci_high
