"""Prefect flow definitions. Imported only after `flows.runtime.prepare_environment`.

The parent `rlhf-pipeline` flow opens one MLflow parent run, then calls the stage tasks
in order; each stage logs into its own nested MLflow run and hands off to the next
through the run directory (`tasks.artifacts.RunDir`), never through in-memory objects.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.config import PipelineConfig, dump_config
from tasks import data as data_tasks
from tasks import training as training_tasks
from tasks import tracking
from tasks.artifacts import workspace_from


@flow(name="rlhf-pipeline", log_prints=True, validate_parameters=True)
def rlhf_pipeline(config: PipelineConfig) -> dict:
    """data -> SFT -> reward model (+ agreement), each stage a nested MLflow run."""
    logger = get_run_logger()
    started = time.perf_counter()
    ws = workspace_from(config.workspace)
    run = ws.new_run(config.name)
    run.config.write_text(dump_config(config), encoding="utf-8")
    logger.info("run directory: %s", run.path)

    tracking_uri = config.tracking.tracking_uri or ws.mlflow_uri
    experiment_id = tracking.configure(tracking_uri, ws.mlflow_artifacts, config.tracking.experiment or config.name)
    prefect_id = str(flow_run.get_id() or "")
    parent = tracking.start_parent_run(
        experiment_id, run.run_id, tags={"prefect.flow_run_id": prefect_id, "rlhf.run_dir": str(run.path)}
    )
    parent.log_params(config.model_dump(mode="json"))
    parent.log_artifact(run.config)
    outputs: dict[str, str] = {}
    ctx = data_tasks.StageContext(
        run_dir=str(run.path), parent_run_id=parent.run_id, experiment_id=experiment_id, prefect_flow_run_id=prefect_id
    )
    try:
        base_dir = training_tasks.fetch_base_model(config.model, str(config.model_cache))
        data = data_tasks.prepare_data(config.data, config.model, str(config.model_cache), ctx)
        outputs["data"] = data["report"]
        if config.sft.enabled:
            sft = training_tasks.train_sft_stage(config, base_dir, data, ctx)
            outputs["sft"] = sft["model_dir"]
            policy_dir = sft["model_dir"]
        else:
            policy_dir = base_dir
        if config.reward.enabled:
            reward = training_tasks.train_reward_stage(config, policy_dir, data, ctx)
            outputs["reward"] = reward["model_dir"]
            outputs["reward agreement"] = reward["agreement"]
        parent.log_metrics({"pipeline/wall_seconds": time.perf_counter() - started}, step=0)
    except BaseException:
        parent.end("FAILED")
        raise
    parent.end("FINISHED")
    return {
        "run_dir": str(run.path),
        "outputs": outputs,
        "mlflow_run_id": parent.run_id,
        "tracking_uri": tracking_uri,
    }
