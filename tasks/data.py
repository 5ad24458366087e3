"""The data task: import, validate, scrub, dedup, filter; log the report to MLflow."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from prefect import task

from data_checks.config import DataConfig
from rlhf_core.config import ModelConfig
from tasks import tracking
from tasks.artifacts import RunDir

CURATED_FILES = ("demonstrations", "preferences", "rl_prompts", "eval_prompts")


@dataclass(frozen=True)
class StageContext:
    """What every stage task needs to find its run directory and its MLflow parent."""

    run_dir: str
    parent_run_id: str
    experiment_id: str
    prefect_flow_run_id: str = ""

    @property
    def run(self) -> RunDir:
        return RunDir(Path(self.run_dir))

    def stage_run(self, stage: str):
        return tracking.stage_run(
            self.parent_run_id, self.experiment_id, stage, tags={"prefect.flow_run_id": self.prefect_flow_run_id}
        )


def data_metrics(report: dict) -> dict[str, float]:
    """The data report (report.json) as `data/...` metrics (names dashboards rely on)."""
    by_reason: dict[str, int] = {}
    for per_input in report["totals"].values():
        for reason, count in per_input["dropped"].items():
            by_reason[reason] = by_reason.get(reason, 0) + count
    metrics: dict[str, float] = {
        "data/rows_in": report["rows_in"],
        "data/rows_kept": report["rows_kept"],
        "data/rows_dropped": sum(by_reason.values()),
    }
    for reason, count in by_reason.items():  # "<stage>:<rule>" -> data/rows_dropped/<stage>/<rule>
        metrics[f"data/rows_dropped/{reason.replace(':', '/')}"] = count
    for name, per_input in report["totals"].items():
        metrics[f"data/{name}/rows_kept"] = per_input["rows_kept"]
    coverage = report.get("coverage") or {}
    if coverage.get("share_rl_inside") is not None:
        metrics["data/rl_prompt_coverage"] = coverage["share_rl_inside"]
    if coverage.get("share_preference_topics_reached") is not None:
        metrics["data/preference_topic_coverage"] = coverage["share_preference_topics_reached"]
    return metrics


@task(name="data")
def prepare_data(data_cfg: DataConfig, model_cfg: ModelConfig, model_cache: str, ctx: StageContext) -> dict:
    """Run the data stage into `<run>/data/`; return the curated file paths and the report path."""
    import mlflow.data

    import pandas as pd

    from data_checks.stage import run_data_stage
    from rlhf_core.models import load_tokenizer

    out_dir = ctx.run.stage("data")
    tokenizer = load_tokenizer(model_cfg, Path(model_cache))
    with ctx.stage_run("data") as tracker:
        tracker.log_params({"data": data_cfg.model_dump(mode="json")})
        report = run_data_stage(data_cfg, out_dir, tokenizer=tokenizer).to_json()
        tracker.log_metrics(data_metrics(report), step=0)
        for name in CURATED_FILES:
            path = out_dir / f"{name}.parquet"
            if path.is_file():
                frame = pd.read_parquet(path)
                with warnings.catch_warnings():  # MLflow registers the local source class twice
                    warnings.simplefilter("ignore", UserWarning)
                    dataset = mlflow.data.from_pandas(frame, source=str(path), name=name)
                tracker.client.log_inputs(tracker.run_id, datasets=[_dataset_input(dataset, name)])
        tracker.log_artifact(out_dir, "data")
    outputs = {name: str(out_dir / f"{name}.parquet") for name in CURATED_FILES}
    outputs["report"] = str(out_dir / "report.json")
    return outputs


def _dataset_input(dataset, context: str):
    from mlflow.entities import DatasetInput, InputTag

    return DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])
