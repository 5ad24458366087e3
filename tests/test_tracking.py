"""Tracking, registry and stage-context logic against a real MLflow sqlite store."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhf_core.stage_io import STAGE_MARKER
from rlhf_core.tracking import metric_name
from tasks import tracking
from tasks.artifact_links import link_tree
from tasks.artifacts import workspace_from
from tasks.context import StageContext
from tasks.stages.data import data_metrics


@pytest.fixture()
def store(tmp_path):
    ws = workspace_from(tmp_path)
    experiment_id = tracking.configure(ws.mlflow_uri, ws.mlflow_artifacts, "test-exp")
    yield ws, experiment_id
    import mlflow

    mlflow.set_tracking_uri(None)


def test_metric_names_mlflow_rejects_are_made_safe():
    assert metric_name("data/rows_dropped/validate/x/labels_in(0,1)") == "data/rows_dropped/validate/x/labels_in_0_1"
    assert metric_name("rm/agreement_topic/home repair") == "rm/agreement_topic/home repair"


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
    assert ctx.mlflow_run_link("abc") == "tracking off" and ctx.mlflow_note() == ""
    assert not (tmp_path / "mlflow").exists()


def test_champion_moves_only_on_evidence(store, tmp_path):
    from mlflow.tracking import MlflowClient

    from tasks.registry import CANDIDATE, CHAMPION, find_version, promote_if_better, register_candidate

    ws, experiment_id = store
    client = MlflowClient()
    policy = "rlhf-demo-policy"
    versions = []
    for i in range(3):
        model_dir = tmp_path / f"model{i}"
        model_dir.mkdir()
        (model_dir / "config.json").write_text("{}")
        with tracking.stage_run(tracking.start_parent_run(experiment_id, f"p{i}").run_id, experiment_id, "ppo") as t:
            versions.append(register_candidate(t, model_dir, policy))
        assert client.get_model_version_by_alias(policy, CANDIDATE).version == versions[-1]
        assert find_version(client, policy, str(model_dir)) == versions[-1]
    kw = {"metric": "eval/mean_gold", "min_improvement": 0.0, "gate_reason": "ci low > 0"}
    assert promote_if_better(client, policy, versions[0], 0.30, gate=True, **kw)[0]
    # better score but the gate (CI above zero) fails: champion stays
    promoted, decision = promote_if_better(client, policy, versions[1], 0.50, gate=False, **kw)
    assert not promoted and "gate failed" in decision
    assert client.get_model_version_by_alias(policy, CHAMPION).version == versions[0]
    # gate holds but the score is worse: champion stays; then a better one moves it
    assert not promote_if_better(client, policy, versions[1], 0.20, gate=True, **kw)[0]
    assert promote_if_better(client, policy, versions[2], 0.40, gate=True, **kw)[0]
    champion = client.get_model_version_by_alias(policy, CHAMPION)
    assert champion.version == versions[2] and "promoted" in champion.tags["promotion_decision"]
    assert "eval/mean_gold" in champion.tags["promotion_rule"]


def _stage_model_dir(path, payload: bytes):
    """A stage model directory as the trainers leave it: weights, a tokenizer file, the stage marker last."""
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(payload)
    (path / "tokenizer").mkdir()
    (path / "tokenizer" / "tokenizer.json").write_text('{"v": 1}')
    (path / STAGE_MARKER).write_text('{"stage": "sft"}')
    return path


def test_a_stage_model_is_hard_linked_into_a_local_artifact_store_and_registered(store, tmp_path):
    import os

    import mlflow
    from mlflow.tracking import MlflowClient

    from rlhf_core.stage_io import replace_dir
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
        version = register_candidate(tracker, model_dir, "rlhf-demo-sft")
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
    assert listed == {"model/model.safetensors", "model/tokenizer", f"model/{STAGE_MARKER}"}  # no temp names
    # the registered version resolves to the same bytes
    fetched = mlflow.artifacts.download_artifacts(f"models:/rlhf-demo-sft/{version}", dst_path=str(tmp_path / "dl"))
    assert (Path(fetched) / "model.safetensors").read_bytes() == payload
    assert (Path(fetched) / STAGE_MARKER).is_file()
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
            assert link_tree(src, Path(other) / "model") == {"linked": 0, "copied": 3}
            assert (Path(other) / "model" / "model.safetensors").read_bytes() == b"weights"

    def cross_device(*_args, **_kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    dst = tmp_path / "artifacts" / "model"
    assert link_tree(src, dst) == {"linked": 0, "copied": 3}
    copied = dst / "model.safetensors"
    assert copied.read_bytes() == b"weights" and not os.path.samefile(copied, src / "model.safetensors")
    assert sorted(p.name for p in dst.iterdir()) == sorted(p.name for p in src.iterdir())  # no temp files left


def test_linking_again_is_idempotent_and_replaces_a_stale_file(tmp_path):
    import os

    src = _stage_model_dir(tmp_path / "model", b"weights")
    dst = tmp_path / "artifacts" / "model"
    dst.mkdir(parents=True)
    (dst / "model.safetensors").write_bytes(b"stale")
    assert link_tree(src, dst) == {"linked": 3, "copied": 0}
    assert link_tree(src, dst) == {"linked": 3, "copied": 0}
    assert os.path.samefile(dst / "model.safetensors", src / "model.safetensors")
    assert not [p for p in dst.iterdir() if p.name.startswith(".")]


def test_a_new_workspace_store_is_prepared_while_prefect_starts(tmp_path):
    """`rlhf run` creates a new workspace's MLflow store in a thread (beside Prefect's start-up)."""
    from mlflow.tracking import MlflowClient

    from flows.pipeline import _warm_mlflow_store
    from rlhf_core.config.pipeline import load_config

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


# ----------------------------------------------------------------------------- links, registry names, summary
def test_links_open_the_model_training_pages_of_the_mlflow_ui(tmp_path):
    """MLflow 3.17 shows an experiment in its GenAI layout unless the URL says workflowType=machine_learning
    (the experimentKind tag is no longer read): every link we print carries it."""
    from flows.servers import DEFAULT_MLFLOW_PORT

    server = "http://mlflow.example:8080/"
    assert tracking.run_url(server, "3", "abc") == "http://mlflow.example:8080/#/experiments/3/runs/abc?workflowType=machine_learning"
    assert tracking.experiment_url(server, "3") == "http://mlflow.example:8080/#/experiments/3/runs?workflowType=machine_learning"
    assert tracking.ui_note(server) == ""
    # a workspace's local store: the URL where `rlhf ui` serves that store, and how to start it
    ws = workspace_from(tmp_path / "ws")
    assert tracking.LOCAL_UI_URL == f"http://127.0.0.1:{DEFAULT_MLFLOW_PORT}"
    link = tracking.run_link(ws.mlflow_uri, "1", "abc", "reward stage run")
    assert link == "[reward stage run](http://127.0.0.1:5000/#/experiments/1/runs/abc?workflowType=machine_learning)"
    assert f"`rlhf ui --workspace {(tmp_path / 'ws').resolve()}`" in tracking.ui_note(ws.mlflow_uri)
    # another local store: `rlhf ui` does not serve it, `mlflow ui` does (on the same default port)
    assert "`mlflow ui --backend-store-uri sqlite:///x.db`" in tracking.ui_note("sqlite:///x.db")


def test_stage_context_links_name_the_run_and_registry_names_carry_the_pipeline(tmp_path):
    from rlhf_core.config.pipeline import load_config
    from tasks.registry import registered_model_name

    ctx = StageContext(run_dir=str(tmp_path), parent_run_id="p1", experiment_id="7", tracking_uri="http://h:1",
                       model_prefix="rlhf-smoke")
    assert ctx.mlflow_run_link("r1", "eval stage run") == "[eval stage run](http://h:1/#/experiments/7/runs/r1?workflowType=machine_learning)"
    assert [ctx.registered_model(k) for k in ("sft", "reward", "policy")] == ["rlhf-smoke-sft", "rlhf-smoke-reward", "rlhf-smoke-policy"]
    with pytest.raises(ValueError, match="unknown model kind 'ppo'"):
        registered_model_name("rlhf-smoke", "ppo")
    # the prefix defaults to the pipeline's name; registry.model_prefix overrides it
    assert load_config("smoke").registry.model_prefix is None
    assert load_config("demo", ["registry.model_prefix=team-a"]).registry.model_prefix == "team-a"


def test_a_copied_workspace_points_its_store_at_its_own_artifacts(tmp_path, caplog):
    """`cp -r` of a workspace, original moved away: the copy's MLflow store finds every artifact in the copy."""
    import logging
    import shutil

    import mlflow
    from mlflow.tracking import MlflowClient

    from tasks.mlflow_store import relocate

    original, copy = workspace_from(tmp_path / "original"), workspace_from(tmp_path / "copy")
    try:
        experiment_id = tracking.configure(original.mlflow_uri, original.mlflow_artifacts, "exp")
        client = MlflowClient(original.mlflow_uri)
        run = client.create_run(experiment_id, tags={"rlhf.run_dir": str(original.runs.resolve() / "r1")})
        client.log_param(run.info.run_id, "workspace", str(original.root.resolve()))
        weights = tmp_path / "model" / "model.safetensors"
        weights.parent.mkdir()
        weights.write_bytes(b"weights")
        client.log_artifact(run.info.run_id, str(weights), "model")
        client.create_registered_model("exp-sft")
        version = client.create_model_version("exp-sft", f"{run.info.artifact_uri}/model", run.info.run_id)
        client.set_model_version_tag("exp-sft", version.version, "model_dir", str(original.runs.resolve() / "r1/sft/model"))
        client.set_terminated(run.info.run_id)

        shutil.copytree(original.root, copy.root)
        shutil.move(original.root, tmp_path / "gone")  # nothing may still point there
        caplog.set_level(logging.WARNING, logger="rlhf.tracking")
        assert tracking.configure(copy.mlflow_uri, copy.mlflow_artifacts, "exp") == experiment_id
        (message,) = [r.getMessage() for r in caplog.records if r.name == "rlhf.tracking"]
        assert str(original.root.resolve()) in message and str(copy.mlflow_artifacts.resolve()) in message

        own = copy.mlflow_artifacts.resolve().as_uri()
        client = MlflowClient(copy.mlflow_uri)
        assert client.get_experiment(experiment_id).artifact_location == own
        moved = client.get_run(run.info.run_id)
        assert moved.info.artifact_uri.startswith(own + "/")
        assert moved.data.tags["rlhf.run_dir"] == str(copy.runs.resolve() / "r1")
        assert moved.data.params["workspace"] == str(original.root.resolve())  # params record what was run
        fetched = client.download_artifacts(run.info.run_id, "model/model.safetensors", str(tmp_path / "dl"))
        assert Path(fetched).read_bytes() == b"weights"
        mv = client.get_model_version("exp-sft", version.version)
        assert mv.source.startswith(own + "/") and mv.tags["model_dir"] == str(copy.runs.resolve() / "r1/sft/model")
        assert tracking.stale_artifact_location(copy.mlflow_uri, own, copy.mlflow_artifacts) is None
        assert relocate(copy.root) == []  # done once; a second open changes nothing
        # a tracking server's experiment locations are not judged against the local workspace
        assert tracking.stale_artifact_location("http://h:1", str(tmp_path / "gone"), copy.mlflow_artifacts) is None
    finally:
        mlflow.set_tracking_uri(None)


