"""`rlhf data check PATH...`: run the Great Expectations suites on data files.

Exit codes (:attr:`CheckResult.exit_code`): 0 every expectation passed; 1 some expectation
failed (or rows could not be parsed); 2 an input is unusable (missing, empty, a directory,
no recognisable layout, not one readable row). The machine-readable report (``--json FILE``)
is :meth:`CheckResult.to_json`; Data Docs (HTML) go to ``--docs-dir``. Neither ever replaces
anything `rlhf data check` did not write (:mod:`data_checks.outputs`): an existing ``--json``
file must be an earlier report, a non-empty ``--docs-dir`` earlier Data Docs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any

from data_checks.importers import canonical_frame, count_rules, infer_kind_of, read_records, row_unit
from data_checks.outputs import claim_dir, claim_file, publish_dir, staging_dir, write_file
from data_checks.suites import INVALID_WORDS
from rlhf_core.config.data import DataConfig, Kind
from rlhf_core.errors import DataError

DOCS_WRITER = "rlhf data check --docs-dir"

EXIT_OK, EXIT_FAILED, EXIT_UNUSABLE = 0, 1, 2
_EXAMPLES = 3
_SHOWN_CHARS = 400  # an example's length before the printer cuts it to the terminal width


@dataclass
class Detail:
    """What the printed report says about one failure beyond its JSON entry."""

    rule: str  # the expectation in plain words, e.g. "prompt must not be blank"
    examples: list[str] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)  # every failing row (the JSON lists the first 20)


@dataclass
class FileCheck:
    path: str
    kind: str | None = None
    rows: int = 0
    error: str | None = None  # unusable input, one line
    expectations: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    # For the printed report only, one per failure (same order): the rule in plain words and
    # longer examples than the JSON's 60 characters. Not part of ``to_json`` (other tools read it).
    details: list[Detail] = field(default_factory=list, repr=False)

    def add_failure(self, failure: dict[str, Any], detail: Detail) -> None:
        self.failures.append(failure)
        self.details.append(detail)

    @property
    def success(self) -> bool:
        return self.error is None and not self.failures


@dataclass
class CheckResult:
    files: list[FileCheck] = field(default_factory=list)
    docs_index: str | None = None

    @property
    def exit_code(self) -> int:
        if any(f.error for f in self.files):
            return EXIT_UNUSABLE
        return EXIT_OK if all(f.success for f in self.files) else EXIT_FAILED

    @property
    def success(self) -> bool:
        return self.exit_code == EXIT_OK

    def to_json(self) -> dict[str, Any]:
        return {
            "success": self.success,
            "exit_code": self.exit_code,
            "docs_index": self.docs_index,
            "files": [{"path": f.path, "kind": f.kind, "rows": f.rows, "success": f.success, "error": f.error,
                       "expectations": f.expectations, "failures": f.failures} for f in self.files],
        }


_DOCS_ENTRIES = {"index.html", "static", "validations", "expectations"}


def legacy_docs(path: Path) -> list[str] | None:
    """Data Docs written before the marker existed: GX's tree and nothing else (else None)."""
    try:
        entries = set(os.listdir(path))
        if not entries <= _DOCS_ENTRIES or "index.html" not in entries:
            return None
        if "Great Expectations" not in (path / "index.html").read_text(encoding="utf-8", errors="replace"):
            return None
    except OSError:
        return None
    return sorted(str(p.relative_to(path).as_posix()) for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def is_check_report(path: Path) -> bool:
    """Whether ``path`` holds a report of ours (``--json`` may replace only such a file)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"success", "exit_code", "files"} <= set(data)


def _context(project_dir: Path | None) -> Any:
    from data_checks.suites import import_gx

    gx = import_gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="file", project_root_dir=str(project_dir)) if project_dir else gx.get_context(
        mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)  # quiet CI logs
    if project_dir:
        ctx.variables.save()
    return ctx


def _rule(expectation: str, column: str | None, kwargs: dict[str, Any]) -> str:
    """An expectation of :func:`data_checks.suites.build_suite` in plain words."""
    col = column or "?"
    name = col.removesuffix("__type").removesuffix("_if_benign").removesuffix("__invalid")
    values = kwargs.get("value_set") or []
    if expectation == "expect_column_values_to_be_null" and col == "id__repeat":
        return "every id must be unique (a repeat of an earlier id; the first is kept)"
    if expectation == "expect_column_values_to_be_null" and col.endswith("__invalid"):
        return INVALID_WORDS.get(name, f"{name} must be valid")
    if expectation == "expect_column_to_exist":
        return f"the column {col} must exist"
    if expectation == "expect_column_values_to_not_be_null":
        return f"{col} must not be null or missing"
    if expectation == "expect_column_values_to_be_unique":
        return f"every {col} must be unique"
    if expectation == "expect_column_value_lengths_to_be_between":
        lo, hi = kwargs.get("min_value"), kwargs.get("max_value")
        return f"{col} must be {lo or 0:,} to {hi:,} characters long" if hi is not None else f"{col} must be at least {lo or 0:,} characters long"
    if expectation == "expect_column_values_to_not_match_regex":
        regex = str(kwargs.get("regex", ""))
        return f"{col} must not be blank" if regex == r"^\s*$" else f"{col} must not match /{regex}/"
    if expectation == "expect_column_values_to_not_match_regex_list":
        if col.endswith("_if_benign"):
            return (f"{name} must not be refusal boilerplate unless the row is marked harmful (its harmful "
                    "column, or --harmful for the whole file)")
        return f"{col} must not match any of {len(kwargs.get('regex_list') or [])} patterns"
    if expectation == "expect_column_values_to_be_in_set":
        if col.endswith("__type") and list(values) == ["str"]:
            optional = name in ("topic", "user_id", "source")
            return f"{name} must be text{' or null' * optional} (the examples are the types found)"
        if col.endswith("__type") and list(values) == ["bool"]:
            return f"{name} must be true, false or null (the examples are the types found)"
        if col == "chosen_equals_rejected":
            return "chosen and rejected must differ"
        shown = ", ".join(json.dumps(v) if isinstance(v, (bool, type(None))) else str(v) for v in values)
        return f"{col} must be one of: {shown}"
    return expectation.removeprefix("expect_").replace("_", " ") + (f" ({col})" if column else "")


def _failures(validation: Any, frame: Any) -> list[tuple[dict[str, Any], Detail]]:
    """The failed expectations of one GX validation of ``frame``: (JSON entry, printed detail) pairs.

    ``frame``: the canonical frame GX saw (positional index); its ``_row`` turns GX's positions
    into the file's own row numbers, which differ after a quarantined row or for rankings.
    """
    out = []
    file_rows = frame["_row"].tolist() if "_row" in frame else list(range(1, len(frame) + 1))
    for er in validation.results:
        if er.success:
            continue
        cfg = er.expectation_config
        column = cfg.kwargs.get("column")
        result = er.result or {}
        exc = (er.exception_info or {}).get("exception_message") if er.exception_info else None
        values = ["null" if v is None else str(v) for v in (result.get("partial_unexpected_list") or [])[:_EXAMPLES]]
        positions = [int(i) for i in (result.get("unexpected_index_list") or []) if isinstance(i, int)]
        failure = {"expectation": cfg.type, "column": column,
                   "unexpected_count": result.get("unexpected_count"), "element_count": result.get("element_count"),
                   "examples": [v[:60] for v in values], "rows": [int(file_rows[i]) for i in positions[:20]], "error": exc}
        shown = values
        if column == "chosen_equals_rejected":  # the derived column's value says nothing; show the reply
            shown = [str(frame["chosen"].iloc[i]) for i in positions[:_EXAMPLES]]
        out.append((failure, Detail(_rule(cfg.type, column, dict(cfg.kwargs)), [v[:_SHOWN_CHARS] for v in shown],
                                    [int(file_rows[i]) for i in positions])))
    return out


def check_files(
    paths: list[Path | str],
    kind: Kind | None = None,
    docs_dir: Path | None = None,
    json_out: Path | None = None,
    *,
    cfg: DataConfig | None = None,
    harmful: bool | None = None,
) -> CheckResult:
    """Validate each file against its kind's GX suite (kind inferred from its columns when None).

    ``harmful`` declares every prompt of the files harmful (True) or benign (False) where a row has
    no ``harmful`` value of its own, as ``{path, harmful}`` does for `rlhf data prepare`.

    Rows that cannot be parsed (invalid JSON, bad bytes) count as a failed expectation
    (``rows_parse``); unusable files are reported with ``error`` and exit code 2.
    """
    from data_checks.suites import build_suite, gx_frame, import_gx

    cfg = cfg or DataConfig()
    # Refuse unsafe output paths before any work (and again when writing: see data_checks.outputs).
    if json_out:
        claim_file(Path(json_out), "--json", is_check_report, "a report written by `rlhf data check`")
    if docs_dir:
        claim_dir(Path(docs_dir), DOCS_WRITER, "--docs-dir", legacy_docs)
    result = CheckResult()
    gx = import_gx()
    project = Path(tempfile.mkdtemp(prefix="rlhf-gx-")) if docs_dir else None
    try:
        ctx = _context(project)
        source = ctx.data_sources.add_pandas("rlhf-data")
        suites: dict[str, Any] = {}
        for i, path in enumerate(paths):
            check = FileCheck(path=str(path))
            result.files.append(check)
            try:
                raw = read_records(path, split=cfg.dataset_split)  # the file is read once
                if not raw.records:  # not one row could be read: nothing to infer a kind from
                    check.rows = len(raw.quarantined)
                    _unreadable(check, raw.quarantined, kind or "data")
                    continue
                file_kind = kind or infer_kind_of(raw, path)
                frame, quarantined = canonical_frame(raw, path, file_kind, harmful=harmful)
            except DataError as err:
                check.error = str(err)
                continue
            canon = "preferences" if file_kind in ("preferences", "rankings") else file_kind
            check.kind, check.rows = canon, len(frame) + len(quarantined)
            if frame.empty:  # every row failed to import (or to fit the layout)
                _unreadable(check, quarantined, file_kind)
                continue
            if quarantined:
                _rows_parse(check, quarantined, file_kind)
            if canon not in suites:
                suites[canon] = ctx.suites.add(build_suite(canon, max_text_chars=cfg.max_text_chars,
                                                           refusal_patterns=cfg.refusal.patterns))
            asset = source.add_dataframe_asset(f"{i:03d}-{Path(str(path)).name}")
            batch = asset.add_batch_definition_whole_dataframe("whole")
            vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=f"check-{i:03d}", data=batch,
                                                                         suite=suites[canon]))
            actions = [gx.checkpoint.UpdateDataDocsAction(name="docs")] if project else []
            checkpoint = ctx.checkpoints.add(gx.Checkpoint(name=f"checkpoint-{i:03d}", validation_definitions=[vd],
                                                           actions=actions, result_format="COMPLETE"))
            frame = frame.reset_index(drop=True)
            run = checkpoint.run(batch_parameters={"dataframe": gx_frame(frame, canon)})
            for validation in run.run_results.values():
                check.expectations += len(validation.results)
                for failure, detail in _failures(validation, frame):
                    check.add_failure(failure, detail)
        if project and docs_dir:
            site = project / "gx" / "uncommitted" / "data_docs" / "local_site"
            if site.is_dir():
                docs_dir = Path(docs_dir)
                staging = staging_dir(docs_dir, "--docs-dir")
                shutil.copytree(site, staging, dirs_exist_ok=True)
                publish_dir(staging, docs_dir, DOCS_WRITER, "--docs-dir", legacy_docs)
                result.docs_index = str(docs_dir / "index.html")
    finally:
        if project:
            shutil.rmtree(project, ignore_errors=True)
    if json_out:
        write_file(Path(json_out), json.dumps(result.to_json(), indent=2), "--json", is_check_report,
                   "a report written by `rlhf data check`")
    return result


def _rows_parse(check: FileCheck, quarantined: list[Any], kind: str) -> None:
    """The rows that could not be read (or did not fit the layout), as one failed expectation;
    its examples show as many different rules as they can (the first row of each, in row order)."""
    firsts = list({q.rule: q for q in reversed(quarantined)}.values())[::-1]  # first row of each rule
    shown = sorted(firsts[:_EXAMPLES] + [q for q in quarantined if q not in firsts][:_EXAMPLES - len(firsts)],
                   key=lambda q: q.row)
    check.add_failure({
        "expectation": "rows_parse", "column": None, "unexpected_count": len(quarantined),
        "element_count": check.rows, "examples": [q.message[:160] for q in shown],
        "rows": [q.row for q in quarantined[:20]], "error": None},
        Detail(f"every row must read as a {kind} record",
               [f"{_unit(check.path)} {q.row}: {q.rule}: {q.detail}"[:_SHOWN_CHARS] for q in shown],
               [q.row for q in quarantined]))


def _unreadable(check: FileCheck, quarantined: list[Any], kind: str) -> None:
    """Not one usable row: the file is unusable (exit 2), its rows still listed as ``rows_parse``."""
    _rows_parse(check, quarantined, kind)
    check.error = (f"{check.path}: no usable rows: none of its {len(quarantined)} rows could be read "
                   f"({count_rules(quarantined)}; first: {_unit(check.path)} {quarantined[0].row}: "
                   f"{quarantined[0].rule}: {quarantined[0].detail})")


def _unit(path: str) -> str:
    """How a row of ``path`` is named in the printed report: "element" (of a JSON array), else "row"
    (for JSONL and CSV the number is the file's line, the header being line 1)."""
    return "element" if row_unit(path) == "element" else "row"


def _shown(value: str) -> str:
    """An example on one line: control characters escaped; quoted when empty or edged with spaces."""
    if not value or value != value.strip():
        return repr(value)
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in value)


def _percent(count: int, total: int | None) -> str:
    if not total:
        return ""
    share = 100 * count / total
    if 0 < share < 0.01:
        return " (<0.01%)"
    return f" ({share:.2g}%)" if share < 1 else f" ({share:.1f}%)"


def _fit(head: str, items: list[str], width: int, more: bool) -> str:
    """``head`` then as many of ``items`` as fit in ``width`` characters, then "…" if any were left out."""
    text = head
    for i, item in enumerate(items):
        sep = "" if i == 0 else ", "
        rest = i + 1 < len(items) or more
        if len(text) + len(sep) + len(item) + (3 if rest else 0) > width:
            return text + ", …" if i else text + "…"
        text += sep + item
    return text + (", …" if more and items else "")


def print_check_report(result: CheckResult, console: Any = None) -> None:
    """What a person reads (a terminal or an 80-column CI log): a block per failure, then one summary line.

    A file that passed is one line. For each failed expectation: its column and GX name (what
    to search for in the suite, the JSON report and Data Docs), the rule in plain words, how
    many rows break it and which, then up to three examples, one per line, cut with an ellipsis
    at the console width. Nothing is wider than the console: long paths and messages wrap.
    """
    from rich.cells import chop_cells
    from rich.console import Console
    from rich.text import Text

    console = console or Console()

    def say(text: str | Text = "", indent: int = 0, cut: bool = False) -> None:
        """Print ``text`` indented, wrapped (or, with ``cut``, cut with an ellipsis) to the console width."""
        text = Text(text) if isinstance(text, str) else text  # never markup: data can contain "[...]"
        lines = text.wrap(console, max(8, console.width - indent), no_wrap=cut, overflow="ellipsis" if cut else "fold")
        for line in lines or [Text()]:
            line.rstrip()
            console.print(Text(" " * indent) + line if indent else line, soft_wrap=True)

    def header(label: str, path: str, facts: str = "") -> None:
        """``LABEL path  facts`` on one line if it fits; else the path folded at the width, facts below."""
        head = Text.assemble((label, "bold red" if label != "ok" else "green"), " ", (path, "bold"))
        if head.cell_len + 2 + len(facts) <= console.width:
            say(head + Text(f"  {facts}") if facts else head)
            return
        # a path has no good place to break, and "LABEL" alone on a line reads oddly: fold at the width
        ends = list(accumulate(len(chunk) for chunk in chop_cells(head.plain, console.width)))
        for part in head.divide(ends[:-1]):
            console.print(part, soft_wrap=True)
        if facts:
            say(facts, indent=4)

    spaced = False  # blocks (failed or unusable files) stand apart; the one-line "ok" files do not
    for i, f in enumerate(result.files):
        block = not f.success
        if i and (block or spaced):
            say()
        spaced = block
        if f.success:
            header("ok", f.path, f"{f.kind}, {f.rows:,} rows, {f.expectations} expectations met")
            continue
        if f.error:
            header("UNUSABLE", f.path)
            say(f.error.removeprefix(f"{f.path}: "), indent=4)
            continue
        n = len(f.failures)
        header("FAILED", f.path, f"{f.kind}, {f.rows:,} rows, {n} check{'s' * (n > 1)} failed")
        details = f.details if len(f.details) == len(f.failures) else [Detail("")] * len(f.failures)
        for fail, detail in zip(f.failures, details):
            name = fail["expectation"]
            say(Text.assemble("column ", (fail["column"], "bold"), ": ", name) if fail["column"] else name, indent=2)
            if detail.rule:
                say(detail.rule, indent=4)
            if fail["error"]:
                say(f"error: {fail['error']}", indent=4)
                continue
            count, total, rows = fail["unexpected_count"], fail["element_count"], fail["rows"]
            if count is not None:
                head = f"{count:,} rows" if total is None else f"{count:,} of {total:,} rows{_percent(count, total)}"
                if rows:
                    # the file's own numbering: lines (JSONL, CSV), elements of a JSON array, rows
                    unit = _unit(f.path)
                    head += f": {unit} " if count == 1 else f": {unit}s "
                say(_fit(head, [str(r) for r in rows], console.width - 4, more=count > len(rows)), indent=4)
            for example in detail.examples or fail["examples"]:
                say(_shown(example), indent=6, cut=True)
    if spaced:
        say()
    n_ok = sum(f.success for f in result.files)
    status = {EXIT_OK: "ok", EXIT_FAILED: "expectations failed", EXIT_UNUSABLE: "unusable input"}[result.exit_code]
    say(f"data check: {n_ok}/{len(result.files)} files passed ({status})")
    if result.docs_index:
        say(f"Data Docs: {result.docs_index}")


def run_check(
    paths: list[Path | str],
    kind: Kind | None = None,
    json_out: Path | None = None,
    docs_dir: Path | None = None,
    console: Any = None,
    harmful: bool | None = None,
) -> int:
    """What `rlhf data check` does: check, print the report, return the exit code (0/1/2)."""
    result = check_files(paths, kind=kind, docs_dir=docs_dir, json_out=json_out, harmful=harmful)
    print_check_report(result, console)
    return result.exit_code
