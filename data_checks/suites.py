"""Great Expectations suites per data kind (the contract `rlhf data check` enforces in CI).

GX is imported inside the functions only: it costs ~3 s to import and the CLI's
``--help`` must stay fast. GX sees a flattened copy of the canonical frame
(:func:`gx_frame`): list columns become JSON text, and rules that involve two columns
or a condition become derived columns (``chosen_equals_rejected``,
``response_if_benign``), which keeps every expectation a plain column expectation.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pandas as pd

from data_checks.config import DEFAULT_REFUSAL_PATTERNS, Kind
from data_checks.schemas import SPLITS, TEXT_COLUMNS

# Which reply must not be a refusal unless the prompt is harmful, per kind.
_REFUSAL_CHECKED = {"demonstrations": "response", "preferences": "chosen"}


def import_gx() -> Any:
    """Import great_expectations quietly (no usage statistics from CI machines)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx

    return gx


def _type_name(v: Any) -> str | None:
    return None if v is None else type(v).__name__


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
    for col in TEXT_COLUMNS[kind]:
        if col in frame:
            out[f"{col}__type"] = frame[col].map(_type_name).astype(object)
    benign = ~frame["harmful"].map(lambda h: h is True).astype(bool) if "harmful" in frame else True
    if kind in _REFUSAL_CHECKED and _REFUSAL_CHECKED[kind] in frame:
        col = _REFUSAL_CHECKED[kind]
        out[f"{col}_if_benign"] = frame[col].where(benign, None).astype(object)
    if kind == "preferences" and {"chosen", "rejected"} <= set(frame.columns):
        out["chosen_equals_rejected"] = [
            isinstance(c, str) and isinstance(r, str) and c.strip() == r.strip()
            for c, r in zip(frame["chosen"], frame["rejected"])
        ]
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
    suite.add_expectation(E.ExpectColumnValuesToBeUnique(column="id"))
    for col in TEXT_COLUMNS[kind]:
        suite.add_expectation(E.ExpectColumnValuesToBeInSet(column=f"{col}__type", value_set=["str"]))
        suite.add_expectation(E.ExpectColumnValueLengthsToBeBetween(column=col, min_value=1, max_value=max_text_chars))
        suite.add_expectation(E.ExpectColumnValuesToNotMatchRegex(column=col, regex=r"^\s*$"))
    suite.add_expectation(E.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)))
    suite.add_expectation(E.ExpectColumnValuesToBeInSet(column="harmful", value_set=[True, False]))
    if kind in _REFUSAL_CHECKED:
        suite.add_expectation(E.ExpectColumnValuesToNotMatchRegexList(
            column=f"{_REFUSAL_CHECKED[kind]}_if_benign", regex_list=patterns))
    if kind == "preferences":
        suite.add_expectation(E.ExpectColumnValuesToBeInSet(column="chosen_equals_rejected", value_set=[False]))
    return suite
