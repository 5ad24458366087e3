"""Bad input gives one clear line (DataError) or a quarantined row naming file, row and rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_checks.importers import load_dataset_file
from data_checks.validate import validate_frame
from rlhf_core.config.data import DataConfig
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
    with pytest.raises(DataError, match=r"x.parquet: not a Parquet file \(it lacks the PAR1 header\)"):
        load_dataset_file(tmp_path / "x.parquet", "prompts")
    (tmp_path / "y.parquet").write_bytes(b"PAR1" + b"\x00" * 40 + b"PAR1")
    with pytest.raises(DataError, match="y.parquet: unreadable Parquet file"):
        load_dataset_file(tmp_path / "y.parquet", "prompts")


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
    assert quarantined[0].message == f"{path}:2: not_an_object: expected a JSON object, got an array"


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


# ---- what a file really is, said plainly (not "cannot infer the data kind from columns []")


def _error(path: Path, kind: str = "preferences") -> str:
    with pytest.raises(DataError) as exc:
        load_dataset_file(path, kind)  # type: ignore[arg-type]
    return _one_line(exc)


ROWS = [GOOD, {**GOOD, "id": "b", "prompt": "Bye?"}]
TEXT = "".join(json.dumps(r) + "\n" for r in ROWS)


def test_gzip_bytes_in_a_jsonl_file(tmp_path):
    import gzip

    (tmp_path / "p.jsonl").write_bytes(gzip.compress(TEXT.encode()))
    assert _error(tmp_path / "p.jsonl") == f"{tmp_path / 'p.jsonl'}: looks like gzip-compressed data; name it p.jsonl.gz"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16_text(tmp_path, encoding):
    (tmp_path / "p.jsonl").write_bytes(TEXT.encode(encoding))
    assert _error(tmp_path / "p.jsonl").endswith("p.jsonl: is UTF-16 text; save it as UTF-8")
    (tmp_path / "p.csv").write_bytes("prompt\nHi?\n".encode(encoding))
    assert "is UTF-16 text" in _error(tmp_path / "p.csv", "prompts")


@pytest.mark.parametrize("content", [json.dumps(ROWS), json.dumps(ROWS, indent=2), "[]"])
def test_json_array_in_a_jsonl_file(tmp_path, content):
    (tmp_path / "p.jsonl").write_text(content)
    assert _error(tmp_path / "p.jsonl").endswith("p.jsonl: holds a JSON array, not JSON lines (one object per line); "
                                                  "name it p.json")


def test_pretty_printed_object_in_a_jsonl_file(tmp_path):
    (tmp_path / "p.jsonl").write_text(json.dumps(GOOD, indent=2))
    assert "holds one JSON object spread over lines 1-" in _error(tmp_path / "p.jsonl")


def test_json_lines_in_a_json_file(tmp_path):
    (tmp_path / "p.json").write_text(TEXT)
    assert _error(tmp_path / "p.json").endswith("p.json:2: invalid JSON (Extra data); it looks like JSON lines "
                                                "(one object per line): name it p.jsonl")


def test_symlink_loop_and_broken_symlink(tmp_path):
    import os

    os.symlink(tmp_path / "b.jsonl", tmp_path / "a.jsonl")
    os.symlink(tmp_path / "a.jsonl", tmp_path / "b.jsonl")
    assert _error(tmp_path / "a.jsonl") == f"{tmp_path / 'a.jsonl'}: symlink loop (the link leads back to itself)"
    os.symlink(tmp_path / "gone.jsonl", tmp_path / "c.jsonl")
    assert "c.jsonl: broken symlink (it points to" in _error(tmp_path / "c.jsonl")


def test_path_through_a_file(tmp_path):
    (tmp_path / "p.jsonl").write_text(TEXT)
    assert _error(tmp_path / "p.jsonl" / "x.jsonl").endswith("x.jsonl: no such file (a parent in the path is a file, "
                                                             "not a directory)")


def test_binary_and_other_formats_under_a_text_name(tmp_path):
    import bz2

    (tmp_path / "a.jsonl").write_bytes(bytes(range(256)) * 8)
    assert _error(tmp_path / "a.jsonl").endswith("holds binary data (NUL bytes), not text")
    (tmp_path / "b.jsonl").write_bytes(bz2.compress(TEXT.encode()))
    assert "looks like bzip2-compressed data" in _error(tmp_path / "b.jsonl")
    (tmp_path / "c.csv").write_text(TEXT)
    assert _error(tmp_path / "c.csv").endswith("c.csv: holds JSON, not comma-separated values; name it c.jsonl")
    (tmp_path / "d.parquet").write_text(TEXT)
    assert "d.parquet: not a Parquet file: it holds JSON text; name it d.jsonl" in _error(tmp_path / "d.parquet")
    (tmp_path / "e.csv").write_text("prompt;chosen;rejected\nHi;a;b\n")
    assert "looks ';'-separated, but only commas are read" in _error(tmp_path / "e.csv")


# ---- files that are not regular files: refused up front, never opened twice, never waited on


def _in_thread(fn, timeout: float = 10.0):
    import threading

    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "blocked: the read waited on the input"
    return box


def test_fifo_is_refused_without_blocking(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe.jsonl")
    box = _in_thread(lambda: load_dataset_file(tmp_path / "pipe.jsonl", "preferences"))
    err = box["error"]
    assert isinstance(err, DataError)
    assert str(err) == f"{tmp_path / 'pipe.jsonl'}: is a named pipe (FIFO), not a regular file; copy the data into a file first"


def test_devices_are_refused(tmp_path):
    box = _in_thread(lambda: load_dataset_file("/dev/zero", "prompts"))
    assert "/dev/zero: is a character device, not a regular file" in str(box["error"])


def test_a_file_is_opened_once(tmp_path, monkeypatch):
    import os

    import data_checks.importers as importers

    path = tmp_path / "p.jsonl"
    path.write_text(TEXT)
    opened: list[str] = []
    real_open = os.open

    def counting_open(p, *args, **kwargs):
        opened.append(str(p))
        return real_open(p, *args, **kwargs)

    monkeypatch.setattr(importers.os, "open", counting_open)
    raw = importers.read_records(path)
    kind = importers.infer_kind_of(raw, path)
    frame, _ = importers.canonical_frame(raw, path, kind)
    assert kind == "preferences" and len(frame) == 2 and opened == [str(path)]


# ---- gzip


def test_gzip_jsonl_and_json(tmp_path):
    import gzip

    (tmp_path / "p.jsonl.gz").write_bytes(gzip.compress((TEXT + '{"id": "c", "prompt": 3, "chosen": "x", '
                                                         '"rejected": "y"}\n').encode()))
    rows = _quarantine(tmp_path / "p.jsonl.gz")
    assert [q.message for q in rows] == [f"{tmp_path / 'p.jsonl.gz'}:3: prompt:is_string: prompt: expected text, got int"]
    (tmp_path / "p.json.gz").write_bytes(gzip.compress(json.dumps(ROWS).encode()))
    frame, bad = load_dataset_file(tmp_path / "p.json.gz", "preferences")
    assert len(frame) == 2 and not bad


def test_truncated_gzip_names_the_line_reached(tmp_path):
    import gzip

    text = "".join(json.dumps({**GOOD, "id": str(i), "prompt": f"Q{i}? " + "pad " * 30}) + "\n" for i in range(2000))
    data = gzip.compress(text.encode())
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    msg = _error(tmp_path / "cut.jsonl.gz")
    assert msg.startswith(f"{tmp_path / 'cut.jsonl.gz'}: truncated gzip data: the file ends inside line ")
    line = int(msg.split("inside line ")[1].split()[0])
    assert 1 < line < 2000


def test_gz_that_is_not_gzip(tmp_path):
    (tmp_path / "p.jsonl.gz").write_text(TEXT)
    assert _error(tmp_path / "p.jsonl.gz") == (f"{tmp_path / 'p.jsonl.gz'}: not gzip data "
                                               "(if it is plain text, name it p.jsonl)")


def test_real_hh_rlhf_sample():
    """Anthropic's published layout (gzip JSONL of transcripts): read, with its known bad rows quarantined."""
    # ../shared beside the checkout, as CI lays it out (the sample is not in the repository yet)
    sample = Path(__file__).resolve().parents[2] / "shared/data/hh-rlhf/harmless-base-sample.jsonl.gz"
    if not sample.is_file():
        pytest.skip(f"the HH-RLHF sample is not at {sample}")
    frame, quarantined = load_dataset_file(sample, "preferences")
    assert len(frame) + len(quarantined) == 1576
    # 3 pairs diverge before the final reply; 3 have two Assistant turns in a row in their shared prompt
    assert sorted((q.rule, q.row) for q in quarantined) == [
        ("no_shared_prompt", 1142), ("no_shared_prompt", 1319), ("no_shared_prompt", 1385),
        ("turn_order", 464), ("turn_order", 526), ("turn_order", 894)]
    assert not frame["prompt"].str.startswith("Human:").any()  # turns, not transcript text
    multi = frame["prompt_messages"].map(lambda m: m is not None)
    assert 0 < multi.sum() < len(frame) and frame.loc[~multi, "prompt"].str.len().gt(0).all()


