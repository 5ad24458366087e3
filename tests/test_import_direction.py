"""Imports run one way: flows -> tasks -> tasks.stages -> {rlhf_core, data_checks} -> rlhf_core.config.

Every module of those packages is parsed with ``ast`` (imports at module level and inside
functions alike; nothing is imported), and each project import is checked against the layers:

* ``flows`` may import anything below it; ``tasks`` never imports ``flows``;
* ``tasks.stages`` (the stage bodies) and the Prefect-free modules beside it (``tasks.artifacts``,
  ``tasks.distributed``, ``tasks.plots``) never import the rest of ``tasks`` (the Prefect tasks,
  MLflow tracking), and import neither prefect nor mlflow at all;
* ``rlhf_core`` and ``data_checks`` never import ``tasks`` or ``flows`` (they may import each
  other's modules, as long as no circle forms);
* ``rlhf_core.config`` imports nothing else from the project but the standard-library modules
  ``rlhf_core.errors`` and ``rlhf_core.redact``, which import nothing from the project at all.

And no circle of imports between modules. An import under ``if TYPE_CHECKING:`` never runs, so
it counts for the direction but not for circles. A failure names the file:line and the rule.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import REPO

PACKAGES = ("flows", "tasks", "data_checks", "rlhf_core")
# Below every package, beside the config: stdlib-only modules the config may use.
FOUNDATION = ("rlhf_core.errors", "rlhf_core.redact")
# The stage bodies and the Prefect-free tasks modules they use: below the Prefect tasks and tracking.
STAGE_LAYER = ("tasks.stages", "tasks.artifacts", "tasks.distributed", "tasks.plots")
# What the stage layer never imports, anywhere: the tasks above it pass the MLflow tracker in.
ORCHESTRATION = ("prefect", "mlflow")
LAYER_NAMES = {4: "flows", 3: "tasks", 2: "tasks.stages", 1: "rlhf_core / data_checks", 0: "rlhf_core.config"}


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    path: Path
    line: int
    type_only: bool  # under `if TYPE_CHECKING:`
    implicit: bool = False  # a package __init__ that importing one of its modules runs first

    def where(self, root: Path) -> str:
        return f"{self.path.relative_to(root)}:{self.line}"


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of PACKAGES under ``root``."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST, type_only: bool = False):
    """(node, type_only) for every Import / ImportFrom anywhere in ``tree``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, type_only
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from _import_nodes(ast.Module(body=[child], type_ignores=[]), True)
            for child in node.orelse:
                yield from _import_nodes(ast.Module(body=[child], type_ignores=[]), type_only)
        else:
            yield from _import_nodes(node, type_only)


def project_imports(root: Path) -> list[Import]:
    """Every import of one project module by another, resolved to the module file it runs."""
    modules = module_files(root)

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    found = []
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node, type_only in _import_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for name in names:
                if name.split(".")[0] not in PACKAGES:
                    continue
                target = resolve(name)
                if target is None:
                    continue
                if target != module:
                    found.append(Import(module, target, path, node.lineno, type_only))
                # Importing a.b.c first runs a/__init__ and a/b/__init__ (bar the importer's own packages).
                parts = target.split(".")
                for i in range(1, len(parts)):
                    step = ".".join(parts[:i])
                    if step in modules and step != module and not module.startswith(step + "."):
                        found.append(Import(module, step, path, node.lineno, type_only, implicit=True))
    return found


def _in(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def layer(module: str) -> int:
    if _in(module, ("rlhf_core.config", *FOUNDATION)):
        return 0
    if _in(module, STAGE_LAYER):
        return 2
    return {"flows": 4, "tasks": 3, "data_checks": 1, "rlhf_core": 1}[module.split(".")[0]]


def direction_violations(imports: list[Import], root: Path) -> list[str]:
    problems = []
    for imp in (i for i in imports if not i.implicit):
        low, high = layer(imp.importer), layer(imp.imported)
        if imp.importer in FOUNDATION:
            rule = f"{imp.importer} is below rlhf_core.config and imports nothing from the project"
        elif low == 0 and high > low:
            rule = "rlhf_core.config imports nothing else from the project (but rlhf_core.errors, rlhf_core.redact)"
        elif high > low:
            rule = (f"{LAYER_NAMES[low]} never imports {LAYER_NAMES[high]} "
                    "(flows -> tasks -> tasks.stages -> rlhf_core/data_checks -> rlhf_core.config)")
        else:
            continue
        problems.append(f"{imp.where(root)}: {imp.importer} imports {imp.imported}: {rule}")
    return problems


def orchestration_imports(root: Path) -> list[str]:
    """``file:line: module imports prefect|mlflow`` for each such import in the stage layer."""
    found = []
    for module, path in module_files(root).items():
        if not _in(module, STAGE_LAYER):
            continue
        for node, _ in _import_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level:
                continue  # relative: a project module
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"{path.relative_to(root)}:{node.lineno}: {module} imports {name}"
                      for name in names if name.split(".")[0] in ORCHESTRATION]
    return found


def find_cycle(imports: list[Import]) -> list[Import] | None:
    """One circle of run-time imports (the edges in order), or None."""
    graph: dict[str, list[Import]] = {}
    for imp in imports:
        if not imp.type_only:
            graph.setdefault(imp.importer, []).append(imp)
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[Import] = []

    def visit(module: str) -> list[Import] | None:
        state[module] = 1
        for edge in graph.get(module, []):
            if state.get(edge.imported) == 1:
                start = next(i for i, e in enumerate(path) if e.importer == edge.imported) if edge.imported != module else len(path)
                return [*path[start:], edge]
            if edge.imported not in state:
                path.append(edge)
                cycle = visit(edge.imported)
                if cycle:
                    return cycle
                path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def describe(cycle: list[Import], root: Path) -> str:
    return " -> ".join(f"{e.importer} ({e.where(root)})" for e in cycle) + f" -> {cycle[0].importer}"