def test_headline_metrics_pick_the_figures_a_person_compares():
    from tasks.summary import HEADLINES, WALL_SECONDS, headline_metrics

    logged = {
        "rm/agreement_majority": 0.7, "rm/agreement_majority_ci_low": 0.65, "rm/agreement_majority_ci_high": 0.75,
        "rm/agreement_ceiling": 0.73, "rm/ceiling_gap": 0.03, "rm/agreement_topic/cooking": 0.5, "rm/loss": 0.6,
        "eval/gold_win_rate_vs_sft": 0.62, "eval/gold_win_rate_vs_sft_ci_low": 0.53, "eval/gold_win_rate_vs_sft_ci_high": 0.72,
        "eval/gold_delta": 0.08, "eval/kl_to_ref": 3.2, "eval/kl_to_ref_ci_low": 2.9, "eval/mean_rm": 1.0,
        "eval/best-of-4/gold_delta": 0.1, "eval/rm_gold_agreement_on_policy": float("nan"), WALL_SECONDS: 600.0,
    }
    picked = headline_metrics(logged)
    assert picked == {
        "rm/agreement_majority": 0.7, "rm/agreement_majority_ci_low": 0.65, "rm/agreement_majority_ci_high": 0.75,
        "rm/agreement_ceiling": 0.73, "rm/ceiling_gap": 0.03,
        "eval/gold_win_rate_vs_sft": 0.62, "eval/gold_win_rate_vs_sft_ci_low": 0.53, "eval/gold_win_rate_vs_sft_ci_high": 0.72,
        "eval/gold_delta": 0.08, "eval/kl_to_ref": 3.2, WALL_SECONDS: 600.0,
    }  # no per-topic, per-method or training metric, no NaN, and only the intervals of figures that carry one
    assert len(HEADLINES) <= 12  # a handful: the parent run's metrics must stay readable


