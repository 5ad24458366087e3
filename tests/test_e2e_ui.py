"""End to end, as a user lives with the product: real servers, a real worker, a real browser.

1. `rlhf ui` starts the Prefect server and the MLflow server (free ports, a tmp workspace).
2. `rlhf deploy --config smoke` registers the deployments (daily schedule, off) on a
   process work pool and runs a worker.
3. A second `rlhf deploy --interval 60 --active` registers the pipeline on a one-minute
   schedule; the Prefect *scheduler* (not the test) creates a run, the worker runs it, and the
   test turns the schedule off as the UI's toggle does. (SQLAlchemy 2.1 broke the scheduler
   while every run triggered through the API still worked.)
4. Headless Chromium opens the Prefect flow-run page and the MLflow run pages and checks
   what a person would see there; screenshots go to $RLHF_E2E_SCREENSHOTS
   (default <repo>/.rlhf/e2e-screenshots, not committed).

The commands run as ``python -m flows.cli_servers ui|deploy`` (the same functions that
`rlhf ui` / `rlhf deploy` call). Needs chromium + chromium-driver (infra/ensure-test-deps.sh).
"""

from __future__ import annotations

import json

import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhf_core.processes import free_port
from tests.conftest import MODEL_CACHE, REPO
from tests.e2e.api import MlflowAPI, PrefectAPI, metrics_of, tags_of
from tests.e2e.browser import chromium, click_link_to, click_text, links_to, row_text, screenshot, scroll_to_text, wait_for_texts

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

SCREENSHOTS = Path(os.environ.get("RLHF_E2E_SCREENSHOTS", REPO / ".rlhf" / "e2e-screenshots"))
POOL = "rlhf-e2e"
CRON = "0 3 * * *"
SCHEDULED = "rlhf-smoke-every-minute"  # the deployment whose schedule must fire by itself
FIRE_TIMEOUT = 300.0  # scheduler loop (60 s) + the next interval slot (60 s) + the worker's poll (15 s)
SERVER_TIMEOUT = 300.0  # two servers starting together on 2 shared cores: ~30-50 s measured
RUN_TIMEOUT = 1200.0  # the smoke pipeline plus a cold Python process for the flow run
STAGES = ("data", "sft", "reward")  # nested MLflow runs the smoke preset must produce


class Command:
    """A CLI command running in the background, its output in a file, stopped with Ctrl-C."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self._fh = open(log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli_servers", *args],
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait_for_output(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if self.proc.poll() is not None:
                raise AssertionError(f"command exited with {self.proc.returncode} before printing {text!r}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"command did not print {text!r} within {timeout:.0f} s:\n{self.output()}")
            time.sleep(0.5)

    def interrupt(self, timeout: float = 60.0) -> int:
        """Ctrl-C, as a user stops it; return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._fh.close()
        return self.proc.returncode


