"""MLflow tracking for the pipeline: one parent run per pipeline run, a nested run per stage.

Training loops in rlhf_core take a ``Tracker`` (``log_metrics``/``log_params``/
``log_artifact``); :class:`MlflowTracker` is the MLflow implementation, bound to one
MLflow run id so it works from any thread (Prefect tasks may run in worker threads,
where MLflow's "active run" stack is not visible).

A tracking server that goes down mid-run loses no metric (buffer and flush): every
metric batch is first appended to a spool file (``tasks.spool.MetricSpool``, one JSONL file
per MLflow run under ``<run_dir>/tracking/``), then sent. While the server is unreachable the
unsent batches stay pending, ONE warning names the server, training goes on, and later
calls retry. At stage end :func:`stage_run` flushes them for up to
``tracking.flush_timeout_s``; if the server is still down the stage fails with
``tasks.spool.TrackingUnavailableError``, naming the server and the spool, and
``rlhf tracking flush RUN_ID`` (or ``rlhf run --resume RUN_ID``; :func:`flush_spool`) sends
them later.

Also here: the run lifecycle (:func:`configure` the experiment, :func:`start_parent_run`,
:func:`stage_run`, :func:`end_run`) and the links to a run's MLflow UI page. Stage models and
checkpoints reach a local artifact store as hard links (tasks/artifact_links.py).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rlhf_core.stage_io import is_stage_model, is_training_checkpoint
from rlhf_core.tracking import NullTracker, flatten_params, metric_name
from tasks.artifact_links import link_tree
from tasks.spool import MetricSpool, TrackingUnavailableError, read_spool

# Keep MLflow quiet and local: no telemetry, no progress bars in logs.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


log = logging.getLogger("rlhf.tracking")

SPOOL_DIR = "tracking"  # <run_dir>/tracking/<stage>-<MLflow run id>.jsonl
DEFAULT_FLUSH_TIMEOUT_S = 60.0
# The metrics path calls the server with short HTTP retries of its own: MLflow's defaults
# (7 retries with exponential backoff, 120 s timeout) would stall training ~4 minutes per
# call while the server is down. Every other call (models, registry) keeps MLflow's defaults.
REQUEST_TIMEOUT_S = 10
REQUEST_RETRIES = 1
RETRY_INTERVAL_S = (2.0, 60.0)  # while unreachable, later calls retry after 2 s, doubling up to 60 s
MAX_METRICS_PER_REQUEST = 1000  # MLflow's log-batch limit


def is_unreachable(exc: BaseException) -> bool:
    """A connection failure, a timeout or a 5xx/429 answer (worth retrying later), not a rejected request."""
    import requests
    from mlflow.exceptions import MlflowException

    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, MlflowException):
        # MLflow wraps connection errors and timeouts as INTERNAL_ERROR (HTTP 500).
        status = exc.get_http_status_code()
        return status >= 500 or status == 429
    return False


def _why(exc: BaseException) -> str:
    """The short reason inside MLflow's wrapped request errors ("Connection refused", "timed out")."""
    text = " ".join(str(exc).split())
    for pattern in (r"\[Errno -?\d+\] ([^'\")\]]+)", r"ResponseError\('([^']+)'\)", r"(timed out)"):
        found = re.search(pattern, text)
        if found:
            return found.group(1).strip()
    return text if len(text) <= 200 else text[:197] + "..."


