"""Pandera schemas of the canonical frames (docs/ARCHITECTURE.md "Canonical data frames").

Every content rule is a row-level check, so a bad row is quarantined alone with the
rule it broke instead of failing the whole file. Types are checked per element (not
by column dtype) for the same reason: one integer prompt in a JSONL file must not
reject the other thousand rows.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa

from rlhf_core.config.data import Kind

# Columns every canonical frame has, in this order (plus the `_file`/`_row` provenance).
# ``prompt_messages``: the chat messages before the final reply of a multi-turn row (None for one
# user turn, whose text is ``prompt``); ``harmful``: True/False, or None when unlabelled.
CANONICAL_COLUMNS: dict[str, list[str]] = {
    "prompts": ["id", "prompt", "prompt_messages", "topic", "user_id", "source", "split", "harmful"],
    "demonstrations": ["id", "prompt", "response", "messages", "topic", "user_id", "source", "split", "harmful"],
    "preferences": [
        "id", "prompt", "prompt_messages", "chosen", "rejected", "annotator_labels", "margin",
        "topic", "user_id", "source", "split", "harmful",
    ],
    "rankings": ["id", "prompt", "prompt_messages", "responses", "topic", "user_id", "source", "split", "harmful"],
}
# The roles a chat template renders.
CHAT_ROLES = ("system", "user", "assistant")
PROVENANCE = ["_file", "_row"]
# Optional metadata columns: text or null.
OPTIONAL_TEXT_COLUMNS = ["topic", "user_id", "source"]
SPLITS = ("train", "eval")
# The text columns of each kind that carry prompt/reply content.
TEXT_COLUMNS: dict[str, list[str]] = {
    "prompts": ["prompt"],
    "demonstrations": ["prompt", "response"],
    "preferences": ["prompt", "chosen", "rejected"],
    "rankings": ["prompt"],
}


# ---- row rules, shared with the Great Expectations suites (data_checks/suites.py) so that
# `rlhf data check` and `rlhf data prepare` fail the same rows. Each predicate takes one value
# and never raises (a value of any type is simply valid or not).


def is_null(v: Any) -> bool:
    """Missing, as pandera and GX count it: None or a float NaN."""
    return v is None or (isinstance(v, float) and math.isnan(v))


def is_str(v: Any) -> bool:
    return isinstance(v, str)


def not_blank(v: Any) -> bool:
    return not isinstance(v, str) or bool(v.strip())


def is_bool(v: Any) -> bool:
    return isinstance(v, (bool, np.bool_))


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def is_labels(v: Any) -> bool:
    """Annotator labels: a non-empty list of 0/1 integers (1 = this annotator preferred ``chosen``).
    Booleans are not labels: ``[true, false]`` is a different file format's mistake, not a vote."""
    if not isinstance(v, (list, tuple, np.ndarray)):
        return False
    return len(v) > 0 and all(_is_int(x) and int(x) in (0, 1) for x in v)


def is_finite_number(v: Any) -> bool:
    if not isinstance(v, (int, float, np.integer, np.floating)) or isinstance(v, (bool, np.bool_)):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:  # an integer beyond float range
        return False


def is_messages(v: Any) -> bool:
    if not isinstance(v, (list, tuple, np.ndarray)):
        return False
    return len(v) > 0 and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in v
    )


def is_prompt_messages(v: Any) -> bool:
    """The turns before a reply: chat messages of the chat roles, ending with the user's turn."""
    return is_messages(v) and all(m["role"] in CHAT_ROLES for m in v) and list(v)[-1]["role"] == "user"


def is_responses(v: Any) -> bool:
    if not isinstance(v, (list, tuple, np.ndarray)):
        return False
    items = list(v)
    return len(items) >= 2 and all(isinstance(x, str) and x.strip() for x in items) and len(set(items)) == len(items)


def chosen_equals_rejected(chosen: Any, rejected: Any) -> bool:
    """No preference signal: the same reply (ignoring surrounding whitespace) on both sides."""
    return isinstance(chosen, str) and isinstance(rejected, str) and chosen.strip() == rejected.strip()


