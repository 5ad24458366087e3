"""The data stage's Prefect task: the stage body (tasks/stages/data.py) in the stage's MLflow run,
and the data report on the Prefect run page."""

from __future__ import annotations

from prefect import task

import tasks.stages.data
from rlhf_core.config.data import DataConfig
from rlhf_core.config.model import ModelConfig
from tasks.context import STAGE_CACHE, StageContext


@task(name="data", cache_policy=STAGE_CACHE, persist_result=True)
def prepare_data(data_cfg: DataConfig, model_cfg: ModelConfig, model_cache: str, ctx: StageContext) -> dict[str, str]:
    """Run the data stage into `<run>/data/`; return the curated file paths and the report path."""
    with ctx.stage_run("data") as tracker:
        outputs = tasks.stages.data.run(data_cfg, model_cfg, model_cache, ctx.run, tracker)
        note = ctx.mlflow_note()
        ctx.publish_markdown(
            "data-report",
            outputs.report + f"\n\nMLflow: {ctx.mlflow_run_link(tracker.run_id, 'data stage run')}"
            + (f"\n\n{note}" if note else ""),
            "Rows in / kept / dropped per reason, dedup, coverage",
        )
    return ctx.run.record_outputs("data", outputs.files)
