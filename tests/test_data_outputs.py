"""The data commands never delete or overwrite what they did not write, and write outputs whole.

`rlhf data check --docs-dir/--json` and `rlhf data prepare --out`: a non-empty directory that
is not an earlier output of the same command, a file where a directory is expected (or the
reverse), an input file as the report path: refused with one line (exit 2), the user's files
untouched. An earlier output of ours is replaced file by file, files beside it kept. A stage
that fails leaves no half-written outputs; a stage with no usable row writes its report and
quarantine only.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_checks.check import check_files
from data_checks.outputs import MARKER, claim_dir, publish_dir, staging_dir
from data_checks.stage import run_data_stage
from rlhf_core.config.data import DataConfig
from rlhf_core.errors import DataError

GOOD = [{"id": f"g{i}", "prompt": f"How long do I boil pasta number {i}?", "chosen": f"About {i + 8} minutes.",
         "rejected": f"Pasta {i} is not food."} for i in range(3)]


def _jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def _cfg(path: Path, slot: str = "preferences") -> DataConfig:
    return DataConfig(**{"demonstrations": [], "preferences": [], "rl_prompts": [], slot: [path]},
                      prompt_filter={"languages": [], "coverage_method": "off", "max_prompts_per_user": None})


def _one_line(exc: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(exc.value)
    return str(exc.value)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---- data check --docs-dir / --json


def test_docs_dir_holding_user_files_is_refused_and_left_alone(tmp_path):
    data = _jsonl(tmp_path / "p.jsonl", GOOD)
    docs = tmp_path / "site"
    (docs / "sub").mkdir(parents=True)
    (docs / "notes.txt").write_text("mine")
    (docs / "sub" / "more.txt").write_text("also mine")
    before = _tree(docs)
    with pytest.raises(DataError) as exc:
        check_files([data], docs_dir=docs)
    assert _one_line(exc) == (f"--docs-dir {docs}: the directory is not empty: it holds notes.txt, sub, not an earlier "
                              "output of `rlhf data check --docs-dir`; nothing there is deleted or replaced: choose a "
                              "new or empty directory")
    assert _tree(docs) == before


def test_docs_dir_of_ours_is_replaced_and_a_file_beside_it_kept(tmp_path):
    data = _jsonl(tmp_path / "p.jsonl", GOOD)
    docs = tmp_path / "docs"
    first = check_files([data], docs_dir=docs)
    assert first.docs_index == str(docs / "index.html")
    marker = json.loads((docs / MARKER).read_text())
    assert marker["written_by"] == "rlhf data check --docs-dir" and "index.html" in marker["files"]
    (docs / "README.user").write_text("my note")
    stale = docs / "validations" / "stale.html"
    stale.write_text("x")  # not in the marker: left alone like any file we did not write
    (docs / "index.html").write_text("old")
    check_files([data], docs_dir=docs)
    assert (docs / "README.user").read_text() == "my note" and stale.read_text() == "x"
    assert "Great Expectations" in (docs / "index.html").read_text()


def test_docs_dir_that_is_a_file(tmp_path):
    data = _jsonl(tmp_path / "p.jsonl", GOOD)
    with pytest.raises(DataError, match="--docs-dir .*p.jsonl: exists and is not a directory"):
        check_files([data], docs_dir=data)
    assert data.read_text().count("\n") == 3


@pytest.mark.parametrize("target", ["input", "user_file", "directory", "parent_is_file"])
def test_json_report_never_replaces_a_user_file(tmp_path, target):
    data = _jsonl(tmp_path / "p.jsonl", GOOD)
    other = tmp_path / "results.json"
    other.write_text('{"mine": true}')
    (tmp_path / "reports").mkdir()
    path, message = {
        "input": (data, "the file exists and is not a report written by `rlhf data check`"),
        "user_file": (other, "the file exists and is not a report written by `rlhf data check`"),
        "directory": (tmp_path / "reports", f"is a directory; --json takes a file path, e.g. {tmp_path}/reports/report.json"),
        "parent_is_file": (other / "r.json", f"cannot create the file ({other} is a file, not a directory)"),
    }[target]
    before = {p: p.read_bytes() for p in (data, other)}
    with pytest.raises(DataError) as exc:
        check_files([data], json_out=path)
    assert _one_line(exc).startswith(f"--json {path}: {message}")
    assert {p: p.read_bytes() for p in (data, other)} == before


def test_json_report_replaces_an_earlier_report(tmp_path):
    data = _jsonl(tmp_path / "p.jsonl", GOOD)
    report = tmp_path / "out" / "check.json"
    check_files([data], json_out=report)
    first = json.loads(report.read_text())
    _jsonl(data, GOOD + [{"id": "x", "prompt": 3, "chosen": "a", "rejected": "b"}])
    check_files([data], json_out=report)
    second = json.loads(report.read_text())
    assert first["exit_code"] == 0 and second["exit_code"] == 1
    assert not [p for p in report.parent.iterdir() if p.name != "check.json"]  # no temporary files left


# ---- data prepare --out


def test_out_dir_holding_user_files_is_refused_before_any_work(tmp_path):
    data = _jsonl(tmp_path / "in" / "p.jsonl", GOOD)
    with pytest.raises(DataError) as exc:
        run_data_stage(_cfg(data), data.parent, option="--out")
    assert _one_line(exc).startswith(f"--out {data.parent}: the directory is not empty: it holds p.jsonl, not an "
                                     "earlier output of `rlhf data prepare`")
    assert [p.name for p in data.parent.iterdir()] == ["p.jsonl"]
    with pytest.raises(DataError, match="p.jsonl: exists and is not a directory"):
        run_data_stage(_cfg(data), data, option="--out")


def test_out_dir_of_ours_is_replaced_and_other_files_kept(tmp_path):
    data = _jsonl(tmp_path / "p.jsonl", GOOD)
    out = tmp_path / "out"
    run_data_stage(_cfg(data), out)
    assert json.loads((out / MARKER).read_text())["written_by"] == "rlhf data prepare"
    (out / "outputs.json").write_text("{}")  # e.g. the pipeline's record, next to the stage's files
    run_data_stage(_cfg(data), out)
    assert (out / "outputs.json").read_text() == "{}"
    assert sorted(p.name for p in out.iterdir()) == sorted([
        MARKER, "outputs.json", "demonstrations.parquet", "preferences.parquet", "rl_prompts.parquet",
        "eval_prompts.parquet", "quarantine.jsonl", "dropped.jsonl", "report.json", "report.md"])


def test_an_output_from_before_the_marker_is_recognised(tmp_path):
    data = _jsonl(tmp_path / "p.jsonl", GOOD)
    out = tmp_path / "out"
    run_data_stage(_cfg(data), out)
    (out / MARKER).unlink()  # as written by an older version
    run_data_stage(_cfg(data), out)
    assert (out / MARKER).is_file()


def test_a_failing_stage_leaves_no_partial_outputs(tmp_path, monkeypatch):
    """The third Parquet write fails: nothing appears in a new --out, an earlier output stays whole."""
    import data_checks.stage as stage

    data = _jsonl(tmp_path / "p.jsonl", GOOD)
    real = stage._write_parquet
    calls = []

    def failing(frame, path, columns):
        calls.append(path.name)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(frame, path, columns)

    monkeypatch.setattr(stage, "_write_parquet", failing)
    with pytest.raises(DataError) as exc:
        run_data_stage(_cfg(data), tmp_path / "new", option="--out")
    assert _one_line(exc) == f"--out {tmp_path / 'new'}: cannot write the outputs (No space left on device)"
    assert not (tmp_path / "new").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["p.jsonl"]  # no staging directory left either
    monkeypatch.setattr(stage, "_write_parquet", real)
    run_data_stage(_cfg(data), tmp_path / "old")
    before = _tree(tmp_path / "old")
    monkeypatch.setattr(stage, "_write_parquet", failing)
    calls.clear()
    with pytest.raises(DataError, match="No space left on device"):
        run_data_stage(_cfg(data), tmp_path / "old")
    assert _tree(tmp_path / "old") == before


def test_bool_labels_never_reach_the_parquet_write(tmp_path):
    """Booleans as annotator labels used to pass validation and crash the Parquet write."""
    data = _jsonl(tmp_path / "p.jsonl", GOOD + [{"id": "b", "prompt": "Q?", "chosen": "a", "rejected": "b",
                                                 "annotator_labels": [1, True]}])
    report = run_data_stage(_cfg(data), tmp_path / "out")
    assert report.rows_kept == 3 and report.files[0].dropped == {"validate:annotator_labels:labels_in(0,1)": 1}
    import pandas as pd

    assert len(pd.read_parquet(tmp_path / "out" / "preferences.parquet")) == 3


# ---- zero usable rows is an error, with the report and quarantine still there to read


def test_no_usable_rows_is_an_error_naming_the_input_and_reasons(tmp_path):
    data = _jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "Q?", "chosen": 1, "rejected": "b"},
                                         {"id": "b", "prompt": "Q?", "chosen": 2, "rejected": "b"}, "{oops"])
    out = tmp_path / "out"
    with pytest.raises(DataError) as exc:
        run_data_stage(_cfg(data), out, option="--out")
    assert _one_line(exc) == (f"{data}: no usable rows for preferences: all 3 rows quarantined (2 chosen:is_string, "
                              f"1 invalid_json); see {out / 'quarantine.jsonl'}")
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "quarantine.jsonl", "dropped.jsonl", "report.json",
                                                            "report.md"])
    report = json.loads((out / "report.json").read_text())
    assert report["errors"] == [str(exc.value)] and report["balanced"] is True
    assert "The data stage stopped" in (out / "report.md").read_text()
    assert len((out / "quarantine.jsonl").read_text().splitlines()) == 3


def test_a_failed_rerun_removes_the_stale_curated_files(tmp_path):
    data = _jsonl(tmp_path / "p.jsonl", GOOD)
    out = tmp_path / "out"
    run_data_stage(_cfg(data), out)
    _jsonl(data, ["{broken", "[1]"])
    with pytest.raises(DataError, match="no usable rows"):
        run_data_stage(_cfg(data), out)
    assert not list(out.glob("*.parquet"))  # last run's curated files must not pass for this run's


def test_an_input_emptied_by_curation_is_an_error(tmp_path):
    same = [{"id": f"d{i}", "prompt": "How do I boil an egg?", "chosen": "Eight minutes.", "rejected": "No."}
            for i in range(3)]
    rl = _jsonl(tmp_path / "rl.jsonl", [{"prompt": "Click here to win a free phone!!!!!!!!!!!!"}])
    cfg = DataConfig(demonstrations=[], preferences=[_jsonl(tmp_path / "p.jsonl", same)], rl_prompts=[rl],
                     prompt_filter={"languages": [], "coverage_method": "off", "max_prompts_per_user": None})
    with pytest.raises(DataError) as exc:
        run_data_stage(cfg, tmp_path / "out")
    assert _one_line(exc) == (f"rl_prompts: no rows left after curation: all 1 valid rows dropped (1 spam); "
                              f"see {tmp_path / 'out' / 'dropped.jsonl'}")


def test_empty_list_in_jsonl_says_json_array(tmp_path):
    data = tmp_path / "p.jsonl"
    data.write_text("[]\n")
    with pytest.raises(DataError, match=r"p.jsonl: holds a JSON array, not JSON lines .*name it p.json"):
        run_data_stage(_cfg(data), tmp_path / "out")
    assert not (tmp_path / "out").exists()  # an unusable input stops the stage before it writes


# ---- the helpers themselves


def test_a_tampered_marker_cannot_delete_outside_its_directory(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    out = tmp_path / "out"
    out.mkdir()
    (out / MARKER).write_text(json.dumps({"written_by": "w", "files": ["../victim.txt", "/etc/hostname", "ok.txt"]}))
    assert claim_dir(out, "w", "--out") == ["ok.txt"]
    staging = staging_dir(out, "--out")
    (staging / "new.txt").write_text("new")
    publish_dir(staging, out, "w", "--out")
    assert victim.read_text() == "keep" and (out / "new.txt").read_text() == "new"
    assert not staging.exists()


def test_a_new_output_directory_appears_in_one_rename(tmp_path, monkeypatch):
    import os

    import data_checks.outputs as outputs

    renames = []
    real = os.rename
    monkeypatch.setattr(outputs.os, "rename", lambda a, b: (renames.append((Path(a), Path(b))), real(a, b)))
    staging = staging_dir(tmp_path / "new", "--out")
    (staging / "a.txt").write_text("a")
    publish_dir(staging, tmp_path / "new", "w", "--out")
    assert renames == [(staging, tmp_path / "new")]
    assert json.loads((tmp_path / "new" / MARKER).read_text())["files"] == ["a.txt"]
    (tmp_path / "plain").mkdir()  # the modes a plain mkdir / open would give, not mkdtemp's 0700
    assert (tmp_path / "new").stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777


def test_json_report_has_the_mode_of_a_plain_file(tmp_path):
    from data_checks.outputs import write_file

    write_file(tmp_path / "r.json", "{}", "--json", lambda p: True, "a report")
    (tmp_path / "plain.json").write_text("{}")
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == (tmp_path / "plain.json").stat().st_mode & 0o777
