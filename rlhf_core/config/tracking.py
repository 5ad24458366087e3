"""Tracking and registry config (MLflow; code: tasks/tracking.py, tasks/registry.py)."""

from __future__ import annotations

from pydantic import Field, field_validator

from rlhf_core.config.base import StrictModel
from rlhf_core.redact import find_credential

CREDENTIALS_HINT = (
    "keep credentials out of configs: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
    "(or MLFLOW_TRACKING_TOKEN) in the environment for an MLflow server; for a database store drop the "
    "password from the URI and set PGPASSWORD (PostgreSQL) or use ~/.pgpass"
)


class TrackingConfig(StrictModel):
    """Where runs are tracked. The default is an sqlite store inside the workspace (no server)."""

    enabled: bool = Field(True, description="Log params, metrics and artifacts to MLflow.")
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI; default sqlite:///<workspace>/mlflow/mlflow.db. Never with a password in "
        "it: credentials come from the environment (MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or "
        "MLFLOW_TRACKING_TOKEN; PGPASSWORD for a PostgreSQL store).",
    )
    experiment: str | None = Field(None, description="MLflow experiment; default: the pipeline name.")
    log_checkpoints: bool = Field(
        True,
        description="Log each training stage's final checkpoint (weights, optimizer, scheduler, RNG, data position) "
        "as an artifact under checkpoints/; hard-linked, not copied, when the artifact store is a local directory.",
    )
    flush_timeout_s: float = Field(
        60.0, ge=0,
        description="At the end of a stage, how long to keep retrying metrics held back while the tracking "
        "server was unreachable before failing the stage (they stay in <run>/tracking/*.jsonl; "
        "`rlhf tracking flush` sends them later).",
    )

    @field_validator("tracking_uri")
    @classmethod
    def _no_credentials(cls, uri: str | None) -> str | None:
        reason = find_credential(uri) if uri else None
        if reason:
            raise ValueError(f"the URI {reason}: {CREDENTIALS_HINT}")
        return uri


class RegistryConfig(StrictModel):
    """Model registry: every stage model becomes a `candidate`; `champion` moves on evidence."""

    enabled: bool = Field(
        True, description="Log models and register versions of <model_prefix>-sft / -reward / -policy."
    )
    model_prefix: str | None = Field(
        None, min_length=1,
        description="Registered model names start with this; default: the pipeline's `name` (rlhf-demo-policy), "
        "so pipelines never move each other's `candidate`/`champion` aliases.",
    )
    champion_metric: str = Field(
        "eval/mean_gold", description="Evaluation metric compared with the current champion's (higher is better)."
    )
    min_improvement: float = Field(0.0, ge=0, description="How much the candidate must beat the champion by.")
    require_gold_ci_above_zero: bool = Field(
        True, description="Promote only if the 95% CI of gold(policy) - gold(SFT) lies above zero. With "
        "`eval.gold: false` (real data, no gold scorer) the policy is never promoted automatically: it stays "
        "`candidate`, the reason tagged on the version.",
    )
