"""The `rlhf-pipeline` Prefect flow: data -> SFT -> reward model, tracked in MLflow.

`run_pipeline(cfg)` is what `rlhf run` calls: it points Prefect's ephemeral API and
MLflow's sqlite store into the workspace (no servers to start), creates a fresh run
directory, runs the flow, and returns a summary of where everything went.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from flows.config import PipelineConfig, dump_config
from flows.runtime import prepare_environment


@dataclass
class RunSummary:
    run_dir: Path
    wall_seconds: float
    mlflow_run_id: str | None
    outputs: dict = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)


def run_pipeline(cfg: PipelineConfig) -> RunSummary:
    """Run the whole pipeline on ``cfg`` in a new run directory of its workspace."""
    prepare_environment(cfg.workspace)
    from flows.stages import rlhf_pipeline

    started = time.perf_counter()
    result = rlhf_pipeline(cfg)
    wall = time.perf_counter() - started
    run_dir = Path(result["run_dir"])
    lines = [f"{stage}: {where}" for stage, where in result["outputs"].items()]
    if result.get("mlflow_run_id"):
        lines.append(f"MLflow run: {result['mlflow_run_id']} (store: {result['tracking_uri']})")
        lines.append(f"open the UIs: rlhf ui --workspace {cfg.workspace}")
    return RunSummary(run_dir, wall, result.get("mlflow_run_id"), result["outputs"], lines)


def write_resolved_config(cfg: PipelineConfig, path: Path) -> None:
    path.write_text(dump_config(cfg), encoding="utf-8")