class MlflowTracker:
    """Logs to one MLflow run through the client API (thread-safe, batched).

    Metrics go through a :class:`MetricSpool` (``spool``: its file; None keeps it in memory)
    so a tracking-server outage loses none: see the module docstring.
    """

    def __init__(self, run_id: str, tracking_uri: str | None = None, *, spool: Path | None = None, stage: str | None = None) -> None:
        from mlflow.tracking import MlflowClient

        self.run_id = run_id
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = str(self.client.tracking_uri)
        self.stage = stage
        self.spool = MetricSpool(spool, run_id, self.tracking_uri, stage)
        self._lock = threading.RLock()
        self._retry_at = 0.0  # monotonic time of the next attempt while the server is unreachable
        self._interval = RETRY_INTERVAL_S[0]
        self._outage: str | None = None  # why the server is unreachable, once warned about
        self._last_error = ""
        self._artifact_dir: Path | Literal[False] | None = None  # None: not looked up yet; False: a remote store

    @property
    def store_name(self) -> str:
        """How messages name where metrics go: the server's URL, or the local store."""
        if self.tracking_uri.startswith(("http://", "https://")):
            return f"MLflow tracking server at {self.tracking_uri}"
        return f"MLflow tracking store {self.tracking_uri}"

    @property
    def pending_batches(self) -> int:
        """Metric batches not yet accepted by MLflow."""
        return len(self.spool.pending)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """All metrics of one step in one batch; NaN/inf are skipped (MLflow rejects some).

        The batch is spooled, then sent with any earlier unsent ones. While the server is
        unreachable it stays pending and later calls retry (after 2 s, doubling to 60 s), so
        training is never held up for more than one short request.
        """
        values: dict[str, float] = {}
        for key, value in metrics.items():
            if value is not None and math.isfinite(float(value)):
                values[metric_name(key)] = float(value)
        if not values:
            return
        with self._lock:
            self.spool.add(int(step), int(time.time() * 1000), values)
            if time.monotonic() >= self._retry_at:
                self._send_pending()
            if self.spool.pending:
                self.spool.sync()

    def flush(self, timeout_s: float = DEFAULT_FLUSH_TIMEOUT_S) -> None:
        """Send every pending batch, retrying for up to ``timeout_s``; raise TrackingUnavailableError after."""
        deadline = time.monotonic() + max(timeout_s, 0.0)
        delay = 1.0
        with self._lock:
            while not self._send_pending(warn=False):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TrackingUnavailableError(self.unsent_message(f"({self._last_error}) for {timeout_s:.0f} s"))
                time.sleep(min(delay, left))
                delay = min(delay * 2, 10.0)

    def finish(self, status: str = "FINISHED", timeout_s: float = DEFAULT_FLUSH_TIMEOUT_S) -> None:
        """Flush (waiting up to ``timeout_s`` for the server), then set the run's final status.

        If the server stays down, the run is recorded as FAILED in the spool (it is set when the
        spool is flushed later) and TrackingUnavailableError names the server and the spool.
        """
        with self._lock:
            try:
                self.flush(timeout_s)
                self._terminate(status)
            except TrackingUnavailableError:
                self.spool.record_end("FAILED")
                raise
            except Exception as exc:
                if not is_unreachable(exc):
                    raise
                self.spool.record_end("FAILED")
                raise TrackingUnavailableError(self.unsent_message(f"({_why(exc)})")) from exc

    def finish_quietly(self, status: str = "FAILED") -> None:
        """On a failing stage: one attempt to send what is pending and ``status``; never raises."""
        try:
            self.finish(status, timeout_s=0)
        except TrackingUnavailableError as err:
            log.warning("%s", err)
        except Exception as exc:  # never hide the stage's own error behind a tracking one
            log.warning("could not mark MLflow run %s %s: %s", self.run_id, status, _why(exc))

    def unsent_message(self, how_long: str) -> str:
        """Why the run is not complete in MLflow, where its metrics are, and how to send them."""
        what = f"stage '{self.stage}', MLflow run {self.run_id}" if self.stage else f"MLflow run {self.run_id}"
        n = len(self.spool.pending)
        held = f"{n} metric batch{'es' if n != 1 else ''} not yet in MLflow" if n else "its final status"
        if self.spool.path is None:
            where = "held in memory only (no spool file): they are lost when this process ends"
            later = ""
        else:
            target = self.spool.path.parent.parent if self.spool.path.parent.name == SPOOL_DIR else self.spool.path
            where = f"kept in {self.spool.path}"
            later = f"; send them when it is back with `rlhf tracking flush {target}` (or `rlhf run --resume {target.name}`)"
        return f"{self.store_name} unreachable {how_long} ({what}): {held}, {where}{later}"

    def _send_pending(self, warn: bool = True) -> bool:
        """Send the unsent batches oldest first, several per request; False if the server is unreachable.

        ``warn``: the first failure of an outage logs the one warning (not while flushing at the
        end, which raises its own error instead).
        """
        from mlflow.entities import Metric

        pending = self.spool.pending
        while pending:
            count, size = 0, 0
            for batch in pending:
                if count and size + len(batch["metrics"]) > MAX_METRICS_PER_REQUEST:
                    break
                count, size = count + 1, size + len(batch["metrics"])
            metrics = [
                Metric(key, value, batch["timestamp"], batch["step"])
                for batch in pending[:count]
                for key, value in batch["metrics"].items()
            ]
            try:
                for i in range(0, len(metrics), MAX_METRICS_PER_REQUEST):  # one batch may exceed the limit alone
                    self._log_batch(metrics[i : i + MAX_METRICS_PER_REQUEST])
            except Exception as exc:
                if not is_unreachable(exc):
                    raise
                self._unreachable(exc, warn)
                return False
            self.spool.acknowledge(count)
        if self._outage is not None:
            log.info("%s is reachable again: the held-back metrics of run %s are sent", self.store_name, self.run_id)
            self._outage = None
        self._retry_at, self._interval = 0.0, RETRY_INTERVAL_S[0]
        return True

    def _unreachable(self, exc: BaseException, warn: bool) -> None:
        self._retry_at = time.monotonic() + self._interval
        self._interval = min(self._interval * 2, RETRY_INTERVAL_S[1])
        self._last_error = _why(exc)
        if self._outage is None and warn:
            self._outage = self._last_error
            where = f"kept in {self.spool.path}" if self.spool.path else "held in memory"
            log.warning(
                "%s is unreachable (%s): training goes on; the metrics of run %s are %s and sent when it answers "
                "again", self.store_name, self._outage, self.run_id, where,
            )  # fmt: skip

    def _rest_store(self):
        from mlflow.store.tracking.rest_store import RestStore

        store = getattr(getattr(self.client, "_tracking_client", None), "store", None)
        return store if isinstance(store, RestStore) else None

    def _post(self, store, endpoint: str, body: dict) -> None:
        """One REST call with this tracker's short retries (MLflow's documented REST API)."""
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        response = http_request(
            store.get_host_creds(), endpoint, "POST",
            max_retries=REQUEST_RETRIES, backoff_factor=1, timeout=REQUEST_TIMEOUT_S, json=body,
        )  # fmt: skip
        verify_rest_response(response, endpoint)

    def _log_batch(self, metrics: list) -> None:
        store = self._rest_store()
        if store is None:  # a local store: no HTTP retries to shorten
            self.client.log_batch(self.run_id, metrics=metrics)
            return
        body = {"run_id": self.run_id, "metrics": [
            {"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step} for m in metrics
        ]}  # fmt: skip
        self._post(store, "/api/2.0/mlflow/runs/log-batch", body)

    def _terminate(self, status: str) -> None:
        store = self._rest_store()
        if store is None:
            self.client.set_terminated(self.run_id, status=status)
        else:
            body = {"run_id": self.run_id, "status": status, "end_time": int(time.time() * 1000)}
            self._post(store, "/api/2.0/mlflow/runs/update", body)
        self.spool.end_sent()

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Flattened, with secrets masked (rlhf_core.redact): params are visible to anyone with the UI."""
        from mlflow.entities import Param

        from rlhf_core.redact import redact

        flat = redact(flatten_params(params))
        batch = [Param(k, json.dumps(v) if isinstance(v, (list, tuple)) else str(v)[:6000]) for k, v in flat.items()]
        for i in range(0, len(batch), 100):  # MLflow's per-request param limit
            self.client.log_batch(self.run_id, params=batch[i : i + 100])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """A file keeps its name; a directory keeps its name too (``model/`` -> ``model``) unless ``artifact_path``.

        A stage model directory (it carries the stage marker) or a training checkpoint (its
        manifest; both named in ``rlhf_core.stage_io``) going to a local artifact store is hard-linked there instead of copied
        (``tasks.artifact_links.link_tree``): the same bytes, no second 0.5 GB on disk, no time spent
        copying.
        """
        path = Path(path)
        if path.is_dir():
            dest = artifact_path if artifact_path is not None else path.name
            # Both are written whole in a temp directory renamed into place (the marker / manifest
            # last); pruning deletes whole directories and a corrupt checkpoint is only renamed:
            # neither is ever rewritten in place, so hard links to their files stay valid.
            immutable = is_stage_model(path) or is_training_checkpoint(path)
            local = self.local_artifact_dir() if immutable else None
            if local is not None:
                link_tree(path, local / dest if dest else local)
            else:
                self.client.log_artifacts(self.run_id, str(path), dest)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def local_artifact_dir(self) -> Path | None:
        """The run's artifact directory when the artifact store is a local directory (``file:`` or a
        plain path, as MLflow's LocalArtifactRepository takes it); None for a remote store."""
        if self._artifact_dir is None:
            from urllib.parse import urlparse

            from mlflow.utils.file_utils import local_file_uri_to_path

            uri = self.client.get_run(self.run_id).info.artifact_uri
            self._artifact_dir = Path(local_file_uri_to_path(uri)) if urlparse(uri).scheme in ("", "file") else False
        return self._artifact_dir or None

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def log_dataset(self, frame: Any, path: Path, name: str, context: str | None = None) -> None:
        """Record a dataset a stage used as an MLflow run input (with its digest); ``context`` (the UI's
        "training", "evaluation" badge) defaults to ``name``."""
        import warnings

        import mlflow.data
        from mlflow.entities import DatasetInput, InputTag

        # MLflow registers the local source class twice, and hints at integer columns (the schema is
        # only shown, never enforced here): neither is the user's concern
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(frame, source=str(path), name=name)
            # what mlflow.log_input does, bound to this run instead of the thread's active run
            entity = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context or name)])
        self.client.log_inputs(self.run_id, datasets=[entity])


