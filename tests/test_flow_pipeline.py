"""The `rlhf-pipeline` flow on the smoke preset under Prefect's test harness.

Real Prefect engine (a temporary API), real MLflow sqlite store, real tiny transformers
models: asserts the stage outputs on disk and what MLflow recorded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rlhf_core.config.pipeline import load_config

from .conftest import MODEL_CACHE, REPO


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """The smoke pipeline, then the same run directory re-run (resume), in one Prefect harness;
    and the Prefect artifacts and flow runs the first run left."""
    workspace = tmp_path_factory.mktemp("ws")
    os.environ.setdefault("PREFECT_HOME", str(workspace / "prefect"))
    from prefect.client.orchestration import get_client
    from prefect.testing.utilities import prefect_test_harness

    from flows.stages import rlhf_pipeline

    cfg = load_config("smoke", [f"workspace={workspace}", f"model.cache_dir={MODEL_CACHE}"])
    cwd = os.getcwd()
    os.chdir(REPO)  # the preset's data paths are relative to the repo
    try:
        with prefect_test_harness(server_startup_timeout=180):
            first = rlhf_pipeline(cfg)
            with get_client(sync_client=True) as client:
                prefect = {"artifacts": client.read_artifacts(), "flow_runs": {f.id: f for f in client.read_flow_runs()}}
            sft_weights = os.path.join(first["outputs"]["sft model"], "model.safetensors")
            mtime = os.path.getmtime(sft_weights)
            again = rlhf_pipeline(cfg, resume_run=os.path.basename(first["run_dir"]))
    finally:
        os.chdir(cwd)
    return cfg, first, again, (sft_weights, mtime), prefect


@pytest.fixture(scope="module")
def smoke_run(smoke_runs):
    cfg, first, _, _, _ = smoke_runs
    return cfg, first


def test_stage_outputs_are_on_disk(smoke_run):
    cfg, result = smoke_run
    run_dir = result["run_dir"]
    assert os.path.isfile(os.path.join(run_dir, "config.yaml"))
    report = json.loads(open(result["outputs"]["data report"]).read())
    assert report["balanced"] and report["rows_in"] == report["rows_kept"] + sum(
        sum(t["dropped"].values()) for t in report["totals"].values()
    )
    for stage in ("sft", "reward", "ppo", "dpo"):
        model_dir = result["outputs"][f"{stage} model"]
        assert os.path.isfile(os.path.join(model_dir, "model.safetensors")), stage
    agreement = json.loads(open(result["outputs"]["reward-model agreement"]).read())
    assert 0.0 <= agreement["agreement_majority"]["value"] <= 1.0


def test_mlflow_has_parent_and_nested_stage_runs(smoke_run):
    from mlflow.tracking import MlflowClient

    cfg, result = smoke_run
    client = MlflowClient(tracking_uri=result["tracking_uri"])
    parent = client.get_run(result["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["prefect.flow_run_id"]
    assert parent.data.params["model.base"] == "tiny"
    assert parent.data.metrics["pipeline/wall_seconds"] > 0
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    by_stage = {r.data.tags["rlhf.stage"]: r for r in children}
    assert {"data", "sft", "reward", "ppo", "dpo", "eval"} <= set(by_stage)
    assert all(r.info.status == "FINISHED" for r in children)
    data = by_stage["data"].data.metrics
    assert data["data/rows_in"] == data["data/rows_kept"] + data["data/rows_dropped"]
    assert 0 <= data["data/rl_prompt_coverage"] <= 1
    assert "sft/loss" in by_stage["sft"].data.metrics
    rm = by_stage["reward"].data.metrics
    for name in ("rm/loss", "rm/agreement_majority", "rm/agreement_gold", "rm/agreement_ceiling"):
        assert name in rm, name
    history = client.get_metric_history(by_stage["sft"].info.run_id, "sft/loss")
    assert len(history) >= 2  # per step, not only a final value
    artifacts = {a.path for a in client.list_artifacts(by_stage["reward"].info.run_id)}
    assert {"agreement.json", "reliability.png", "model"} <= artifacts
    # the model is logged once, under model/ (the registry version points there), not also at the root
    assert not any(path.endswith(".safetensors") for path in artifacts)
    assert any(a.path.endswith(".safetensors") for a in client.list_artifacts(by_stage["reward"].info.run_id, "model"))
    # each training stage's final checkpoint, whole, under checkpoints/<step-N> (hard links in the local store)
    for stage in ("sft", "reward", "ppo"):
        run_id = by_stage[stage].info.run_id
        (ckpt,) = client.list_artifacts(run_id, "checkpoints")
        files = {Path(a.path).name for a in client.list_artifacts(run_id, ckpt.path)}
        assert "manifest.json" in files and len(files) > 2, (stage, files)
    for name in ("ppo/kl", "ppo/reward", "ppo/gold", "ppo/entropy", "ppo/clipfrac"):
        assert name in by_stage["ppo"].data.metrics, name
    ev = by_stage["eval"].data.metrics
    for name in ("eval/gold_win_rate_vs_sft", "eval/gold_delta_ci_low", "eval/kl_to_ref",
                 "eval/refusal_rate_benign", "eval/repetition_rate"):
        assert name in ev, name
    assert {a.path for a in client.list_artifacts(by_stage["eval"].info.run_id)} >= {"gold_vs_kl.png", "eval.json"}
    # every new model is a registry candidate, under names that carry the pipeline's (no two pipelines share one)
    registered = {m.name for m in client.search_registered_models()}
    assert registered == {"rlhf-smoke-sft", "rlhf-smoke-reward", "rlhf-smoke-policy"}
    for name in registered:
        assert client.get_model_version_by_alias(name, "candidate")
    assert "registry.rlhf-smoke-policy" in by_stage["ppo"].data.tags


def _stage_runs(client, parent_run_id: str) -> dict:
    parent = client.get_run(parent_run_id)
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'"
    )
    return {r.data.tags["rlhf.stage"]: r for r in children}


def test_the_parent_run_carries_the_headline_figures_of_its_stages(smoke_run):
    from mlflow.tracking import MlflowClient

    cfg, result = smoke_run
    client = MlflowClient(tracking_uri=result["tracking_uri"])
    parent = client.get_run(result["mlflow_run_id"]).data.metrics
    by_stage = _stage_runs(client, result["mlflow_run_id"])
    rm, ev = by_stage["reward"].data.metrics, by_stage["eval"].data.metrics
    for name in ("rm/agreement_majority", "rm/agreement_gold", "rm/agreement_ceiling", "rm/agreement_majority_loo",
                 "rm/ceiling_gap"):
        assert parent[name] == rm[name], name  # the reward stage's own value, not a recomputation
    for name in ("eval/gold_win_rate_vs_sft", "eval/gold_win_rate_vs_sft_ci_low", "eval/gold_win_rate_vs_sft_ci_high",
                 "eval/gold_delta", "eval/gold_delta_ci_low", "eval/gold_delta_ci_high", "eval/kl_to_ref"):
        assert parent[name] == ev[name], name
    assert parent["pipeline/wall_seconds"] > 0
    assert len(parent) <= 25  # a handful, not every stage's metrics again
    # the eval run: every method's point estimates, intervals only for the headline (primary) figures;
    # the other intervals are in its eval_comparison.json table
    assert "eval/ppo/gold_delta" in ev and "eval/dpo/gold_win_rate_vs_sft" in ev
    methods = {k.split("/")[1] for k in ev if k.endswith("/gold_delta") and k.count("/") == 2}
    assert {"ppo", "dpo"} <= methods
    assert not [k for k in ev if k.split("/")[1] in methods and k.endswith(("_ci_low", "_ci_high"))]
    assert "eval/diversity/distinct_2_ci_low" in ev  # the primary policy's diversity is a headline figure
    assert "eval_comparison.json" in {a.path for a in client.list_artifacts(by_stage["eval"].info.run_id)}


def test_each_stage_run_shows_the_datasets_it_used(smoke_run):
    from mlflow.tracking import MlflowClient

    cfg, result = smoke_run
    by_stage = _stage_runs(MlflowClient(tracking_uri=result["tracking_uri"]), result["mlflow_run_id"])
    inputs = {stage: {i.dataset.name: (i.dataset.digest, {t.key: t.value for t in i.tags}.get("mlflow.data.context"))
                      for i in run.inputs.dataset_inputs} for stage, run in by_stage.items()}
    expected = {"sft": ("demonstrations", "training"), "reward": ("preferences", "training"),
                "ppo": ("rl_prompts", "training"), "dpo": ("preferences", "training"),
                "eval": ("eval_prompts", "evaluation")}
    assert set(inputs["data"]) == {"demonstrations", "preferences", "rl_prompts", "eval_prompts"}
    for stage, (name, context) in expected.items():
        assert list(inputs[stage]) == [name], stage
        digest, logged_context = inputs[stage][name]
        assert logged_context == context and digest == inputs["data"][name][0], stage  # the same curated file


def test_the_prefect_run_pages_link_to_the_right_mlflow_pages(smoke_runs):
    from mlflow.tracking import MlflowClient

    cfg, result, _, _, prefect = smoke_runs
    client = MlflowClient(tracking_uri=result["tracking_uri"])
    by_stage = _stage_runs(client, result["mlflow_run_id"])
    artifacts = {a.key: a for a in prefect["artifacts"]}
    exp, parent_id = result["experiment_id"], result["mlflow_run_id"]

    def url(run_id: str) -> str:
        return f"http://127.0.0.1:5000/#/experiments/{exp}/runs/{run_id}?workflowType=machine_learning"

    # the parent rlhf-pipeline flow run has the summary (its subflows have the stage artifacts)
    summary = artifacts["pipeline-summary"]
    assert prefect["flow_runs"][summary.flow_run_id].parent_task_run_id is None
    rm = by_stage["reward"].data.metrics["rm/agreement_majority"]
    assert f"| reward model agrees with the annotators' majority | {rm:.3f} [" in summary.data
    assert f"[pipeline run]({url(parent_id)})" in summary.data
    for stage, run in by_stage.items():
        assert f"[{stage}]({url(run.info.run_id)})" in summary.data, stage
    assert f"rlhf ui --workspace {Path(cfg.workspace).resolve()}" in summary.data  # a local store: how to open the links
    # the agreement table links to the reward stage's run, headline rows first
    agreement = artifacts["reward-model-agreement"]
    assert url(by_stage["reward"].info.run_id) in agreement.description and url(parent_id) not in agreement.description
    rows = json.loads(agreement.data) if isinstance(agreement.data, str) else agreement.data
    assert [row["metric"] for row in rows[:3]] == ["rm/agreement_majority", "rm/agreement_gold", "rm/agreement_ceiling"]
    evaluation = artifacts["evaluation"].data
    assert f"[evaluation stage run]({url(by_stage['eval'].info.run_id)})" in evaluation and "run run" not in evaluation
    assert f"[data stage run]({url(by_stage['data'].info.run_id)})" in artifacts["data-report"].data


def test_a_stage_run_on_its_own_leaves_the_parent_run_finished(smoke_run):
    """`rlhf eval RUN_ID` (a stage flow without the pipeline) reopens the MLflow parent run, then closes it."""
    from mlflow.tracking import MlflowClient
    from prefect.testing.utilities import prefect_test_harness

    from flows.stages import eval_flow

    cfg, result = smoke_run
    client = MlflowClient(tracking_uri=result["tracking_uri"])
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        with prefect_test_harness(server_startup_timeout=180):
            outputs = eval_flow(cfg, result["run_dir"])
    finally:
        os.chdir(cwd)
    assert outputs
    parent = client.get_run(result["mlflow_run_id"])
    assert parent.info.status == "FINISHED"  # not left RUNNING
    evals = client.search_runs([parent.info.experiment_id],
                               filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}' and tags.`rlhf.stage` = 'eval'")
    assert len(evals) >= 1 and all(r.info.status == "FINISHED" for r in evals)


def test_rerunning_the_run_directory_skips_finished_stages(smoke_runs):
    cfg, first, again, (sft_weights, mtime), _ = smoke_runs
    assert again["run_dir"] == first["run_dir"] and again["mlflow_run_id"] == first["mlflow_run_id"]
    assert os.path.getmtime(sft_weights) == mtime  # the cached SFT stage was not recomputed
    assert again["outputs"] == first["outputs"]


def test_a_crashing_stage_fails_the_run_with_its_cause_and_a_rerun_resumes(tmp_path_factory):
    from mlflow.tracking import MlflowClient
    from prefect.testing.utilities import prefect_test_harness

    from flows.stages import rlhf_pipeline

    workspace = tmp_path_factory.mktemp("ws-crash")
    common = [f"workspace={workspace}", f"model.cache_dir={MODEL_CACHE}",
              "ppo.enabled=false", "dpo.enabled=false", "eval.enabled=false"]
    broken = load_config("smoke", [*common, "sft.optim.max_length=16"])  # every demonstration is longer
    fixed = load_config("smoke", common)
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        with prefect_test_harness(server_startup_timeout=180):
            state = rlhf_pipeline(broken, return_state=True)
            assert state.is_failed()
            with pytest.raises(Exception, match="max_length 16"):
                state.result()
            (run_dir,) = (workspace / "runs").iterdir()
            parent_id = json.loads((run_dir / "pipeline.json").read_text())["mlflow_run_id"]
            assert MlflowClient(f"sqlite:///{workspace / 'mlflow' / 'mlflow.db'}").get_run(parent_id).info.status == "FAILED"
            report = run_dir / "data" / "report.json"
            before = os.path.getmtime(report)
            again = rlhf_pipeline(fixed, resume_run=run_dir.name, return_state=True)
    finally:
        os.chdir(cwd)
    assert again.is_completed()
    assert os.path.getmtime(report) == before  # the data stage came from the cache
    assert os.path.isfile(os.path.join(again.result()["outputs"]["sft model"], "model.safetensors"))


def test_the_eval_stage_without_a_gold_scorer_on_the_smoke_run(smoke_run):
    """`rlhf eval RUN_ID --set eval.gold=false` on the smoke run: no gold figure anywhere, the report and the
    MLflow run say so, the held-out agreement sits beside the shorter-reply rule, and the policy is not promoted."""
    import pandas as pd
    from mlflow.tracking import MlflowClient
    from prefect.testing.utilities import prefect_test_harness

    from flows.stages import eval_flow
    from rlhf_core.eval_report import NO_GOLD_NOTE
    from rlhf_core.models import load_tokenizer
    from rlhf_core.reward.model import RewardModel
    from tasks.artifacts import RunDir
    from tasks.evaluation import NO_GOLD_DECISION
    from tasks.registry import find_version
    from tasks.stages.common import split_train_eval
    from tasks.stages.reward import agreement_on

    cfg, result = smoke_run
    no_gold = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"gold": False})})
    client = MlflowClient(tracking_uri=result["tracking_uri"])
    champion_before = {a for v in client.search_model_versions("name='rlhf-smoke-policy'") for a in v.aliases}
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        with prefect_test_harness(server_startup_timeout=180):
            outputs = eval_flow(no_gold, result["run_dir"])
    finally:
        os.chdir(cwd)
    assert outputs["plot"].endswith("rm_vs_kl.png")
    assert Path(outputs["comparison_md"]).read_text().startswith(f"**{NO_GOLD_NOTE}**")
    report = json.loads(Path(outputs["eval_json"]).read_text())
    agreement = json.loads(Path(result["outputs"]["reward-model agreement"]).read_text())
    held_out = report["held_out_agreement"]
    assert held_out["n_pairs"] == agreement["n_pairs"] and 0 <= held_out["prefer_shorter"]["value"] <= 1
    assert held_out["reward_model"] == agreement["agreement_majority"]
    assert not [k for k in report["metrics"] if "gold" in k]
    parent = client.get_run(result["mlflow_run_id"])
    (ev,) = client.search_runs([parent.info.experiment_id], max_results=1, order_by=["start_time DESC"],
                               filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}' and tags.`rlhf.stage` = 'eval'")
    assert ev.data.tags["mlflow.note.content"] == NO_GOLD_NOTE and ev.data.tags["registry.decision"].endswith(NO_GOLD_DECISION)
    assert "eval/prefer_shorter_held_out" in ev.data.metrics and not [k for k in ev.data.metrics if "gold" in k]
    version = find_version(client, "rlhf-smoke-policy", RunDir(Path(result["run_dir"])).outputs("ppo")["model_dir"])
    assert client.get_model_version("rlhf-smoke-policy", version).tags["promotion_decision"] == NO_GOLD_DECISION
    assert {a for v in client.search_model_versions("name='rlhf-smoke-policy'") for a in v.aliases} == champion_before
    # the reward stage's agreement with eval.gold=false: no gold scorer consulted, no rm/agreement_gold
    tokenizer = load_tokenizer(cfg.model, cfg.model_cache)
    _, pairs = split_train_eval(pd.read_parquet(os.path.join(result["run_dir"], "data", "preferences.parquet")))
    rm = RewardModel.from_pretrained(result["outputs"]["reward model"])
    measured = agreement_on(rm, tokenizer, pairs, no_gold)
    assert measured.agreement_gold is None and "rm/agreement_gold" not in measured.metrics()
    assert measured.agreement_majority.value == pytest.approx(agreement["agreement_majority"]["value"])
