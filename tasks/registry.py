"""MLflow model registry: every new stage model is a `candidate`; `champion` moves on evidence.

Each pipeline registers its own models, named after it (:func:`registered_model_name`:
`rlhf-demo-sft`, `rlhf-demo-reward`, `rlhf-demo-policy` for the pipeline `rlhf-demo`), so a smoke
run never moves the demo's aliases. Models are logged as HF-format directories (safetensors +
tokenizer + `rlhf_stage.json`) under the stage run's `model/` artifact path and registered from
there, so `models:/rlhf-demo-policy@champion` resolves to a directory `from_pretrained` can load.
"""

from __future__ import annotations

from pathlib import Path

from tasks.tracking import MlflowTracker

CANDIDATE, CHAMPION = "candidate", "champion"
MODEL_KINDS = ("sft", "reward", "policy")


def registered_model_name(prefix: str, kind: str) -> str:
    """``<prefix>-<kind>``: the prefix is ``registry.model_prefix``, by default the pipeline's name."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind '{kind}' (known: {', '.join(MODEL_KINDS)})")
    return f"{prefix}-{kind}"


def register_candidate(tracker: MlflowTracker, model_dir: Path, name: str) -> str:
    """Log `model_dir` to the tracker's run and register it as a new version of `name` (alias `candidate`)."""
    from mlflow.exceptions import MlflowException

    client = tracker.client
    if not any(a.path == "model" and a.is_dir for a in client.list_artifacts(tracker.run_id)):
        tracker.log_artifact(model_dir, "model")  # the trainers log it already: never copy a model twice
    try:
        client.create_registered_model(name, description="Registered by rlhf-pipeline.")
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code if hasattr(exc, "error_code") else exc):
            raise
    source = f"{client.get_run(tracker.run_id).info.artifact_uri}/model"
    version = client.create_model_version(name, source, run_id=tracker.run_id, tags={"rlhf.stage_dir": str(model_dir)})
    client.set_registered_model_alias(name, CANDIDATE, version.version)
    tracker.set_tags({f"registry.{name}": version.version})
    return version.version


def promote_if_better(
    client, name: str, version: str, score: float, *, metric: str, min_improvement: float, gate: bool, gate_reason: str
) -> tuple[bool, str]:
    """Move `champion` to `version` when `gate` holds and `score` beats the champion's by `min_improvement`.

    The rule and the decision are recorded as tags on the version, so the UI shows why.
    """
    from mlflow.exceptions import MlflowException

    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        current = None
    client.set_model_version_tag(name, version, metric, str(score))
    rule = f"{gate_reason}; and {metric} > champion's {metric} + {min_improvement}"
    if not gate:
        kept = f"kept champion v{current.version}" if current is not None else "not promoted (no champion yet)"
        decision, promote = f"{kept}: gate failed ({gate_reason})", False
    elif current is None:
        decision, promote = "first champion", True
    else:
        best = float(current.tags.get(metric, "-inf"))
        promote = score > best + min_improvement
        decision = (
            f"{'promoted' if promote else 'kept champion'}: {metric} {score:.4f} vs champion v{current.version} {best:.4f}"
        )
    client.set_model_version_tag(name, version, "promotion_rule", rule)
    client.set_model_version_tag(name, version, "promotion_decision", decision)
    if promote:
        client.set_registered_model_alias(name, CHAMPION, version)
    return promote, decision


def find_version(client, name: str, model_dir: str) -> str | None:
    """The registered version of `name` made from the stage model directory `model_dir`."""
    for version in client.search_model_versions(f"name='{name}'"):
        if version.tags.get("rlhf.stage_dir") == str(model_dir):
            return version.version
    return None
