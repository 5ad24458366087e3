"""Where the data commands write, under one rule: never delete or overwrite what they did not write.

An output directory (``rlhf data prepare --out``, ``rlhf data check --docs-dir``) is used only
when it does not exist, is empty, or holds an earlier output of the same command, recognised by
the marker file :data:`MARKER` that lists the files that command wrote. Replacing an earlier
output replaces (or removes) exactly those files; anything else in the directory is left alone.
Any other directory, or a path that is a file, is refused with one line (exit 2).

Outputs appear whole or not at all: they are written into a hidden staging directory beside the
destination and moved into place only when the command has finished writing them (a new
destination appears in one rename), so a failure leaves no half-written outputs behind.

A report file (``rlhf data check --json FILE``) is written the same way (a temporary file, then
one rename) and may only replace an earlier report of ours.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from rlhf_core.errors import DataError

MARKER = ".rlhf-output.json"
_STAGING = ".rlhf-staging-"


def _abs(path: Path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(path))))


def _safe_relative(name: object) -> bool:
    """A marker's file name stays inside its directory (a tampered marker cannot delete /etc/passwd)."""
    if not isinstance(name, str) or not name or "\\" in name:
        return False
    p = PurePosixPath(name)
    return not p.is_absolute() and ".." not in p.parts and p.name != MARKER


def _read_marker(path: Path) -> dict | None:
    try:
        data = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(data, dict) and isinstance(data.get("written_by"), str) and isinstance(data.get("files"), list):
        return data
    return None


def _os_problem(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _existing_ancestor_problem(path: Path) -> str | None:
    """Why ``path`` cannot be created: an ancestor is a file (or unreadable); None when it can be."""
    for parent in path.parents:
        try:
            st = os.stat(parent)
        except FileNotFoundError:
            continue
        except OSError as exc:
            return f"{parent}: {_os_problem(exc)}"
        if not stat.S_ISDIR(st.st_mode):
            return f"{parent} is a file, not a directory"
        return None
    return None


def claim_dir(
    path: Path, written_by: str, option: str, legacy: Callable[[Path], list[str] | None] | None = None
) -> list[str]:
    """Check that ``path`` may receive ``written_by``'s outputs; return the files its earlier output
    listed (to be replaced), ``[]`` for a new or empty directory.

    ``legacy``: recognises an earlier output written before the marker existed (returns its
    files) or None. Raises :class:`DataError` (one line) for anything else.
    """
    path = _abs(path)
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        if os.path.islink(path):
            raise DataError(f"{option} {path}: is a broken symlink (to {os.readlink(path)}); "
                            "give a directory path") from None
        problem = _existing_ancestor_problem(path)
        if problem:
            raise DataError(f"{option} {path}: cannot create the directory ({problem})") from None
        return []
    except OSError as exc:
        what = "symlink loop" if exc.errno == errno.ELOOP else _os_problem(exc)
        raise DataError(f"{option} {path}: cannot use it ({what})") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise DataError(f"{option} {path}: exists and is not a directory; {option} takes a directory "
                        "(rlhf never overwrites a file it did not write)")
    try:
        entries = sorted(os.listdir(path))
    except OSError as exc:
        raise DataError(f"{option} {path}: cannot list the directory ({_os_problem(exc)})") from exc
    entries = [e for e in entries if not e.startswith(_STAGING)]
    if not entries:
        return []
    marker = _read_marker(path)
    if marker is not None and marker["written_by"] == written_by:
        return [f for f in marker["files"] if _safe_relative(f)]
    if marker is None and legacy is not None:
        files = legacy(path)
        if files is not None:
            return [f for f in files if _safe_relative(f)]
    shown = ", ".join(entries[:3]) + (f", … ({len(entries)} entries)" if len(entries) > 3 else "")
    whose = f"the output of `{marker['written_by']}`" if marker else f"{shown}, not an earlier output of `{written_by}`"
    raise DataError(f"{option} {path}: the directory is not empty: it holds {whose}; nothing there is "
                    "deleted or replaced: choose a new or empty directory")


def staging_dir(dest: Path, option: str) -> Path:
    """A new hidden directory beside ``dest`` (same file system, so publishing is a rename)."""
    dest = _abs(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{_STAGING}{dest.name}-", dir=dest.parent))
        staging.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would become the published directory's mode
        return staging
    except OSError as exc:
        problem = _existing_ancestor_problem(dest) or _os_problem(exc)
        raise DataError(f"{option} {dest}: cannot write there ({problem})") from exc


def _files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root).as_posix()) for p in root.rglob("*")
                  if p.is_file() and not p.is_symlink() and p.name != MARKER)


