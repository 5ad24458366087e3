"""`rlhf data check`: Great Expectations suites pass on good files and fail on bad ones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from data_checks.check import EXIT_FAILED, EXIT_OK, EXIT_UNUSABLE, check_files, print_check_report

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
        ("expect_column_values_to_be_null", "id__repeat"),  # the repeat only: the first "a" is the one kept
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


def test_report_names_failed_expectations(good_and_bad):
    _, result = good_and_bad
    console = Console(record=True, width=200)
    print_check_report(result, console)
    text = console.export_text()
    assert "expect_column_values_to_be_null" in text and "id__repeat" in text and "bad_prefs.jsonl" in text
    assert "data check: 3/4 files passed (expectations failed)" in text
    assert "Data Docs: " in text


REFUSAL = "As an AI language model, I cannot help with that, because " + "it is against my guidelines, " * 5 + "sorry."


@pytest.fixture(scope="module")
def ci_file(tmp_path_factory):
    """Preferences with a broken line first (so file rows and frame positions differ) and four defects."""
    path = tmp_path_factory.mktemp("ci") / "prefs_with_defects.jsonl"
    rows = [
        {"id": "dup-id", "prompt": "Tea?", "chosen": REFUSAL, "rejected": "Boil water."},
        {"id": "dup-id", "prompt": "Coffee?", "chosen": "Grind beans.", "rejected": "Grind beans."},
        {"id": "ok-1", "prompt": "Bread?", "chosen": "Knead the dough.", "rejected": "Buy it.", "split": "test"},
    ]
    path.write_text("{not json\n" + "".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_cli(args: list[str], columns: int):
    from typer.testing import CliRunner

    from flows.cli import app

    out = CliRunner().invoke(app, ["data", "check", *args], env={"COLUMNS": str(columns)})
    return out.exit_code, out.stdout.splitlines()


def test_report_readable_at_80_columns(ci_file, tmp_path):
    """A CI log is 80 columns: each failure is a few whole lines, not a table folded into slivers."""
    code, lines = run_cli([str(ci_file), "--json", str(tmp_path / "r.json")], columns=80)
    assert code == EXIT_FAILED
    assert max(len(line) for line in lines) <= 80
    failures = json.loads((tmp_path / "r.json").read_text())["files"][0]["failures"]
    assert len(failures) == 5  # rows_parse, unique id, refusal, chosen == rejected, split
    # header + per failure (name, rule, bad rows, <= 3 examples) + blank + summary
    assert len(lines) <= 2 + 6 * len(failures) + 2
    assert sum(not line.strip() for line in lines) <= 1
    stripped = [line.strip() for line in lines]
    assert "column id__repeat: expect_column_values_to_be_null" in stripped
    assert "every id must be unique (a repeat of an earlier id; the first is kept)" in stripped
    assert "dup-id" in stripped  # an example, whole, on its own line
    assert "1 of 3 rows (33.3%): row 3" in stripped  # file rows: line 1 is the broken one
    assert "column chosen_equals_rejected: expect_column_values_to_be_in_set" in stripped
    assert "chosen and rejected must differ" in stripped and "Grind beans." in stripped
    assert "split must be one of: train, eval" in stripped and "test" in stripped
    assert any(s.startswith("row 1: invalid_json: invalid JSON") for s in stripped)
    refusal = [line for line in lines if "As an AI language model, I cannot help" in line]
    assert len(refusal) == 1 and refusal[0].endswith("…") and len(refusal[0]) == 80
    assert lines[-1] == "data check: 0/1 files passed (expectations failed)"


def test_report_uses_wide_terminals_and_json_is_unchanged(ci_file, tmp_path):
    code, lines = run_cli([str(ci_file), "--json", str(tmp_path / "r.json")], columns=160)
    assert code == EXIT_FAILED and max(len(line) for line in lines) <= 160
    refusal = next(line for line in lines if "As an AI language model" in line)
    assert len(refusal) == 160 and refusal.endswith("…")  # more of the example, still one line
    report = json.loads((tmp_path / "r.json").read_text())
    unique = next(f for f in report["files"][0]["failures"] if f["column"] == "id__repeat")
    assert unique == {"expectation": "expect_column_values_to_be_null", "column": "id__repeat", "unexpected_count": 1,
                      "element_count": 3, "examples": ["dup-id"], "rows": [3], "error": None}
    refusal_json = next(f for f in report["files"][0]["failures"] if f["column"] == "chosen_if_benign")
    assert refusal_json["examples"] == [REFUSAL[:60]]


def test_unusable_input_fits_80_columns(tmp_path):
    deep = tmp_path / ("a-rather-long-directory-name-" * 3) / "data.jsonl"
    deep.parent.mkdir(parents=True)
    deep.write_text('{"colour": "blue"}\n')
    code, lines = run_cli([str(deep), str(tmp_path / "missing.jsonl")], columns=80)
    assert code == EXIT_UNUSABLE
    assert max(len(line) for line in lines) <= 80
    reason = next(i for i, line in enumerate(lines) if "cannot infer the data kind" in line)
    assert "".join(lines[:reason]) == f"UNUSABLE {deep}"  # a long path folds at the width, nothing else
    assert lines[reason].startswith("    cannot infer the data kind from columns [colour]")
    assert f"UNUSABLE {tmp_path / 'missing.jsonl'}" in "".join(lines) and "    no such file" in lines
    assert lines[-1] == "data check: 0/2 files passed (unusable input)"


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