# ---- a broken file of one kind is not silently another kind


def test_half_a_preference_pair_is_not_prompts(tmp_path):
    from data_checks.importers import infer_kind_of, read_records

    path = _jsonl(tmp_path / "half.jsonl", [{"prompt": "Hi?", "chosen": "Hello"}])
    with pytest.raises(DataError) as exc:
        infer_kind_of(read_records(path), path)
    assert _one_line(exc) == (f"{path}: looks like preferences but the column 'rejected' is missing "
                              "(found columns [chosen, prompt])")
    assert "no preferences layout recognised: the column 'rejected' is missing" in _error(path)


# ---- row-level type problems are quarantined, never a crash of the whole file


def test_reply_as_number_or_list_content_is_quarantined(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [GOOD, {**GOOD, "id": "b", "chosen": 5},
                                         {**GOOD, "id": "c", "rejected": [{"role": "assistant", "content": ["x"]}]}])
    assert [q.message for q in _quarantine(path)] == [
        f"{path}:3: bad_messages: rejected: message 1 has content of type list, expected text",
        f"{path}:2: chosen:is_string: chosen: expected text, got int",
    ]


@pytest.mark.parametrize("labels", [[True, False], [1, True], [1.0], [], "10"])
def test_annotator_labels_must_be_0_1_integers(tmp_path, labels):
    path = _jsonl(tmp_path / "p.jsonl", [GOOD, {**GOOD, "id": "b", "prompt": "Q?", "annotator_labels": labels}])
    (q,) = _quarantine(path)
    assert q.row == 2 and q.rule == "annotator_labels:labels_in(0,1)"


