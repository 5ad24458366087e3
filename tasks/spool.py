"""The metric spool: the durable record of one MLflow run's metric batches while they are sent.

A tracking server that goes down mid-run loses no metric: every batch is first appended to a
spool file (one JSONL file per MLflow run, under ``<run_dir>/tracking/``), then sent by the
tracker (tasks/tracking.py, ``MlflowTracker``), which records here which batches MLflow
accepted. What is still pending when a stage ends is sent later by ``rlhf tracking flush``
(``tasks.tracking.flush_spool``). Standard library only: no MLflow here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from rlhf_core.errors import UserError


class TrackingUnavailableError(UserError):
    """The tracking server stayed unreachable: the metrics are safe in a spool file, not yet in MLflow."""


@dataclass
class SpoolState:
    """What a spool file says: its header, every batch, the acknowledged ids, a final status still to send."""

    header: dict
    batches: dict[int, dict]
    sent: set[int]
    end: str | None

    @property
    def pending(self) -> list[dict]:
        return [batch for batch_id, batch in sorted(self.batches.items()) if batch_id not in self.sent]


def read_spool(path: Path) -> SpoolState:
    """Parse a spool file; a torn line (the process died mid-write) is skipped."""
    state = SpoolState({}, {}, set(), None)
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "batch" in record:
                state.batches[int(record["batch"])] = record
            elif "sent" in record:
                state.sent.update(int(i) for i in record["sent"])
            elif "end" in record:
                state.end = record["end"]
            elif "end_sent" in record:
                state.end = None
            elif "spool" in record and not state.header:
                state.header = record
    if not state.header.get("run_id"):
        raise TrackingUnavailableError(f"{path} is not a metrics spool file (no header line with a run_id)")
    return state


class MetricSpool:
    """The durable record of one MLflow run's metric batches, and which of them MLflow accepted.

    Append-only JSONL (a crash costs at most a torn last line, skipped on read):
    ``{"spool": 1, "run_id", "tracking_uri", "stage"}`` first; ``{"batch": n, "step",
    "timestamp", "metrics": {name: value}}`` per batch, written BEFORE it is sent;
    ``{"sent": [n, ...]}`` once MLflow accepted batches, so a replay sends each batch once
    (and MLflow's store drops an identical (key, timestamp, step, value) resent after a lost
    answer); ``{"end": status}`` / ``{"end_sent": true}`` for a final run status that could
    not be sent. ``path=None`` keeps the same bookkeeping in memory only.
    """

    def __init__(self, path: Path | None, run_id: str, tracking_uri: str, stage: str | None = None) -> None:
        self.path = path
        self.run_id = run_id
        self.pending: list[dict] = []
        self.end: str | None = None
        self._next = 0
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file() and path.stat().st_size:
            state = read_spool(path)
            if state.header["run_id"] != run_id:
                raise TrackingUnavailableError(f"{path} spools MLflow run {state.header['run_id']}, not {run_id}")
            self.pending, self.end = state.pending, state.end
            self._next = max(state.batches, default=-1) + 1
            with open(path, "rb+") as fh:  # end a torn last line so the next record starts clean
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    fh.write(b"\n")
        else:
            self._append({"spool": 1, "run_id": run_id, "tracking_uri": tracking_uri, "stage": stage}, sync=True)

    def add(self, step: int, timestamp: int, metrics: dict[str, float]) -> None:
        batch = {"batch": self._next, "step": step, "timestamp": timestamp, "metrics": metrics}
        self._next += 1
        self._append(batch)
        self.pending.append(batch)

    def acknowledge(self, count: int) -> None:
        """The first ``count`` pending batches reached MLflow."""
        self._append({"sent": [batch["batch"] for batch in self.pending[:count]]})
        del self.pending[:count]

    def record_end(self, status: str) -> None:
        self.end = status
        self._append({"end": status}, sync=True)

    def end_sent(self) -> None:
        if self.end is not None:
            self.end = None
            self._append({"end_sent": True})

    def sync(self) -> None:
        """fsync: called while batches are pending, when this file is their only copy."""
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as fh:
                os.fsync(fh.fileno())

    def _append(self, record: dict, sync: bool = False) -> None:
        if self.path is None:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, separators=(",", ":")) + "\n")
            if sync:
                fh.flush()
                os.fsync(fh.fileno())
