"""The data stage: import, validate, scrub, dedup and filter the raw files into `<run>/data/`.

``run`` loads the tokenizer (it counts prompt tokens), runs ``data_checks.stage.run_data_stage``,
logs the data report as ``data/...`` metrics and the curated files as datasets, and hands back
the curated files and the report.
"""

from __future__ import annotations

from pathlib import Path

from rlhf_core.config.data import DataConfig
from rlhf_core.config.model import ModelConfig
from tasks.artifacts import RunDir
from tasks.stages.common import StageOutputs, StageTracker

CURATED_FILES = ("demonstrations", "preferences", "rl_prompts", "eval_prompts")


def run(cfg: DataConfig, model_cfg: ModelConfig, model_cache: str | Path, run: RunDir, tracker: StageTracker) -> StageOutputs:
    """Run the data stage into `<run>/data/`; its files: the curated parquet files and report.json."""
    import pandas as pd

    from data_checks.stage import run_data_stage
    from rlhf_core.models import load_tokenizer

    out_dir = run.stage("data")
    tokenizer = load_tokenizer(model_cfg, Path(model_cache))
    tracker.log_params({"data": cfg.model_dump(mode="json")})

    result = run_data_stage(cfg, out_dir, tokenizer=tokenizer)

    tracker.log_metrics(data_metrics(result.to_json()), step=0)
    for name in CURATED_FILES:
        path = out_dir / f"{name}.parquet"
        tracker.log_dataset(pd.read_parquet(path), path, name)
    tracker.log_artifact(out_dir, "data")
    files = {name: str(out_dir / f"{name}.parquet") for name in CURATED_FILES}
    files["report"] = str(out_dir / "report.json")
    return StageOutputs(files, report=result.to_markdown())


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