def _pids_in_session(sid: int) -> list[int]:
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getsid(proc.pid) == sid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except (ProcessLookupError, PermissionError):
            continue
    return found


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Both servers via `ui`, the deployments + a worker via `deploy`; everything stopped after."""
    ws = tmp_path_factory.mktemp("e2e-workspace")
    prefect_port, mlflow_port = free_port(), free_port()
    prefect_url, mlflow_url = f"http://127.0.0.1:{prefect_port}", f"http://127.0.0.1:{mlflow_port}"
    started = time.monotonic()
    ui = Command(
        ["ui", "--workspace", str(ws), "--prefect-port", str(prefect_port), "--mlflow-port", str(mlflow_port),
         "--timeout", str(SERVER_TIMEOUT)],
        ws / "ui.out",
    )  # fmt: skip
    deploy = None
    try:
        ui.wait_for_output("both servers are healthy", SERVER_TIMEOUT + 30)
        server_seconds = time.monotonic() - started
        deploy = Command(
            ["deploy", "--config", "smoke", "--workspace", str(ws), "--set", f"model.cache_dir={MODEL_CACHE}",
             "--prefect-api-url", f"{prefect_url}/api", "--tracking-uri", mlflow_url, "--pool", POOL,
             "--cron", CRON, "--paused"],
            ws / "deploy.out",
        )  # fmt: skip
        deploy.wait_for_output("worker started", 180)
        prefect = PrefectAPI(f"{prefect_url}/api")
        deadline = time.monotonic() + 120
        while not prefect.online_workers(POOL):
            assert time.monotonic() < deadline, f"no worker came online in pool {POOL}:\n{deploy.output()}"
            time.sleep(1)
        yield {
            "ws": ws, "prefect_url": prefect_url, "mlflow_url": mlflow_url, "prefect": prefect,
            "mlflow": MlflowAPI(mlflow_url), "deploy": deploy, "ui": ui, "server_seconds": server_seconds,
        }  # fmt: skip
    finally:
        sessions = [c.proc.pid for c in (deploy, ui) if c is not None]
        children = {sid: _pids_in_session(sid) for sid in sessions}
        worker_rc = deploy.interrupt() if deploy else 0
        ui_rc = ui.interrupt()
        time.sleep(1)
        import psutil

        # The servers and the worker each run in their own session: check every pid we saw.
        leftover = [p for pids in children.values() for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        assert ui_rc == 0 and "stopped" in ui.output(), f"`ui` did not stop cleanly ({ui_rc}):\n{ui.output()}"
        assert worker_rc == 0, f"`deploy` did not stop cleanly ({worker_rc}):\n{deploy.output() if deploy else ''}"
        assert not leftover, f"processes left running after Ctrl-C: {leftover}"


@pytest.fixture(scope="module")
def deployment(stack):
    return stack["prefect"].deployment("rlhf-pipeline", "rlhf-smoke")


@pytest.fixture(scope="module")
def scheduled_deployment(stack):
    """The smoke pipeline on an active one-minute schedule (`rlhf deploy --interval 60 --active`)."""
    ws, deploy = stack["ws"], Command(
        ["deploy", "--config", "smoke", "--workspace", str(stack["ws"]), "--set", f"model.cache_dir={MODEL_CACHE}",
         "--prefect-api-url", f"{stack['prefect_url']}/api", "--tracking-uri", stack["mlflow_url"], "--pool", POOL,
         "--interval", "60", "--active", "--name", SCHEDULED, "--no-worker",
         "--set", "registry.require_gold_ci_above_zero=false"],  # its policy becomes the champion rounds start from
        stack["ws"] / "deploy-scheduled.out",
    )  # fmt: skip
    assert deploy.proc.wait(timeout=180) == 0, deploy.output()
    return stack["prefect"].deployment("rlhf-pipeline", SCHEDULED)


@pytest.fixture(scope="module")
def flow_run(stack, scheduled_deployment):
    """The first run the scheduler creates; the schedule is then turned off; wait until the run ends."""
    prefect: PrefectAPI = stack["prefect"]
    started = time.monotonic()
    picked = None
    while picked is None:
        runs = prefect.flow_runs_of(scheduled_deployment["id"])
        picked = next((r for r in runs if r["state_type"] not in ("SCHEDULED",)), None)
        assert time.monotonic() - started < FIRE_TIMEOUT, (
            f"the active schedule created no run that started within {FIRE_TIMEOUT:.0f} s "
            f"(runs: {[(r['name'], r['state_type']) for r in runs]}); scheduler errors in the server log:\n"
            + "\n".join(line for line in (stack["ws"] / "logs" / "prefect-server.log").read_text().splitlines() if "Error" in line)[-3000:]
        )  # fmt: skip
        time.sleep(2)
    fired = time.monotonic() - started
    prefect.set_schedule_active(scheduled_deployment, False)  # as the schedule's toggle in the UI
    run = prefect.wait_for_terminal(picked["id"], RUN_TIMEOUT)
    run["_seconds"] = time.monotonic() - started
    run["_fired_after"] = fired
    run["_left_scheduled"] = [r["name"] for r in prefect.flow_runs_of(scheduled_deployment["id"]) if r["state_type"] == "SCHEDULED"]
    return run


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with chromium(tmp_path_factory.mktemp("chromium-profile")) as driver:
        yield driver


def test_the_commands_ui_prints_to_copy_work_on_its_workspace(stack):
    """`rlhf ui` prints the lines to paste into another shell: each is whole on one line and names
    this workspace and these servers, and `rlhf` parses them (a run elsewhere would land elsewhere)."""
    import shlex

    import typer

    from flows.cli import app

    lines = stack["ui"].output().splitlines()
    copy = lines[lines.index("to use them from another shell:") + 1 :][:3]
    assert copy[0].strip() == f"export PREFECT_API_URL={stack['prefect_url']}/api", copy
    assert any(f"{stack['mlflow_url']}/#/experiments?workflowType=machine_learning" in line for line in lines), lines
    ws = str(stack["ws"].resolve())
    for line, command in zip(copy[1:], ("deploy", "run")):
        argv = shlex.split(line)
        assert argv[:2] == ["rlhf", command], line
        assert argv[argv.index("--workspace") + 1] == ws, line
        assert stack["mlflow_url"] in line, line
        # parsed as `rlhf` parses it (nothing runs): an unknown option or a missing value raises
        typer.main.get_command(app).commands[command].make_context(command, argv[2:])


def test_deployment_has_a_daily_schedule_that_is_off_on_process_pool(stack, deployment):
    assert deployment["work_pool_name"] == POOL
    # One switch, shown the same everywhere in the UI: the schedule's own; the deployment is not paused.
    assert deployment["paused"] is False
    assert [(s["schedule"].get("cron"), s["schedule"].get("timezone"), s["active"]) for s in deployment["schedules"]] == [(CRON, "UTC", False)]
    config = deployment["parameters"]["config"]
    assert config["name"] == "rlhf-smoke"
    assert Path(config["workspace"]) == stack["ws"].resolve()
    assert config["tracking"]["tracking_uri"] == stack["mlflow_url"]
    # Data paths resolved once, at deploy time (runs start in the worker's directory).
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in config["data"]["preferences"])
    # The UI renders a form from this schema and rejects bad values before a run is created.
    assert deployment["enforce_parameter_schema"] is True
    assert "config" in deployment["parameter_openapi_schema"]["properties"]
    # The stage flows are for runs by hand: scheduled too, each would redo its stage at 03:00.
    stage = stack["prefect"].deployment("sft", "rlhf-smoke")
    assert stage["schedules"] == [] and stage["paused"] is False


def test_a_credential_typed_into_the_form_is_refused_before_a_run_exists(stack, deployment):
    """The form's check (/ui/schemas/validate) and its submit (create_flow_run) both refuse it; nothing is stored."""
    prefect: PrefectAPI = stack["prefect"]
    secret = "FAKE-e2e-pw-31337"
    params = json.loads(json.dumps(deployment["parameters"]))
    params["config"]["tracking"]["tracking_uri"] = f"http://rlhf:{secret}@127.0.0.1:5000"
    params["config"]["model"]["revision"] = f"main?token={secret}"
    checked = prefect.http.post(
        "/ui/schemas/validate", json={"schema": deployment["parameter_openapi_schema"], "values": params}
    )
    assert checked.status_code == 200, checked.text
    assert checked.json()["valid"] is False and "no credential" in checked.text, checked.text
    before = {r["id"] for r in prefect.flow_runs_of(deployment["id"])}
    r = prefect.http.post(f"/deployments/{deployment['id']}/create_flow_run", json={"parameters": params, "state": {"type": "SCHEDULED"}})
    assert r.status_code in (409, 422), r.text
    assert "no credential" in r.text, r.text
    runs = prefect.flow_runs_of(deployment["id"])
    assert {r["id"] for r in runs} == before, "a flow run was created from parameters holding a password"
    all_runs = prefect.http.post("/flow_runs/filter", json={"limit": 200})
    assert secret not in all_runs.text, "a password reached Prefect's stored flow-run parameters"