def publish_dir(
    staging: Path, dest: Path, written_by: str, option: str,
    legacy: Callable[[Path], list[str] | None] | None = None,
) -> None:
    """Move the files of ``staging`` to ``dest`` and mark ``dest`` as ``written_by``'s output.

    A new ``dest`` appears in one rename. An existing one (empty, or an earlier output of ours)
    gets each file by an atomic rename; files of the earlier output that the new one lacks are
    removed; nothing else in it is touched; the marker is written last. ``staging`` is removed.
    """
    dest = _abs(dest)
    try:
        old = claim_dir(dest, written_by, option, legacy)  # again: the directory may have changed meanwhile
        files = _files_under(staging)
        marker = json.dumps({"written_by": written_by, "files": files,
                             "note": "written by rlhf; a later run replaces exactly these files"}, indent=2)
        try:
            if not os.path.lexists(dest):
                (staging / MARKER).write_text(marker, encoding="utf-8")
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.rename(staging, dest)  # the whole output appears at once
                return
            for rel in files:
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / rel, target)
            for rel in sorted(set(old) - set(files)):
                target = dest / rel
                if target.is_file() and not target.is_symlink():
                    target.unlink()  # listed by our marker: a file we wrote
            _prune_empty_parents(dest, old)
            _replace_text(dest / MARKER, marker)
        except OSError as exc:
            raise DataError(f"{option} {dest}: cannot write the output ({_os_problem(exc)})") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _prune_empty_parents(root: Path, files: list[str]) -> None:
    """Remove the directories that held our earlier files and are now empty (deepest first)."""
    dirs = {parent for rel in files for parent in PurePosixPath(rel).parents if str(parent) != "."}
    for rel in sorted(dirs, key=lambda d: -len(PurePosixPath(d).parts)):
        try:
            (root / rel).rmdir()  # only succeeds when empty
        except OSError:
            pass


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _replace_text(path: Path, text: str) -> None:
    """Write ``path`` whole: a temporary file beside it (mode as a plain open would give), then one rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def claim_file(path: Path, option: str, is_ours: Callable[[Path], bool], what: str) -> Path:
    """Check that the file ``path`` may be (over)written: absent, empty, an earlier output of ours
    (``is_ours``), or a device/pipe such as /dev/stdout. Returns the path to write (a symlink's target)."""
    path = _abs(path)
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        if os.path.islink(path):
            raise DataError(f"{option} {path}: is a broken symlink (to {os.readlink(path)})") from None
        problem = _existing_ancestor_problem(path)
        if problem:
            raise DataError(f"{option} {path}: cannot create the file ({problem})") from None
        return path
    except OSError as exc:
        what_ = "symlink loop" if exc.errno == errno.ELOOP else _os_problem(exc)
        raise DataError(f"{option} {path}: cannot use it ({what_})") from exc
    if stat.S_ISDIR(st.st_mode):
        raise DataError(f"{option} {path}: is a directory; {option} takes a file path, e.g. {path / 'report.json'}")
    if not stat.S_ISREG(st.st_mode):
        return path  # /dev/stdout, a pipe: written as a stream, nothing to replace
    if st.st_size > 0 and not is_ours(path):
        raise DataError(f"{option} {path}: the file exists and is not {what}; rlhf never overwrites "
                        "other files: remove it or choose another path")
    return Path(os.path.realpath(path))  # keep a symlink, replace what it points to


def write_file(path: Path, text: str, option: str, is_ours: Callable[[Path], bool], what: str) -> None:
    """Write ``text`` to ``path`` whole (a temporary file, then one rename) under :func:`claim_file`'s rule."""
    target = claim_file(path, option, is_ours, what)
    try:
        if os.path.exists(target) and not stat.S_ISREG(os.stat(target).st_mode):
            with open(target, "w", encoding="utf-8") as fh:  # a stream: /dev/stdout, a pipe
                fh.write(text)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        _replace_text(target, text)
    except OSError as exc:
        raise DataError(f"{option} {target}: cannot write the file ({_os_problem(exc)})") from exc
