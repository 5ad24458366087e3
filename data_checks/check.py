"""`rlhf data check PATH...`: run the Great Expectations suites on data files.

Exit codes (:attr:`CheckResult.exit_code`): 0 every expectation passed; 1 some expectation
failed (or rows could not be parsed); 2 an input is unusable (missing, empty, a directory,
no recognisable layout). The machine-readable report (``--json FILE``) is
:meth:`CheckResult.to_json`; Data Docs (HTML) go to ``--docs-dir``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_checks.config import DataConfig, Kind
from data_checks.importers import infer_kind, load_dataset_file, read_records
from rlhf_core.errors import DataError

EXIT_OK, EXIT_FAILED, EXIT_UNUSABLE = 0, 1, 2
_EXAMPLES = 3


@dataclass
class FileCheck:
    path: str
    kind: str | None = None
    rows: int = 0
    error: str | None = None  # unusable input, one line
    expectations: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)

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


def _infer(path: Path, split: str) -> Kind:
    raw = read_records(path, split=split)
    columns: set[str] = set()
    for rec in raw.records:
        columns.update(rec)
    kind = infer_kind(columns)
    if kind is None:
        raise DataError(f"{path}: cannot infer the data kind from columns {sorted(columns)[:12]} "
                        "(pass --kind prompts|demonstrations|preferences|rankings)")
    return kind


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


def _failures(validation: Any) -> list[dict[str, Any]]:
    out = []
    for er in validation.results:
        if er.success:
            continue
        cfg = er.expectation_config
        result = er.result or {}
        exc = (er.exception_info or {}).get("exception_message") if er.exception_info else None
        examples = ["null" if v is None else str(v)[:60] for v in (result.get("partial_unexpected_list") or [])[:_EXAMPLES]]
        rows = [int(i) + 1 for i in (result.get("unexpected_index_list") or [])[:20] if isinstance(i, (int,))]
        out.append({"expectation": cfg.type, "column": cfg.kwargs.get("column"),
                    "unexpected_count": result.get("unexpected_count"), "element_count": result.get("element_count"),
                    "examples": examples, "rows": rows, "error": exc})
    return out


def check_files(
    paths: list[Path | str],
    kind: Kind | None = None,
    docs_dir: Path | None = None,
    json_out: Path | None = None,
    *,
    cfg: DataConfig | None = None,
) -> CheckResult:
    """Validate each file against its kind's GX suite (kind inferred from its columns when None).

    Rows that cannot be parsed (invalid JSON, bad bytes) count as a failed expectation
    (``rows_parse``); unusable files are reported with ``error`` and exit code 2.
    """
    from data_checks.suites import build_suite, gx_frame, import_gx

    cfg = cfg or DataConfig()
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
                file_kind = kind or _infer(Path(path), cfg.dataset_split)
                frame, quarantined = load_dataset_file(path, file_kind, split=cfg.dataset_split)
            except DataError as err:
                check.error = str(err)
                continue
            canon = "preferences" if file_kind in ("preferences", "rankings") else file_kind
            check.kind, check.rows = canon, len(frame) + len(quarantined)
            if quarantined:
                check.failures.append({
                    "expectation": "rows_parse", "column": None, "unexpected_count": len(quarantined),
                    "element_count": check.rows, "examples": [q.message[:160] for q in quarantined[:_EXAMPLES]],
                    "rows": [q.row for q in quarantined[:20]], "error": None})
            if frame.empty:
                continue
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
            run = checkpoint.run(batch_parameters={"dataframe": gx_frame(frame.reset_index(drop=True), canon)})
            for validation in run.run_results.values():
                check.expectations += len(validation.results)
                check.failures.extend(_failures(validation))
        if project and docs_dir:
            site = project / "gx" / "uncommitted" / "data_docs" / "local_site"
            if site.is_dir():
                docs_dir = Path(docs_dir)
                if docs_dir.exists():
                    shutil.rmtree(docs_dir)
                shutil.copytree(site, docs_dir)
                result.docs_index = str(docs_dir / "index.html")
    finally:
        if project:
            shutil.rmtree(project, ignore_errors=True)
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(result.to_json(), indent=2), encoding="utf-8")
    return result


def print_check_table(result: CheckResult, console: Any = None) -> None:
    """A short rich table of the failed expectations (and unusable files), then one summary line."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    failing = [f for f in result.files if not f.success]
    if failing:
        table = Table(title="failed data expectations", show_lines=False)
        # The expectation name is what a reader searches for: never wrap it; long paths and
        # examples fold instead, and examples get a bounded width.
        longest = max(len(str(f.path)) for f in failing)
        table.add_column("file", overflow="fold", min_width=min(longest, 60, max(16, console.width // 3)))
        table.add_column("kind", no_wrap=True)
        table.add_column("expectation", no_wrap=True)
        table.add_column("column", overflow="fold")
        table.add_column("bad rows", no_wrap=True, justify="right")
        table.add_column("examples", overflow="fold", min_width=16)
        for f in failing:
            if f.error:
                table.add_row(f.path, f.kind or "?", "usable input", "", "", f.error)
            for fail in f.failures:
                count = fail["unexpected_count"]
                table.add_row(f.path, f.kind or "?", fail["expectation"].removeprefix("expect_"), fail["column"] or "",
                              "" if count is None else f"{count}/{fail['element_count']}",
                              fail["error"] or "; ".join(fail["examples"]))
        console.print(table)
    n_ok = sum(f.success for f in result.files)
    status = {EXIT_OK: "ok", EXIT_FAILED: "expectations failed", EXIT_UNUSABLE: "unusable input"}[result.exit_code]
    docs = f"; Data Docs: {result.docs_index}" if result.docs_index else ""
    console.print(f"data check: {n_ok}/{len(result.files)} files passed ({status}){docs}")


def run_check(
    paths: list[Path | str],
    kind: Kind | None = None,
    json_out: Path | None = None,
    docs_dir: Path | None = None,
    console: Any = None,
) -> int:
    """What `rlhf data check` does: check, print the table, return the exit code (0/1/2)."""
    result = check_files(paths, kind=kind, docs_dir=docs_dir, json_out=json_out)
    print_check_table(result, console)
    return result.exit_code
