"""What a training loop reports to: a small tracker protocol and a null implementation.

Loops call the tracker unconditionally (nanochat's DummyWandb habit), so they never branch
on "is tracking on". The MLflow implementation lives in ``tasks/`` (rlhf_core stays free of
mlflow); :class:`InMemoryTracker` keeps everything in lists for notebooks and tests.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


# MLflow's metric-name characters: alphanumerics, underscores, dashes, periods, spaces, slashes, colons.
_METRIC_NAME_BAD = re.compile(r"[^A-Za-z0-9_\-. :/]+")


def metric_name(name: str) -> str:
    """``name`` as MLflow accepts it: each run of other characters becomes one ``_``, ends trimmed of ``_``.

    ``data/x/labels_in(0,1)`` -> ``data/x/labels_in_0_1``; ``ppo@10`` -> ``ppo_10``; nothing left -> ``_``.
    """
    return _METRIC_NAME_BAD.sub("_", name).strip("_") or "_"


@runtime_checkable
class Tracker(Protocol):
    """Receives metrics, parameters and files from a training loop."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Record scalar metrics (``/``-namespaced names, e.g. ``sft/loss``) at optimizer ``step``."""

    def log_artifact(self, path: str | Path) -> None:
        """Record a file or directory produced by the run."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record run parameters (flat ``dotted.key -> value``)."""


class NullTracker:
    """Drops everything; the default so loops need no ``if tracker`` branches."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        return None

    def log_artifact(self, path: str | Path) -> None:
        return None

    def log_params(self, params: Mapping[str, Any]) -> None:
        return None


class InMemoryTracker:
    """Keeps every call in memory: ``metrics`` is a list of ``(step, {name: value})``."""

    def __init__(self) -> None:
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.artifacts: list[Path] = []
        self.params: dict[str, Any] = {}

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_artifact(self, path: str | Path) -> None:
        self.artifacts.append(Path(path))

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.params.update(params)

    def series(self, name: str) -> list[tuple[int, float]]:
        """All ``(step, value)`` recorded for metric ``name``, in logging order."""
        return [(step, m[name]) for step, m in self.metrics if name in m]


def flatten_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1e-5}} -> {"optim.lr": 1e-5}`` (what ``log_params`` expects)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, f"{name}."))
        else:
            flat[name] = value
    return flat