# --------------------------------------------------------------------------- the project


@functools.cache
def repo_imports() -> list[Import]:
    return project_imports(REPO)


def test_the_scan_sees_module_and_function_level_imports():
    imports = repo_imports()
    edges = {(i.importer, i.imported) for i in imports}
    assert ("rlhf_core.config.pipeline", "rlhf_core.config.ppo") in edges  # module level
    assert ("flows.preflight", "rlhf_core.models") in edges  # inside a function
    assert len(module_files(REPO)) > 60


def test_no_module_imports_upward():
    problems = direction_violations(repo_imports(), REPO)
    assert not problems, "imports against the layer order:\n" + "\n".join(problems)


def test_the_stage_bodies_import_neither_prefect_nor_mlflow():
    assert {"tasks.stages.sft", "tasks.stages.eval"} <= set(module_files(REPO))  # the scan sees the package
    problems = orchestration_imports(REPO)
    assert not problems, "the stage layer imports orchestration:\n" + "\n".join(problems)


def test_no_import_circle_between_modules():
    cycle = find_cycle(repo_imports())
    assert cycle is None, "import circle: " + describe(cycle, REPO)


# --------------------------------------------------------------------------- the checker itself


def _write(root: Path, files: dict[str, str]) -> None:
    for package in PACKAGES:
        (root / package).mkdir(parents=True, exist_ok=True)
        (root / package / "__init__.py").touch()
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_checker_names_file_line_and_rule_of_an_upward_import(tmp_path):
    _write(tmp_path, {
        "rlhf_core/config/__init__.py": "",
        "rlhf_core/config/ppo.py": "import os\n\n\ndef f():\n    from rlhf_core.models import load\n",
        "rlhf_core/models.py": "",
        "tasks/training.py": "from flows.config import PipelineConfig\n",
        "flows/config.py": "",
        "data_checks/demo.py": "from ..tasks import training\n",
    })
    problems = direction_violations(project_imports(tmp_path), tmp_path)
    assert (
        "rlhf_core/config/ppo.py:5: rlhf_core.config.ppo imports rlhf_core.models: rlhf_core.config imports nothing "
        "else from the project (but rlhf_core.errors, rlhf_core.redact)"
    ) in problems
    assert any(p.startswith("tasks/training.py:1: tasks.training imports flows.config: tasks never imports flows") for p in problems)
    assert any(p.startswith("data_checks/demo.py:1: data_checks.demo imports tasks.training:") for p in problems)
    assert len(problems) == 3, problems


def test_checker_finds_a_circle_but_not_through_type_checking_imports(tmp_path):
    _write(tmp_path, {
        "tasks/a.py": "def f():\n    from tasks.b import g\n",
        "tasks/b.py": "import tasks.c\n",
        "tasks/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from tasks.a import f\n",
    })
    assert find_cycle(project_imports(tmp_path)) is None
    (tmp_path / "tasks/c.py").write_text("x = 1\n\n\ndef h():\n    from . import a\n")
    cycle = find_cycle(project_imports(tmp_path))
    assert cycle is not None
    assert describe(cycle, tmp_path) == (
        "tasks.a (tasks/a.py:2) -> tasks.b (tasks/b.py:1) -> tasks.c (tasks/c.py:5) -> tasks.a"
    )


def test_checker_keeps_the_stage_bodies_below_the_prefect_tasks(tmp_path):
    _write(tmp_path, {
        "tasks/stages/__init__.py": "",
        "tasks/stages/sft.py": "from tasks.artifacts import RunDir\n\n\ndef run():\n    from tasks.context import StageContext\n",
        "tasks/stages/eval.py": "def f():\n    import mlflow.tracking\n    from prefect import task\n",
        "tasks/artifacts.py": "import os\n",
        "tasks/context.py": "from prefect import task\n",
        "tasks/training.py": "import tasks.stages.sft\n",
    })
    problems = direction_violations(project_imports(tmp_path), tmp_path)
    assert problems == [
        "tasks/stages/sft.py:5: tasks.stages.sft imports tasks.context: tasks.stages never imports tasks "
        "(flows -> tasks -> tasks.stages -> rlhf_core/data_checks -> rlhf_core.config)"
    ]
    assert orchestration_imports(tmp_path) == [
        "tasks/stages/eval.py:2: tasks.stages.eval imports mlflow.tracking",
        "tasks/stages/eval.py:3: tasks.stages.eval imports prefect",
    ]


@pytest.mark.parametrize("module", FOUNDATION)
def test_the_config_foundation_is_standard_library_only(module):
    assert not [i for i in repo_imports() if i.importer == module]


MAX_FUNCTION_LINES = 100  # issue 18: every function of the algorithms package reads on one or two screens


def long_functions(root: Path, package: str = "rlhf_core") -> list[str]:
    """``file:line name (N lines)`` for every function in ``package`` longer than MAX_FUNCTION_LINES."""
    found = []
    for path in sorted((root / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_in_rlhf_core_is_over_100_lines():
    assert long_functions(REPO) == []


def test_the_length_check_names_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    _write(tmp_path, {"rlhf_core/loop.py": f"def short():\n    return 1\n\n\ndef train():\n{body}\n"})
    assert long_functions(tmp_path) == ["rlhf_core/loop.py:5 train (101 lines)"]
