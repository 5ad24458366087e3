"""Two `rlhf run` at the same time in one fresh workspace: both finish, neither writes over the other.

Two real CLI processes on the smoke preset, started together on an empty workspace, so both
race to create the shared stores (Prefect's sqlite database, MLflow's sqlite store, the
experiment, the registered models). The runs differ on purpose (SFT steps, near-duplicate
removal) so that every record can be traced back to the run that made it.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.artifacts import RunDir

from .conftest import MODEL_CACHE, REPO

# Smaller than the preset (the test runs two pipelines on 2 shared cores), same stages but DPO.
COMMON = [
    f"model.cache_dir={MODEL_CACHE}",
    "dpo.enabled=false",
    "ppo.optim.max_steps=1",
    "reward.optim.max_steps=2",
    "eval.n_prompts=4",
    "eval.best_of_n=[1]",
    "eval.n_boot=50",
]
# What tells the two runs apart: SFT steps (-> sft/loss history) and near-dup removal (-> rows kept).
VARIANTS = {
    "a": ["sft.optim.max_steps=2", "data.dedup.near=true"],
    "b": ["sft.optim.max_steps=3", "data.dedup.near=false"],
}
STAGES = {"data", "sft", "reward", "ppo", "eval"}
REGISTERED = {"rlhf-smoke-sft": "sft", "rlhf-smoke-reward": "reward", "rlhf-smoke-policy": "ppo"}  # <pipeline name>-<kind>
TIMEOUT_S = 600


def _rlhf() -> list[str]:
    script = Path(sys.executable).with_name("rlhf")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "flows.cli"]


def _clean_env() -> dict[str, str]:
    """The user's environment: no Prefect settings left by other tests' harnesses, no pytest marker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    for key in ("MLFLOW_TRACKING_URI", "PYTEST_CURRENT_TEST"):
        env.pop(key, None)
    return env


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    workspace = tmp_path_factory.mktemp("ws-concurrent")
    logs = tmp_path_factory.mktemp("logs-concurrent")
    procs = {}
    started = time.monotonic()
    for name, variant in VARIANTS.items():
        sets = [arg for kv in [*COMMON, *variant] for arg in ("--set", kv)]
        out = open(logs / f"{name}.log", "wb")
        procs[name] = (
            subprocess.Popen(
                [*_rlhf(), "run", "-c", "smoke", "--workspace", str(workspace), *sets],
                cwd=REPO, env=_clean_env(), stdout=out, stderr=subprocess.STDOUT,
            ),
            out,
        )  # fmt: skip
    results = {}
    try:
        for name, (proc, out) in procs.items():
            rc = proc.wait(timeout=max(1.0, TIMEOUT_S - (time.monotonic() - started)))
            out.close()
            results[name] = (rc, (logs / f"{name}.log").read_text(errors="replace"))
    finally:
        for proc, out in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            out.close()
    return workspace, results, time.monotonic() - started


def _run_dir(workspace: Path, output: str) -> Path:
    match = re.search(r"rlhf run --resume (\S+)", output)  # the summary line naming the run id
    assert match, output[-3000:]
    return workspace / "runs" / match.group(1)


def _config(run_dir: Path) -> dict:
    import yaml

    return yaml.safe_load((run_dir / "config.yaml").read_text())


@pytest.fixture(scope="module")
def finished(two_runs):
    workspace, results, wall = two_runs
    for name, (rc, output) in results.items():
        assert rc == 0, f"run {name} exited {rc}:\n{output[-4000:]}"
    print(f"two concurrent smoke runs took {wall:.0f} s")
    return workspace, {name: _run_dir(workspace, output) for name, (_, output) in results.items()}


def test_both_runs_finish_in_their_own_complete_run_directory(finished):
    workspace, dirs = finished
    assert dirs["a"] != dirs["b"]
    assert sorted(p.name for p in (workspace / "runs").iterdir()) == sorted(d.name for d in dirs.values())
    for name, run_dir in dirs.items():
        assert run_dir.parent == workspace / "runs"
        assert _config(run_dir)["sft"]["optim"]["max_steps"] == {"a": 2, "b": 3}[name]
        for stage in STAGES:
            outputs = RunDir(run_dir).outputs(stage)
            assert outputs is not None, stage
            for path in outputs.values():  # every output exists, inside this run's directory
                assert Path(path).exists() and Path(path).is_relative_to(run_dir), (stage, path)
        assert (run_dir / "sft" / "model" / "model.safetensors").is_file()
        assert (run_dir / "eval" / "eval.json").is_file()
    # the two data reports are each run's own (near-duplicate removal on in one run only)
    kept = {name: json.loads((d / "data" / "report.json").read_text())["rows_kept"] for name, d in dirs.items()}
    assert kept["b"] > kept["a"], kept


def test_two_parent_runs_each_with_its_own_stage_runs_and_metrics(finished):
    from mlflow.tracking import MlflowClient

    workspace, dirs = finished
    client = MlflowClient(f"sqlite:///{workspace / 'mlflow' / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "rlhf-smoke"]
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = {r.info.run_id: r for r in runs if "mlflow.parentRunId" not in r.data.tags}
    assert len(parents) == 2, [r.data.tags for r in parents.values()]
    for name, run_dir in dirs.items():
        parent_id = json.loads((run_dir / "pipeline.json").read_text())["mlflow_run_id"]
        parent = parents[parent_id]
        assert parent.info.status == "FINISHED"
        assert parent.data.tags["rlhf.run_dir"] == str(run_dir)
        assert parent.data.params["sft.optim.max_steps"] == str({"a": 2, "b": 3}[name])
        assert parent.data.metrics["pipeline/wall_seconds"] > 0
        children = {r.data.tags["rlhf.stage"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id}
        assert set(children) == STAGES, sorted(children)
        for stage, child in children.items():
            assert child.info.status == "FINISHED", stage
            assert child.data.tags["prefect.flow_run_id"] == parent.data.tags["prefect.flow_run_id"], stage
        # metrics are this run's: its own number of SFT steps, its own data report
        history = client.get_metric_history(children["sft"].info.run_id, "sft/loss")
        assert sorted(m.step for m in history) == list(range(1, {"a": 2, "b": 3}[name] + 1))
        report = json.loads((run_dir / "data" / "report.json").read_text())
        assert children["data"].data.metrics["data/rows_kept"] == report["rows_kept"]
        for kind, stage in REGISTERED.items():  # each registered version comes from this run
            version = client.get_model_version(kind, children[stage].data.tags[f"registry.{kind}"])
            assert version.run_id == children[stage].info.run_id
            assert Path(version.tags["rlhf.stage_dir"]).is_relative_to(run_dir), (kind, version.tags)
    prefect_ids = {p.data.tags["prefect.flow_run_id"] for p in parents.values()}
    assert len(prefect_ids) == 2
    for kind in REGISTERED:  # one version per run, none lost
        assert len(client.search_model_versions(f"name='{kind}'")) == 2, kind


def test_prefect_recorded_both_pipeline_runs_with_their_own_parameters(finished):
    workspace, dirs = finished
    with sqlite3.connect(workspace / "prefect" / "prefect.db") as db:
        rows = db.execute(
            "select fr.id, fr.state_type, fr.parameters from flow_run fr join flow f on fr.flow_id = f.id "
            "where f.name = 'rlhf-pipeline'"
        ).fetchall()
    assert len(rows) == 2
    assert {state for _, state, _ in rows} == {"COMPLETED"}
    steps = sorted(json.loads(params)["config"]["sft"]["optim"]["max_steps"] for _, _, params in rows)
    assert steps == [2, 3]
