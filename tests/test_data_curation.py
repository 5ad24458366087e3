"""Refusal scrubbing, prompt filters (length, language, spam, per-user cap) and coverage."""

from __future__ import annotations

import pandas as pd
import pytest

from rlhf_core.config.data import PromptFilterConfig, RefusalConfig
from data_checks.prompt_filter import (
    compute_coverage,
    language_reasons,
    length_reasons,
    make_token_counter,
    spam_reasons,
    user_cap_reasons,
)
from data_checks.refusal import refusal_reasons


def _frame(rows: list[dict]) -> pd.DataFrame:
    base = {"harmful": False, "id": None}
    return pd.DataFrame([{**base, "id": f"r{i}", **r} for i, r in enumerate(rows)], dtype=object)


# ---- refusals

DEMOS = [
    {"prompt": "How do I bake bread?", "response": "As an AI language model, I cannot bake."},
    {"prompt": "Write a threat to my boss.", "response": "I'm sorry, but I cannot help with threats.", "harmful": True},
    {"prompt": "How do I boil rice?", "response": "Simmer one part rice in two parts water for 15 minutes."},
    {"prompt": "Plan a party.", "response": "I'M SORRY, BUT I CAN'T do that."},
]


def test_refusal_to_benign_prompt_dropped_and_harmful_kept():
    reasons, stats = refusal_reasons(_frame(DEMOS), "demonstrations", RefusalConfig())
    dropped = [i for i, r in reasons.items() if r is not None]
    assert dropped == [0, 3]  # benign refusals, case-insensitive; harmful refusal (1) kept
    assert reasons[0][0] == "refusal"
    counts = stats.per_pattern
    assert counts[r"\bas an ai language model\b"] == {"matched": 1, "dropped": 1, "kept_harmful": 0, "flagged": 0,
                                                      "kept_unlabelled": 0}
    sorry = r"\bi'?m sorry,? but i (?:cannot|can't|am unable to|won't)\b"
    assert counts[sorry]["kept_harmful"] == 1 and counts[sorry]["dropped"] == 1


def test_refused_chosen_flagged_not_dropped_when_configured():
    prefs = _frame([{"prompt": "Tea?", "chosen": "I cannot help with tea.", "rejected": "Boil water."},
                    {"prompt": "Tea?", "chosen": "Boil water.", "rejected": "I cannot help with tea."}])
    reasons, stats = refusal_reasons(prefs, "preferences", RefusalConfig())
    assert reasons[0] is not None and reasons[1] is None  # a refusal as the *rejected* reply is fine
    reasons, stats = refusal_reasons(prefs, "preferences", RefusalConfig(drop_refused_chosen=False))
    assert reasons.isna().all() and stats.flagged_ids == ["r0"]


def test_refusal_of_an_unlabelled_prompt_is_kept_and_flagged_never_dropped():
    """No harmful column, no declaration: the refusal may be the right answer (HH harmless-base)."""
    rows = [{**d, "harmful": None} for d in DEMOS[:1]] + DEMOS[1:]
    reasons, stats = refusal_reasons(_frame(rows), "demonstrations", RefusalConfig())
    assert [i for i, r in reasons.items() if r is not None] == [3]  # the benign-labelled refusal only
    assert stats.unlabelled_ids == ["r0"] and stats.flagged_ids == []
    assert stats.per_pattern[r"\bas an ai language model\b"]["kept_unlabelled"] == 1


def test_custom_refusal_patterns():
    cfg = RefusalConfig(patterns=[r"\bno can do\b"])
    reasons, _ = refusal_reasons(_frame([{"prompt": "x?", "response": "No can do, friend."},
                                         {"prompt": "y?", "response": "As an AI language model..."}]),
                                 "demonstrations", cfg)
    assert reasons[0] is not None and reasons[1] is None


# ---- prompt filters


def test_length_bounds_whitespace_and_callable_tokenizer():
    prompts = pd.Series(["one", "one two three", "a " * 50])
    reasons = length_reasons(prompts, make_token_counter(None), 2, 10)
    assert reasons[0][0] == "too_short" and reasons[1] is None and reasons[2][0] == "too_long"
    by_chars = make_token_counter(len)
    assert length_reasons(prompts, by_chars, 1, 5)[1] == ("too_long", "13 tokens > max_tokens 5")


