"""Bad input gives one clear line (DataError) or a quarantined row naming file, row and rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_checks.config import DataConfig
from data_checks.importers import load_dataset_file
from data_checks.validate import validate_frame
from rlhf_core.errors import DataError, UserError


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _quarantine(path: Path, kind: str = "preferences") -> list:
    """All rows quarantined by import + validation, as 'file:row: rule: detail' messages."""
    frame, quarantined = load_dataset_file(path, kind)
    _, bad = validate_frame(frame, "preferences" if kind == "rankings" else kind, max_text_chars=20_000)
    return quarantined + bad


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and isinstance(exc.value, UserError)
    return msg


GOOD = {"id": "a", "prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."}


# ---- file-level: one-line DataError


def test_nonexistent_path(tmp_path):
    with pytest.raises(DataError) as exc:
        load_dataset_file(tmp_path / "missing.jsonl", "preferences")
    assert _one_line(exc) == f"{tmp_path / 'missing.jsonl'}: no such file"


def test_empty_file(tmp_path):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    with pytest.raises(DataError) as exc:
        load_dataset_file(tmp_path / "empty.jsonl", "preferences")
    assert "empty.jsonl: empty file" in _one_line(exc)


def test_whitespace_only_file_is_empty(tmp_path):
    (tmp_path / "blank.jsonl").write_text("\n \n\n")
    with pytest.raises(DataError, match="blank.jsonl: empty file"):
        load_dataset_file(tmp_path / "blank.jsonl", "prompts")


def test_directory_instead_of_file(tmp_path):
    (tmp_path / "somedir").mkdir()
    with pytest.raises(DataError) as exc:
        load_dataset_file(tmp_path / "somedir", "preferences")
    assert "somedir: is a directory, expected a data file" in _one_line(exc)


def test_missing_required_columns_names_the_layouts(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [{"question": "Hi?", "answer": "Hello"}])
    with pytest.raises(DataError) as exc:
        load_dataset_file(path, "preferences")
    msg = _one_line(exc)
    assert "p.jsonl: no preferences layout recognised" in msg and "found columns [answer, question]" in msg


def test_demonstration_file_given_as_preferences(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [{"prompt": "Hi?", "completion": "Hello"}])
    with pytest.raises(DataError, match="d.jsonl: no preferences layout recognised"):
        load_dataset_file(path, "preferences")


def test_unsupported_extension(tmp_path):
    (tmp_path / "data.xlsx").write_bytes(b"PK\x03\x04")
    with pytest.raises(DataError, match=r"data.xlsx: unsupported file type '\.xlsx'"):
        load_dataset_file(tmp_path / "data.xlsx", "prompts")


def test_invalid_json_document(tmp_path):
    (tmp_path / "bad.json").write_text('[{"prompt": "a"},\n {"prompt": }]')
    with pytest.raises(DataError) as exc:
        load_dataset_file(tmp_path / "bad.json", "prompts")
    assert "bad.json:2: invalid JSON" in _one_line(exc)


def test_json_scalar_instead_of_rows(tmp_path):
    (tmp_path / "s.json").write_text('"just a string"')
    with pytest.raises(DataError, match="s.json: expected a JSON list of row objects, got str"):
        load_dataset_file(tmp_path / "s.json", "prompts")


def test_corrupt_parquet(tmp_path):
    (tmp_path / "x.parquet").write_bytes(b"this is not parquet at all")
    with pytest.raises(DataError, match="x.parquet: unreadable Parquet file"):
        load_dataset_file(tmp_path / "x.parquet", "prompts")


def test_unknown_kind(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [GOOD])
    with pytest.raises(DataError, match="unknown data kind 'prefs'"):
        load_dataset_file(path, "prefs")  # type: ignore[arg-type]


def test_stage_config_with_typo_fails_loudly():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="shingle_sise"):
        DataConfig(dedup={"shingle_sise": 5})
    with pytest.raises(ValidationError, match="invalid regex"):
        DataConfig(refusal={"patterns": ["(unclosed"]})


# ---- row-level: quarantined with file:row and rule


def test_invalid_json_line_is_quarantined_with_its_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + '{"id": "b", "prompt": \n')
    frame, quarantined = load_dataset_file(path, "preferences")
    assert len(frame) == 1
    (q,) = quarantined
    assert q.message.startswith(f"{path}:2: invalid_json: invalid JSON")


def test_non_utf8_bytes_are_quarantined(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b'\n{"id": "b", "prompt": "caf\xe9"}\n')
    frame, quarantined = load_dataset_file(path, "preferences")
    assert len(frame) == 1
    assert quarantined[0].message == f"{path}:2: utf8: not UTF-8 text (byte 0xe9 at column 27)"


def test_non_utf8_bytes_in_csv_are_quarantined(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b"prompt,response\nHi?,Hello\nOl\xe1?,Hola\n")
    frame, quarantined = load_dataset_file(path, "demonstrations")
    assert len(frame) == 1 and quarantined[0].rule == "utf8" and quarantined[0].row == 3


def test_non_object_line_is_quarantined(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(GOOD) + "\n[1, 2, 3]\n")
    _, quarantined = load_dataset_file(path, "preferences")
    assert quarantined[0].message == f"{path}:2: not_an_object: expected a JSON object, got list"


def test_row_missing_a_column_value(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [GOOD, {"id": "b", "prompt": "Hi?", "chosen": "Hello!"}])
    (q,) = _quarantine(path)
    assert q.message == f"{path}:2: rejected:not_nullable: rejected: missing or null"


def test_wrong_type_prompt(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [GOOD, {**GOOD, "id": "b", "prompt": 42}])
    (q,) = _quarantine(path)
    assert q.message == f"{path}:2: prompt:is_string: prompt: expected text, got int"


def test_wrong_type_harmful_flag(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [GOOD, {**GOOD, "id": "b", "harmful": "yes"}])
    (q,) = _quarantine(path)
    assert q.rule == "harmful:is_bool" and q.row == 2


def test_empty_string_prompt(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [GOOD, {**GOOD, "id": "b", "prompt": "  "}])
    (q,) = _quarantine(path)
    assert q.message == f"{path}:2: prompt:not_blank: prompt: empty or whitespace-only text"


def test_chosen_equal_to_rejected(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [GOOD, {**GOOD, "id": "b", "chosen": "Same.", "rejected": " Same. "}])
    (q,) = _quarantine(path)
    assert q.message == f"{path}:2: chosen_differs_from_rejected: chosen is identical to rejected (no preference signal)"


def test_ten_megabyte_string(tmp_path):
    huge = "x " * 5_000_000  # 10 MB
    path = _jsonl(tmp_path / "p.jsonl", [GOOD, {**GOOD, "id": "b", "chosen": huge}])
    (q,) = _quarantine(path)
    assert q.rule == "chosen:max_chars(20000)"
    assert "text of 10000000 characters exceeds 20000 (data.max_text_chars)" in q.message
    # The quarantine record keeps the head of the string, not 10 MB.
    assert len(json.dumps(q.to_json())) < 10_000


def test_duplicate_ids_keep_the_first(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [GOOD, {**GOOD, "prompt": "Another?"}])
    (q,) = _quarantine(path)
    assert q.row == 2 and q.rule == "id:field_uniqueness" and "duplicate value 'a'" in q.message


def test_bad_split_value(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [{**GOOD, "split": "test"}])
    (q,) = _quarantine(path)
    assert q.rule == "split:split_in(train,eval)"


def test_bad_annotator_labels(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [{**GOOD, "annotator_labels": [1, 2]}])
    (q,) = _quarantine(path)
    assert q.rule == "annotator_labels:labels_in(0,1)"


def test_hh_transcripts_without_shared_prompt(tmp_path):
    path = _jsonl(tmp_path / "hh.jsonl", [
        {"chosen": "\n\nHuman: A?\n\nAssistant: yes", "rejected": "\n\nHuman: B?\n\nAssistant: no"},
        {"chosen": "no assistant turn here", "rejected": "nor here"},
    ])
    frame, quarantined = load_dataset_file(path, "preferences")
    assert frame.empty
    assert [q.rule for q in quarantined] == ["no_shared_prompt", "not_a_transcript"]
    assert quarantined[0].message.startswith(f"{path}:1: no_shared_prompt")


def test_ranking_with_a_single_response(tmp_path):
    path = _jsonl(tmp_path / "r.jsonl", [{"prompt": "Hi?", "responses": ["only one"]}])
    _, quarantined = load_dataset_file(path, "rankings")
    assert quarantined[0].message == f"{path}:1: bad_responses: responses: expected a list of 2 or more replies, best first"


def test_messages_not_ending_with_assistant(tmp_path):
    path = _jsonl(tmp_path / "m.jsonl", [{"messages": [{"role": "user", "content": "Hi?"}]}])
    _, quarantined = load_dataset_file(path, "demonstrations")
    assert quarantined[0].rule == "bad_messages" and "last message must be the assistant's reply" in quarantined[0].detail


def test_every_row_bad_gives_an_empty_frame_not_a_crash(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b"{oops\n\xff\xfe\n")
    frame, quarantined = load_dataset_file(path, "prompts")
    assert frame.empty and [q.rule for q in quarantined] == ["invalid_json", "utf8"]
