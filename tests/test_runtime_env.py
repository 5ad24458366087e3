"""The process settings `rlhf run` applies for Prefect's ephemeral API server (flows.runtime).

No server is started: the settings are checked as Prefect parses them, and the priority helper
on a plain child process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import psutil
import pytest

from flows.runtime import EPHEMERAL_SERVER_DEFAULTS, SERVER_NICE_ENV, lower_server_priority, prepare_environment

GRANULARITY = "PREFECT_SERVER_EVENTS_PROACTIVE_GRANULARITY"


@pytest.fixture
def environ():
    """os.environ as the test found it afterwards (prepare_environment sets many keys), without
    PREFECT_API_URL or any of the keys under test during it."""
    saved = dict(os.environ)
    for key in ("PREFECT_API_URL", "PREFECT_HOME", *EPHEMERAL_SERVER_DEFAULTS):
        os.environ.pop(key, None)
    yield os.environ
    os.environ.clear()
    os.environ.update(saved)


def _prefect_settings():
    from prefect.settings import Settings

    return Settings()  # read from os.environ now, as the server subprocess will


def test_ephemeral_mode_gets_the_server_defaults_and_prefect_accepts_them(environ, tmp_path):
    prepare_environment(tmp_path)
    assert environ[GRANULARITY] == "PT60S" and environ[SERVER_NICE_ENV] == "10"
    services = _prefect_settings().server.services
    assert _prefect_settings().server.events.proactive_granularity == timedelta(seconds=60)
    # What task runs (UI, crash sweep), the event feed and automations need stays on.
    assert services.task_run_recorder.enabled and services.event_persister.enabled and services.triggers.enabled


def test_a_value_the_user_set_wins(environ, tmp_path):
    environ[GRANULARITY] = "PT5S"
    environ[SERVER_NICE_ENV] = "0"
    prepare_environment(tmp_path)
    assert environ[GRANULARITY] == "PT5S" and environ[SERVER_NICE_ENV] == "0"
    assert _prefect_settings().server.events.proactive_granularity == timedelta(seconds=5)


def test_a_real_prefect_server_gets_none_of_them(environ, tmp_path):
    environ["PREFECT_API_URL"] = "http://127.0.0.1:4200/api"
    prepare_environment(tmp_path)
    assert not [key for key in EPHEMERAL_SERVER_DEFAULTS if key in environ]
    assert "PREFECT_HOME" not in environ


@pytest.fixture
def child():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield psutil.Process(proc.pid)
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("setting, increment", [("10", 10), ("3", 3), ("25", 25)])
def test_the_server_runs_that_many_levels_nicer_than_this_process(environ, child, setting, increment):
    environ[SERVER_NICE_ENV] = setting
    expected = min(19, os.nice(0) + increment)
    assert lower_server_priority(child.pid) == expected
    assert child.nice() == expected
    assert lower_server_priority(child.pid) == expected and child.nice() == expected  # not lowered twice


@pytest.mark.parametrize("setting", ["0", "-5", "", "ten"])
def test_zero_or_nonsense_leaves_the_server_priority_alone(environ, child, setting, caplog):
    environ[SERVER_NICE_ENV] = setting
    before = child.nice()
    assert lower_server_priority(child.pid) is None
    assert child.nice() == before
    assert ("not a whole number" in caplog.text) == (setting == "ten")


def test_a_server_that_is_gone_only_logs_a_warning(environ, caplog):
    environ[SERVER_NICE_ENV] = "10"
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert lower_server_priority(proc.pid) is None
    assert "could not lower the priority" in caplog.text