def test_length_with_a_real_hf_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "hello": 1, "world": 2}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]")
    count = make_token_counter(tok)
    assert count("hello world, world!") == 5  # punctuation are tokens here, unlike whitespace splitting


def test_language_filter_drops_confident_other_languages_only():
    prompts = pd.Series(["How do I boil an egg?", "Wie koche ich am besten Kartoffeln für einen Salat?",
                         "Comment faire cuire un oeuf dur rapidement ?", "Boil an egg"])
    reasons = language_reasons(prompts, PromptFilterConfig())
    assert reasons[0] is None and reasons[3] is None  # short/ambiguous English stays
    assert reasons[1][0] == "language" and "'de'" in reasons[1][1]
    assert "'fr'" in reasons[2][1]
    assert language_reasons(prompts, PromptFilterConfig(languages=["en", "de", "fr"])).isna().all()
    assert language_reasons(prompts, PromptFilterConfig(languages=[])).isna().all()  # off


def test_spam_filter():
    prompts = pd.Series(["Write about {{topic}}.", "lorem ipsum dolor sit amet", "aaaaaaaaaaaaaaa",
                         "buy buy buy buy buy buy buy now", "Describe [INSERT PRODUCT] in detail.",
                         "What is a good name for a cat?"])
    rules = [r[0] if r else None for r in spam_reasons(prompts, PromptFilterConfig())]
    assert rules == ["spam", "spam", "spam", "spam", "spam", None]


def test_per_user_cap_keeps_the_first_n_per_user():
    users = pd.Series(["u1", "u2", "u1", "u1", None, None, "u1", None])
    reasons = user_cap_reasons(users, 2)
    assert [i for i, r in reasons.items() if r is not None] == [3, 6]
    assert "user 'u1' has more than 2 prompts" in reasons[3][1]
    assert user_cap_reasons(users, None).isna().all()


# ---- coverage

PREFS = ["How long should I boil pasta?", "What should I pack for a beach trip?", "How do I teach my dog to sit?",
         "How often should I water a cactus?"]
TOPICS = ["cooking", "travel", "pets", "gardening"]
RL = ["How long do I boil pasta for?", "What should I pack for a ski trip?",
      "Summarize the Byzantine succession crisis of 1057.", "Prove there are infinitely many primes."]


def test_tfidf_coverage_both_ways():
    cov = compute_coverage(RL, PREFS, TOPICS, method="tfidf", threshold=0.2)
    assert cov.inside.tolist() == [True, True, False, False]
    summary = cov.summary()
    assert summary["share_rl_inside"] == 0.5
    assert summary["preference_topics_reached"] == 2 and summary["topics_not_reached"] == ["gardening", "pets"]
    assert summary["share_preference_topics_reached"] == 0.5
    # Stricter threshold -> fewer inside.
    assert compute_coverage(RL, PREFS, TOPICS, method="tfidf", threshold=0.99).inside.sum() == 0


def test_coverage_without_topic_labels_clusters_the_preference_prompts():
    cov = compute_coverage(RL, PREFS, [None] * 4, method="tfidf", threshold=0.2, n_topics=2)
    assert len(set(cov.reference_topics)) == 2 and cov.summary()["preference_topics"] == 2


@pytest.mark.slow
def test_embedding_coverage_understands_paraphrase():
    rl = ["How many minutes should spaghetti cook?", "Summarize the Byzantine succession crisis of 1057."]
    emb = compute_coverage(rl, PREFS, TOPICS, method="embedding", threshold=0.4)
    tfidf = compute_coverage(rl, PREFS, TOPICS, method="tfidf", threshold=0.2)
    assert emb.inside.tolist() == [True, False]
    assert not tfidf.inside[0]  # no shared words: TF-IDF misses the paraphrase the embedding sees
    assert emb.max_sim[0] > 0.5 > emb.max_sim[1]


@pytest.mark.slow
def test_length_with_the_default_model_tokenizer_via_model_config():
    from pathlib import Path

    from rlhf_core.config.model import ModelConfig

    cache = Path(__file__).resolve().parent.parent / ".rlhf" / "models"  # filled by `make model`
    count = make_token_counter(ModelConfig(), model_cache=cache)
    text = "Supercalifragilisticexpialidocious antidisestablishmentarianism"
    assert count(text) > len(text.split())  # subword tokens, not words
    reasons = length_reasons(pd.Series([text]), count, 1, 4)
    assert reasons[0][0] == "too_long"
