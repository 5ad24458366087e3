"""Workspace layout: run directories are unique, stages get their own folders."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tasks.artifacts import STAGES, workspace_from


def test_runs_never_share_a_directory(tmp_path):
    ws = workspace_from(tmp_path / "ws")
    with ThreadPoolExecutor(8) as pool:
        runs = list(pool.map(lambda _: ws.new_run("demo"), range(64)))
    assert len({r.path for r in runs}) == 64
    assert all(r.path.is_dir() and r.path.parent == ws.runs for r in runs)


def test_stage_directories_and_names(tmp_path):
    run = workspace_from(tmp_path).new_run("x")
    for stage in STAGES:
        assert run.stage(stage) == run.path / stage and (run.path / stage).is_dir()
    assert run.model_dir("sft") == run.path / "sft" / "model"
    with pytest.raises(ValueError, match="unknown stage 'sftt'"):
        run.stage("sftt")


def test_mlflow_store_lives_in_the_workspace(tmp_path):
    ws = workspace_from(tmp_path)
    assert ws.mlflow_uri.startswith("sqlite:///") and str(tmp_path) in ws.mlflow_uri
