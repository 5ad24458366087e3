"""Is a Prefect API or MLflow tracking server up? One HTTP health check, standard library only.

Below both :mod:`flows.servers` (which starts the servers and waits for them) and
:mod:`flows.crash_sweep` (which checks the tracking server before asking it anything),
so neither imports the other's way round.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from urllib.parse import urlsplit

from rlhf_core.errors import UserError


class ServerError(UserError):
    """A server could not start, is unreachable, or its port is taken."""


def http_ok(url: str, timeout: float) -> tuple[bool, str]:
    """(True, '') if GET ``url`` answers 2xx, else (False, why)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http(s) only
            return 200 <= response.status < 300, f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code} {exc.reason}"
    except urllib.error.URLError as exc:
        reason = exc.reason
        return False, getattr(reason, "strerror", None) or str(reason)
    except (OSError, ValueError) as exc:
        return False, str(exc) or type(exc).__name__


def health_url(url: str, kind: str) -> str:
    """The health endpoint of a Prefect API URL (``.../api/health``) or an MLflow server (``/health``)."""
    base = url.rstrip("/")
    if kind == "prefect":
        return base + "/health" if base.endswith("/api") else base + "/api/health"
    if kind == "mlflow":
        return base + "/health"
    raise ValueError(f"unknown server kind {kind!r} (prefect or mlflow)")


def check_reachable(url: str, *, name: str = "server", kind: str | None = None, timeout: float = 5.0) -> None:
    """Fail fast, naming the URL, if the server at ``url`` does not answer.

    ``kind`` ("prefect" or "mlflow") checks that server's health endpoint; without it any
    HTTP answer from ``url`` itself counts. Call this before any training starts.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ServerError(f"{name} URL {url!r} is not an http(s) URL")
    target = health_url(url, kind) if kind else url
    ok, why = http_ok(target, timeout)
    if ok:
        return
    if kind is None and why.startswith("HTTP "):
        return  # it answered: reachable, even if this path is not a page
    hint = " (start the servers with `rlhf ui`)" if parts.hostname in ("127.0.0.1", "localhost", "::1") else ""
    raise ServerError(f"{name} at {url} is unreachable: {why} (checked {target}){hint}")
