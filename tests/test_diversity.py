"""Output diversity: distinct-n and self-similarity by hand, reports over prompts, policy vs SFT, errors."""

from __future__ import annotations

import json
import math
from collections import Counter
from itertools import combinations

import numpy as np
import pytest

from rlhf_core.diversity import (
    compare_diversity,
    distinct_n,
    diversity_report,
    jaccard_similarity,
    prompt_diversity,
    self_similarity,
    tokenize,
)


# ----------------------------------------------------------------------------- by hand
def test_tokenize_lowercases_and_drops_punctuation():
    assert tokenize("Hello, World!  Don't   stop-now.") == ["hello", "world", "don't", "stop", "now"]
    assert tokenize("") == [] and tokenize(" ... ") == []


def test_distinct_n_hand_computed():
    texts = ["The cat sat.", "the cat ran"]
    # words: the cat sat | the cat ran -> 4 distinct of 6
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)
    # bigrams: (the cat) (cat sat) | (the cat) (cat ran) -> 3 of 4; none spans the two texts
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert distinct_n(["a b c", "d e f"], 3) == 1.0


def test_distinct_n_without_ngrams_is_zero():
    assert distinct_n([], 1) == 0.0
    assert distinct_n(["", "!!"], 1) == 0.0
    assert distinct_n(["one", "two"], 2) == 0.0  # every text shorter than n
    with pytest.raises(ValueError, match="n must be >= 1"):
        distinct_n(["a"], 0)


@pytest.mark.parametrize("seed", [0, 1])
def test_distinct_n_matches_a_counter_reference(seed):
    rng = np.random.default_rng(seed)
    vocab = ["a", "b", "c", "d", "e"]
    texts = [" ".join(rng.choice(vocab, size=int(rng.integers(0, 9)))) for _ in range(6)]
    for n in (1, 2, 3):
        grams: Counter[tuple[str, ...]] = Counter()
        for t in texts:
            w = t.split()
            grams.update(tuple(w[i:i + n]) for i in range(len(w) - n + 1))
        total = sum(grams.values())
        assert distinct_n(texts, n) == pytest.approx(len(grams) / total if total else 0.0)


def test_jaccard_of_bigram_sets_by_hand():
    # {a b, b c} vs {a b, b d}: 1 shared of 3
    assert jaccard_similarity("a b c", "a b d") == pytest.approx(1 / 3)
    assert jaccard_similarity("A b, C!", "a B c") == 1.0  # case and punctuation do not count
    # no bigrams on either side: the words decide
    assert jaccard_similarity("yes", "yes") == 1.0 and jaccard_similarity("yes", "no") == 0.0
    assert jaccard_similarity("", "") == 1.0 and jaccard_similarity("", "a b") == 0.0
    # mean over the 3 pairs: 1/3, 0, 0
    assert self_similarity(["a b c", "a b d", "x y"]) == pytest.approx(1 / 9)


def test_identical_samples_are_collapsed():
    row = prompt_diversity(["Paris is the capital of France."] * 4)
    assert row.self_similarity == 1.0
    assert row.distinct_1 == pytest.approx(1 / 4) and row.distinct_2 == pytest.approx(1 / 4)
    assert row.n_samples == 4


def test_all_different_samples_are_fully_diverse():
    row = prompt_diversity(["red green blue", "one two three four", "alpha beta"])
    assert row.self_similarity == 0.0
    assert row.distinct_1 == 1.0 and row.distinct_2 == 1.0


# ----------------------------------------------------------------------------- over prompts, policy vs SFT
SFT = [
    ["the sky is blue today", "clouds cover the hills", "rain may fall later on"],
    ["cats sleep a lot", "dogs like long walks", "fish swim in circles"],
    ["tea is warm", "coffee keeps me awake", "water is best"],
    ["go left at the bridge", "turn right after the shop", "walk straight ahead"],
]
COLLAPSED = [
    ["the sky is blue today", "the sky is blue today", "the sky is blue"],
    ["cats sleep a lot", "cats sleep a lot", "cats sleep a lot"],
    ["tea is warm", "tea is warm and nice", "tea is warm"],
    ["go left at the bridge", "go left at the bridge", "go left at the bridge"],
]


def test_report_is_the_mean_over_prompts_with_intervals_and_metric_names():
    rep = diversity_report(SFT, n_boot=200, seed=1)
    rows = [prompt_diversity(s) for s in SFT]
    assert rep.n_prompts == 4 and rep.per_prompt == tuple(rows)
    for name in ("distinct_1", "distinct_2", "self_similarity"):
        est = getattr(rep, name)
        assert est.value == pytest.approx(np.mean([getattr(r, name) for r in rows]))
        assert est.ci_low <= est.value <= est.ci_high and est.n == 4
    m = rep.metrics("diversity")
    figures, suffixes = ("distinct_1", "distinct_2", "self_similarity"), ("", "_ci_low", "_ci_high")
    names = {f"diversity/{n}{s}" for n in figures for s in suffixes}
    assert set(m) == {"diversity/n_prompts"} | names
    assert m["diversity/distinct_2"] == rep.distinct_2.value and m["diversity/n_prompts"] == 4.0
    assert all(isinstance(v, float) for v in m.values())
    assert rep.metrics("eval/ppo")["eval/ppo/self_similarity_ci_high"] == rep.self_similarity.ci_high
    json.dumps(rep.to_dict())


