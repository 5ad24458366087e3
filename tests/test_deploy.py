"""`rlhf deploy` without servers: schedules, data paths, the parameter schema Prefect enforces, output.

The end-to-end test (tests/test_e2e_ui.py) checks the same against a real server, a worker and
the scheduler; these pin the pieces down fast and name what broke.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flows.deploy import DEFAULT_CRON, ScheduleSpec, make_schedule, resolve_inputs
from flows.health import ServerError
from rlhf_core.config.pipeline import load_config
from rlhf_core.errors import ConfigError
from rlhf_core.processes import free_port
from rlhf_core.redact import find_credential

from .conftest import REPO

CREDENTIALS = [
    "postgresql://rlhf:FAKE-pw-1@db:5432/mlflow",
    "http://u:FAKE-pw-1@mlflow.example.com",
    "redis://:FAKE-pw-1@cache:6379",
    "https://h/data.parquet?token=FAKE-pw-1",
    "https://bucket.s3.amazonaws.com/x.jsonl?X-Amz-Signature=abc123&X-Amz-Date=1",
    "https://h/x?api_key=FAKE",
    "hf_FAKEsecurityTestToken0123456789abcdef",
]
NOT_CREDENTIALS = [
    "postgresql://u@h/db", "sqlite:////tmp/mlflow.db", "http://127.0.0.1:5000", "org/model",
    "data/demo/preferences.jsonl", "https://x/y.parquet?revision=main", "main", "",
]


# --- the schema Prefect's server enforces before it creates a flow run ------------------------


@pytest.fixture(scope="module")
def pipeline_schema():
    from prefect.utilities.callables import parameter_schema

    from flows.stages import rlhf_pipeline

    return parameter_schema(rlhf_pipeline.fn).model_dump_for_openapi()


def _schema_errors(schema, config: dict) -> list[str]:
    from prefect.utilities.schema_tools.validation import validate

    return [f"{e.json_path}: {e.message}" for e in validate({"config": config}, schema, raise_on_error=False)]


@pytest.mark.parametrize("preset", ["smoke", "demo", "hh-rlhf"])
def test_the_presets_pass_the_parameter_schema(pipeline_schema, preset):
    assert _schema_errors(pipeline_schema, load_config(preset).model_dump(mode="json")) == []


@pytest.mark.parametrize("value", CREDENTIALS)
@pytest.mark.parametrize("where", ["tracking.tracking_uri", "model.base", "data.preferences.0", "model.revision"])
def test_the_parameter_schema_refuses_a_credential_in_any_string_field(pipeline_schema, value, where):
    """What pydantic's validator refuses only inside the run, the server's schema check refuses first."""
    assert find_credential(value), value  # the validator refuses it too: the two agree
    config = load_config("smoke").model_dump(mode="json")
    *parents, last = where.split(".")
    node = config
    for key in parents:
        node = node[key]
    node[int(last) if isinstance(node, list) else last] = value
    errors = _schema_errors(pipeline_schema, config)
    assert len(errors) == 1 and "no credential" in errors[0], errors
    assert errors[0].startswith(f"$.config.{where.replace('.0', '[0]')}:"), errors


@pytest.mark.parametrize("value", NOT_CREDENTIALS)
def test_the_parameter_schema_accepts_what_carries_no_credential(pipeline_schema, value):
    assert find_credential(value) is None
    config = load_config("smoke").model_dump(mode="json")
    config["tracking"]["experiment"] = value
    assert _schema_errors(pipeline_schema, config) == []


def test_none_and_numbers_still_pass_where_the_field_allows_them(pipeline_schema):
    config = load_config("smoke").model_dump(mode="json")
    assert config["tracking"]["tracking_uri"] is None and config["model"]["revision"] is None
    config["torch_threads"] = 2
    assert _schema_errors(pipeline_schema, config) == []


# --- schedules ---------------------------------------------------------------------------------


def test_schedule_from_the_cli_options():
    assert make_schedule(DEFAULT_CRON, None, False) == ScheduleSpec(cron=DEFAULT_CRON, active=False)
    assert make_schedule(None, 60, True) == ScheduleSpec(interval_s=60.0, active=True)
    assert make_schedule("", None, True) is None  # --cron '': no schedule
    prefect_schedule = make_schedule("*/5 * * * *", None, True).to_prefect()
    assert (prefect_schedule.cron, prefect_schedule.timezone, prefect_schedule.active) == ("*/5 * * * *", "UTC", True)
    assert make_schedule(None, 90, False).to_prefect().interval.total_seconds() == 90
    assert make_schedule(None, 90, False).describe() == "every 90 s, off"


@pytest.mark.parametrize(
    ("cron", "interval", "message"),
    [("every day", None, "not a valid cron expression"), ("0 3 * * *", 60, "not both"), (None, 0, "at least 1 second")],
)
def test_a_bad_schedule_is_refused_naming_the_option(cron, interval, message):
    with pytest.raises(ServerError, match=message):
        make_schedule(cron, interval, True)


# --- data paths, fixed once at deploy time -----------------------------------------------------


def test_relative_inputs_resolve_against_the_cwd_then_the_repository(tmp_path):
    own = tmp_path / "mine.jsonl"
    own.write_text("{}\n")
    cfg = load_config("smoke", ["data.demonstrations=[mine.jsonl]", "data.preferences=[hf:org/prefs, org/other]"])
    resolve_inputs(cfg, tmp_path)
    assert cfg.data.demonstrations == [own.resolve()]
    # A preset's shipped data/demo files, from a directory outside the repository:
    assert cfg.data.rl_prompts == [(REPO / "data/demo/rl_prompts.jsonl").resolve()]
    assert [str(p) for p in cfg.data.preferences] == ["hf:org/prefs", "org/other"]  # hub ids stay hub ids


def test_a_missing_input_is_refused_naming_the_key_and_where_it_looked(tmp_path):
    cfg = load_config("smoke", ["data.preferences=[data/demo/preferences.jsonl, nothere.jsonl]", f"data.rl_prompts=[{tmp_path}/gone.jsonl]"])
    with pytest.raises(ConfigError) as err:
        resolve_inputs(cfg, tmp_path)
    message = str(err.value)
    assert f"data.preferences[1]: nothere.jsonl: no such file (looked in {tmp_path} and {REPO})" in message
    assert f"data.rl_prompts[0]: {tmp_path}/gone.jsonl: no such file" in message
    assert "preferences[0]" not in message


def test_cli_deploy_refuses_missing_data_before_contacting_any_server(tmp_path):
    """Run from outside the repository, as a user might: one line, exit 2, no Prefect needed."""
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli_servers", "deploy", "-c", "smoke", "--set", "data.preferences=[nothere.jsonl]",
         "--prefect-api-url", f"http://127.0.0.1:{free_port()}/api", "--no-worker"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120, env={**_env(), "COLUMNS": "80"},
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: data.preferences[0]: nothere.jsonl: no such file"), result.stderr


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(REPO)}


# --- what `rlhf deploy` prints while it follows the worker's log -------------------------------


def test_the_followed_worker_log_is_redacted_and_read_in_whole_lines(tmp_path, capsys):
    from flows.cli_servers import _follow

    log = tmp_path / "worker.log"
    log.write_text("run started with uri http://u:FAKE-pw-77@h:5000/x\npartial line http://u:FAK")
    position = _follow(log, 0)
    out = capsys.readouterr().out
    assert "FAKE-pw-77" not in out and "http://u:***@h:5000/x" in out
    assert "partial" not in out  # held back until its line is complete
    with open(log, "a") as fh:
        fh.write("E-pw-77@h\n")
    _follow(log, position)
    rest = capsys.readouterr().out
    assert rest.startswith("partial line http://u:***@h") and "FAKE" not in rest
