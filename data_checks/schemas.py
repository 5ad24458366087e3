"""Pandera schemas of the canonical frames (docs/ARCHITECTURE.md "Canonical data frames").

Every content rule is a row-level check, so a bad row is quarantined alone with the
rule it broke instead of failing the whole file. Types are checked per element (not
by column dtype) for the same reason: one integer prompt in a JSONL file must not
reject the other thousand rows.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import pandera.pandas as pa

from data_checks.config import Kind

# Columns every canonical frame has, in this order (plus the `_file`/`_row` provenance).
CANONICAL_COLUMNS: dict[str, list[str]] = {
    "prompts": ["id", "prompt", "topic", "user_id", "source", "split", "harmful"],
    "demonstrations": ["id", "prompt", "response", "messages", "topic", "user_id", "source", "split", "harmful"],
    "preferences": [
        "id", "prompt", "chosen", "rejected", "annotator_labels", "margin",
        "topic", "user_id", "source", "split", "harmful",
    ],
    "rankings": ["id", "prompt", "responses", "topic", "user_id", "source", "split", "harmful"],
}
PROVENANCE = ["_file", "_row"]
SPLITS = ("train", "eval")
# The text columns of each kind that carry prompt/reply content.
TEXT_COLUMNS: dict[str, list[str]] = {
    "prompts": ["prompt"],
    "demonstrations": ["prompt", "response"],
    "preferences": ["prompt", "chosen", "rejected"],
    "rankings": ["prompt"],
}


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _not_blank(v: Any) -> bool:
    return not isinstance(v, str) or bool(v.strip())


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool) or type(v).__name__ == "bool_"


def _is_labels(v: Any) -> bool:
    if v is None:
        return True
    try:
        items = list(v)
    except TypeError:
        return False
    return len(items) > 0 and all(isinstance(x, (int,)) or type(x).__name__.startswith("int") for x in items) and all(
        int(x) in (0, 1) for x in items
    )


def _is_finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def _is_messages(v: Any) -> bool:
    if v is None:
        return True
    try:
        items = list(v)
    except TypeError:
        return False
    return len(items) > 0 and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in items
    )


def _is_responses(v: Any) -> bool:
    try:
        items = list(v)
    except TypeError:
        return False
    return len(items) >= 2 and all(isinstance(x, str) and x.strip() for x in items) and len(set(items)) == len(items)


def _text_column(max_chars: int) -> pa.Column:
    return pa.Column(
        nullable=False,
        checks=[
            pa.Check(_is_str, element_wise=True, name="is_string"),
            pa.Check(_not_blank, element_wise=True, name="not_blank"),
            pa.Check(lambda v: not isinstance(v, str) or len(v) <= max_chars, element_wise=True,
                     name=f"max_chars({max_chars})"),
        ],
    )


def _optional_str() -> pa.Column:
    return pa.Column(nullable=True, checks=pa.Check(_is_str, element_wise=True, name="is_string"))


def _chosen_differs(df: pd.DataFrame) -> pd.Series:
    chosen = df["chosen"].map(lambda v: v.strip() if isinstance(v, str) else v)
    rejected = df["rejected"].map(lambda v: v.strip() if isinstance(v, str) else v)
    return chosen != rejected


def schema_for(kind: Kind, max_text_chars: int = 20_000) -> pa.DataFrameSchema:
    """The schema of canonical ``kind`` frames; rows longer than ``max_text_chars`` fail."""
    columns: dict[str, pa.Column] = {
        "id": pa.Column(
            nullable=False,
            unique=True,
            report_duplicates="exclude_first",  # keep the first occurrence, quarantine repeats
            checks=[pa.Check(_is_str, element_wise=True, name="is_string"),
                    pa.Check(_not_blank, element_wise=True, name="not_blank")],
        ),
        "prompt": _text_column(max_text_chars),
        "topic": _optional_str(),
        "user_id": _optional_str(),
        "source": _optional_str(),
        "split": pa.Column(nullable=True, checks=pa.Check(lambda v: v in SPLITS, element_wise=True,
                                                        name="split_in(train,eval)")),
        "harmful": pa.Column(nullable=False, checks=pa.Check(_is_bool, element_wise=True, name="is_bool")),
    }
    checks: list[pa.Check] = []
    if kind == "demonstrations":
        columns["response"] = _text_column(max_text_chars)
        columns["messages"] = pa.Column(nullable=True, checks=pa.Check(_is_messages, element_wise=True,
                                                                      name="is_message_list"))
    elif kind == "preferences":
        columns["chosen"] = _text_column(max_text_chars)
        columns["rejected"] = _text_column(max_text_chars)
        columns["annotator_labels"] = pa.Column(nullable=True, checks=pa.Check(_is_labels, element_wise=True,
                                                                              name="labels_in(0,1)"))
        columns["margin"] = pa.Column(nullable=True, checks=pa.Check(_is_finite_number, element_wise=True,
                                                                    name="is_finite_number"))
        checks.append(pa.Check(_chosen_differs, name="chosen_differs_from_rejected"))
    elif kind == "rankings":
        columns["responses"] = pa.Column(nullable=False, checks=pa.Check(_is_responses, element_wise=True,
                                                                        name="two_or_more_distinct_responses"))
    # Column order and presence are fixed by the importers; extra provenance columns are fine.
    return pa.DataFrameSchema(columns, checks=checks, strict=False, name=kind, coerce=False)