def _key(v: Any) -> Any:
    """A hashable stand-in for any id value (a list or a dict id must not crash the uniqueness rule)."""
    try:
        hash(v)
        return (type(v).__name__, v)
    except TypeError:
        return (type(v).__name__, json.dumps(v, sort_keys=True, default=str))


def repeats(values: Any) -> list[bool]:
    """True for each value equal to an earlier one (the first occurrence is kept); nulls never repeat."""
    seen: set[Any] = set()
    out = []
    for v in values:
        if is_null(v):
            out.append(False)
            continue
        k = _key(v)
        out.append(k in seen)
        seen.add(k)
    return out


def _series_check(fn: Any) -> Any:
    return lambda s: pd.Series([not r for r in fn(list(s))], index=s.index, dtype=bool)


def _text_column(max_chars: int) -> pa.Column:
    return pa.Column(
        nullable=False,
        checks=[
            pa.Check(is_str, element_wise=True, name="is_string"),
            pa.Check(not_blank, element_wise=True, name="not_blank"),
            pa.Check(lambda v: not isinstance(v, str) or len(v) <= max_chars, element_wise=True,
                     name=f"max_chars({max_chars})"),
        ],
    )


def _optional_str() -> pa.Column:
    return pa.Column(nullable=True, checks=pa.Check(is_str, element_wise=True, name="is_string"))


def _chosen_differs(df: pd.DataFrame) -> pd.Series:
    # Element by element: a whole-column comparison of mixed types (a number among strings) raises.
    return pd.Series([not chosen_equals_rejected(c, r) for c, r in zip(df["chosen"], df["rejected"])],
                     index=df.index, dtype=bool)


def schema_for(kind: Kind, max_text_chars: int = 20_000) -> pa.DataFrameSchema:
    """The schema of canonical ``kind`` frames; rows longer than ``max_text_chars`` fail."""
    columns: dict[str, pa.Column] = {
        "id": pa.Column(
            nullable=False,
            checks=[pa.Check(is_str, element_wise=True, name="is_string"),
                    pa.Check(not_blank, element_wise=True, name="not_blank"),
                    # keep the first occurrence, quarantine repeats (pandera's own unique=True
                    # cannot hash a list or a dict id)
                    pa.Check(_series_check(repeats), name="field_uniqueness")],
        ),
        "prompt": _text_column(max_text_chars),
        "topic": _optional_str(),
        "user_id": _optional_str(),
        "source": _optional_str(),
        "split": pa.Column(nullable=True, checks=pa.Check(lambda v: v in SPLITS, element_wise=True,
                                                        name="split_in(train,eval)")),
        # null: unlabelled (no column, no declaration for the input)
        "harmful": pa.Column(nullable=True, checks=pa.Check(is_bool, element_wise=True, name="is_bool")),
    }
    if kind != "demonstrations":
        columns["prompt_messages"] = pa.Column(nullable=True, checks=pa.Check(
            is_prompt_messages, element_wise=True, name="is_prompt_messages"))
    checks: list[pa.Check] = []
    if kind == "demonstrations":
        columns["response"] = _text_column(max_text_chars)
        columns["messages"] = pa.Column(nullable=True, checks=pa.Check(is_messages, element_wise=True,
                                                                      name="is_message_list"))
    elif kind == "preferences":
        columns["chosen"] = _text_column(max_text_chars)
        columns["rejected"] = _text_column(max_text_chars)
        columns["annotator_labels"] = pa.Column(nullable=True, checks=pa.Check(is_labels, element_wise=True,
                                                                              name="labels_in(0,1)"))
        columns["margin"] = pa.Column(nullable=True, checks=pa.Check(is_finite_number, element_wise=True,
                                                                    name="is_finite_number"))
        checks.append(pa.Check(_chosen_differs, name="chosen_differs_from_rejected"))
    elif kind == "rankings":
        columns["responses"] = pa.Column(nullable=False, checks=pa.Check(is_responses, element_wise=True,
                                                                        name="two_or_more_distinct_responses"))
    # Column order and presence are fixed by the importers; extra provenance columns are fine.
    return pa.DataFrameSchema(columns, checks=checks, strict=False, name=kind, coerce=False)
