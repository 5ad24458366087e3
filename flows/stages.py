"""Prefect flows: one per stage, and the `rlhf-pipeline` parent chaining them as subflows.

Import only after `flows.runtime.prepare_environment` (it points Prefect's state into the
workspace). Every flow takes the validated `PipelineConfig` (the Prefect UI renders it as a
form and rejects bad values before a run starts) and the run directory it works in; stages
hand off through that directory (`tasks.artifacts.RunDir`), so any stage flow can be re-run
alone on an existing run. Finished stages are cached: re-running a run directory
(`rlhf run --resume RUN_ID`) skips them as long as their recorded outputs still exist.

From `rlhf_pipeline` to a stage's code: the pipeline calls each stage flow (`sft_flow`), the
flow calls its Prefect task (`train_sft_stage`, tasks/training.py: the stage's MLflow run, the
registry), and the task calls the stage body `tasks.stages.sft.run` (plain Python: inputs from
the run directory, rlhf_core, what it logs).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.crash_sweep import LABEL_EXPERIMENT, LABEL_TRACKING_URI, record_owner
from flows.servers import preflight
from rlhf_core.config.pipeline import PipelineConfig, dump_config
from tasks import tracking
from tasks.artifacts import RunDir, workspace_from
from tasks.context import StageContext
from tasks.data import prepare_data
from tasks.evaluation import evaluate_stage
from tasks.summary import pipeline_summary, summary_markdown
from tasks.training import fetch_base_model, train_dpo_stage, train_ppo_stage, train_reward_stage, train_sft_stage

PIPELINE_STATE = "pipeline.json"  # the run's MLflow parent id, so a resumed run logs into the same parent


def _apply_threads(config: PipelineConfig) -> None:
    if config.torch_threads:
        import torch

        torch.set_num_threads(config.torch_threads)


def _outputs_gone(run: RunDir, stage: str) -> bool:
    """Whether a stage task must run again although Prefect's cache has it: its recorded outputs
    went missing (never recorded, or a file deleted). The flow returns the outputs this run
    directory records, not the task's cached result: that may name the paths of the workspace
    the run was copied from."""
    return run.outputs(stage) is None


def _context(config: PipelineConfig, run_dir: str) -> StageContext:
    """Open (or, when the run directory has one, reuse) the pipeline's MLflow parent run.

    Called once per top-level flow run: it labels the flow run with this process (so a later
    `rlhf` can set it Crashed if the process is killed) and, on a resumed run, first sends the
    metrics an earlier attempt could not (its spools in <run>/tracking/).
    """
    ws = workspace_from(config.workspace)
    run = RunDir(Path(run_dir))
    prefect_id = str(flow_run.get_id() or "")
    record_owner(prefect_id)
    if not config.tracking.enabled:
        return StageContext(
            run_dir=str(run.path), parent_run_id="", experiment_id="", tracking_uri="",
            prefect_flow_run_id=prefect_id, register_models=False, tracking_enabled=False,
        )
    tracking_uri = config.tracking.tracking_uri or ws.mlflow_uri
    # Two runs starting together would both create (migrate) a fresh sqlite store and the
    # experiment: "duplicate column", "experiment already exists". One at a time.
    with ws.lock("mlflow-store"):
        experiment_id = tracking.configure(tracking_uri, ws.mlflow_artifacts, config.tracking.experiment or config.name)
    state_file = run.path / PIPELINE_STATE
    if state_file.is_file():
        parent_id = json.loads(state_file.read_text())["mlflow_run_id"]
        # To this run's store as configured now, not the one the spool names (a copied workspace's is the original's)
        for report in tracking.flush_run_spools(run.path, tracking_uri=tracking_uri, timeout_s=config.tracking.flush_timeout_s):
            get_run_logger().info(
                "sent %d metric batch(es) held back by an earlier attempt from %s to MLflow run %s%s",
                report.batches, report.spool.name, report.run_id, f" (marked {report.status})" if report.status else "",
            )  # fmt: skip
        tracking.reopen_run(parent_id, tags={"prefect.flow_run_id": prefect_id})
    else:
        parent = tracking.start_parent_run(
            experiment_id, run.run_id,
            tags={"prefect.flow_run_id": prefect_id, "rlhf.run_dir": str(run.path), "rlhf.pipeline": config.name},
        )
        parent.log_params(config.model_dump(mode="json"))
        parent.log_artifact(run.config)
        parent_id = parent.run_id
        state_file.write_text(json.dumps({"mlflow_run_id": parent_id, "tracking_uri": tracking_uri}))
    record_owner(prefect_id, {LABEL_TRACKING_URI: tracking_uri, LABEL_EXPERIMENT: experiment_id})
    return StageContext(
        run_dir=str(run.path), parent_run_id=parent_id, experiment_id=experiment_id, tracking_uri=tracking_uri,
        prefect_flow_run_id=prefect_id, register_models=config.registry.enabled,
        tracking_flush_timeout_s=config.tracking.flush_timeout_s, log_checkpoints=config.tracking.log_checkpoints,
        model_prefix=config.registry.model_prefix or config.name,
    )


@contextmanager
def _stage_context(config: PipelineConfig, run_dir: str, ctx: StageContext | None) -> Iterator[StageContext]:
    """``ctx`` as the pipeline passes it (the pipeline owns its MLflow parent run). A stage flow run
    on its own (`rlhf eval RUN_ID`, a deployment) opens the run's MLflow parent run instead, and
    marks it FINISHED (or FAILED) again at the end rather than leaving it RUNNING."""
    if ctx is not None:
        yield ctx
        return
    ctx = _context(config, run_dir)
    status = "FAILED"
    try:
        yield ctx
        status = "FINISHED"
    finally:
        if ctx.tracking_enabled:
            try:
                tracking.end_run(ctx.parent_run_id, status)
            except Exception:
                if status == "FINISHED":
                    raise
                # never hide the stage's own error behind a tracking one
                get_run_logger().warning("could not mark MLflow run %s FAILED", ctx.parent_run_id)


def _policy_init(config: PipelineConfig, run: RunDir) -> str:
    """The model later stages start from: the SFT model when that stage ran, else the base model."""
    if config.sft.enabled:
        return run.require("sft")["model_dir"]
    return fetch_base_model(config.model, str(config.model_cache))


@flow(name="data", log_prints=True)
def data_flow(config: PipelineConfig, run_dir: str, ctx: StageContext | None = None) -> dict[str, str]:
    """Import, validate, scrub refusals, dedup and filter prompts; write the data report."""
    with _stage_context(config, run_dir, ctx) as ctx:
        fetch_base_model(config.model, str(config.model_cache))  # the tokenizer counts prompt tokens
        prepare_data.with_options(refresh_cache=_outputs_gone(ctx.run, "data"))(
            config.data, config.model, str(config.model_cache), ctx
        )
        return ctx.run.require("data")


@flow(name="sft", log_prints=True)
def sft_flow(config: PipelineConfig, run_dir: str, ctx: StageContext | None = None) -> dict[str, str]:
    """Supervised fine-tuning of the base model on the curated demonstrations."""
    with _stage_context(config, run_dir, ctx) as ctx:
        _apply_threads(config)
        base_dir = fetch_base_model(config.model, str(config.model_cache))
        train_sft_stage.with_options(refresh_cache=_outputs_gone(ctx.run, "sft"))(config, base_dir, ctx)
        return ctx.run.require("sft")


@flow(name="reward", log_prints=True)
def reward_flow(config: PipelineConfig, run_dir: str, ctx: StageContext | None = None) -> dict[str, str]:
    """Reward model from the SFT model on the preference pairs, with its agreement rates."""
    with _stage_context(config, run_dir, ctx) as ctx:
        _apply_threads(config)
        policy_dir = _policy_init(config, ctx.run)
        train_reward_stage.with_options(refresh_cache=_outputs_gone(ctx.run, "reward"))(config, policy_dir, ctx)
        return ctx.run.require("reward")


@flow(name="ppo", log_prints=True)
def ppo_flow(config: PipelineConfig, run_dir: str, ctx: StageContext | None = None) -> dict[str, str]:
    """PPO of the SFT policy against the reward model with a KL penalty to the SFT model."""
    with _stage_context(config, run_dir, ctx) as ctx:
        _apply_threads(config)
        policy_dir = _policy_init(config, ctx.run)
        train_ppo_stage.with_options(refresh_cache=_outputs_gone(ctx.run, "ppo"))(config, policy_dir, ctx)
        return ctx.run.require("ppo")


@flow(name="dpo", log_prints=True)
def dpo_flow(config: PipelineConfig, run_dir: str, ctx: StageContext | None = None) -> dict[str, str]:
    """DPO/IPO from the SFT model on the same preference pairs (the baseline next to PPO)."""
    with _stage_context(config, run_dir, ctx) as ctx:
        _apply_threads(config)
        policy_dir = _policy_init(config, ctx.run)
        train_dpo_stage.with_options(refresh_cache=_outputs_gone(ctx.run, "dpo"))(config, policy_dir, ctx)
        return ctx.run.require("dpo")


@flow(name="eval", log_prints=True)
def eval_flow(config: PipelineConfig, run_dir: str, ctx: StageContext | None = None) -> dict[str, str]:
    """PPO (and DPO) vs SFT vs best-of-N on held-out prompts: gold score, reward, KL, refusals; registry decision."""
    with _stage_context(config, run_dir, ctx) as ctx:
        _apply_threads(config)
        evaluate_stage.with_options(refresh_cache=_outputs_gone(ctx.run, "eval"))(config, ctx)
        return ctx.run.require("eval")


@flow(name="rlhf-pipeline", log_prints=True)
def rlhf_pipeline(config: PipelineConfig, resume_run: str | None = None) -> dict:
    """data -> SFT -> reward model -> PPO (+ DPO) -> evaluation, each a subflow and a nested MLflow run.

    ``resume_run``: a run id under <workspace>/runs to (re-)run, finished stages cached; `rlhf run`
    always passes one (it makes the directory first, so an interrupt can name it). None = a new run.
    """
    logger = get_run_logger()
    started = time.perf_counter()
    preflight(config.tracking.tracking_uri, reconcile=False)  # runs started by a worker come straight here
    _apply_threads(config)
    ws = workspace_from(config.workspace)
    # A run id, never a path (`..` wrote into the workspace root). `rlhf run --resume` has also
    # refused a config other than the run's; here (a deployment, a test) a changed config may go
    # on, and training refuses a checkpoint it no longer fits.
    run = ws.existing_run(resume_run, option="resume_run") if resume_run else ws.new_run(config.name)
    run.config.write_text(dump_config(config), encoding="utf-8")
    logger.info("run directory: %s", run.path)
    ctx = _context(config, str(run.path))
    outputs: dict[str, str] = {}
    try:
        outputs["data report"] = data_flow(config, str(run.path), ctx)["report"]
        if config.sft.enabled:
            outputs["sft model"] = sft_flow(config, str(run.path), ctx)["model_dir"]
        if config.reward.enabled:
            reward = reward_flow(config, str(run.path), ctx)
            outputs["reward model"] = reward["model_dir"]
            outputs["reward-model agreement"] = reward["agreement"]
        if config.ppo.enabled and config.reward.enabled:
            outputs["ppo model"] = ppo_flow(config, str(run.path), ctx)["model_dir"]
        if config.dpo.enabled:
            outputs["dpo model"] = dpo_flow(config, str(run.path), ctx)["model_dir"]
        if config.eval.enabled and config.sft.enabled and config.reward.enabled:
            outputs["evaluation"] = eval_flow(config, str(run.path), ctx)["comparison_md"]
        # The headline figures on the parent MLflow run (to compare pipelines in the runs table)
        # and as one artifact on this flow run's page.
        summary = pipeline_summary(ctx, time.perf_counter() - started, gold=config.eval.gold)
        ctx.publish_markdown(
            "pipeline-summary", summary_markdown(summary),
            "Headline figures (reward-model agreement vs the annotators' ceiling, gold win rate, KL) and MLflow links",
        )
        if ctx.tracking_enabled:
            parent = ctx.parent_tracker()
            parent.log_metrics(summary.metrics, step=0)
            if summary.tags:
                parent.set_tags(summary.tags)
            parent.finish("FINISHED", config.tracking.flush_timeout_s)
    except BaseException:
        if ctx.tracking_enabled:
            ctx.parent_tracker().finish_quietly("FAILED")  # never hides the stage's error
        raise
    return {
        "run_dir": str(run.path),
        "outputs": outputs,
        "mlflow_run_id": ctx.parent_run_id or None,
        "experiment_id": ctx.experiment_id,
        "tracking_uri": ctx.tracking_uri,
    }