def test_list_and_object_ids_do_not_crash_uniqueness(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [GOOD, {**GOOD, "id": ["a"]}, {**GOOD, "id": {"a": 1}}, {**GOOD, "id": ["a"]}])
    assert {(q.row, q.rule) for q in _quarantine(path)} == {(2, "id:is_string"), (3, "id:is_string"),
                                                          (4, "id:is_string")}


def test_duplicate_keys_unpaired_surrogates_and_deep_nesting(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(GOOD) + "\n"
                    '{"id": "b", "prompt": "A?", "prompt": "B?", "chosen": "x", "rejected": "y"}\n'
                    '{"id": "c", "prompt": "Hi \\ud800", "chosen": "x", "rejected": "y"}\n'
                    '{"id": "d", "prompt": ' + "[" * 50_000 + "]" * 50_000 + "}\n", encoding="utf-8")
    rows = _quarantine(path)
    assert [(q.row, q.rule) for q in rows] == [(2, "duplicate_key"), (3, "bad_unicode"), (4, "invalid_json")]
    assert "key 'prompt' appears twice" in rows[0].detail and "\\ud800" in rows[1].detail
    assert "nested too deeply" in rows[2].detail


# ---- row numbers are the file's own: JSONL and CSV lines, JSON array elements


def test_row_numbers_are_lines_elements_and_csv_lines(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n\n" + json.dumps({**GOOD, "id": "b", "prompt": ""}) + "\n")
    assert [q.message.split(": ")[0] for q in _quarantine(path)] == [f"{path}:4"]
    arr = tmp_path / "p.json"
    arr.write_text(json.dumps([GOOD, 7, {**GOOD, "id": "b", "chosen": 1}]))
    assert [q.message for q in _quarantine(arr)] == [
        f"{arr}: element 2 of the JSON array: not_an_object: expected a JSON object, got a number",
        f"{arr}: element 3 of the JSON array: chosen:is_string: chosen: expected text, got int"]
    csv = tmp_path / "p.csv"
    csv.write_bytes(b'id,prompt,chosen,rejected\na,"two\nlines",x,y\n\nb,Q?,x,x\nc,Q\xe9?,x,y\nd,Q?,x\n')
    assert [(q.row, q.rule) for q in sorted(_quarantine(csv), key=lambda q: q.row)] == [
        (5, "chosen_differs_from_rejected"), (6, "utf8"), (7, "csv_fields")]


def test_csv_unclosed_quote_names_its_line(tmp_path):
    csv = tmp_path / "q.csv"
    csv.write_text('prompt,chosen,rejected\nA?,x,y\n"never closed,x,y\nB?,x,y\n')
    assert _error(csv).endswith("q.csv:3: unclosed quote: the quoted field that starts on line 3 runs to the end "
                                "of the file")


def test_ultrafeedback_scores_must_be_numbers(tmp_path):
    uf = {"prompt": "Q?", "chosen": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}],
          "rejected": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "B."}]}
    path = _jsonl(tmp_path / "uf.jsonl", [{**uf, "score_chosen": 8, "score_rejected": 3.5},
                                          {**uf, "score_chosen": "high", "score_rejected": 2},
                                          {**uf, "score_chosen": 1, "score_rejected": True}])
    frame, quarantined = load_dataset_file(path, "preferences")
    assert list(frame["margin"]) == [4.5]
    assert [(q.row, q.rule) for q in quarantined] == [(2, "bad_score"), (3, "bad_score")]
    assert quarantined[0].detail == 'score_chosen: expected a finite number, got str "high"'


def test_line_endings_and_nul_bytes(tmp_path):
    path = tmp_path / "mac.jsonl"
    path.write_text(TEXT.replace("\n", "\r"))
    frame, quarantined = load_dataset_file(path, "preferences")
    assert len(frame) == 2 and not quarantined and list(frame["_row"]) == [1, 2]
    csv = tmp_path / "n.csv"
    csv.write_bytes(b"prompt,chosen,rejected\r\nA?,x,y\r\nB\x00?,x,y\r\n")
    frame, quarantined = load_dataset_file(csv, "preferences")
    assert len(frame) == 1 and [(q.row, q.rule) for q in quarantined] == [(3, "nul_byte")]
