"""Great Expectations suites per data kind (the contract `rlhf data check` enforces in CI).

GX is imported inside the functions only: it costs ~3 s to import and the CLI's
``--help`` must stay fast. GX sees a flattened copy of the canonical frame
(:func:`gx_frame`): list columns become JSON text, and rules that involve two columns,
a condition or a type become derived columns (``chosen_equals_rejected``,
``response_if_benign``, ``prompt__type``, ``id__repeat``, ``margin__invalid``), which keeps
every expectation a plain column expectation.

The suites hold every row to the same rules as the pandera schemas that `rlhf data prepare`
validates with (:mod:`data_checks.schemas`); where GX has no native expectation for a rule
the derived column is computed by the very predicate pandera uses, so the two cannot drift
apart (tests/test_data_parity.py holds them to the same failing rows). The one rule here that
the pipeline treats as curation rather than validation is the refusal check
(``<reply>_if_benign``): `data prepare` drops those rows in its refusal step instead.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pandas as pd

from rlhf_core.config.data import DEFAULT_REFUSAL_PATTERNS, Kind
from data_checks.schemas import (
    OPTIONAL_TEXT_COLUMNS,
    SPLITS,
    TEXT_COLUMNS,
    chosen_equals_rejected,
    is_bool,
    is_finite_number,
    is_labels,
    is_messages,
    is_null,
    is_prompt_messages,
    repeats,
)

# Which reply must not be a refusal unless the prompt is harmful, per kind.
_REFUSAL_CHECKED = {"demonstrations": "response", "preferences": "chosen"}
# Columns whose values must pass a schema predicate (or be null), per kind; GX sees
# ``<column>__invalid``: the offending value as JSON text, null where the value is fine.
_INVALID_RULES: dict[str, dict[str, Any]] = {
    "prompts": {"prompt_messages": is_prompt_messages},
    "demonstrations": {"messages": is_messages},
    "preferences": {"prompt_messages": is_prompt_messages, "annotator_labels": is_labels, "margin": is_finite_number},
}
# The rule of each ``__invalid`` column in plain words (the printed report).
INVALID_WORDS = {
    "messages": "messages must be a non-empty list of {role, content} text messages, or null",
    "prompt_messages": "prompt_messages must be system/user/assistant {role, content} text messages ending "
                       "with a user turn, or null",
    "annotator_labels": "annotator_labels must be a non-empty list of 0/1 integers, or null",
    "margin": "margin must be a finite number, or null",
}
# The columns a derived GX column stands for (the report names the data's own column).
REFUSAL_RULE_COLUMNS = tuple(f"{c}_if_benign" for c in _REFUSAL_CHECKED.values())


def import_gx() -> Any:
    """Import great_expectations quietly (no usage statistics from CI machines)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx

    return gx


def _type_name(v: Any) -> str | None:
    """The type GX is shown for a value: null for missing (None, NaN), ``bool`` for numpy bools too."""
    if is_null(v):
        return None
    if isinstance(v, str):
        return "str"
    if is_bool(v):
        return "bool"
    return type(v).__name__