def test_paired_comparison_shows_mode_collapse():
    cmp = compare_diversity(COLLAPSED, SFT, n_boot=500, seed=0)
    for name in ("distinct_1", "distinct_2"):
        diff = getattr(cmp, f"{name}_diff")
        pairs = zip(cmp.policy.per_prompt, cmp.reference.per_prompt, strict=True)
        per_prompt = [getattr(p, name) - getattr(r, name) for p, r in pairs]
        assert diff.value == pytest.approx(np.mean(per_prompt))
        assert diff.value < 0 and diff.ci_high < 0  # the policy says less
    assert cmp.self_similarity_diff.value > 0 and cmp.self_similarity_diff.ci_low > 0
    gap = cmp.policy.self_similarity.value - cmp.reference.self_similarity.value
    assert cmp.self_similarity_diff.value == pytest.approx(gap)
    # the other way round flips every sign
    back = compare_diversity(SFT, COLLAPSED, n_boot=500, seed=0)
    assert back.distinct_2_diff.value == pytest.approx(-cmp.distinct_2_diff.value)
    assert back.self_similarity_diff.value < 0
    # against itself: zero difference, zero-width interval
    same = compare_diversity(SFT, SFT, n_boot=50)
    assert (same.distinct_1_diff.value, same.distinct_1_diff.ci_low, same.distinct_1_diff.ci_high) == (0.0, 0.0, 0.0)

    m = cmp.metrics()
    assert m["diversity/distinct_2"] == cmp.policy.distinct_2.value
    assert m["diversity/sft/distinct_2"] == cmp.reference.distinct_2.value
    assert m["diversity/self_similarity_minus_sft"] == cmp.self_similarity_diff.value
    assert m["diversity/distinct_1_minus_sft_ci_high"] == cmp.distinct_1_diff.ci_high
    assert all(isinstance(v, float) and math.isfinite(v) for v in m.values())
    json.dumps(cmp.to_dict())


def test_paired_interval_is_narrower_than_the_unpaired_gap_suggests():
    """Pairing cancels prompt difficulty: one prompt type always diverse, the other always terse."""
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(200)]
    policy, sft = [], []
    for i in range(30):
        length = 12 if i % 2 else 3
        sft.append([" ".join(rng.choice(words, size=length)) for _ in range(4)])
        base = " ".join(rng.choice(words, size=length))
        policy.append([base] * 2 + [" ".join(rng.choice(words, size=length)) for _ in range(2)])
    cmp = compare_diversity(policy, sft, n_boot=300, seed=2)
    diff = cmp.self_similarity_diff
    assert diff.ci_low > 0
    paired_width = diff.ci_high - diff.ci_low
    unpaired_width = (cmp.policy.self_similarity.ci_high - cmp.policy.self_similarity.ci_low
                      + cmp.reference.self_similarity.ci_high - cmp.reference.self_similarity.ci_low)
    assert paired_width <= unpaired_width


# ----------------------------------------------------------------------------- errors
def test_errors_name_the_prompt_and_the_rule():
    with pytest.raises(ValueError, match="prompt_diversity: 1 sample"):
        prompt_diversity(["only one"])
    with pytest.raises(ValueError, match="one string"):
        prompt_diversity("ab")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"diversity_report: prompt 1: 1 sample\(s\); .* at least 2"):
        diversity_report([["a", "b"], ["c"]])
    with pytest.raises(ValueError, match="diversity_report: no prompts"):
        diversity_report([])
    with pytest.raises(ValueError, match="self_similarity: needs at least 2 samples"):
        self_similarity(["x"])
    with pytest.raises(ValueError, match="samples for 4 prompts, sft for 3"):
        compare_diversity(COLLAPSED, SFT[:3])
    with pytest.raises(ValueError, match=r"compare_diversity \(sft\): prompt 2: 0 sample"):
        compare_diversity(COLLAPSED, [*SFT[:2], [], SFT[3]])
    with pytest.raises(ValueError, match="prompt 0 has 3 policy samples and 2 sft samples"):
        compare_diversity(COLLAPSED, [SFT[0][:2], *SFT[1:]])


def test_pairs_are_all_unordered_pairs():
    samples = ["a b c", "a b d", "a b c", "q r"]
    want = np.mean([jaccard_similarity(x, y) for x, y in combinations(samples, 2)])
    assert self_similarity(samples) == pytest.approx(want)
    assert self_similarity(samples) == pytest.approx(self_similarity(samples[::-1]))