class NullStageTracker(NullTracker):
    """What a stage logs to when tracking is off (`tracking.enabled: false`)."""

    run_id = None

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        return None

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        return None

    def log_dataset(self, frame: Any, path: Path, name: str, context: str | None = None) -> None:
        return None


def configure(tracking_uri: str, artifact_root: Path, experiment: str) -> str:
    """Point MLflow at the store and make sure the experiment exists; return its id."""
    import mlflow

    if tracking_uri.startswith("sqlite:///") and (
        Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent == artifact_root.resolve().parent
    ):
        from tasks.mlflow_store import relocate

        relocate(artifact_root.resolve().parent.parent)  # the workspace's own store, copied or moved here
    mlflow.set_tracking_uri(tracking_uri)
    existing = mlflow.get_experiment_by_name(experiment)
    if existing is not None:
        stale = stale_artifact_location(tracking_uri, existing.artifact_location, artifact_root)
        if stale is not None and stale not in _warned_stale:
            _warned_stale.add(stale)
            log.warning(
                "MLflow experiment '%s' keeps its artifacts in %s, outside this workspace's %s: the workspace was "
                "copied or moved from elsewhere, and new runs' models and checkpoints would be written there. "
                "Run with --set tracking.experiment=<new name> (a new experiment in this store, artifacts inside "
                "the workspace) or use a fresh workspace", experiment, stale, artifact_root.resolve(),
            )  # fmt: skip
        return existing.experiment_id
    artifact_root.mkdir(parents=True, exist_ok=True)
    # The kind tag says "model training" to MLflow versions whose UI reads it (3.0-3.x); 3.17's UI
    # ignores it and goes by the browser's GenAI / Model-training toggle, hence ML_VIEW in our links.
    return mlflow.create_experiment(
        experiment, artifact_location=artifact_root.resolve().as_uri(),
        tags={"mlflow.experimentKind": "custom_model_development"},
    )


