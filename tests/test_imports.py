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
