"""Lazy pandera validation: good rows go on, bad rows are quarantined with the rule they broke."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pandera.pandas as pa

from data_checks.importers import Quarantined
from data_checks.schemas import CANONICAL_COLUMNS, schema_for
from rlhf_core.config.data import Kind
from rlhf_core.errors import DataError


def _describe(column: object, check: str, value: object) -> str:
    col = f"{column}: " if isinstance(column, str) and column else ""
    if check == "not_nullable":
        return f"{col}missing or null"
    if check == "field_uniqueness":
        return f"{col}duplicate value {str(value)[:80]!r} (first occurrence kept)"
    if check == "is_string":
        return f"{col}expected text, got {type(value).__name__}"
    if check == "not_blank":
        return f"{col}empty or whitespace-only text"
    if check.startswith("max_chars"):
        length = len(value) if isinstance(value, str) else "?"
        return f"{col}text of {length} characters exceeds {check[len('max_chars('):-1]} (data.max_text_chars)"
    if check == "chosen_differs_from_rejected":
        return "chosen is identical to rejected (no preference signal)"
    shown = _shown(value)
    if check == "is_bool":
        return f"{col}expected true or false, got {type(value).__name__} {shown}"
    if check == "labels_in(0,1)":
        return f"{col}{shown} is not a non-empty list of 0/1 integers"
    if check == "is_finite_number":
        return f"{col}expected a finite number, got {type(value).__name__} {shown}"
    if check == "is_prompt_messages":
        return f"{col}{shown} is not a list of system/user/assistant messages ending with a user turn"
    if check == "is_message_list":
        return f"{col}{shown} is not a non-empty list of {{role, content}} text messages"
    return f"{col}value {shown} fails {check}"


def _shown(value: object) -> str:
    """A value as JSON (``[true, false]``, ``"1"``), cut to 80 characters."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:79] + "…"


def validate_frame(
    frame: pd.DataFrame, kind: Kind, *, max_text_chars: int = 20_000
) -> tuple[pd.DataFrame, list[Quarantined]]:
    """Validate a canonical frame (with ``_file``/``_row``) lazily; return (valid rows, quarantined rows).

    Every failing row is reported once, with all the rules it broke; a structural
    problem that is not about rows (a missing column) raises :class:`DataError`.
    """
    if frame.empty:
        return frame, []
    frame = frame.reset_index(drop=True)
    schema = schema_for(kind, max_text_chars)
    try:
        schema.validate(frame, lazy=True)
        return frame, []
    except pa.errors.SchemaErrors as errors:
        cases = errors.failure_cases
    files = sorted(set(frame["_file"].astype(str)))
    structural = cases[cases["index"].isna()]
    if not structural.empty:
        first = structural.iloc[0]
        where = files[0] if len(files) == 1 else ", ".join(files)
        raise DataError(f"{where}: {kind} frame fails {first['check']} ({first['failure_case']}); "
                        f"expected columns {CANONICAL_COLUMNS[kind]}")
    reasons: dict[int, list[tuple[str, str]]] = {}
    for case in cases.itertuples(index=False):
        # A frame-wide check (chosen != rejected) is reported once per row, not per column.
        frame_check = case.schema_context == "DataFrameSchema"
        column = case.column if isinstance(case.column, str) and not frame_check else None
        if frame_check and any(r == str(case.check) for r, _ in reasons.get(int(case.index), [])):
            continue
        rule = f"{column}:{case.check}" if column else str(case.check)
        reasons.setdefault(int(case.index), []).append((rule, _describe(column, str(case.check), case.failure_case)))
    bad = sorted(reasons)
    quarantined = []
    records = frame.drop(columns=["_file", "_row"]).to_dict(orient="records")
    for idx in bad:
        rules = reasons[idx]
        quarantined.append(Quarantined(
            file=str(frame.at[idx, "_file"]), row=int(frame.at[idx, "_row"]), stage="validate",
            rule=rules[0][0], detail="; ".join(d for _, d in rules), record=records[idx], kind=kind,
        ))
    return frame.drop(index=bad).reset_index(drop=True), quarantined


def write_quarantine(rows: Iterable[Quarantined], path: Path) -> int:
    """Write quarantined rows as JSONL (file, row, kind, stage, rule, reason, record); return the count."""
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        for q in rows:
            fh.write(json.dumps(q.to_json(), ensure_ascii=False, default=str) + "\n")
            n += 1
    return n