_warned_stale: set[str] = set()  # one warning per location and process (configure runs several times per run)


def stale_artifact_location(tracking_uri: str, artifact_location: str, artifact_root: Path) -> str | None:
    """The experiment's local artifact location when it lies outside ``artifact_root`` although the store
    is the workspace's own sqlite file (a copied or moved workspace: the location is an absolute path
    recorded when the experiment was created); None when it is fine or not ours to judge (a server's)."""
    from urllib.parse import urlparse

    from mlflow.utils.file_utils import local_file_uri_to_path

    root = artifact_root.resolve()
    if not tracking_uri.startswith("sqlite:///") or urlparse(artifact_location).scheme not in ("", "file"):
        return None
    if Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent != root.parent:
        return None  # a store outside the workspace: its experiments' locations are its own business
    location = Path(local_file_uri_to_path(artifact_location)).resolve()
    return None if location == root else str(location)


@contextmanager
def stage_run(
    parent_run_id: str,
    experiment_id: str,
    stage: str,
    tags: Mapping[str, str] | None = None,
    *,
    spool_dir: Path | None = None,
    flush_timeout_s: float = DEFAULT_FLUSH_TIMEOUT_S,
) -> Iterator[MlflowTracker]:
    """A nested MLflow run for one stage; marked FAILED if the stage raises.

    Its metrics are spooled to ``<spool_dir>/<stage>-<run id>.jsonl`` (in memory without
    ``spool_dir``). At the end every pending batch is flushed, waiting up to
    ``flush_timeout_s`` for an unreachable server; if it stays down the stage fails with
    :class:`TrackingUnavailableError` naming the server and the spool. A stage that fails
    for another reason gets one quick attempt and keeps the rest in the spool.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    try:
        run = client.create_run(
            experiment_id,
            run_name=stage,
            tags={"mlflow.parentRunId": parent_run_id, "rlhf.stage": stage, **(tags or {})},
        )
    except Exception as exc:
        if not is_unreachable(exc):
            raise
        raise TrackingUnavailableError(
            f"MLflow tracking server at {client.tracking_uri} unreachable ({_why(exc)}): could not open the MLflow run "
            f"of stage '{stage}'; nothing of this stage ran yet (re-run it with `rlhf run --resume`)"
        ) from exc
    run_id = run.info.run_id
    spool = Path(spool_dir) / f"{stage}-{run_id}.jsonl" if spool_dir is not None else None
    tracker = MlflowTracker(run_id, spool=spool, stage=stage)
    try:
        yield tracker
    except BaseException as exc:
        tracker.finish_quietly("FAILED")
        if is_unreachable(exc) and not isinstance(exc, TrackingUnavailableError):
            # e.g. registering the model while the server is down: say so, and where the metrics are
            raise TrackingUnavailableError(tracker.unsent_message(f"({_why(exc)})")) from exc
        raise
    tracker.finish("FINISHED", flush_timeout_s)


@dataclass
class FlushReport:
    """What :func:`flush_spool` delivered from one spool file."""

    spool: Path
    run_id: str
    tracking_uri: str
    batches: int
    values: int
    status: str | None  # the final run status it set, if one was waiting


def spool_files(run_dir: Path) -> list[Path]:
    """The metric spools of a run directory (one per MLflow run: the pipeline's and each stage's)."""
    return sorted((Path(run_dir) / SPOOL_DIR).glob("*.jsonl"))


def flush_spool(path: Path, *, tracking_uri: str | None = None, timeout_s: float = DEFAULT_FLUSH_TIMEOUT_S) -> FlushReport:
    """Send a spool's unsent batches (and a final status waiting in it) to MLflow; each batch once.

    ``tracking_uri`` overrides the server recorded in the spool (e.g. it moved). Raises
    TrackingUnavailableError if the server does not answer within ``timeout_s``.
    """
    path = Path(path)
    state = read_spool(path)
    report = FlushReport(path, state.header["run_id"], tracking_uri or state.header.get("tracking_uri") or "", 0, 0, None)
    if not state.pending and state.end is None:
        return report
    tracker = MlflowTracker(report.run_id, report.tracking_uri or None, spool=path, stage=state.header.get("stage"))
    report.tracking_uri = tracker.tracking_uri
    report.batches = len(tracker.spool.pending)
    report.values = sum(len(batch["metrics"]) for batch in tracker.spool.pending)
    end = tracker.spool.end
    tracker.flush(timeout_s)
    if end is not None:
        try:
            tracker._terminate(end)
        except Exception as exc:
            if not is_unreachable(exc):
                raise
            raise TrackingUnavailableError(tracker.unsent_message(f"({_why(exc)})")) from exc
        report.status = end
    return report


def flush_run_spools(run_dir: Path, *, tracking_uri: str | None = None, timeout_s: float = DEFAULT_FLUSH_TIMEOUT_S) -> list[FlushReport]:
    """:func:`flush_spool` on every spool of a run directory; reports only those that held something."""
    reports = [flush_spool(path, tracking_uri=tracking_uri, timeout_s=timeout_s) for path in spool_files(run_dir)]
    return [r for r in reports if r.batches or r.status]


def start_parent_run(experiment_id: str, run_name: str, tags: Mapping[str, str] | None = None) -> MlflowTracker:
    """The pipeline's top-level MLflow run; stage runs nest under it."""
    from mlflow.tracking import MlflowClient

    run = MlflowClient().create_run(experiment_id, run_name=run_name, tags=dict(tags or {}))
    return MlflowTracker(run.info.run_id)


