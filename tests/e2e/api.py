"""The REST calls the Prefect and MLflow UIs make, for the end-to-end test (httpx, no SDK state)."""

from __future__ import annotations

import time
from typing import Any

import httpx

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


class _RetryingClient(httpx.Client):
    """Retries 503/429 like Prefect's own client: the sqlite-backed server answers 503
    when its database is briefly locked by a concurrent writer."""

    def request(self, method, url, **kwargs):  # type: ignore[override]
        for attempt in range(8):
            response = super().request(method, url, **kwargs)
            if response.status_code not in (429, 503) or attempt == 7:
                return response
            time.sleep(min(0.5 * 2**attempt, 10))
        return response


class PrefectAPI:
    def __init__(self, api_url: str) -> None:
        self.api = api_url.rstrip("/")
        self.http = _RetryingClient(base_url=self.api, timeout=30)

    def deployment(self, flow_name: str, deployment_name: str) -> dict[str, Any]:
        r = self.http.get(f"/deployments/name/{flow_name}/{deployment_name}")
        r.raise_for_status()
        return r.json()

    def online_workers(self, pool: str) -> list[dict[str, Any]]:
        r = self.http.post(f"/work_pools/{pool}/workers/filter", json={})
        if r.status_code == 404:
            return []
        r.raise_for_status()
        return [w for w in r.json() if w.get("status") == "ONLINE"]

    def run_deployment(self, deployment_id: str, parameters: dict | None = None) -> dict[str, Any]:
        """What the UI's 'Run > Quick run' button posts."""
        body: dict[str, Any] = {"state": {"type": "SCHEDULED", "name": "Scheduled"}}
        if parameters is not None:
            body["parameters"] = parameters
        r = self.http.post(f"/deployments/{deployment_id}/create_flow_run", json=body)
        r.raise_for_status()
        return r.json()

    def flow_runs_of(self, deployment_id: str) -> list[dict[str, Any]]:
        """Every flow run of a deployment (any state), oldest expected start first."""
        r = self.http.post(
            "/flow_runs/filter",
            json={"deployments": {"id": {"any_": [deployment_id]}}, "sort": "EXPECTED_START_TIME_ASC"},
        )
        r.raise_for_status()
        return r.json()

    def set_schedule_active(self, deployment: dict[str, Any], active: bool) -> None:
        """What the schedule's toggle on the deployment page does."""
        for schedule in deployment["schedules"]:
            r = self.http.patch(f"/deployments/{deployment['id']}/schedules/{schedule['id']}", json={"active": active})
            r.raise_for_status()

    def flow_run(self, flow_run_id: str) -> dict[str, Any]:
        r = self.http.get(f"/flow_runs/{flow_run_id}")
        r.raise_for_status()
        return r.json()

    def wait_for_terminal(self, flow_run_id: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        run = self.flow_run(flow_run_id)
        while run["state_type"] not in TERMINAL and time.monotonic() < deadline:
            time.sleep(2)
            run = self.flow_run(flow_run_id)
        return run

    def task_runs(self, flow_run_id: str) -> list[dict[str, Any]]:
        r = self.http.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": [flow_run_id]}}})
        r.raise_for_status()
        return r.json()

    def subflow_runs(self, flow_run_id: str) -> dict[str, dict[str, Any]]:
        """The stage subflow runs of a flow run, by flow name."""
        r = self.http.post("/flow_runs/filter", json={"flow_runs": {"parent_flow_run_id": {"any_": [flow_run_id]}}})
        r.raise_for_status()
        runs = {}
        for run in r.json():
            flow = self.http.get(f"/flows/{run['flow_id']}")
            flow.raise_for_status()
            runs[flow.json()["name"]] = run
        return runs

    def logs(self, flow_run_id: str, limit: int = 200) -> str:
        r = self.http.post(
            "/logs/filter", json={"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": limit, "sort": "TIMESTAMP_ASC"}
        )
        r.raise_for_status()
        return "\n".join(f"{row['level']:>3} {row['message']}" for row in r.json())


class MlflowAPI:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url + "/api/2.0/mlflow", timeout=30)

    def runs_tagged(self, tag: str, value: str) -> list[dict[str, Any]]:
        experiments = self.http.post("/experiments/search", json={"max_results": 1000}).json().get("experiments", [])
        r = self.http.post(
            "/runs/search",
            json={
                "experiment_ids": [e["experiment_id"] for e in experiments],
                "filter": f"tags.`{tag}` = '{value}'",
                "max_results": 1000,
            },
        )
        r.raise_for_status()
        return r.json().get("runs", [])


def tags_of(run: dict[str, Any]) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def metrics_of(run: dict[str, Any]) -> dict[str, float]:
    return {m["key"]: m["value"] for m in run["data"].get("metrics", [])}
