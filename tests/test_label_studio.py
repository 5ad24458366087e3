"""Label Studio as the labelling backend, through a real server and a real browser.

One Label Studio (its own venv, ``make label-studio``) serves the module: ~40 s to start on 2
cores. A person's work is done by headless Chromium in Label Studio's own web page: log in, open
the batch's project, pick the better reply of each comparison by what it says, submit; the labels
come back through ``collect`` mapped to a/b/tie. Screenshots go to $RLHF_E2E_SCREENSHOTS
(default <repo>/.rlhf/e2e-screenshots/label-studio-*.png). Outside CI the module is skipped when
the venv is absent; in CI `make test` builds it first, so it never skips.

The first tests need no server: the mapping from Label Studio's export to labels, on hand-written
exports.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import secrets
import threading
import time
from pathlib import Path

import psutil
import pytest

from flows.label_studio_server import start_label_studio
from rlhf_core.errors import ConfigError, DataError
from rlhf_core.label_studio import (
    KEY_ENV,
    PASSWORD_ENV,
    URL_ENV,
    USERNAME_ENV,
    LabelStudioError,
    LabelStudioLabeler,
    LabelStudioUnavailable,
    conversation_text,
    create_access_token,
    make_auth,
    project_title,
    read_export,
    task_data,
)
from rlhf_core.labeling import Label, LabelError, LabelTask
from rlhf_core.processes import free_port
from tests.conftest import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

LS_VENV = REPO / ".venv-label-studio"
SCREENSHOTS = Path(os.environ.get("RLHF_E2E_SCREENSHOTS", REPO / ".rlhf" / "e2e-screenshots"))
USERNAME = "labeller@example.com"
PASSWORD = "pw-" + secrets.token_urlsafe(12)  # fresh per run: a leak check looks for it
MARK = "BETTER-REPLY"  # the browser picks the reply that carries it
LONG_BATCH = "20261204-021209-my-long-experiment-name-round12-a1b2c3"  # a round's run id: over 50 characters


def _task(i: int, reply_a: str, reply_b: str, **kw) -> LabelTask:
    return LabelTask.create(round=1, policy_version="v1", prompt=f"Question number {i}: how do plants grow?",
                            prompt_messages=kw.pop("prompt_messages", None), reply_a=reply_a, reply_b=reply_b, **kw)


# ----------------------------------------------------------------------------- without a server


def _export_item(ls_id: int, task: LabelTask | None, annotations: list[dict]) -> dict:
    data = task_data(task) if task is not None else {"text": "someone else's task"}
    return {"id": ls_id, "data": data, "annotations": annotations}


def _annotation(ann_id: int, user: int, choice: str | None, *, updated: str = "2026-01-01T00:00:00Z",
                cancelled: bool = False, note: str | None = None) -> dict:
    result = [] if choice is None else [{"from_name": "choice", "to_name": "reply_a", "type": "choices",
                                         "value": {"choices": [choice]}}]
    if note is not None:
        result.append({"from_name": "note", "to_name": "reply_a", "type": "textarea", "value": {"text": [note]}})
    return {"id": ann_id, "completed_by": user, "result": result, "was_cancelled": cancelled, "updated_at": updated}


def test_export_maps_to_one_label_per_person_and_task_skips_not_labels_latest_wins():
    t1, t2 = _task(1, "reply one", "reply two"), _task(2, "reply three", "reply four", harmful=True, topic="plants")
    users = {1: "ann@example.com", 2: "bob@example.com"}
    exported = [
        _export_item(10, t1, [_annotation(1, 1, "a", note="clearer"), _annotation(2, 2, "tie"),
                              _annotation(3, 2, None, cancelled=True)]),
        _export_item(11, t2, [_annotation(4, 1, "a", updated="2026-01-01T00:00:00Z"),
                              _annotation(5, 1, "b", updated="2026-01-02T00:00:00Z")]),  # ann changed her mind
    ]
    read = read_export(exported, users, "project")
    assert read.tasks == {t1.task_id: t1, t2.task_id: t2}  # the whole task comes back, metadata included
    assert sorted(read.labels, key=lambda lab: (lab.task_id, lab.annotator)) == sorted([
        Label(t1.task_id, "a", "ann@example.com", "clearer"), Label(t1.task_id, "tie", "bob@example.com"),
        Label(t2.task_id, "b", "ann@example.com"),
    ], key=lambda lab: (lab.task_id, lab.annotator))
    assert (read.skipped, read.replaced) == (1, 1)


def test_export_problems_name_the_project_the_task_and_the_rule():
    t1 = _task(1, "reply one", "reply two")
    exported = [_export_item(10, t1, [_annotation(1, 1, "maybe"), _annotation(2, 1, None)]),
                _export_item(11, None, [])]
    with pytest.raises(LabelError) as err:
        read_export(exported, {1: "ann@example.com"}, "Label Studio project 'rlhf r1' task")
    message = str(err.value)
    assert message.startswith("Label Studio project 'rlhf r1' task:10: bad_choice: annotation 1 by ann@example.com")
    assert "'maybe'" in message and (
        "(and 2 more: 1 no_choice, 1 unknown_task; lines 10 no_choice, 11 unknown_task)" in message)
    assert [p.line for p in err.value.problems] == [10, 10, 11]


def test_task_data_shows_the_conversation_and_carries_the_task():
    task = _task(1, "a", "b", prompt_messages=[{"role": "system", "content": "Be brief."},
                                                {"role": "user", "content": "Hi?"}])
    data = task_data(task)
    assert data["conversation"] == "System: Be brief.\n\nUser: Hi?" == conversation_text(task)
    assert {k: v for k, v in data.items() if k != "conversation"} == task.to_dict()
    assert conversation_text(_task(2, "a", "b")) == "User: Question number 2: how do plants grow?"


def test_credentials_are_told_apart_and_never_shown():
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9.c2lnbmF0dXJl"
    assert type(make_auth(jwt)).__name__ == "_PersonalAccessToken"
    assert type(make_auth("8e662a959b0123456789abcdef")).__name__ == "_LegacyToken"
    assert type(make_auth(None, "ann@example.com", "pw")).__name__ == "_PasswordLogin"
    with pytest.raises(ConfigError, match=f"{KEY_ENV}.*{USERNAME_ENV} and {PASSWORD_ENV}"):
        make_auth(None)
    with pytest.raises(ConfigError, match=f"{URL_ENV} is not set"):
        LabelStudioLabeler.from_env({KEY_ENV: jwt})
    with pytest.raises(ConfigError, match="is not an http"):
        LabelStudioLabeler("localhost:8080", api_key=jwt)
    labeler = LabelStudioLabeler("http://127.0.0.1:9/", api_key=jwt, password="hunter2-pw")
    assert jwt not in repr(labeler) and "hunter2" not in repr(labeler) and labeler.url == "http://127.0.0.1:9"


def test_every_batch_name_gets_its_own_project_title_within_label_studios_50_characters():
    assert project_title("round-3") == "rlhf round-3" and project_title("r" * 45) == "rlhf " + "r" * 45
    long_a, long_b = LONG_BATCH, LONG_BATCH.replace("a1b2c3", "d4e5f6")  # two run ids, the same start
    assert len(project_title(long_a)) == 50 and project_title(long_a) != project_title(long_b)
    assert project_title(long_a).startswith("rlhf 20261204-021209-my-long-experiment-")
    with pytest.raises(DataError, match="must be letters"):
        project_title("round 3")


def test_start_refuses_a_missing_venv_and_a_taken_port(tmp_path):
    with pytest.raises(ConfigError, match="make label-studio"):
        start_label_studio(tmp_path / "no-venv", tmp_path, free_port(), USERNAME, PASSWORD, tmp_path / "log")
    if not LS_VENV.is_dir():
        return
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(LabelStudioError, match=f"http://127.0.0.1:{port}: port {port} is already in use"):
            start_label_studio(LS_VENV, tmp_path, port, USERNAME, PASSWORD, tmp_path / "log")


class _Answer500(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        body = b'{"detail": "database is locked"}' if "projects" in self.path else b"<html>not json</html>"
        self.send_response(500 if "projects" in self.path else 200)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_unreachable_or_failing_label_studio_is_one_clear_line():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(LabelStudioUnavailable, match=rf"^Label Studio at {re.escape(url)} is not reachable: .*refused"):
        LabelStudioLabeler(url, api_key="0123456789abcdef").progress("round-1")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer500)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(LabelStudioUnavailable, match="failed on GET /api/projects/: HTTP 500 database is locked"):
            LabelStudioLabeler(url, api_key="0123456789abcdef").progress("round-1")
        labeler = LabelStudioLabeler(url, api_key="0123456789abcdef")
        with pytest.raises(LabelStudioError, match=f"is not JSON .*is {URL_ENV} the address of Label Studio"):
            labeler.client.call("GET", "/elsewhere")
    finally:
        server.shutdown()


# ----------------------------------------------------------------------------- a real Label Studio


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not (LS_VENV / ".installed").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"Label Studio's venv {LS_VENV} is missing in CI: `make test` builds it (make label-studio)")
        pytest.skip(f"Label Studio's venv is absent ({LS_VENV}); build it with `make label-studio`")
    root = tmp_path_factory.mktemp("label-studio")
    started = time.monotonic()
    srv = start_label_studio(LS_VENV, root / "data", free_port(), USERNAME, PASSWORD, root / "label-studio.log")
    print(f"Label Studio up at {srv.url} in {time.monotonic() - started:.1f} s")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def api_key(server) -> str:
    return create_access_token(server.url, USERNAME, PASSWORD)


@pytest.fixture(scope="module")
def labeler(server, api_key) -> LabelStudioLabeler:
    return LabelStudioLabeler.from_env({URL_ENV: server.url, KEY_ENV: api_key})


def _projects(labeler: LabelStudioLabeler, title: str) -> list[dict]:
    answer = labeler.client.call("GET", "/api/projects/", query={"title": title})
    return [p for p in answer["results"] if p["title"] == title]


def _ls_tasks(labeler: LabelStudioLabeler, project_id: int) -> list[dict]:
    return labeler.client.call("GET", "/api/tasks/", query={"project": project_id, "page_size": 100})["tasks"]


def test_submit_makes_one_project_per_batch_and_is_idempotent(labeler):
    tasks = [_task(i, f"reply {i} first", f"reply {i} second") for i in range(3)]
    labeler.submit(tasks, "batch-1")
    (project,) = _projects(labeler, "rlhf batch-1")
    stored = _ls_tasks(labeler, project["id"])
    assert sorted(t["data"]["task_id"] for t in stored) == sorted(t.task_id for t in tasks)
    assert labeler.progress("batch-1") == labeler.progress("batch-1")
    assert (labeler.progress("batch-1").labelled_tasks, labeler.progress("batch-1").total_tasks) == (0, 3)
    assert labeler.collect("batch-1") == []
    assert labeler.link("batch-1") == f"{labeler.url}/projects/{project['id']}"

    labeler.submit(list(reversed(tasks)), "batch-1")  # a resumed round: nothing new
    assert len(_projects(labeler, "rlhf batch-1")) == 1 and len(_ls_tasks(labeler, project["id"])) == 3
    with pytest.raises(DataError, match=r"batch 'batch-1' already exists with different tasks \(3 there, 2 submitted"):
        labeler.submit(tasks[:2], "batch-1")
    with pytest.raises(DataError, match="batch 'batch-9' was never submitted"):
        labeler.progress("batch-9")
    labeler.submit(tasks[:2], "batch-10")  # 'rlhf batch-1' is a substring of its title: still its own project
    assert labeler.progress("batch-10").total_tasks == 2 and labeler.progress("batch-1").total_tasks == 3
    labeler.submit(tasks[:1], LONG_BATCH)
    labeler.submit(tasks[:1], LONG_BATCH)
    assert labeler.progress(LONG_BATCH).total_tasks == 1 and len(_projects(labeler, project_title(LONG_BATCH))) == 1


def test_a_person_labels_the_batch_in_the_browser(server, labeler, tmp_path):
    """a, b and tie picked by what the replies say; collect maps each back to its task and choice."""
    tasks = [
        _task(10, f"Water and light. {MARK}", "Plants do not grow."),
        _task(11, "They grow by magic.", f"Photosynthesis turns light into sugar. {MARK}",
              prompt_messages=[{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi!"},
                               {"role": "user", "content": "Question number 11: how do plants grow?"}]),
        _task(12, "Sunlight, mostly.", "Mostly sunlight."),
    ]
    expected = {tasks[0].task_id: "a", tasks[1].task_id: "b", tasks[2].task_id: "tie"}
    labeler.submit(tasks, "browser-1")
    from tests.e2e.browser import chromium

    with chromium(tmp_path / "profile") as driver:
        _log_in(driver, server.url)
        _open_stream(driver, labeler.link("browser-1"))
        for n in range(len(tasks)):
            _label_one(driver, n)
        _wait_text(driver, "No More Tasks Left in Queue")
        _shot(driver, "done")
    assert labeler.progress("browser-1").complete
    labels = labeler.collect("browser-1")
    assert {lab.task_id: lab.choice for lab in labels} == expected
    assert {lab.annotator for lab in labels} == {USERNAME} and len(labels) == 3
    assert [lab.note for lab in labels if lab.choice == "b"] == ["photosynthesis is right"]


def _log_in(driver, url: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url + "/user/login/")
    _wait_text(driver, "Log in")
    driver.find_element(By.NAME, "email").send_keys(USERNAME)
    driver.find_element(By.NAME, "password").send_keys(PASSWORD)
    _shot(driver, "login")
    driver.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
    deadline = time.monotonic() + 60
    while "/user/login" in driver.current_url and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "/user/login" not in driver.current_url, "the login page did not let the labeller in"


def _open_stream(driver, link: str, n_tasks: int = 3) -> None:
    """The project page (what the round links to), then its "Label All Tasks" button, as a person would."""
    from tests.e2e.browser import click_text

    driver.get(link)
    _wait_text(driver, "Label All Tasks", timeout=120)
    _wait_text(driver, f"Tasks: {n_tasks} / {n_tasks}")
    _shot(driver, "project")
    click_text(driver, "Label All Tasks")


def _label_one(driver, n: int) -> None:
    """Pick the reply that carries MARK (a tie when neither does) on the task shown, and submit it."""
    from tests.e2e.browser import click_text

    body = _wait_text(driver, "Tie (neither is better)", timeout=120)
    shown = re.search(r"Question number (\d+)", body).group(1)
    reply_a = body.split("Reply A", 1)[1].split("Reply B", 1)[0]
    reply_b = body.split("Reply B", 1)[1].split("A is better", 1)[0]
    pick = "A is better" if MARK in reply_a else "B is better" if MARK in reply_b else "Tie (neither is better)"
    if n == 0:  # a person who submits without choosing is stopped, and nothing is saved
        click_text(driver, "Submit")
        _wait_text(driver, 'Checkbox "choice" is required')
        _shot(driver, "choice-required")
        _dismiss(driver)
    _choose(driver, pick)
    if pick == "B is better":
        from selenium.webdriver.common.by import By

        driver.find_element(By.CSS_SELECTOR, "textarea").send_keys("photosynthesis is right")
    _shot(driver, f"task-{shown}")
    click_text(driver, "Submit")
    _wait_gone(driver, f"Question number {shown}:")


def _choose(driver, text: str) -> None:
    from selenium.webdriver.common.by import By

    xpath = f"//label[contains(normalize-space(.), '{text}')]"
    driver.find_element(By.XPATH, xpath).click()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the click re-renders the choices: look them up again
        try:
            if driver.find_element(By.XPATH, xpath + "//input[@type='radio']").is_selected():
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{driver.current_url}: clicking {text!r} did not select it")


def _dismiss(driver) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    for button in driver.find_elements(By.XPATH, "//button[normalize-space(.)='OK' or normalize-space(.)='Ok']"):
        if button.is_displayed():
            button.click()
            return
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)


def _wait_text(driver, text: str, timeout: float = 60.0) -> str:
    from tests.e2e.browser import wait_for_texts

    return wait_for_texts(driver, [text], timeout=timeout)


def _wait_gone(driver, text: str, timeout: float = 60.0) -> None:
    from tests.e2e.browser import page_text

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if text not in page_text(driver):
                return
        except Exception:  # the page is re-rendering
            pass
        time.sleep(0.5)
    raise AssertionError(f"{driver.current_url}: still shows {text!r} after submitting")


def _shot(driver, name: str) -> None:
    from tests.e2e.browser import screenshot

    screenshot(driver, SCREENSHOTS / f"label-studio-{name}.png")


def test_annotations_that_do_not_map_raise_a_label_error_naming_project_and_task(labeler):
    tasks = [_task(20, "one reply", "another reply"), _task(21, "third reply", "fourth reply")]
    labeler.submit(tasks, "bad-1")
    (project,) = _projects(labeler, "rlhf bad-1")
    by_id = {t["data"]["task_id"]: t["id"] for t in _ls_tasks(labeler, project["id"])}
    good, bad = by_id[tasks[0].task_id], by_id[tasks[1].task_id]
    _annotate(labeler, good, [], cancelled=True)  # skipped: not a label
    _annotate(labeler, good, _choice("b"))
    assert labeler.collect("bad-1") == [Label(tasks[0].task_id, "b", USERNAME)]
    assert labeler.annotation_counts("bad-1") == {"labels": 1, "skipped": 1, "replaced": 0}
    assert (labeler.progress("bad-1").labelled_tasks, labeler.progress("bad-1").total_tasks) == (1, 2)

    _annotate(labeler, bad, _choice("definitely A"))
    for read in (labeler.collect, labeler.progress):
        with pytest.raises(LabelError) as err:
            read("bad-1")
        assert str(err.value).startswith(f"Label Studio project 'rlhf bad-1' ({labeler.url}/projects/{project['id']}) "
                                         f"task:{bad}: bad_choice: ")
        assert "'definitely A'" in str(err.value) and "expected exactly one of a, b, tie" in str(err.value)


def _choice(value: str) -> list[dict]:
    return [{"from_name": "choice", "to_name": "reply_a", "type": "choices", "value": {"choices": [value]}}]


def _annotate(labeler: LabelStudioLabeler, ls_task: int, result: list[dict], cancelled: bool = False) -> None:
    labeler.client.call("POST", f"/api/tasks/{ls_task}/annotations/", {"result": result, "was_cancelled": cancelled})


def _three_task_batch(labeler: LabelStudioLabeler, batch: str) -> str:
    """A batch of its own, so that a test stands alone (run with -k or in any order)."""
    labeler.submit([_task(i, f"reply {i} first", f"reply {i} second") for i in range(3)], batch)
    return batch


def test_bad_credentials_name_the_variable_and_never_show_the_secret(server, api_key, labeler):
    batch = _three_task_batch(labeler, "credentials-1")
    forged = api_key[:-6] + ("AAAAAA" if not api_key.endswith("AAAAAA") else "BBBBBB")
    cases = [
        ({KEY_ENV: forged}, KEY_ENV, forged, "Token is invalid"),
        ({KEY_ENV: "0123456789abcdef0123"}, KEY_ENV, "0123456789abcdef0123", "Invalid token"),
        ({USERNAME_ENV: USERNAME, PASSWORD_ENV: "wrong-" + PASSWORD}, f"{USERNAME_ENV}/{PASSWORD_ENV}", PASSWORD,
         "refused the login"),
    ]
    for env, named, secret, said in cases:
        with pytest.raises(LabelStudioError) as err:
            LabelStudioLabeler.from_env({URL_ENV: server.url, **env}).progress(batch)
        message = str(err.value)
        assert named in message and said in message and server.url in message, message
        assert secret not in message and "\n" not in message, message
    by_password = LabelStudioLabeler.from_env({URL_ENV: server.url, USERNAME_ENV: USERNAME, PASSWORD_ENV: PASSWORD})
    assert by_password.progress(batch).total_tasks == 3  # the login the web page uses works too ...
    by_password.submit([_task(30, "yes", "no")], "password-1")  # ... for writes as well (Django's CSRF token)
    assert by_password.progress("password-1").total_tasks == 1


def test_an_expired_access_token_is_renewed_from_the_personal_access_token(labeler):
    batch = _three_task_batch(labeler, "expiry-1")
    auth = labeler.client.auth
    auth.access = auth.access[:-4] + "AAAA"  # as Label Studio sees an expired one: 401
    assert labeler.progress(batch).total_tasks == 3
    renewed = auth.access
    auth.fetched_at -= 3600  # older than an access token lives: renewed before it is used
    assert labeler.progress(batch).total_tasks == 3 and auth.access != renewed


def test_credentials_stay_out_of_the_server_log(server, api_key):
    log = server.log_path.read_text(encoding="utf-8", errors="replace")
    assert log and PASSWORD not in log and api_key not in log
    root = psutil.Process(server.process.pid)
    for proc in [root, *root.children(recursive=True)]:  # handed over in the environment, not argv
        assert PASSWORD not in " ".join(proc.cmdline())


# ----------------------------------------------------------------------------- a round labelled by a person


def test_an_iterate_round_waits_for_a_person_labelling_in_label_studio_and_trains_on_those_labels(server, api_key, tmp_path):
    """`rlhf iterate --labeler label-studio` on the smoke preset: the round sends its tasks, waits; a person
    labels every task in the web page (B each time); the round resumes, imports exactly those labels, trains."""
    import glob
    import json
    import subprocess
    import sys

    import pandas as pd

    from tests.conftest import MODEL_CACHE

    ws = tmp_path / "ws"
    common = ["-c", "smoke", "-w", str(ws), "--set", f"model.cache_dir={MODEL_CACHE}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "LABEL_STUDIO"))}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    source = subprocess.run([sys.executable, "-m", "flows.cli", "run", *common], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=900)
    assert source.returncode == 0, source.stdout[-2000:] + source.stderr[-2000:]
    run_id = Path(next(glob.glob(str(ws / "runs" / "*-rlhf-smoke-*")).__iter__())).name
    env.update({URL_ENV: server.url, KEY_ENV: api_key})
    log = tmp_path / "iterate.out"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "iterate", *common, "--from-run", run_id, "--labeler", "label-studio",
             "--set", "iterate.prompts_per_round=2", "--set", "iterate.pairs_per_prompt=1",
             "--set", "iterate.poll_interval_s=2", "--set", "iterate.label_timeout_s=600"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while not glob.glob(str(ws / "runs" / "*round1*" / "label" / "tasks.jsonl")):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(2)
        round_dir = Path(glob.glob(str(ws / "runs" / "*round1*"))[0])
        labeler = LabelStudioLabeler.from_env({URL_ENV: server.url, KEY_ENV: api_key})
        while True:  # submitted once the project holds the tasks
            try:
                waiting = labeler.progress(round_dir.name)
                break
            except DataError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(1)
        assert waiting.labelled_tasks == 0 and waiting.total_tasks == 2 and proc.poll() is None  # it waits
        from tests.e2e.browser import chromium

        with chromium(tmp_path / "profile") as driver:
            _log_in(driver, server.url)
            _open_stream(driver, labeler.link(round_dir.name), n_tasks=2)
            for n in range(2):
                _wait_text(driver, "Tie (neither is better)", timeout=120)
                _choose(driver, "B is better")
                _shot(driver, f"round-task-{n}")
                _submit(driver)
            _wait_text(driver, "No More Tasks Left in Queue")
        assert proc.wait(timeout=900) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    printed = log.read_text()
    assert "round 1" in printed and "2 labels" in printed, printed[-2000:]
    tasks = {t["task_id"]: t for t in map(json.loads, (round_dir / "label" / "tasks.jsonl").read_text().splitlines())}
    imported = [json.loads(x) for x in (round_dir / "label" / "labels.jsonl").read_text().splitlines()]
    assert sorted(x["task_id"] for x in imported) == sorted(tasks) and {x["choice"] for x in imported} == {"b"}
    assert {x["annotator"] for x in imported} == {USERNAME}
    rows = pd.read_parquet(round_dir / "label" / "preferences.parquet")
    assert sorted(rows["chosen"]) == sorted(t["reply_b"] for t in tasks.values())  # trained on what the person chose
    grown = pd.read_parquet(round_dir / "data" / "preferences.parquet")
    assert set(rows["id"]) <= set(grown["id"])
    assert (round_dir / "reward" / "outputs.json").is_file() and (round_dir / "eval" / "outputs.json").is_file()
    # the key never reaches a file of the workspace (configs, logs, Prefect's database, MLflow's store)
    leaked = [p for p in ws.rglob("*") if p.is_file() and p.stat().st_size < 50_000_000 and api_key.encode() in p.read_bytes()]
    assert not leaked, leaked


def _submit(driver) -> None:
    from tests.e2e.browser import click_text

    body = _wait_text(driver, "Submit")
    click_text(driver, "Submit")
    deadline = time.monotonic() + 60
    from tests.e2e.browser import page_text

    while time.monotonic() < deadline and page_text(driver) == body:
        time.sleep(0.3)


def test_a_stopped_label_studio_is_unreachable_and_leaves_no_process(server, labeler):
    pids = [server.process.pid, *(p.pid for p in psutil.Process(server.process.pid).children(recursive=True))]
    server.stop()
    assert not [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    with pytest.raises(LabelStudioUnavailable, match=rf"^Label Studio at {re.escape(server.url)} is not reachable"):
        labeler.progress("batch-1")
    print(json.dumps({"label_studio_startup_s": round(server.startup_s, 1)}))