def reopen_run(run_id: str, tags: Mapping[str, str] | None = None) -> None:
    """Mark a resumed pipeline's parent run as running again (a crashed run was marked FAILED)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    client.update_run(run_id, status="RUNNING")
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, value)


def end_run(run_id: str, status: str = "FINISHED") -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient().set_terminated(run_id, status=status)


# MLflow 3.17's UI shows an experiment in its GenAI layout (traces, token usage) or its
# "Model training" layout (runs, metrics) by the `workflowType` URL parameter, else by a per-browser
# toggle that starts on GenAI: the experiment's `mlflow.experimentKind` tag no longer decides it
# (mlflow/server/js: useExperimentKind returns the toggle's kind whenever the toggle is shown, which
# is always). Every link we print carries the parameter so it lands on the runs, not on GenAI.
ML_VIEW = "workflowType=machine_learning"
# Where `rlhf ui` (flows/servers.py, DEFAULT_MLFLOW_PORT) and `mlflow ui` serve a local store by default.
LOCAL_UI_URL = "http://127.0.0.1:5000"


def is_server_uri(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def ui_base_url(tracking_uri: str) -> str:
    """The MLflow UI showing this store: the tracking server itself, else where `rlhf ui` serves it."""
    return tracking_uri.rstrip("/") if is_server_uri(tracking_uri) else LOCAL_UI_URL


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI page of one run (Model-training layout)."""
    return f"{ui_base_url(tracking_uri)}/#/experiments/{experiment_id}/runs/{run_id}?{ML_VIEW}"


