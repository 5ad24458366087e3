"""Data stage config: which files feed the pipeline and how they are curated (code: data_checks/)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from rlhf_core.config.base import StrictModel

DEMO_DIR = Path("data/demo")

# Boilerplate that marks a reply as a canned refusal rather than an answer (the
# InstructGPT/HH "as an AI language model" family). Case-insensitive regexes.
DEFAULT_REFUSAL_PATTERNS: list[str] = [
    r"\bas an ai language model\b",
    r"\bas a language model\b",  # "as a language model trained by ...", "..., but as a language model I cannot"
    r"\bas an ai(?: assistant)?,? i (?:do not|don't|cannot|can't)\b",
    r"\bi'?m sorry,? but i (?:cannot|can't|am unable to|won't)\b",
    r"\bi am sorry,? but i (?:cannot|can't|am unable to|won't)\b",
    r"\bi apologi[sz]e,? but i (?:cannot|can't|am unable to|won't|am not able to)\b",
    r"\bi (?:cannot|can't|can not) (?:help|assist) with\b",
    r"\bi(?:'?m| am) (?:not able|unable) to (?:help|assist|provide)\b",
    r"\bi (?:must|have to) (?:decline|refuse)\b",
]

# Templated or machine-made prompts (InstructGPT filtered "spammy" prompts); regexes.
DEFAULT_SPAM_PATTERNS: list[str] = [
    r"(.)\1{9,}",  # one character repeated 10+ times: "!!!!!!!!!!", "aaaaaaaaaa"
    r"(?i)\blorem ipsum\b",
    r"\{\{[^{}]*\}\}",  # unfilled template placeholder {{name}}
    r"(?i)\[(?:insert|your|placeholder)[^\]]*\]",  # [INSERT TOPIC], [your name]
    r"<(?:PLACEHOLDER|INSERT[^>]*)>",
    # single-brace template slot left unfilled: "{prompt}", "Answer {question}"
    r"(?i)\{(?:prompt|question|query|input|instruction|text|topic)\}",
    # advertising / link spam
    r"(?i)\b(?:click here|buy now|limited[- ]time offer|act now)\b",
    r"(?i)\bwin an? (?:free|brand[- ]new)\b",
]

Kind = Literal["prompts", "demonstrations", "preferences", "rankings"]
StageKind = Literal["demonstrations", "preferences", "rl_prompts"]


class DataInput(StrictModel):
    """An input file with what is known of all its prompts: ``{path: ..., harmful: true}``."""

    path: Path = Field(description="A data file, a `datasets` directory or a hub id.")
    harmful: bool | None = Field(
        None, description="Every prompt of this input is harmful (true: e.g. HH-RLHF harmless-base, red-team "
        "requests) or benign (false: e.g. helpful-base). A row's own `harmful` column wins. None: rows "
        "without the column are unlabelled (refusals of them are kept and flagged, never dropped).",
    )


# An input is a plain path, or a DataInput where all its prompts share a harmfulness label.
InputEntry = Path | DataInput


class RefusalConfig(StrictModel):
    """Refusal and boilerplate scrubbing of SFT responses and preferred replies."""

    enabled: bool = Field(True, description="Run refusal scrubbing at all.")
    patterns: list[str] = Field(
        default_factory=lambda: list(DEFAULT_REFUSAL_PATTERNS),
        description="Case-insensitive regexes; a reply matching any of them is a refusal.",
    )
    drop_refusing_demonstrations: bool = Field(
        True, description="Drop demonstrations whose response refuses a benign (harmful=False) prompt."
    )
    drop_refused_chosen: bool = Field(
        True,
        description="Drop preference pairs whose chosen reply refuses a benign prompt "
        "(when False they are kept and only counted/flagged in the report).",
    )

    @field_validator("patterns")
    @classmethod
    def _compile(cls, patterns: list[str]) -> list[str]:
        _check_regexes(patterns, "refusal.patterns")
        return patterns


class ShingleConfig(StrictModel):
    """How one kind of text is shingled for MinHash, and the Jaccard at which two texts are near-duplicates."""

    shingle: Literal["word", "char"] = Field(
        "char", description="MinHash shingles: word n-grams (fewer, coarse) or character n-grams (fine-grained; "
        "also the only choice for scripts without spaces)."
    )
    shingle_size: int = Field(5, ge=1, description="Words (or characters) per MinHash shingle.")
    threshold: float = Field(0.8, gt=0.0, le=1.0, description="Estimated Jaccard similarity at which texts are near-duplicates.")


# Defaults measured on data/demo (exact Jaccard; tests/test_demo_curation.py checks the outcome).
# Prompts are short (median 13 words, 66 characters): one typo, dropped or added word changes ~3 of
# ~11 word 3-grams (Jaccard 0.45-0.67, under any sane threshold), but only ~4-8 of ~60 character
# 4-grams (p10 0.78-0.84), while distinct prompts from one template ("How do I X my Y?") reach at
# most 0.68. Replies (~20-50 words): one edited word leaves word 3-gram Jaccard at 0.81-0.86, within
# MinHash noise (sigma ~0.035 at 128 permutations) of 0.8; character 5-grams give 0.89-0.97.
DEFAULT_PROMPT_SHINGLES = {"shingle": "char", "shingle_size": 4, "threshold": 0.75}
DEFAULT_REPLY_SHINGLES = {"shingle": "char", "shingle_size": 5, "threshold": 0.8}


class DedupConfig(StrictModel):
    """Exact (normalized hash) and near-duplicate (MinHash + LSH) removal.

    What counts as the same row: an RL prompt repeats an earlier prompt; a demonstration repeats an
    earlier (prompt, response); a preference pair repeats an earlier (prompt, {chosen, rejected}) with
    the replies as an unordered pair (a swapped copy is the same comparison). Near: every part is a
    near-duplicate of the matching part of the earlier row (prompts under ``prompt``, replies under
    ``reply``). One prompt legitimately has several demonstrations and comparisons, and comparisons
    share replies (2-3 pairs per prompt reuse a sampled reply, as in InstructGPT), so rows are never
    matched on concatenated text.
    """

    exact: bool = Field(True, description="Drop rows that repeat an earlier row after normalization.")
    near: bool = Field(True, description="Drop near-duplicates of an earlier kept row.")
    cross_split: bool = Field(
        True, description="Drop eval rows whose prompt (near-)duplicates any training prompt (contamination)."
    )
    prompt: ShingleConfig = Field(
        default_factory=lambda: ShingleConfig(**DEFAULT_PROMPT_SHINGLES),  # type: ignore[arg-type]
        description="Shingling and threshold for prompts (RL prompt dedup, the prompt of a pair, contamination).",
    )
    reply: ShingleConfig = Field(
        default_factory=lambda: ShingleConfig(**DEFAULT_REPLY_SHINGLES),  # type: ignore[arg-type]
        description="Shingling and threshold for replies (demonstration responses, chosen/rejected).",
    )
    num_perm: int = Field(128, ge=8, description="MinHash permutations.")
    lsh_false_negative_weight: float = Field(
        0.9, ge=0.0, le=1.0,
        description="Weight of missed pairs (vs. spurious candidates) when choosing the LSH bands. Candidates "
        "are verified against the threshold, so recall is cheap: 0.9 finds a pair 0.03 above a 0.8 threshold "
        "with probability 0.95; datasketch's 0.5 with 0.57.",
    )
    seed: int = Field(0, description="Seed of the MinHash permutations.")

    @property
    def lsh_weights(self) -> tuple[float, float]:
        return (1.0 - self.lsh_false_negative_weight, self.lsh_false_negative_weight)


class PromptFilterConfig(StrictModel):
    """Prompt-distribution filtering (InstructGPT appendix A: length, language, spam, per-user cap)."""

    apply_to: list[StageKind] = Field(
        default_factory=lambda: ["demonstrations", "preferences", "rl_prompts"],
        description="Which inputs the length/language/spam/user-cap filters run on (coverage: rl_prompts only).",
    )
    min_tokens: int = Field(1, ge=0, description="Fewest prompt tokens kept.")
    max_tokens: int = Field(512, ge=1, description="Most prompt tokens kept.")
    languages: list[str] = Field(
        default_factory=lambda: ["en"],
        description="Allowed ISO 639-1 codes; empty list turns the language filter off.",
    )
    language_candidates: list[str] = Field(
        default_factory=lambda: ["en", "de", "fr", "es", "it", "pt", "nl", "ru", "zh", "ja", "ko", "ar", "hi", "tr", "pl", "sv"],
        description="Languages the detector chooses among (a small set is faster and surer on short prompts).",
    )
    language_min_confidence: float = Field(
        0.5, ge=0.0, le=1.0,
        description="Drop a prompt only when another language wins with at least this confidence (short prompts are ambiguous).",
    )
    spam_patterns: list[str] = Field(
        default_factory=lambda: list(DEFAULT_SPAM_PATTERNS),
        description="Regexes marking templated or machine-made prompts.",
    )
    max_repeated_word_share: float = Field(
        0.5, gt=0.0, le=1.0,
        description="A prompt of 8+ words in which one word makes up more than this share is spam.",
    )
    max_prompts_per_user: int | None = Field(
        200, ge=1, description="Cap on distinct prompts per user_id (InstructGPT: 200); None = no cap. "
        "All rows of a prompt over the cap go (a prompt's several comparisons count once)."
    )
    user_cap_inputs: list[StageKind] | None = Field(
        None, description="Inputs the per-user cap runs on; None = every input in apply_to."
    )
    coverage_method: Literal["tfidf", "embedding", "off"] = Field(
        "tfidf", description="How RL prompts are compared with preference prompts."
    )
    coverage_threshold: float | None = Field(
        None, ge=-1.0, le=1.0,
        description="An RL prompt is inside the preference support when its max cosine similarity "
        "to the preference prompts is >= this. None = the method's default (tfidf 0.2, embedding 0.4).",
    )
    coverage_topics: int = Field(
        12, ge=1, description="Clusters used as topics for coverage when preference prompts carry no `topic`."
    )

    @property
    def effective_coverage_threshold(self) -> float:
        # Defaults measured on paraphrase vs off-topic prompts (tests/data/stage): MiniLM puts
        # paraphrases at 0.6-0.95 and unrelated prompts below 0.15; TF-IDF only sees shared words.
        if self.coverage_threshold is not None:
            return self.coverage_threshold
        return {"tfidf": 0.2, "embedding": 0.4}.get(self.coverage_method, 0.0)

    @field_validator("spam_patterns")
    @classmethod
    def _compile(cls, patterns: list[str]) -> list[str]:
        _check_regexes(patterns, "prompt_filter.spam_patterns")
        return patterns


class DataConfig(StrictModel):
    """Input files (relative paths resolve against the current directory) and curation settings."""

    demonstrations: list[InputEntry] = Field(
        default_factory=lambda: [DEMO_DIR / "demonstrations.jsonl"],
        description="SFT demonstrations (prompt + response, or chat messages), or preference data: its chosen "
        "side (the prompt turns + the chosen reply) becomes demonstrations. Each entry a path or "
        "{path: ..., harmful: true|false}.",
    )
    preferences: list[InputEntry] = Field(
        default_factory=lambda: [DEMO_DIR / "preferences.jsonl"],
        description="Preference pairs or rankings (prompt, chosen, rejected, annotator labels). Each entry a "
        "path or {path: ..., harmful: true|false}.",
    )
    rl_prompts: list[InputEntry] = Field(
        default_factory=lambda: [DEMO_DIR / "rl_prompts.jsonl"],
        description="Prompts for PPO and evaluation. Each entry a path or {path: ..., harmful: true|false}.",
    )
    dataset_split: str = Field(
        "train", description="Split read from `datasets.load_dataset` sources (hub ids, dataset dirs)."
    )
    max_text_chars: int = Field(
        20_000, ge=1, description="Longest prompt/reply accepted by validation; longer rows are quarantined."
    )
    num_proc: int = Field(
        1, ge=1,
        description="Worker processes for the heaviest per-row step, language detection "
        "(datasets.Dataset.map(num_proc=...)); 1 = in this process. The curated files and the "
        "report are the same for any value. Each input forks its own pool (~0.1-0.5 s), so it pays "
        "off from several thousand prompts per input, with that many free cores.",
    )
    eval_fraction: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="Share of conversations held out as the eval split where a row has no `split` value (real "
        "data rarely has one). A row goes to eval when a hash of its user turns falls under this share, so one "
        "conversation lands on the same side in every input: its comparisons measure the reward model's held-out "
        "agreement, its prompt is an eval prompt, and neither SFT, the reward model nor PPO trains on it. "
        "0 = rows without a split are training rows.",
    )
    refusal: RefusalConfig = Field(default_factory=RefusalConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    prompt_filter: PromptFilterConfig = Field(default_factory=PromptFilterConfig)

    def sources(self, name: StageKind) -> list[DataInput]:
        """The entries of input ``name`` in one form: a plain path is ``DataInput(path, harmful=None)``."""
        return [e if isinstance(e, DataInput) else DataInput(path=e) for e in getattr(self, name)]


def _check_regexes(patterns: list[str], where: str) -> None:
    import re

    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{where}: invalid regex {pattern!r}: {exc}") from exc
