"""What every stage task needs: its run directory, its MLflow parent, and where to publish."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from typing import Any

from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy
from prefect.utilities.hashing import hash_objects
from pydantic import BaseModel

from tasks import tracking
from tasks.artifacts import RunDir


def _workspace_relative(value: Any, root: str) -> Any:
    """``value`` with every path inside the workspace ``root`` written relative to it."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, dict):
        return {k: _workspace_relative(v, root) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_workspace_relative(v, root) for v in value]
    if isinstance(value, str) and (value == root or value.startswith(root + "/")):
        return "<workspace>" + value[len(root):]
    return value


def stage_inputs_key(task_ctx: Any, parameters: dict[str, Any]) -> str | None:
    """A stage task's inputs hashed with the workspace's own paths made relative, so a copied or
    moved workspace resumes with its finished stages skipped: every parameter but ``ctx``, and of
    ``ctx`` only its run directory (its MLflow and Prefect ids change from one attempt to the next)."""
    ctx = parameters.get("ctx")
    if ctx is None:
        return None
    root = str(Path(ctx.run_dir).resolve().parent.parent)
    inputs = {k: _workspace_relative(v, root) for k, v in parameters.items() if k != "ctx"}
    inputs["run_dir"] = _workspace_relative(ctx.run_dir, root)
    return hash_objects(inputs, raise_on_failure=True)


# A finished stage is skipped on re-runs of the same run directory (in this workspace or a copy
# of it) with the same config and code. The flow refreshes the cache when a stage's recorded
# outputs have gone missing (see flows/stages.py).
STAGE_CACHE = CacheKeyFnPolicy(cache_key_fn=stage_inputs_key) + TASK_SOURCE


@dataclass(frozen=True)
class StageContext:
    """Plain data (a Prefect parameter): the run directory and the MLflow/Prefect ids."""

    run_dir: str
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    prefect_flow_run_id: str = ""
    register_models: bool = True
    tracking_enabled: bool = True
    tracking_flush_timeout_s: float = tracking.DEFAULT_FLUSH_TIMEOUT_S
    log_checkpoints: bool = True
    model_prefix: str = "rlhf-pipeline"  # registered models are <model_prefix>-sft/-reward/-policy

    @property
    def run(self) -> RunDir:
        return RunDir(Path(self.run_dir))

    def stage_run(self, stage: str):
        """A nested MLflow run for one stage, tagged with the Prefect flow-run id (a null one when tracking is off)."""
        if not self.tracking_enabled:
            return nullcontext(tracking.NullStageTracker())
        return tracking.stage_run(
            self.parent_run_id, self.experiment_id, stage, tags={"prefect.flow_run_id": self.prefect_flow_run_id},
            spool_dir=self.run.path / tracking.SPOOL_DIR, flush_timeout_s=self.tracking_flush_timeout_s,
        )

    def parent_tracker(self) -> tracking.MlflowTracker:
        """The pipeline's parent MLflow run, its metrics spooled like a stage's (tracking must be on)."""
        spool = self.run.path / tracking.SPOOL_DIR / f"pipeline-{self.parent_run_id}.jsonl"
        return tracking.MlflowTracker(self.parent_run_id, self.tracking_uri, spool=spool, stage="pipeline")

    def mlflow_run_link(self, run_id: str, label: str = "MLflow run") -> str:
        """A Markdown link to a run's page in the MLflow UI (see :meth:`mlflow_note`)."""
        if not self.tracking_enabled:
            return "tracking off"
        return tracking.run_link(self.tracking_uri, self.experiment_id, run_id, label)

    def mlflow_note(self) -> str:
        """What must run for the MLflow links to open ('' with a tracking server)."""
        return tracking.ui_note(self.tracking_uri) if self.tracking_enabled else ""

    def registered_model(self, kind: str) -> str:
        """The registry name of this pipeline's ``kind`` model (sft, reward, policy): pipelines never share one."""
        from tasks.registry import registered_model_name

        return registered_model_name(self.model_prefix, kind)

    def register(self, tracker: tracking.MlflowTracker, model_dir: Path, kind: str) -> None:
        """Log a stage's HF-format model and register it as `<model_prefix>-<kind>` with the `candidate` alias."""
        if self.register_models and self.tracking_enabled:
            from tasks.registry import register_candidate

            register_candidate(tracker, model_dir, self.registered_model(kind))

    def log_checkpoint(self, tracker: tracking.MlflowTracker, checkpoint_dir: Path | str | None) -> None:
        """The stage's final training checkpoint as the artifact ``checkpoints/<step-N>`` (when configured)."""
        if self.tracking_enabled and self.log_checkpoints and checkpoint_dir is not None:
            tracker.log_artifact(Path(checkpoint_dir), f"checkpoints/{Path(checkpoint_dir).name}")

    def publish_markdown(self, key: str, markdown: str, description: str) -> None:
        """A Markdown artifact on the Prefect run page (skipped when called outside a Prefect run)."""
        from prefect.artifacts import create_markdown_artifact

        from rlhf_core.redact import redact_text

        if _in_prefect_run():
            create_markdown_artifact(redact_text(markdown), key=key, description=redact_text(description))

    def publish_agreement(self, metrics: dict[str, float], n_pairs: int, run_id: str | None) -> None:
        """The reward-model agreement table on the Prefect flow-run page, headline rows first;
        ``run_id``: the reward stage's MLflow run it links to."""
        from prefect.artifacts import create_table_artifact

        from rlhf_core.redact import redact_text
        from tasks.summary import agreement_rows

        if not _in_prefect_run():
            return
        link = self.mlflow_run_link(run_id, "reward stage run") if run_id else "tracking off"
        note = self.mlflow_note()
        create_table_artifact(
            agreement_rows(metrics), key="reward-model-agreement",
            description=redact_text(
                f"Reward-model agreement on {n_pairs} held-out pairs, beside the annotators' own ceiling. "
                f"MLflow: {link}" + (f". {note}" if note else "")
            ),
        )


def _in_prefect_run() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return TaskRunContext.get() is not None or FlowRunContext.get() is not None