def test_an_invalid_parameter_is_rejected_before_a_run_exists(stack, deployment):
    """What the UI's form submits goes through the same endpoint: a bad value creates no run."""
    prefect: PrefectAPI = stack["prefect"]
    bad = json.loads(json.dumps(deployment["parameters"]))
    bad["config"]["sft"]["optim"]["max_steps"] = 0  # must be >= 1
    body = {"parameters": bad, "state": {"type": "SCHEDULED"}}
    r = prefect.http.post(f"/deployments/{deployment['id']}/create_flow_run", json=body)
    assert r.status_code in (409, 422), r.text
    assert "max_steps" in r.text


def test_the_custom_run_form_is_labelled_by_config_key_in_plain_text(stack, deployment, browser):
    """Run -> Custom run on the pipeline deployment: sections and fields carry the keys a user writes in
    YAML and --set (`ppo`, `optim`, `learning_rate`), not class names; no reST markup is shown."""
    browser.get(f"{stack['prefect_url']}/deployments/deployment/{deployment['id']}/run")
    try:
        body = wait_for_texts(browser, ["kl_coef", "rollout_batch_size", "learning_rate"], timeout=90)
        height = browser.execute_script(  # the form scrolls inside the page's main pane
            "return Math.max(...Array.from(document.querySelectorAll('*'), e => e.scrollHeight))")
        inputs = browser.execute_script("return document.querySelectorAll('input, select, textarea, [role=switch]').length")
    finally:
        screenshot(browser, SCREENSHOTS / "prefect-custom-run-form.png")
    (SCREENSHOTS / "prefect-custom-run-form.json").write_text(json.dumps({"height_px": height, "inputs": inputs}))
    for class_name in ("PPOConfig", "OptimConfig", "DataConfig", "Learning Rate", "Kl Coef"):
        assert class_name not in body, f"the form shows {class_name!r}: labels should be config keys"
    for markup in ("``", "`tiny`"):
        assert markup not in body, f"the form shows raw markup {markup!r}"
    for key in ("ppo", "optim", "dedup", "registry"):
        assert re.search(rf"(?m)^\s*{key}( \(Optional\))?\s*$", body), f"no section labelled {key!r} in the form"


