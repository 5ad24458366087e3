"""Tracking, registry and stage-context logic against a real MLflow sqlite store."""

from __future__ import annotations

from pathlib import Path

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


def _stage_model_dir(path, payload: bytes):
    """A stage model directory as the trainers leave it: weights, a tokenizer file, the stage marker last."""
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(payload)
    (path / "tokenizer").mkdir()
    (path / "tokenizer" / "tokenizer.json").write_text('{"v": 1}')
    (path / tracking.STAGE_MARKER).write_text('{"stage": "sft"}')
    return path


def test_a_stage_model_is_hard_linked_into_a_local_artifact_store_and_registered(store, tmp_path):
    import os

    import mlflow
    from mlflow.tracking import MlflowClient

    from rlhf_core.training import replace_dir
    from tasks.registry import register_candidate

    ws, experiment_id = store
    payload = os.urandom(1 << 20)
    model_dir = _stage_model_dir(tmp_path / "run" / "sft" / "model", payload)
    data_dir = tmp_path / "run" / "data"
    data_dir.mkdir()
    (data_dir / "report.json").write_text("{}")
    parent = tracking.start_parent_run(experiment_id, "p")
    with tracking.stage_run(parent.run_id, experiment_id, "sft") as tracker:
        tracker.log_artifact(model_dir)  # as the trainers do
        tracker.log_artifact(data_dir, "data")
        version = register_candidate(tracker, model_dir, "rlhf-sft")
    local = tracker.local_artifact_dir()
    assert local is not None and local.is_relative_to(ws.mlflow_artifacts.resolve())
    logged = local / "model" / "model.safetensors"
    assert logged.read_bytes() == payload
    assert os.path.samefile(logged, model_dir / "model.safetensors") and logged.stat().st_nlink == 2
    assert os.path.samefile(local / "model" / "tokenizer" / "tokenizer.json", model_dir / "tokenizer" / "tokenizer.json")
    # not a stage model (rewritten in place when the stage re-runs): copied, not linked
    assert (local / "data" / "report.json").read_text() == "{}"
    assert not os.path.samefile(local / "data" / "report.json", data_dir / "report.json")
    client = MlflowClient()
    listed = {a.path for a in client.list_artifacts(tracker.run_id, "model")}
    assert listed == {"model/model.safetensors", "model/tokenizer", f"model/{tracking.STAGE_MARKER}"}  # no temp names
    # the registered version resolves to the same bytes
    fetched = mlflow.artifacts.download_artifacts(f"models:/rlhf-sft/{version}", dst_path=str(tmp_path / "dl"))
    assert (Path(fetched) / "model.safetensors").read_bytes() == payload
    assert (Path(fetched) / tracking.STAGE_MARKER).is_file()
    # a re-trained model replaces the stage directory (new inodes): the logged artifact keeps its bytes
    tmp = _stage_model_dir(tmp_path / "run" / "sft" / ".tmp-model-x", b"newer weights")
    replace_dir(tmp, model_dir)
    assert (model_dir / "model.safetensors").read_bytes() == b"newer weights"
    assert logged.read_bytes() == payload and logged.stat().st_nlink == 1


def test_linking_falls_back_to_a_copy_across_devices(tmp_path, monkeypatch):
    import errno
    import os

    src = _stage_model_dir(tmp_path / "model", b"weights")
    # a real second filesystem when there is one (tmpfs /dev/shm), else the EXDEV os.link raises there
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK) and os.stat(shm).st_dev != os.stat(tmp_path).st_dev:
        import tempfile

        with tempfile.TemporaryDirectory(dir=shm) as other:
            assert tracking.link_tree(src, Path(other) / "model") == {"linked": 0, "copied": 3}
            assert (Path(other) / "model" / "model.safetensors").read_bytes() == b"weights"

    def cross_device(*_args, **_kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    dst = tmp_path / "artifacts" / "model"
    assert tracking.link_tree(src, dst) == {"linked": 0, "copied": 3}
    copied = dst / "model.safetensors"
    assert copied.read_bytes() == b"weights" and not os.path.samefile(copied, src / "model.safetensors")
    assert sorted(p.name for p in dst.iterdir()) == sorted(p.name for p in src.iterdir())  # no temp files left


def test_linking_again_is_idempotent_and_replaces_a_stale_file(tmp_path):
    import os

    src = _stage_model_dir(tmp_path / "model", b"weights")
    dst = tmp_path / "artifacts" / "model"
    dst.mkdir(parents=True)
    (dst / "model.safetensors").write_bytes(b"stale")
    assert tracking.link_tree(src, dst) == {"linked": 3, "copied": 0}
    assert tracking.link_tree(src, dst) == {"linked": 3, "copied": 0}
    assert os.path.samefile(dst / "model.safetensors", src / "model.safetensors")
    assert not [p for p in dst.iterdir() if p.name.startswith(".")]


def test_a_new_workspace_store_is_prepared_while_prefect_starts(tmp_path):
    """`rlhf run` creates a new workspace's MLflow store in a thread (beside Prefect's start-up)."""
    from mlflow.tracking import MlflowClient

    from flows.config import load_config
    from flows.pipeline import _warm_mlflow_store

    cfg = load_config("smoke", [f"workspace={tmp_path}"])
    ws = workspace_from(tmp_path)
    assert not (ws.mlflow_dir / "mlflow.db").exists()
    thread = _warm_mlflow_store(cfg)
    assert thread is not None
    thread.join(timeout=120)
    assert not thread.is_alive()
    experiment = MlflowClient(ws.mlflow_uri).get_experiment_by_name(cfg.name)
    assert experiment is not None and experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    # the flow's own configure then finds it ready (same experiment, not a second one)
    assert tracking.configure(ws.mlflow_uri, ws.mlflow_artifacts, cfg.name) == experiment.experiment_id
    assert _warm_mlflow_store(load_config("smoke", [f"workspace={tmp_path}", "tracking.enabled=false"])) is None
    remote = load_config("smoke", [f"workspace={tmp_path}", "tracking.tracking_uri=http://127.0.0.1:9"])
    assert _warm_mlflow_store(remote) is None  # a server: left to the preflight
    import mlflow

    mlflow.set_tracking_uri(None)
