"""Iterated online RLHF (`rlhf iterate`, the `rlhf-iterate` flow) on the smoke preset.

The source run is the smoke pipeline with PPO on LoRA (so a round starts from an adapter
champion, merged) and the registry's CI gate off (so its evaluation promotes a first champion).
Rounds run in one Prefect harness: simulated labels, then people's labels through files with a
batch that times out half-labelled, is resumed, and is imported exactly once; then the command
itself, two rounds, as a user runs it. Label Studio's own tests are tests/test_label_studio.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from rlhf_core.config.pipeline import load_config
from rlhf_core.errors import DataError, UserError
from rlhf_core.labeling import Progress
from tests.conftest import MODEL_CACHE, REPO

pytestmark = pytest.mark.timeout(1500)

SOURCE_SETTINGS = [
    f"model.cache_dir={MODEL_CACHE}", "registry.require_gold_ci_above_zero=false", "ppo.optim.lora.enabled=true",
    "ppo.optim.lora.target_modules=[q_proj,v_proj]", "iterate.prompts_per_round=6", "iterate.pairs_per_prompt=2",
    "iterate.poll_interval_s=0.2",
]


def _cfg(workspace: Path, *more: str):
    return load_config("smoke", [f"workspace={workspace}", *SOURCE_SETTINGS, *more])


@pytest.fixture(scope="module")
def rounds(tmp_path_factory):
    """A smoke run, a simulated round from the registry's champion, then a file-labelled round
    that times out half-labelled, refuses a bad label, and is resumed to the end."""
    workspace = tmp_path_factory.mktemp("ws")
    os.environ.setdefault("PREFECT_HOME", str(workspace / "prefect"))
    from prefect.testing.utilities import prefect_test_harness

    from flows.iterate import rlhf_iterate
    from flows.stages import rlhf_pipeline
    from rlhf_core.labeling import LabelError
    from tasks.stages.label import LabelTimeout

    cfg = _cfg(workspace)
    file_cfg = _cfg(workspace, "iterate.labeler=file", "iterate.label_timeout_s=0")
    out: dict = {"cfg": cfg, "workspace": workspace}
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        with prefect_test_harness(server_startup_timeout=180):
            out["source"] = rlhf_pipeline(cfg)
            out["round1"] = rlhf_iterate(cfg)
            with pytest.raises(LabelTimeout) as timeout:
                rlhf_iterate(file_cfg)
            out["timeout"] = str(timeout.value)
            run_id = out["timeout"].rsplit("--resume ", 1)[1]
            out["round2_id"] = run_id
            with pytest.raises(UserError) as twice:  # a second round 2 beside the unfinished one
                rlhf_iterate(file_cfg)
            out["second_round2"] = str(twice.value)
            labels = workspace / "labels" / run_id / "labels.jsonl"
            tasks = [json.loads(x) for x in (labels.parent / "tasks.jsonl").read_text().splitlines()]
            out["tasks"] = tasks
            half = len(tasks) // 2
            labels.write_text("".join(json.dumps({"task_id": t["task_id"], "choice": "ab"[i % 2], "annotator": "ann"}) + "\n"
                                      for i, t in enumerate(tasks[:half])))
            with pytest.raises(LabelTimeout) as again:
                rlhf_iterate(file_cfg, resume_run=run_id)
            out["timeout_again"] = str(again.value)
            good = labels.read_text()
            labels.write_text(good + json.dumps({"task_id": "f" * 16, "choice": "a", "annotator": "ann"}) + "\n")
            with pytest.raises(LabelError) as bad:
                rlhf_iterate(file_cfg, resume_run=run_id)
            out["bad_label"] = str(bad.value)
            rest = [{"task_id": t["task_id"], "choice": "b", "annotator": "ann"} for t in tasks[half:]]
            rest.append({"task_id": tasks[0]["task_id"], "choice": "tie", "annotator": "bo"})  # a second person
            labels.write_text(good + "".join(json.dumps(r) + "\n" for r in rest))
            out["round2"] = rlhf_iterate(file_cfg, resume_run=run_id)
    finally:
        os.chdir(cwd)
    return out


def _run(out, key):
    return Path(out[key]["run_dir"])


def test_a_round_starts_from_the_registry_champion_and_trains_on_old_plus_new_pairs(rounds):
    source, run = _run(rounds, "source"), _run(rounds, "round1")
    info = json.loads((run / "round.json").read_text())
    assert info["round"] == 1 and info["champion"]["source_run"] == source.name
    assert info["champion"]["version"] == "rlhf-smoke-policy v1"  # the smoke run's own PPO policy, promoted
    old = pd.read_parquet(source / "data" / "preferences.parquet")
    new = pd.read_parquet(run / "label" / "preferences.parquet")
    grown = pd.read_parquet(run / "data" / "preferences.parquet")
    assert len(new) > 0 and len(grown) == len(old) + len(new)
    assert set(new["source"]) == {"online"} and set(new["round"]) == {1}
    assert set(new["policy_version"]) == {"rlhf-smoke-policy v1"}
    report = json.loads((run / "label" / "report.json").read_text())
    assert report["labeler"] == "simulated" and report["annotators"] == 3
    assert report["rows"] + sum(report["dropped"].values()) == report["tasks"]  # every task accounted for
    # the champion's prompts came from the curated RL prompts
    rl = set(pd.read_parquet(source / "data" / "rl_prompts.parquet")["prompt"])
    assert set(new["prompt"]) <= rl


def test_a_round_warm_starts_the_reward_model_and_ppo_from_the_champion_keeping_the_sft_reference(rounds):
    from rlhf_core.config.pipeline import load_config as load

    source, run = _run(rounds, "source"), _run(rounds, "round1")
    cfg = load(run / "config.yaml")
    assert cfg.reward.init_from == str(source / "reward" / "model")
    assert cfg.ppo.init_from == str(source / "ppo" / "model") and cfg.dpo.enabled is False
    # the champion is LoRA adapters on SFT; the round's policy is saved merged (full weights)
    assert (source / "ppo" / "model" / "adapter_config.json").is_file()
    ppo_model = run / "ppo" / "model"
    assert not (ppo_model / "adapter_config.json").exists()
    marker = json.loads((ppo_model / "rlhf_stage.json").read_text())
    assert marker["stage"] == "ppo" and marker["init_from"] == cfg.ppo.init_from
    # the SFT model is the source's, linked, not retrained
    sft = json.loads((run / "sft" / "outputs.json").read_text())
    assert sft["model_dir"] == str(source / "sft" / "model")
    result = json.loads((run / "eval" / "eval.json").read_text())
    assert {"ppo", "champion"} <= set(result["policy_dirs"])
    assert {r["name"] for r in result["elo"]} >= {"sft", "ppo", "champion"}


def test_the_round_is_tracked_with_its_lineage_and_the_registry_rule(rounds):
    from mlflow.tracking import MlflowClient

    from tasks.registry import CHAMPION

    out = rounds["round1"]
    client = MlflowClient(tracking_uri=out["tracking_uri"])
    parent = client.get_run(out["mlflow_run_id"])
    assert parent.data.tags["rlhf.round"] == "1" and parent.data.tags["rlhf.champion"] == "rlhf-smoke-policy v1"
    assert "round/elo_new" in parent.data.metrics and "round/promoted" in parent.data.metrics
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{out['mlflow_run_id']}'")
    stages = {r.data.tags["rlhf.stage"]: r for r in children}
    assert set(stages) == {"label", "reward", "ppo", "eval"}
    assert stages["label"].data.metrics["label/tasks"] > 0
    assert {a.path for a in client.list_artifacts(stages["label"].info.run_id)} >= {"labels.jsonl", "tasks.jsonl", "report.json"}
    row = out["round"]  # (a later round may have moved the alias on since)
    version = client.get_model_version("rlhf-smoke-policy", row["new_version"].rsplit(" v", 1)[1])
    assert row["promoted"] == version.tags["promotion_decision"].startswith("promoted")
    assert "champion's eval/mean_gold" in version.tags["promotion_rule"]
    assert client.get_model_version_by_alias("rlhf-smoke-policy", CHAMPION)


def test_a_half_labelled_batch_times_out_clearly_and_resumes_importing_each_label_once(rounds):
    run_id = rounds["round2_id"]
    n = len(rounds["tasks"])
    assert f"0 of {n} tasks labelled" in rounds["timeout"] and "labels.jsonl" in rounds["timeout"]
    assert f"rlhf iterate --resume {run_id}" in rounds["timeout"]
    assert f"{n // 2} of {n} tasks labelled" in rounds["timeout_again"] and f"the {n // 2} label(s) given are kept" in rounds["timeout_again"]
    assert "unknown_task" in rounds["bad_label"] and "labels.jsonl" in rounds["bad_label"]
    assert f"round 2 on run {_run(rounds, 'round1').name} is unfinished in {run_id}" in rounds["second_round2"]
    assert f"rlhf iterate --resume {run_id}" in rounds["second_round2"]
    run = _run(rounds, "round2")
    assert run.name == run_id
    report = json.loads((run / "label" / "report.json").read_text())
    assert report["labeler"] == "file" and report["tasks"] == n and report["labels"] == n + 1 and report["annotators"] == 2
    imported = [json.loads(x) for x in (run / "label" / "labels.jsonl").read_text().splitlines()]
    assert len({(x["task_id"], x["annotator"]) for x in imported}) == len(imported) == n + 1
    rows = pd.read_parquet(run / "label" / "preferences.parquet")
    assert len(rows) == n and set(rows["round"]) == {2}  # the one tie is outvoted: every task has a majority
    # round 2 grows round 1's data, with prompts no earlier round labelled
    first = pd.read_parquet(_run(rounds, "round1") / "data" / "preferences.parquet")
    grown = pd.read_parquet(run / "data" / "preferences.parquet")
    assert len(grown) == len(first) + n
    assert not set(rows["prompt"]) & set(first.loc[first["source"] == "online", "prompt"])


def test_the_ledger_and_elo_plot_hold_every_finished_round(rounds):
    from tasks.iterate import ELO_PLOT, LEDGER, history_dir, read_ledger

    where = history_dir(rounds["cfg"])
    ledger = read_ledger(where / LEDGER)
    assert [r["round"] for r in ledger] == [1, 2] and (where / ELO_PLOT).stat().st_size > 0
    for row in ledger:
        assert row["elo_new_ci_low"] <= row["elo_new"] <= row["elo_new_ci_high"]


def test_bad_starts_are_refused_in_one_line(rounds, tmp_path):
    from flows.iterate import open_round
    from tasks.artifacts import workspace_from

    cfg, ws = rounds["cfg"], workspace_from(rounds["workspace"])
    with pytest.raises(UserError, match="not an `rlhf iterate` round"):
        open_round(cfg, ws, ws.mlflow_uri, None, _run(rounds, "source").name)
    with pytest.raises(UserError, match="no such run"):
        open_round(cfg, ws, ws.mlflow_uri, "20990101-000000-nothing", None)
    empty = workspace_from(tmp_path)
    empty_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(UserError, match="no champion to iterate on: .*'champion' alias"):
        open_round(cfg.model_copy(update={"workspace": tmp_path}), empty, empty_uri, None, None)
    off = _cfg(rounds["workspace"], "tracking.enabled=false")
    with pytest.raises(UserError, match="--from-run"):
        open_round(off, ws, ws.mlflow_uri, None, None)


def test_a_second_round_at_the_same_time_is_refused(rounds):
    from flows.iterate import run_iterate
    from tasks.artifacts import workspace_from

    cfg = rounds["cfg"]
    with workspace_from(cfg.workspace).try_lock(f"iterate-{cfg.name}", "held by the test"):
        with pytest.raises(UserError, match="another `rlhf iterate` round of rlhf-smoke is running"):
            from flows.iterate import rlhf_iterate

            rlhf_iterate.fn(cfg)
    assert run_iterate  # the CLI's entry point imports


def test_waiting_reports_progress_and_times_out_with_the_count():
    from tasks.stages.label import LabelTimeout, wait_for_labels

    class Fake:
        name = "fake"
        steps = [Progress(0, 4, 0), Progress(2, 4, 2), Progress(2, 4, 2), Progress(4, 4, 5)]

        def progress(self, batch):
            return self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]

    now = [0.0]
    seen = []
    done = wait_for_labels(Fake(), "b", 100, 1, seen.append, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    assert done.complete and [p.labelled_tasks for p in seen] == [0, 2, 4]  # unchanged progress is not reported twice
    stuck = Fake()
    stuck.steps = [Progress(1, 4, 1)]
    now[0] = 0.0
    with pytest.raises(LabelTimeout, match=r"1 of 4 tasks labelled after 3 s .* the 1 label\(s\) given are kept"):
        wait_for_labels(stuck, "b", 3, 1, lambda p: None, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))


def test_fresh_prompts_skip_those_earlier_rounds_labelled():
    from tasks.stages.label import fresh_prompts

    rl = pd.DataFrame({"prompt": ["a", "b", "c", "d"]})
    prefs = pd.DataFrame({"prompt": ["a", "b", "c"], "source": ["online", "online", "demo"]})
    picked = fresh_prompts(rl, prefs, 10, seed=0)
    assert set(picked["prompt"]) == {"c", "d"}
    assert list(fresh_prompts(rl, prefs, 1, seed=3)["prompt"]) == list(fresh_prompts(rl, prefs, 1, seed=3)["prompt"])
    with pytest.raises(DataError, match="no fresh RL prompts left: all 2"):
        fresh_prompts(rl.iloc[:2], prefs, 5, seed=0)


def test_rlhf_iterate_runs_two_rounds_nested_under_one_mlflow_run(rounds, tmp_path):
    """The command as a user types it, in a fresh process with its own embedded Prefect API."""
    ws = rounds["workspace"]
    source = _run(rounds, "source").name
    argv = [sys.executable, "-m", "flows.cli", "iterate", "-c", "smoke", "-w", str(ws), "--rounds", "2",
            "--from-run", source, *sum((["--set", s] for s in SOURCE_SETTINGS), [])]
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [x for x in proc.stdout.splitlines() if x.startswith("round ")]
    assert [x.split()[1] for x in lines] == ["3", "4"], proc.stdout
    assert all(len(x) <= 200 for x in lines)
    from mlflow.tracking import MlflowClient

    from tasks.artifacts import workspace_from

    client = MlflowClient(tracking_uri=workspace_from(ws).mlflow_uri)
    (iteration,) = client.search_runs(client.get_experiment_by_name("rlhf-smoke").experiment_id,
                                      "tags.`rlhf.rounds` = '2'")
    nested = client.search_runs([iteration.info.experiment_id], f"tags.mlflow.parentRunId = '{iteration.info.run_id}'")
    assert sorted(r.data.tags["rlhf.round"] for r in nested) == ["3", "4"]
    history = client.get_metric_history(iteration.info.run_id, "round/elo_new")
    assert sorted(m.step for m in history) == [3, 4]


def test_replies_are_trimmed_and_those_the_reward_model_cannot_train_on_are_dropped_before_labelling(tmp_path, monkeypatch):
    """A reply starting with whitespace broke the reward stage after people had labelled it: the chat
    template re-tokenised the prompt once it was added. Now trimmed (and checked) before labelling."""
    import rlhf_core.batching as batching
    from rlhf_core.models import load_tokenizer
    from tasks.stages.label import trainable_replies

    cfg = _cfg(tmp_path)
    tokenizer = load_tokenizer(cfg.model, cfg.model_cache)
    with pytest.raises(DataError, match="not prefix-stable"):
        batching.prompt_response_ids(tokenizer, "How do I boil an egg?", "\n       krillochastic egg", "chat")
    prompts = pd.DataFrame({"prompt": ["How do I boil an egg?"], "prompt_messages": [None]})
    kept, dropped = trainable_replies(cfg, prompts, [["\n       krillochastic egg", " Boil it.  ", "Boil it for 9 min."]])
    assert kept == [["krillochastic egg", "Boil it.", "Boil it for 9 min."]] and dropped == 0

    def refuse_b(tok, prompt, reply, fmt, context=None):
        if reply == "b":
            raise DataError("row: chat template is not prefix-stable")
        return [], []

    monkeypatch.setattr(batching, "prompt_response_ids", refuse_b)
    assert trainable_replies(cfg, prompts, [["a", "b", "c"]]) == ([["a", "c"]], 1)  # counted, not silently lost