def test_an_active_schedule_fires_by_itself_and_its_run_completes(stack, flow_run):
    prefect: PrefectAPI = stack["prefect"]
    assert flow_run["auto_scheduled"] is True and flow_run["created_by"]["type"] == "SCHEDULE", flow_run["created_by"]
    assert flow_run["_left_scheduled"] == [], "turning the schedule off left scheduled runs behind"
    assert flow_run["state_type"] == "COMPLETED", (
        f"flow run {flow_run['name']} ended {flow_run['state_type']}: {flow_run['state']['message']}\n"
        f"--- flow-run logs ---\n{prefect.logs(flow_run['id'])[-6000:]}\n--- worker ---\n{stack['deploy'].output()[-3000:]}"
    )
    print(f"\nscheduled flow run {flow_run['name']}: started {flow_run['_fired_after']:.0f} s after deploying, "
          f"{flow_run['state_type']} after {flow_run['_seconds']:.0f} s (servers healthy after {stack['server_seconds']:.0f} s)")  # fmt: skip


def test_prefect_ui_shows_the_completed_run_and_its_stages(stack, flow_run, browser):
    prefect: PrefectAPI = stack["prefect"]
    stages = prefect.subflow_runs(flow_run["id"])  # flow name -> subflow run
    browser.get(f"{stack['prefect_url']}/runs/flow-run/{flow_run['id']}")
    try:
        body = wait_for_texts(browser, [flow_run["name"], "rlhf-pipeline", SCHEDULED, POOL], timeout=90)
        # The run's own state badge is the first state word after its name in the header
        # (task and subflow rows further down carry their own states).
        header = body.split(flow_run["name"], 1)[1]
        shown = re.search(r"\b(Completed|Failed|Crashed|Cancelled|Running|Pending|Scheduled|Late)\b", header)
        assert shown and shown.group(1) == "Completed", f"the flow-run page shows {shown and shown.group(1)!r}"
    finally:
        screenshot(browser, SCREENSHOTS / "prefect-flow-run.png")
    assert set(STAGES) <= set(stages), f"subflow runs {sorted(stages)} lack a stage of {STAGES}"
    click_text(browser, "Subflow Runs")
    try:
        body = wait_for_texts(browser, [f"{len(stages)} Flow runs", *(run["name"] for run in stages.values())], timeout=60)
    finally:
        screenshot(browser, SCREENSHOTS / "prefect-flow-run-stages.png")
    for flow_name, run in stages.items():  # each stage's row shows its own state badge
        row = row_text(browser, run["name"], row_marker="Task run")
        assert "Completed" in row, f"the {flow_name} subflow row shows: {row!r}"


