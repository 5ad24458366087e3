"""What the config alone can tell is refused before anything starts, in one line naming the key.

`rlhf config validate`, `rlhf run` and `rlhf eval` share flows.preflight.preflight_config: data files
that are missing, directories or empty; an input list a stage needs left empty; a model path that
does not exist, a corrupt GGUF, pickled weights only; a length past the model's context. A resume
must name a run of this workspace made with this config, checked before anything is written. A
failure only the run can find (in its data) ends with the one-line error and the log file, not
Prefect's tracebacks.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.preflight import config_differences, preflight_config
from rlhf_core.config.pipeline import dump_config, load_config
from rlhf_core.errors import ConfigError

from .conftest import MODEL_CACHE, REPO

SMOKE = [f"model.cache_dir={MODEL_CACHE}"]


def _rlhf(*args: str, cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)


def _one_clear_line(out: subprocess.CompletedProcess, *expected: str, problems: int = 1) -> str:
    """The first of ``problems`` lines (one per problem), each `error: ...`, exit 2."""
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert out.returncode == 2, out.stdout + out.stderr
    assert len(lines) == problems and all(line.startswith("error: ") for line in lines), lines
    assert "Traceback" not in lines[0]
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def _hf_dir(root: Path, *, context: int = 128, weights: str = "model.safetensors") -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": context}))
    (root / weights).write_bytes(b"\0" * 16)
    return root


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["data.preferences=[no-such-file.jsonl]"], ["data.preferences[0]: no such file: no-such-file.jsonl"]),
        (["data.demonstrations=[configs]"], ["data.demonstrations[0]: configs is a directory"]),
        (["data.preferences=[]"], ["data.preferences: empty list, but reward and dpo need at least one file"]),
        (["model.base=./no-such-model"], ["model.base: model path does not exist"]),
        (["sft.optim.max_length=100000"],
         ["sft.optim.max_length: 100000 is past the model's context of 512 tokens (model.tiny.max_position_embeddings)"]),
        (["model.tiny.hidden_size=66"], ["model.tiny.hidden_size: 66 is not divisible by model.tiny.num_heads (4)"]),
    ],
)
def test_config_validate_refuses_what_the_run_would_fail_on(overrides, expected):
    args = ["config", "validate", "-c", "smoke"]
    for assignment in overrides:
        args += ["--set", assignment]
    _one_clear_line(_rlhf(*args), *expected)


def test_the_presets_pass_and_turning_a_stage_off_lifts_its_inputs_need():
    for preset in ("smoke", "demo", "hh-rlhf"):
        preflight_config(load_config(preset))
    preflight_config(load_config("smoke", ["data.preferences=[]", "reward.enabled=false", "dpo.enabled=false"]))
    preflight_config(load_config("smoke", ["data.demonstrations=[hf:org/dataset]", "data.rl_prompts=[org/prompts]"]))


def test_an_empty_data_file_and_every_problem_at_once(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cfg = load_config("smoke", [f"data.rl_prompts=[{empty}]", "data.preferences=[nope.jsonl]", "sft.optim.max_length=9999"])
    with pytest.raises(ConfigError) as err:
        preflight_config(cfg)
    lines = str(err.value).splitlines()
    assert len(lines) == 3
    assert f"data.rl_prompts[0]: {empty} is empty" in lines
    assert any(line.startswith("sft.optim.max_length: 9999 is past") for line in lines)


def test_a_relative_data_path_from_another_directory_says_where_the_file_is(tmp_path):
    line = _one_clear_line(_rlhf("config", "validate", "-c", "smoke", cwd=tmp_path), "data.demonstrations[0]: no such file",
                           problems=3)  # the preset's three data files
    assert f"relative to {tmp_path}" in line and f"it is under {REPO}" in line


def test_a_local_model_directory_is_checked_without_loading_it(tmp_path):
    model = _hf_dir(tmp_path / "small", context=128)
    fits = [f"{stage}.optim.max_length=128" for stage in ("reward", "ppo", "dpo")]
    cfg = load_config("smoke", [f"model.base={model}", "sft.optim.max_length=256", *fits])
    with pytest.raises(ConfigError, match=r"^sft\.optim\.max_length: 256 is past the model's context of 128 tokens "
                                          r"\(max_position_embeddings in .*small/config\.json\)$"):
        preflight_config(cfg)
    preflight_config(load_config("smoke", [f"model.base={model}", *[f"{s}.optim.max_length=128" for s in
                                                                     ("sft", "reward", "ppo", "dpo")]]))
    pickled = _hf_dir(tmp_path / "pickled", weights="pytorch_model.bin")
    with pytest.raises(ConfigError, match="model.base: .*refusing pickled weights"):
        preflight_config(load_config("smoke", [f"model.base={pickled}"]))
    (tmp_path / "noconfig").mkdir()
    with pytest.raises(ConfigError, match="model.base: .* is not a Hugging Face model directory"):
        preflight_config(load_config("smoke", [f"model.base={tmp_path / 'noconfig'}"]))


def test_a_corrupt_gguf_is_refused_up_front(tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"<html>not a model</html>")
    _one_clear_line(_rlhf("config", "validate", "-c", "smoke", "--set", f"model.base={gguf}"),
                    f"model.base: {gguf} is not a GGUF file")


# --- rlhf run: refused before anything is written or started -------------------------------------


def test_run_refuses_a_missing_data_file_before_any_server_starts(tmp_path):
    ws = tmp_path / "ws"
    started = time.monotonic()
    out = _rlhf("run", "-c", "smoke", "-w", str(ws), "--set", "data.preferences=[missing.jsonl]")
    _one_clear_line(out, "data.preferences[0]: no such file: missing.jsonl")
    assert time.monotonic() - started < 60
    assert not ws.exists()  # no workspace, no Prefect database, no run directory


def _finished_looking_run(ws: Path, overrides: list[str]) -> Path:
    run = ws / "runs" / "20260101-000000-rlhf-smoke-abcdef"
    (run / "data").mkdir(parents=True)
    (run / "config.yaml").write_text(dump_config(load_config("smoke", [f"workspace={ws}", *overrides])))
    (run / "data" / "report.json").write_text("{}")
    return run


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("run_id", ["..", ".", "/tmp", "runs/../..", "no-such-run"])
def test_resume_of_anything_but_a_run_of_this_workspace_is_refused_and_writes_nothing(tmp_path, run_id):
    ws = tmp_path / "ws"
    _finished_looking_run(ws, SMOKE)
    before = _digest(ws)
    line = _one_clear_line(_rlhf("run", "-c", "smoke", "-w", str(ws), "--set", SMOKE[0], "--resume", run_id, timeout=300))
    assert ("not a path" in line) if run_id != "no-such-run" else ("no such run in" in line and "latest: 2026" in line)
    assert _digest(ws) == before and sorted(p.name for p in ws.iterdir()) == ["runs"]


def test_resume_with_another_config_names_the_keys_and_changes_nothing(tmp_path):
    ws = tmp_path / "ws"
    run = _finished_looking_run(ws, SMOKE)
    before = _digest(ws)
    out = _rlhf("run", "-c", "smoke", "-w", str(ws), "--set", SMOKE[0], "--set", "sft.optim.max_steps=5",
                "--set", "seed=3", "--resume", run.name, timeout=300)
    line = _one_clear_line(out, f"--resume {run.name}: the run was made with another config",
                           "seed: 0 -> 3; sft.optim.max_steps: 4 -> 5",
                           f"rlhf run --resume {run.name} -c {run / 'config.yaml'}", "leave out --resume")
    assert "resume=False" not in line
    assert _digest(ws) == before and sorted(p.name for p in ws.iterdir()) == ["runs"]


def test_the_same_config_resumes_whatever_workspace_or_model_cache_it_names(tmp_path):
    recorded = tmp_path / "config.yaml"
    recorded.write_text(dump_config(load_config("smoke", ["workspace=/somewhere", *SMOKE])))
    assert config_differences(load_config("smoke"), recorded) == []
    assert config_differences(load_config(recorded), recorded) == []
    assert config_differences(load_config("smoke", ["ppo.kl_coef=0.1"]), recorded) == ["ppo.kl_coef: 0.05 -> 0.1"]


def test_eval_refuses_a_path_as_run_id(tmp_path):
    _one_clear_line(_rlhf("eval", "..", "-c", "smoke", "-w", str(tmp_path / "ws")), "rlhf eval '..': expected a run id")
    assert not (tmp_path / "ws").exists()


# --- a failure only the run can find ---------------------------------------------------------------


@pytest.mark.slow
def test_a_stage_that_fails_prints_one_error_line_and_the_log_file_not_tracebacks(tmp_path):
    """Every demonstration is longer than 16 tokens: SFT stops with a DataError inside the flow."""
    out = _rlhf("run", "-c", "smoke", "-w", str(tmp_path / "ws"), "--set", SMOKE[0], "--set", "sft.optim.max_length=16",
                "--set", "ppo.enabled=false", "--set", "dpo.enabled=false", "--set", "eval.enabled=false", timeout=600)
    text = out.stdout + out.stderr
    assert out.returncode == 2, text
    assert "Traceback" not in text and "ERROR" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "over max_length 16" in errors[0], text
    (log_line,) = [line for line in text.splitlines() if line.startswith("full log (with the traceback): ")]
    log = Path(log_line.split(": ", 1)[1])
    assert log.parent.parent == tmp_path / "ws" / "runs" and log.name == "run.log"
    assert "Traceback" in log.read_text() and "over max_length 16" in log.read_text()
    # last, whole on one line: the command that carries this run on, with this call's -c/--set/-w
    *_, before, hint = text.rstrip().splitlines()
    assert before == log_line, text
    prefix = "finished stages are kept; a fix outside the config carries the run on with: "
    assert hint.startswith(prefix), text
    argv = shlex.split(hint[len(prefix) :])
    assert argv[:4] == ["rlhf", "run", "--resume", log.parent.name] and argv[argv.index("-w") + 1] == str(tmp_path / "ws")
    assert "Beginning subflow run" in text  # Prefect's progress lines still show
    # Pasted as printed (the cause not fixed), it resumes that same run, not a new one, and fails the same way.
    again = _rlhf(*argv[1:], timeout=600)
    text = again.stdout + again.stderr
    assert again.returncode == 2 and "over max_length 16" in text and "another config" not in text, text
    assert [p.name for p in (tmp_path / "ws" / "runs").iterdir()] == [log.parent.name]
    assert text.rstrip().splitlines()[-1] == hint


@pytest.mark.slow
def test_a_copied_workspace_resumes_from_its_own_outputs_with_finished_stages_skipped(tmp_path):
    """`cp -r` of a workspace, the original moved away, `rlhf run --resume` in the copy: every finished
    stage is skipped (nothing retrained) and every output, and the MLflow store, is the copy's own."""
    import shutil

    from mlflow.tracking import MlflowClient

    from tasks.artifacts import workspace_from

    small = ["--set", SMOKE[0], "--set", "dpo.enabled=false", "--set", "eval.enabled=false"]
    original, copy = tmp_path / "original", tmp_path / "copy"
    first = _rlhf("run", "-c", "smoke", "-w", str(original), *small, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    (run_id,) = [p.name for p in (original / "runs").iterdir()]
    shutil.copytree(original, copy)
    shutil.move(original, tmp_path / "gone")
    weights = copy / "runs" / run_id / "sft" / "model" / "model.safetensors"
    before = (weights.stat().st_mtime_ns, hashlib.sha256(weights.read_bytes()).hexdigest())

    again = _rlhf("run", "-c", "smoke", "-w", str(copy), "--resume", run_id, *small, timeout=600)
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-3000:]
    assert out.count("Finished in state Cached") == 4, out[-3000:]  # data, sft, reward, ppo: none ran again
    assert (weights.stat().st_mtime_ns, hashlib.sha256(weights.read_bytes()).hexdigest()) == before
    listed = [line.split(": ", 1)[1] for line in out.splitlines() if line.strip().endswith(("model", ".json"))
              and line.startswith("  ") and ": /" in line]
    assert len(listed) >= 4 and all(p.startswith(str(copy)) for p in listed), listed
    assert "copied or moved from" in out and not (tmp_path / "original").exists()
    ws = workspace_from(copy)
    experiment = MlflowClient(ws.mlflow_uri).get_experiment_by_name("rlhf-smoke")
    assert experiment.artifact_location == ws.mlflow_artifacts.resolve().as_uri()
    runs = MlflowClient(ws.mlflow_uri).search_runs([experiment.experiment_id])
    assert runs and all(r.info.artifact_uri.startswith(experiment.artifact_location) for r in runs)
