"""Hard-link (else copy) a directory tree into the local MLflow artifact store: no second copy on disk.

Stage models and training checkpoints are never rewritten in place, so the run's artifacts can
share their inodes (tasks/tracking.py, ``MlflowTracker.log_artifact``).
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path


_LINK_TMP_PREFIX = ".artifact.uploading."  # MLflow's own staging prefix: list_artifacts hides such names


def link_tree(src: Path, dst: Path) -> dict[str, int]:
    """Put every file of ``src`` at the same place under ``dst`` as a hard link: one inode, no bytes copied.

    A file that cannot be linked (``dst`` on another filesystem, or one without hard links) is
    copied instead. Each file appears atomically (link or copy to a hidden name, then rename), so a
    reader never sees half of one. Only for files that are never rewritten in place afterwards:
    an edit would show through both names. Stage models qualify (written to a temp directory
    that ``replace_dir`` renames into place; a newer model is a new directory, new inodes).
    Returns how many files were ``linked`` and ``copied``.
    """
    counts = {"linked": 0, "copied": 0}
    for root, _dirs, files in os.walk(src):
        target = dst / Path(root).relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            counts["linked" if link_or_copy(Path(root) / name, target / name) else "copied"] += 1
    return counts


def link_or_copy(src: Path, dst: Path) -> bool:
    """``dst`` becomes a hard link to ``src`` (True), or a copy where linking fails (False)."""
    if dst.exists() and os.path.samefile(src, dst):
        return True
    tmp = dst.with_name(f"{_LINK_TMP_PREFIX}{secrets.token_hex(6)}")
    try:
        try:
            os.link(src, tmp)
            linked = True
        except OSError:  # EXDEV (another device), EPERM/ENOTSUP (no hard links there), EMLINK
            shutil.copy2(src, tmp)
            linked = False
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return linked
