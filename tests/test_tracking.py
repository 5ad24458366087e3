"""Tracking, registry and stage-context logic against a real MLflow sqlite store."""

from __future__ import annotations

import pytest

from tasks import tracking
from tasks.artifacts import workspace_from
from tasks.context import StageContext
from tasks.data import data_metrics


@pytest.fixture()
def store(tmp_path):
    ws = workspace_from(tmp_path)
    experiment_id = tracking.configure(ws.mlflow_uri, ws.mlflow_artifacts, "test-exp")
    yield ws, experiment_id
    import mlflow

    mlflow.set_tracking_uri(None)


def test_metric_names_mlflow_rejects_are_made_safe():
    assert tracking.metric_name("data/rows_dropped/validate/x/labels_in(0,1)") == "data/rows_dropped/validate/x/labels_in_0_1"
    assert tracking.metric_name("rm/agreement_topic/home repair") == "rm/agreement_topic/home repair"


def test_data_report_becomes_the_named_metrics():
    report = {
        "rows_in": 10, "rows_kept": 6,
        "totals": {
            "preferences": {"rows_in": 6, "rows_kept": 3, "dropped": {"dedup:near_duplicate": 2, "refusal:refusal": 1}},
            "rl_prompts": {"rows_in": 4, "rows_kept": 3, "dropped": {"dedup:near_duplicate": 1}},
        },
        "coverage": {"share_rl_inside": 0.75, "share_preference_topics_reached": 1.0},
    }
    metrics = data_metrics(report)
    assert metrics["data/rows_in"] == metrics["data/rows_kept"] + metrics["data/rows_dropped"] == 10
    assert metrics["data/rows_dropped/dedup/near_duplicate"] == 3
    assert metrics["data/rl_prompt_coverage"] == 0.75


def test_stage_runs_nest_under_the_parent_and_record_failure(store):
    from mlflow.tracking import MlflowClient

    ws, experiment_id = store
    parent = tracking.start_parent_run(experiment_id, "p")
    with tracking.stage_run(parent.run_id, experiment_id, "sft") as stage:
        stage.log_metrics({"sft/loss": 1.5, "bad": float("nan")}, step=3)
    with pytest.raises(RuntimeError):
        with tracking.stage_run(parent.run_id, experiment_id, "reward"):
            raise RuntimeError("boom")
    client = MlflowClient()
    children = {r.data.tags["rlhf.stage"]: r for r in client.search_runs(
        [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.run_id}'")}
    assert children["sft"].info.status == "FINISHED" and children["sft"].data.metrics == {"sft/loss": 1.5}
    assert children["reward"].info.status == "FAILED"
    experiment = client.get_experiment(experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_tracking_off_gives_a_null_stage_run(tmp_path):
    ctx = StageContext(run_dir=str(tmp_path), parent_run_id="", experiment_id="", tracking_uri="",
                       tracking_enabled=False)
    with ctx.stage_run("sft") as tracker:
        tracker.log_metrics({"sft/loss": 1.0}, step=0)
        tracker.log_artifact(tmp_path, "x")
        assert tracker.run_id is None
    assert ctx.mlflow_run_link("abc") == "tracking off"
    assert not (tmp_path / "mlflow").exists()


def test_champion_moves_only_on_evidence(store, tmp_path):
    from mlflow.tracking import MlflowClient

    from tasks.registry import CANDIDATE, CHAMPION, find_version, promote_if_better, register_candidate

    ws, experiment_id = store
    client = MlflowClient()
    versions = []
    for i in range(3):
        model_dir = tmp_path / f"model{i}"
        model_dir.mkdir()
        (model_dir / "config.json").write_text("{}")
        with tracking.stage_run(tracking.start_parent_run(experiment_id, f"p{i}").run_id, experiment_id, "ppo") as t:
            versions.append(register_candidate(t, model_dir, "rlhf-policy"))
        assert client.get_model_version_by_alias("rlhf-policy", CANDIDATE).version == versions[-1]
        assert find_version(client, "rlhf-policy", str(model_dir)) == versions[-1]
    kw = {"metric": "eval/mean_gold", "min_improvement": 0.0, "gate_reason": "ci low > 0"}
    assert promote_if_better(client, "rlhf-policy", versions[0], 0.30, gate=True, **kw)[0]
    # better score but the gate (CI above zero) fails: champion stays
    promoted, decision = promote_if_better(client, "rlhf-policy", versions[1], 0.50, gate=False, **kw)
    assert not promoted and "gate failed" in decision
    assert client.get_model_version_by_alias("rlhf-policy", CHAMPION).version == versions[0]
    # gate holds but the score is worse: champion stays; then a better one moves it
    assert not promote_if_better(client, "rlhf-policy", versions[1], 0.20, gate=True, **kw)[0]
    assert promote_if_better(client, "rlhf-policy", versions[2], 0.40, gate=True, **kw)[0]
    champion = client.get_model_version_by_alias("rlhf-policy", CHAMPION)
    assert champion.version == versions[2] and "promoted" in champion.tags["promotion_decision"]
    assert "eval/mean_gold" in champion.tags["promotion_rule"]