def _as_text(v: Any) -> str:
    """A value as the report shows it: text as is, anything else as JSON."""
    if isinstance(v, str):
        return v
    try:
        return json.dumps(v.tolist() if hasattr(v, "tolist") else v, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(v)


def gx_frame(frame: pd.DataFrame, kind: Kind) -> pd.DataFrame:
    """Scalar-only copy of a canonical frame with the derived columns the suites read."""
    out = pd.DataFrame(index=frame.index)
    for col in frame.columns:
        if col.startswith("_"):
            continue
        values = frame[col]
        if values.map(lambda v: isinstance(v, (list, dict))).any():
            values = values.map(lambda v: json.dumps(v, default=str) if isinstance(v, (list, dict)) else v)
        out[col] = values.astype(object)
    for col in ["id", *TEXT_COLUMNS[kind], *OPTIONAL_TEXT_COLUMNS, "harmful"]:
        if col in frame:
            out[f"{col}__type"] = frame[col].map(_type_name).astype(object)
    if "id" in frame:
        out["id__repeat"] = pd.Series([_as_text(v) if r else None for v, r in zip(frame["id"], repeats(frame["id"]))],
                                      index=frame.index, dtype=object)
    for col, ok in _INVALID_RULES.get(kind, {}).items():
        if col in frame:
            out[f"{col}__invalid"] = frame[col].map(
                lambda v, ok=ok: None if is_null(v) or ok(v) else _as_text(v)).astype(object)
    # Unlabelled rows (harmful null) are held to the rule too: only a row marked harmful may refuse.
    benign = ~frame["harmful"].map(lambda h: h is True).astype(bool) if "harmful" in frame else True
    if kind in _REFUSAL_CHECKED and _REFUSAL_CHECKED[kind] in frame:
        col = _REFUSAL_CHECKED[kind]
        out[f"{col}_if_benign"] = frame[col].where(benign, None).astype(object)
    if kind == "preferences" and {"chosen", "rejected"} <= set(frame.columns):
        out["chosen_equals_rejected"] = [chosen_equals_rejected(c, r) for c, r in zip(frame["chosen"], frame["rejected"])]
    return out


def build_suite(
    kind: Kind,
    *,
    max_text_chars: int = 20_000,
    refusal_patterns: list[str] | None = None,
    name: str | None = None,
) -> Any:
    """The expectation suite for ``kind`` (``prompts``, ``demonstrations``, ``preferences``)."""
    gx = import_gx()
    E = gx.expectations
    patterns = [f"(?i){p}" for p in (refusal_patterns if refusal_patterns is not None else DEFAULT_REFUSAL_PATTERNS)]
    suite = gx.ExpectationSuite(name=name or f"rlhf-{kind}")
    required = ["id"] + TEXT_COLUMNS[kind]
    for col in required:
        suite.add_expectation(E.ExpectColumnToExist(column=col))
        suite.add_expectation(E.ExpectColumnValuesToNotBeNull(column=col))
    # ids: text, not blank, each once (a repeat fails; the first occurrence is the one kept)
    suite.add_expectation(E.ExpectColumnValuesToBeInSet(column="id__type", value_set=["str"]))
    suite.add_expectation(E.ExpectColumnValuesToNotMatchRegex(column="id", regex=r"^\s*$"))
    suite.add_expectation(E.ExpectColumnValuesToBeNull(column="id__repeat"))
    for col in TEXT_COLUMNS[kind]:
        suite.add_expectation(E.ExpectColumnValuesToBeInSet(column=f"{col}__type", value_set=["str"]))
        suite.add_expectation(E.ExpectColumnValueLengthsToBeBetween(column=col, min_value=1, max_value=max_text_chars))
        suite.add_expectation(E.ExpectColumnValuesToNotMatchRegex(column=col, regex=r"^\s*$"))
    for col in OPTIONAL_TEXT_COLUMNS:  # text or null
        suite.add_expectation(E.ExpectColumnValuesToBeInSet(column=f"{col}__type", value_set=["str"]))
    suite.add_expectation(E.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)))
    # harmful: a real boolean or null (unlabelled); GX's in-set test alone would let 1 and 0 pass
    suite.add_expectation(E.ExpectColumnValuesToBeInSet(column="harmful__type", value_set=["bool"]))
    for col in _INVALID_RULES.get(kind, {}):
        suite.add_expectation(E.ExpectColumnValuesToBeNull(column=f"{col}__invalid"))
    if kind in _REFUSAL_CHECKED:
        suite.add_expectation(E.ExpectColumnValuesToNotMatchRegexList(
            column=f"{_REFUSAL_CHECKED[kind]}_if_benign", regex_list=patterns))
    if kind == "preferences":
        suite.add_expectation(E.ExpectColumnValuesToBeInSet(column="chosen_equals_rejected", value_set=[False]))
    return suite