def experiment_url(tracking_uri: str, experiment_id: str) -> str:
    """The experiment's runs table (Model-training layout)."""
    return f"{ui_base_url(tracking_uri)}/#/experiments/{experiment_id}/runs?{ML_VIEW}"


def workspace_of_store(tracking_uri: str) -> Path | None:
    """The workspace whose sqlite store this is (``sqlite:///<ws>/mlflow/mlflow.db``), else None."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    return db.parent.parent if db.name == "mlflow.db" and db.parent.name == "mlflow" else None


def ui_note(tracking_uri: str) -> str:
    """What must run for the links to open: nothing for a server; `rlhf ui` for a workspace's local store."""
    if is_server_uri(tracking_uri):
        return ""
    workspace = workspace_of_store(tracking_uri)
    start = (f"`rlhf ui --workspace {workspace}`" if workspace is not None
             else f"`mlflow ui --backend-store-uri {tracking_uri}`")
    return f"The MLflow links open the UI on {LOCAL_UI_URL} (the default port): start it first with {start}."


def run_link(tracking_uri: str, experiment_id: str, run_id: str, label: str) -> str:
    """A Markdown link to a run's MLflow page (see :func:`ui_note` for a local store)."""
    return f"[{label}]({run_url(tracking_uri, experiment_id, run_id)})"


def stage_run_ids(parent_run_id: str, experiment_id: str, tracking_uri: str | None = None) -> dict[str, str]:
    """The newest MLflow run of each stage under a pipeline's parent run (a re-run stage has several)."""
    from mlflow.tracking import MlflowClient

    runs = MlflowClient(tracking_uri).search_runs(
        [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
        order_by=["attributes.start_time DESC"], max_results=1000,
    )  # fmt: skip
    found: dict[str, str] = {}
    for run in runs:
        found.setdefault(run.data.tags.get("rlhf.stage", run.info.run_name), run.info.run_id)
    return found
