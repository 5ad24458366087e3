"""Import hygiene: rlhf_core stays pure, and the CLI's --help path stays light."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import rlhf_core

from .conftest import REPO

HEAVY_ORCHESTRATION = ("prefect", "mlflow", "great_expectations", "pandera")


def _modules_loaded_by(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True, text=True, cwd=REPO, check=True,
    )
    return {m.split(".")[0] for m in json.loads(out.stdout.strip().splitlines()[-1])}


def test_rlhf_core_never_imports_orchestration_or_tracking():
    names = [m.name for m in pkgutil.walk_packages(rlhf_core.__path__, "rlhf_core.")]
    assert "rlhf_core.models" in names  # the walk really found the package
    loaded = _modules_loaded_by("\n".join(f"import {n}" for n in names))
    assert not loaded & set(HEAVY_ORCHESTRATION), loaded & set(HEAVY_ORCHESTRATION)


def test_config_package_imports_no_heavy_library():
    """Every config module (all stage schemas, PipelineConfig, YAML loading) without torch & co."""
    import rlhf_core.config

    names = [m.name for m in pkgutil.walk_packages(rlhf_core.config.__path__, "rlhf_core.config.")]
    assert {"rlhf_core.config.pipeline", "rlhf_core.config.ppo", "rlhf_core.config.base"} <= set(names)
    loaded = _modules_loaded_by("\n".join(f"import {n}" for n in names) + "\nrlhf_core.config.pipeline.load_config('demo')")
    heavy = {"torch", "transformers", "prefect", "mlflow", "great_expectations"}
    assert not loaded & heavy, loaded & heavy


def test_the_stage_bodies_import_no_orchestration_or_tracking():
    """tasks/stages/ is plain Python: the Prefect tasks pass the MLflow tracker in."""
    import tasks.stages

    names = [m.name for m in pkgutil.walk_packages(tasks.stages.__path__, "tasks.stages.")]
    assert {"tasks.stages.data", "tasks.stages.sft", "tasks.stages.reward", "tasks.stages.ppo", "tasks.stages.dpo",
            "tasks.stages.eval"} <= set(names)
    loaded = _modules_loaded_by("\n".join(f"import {n}" for n in names))
    assert not loaded & {"prefect", "mlflow"}, loaded & {"prefect", "mlflow"}


def test_cli_help_path_imports_no_heavy_library():
    loaded = _modules_loaded_by("import flows.cli, flows.preflight, rlhf_core.config.pipeline")
    heavy = {"torch", "transformers", *HEAVY_ORCHESTRATION}
    assert not loaded & heavy, loaded & heavy


def test_rlhf_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "flows.cli", "--help"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    for command in ("run", "config", "model", "data"):
        assert command in out.stdout


def test_unknown_option_is_a_usage_error_not_a_traceback():
    out = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--no-such-flag"], capture_output=True, text=True,
                         cwd=REPO)
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "No such option" in out.stderr and "--no-such-flag" in out.stderr
    assert "Traceback" not in out.stderr


_EVERY_HELP = """
import json, typer, flows.cli as cli
def leaves(cmd, path):
    subs = getattr(cmd, "commands", None)
    if not subs:
        yield path, cmd
    for name, sub in (subs or {}).items():
        yield from leaves(sub, [*path, name])
out = {}
for path, cmd in leaves(typer.main.get_command(cli.app), []):
    ctx = cmd.make_context(" ".join(["rlhf", *path]), ["--help"], resilient_parsing=True)
    names = [o for p in cmd.params if p.param_type_name == "option" for o in (*p.opts, *p.secondary_opts)]
    out[" ".join(path)] = {"help": cmd.get_help(ctx), "options": names}
print(json.dumps(out))
"""


def test_every_help_page_fits_80_columns_with_every_option_name_whole():
    """A CI log is 80 columns: typer's rich panels cut option names there ("--label-studio-…"), so the
    CLI uses click's plain layout under 100 columns. Every command's page, every line, every name."""
    import os

    env = {**os.environ, "COLUMNS": "80"}
    out = subprocess.run([sys.executable, "-c", _EVERY_HELP], capture_output=True, text=True, cwd=REPO, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    pages = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"run", "ui", "deploy", "iterate", "reward eval", "data check"} <= set(pages), sorted(pages)
    for command, page in pages.items():
        wide = [line for line in page["help"].splitlines() if len(line) > 80]
        assert not wide, (command, wide)
        assert "…" not in page["help"], (command, page["help"])
        for name in page["options"]:
            assert name in page["help"], (command, name, page["help"])


def test_a_wide_terminal_keeps_the_rich_help_panels():
    import os

    env = {**os.environ, "COLUMNS": "120"}
    out = subprocess.run([sys.executable, "-m", "flows.cli", "ui", "--help"], capture_output=True, text=True, cwd=REPO,
                         env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "╭─ Options" in out.stdout and "--label-studio-port" in out.stdout, out.stdout
