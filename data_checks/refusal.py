"""Refusal and boilerplate scrubbing.

A canned refusal ("As an AI language model…", "I'm sorry, but I cannot…") taught as
the *right* answer to a benign prompt makes the policy evasive, so such demonstrations
are dropped and such preferred replies are dropped (or only flagged). Refusing a prompt
marked ``harmful`` is the behaviour we want (the harmlessness data), so those are kept.

A prompt of unknown harmfulness (no ``harmful`` column and no declaration for its input, e.g.
HH-RLHF as published) may well deserve its refusal: such rows are never dropped, they are
kept, flagged (``unlabelled_ids``) and counted as ``kept_unlabelled``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from data_checks.schemas import is_null
from rlhf_core.config.data import RefusalConfig

# The reply column a refusal is looked for in, per kind.
REPLY_COLUMN = {"demonstrations": "response", "preferences": "chosen"}


def compile_patterns(patterns: list[str]) -> list[re.Pattern[str]]:
    return [re.compile(p, re.IGNORECASE) for p in patterns]


def first_refusal(text: Any, compiled: list[re.Pattern[str]]) -> int | None:
    """Index of the first pattern found in ``text`` (None: no refusal, or not text)."""
    if not isinstance(text, str):
        return None
    for i, pattern in enumerate(compiled):
        if pattern.search(text):
            return i
    return None


@dataclass
class RefusalStats:
    """Counts per pattern: matched replies, how many were dropped, kept (harmful prompt), only flagged
    (benign, dropping off) or kept and flagged because the prompt is unlabelled."""

    per_pattern: dict[str, dict[str, int]] = field(default_factory=dict)
    flagged_ids: list[str] = field(default_factory=list)
    unlabelled_ids: list[str] = field(default_factory=list)

    def add(self, pattern: str, outcome: str) -> None:
        counts = self.per_pattern.setdefault(pattern, {"matched": 0, "dropped": 0, "kept_harmful": 0, "flagged": 0,
                                                       "kept_unlabelled": 0})
        counts["matched"] += 1
        counts[outcome] += 1

    def to_json(self) -> dict[str, Any]:
        return {"per_pattern": self.per_pattern, "flagged_ids": self.flagged_ids,
                "unlabelled_ids": self.unlabelled_ids}


def refusal_reasons(frame: pd.DataFrame, kind: str, cfg: RefusalConfig) -> tuple[pd.Series, RefusalStats]:
    """Per row: ``("refusal", detail)`` if the row is to be dropped, else None; plus per-pattern counts.

    Looks at ``response`` (demonstrations) or ``chosen`` (preferences). Rows whose prompt is
    ``harmful`` are always kept (counted as ``kept_harmful``); rows whose ``harmful`` is None
    (unlabelled) too, flagged (``kept_unlabelled``).
    """
    stats = RefusalStats()
    reasons = pd.Series([None] * len(frame), index=frame.index, dtype=object)
    if not cfg.enabled or kind not in REPLY_COLUMN or frame.empty:
        return reasons, stats
    drop = cfg.drop_refusing_demonstrations if kind == "demonstrations" else cfg.drop_refused_chosen
    compiled = compile_patterns(cfg.patterns)
    for idx, text, harmful, rid in zip(frame.index, frame[REPLY_COLUMN[kind]], frame["harmful"], frame["id"]):
        hit = first_refusal(text, compiled)
        if hit is None:
            continue
        pattern = cfg.patterns[hit]
        if is_null(harmful):
            stats.add(pattern, "kept_unlabelled")
            stats.unlabelled_ids.append(str(rid))
        elif bool(harmful):
            stats.add(pattern, "kept_harmful")
        elif drop:
            stats.add(pattern, "dropped")
            reasons[idx] = ("refusal", f"refuses a benign prompt (matches {pattern!r})")
        else:
            stats.add(pattern, "flagged")
            stats.flagged_ids.append(str(rid))
    return reasons, stats
