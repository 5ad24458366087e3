"""MLflow tracking for the pipeline: one parent run per pipeline run, a nested run per stage.

Training loops in rlhf_core take a ``Tracker`` (``log_metrics``/``log_params``/
``log_artifact``); :class:`MlflowTracker` is the MLflow implementation, bound to one
MLflow run id so it works from any thread (Prefect tasks may run in worker threads,
where MLflow's "active run" stack is not visible).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rlhf_core.tracking import NullTracker, flatten_params

# Keep MLflow quiet and local: no telemetry, no progress bars in logs.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


_METRIC_NAME_BAD = re.compile(r"[^A-Za-z0-9_\-. :/]+")


def metric_name(name: str) -> str:
    """MLflow accepts alphanumerics, `_ - . : /` and spaces; anything else becomes `_`."""
    return _METRIC_NAME_BAD.sub("_", name).strip("_") or "_"


class MlflowTracker:
    """Logs to one MLflow run through the client API (thread-safe, batched)."""

    def __init__(self, run_id: str, tracking_uri: str | None = None) -> None:
        from mlflow.tracking import MlflowClient

        self.run_id = run_id
        self.client = MlflowClient(tracking_uri=tracking_uri)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """All metrics of one step in one batched call; NaN/inf are skipped (MLflow rejects some)."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(metric_name(key), float(value), now, int(step))
            for key, value in metrics.items()
            if value is not None and math.isfinite(float(value))
        ]
        for i in range(0, len(batch), 1000):  # MLflow's per-request metric limit
            self.client.log_batch(self.run_id, metrics=batch[i : i + 1000])

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        flat = flatten_params(params)
        batch = [Param(k, json.dumps(v) if isinstance(v, (list, tuple)) else str(v)[:6000]) for k, v in flat.items()]
        for i in range(0, len(batch), 100):  # MLflow's per-request param limit
            self.client.log_batch(self.run_id, params=batch[i : i + 100])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def log_dataset(self, frame: Any, path: Path, name: str) -> None:
        """Record a dataset a stage used as an MLflow run input (with its digest)."""
        import warnings

        import mlflow.data
        from mlflow.entities import DatasetInput, InputTag

        with warnings.catch_warnings():  # MLflow registers the local source class twice
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(frame, source=str(path), name=name)
        # what mlflow.log_input does, bound to this run instead of the thread's active run
        entity = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", name)])
        self.client.log_inputs(self.run_id, datasets=[entity])


class NullStageTracker(NullTracker):
    """What a stage logs to when tracking is off (`tracking.enabled: false`)."""

    run_id = None

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        return None

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        return None

    def log_dataset(self, frame: Any, path: Path, name: str) -> None:
        return None


def configure(tracking_uri: str, artifact_root: Path, experiment: str) -> str:
    """Point MLflow at the store and make sure the experiment exists; return its id."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    existing = mlflow.get_experiment_by_name(experiment)
    if existing is not None:
        return existing.experiment_id
    artifact_root.mkdir(parents=True, exist_ok=True)
    # Without the kind tag MLflow 3 opens a new experiment in its GenAI "Evaluations" view.
    return mlflow.create_experiment(
        experiment, artifact_location=artifact_root.resolve().as_uri(),
        tags={"mlflow.experimentKind": "custom_model_development"},
    )


@contextmanager
def stage_run(parent_run_id: str, experiment_id: str, stage: str, tags: Mapping[str, str] | None = None) -> Iterator[MlflowTracker]:
    """A nested MLflow run for one stage; marked FAILED if the stage raises."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    run = client.create_run(
        experiment_id,
        run_name=stage,
        tags={"mlflow.parentRunId": parent_run_id, "rlhf.stage": stage, **(tags or {})},
    )
    tracker = MlflowTracker(run.info.run_id)
    try:
        yield tracker
    except BaseException:
        client.set_terminated(run.info.run_id, status="FAILED")
        raise
    client.set_terminated(run.info.run_id, status="FINISHED")


def start_parent_run(experiment_id: str, run_name: str, tags: Mapping[str, str] | None = None) -> MlflowTracker:
    """The pipeline's top-level MLflow run; stage runs nest under it."""
    from mlflow.tracking import MlflowClient

    run = MlflowClient().create_run(experiment_id, run_name=run_name, tags=dict(tags or {}))
    return MlflowTracker(run.info.run_id)


def reopen_run(run_id: str, tags: Mapping[str, str] | None = None) -> None:
    """Mark a resumed pipeline's parent run as running again (a crashed run was marked FAILED)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    client.update_run(run_id, status="RUNNING")
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, value)


def end_run(run_id: str, status: str = "FINISHED") -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient().set_terminated(run_id, status=status)


def run_link(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI page of a run when tracking goes to a server; otherwise how to open it."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"run {run_id} in {tracking_uri} (open with `rlhf ui`)"
