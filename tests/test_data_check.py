"""`rlhf data check`: Great Expectations suites pass on good files and fail on bad ones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from data_checks.check import EXIT_FAILED, EXIT_OK, EXIT_UNUSABLE, check_files, print_check_table

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def good_and_bad(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("check")
    bad = tmp / "bad_prefs.jsonl"
    rows = [
        {"id": "a", "prompt": "Tea?", "chosen": "As an AI language model, I cannot.", "rejected": "Boil water."},
        {"id": "a", "prompt": "Coffee?", "chosen": "Grind beans.", "rejected": "Grind beans."},
        {"id": "c", "prompt": "Lock?", "chosen": "I cannot help with burglary.", "rejected": "Pick it.", "harmful": True},
    ]
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    result = check_files([DATA / "prefs_trl_standard.jsonl", DATA / "demos_messages.jsonl", DATA / "prompts.jsonl",
                          bad], docs_dir=tmp / "docs", json_out=tmp / "report.json")
    return tmp, result


def test_good_files_pass_and_bad_file_fails(good_and_bad):
    _, result = good_and_bad
    good = result.files[:3]
    assert [f.kind for f in good] == ["preferences", "demonstrations", "prompts"]  # inferred
    assert all(f.success and f.expectations > 5 for f in good)
    bad = result.files[3]
    failed = {(f["expectation"], f["column"]) for f in bad.failures}
    assert failed == {
        ("rows_parse", None),
        ("expect_column_values_to_be_unique", "id"),
        ("expect_column_values_to_be_in_set", "chosen_equals_rejected"),
        ("expect_column_values_to_not_match_regex_list", "chosen_if_benign"),
    }
    refusal = next(f for f in bad.failures if f["column"] == "chosen_if_benign")
    assert refusal["unexpected_count"] == 1  # the harmful row's refusal is allowed
    assert result.exit_code == EXIT_FAILED


def test_json_report_and_data_docs_written(good_and_bad):
    tmp, result = good_and_bad
    saved = json.loads((tmp / "report.json").read_text())
    assert saved["exit_code"] == EXIT_FAILED and saved["success"] is False
    assert [f["success"] for f in saved["files"]] == [True, True, True, False]
    index = tmp / "docs" / "index.html"
    assert result.docs_index == str(index) and index.is_file()
    assert len(list((tmp / "docs" / "validations").rglob("*.html"))) == 4


def test_table_names_failed_expectations(good_and_bad):
    _, result = good_and_bad
    console = Console(record=True, width=200)
    print_check_table(result, console)
    text = console.export_text()
    assert "column_values_to_be_unique" in text and "bad_prefs.jsonl" in text
    assert "data check: 3/4 files passed (expectations failed)" in text


def test_unusable_input_exit_code_2(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    result = check_files([DATA / "prompts.jsonl", tmp_path / "empty.jsonl", tmp_path / "nope.csv"])
    assert result.exit_code == EXIT_UNUSABLE
    assert [f.error for f in result.files] == [None, f"{tmp_path / 'empty.jsonl'}: empty file (no rows)",
                                               f"{tmp_path / 'nope.csv'}: no such file"]


def test_explicit_kind_and_ephemeral_context(tmp_path):
    result = check_files([DATA / "rankings.jsonl"], kind="rankings")
    assert result.exit_code == EXIT_OK and result.files[0].rows == 4 and result.docs_index is None


def test_importing_check_does_not_import_great_expectations():
    code = "import sys, data_checks.check, data_checks.suites, data_checks.stage; print('great_expectations' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
