"""Keep a workspace's own MLflow store pointing inside the workspace after it is copied or moved.

MLflow records absolute artifact locations in its database: the experiment's artifact root, each
run's ``artifact_uri``, each registered model version's ``source``/``storage_location``. A copied
workspace (``cp -r .rlhf elsewhere``) therefore kept reading, and writing, the original's
artifacts; a moved one lost them. :func:`relocate` rewrites those locations from the old
workspace to this one, in one transaction, and is called before anything opens the store
(`rlhf run`, the stage flows, `rlhf ui`'s MLflow server).

Only the workspace's *own* sqlite store is touched, and only locations under an old
``<workspace>/mlflow/artifacts`` root; tags that point into the old workspace's ``runs/`` are
rewritten too (they are mutable in MLflow). Logged params and dataset sources are records of what
was run and stay as they are. Standard library only: `rlhf ui` calls it without importing MLflow.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from urllib.parse import unquote, urlparse

log = logging.getLogger("rlhf.tracking")

_ARTIFACT_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
    ("logged_models", "artifact_location"),
)
_PATH_COLUMNS = (("tags", "value"), ("model_version_tags", "value"))


def _local_path(location: str) -> Path | None:
    parsed = urlparse(location)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and location.startswith("/"):
        return Path(location)
    return None


def relocate(workspace_root: Path) -> list[Path]:
    """Point the workspace's store at its own artifact root; return the old roots it replaced ([] when
    nothing needed it: no store yet, or every experiment already inside this workspace)."""
    root = workspace_root.expanduser().resolve()
    db = root / "mlflow" / "mlflow.db"
    if not db.is_file():
        return []
    new_artifacts = root / "mlflow" / "artifacts"
    with sqlite3.connect(db, timeout=60) as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "experiments" not in tables:
            return []
        old_roots: list[Path] = []
        for (location,) in conn.execute("SELECT artifact_location FROM experiments"):
            old = _local_path(location or "")
            if old is None or old == new_artifacts or old.parts[-2:] != ("mlflow", "artifacts"):
                continue  # a server's location, already ours, or a custom root we did not create
            if old not in old_roots:
                old_roots.append(old)
        for old in old_roots:
            pairs = [(old.as_uri(), new_artifacts.as_uri()), (str(old), str(new_artifacts))]
            old_ws, new_ws = old.parent.parent, root
            for table, column in _ARTIFACT_COLUMNS:
                if table in tables:
                    for before, after in pairs:
                        _replace_prefix(conn, table, column, before, after)
            for table, column in _PATH_COLUMNS:
                if table in tables:
                    _replace_prefix(conn, table, column, f"{old_ws}/runs/", f"{new_ws}/runs/")
    for old in old_roots:
        log.warning(
            "this workspace was copied or moved from %s: its MLflow store now points at its own artifacts "
            "in %s", old.parent.parent, new_artifacts,
        )  # fmt: skip
    return old_roots


def _replace_prefix(conn: sqlite3.Connection, table: str, column: str, before: str, after: str) -> None:
    """``column`` values equal to ``before`` or under it (``before/...``) get ``after`` in its place."""
    n = len(before)
    boundary = "1" if before.endswith("/") else f"({column} = :before OR substr({column}, :n + 1, 1) = '/')"
    conn.execute(
        f"UPDATE {table} SET {column} = :after || substr({column}, :n + 1) "  # noqa: S608 (fixed identifiers)
        f"WHERE substr({column}, 1, :n) = :before AND {boundary}",
        {"after": after, "before": before, "n": n},
    )