def test_mlflow_ui_shows_nested_stage_runs_and_agreement(stack, flow_run, browser):
    assert flow_run["state_type"] == "COMPLETED", "the pipeline run did not complete (see the test above)"
    runs = stack["mlflow"].runs_tagged("prefect.flow_run_id", flow_run["id"])
    parents = [r for r in runs if "mlflow.parentRunId" not in tags_of(r)]
    assert len(parents) == 1, f"expected one parent MLflow run for the flow run, got {len(parents)}"
    parent = parents[0]
    children = [r for r in runs if tags_of(r).get("mlflow.parentRunId") == parent["info"]["run_id"]]
    stage_names = {r["info"]["run_name"]: r for r in children}
    assert set(STAGES) <= set(stage_names), f"nested runs {sorted(stage_names)} lack a stage of {STAGES}"
    agreement = metrics_of(stage_names["reward"])["rm/agreement_majority"]
    assert 0.0 <= agreement <= 1.0
    exp = parent["info"]["experiment_id"]
    mlflow_url = stack["mlflow_url"]

    # The parent run's page: finished, with its stage runs listed as child runs.
    browser.get(f"{mlflow_url}/#/experiments/{exp}/runs/{parent['info']['run_id']}")
    try:
        wait_for_texts(browser, [parent["info"]["run_name"], "Finished", "Child runs"], timeout=90)
    finally:
        screenshot(browser, SCREENSHOTS / "mlflow-parent-run.png")
    for stage in STAGES:  # each stage is a link to its own nested run
        links = links_to(browser, stage_names[stage]["info"]["run_id"])
        assert stage in links, f"parent run page has no '{stage}' link to its nested run (links: {links})"

    # Click through to the reward stage, as a person would, and read the agreement metric.
    click_link_to(browser, stage_names["reward"]["info"]["run_id"])
    try:
        body = wait_for_texts(browser, ["rm/agreement_majority", "Parent run", parent["info"]["run_name"]], timeout=60)
        scroll_to_text(browser, "rm/agreement_majority")
    finally:
        screenshot(browser, SCREENSHOTS / "mlflow-reward-run.png")
    assert stage_names["reward"]["info"]["run_id"] in browser.current_url
    shown = body.split("rm/agreement_majority", 1)[1].split()[0]
    assert math.isclose(float(shown), agreement, rel_tol=1e-3, abs_tol=1e-3), (shown, agreement)

    # The experiment's run list: the parent with its nested runs counted.
    browser.get(f"{mlflow_url}/#/experiments/{exp}/runs")
    try:
        wait_for_texts(browser, [parent["info"]["run_name"], f"{1 + len(children)} matching runs"], timeout=90)
    finally:
        screenshot(browser, SCREENSHOTS / "mlflow-experiment-runs.png")



def test_prefect_yaml_deploys_the_same_flows_with_prefect_deploy(stack):
    """infra/prefect.yaml is the declarative route: `prefect deploy` registers it as documented."""
    env = {**os.environ, "PREFECT_API_URL": f"{stack['prefect_url']}/api"}
    env.pop("PREFECT_HOME", None)
    run = lambda *args: subprocess.run([sys.executable, "-m", "prefect", *args], cwd=REPO, env=env,  # noqa: E731
                                       capture_output=True, text=True, timeout=300)  # fmt: skip
    created = run("work-pool", "create", "rlhf-process", "--type", "process")
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = run("--no-prompt", "deploy", "--all", "--prefect-file", "infra/prefect.yaml")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    demo = stack["prefect"].deployment("rlhf-pipeline", "rlhf-demo")
    assert demo["work_pool_name"] == "rlhf-process"
    assert [(s["schedule"]["cron"], s["active"]) for s in demo["schedules"]] == [(CRON, False)]
    assert demo["parameters"]["config"]["name"] == "rlhf-demo"
    assert demo["entrypoint"] == "flows/stages.py:rlhf_pipeline"
    # The default pull step: run from the repository root, where the flows and data live.
    steps = [step.get("prefect.deployments.steps.set_working_directory", {}) for step in demo["pull_steps"]]
    assert any(Path(s.get("directory", "")) == REPO for s in steps), demo["pull_steps"]


