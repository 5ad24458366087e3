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


class RegistryConfig(StrictModel):
    """Model registry: every stage model becomes a `candidate`; `champion` moves on evidence."""

    enabled: bool = Field(True, description="Log models and register rlhf-sft / rlhf-reward / rlhf-policy versions.")
    champion_metric: str = Field(
        "eval/mean_gold", description="Evaluation metric compared with the current champion's (higher is better)."
    )
    min_improvement: float = Field(0.0, ge=0, description="How much the candidate must beat the champion by.")
    require_gold_ci_above_zero: bool = Field(
        True, description="Promote only if the 95% CI of gold(policy) - gold(SFT) lies above zero."
    )
