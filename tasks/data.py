"""The data task: import, validate, scrub, dedup, filter; log the report to MLflow."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from rlhf_core.config.data import DataConfig
from rlhf_core.config.model import ModelConfig
from tasks.context import STAGE_CACHE, StageContext

CURATED_FILES = ("demonstrations", "preferences", "rl_prompts", "eval_prompts")


def log_curated_inputs(tracker, data_outputs: dict[str, str], names: tuple[str, ...], context: str) -> None:
    """Show on a stage's MLflow run the curated files it trains or evaluates on (``context``: "training",
    "evaluation"), with the same name and digest as on the data stage's run."""
    import pandas as pd

    for name in names:
        path = Path(data_outputs[name])
        tracker.log_dataset(pd.read_parquet(path), path, name, context)


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


@task(name="data", cache_policy=STAGE_CACHE, persist_result=True)
def prepare_data(
    data_cfg: DataConfig, model_cfg: ModelConfig, model_cache: str, run_dir: str, ctx: StageContext
) -> dict[str, str]:
    """Run the data stage into `<run>/data/`; return the curated file paths and the report path."""
    import pandas as pd

    from data_checks.stage import run_data_stage
    from rlhf_core.models import load_tokenizer

    run = ctx.run
    out_dir = run.stage("data")
    tokenizer = load_tokenizer(model_cfg, Path(model_cache))
    with ctx.stage_run("data") as tracker:
        tracker.log_params({"data": data_cfg.model_dump(mode="json")})
        result = run_data_stage(data_cfg, out_dir, tokenizer=tokenizer)
        report = result.to_json()
        tracker.log_metrics(data_metrics(report), step=0)
        for name in CURATED_FILES:
            path = out_dir / f"{name}.parquet"
            tracker.log_dataset(pd.read_parquet(path), path, name)
        tracker.log_artifact(out_dir, "data")
        note = ctx.mlflow_note()
        ctx.publish_markdown(
            "data-report",
            result.to_markdown() + f"\n\nMLflow: {ctx.mlflow_run_link(tracker.run_id, 'data stage run')}"
            + (f"\n\n{note}" if note else ""),
            "Rows in / kept / dropped per reason, dedup, coverage",
        )
    outputs = {name: str(out_dir / f"{name}.parquet") for name in CURATED_FILES}
    outputs["report"] = str(out_dir / "report.json")
    return run.record_outputs("data", outputs)
