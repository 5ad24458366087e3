"""Tracking config (MLflow)."""

from __future__ import annotations

from pydantic import Field

from rlhf_core.config import StrictModel


class TrackingConfig(StrictModel):
    """Where runs are tracked. The default is an sqlite store inside the workspace (no server)."""

    enabled: bool = Field(True, description="Log params, metrics and artifacts to MLflow.")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; default sqlite:///<workspace>/mlflow/mlflow.db."
    )
    experiment: str | None = Field(None, description="MLflow experiment; default: the pipeline name.")