def test_summary_markdown_shows_values_intervals_and_links():
    from tasks.summary import PipelineSummary, summary_markdown

    summary = PipelineSummary(
        {"rm/agreement_majority": 0.7, "rm/agreement_majority_ci_low": 0.65, "rm/agreement_majority_ci_high": 0.75,
         "eval/gold_delta": 0.081, "eval/gold_delta_ci_low": 0.022, "eval/gold_delta_ci_high": 0.137},
        policy="dpo", parent_link="[pipeline run](http://u/p)", runs_table="http://u/t",
        stage_links={"reward": "[reward](http://u/r)"}, note="start `rlhf ui` first", registered=["rlhf-demo-sft"],
    )
    text = summary_markdown(summary)
    assert "| reward model agrees with the annotators' majority | 0.700 [0.650, 0.750] | `rm/agreement_majority` |" in text
    assert "| gold score Δ, dpo − SFT | +0.081 [+0.022, +0.137] | `eval/gold_delta` |" in text
    assert "| KL of dpo to the SFT model (nats) | – | `eval/kl_to_ref` |" in text  # not measured: a dash, not 0
    assert "[pipeline run](http://u/p)" in text and "[all runs](http://u/t)" in text and "[reward](http://u/r)" in text
    assert "start `rlhf ui` first" in text and "`rlhf-demo-sft`" in text
    assert "tracking is off" in summary_markdown(PipelineSummary({}))