def test_the_mlflow_links_in_the_prefect_artifacts_land_on_the_runs(stack, flow_run, browser):
    """Follow the product's own links, as a person clicks them: Prefect's run page -> Artifacts ->
    the pipeline summary -> its MLflow links. Each must open a run page (or the runs table) showing
    the run's metrics, not MLflow's empty GenAI overview (traces, token usage)."""
    assert flow_run["state_type"] == "COMPLETED", "the pipeline run did not complete (see the test above)"
    from selenium.webdriver.common.by import By

    browser.get(f"{stack['prefect_url']}/runs/flow-run/{flow_run['id']}")
    wait_for_texts(browser, [flow_run["name"]], timeout=90)
    click_text(browser, "Artifacts")
    try:
        wait_for_texts(browser, ["pipeline-summary"], timeout=60)
    finally:
        screenshot(browser, SCREENSHOTS / "prefect-parent-artifacts.png")
    click_text(browser, "pipeline-summary")
    try:
        body = wait_for_texts(browser, ["gold win rate", "reward model agrees"], timeout=60)
    finally:
        screenshot(browser, SCREENSHOTS / "prefect-pipeline-summary.png")
    links = {a.text.strip(): a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, f"a[href^='{stack['mlflow_url']}']")}
    assert links, f"the summary has no link into the MLflow UI at {stack['mlflow_url']}:\n{body[:2000]}"
    runs = stack["mlflow"].runs_tagged("prefect.flow_run_id", flow_run["id"])
    by_id = {r["info"]["run_id"]: r for r in runs}
    followed = 0
    for text, href in links.items():
        run_id = next((rid for rid in by_id if rid in href), None)
        browser.get(href)  # the link opens in a new tab when clicked; the same URL here
        metric = "rm/agreement_majority" if by_id.get(run_id, {}).get("info", {}).get("run_name") == "reward" else None
        expected = [by_id[run_id]["info"]["run_name"], "Metrics"] if run_id else ["Run Name"]
        try:
            page = wait_for_texts(browser, expected + ([metric] if metric else []), timeout=60)
        finally:
            screenshot(browser, SCREENSHOTS / f"mlflow-from-artifact-{followed}.png")
        assert "Token Usage" not in page and "/overview" not in browser.current_url, (
            f"the link {text!r} ({href}) opened MLflow's GenAI overview ({browser.current_url}):\n{page[:1500]}"
        )
        followed += 1
    assert followed >= 2, links  # the parent run and at least one stage run


ROUNDS = "rlhf-smoke-rounds"  # `rlhf deploy --scheduled-flow rlhf-iterate`: a round on a schedule


def test_a_scheduled_iterate_deployment_runs_two_rounds_by_itself(stack, flow_run):
    """Iterated online RLHF on a schedule: the scheduler (not the test) starts two `rlhf-iterate` rounds,
    each from the registry's champion (the scheduled pipeline run's policy, then whatever won)."""
    assert flow_run["state_type"] == "COMPLETED"
    prefect: PrefectAPI = stack["prefect"]
    deploy = Command(
        ["deploy", "--config", "smoke", "--workspace", str(stack["ws"]), "--set", f"model.cache_dir={MODEL_CACHE}",
         "--set", "iterate.prompts_per_round=4", "--set", "registry.require_gold_ci_above_zero=false",
         "--prefect-api-url", f"{stack['prefect_url']}/api", "--tracking-uri", stack["mlflow_url"], "--pool", POOL,
         "--scheduled-flow", "rlhf-iterate", "--interval", "90", "--active", "--name", ROUNDS, "--no-worker"],
        stack["ws"] / "deploy-rounds.out",
    )  # fmt: skip
    assert deploy.proc.wait(timeout=180) == 0, deploy.output()
    assert "rlhf-iterate" in deploy.output().split("flows as")[1].splitlines()[1], deploy.output()  # listed first, scheduled
    rounds = prefect.deployment("rlhf-iterate", ROUNDS)
    assert rounds["schedules"][0]["active"] is True
    assert prefect.deployment("rlhf-pipeline", ROUNDS)["schedules"] == []
    deadline = time.monotonic() + 2 * FIRE_TIMEOUT + 2 * RUN_TIMEOUT
    done: list[dict] = []
    while len(done) < 2:
        runs = prefect.flow_runs_of(rounds["id"])
        done = [r for r in runs if r["state_type"] in ("COMPLETED", "FAILED", "CRASHED")]
        assert time.monotonic() < deadline, f"two rounds did not finish: {[(r['name'], r['state_type']) for r in runs]}"
        time.sleep(3)
    prefect.set_schedule_active(rounds, False)
    for run in done[:2]:
        assert run["created_by"]["type"] == "SCHEDULE" and run["state_type"] == "COMPLETED", (
            f"{run['name']} {run['state_type']}: {run['state']['message']}\n{prefect.logs(run['id'])[-4000:]}")
    from tasks.iterate import LEDGER, read_ledger

    ledger = read_ledger(stack["ws"] / "iterate" / "rlhf-smoke" / LEDGER)
    assert [r["round"] for r in ledger][:2] == [1, 2]
    assert ledger[0]["champion_before"].startswith("rlhf-smoke-policy v")
    tagged = stack["mlflow"].runs_tagged("rlhf.flow", "rlhf-iterate")  # each round's run in the MLflow tracking server
    assert {tags_of(r).get("rlhf.round") for r in tagged} >= {"1", "2"}