def test_agreement_table_puts_the_headline_rows_first():
    from tasks.summary import agreement_rows

    metrics = {f"rm/agreement_topic/t{i:02d}": 0.5 for i in range(15)}
    metrics |= {f"rm/agreement_gold_topic/t{i:02d}": 0.6 for i in range(15)}
    metrics |= {"rm/agreement_majority": 0.69, "rm/agreement_majority_ci_low": 0.63, "rm/agreement_majority_ci_high": 0.75,
                "rm/agreement_gold": 0.73, "rm/agreement_ceiling": 0.74, "rm/ceiling_gap": 0.05, "rm/ece": 0.1}
    rows = agreement_rows(metrics)
    assert [r["metric"] for r in rows[:4]] == ["rm/agreement_majority", "rm/agreement_gold", "rm/agreement_ceiling", "rm/ceiling_gap"]
    assert rows[0]["95% CI"] == "[0.630, 0.750]" and rows[1]["95% CI"] == ""
    assert not any(r["metric"].endswith(("_ci_low", "_ci_high")) for r in rows)  # bounds are a column, not rows
    assert rows[5]["metric"] == "rm/agreement_topic/t00" and rows[-1]["metric"] == "rm/agreement_gold_topic/t14"
    assert len(rows) == 5 + 30


def test_the_summary_reads_back_what_the_stages_logged(tmp_path):
    """From reward/agreement.json and eval/eval.json (the values logged, not recomputed), tracking on or off."""
    import json

    from tasks.summary import pipeline_summary, summary_markdown

    run = workspace_from(tmp_path).new_run("p")
    (run.stage("reward") / "agreement.json").write_text(json.dumps(
        {"agreement_majority": {"value": 0.1}, "metrics": {"rm/agreement_majority": 0.69, "rm/ceiling_gap": 0.04}}))
    (run.stage("eval") / "eval.json").write_text(json.dumps(
        {"primary": "dpo", "metrics": {"eval/gold_delta": 0.08, "eval/gold_delta_ci_low": None, "eval/length": 40.0}}))
    ctx = StageContext(run_dir=str(run.path), parent_run_id="", experiment_id="", tracking_uri="", tracking_enabled=False)
    summary = pipeline_summary(ctx, 12.5)
    assert summary.metrics == {"rm/agreement_majority": 0.69, "rm/ceiling_gap": 0.04, "eval/gold_delta": 0.08,
                               "pipeline/wall_seconds": 12.5}
    assert summary.policy == "dpo" and "gold score Δ, dpo − SFT | +0.080 |" in summary_markdown(summary)
    # a run whose stages did not get that far: only the wall time
    empty = workspace_from(tmp_path).new_run("q")
    bare = StageContext(run_dir=str(empty.path), parent_run_id="", experiment_id="", tracking_uri="", tracking_enabled=False)
    assert pipeline_summary(bare, 1.0).metrics == {"pipeline/wall_seconds": 1.0}
