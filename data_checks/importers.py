"""Read data files in the common RLHF layouts into canonical frames.

Sources: local JSONL, JSON, Parquet and CSV files (JSONL, JSON and CSV also gzip-compressed:
``.jsonl.gz``, as Anthropic publishes HH-RLHF), and anything ``datasets.load_dataset`` reads
(a local dataset directory or script, a ``save_to_disk`` directory, or a hub id, written
``hf:org/name`` or plainly ``org/name``).

Layouts recognised (by column names):

* TRL standard: ``prompt`` + ``chosen``/``rejected``; ``prompt`` + ``completion``/``response``;
  ``prompt`` alone (prompt-only);
* TRL conversational: ``messages``; ``prompt``/``chosen``/``rejected`` as message lists, with an
  explicit or implicit (shared-prefix) prompt;
* Anthropic HH-RLHF: ``chosen``/``rejected`` transcripts ("\\n\\nHuman: … \\n\\nAssistant: …"),
  split into the shared prompt turns and the two final replies;
* UltraFeedback-binarized: ``prompt`` + ``chosen``/``rejected`` full conversations
  (+ ``score_chosen``/``score_rejected`` -> ``margin``);
* rankings: ``prompt`` + ``responses`` (best first), expanded to all K·(K−1)/2 pairs.

Conversations stay conversations: the turns before the final reply of a multi-turn row become
``prompt_messages`` (system/user/assistant messages, ending with a user turn) and ``prompt`` a
readable rendering ("User: …\\n\\nAssistant: …"); a single user turn is plain text (``prompt``,
``prompt_messages`` None). A conversation a chat template cannot render is quarantined with its
rule: ``first_turn_not_user``, ``turn_order`` (two turns of one role in a row), ``unknown_role``,
``empty_turn``, ``no_shared_prompt`` (chosen and rejected diverge before the final reply). A
preference file read as demonstrations yields its chosen side. A row's ``harmful`` comes from its
own column, else from the input's declaration, else None (unlabelled).

Row-level problems (invalid JSON, non-UTF-8 bytes, a duplicate key, a row whose shape fits no
layout) become :class:`Quarantined` rows naming the file and the row, where a row is the
file's own line for JSONL and CSV (the header is line 1), the element of the array for JSON
(1 = the first) and the row for Parquet and ``datasets`` sources. File-level problems (missing
file, symlink loop, not a regular file, empty file, a file that is really gzip, UTF-16, a JSON
array in a .jsonl file, no recognisable layout) raise one-line :class:`DataError` s.

Every file is opened once (a named pipe cannot be read twice) and must be a regular file.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import re
import stat
import sys
import zlib
from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import pandas as pd

from data_checks.schemas import CANONICAL_COLUMNS, CHAT_ROLES, is_finite_number
from rlhf_core.config.data import Kind
from rlhf_core.errors import DataError

FILE_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".pq": "parquet",
                 ".csv": "csv"}
_GZ_FORMATS = ("jsonl", "json", "csv")  # Parquet compresses inside the file
_DATASET_DIR_MARKERS = ("*.jsonl", "*.json", "*.parquet", "*.csv", "*.arrow", "*.py", "*.txt")
_HH_ASSISTANT = "\n\nAssistant:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_ID_ALIASES = ("id", "prompt_id", "uid")
_MAX_RECORD_CHARS = 2_000  # how much of a bad row the quarantine file keeps
_SNIFF_BYTES = 8192


def file_format(path: Path | str) -> tuple[str | None, bool]:
    """(format, gzipped) from a file name: ``p.jsonl.gz`` -> ``("jsonl", True)``; unknown -> ``(None, ...)``."""
    suffixes = [s.lower() for s in Path(str(path)).suffixes]
    gz = bool(suffixes) and suffixes[-1] == ".gz"
    base = suffixes[-2] if gz and len(suffixes) >= 2 else (suffixes[-1] if suffixes and not gz else None)
    fmt = FILE_SUFFIXES.get(base) if base else None
    if gz and fmt not in _GZ_FORMATS:
        fmt = None
    return fmt, gz


def row_unit(file: str) -> str:
    """What a row number of ``file`` counts: ``line`` (JSONL, CSV), ``element`` (JSON array) or ``row``."""
    fmt, _ = file_format(file)
    return {"jsonl": "line", "csv": "line", "json": "element"}.get(fmt or "", "row")


def location(file: str, row: int) -> str:
    """Where a row is, as people and editors read it: ``p.jsonl:3``, ``p.json: element 3 of the JSON array``."""
    unit = row_unit(file)
    if unit == "line":
        return f"{file}:{row}"
    if unit == "element":
        return f"{file}: element {row} of the JSON array"
    return f"{file}: row {row}"


@dataclass
class Quarantined:
    """A row that could not be used, and why (``file:row: rule: detail``)."""

    file: str
    row: int
    stage: str
    rule: str
    detail: str
    record: Any = None
    kind: str | None = None

    @property
    def message(self) -> str:
        return f"{location(self.file, self.row)}: {self.rule}: {self.detail}"

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "row": self.row, "kind": self.kind, "stage": self.stage, "rule": self.rule,
                "reason": self.message, "record": clip_record(self.record)}


@dataclass
class RawRecords:
    """Records as read from a source, before layout recognition."""

    records: list[dict[str, Any]]
    rows: list[int]
    quarantined: list[Quarantined] = field(default_factory=list)


def clip_record(value: Any) -> Any:
    """Keep quarantine files small: a 10 MB string is stored as its head and its length."""
    if isinstance(value, str):
        return value if len(value) <= _MAX_RECORD_CHARS else f"{value[:_MAX_RECORD_CHARS]}…[{len(value)} chars]"
    if isinstance(value, dict):
        return {str(k): clip_record(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clip_record(v) for v in value[:50]]
    if isinstance(value, (bytes, bytearray)):
        return clip_record(bytes(value[:_MAX_RECORD_CHARS]).decode("utf-8", errors="replace"))
    if hasattr(value, "tolist"):
        return clip_record(value.tolist())
    if isinstance(value, float) and value != value:
        return None
    return value


def count_rules(rows: list[Quarantined]) -> str:
    """``"2 invalid_json, 1 utf8"``: how many rows broke each rule, most first."""
    counts = Counter(q.rule for q in rows)
    return ", ".join(f"{n} {rule}" for rule, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


# ---------------------------------------------------------------------------- opening


_NOT_REGULAR = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
                (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _not_regular(mode: int) -> str | None:
    return next((what for test, what in _NOT_REGULAR if test(mode)), None if stat.S_ISREG(mode) else "not a regular file")


def stat_source(path: Path) -> os.stat_result:
    """``os.stat`` with one-line errors: no such file, broken symlink, symlink loop, permission."""
    try:
        return os.stat(path)
    except FileNotFoundError as exc:
        if os.path.islink(path):
            raise DataError(f"{path}: broken symlink (it points to {os.readlink(path)}, which does not exist)") from exc
        raise DataError(f"{path}: no such file") from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DataError(f"{path}: symlink loop (the link leads back to itself)") from exc
        if exc.errno == errno.ENOTDIR:
            raise DataError(f"{path}: no such file (a parent in the path is a file, not a directory)") from exc
        if exc.errno == errno.EACCES:
            raise DataError(f"{path}: cannot read file (permission denied)") from exc
        raise DataError(f"{path}: cannot read file ({exc.strerror or exc})") from exc


def _read_once(path: Path) -> bytes:
    """The whole file, opened once and without blocking: anything but a regular file is refused."""
    st = stat_source(path)
    what = _not_regular(st.st_mode)
    if what and not stat.S_ISDIR(st.st_mode):
        raise DataError(f"{path}: is {what}, not a regular file; copy the data into a file first")
    try:
        # O_NONBLOCK: if the path was swapped for a FIFO since the stat, open() must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except PermissionError as exc:
        raise DataError(f"{path}: cannot read file (permission denied)") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    with os.fdopen(fd, "rb") as fh:
        what = _not_regular(os.fstat(fh.fileno()).st_mode)
        if what:
            raise DataError(f"{path}: is {what}, not a regular file; copy the data into a file first")
        try:
            return fh.read()
        except OSError as exc:
            raise DataError(f"{path}: cannot read file ({exc.strerror or exc})") from exc


def _gunzip(path: Path, data: bytes) -> bytes:
    """Decompress a .gz file; a file that is not gzip, or is cut short, is one clear error."""
    plain = path.name[:-3]
    if data[:2] != b"\x1f\x8b":
        seen = _what_it_is(data, Path(plain))
        hint = f"; it {seen}" if seen else ""
        raise DataError(f"{path}: not gzip data{hint} (if it is plain text, name it {plain})")
    out = bytearray()
    rest = data
    while rest:  # one gzip member after another (``cat a.gz b.gz`` is valid gzip)
        unzip = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            for i in range(0, len(rest), 1 << 16):  # in chunks, so a cut-off file keeps what it had
                out += unzip.decompress(rest[i:i + (1 << 16)])
                if unzip.eof:
                    break
        except zlib.error as exc:
            line = out.count(b"\n") + 1
            raise DataError(f"{path}: corrupt gzip data at line {line} of the uncompressed text ({exc})") from exc
        if not unzip.eof:
            out += unzip.flush()
            line = out.count(b"\n") + 1
            raise DataError(f"{path}: truncated gzip data: the file ends inside line {line} of the "
                            f"uncompressed text ({line - 1} complete lines); download or copy it again")
        rest = unzip.unused_data
        if rest and rest[:2] != b"\x1f\x8b":
            if rest.strip(b"\x00"):
                line = out.count(b"\n") + 1
                raise DataError(f"{path}: corrupt gzip data: {len(rest)} bytes of something else after "
                                f"the compressed data (line {line})")
            break  # zero padding after the last member
    return bytes(out)


def _utf16_or_32(data: bytes) -> str | None:
    """'UTF-16' / 'UTF-32' when the bytes are text in that encoding (by BOM, or by the NUL-byte pattern)."""
    if data.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        return "UTF-32"
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "UTF-16"
    head = data[:4096]
    if len(head) < 8:
        return None
    if head[1::4].count(0) + head[2::4].count(0) > 0.9 * len(head) / 2 and head[3::4].count(0) > 0.9 * len(head) / 4:
        return "UTF-32"
    even, odd = head[0::2].count(0) / (len(head) / 2), head[1::2].count(0) / (len(head) / 2)
    if max(even, odd) > 0.4 and min(even, odd) < 0.05:
        return "UTF-16"
    return None


def _what_it_is(data: bytes, path: Path) -> str | None:
    """If the bytes are something other than the text the file's name promises: what they are, as advice."""
    stem = path.name.split(".")[0] or path.name
    if data[:2] == b"\x1f\x8b":
        return f"looks like gzip-compressed data; name it {path.name}.gz"
    for magic, what in ((b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd")):
        if data.startswith(magic) and (magic != b"BZh" or data[3:4].isdigit()):
            return f"looks like {what}-compressed data; decompress it first (of compressed files only .gz is read)"
    if data.startswith(b"PK\x03\x04"):
        return "is a ZIP archive (an Excel .xlsx workbook is one); extract it, or export the sheet as CSV"
    if data.startswith(b"PAR1"):
        return f"looks like a Parquet file; name it {stem}.parquet"
    encoding = _utf16_or_32(data)
    if encoding:
        return f"is {encoding} text; save it as UTF-8"
    head = data[:_SNIFF_BYTES]
    if head.count(0) >= 2:
        # Text never holds raw NUL bytes; one bad line among good ones is that line's problem,
        # but control bytes and broken UTF-8 all over the start of the file make it binary.
        controls = sum(head.count(b) for b in range(32) if b not in (9, 10, 12, 13, 27))
        broken = head.decode("utf-8", errors="replace").count("\ufffd")
        if controls + broken > 0.05 * len(head):
            return "holds binary data (NUL bytes), not text"
    return None


def _read_text_file(path: Path) -> tuple[bytes, str, bool]:
    """(bytes, format, gzipped) of a JSONL/JSON/CSV file: decompressed, UTF-8 BOM removed, checked
    to be what its name says (not gzip, UTF-16, binary)."""
    fmt, gz = file_format(path)
    data = _read_once(path)
    if not data.strip():
        raise DataError(f"{path}: empty file (no rows)")
    if gz:
        data = _gunzip(path, data)
        if not data.strip():
            raise DataError(f"{path}: empty file (the compressed file holds no rows)")
    if gz and data[:2] == b"\x1f\x8b":
        raise DataError(f"{path}: compressed twice (gzip data inside the gzip file); decompress it once "
                        f"and save it as {path.name}")
    seen = _what_it_is(data, Path(path.name[:-3]) if gz else path)
    if seen:
        raise DataError(f"{path}: {seen}")
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark (Excel, Notepad): still UTF-8
        data = data[3:]
    return data, fmt or "", gz


def _bad_utf8(path: Path, row: int, exc: UnicodeDecodeError, raw: bytes) -> Quarantined:
    bad = raw[exc.start:exc.start + 1].hex()
    return Quarantined(str(path), row, "import", "utf8",
                       f"not UTF-8 text (byte 0x{bad} at column {exc.start + 1})",
                       record=raw[:_MAX_RECORD_CHARS].decode("utf-8", errors="replace"))


# ---------------------------------------------------------------------------- JSON


class _DupKeys(dict):
    """A JSON object in which a key appeared twice (``json`` would silently keep the last value)."""

    duplicate: str = ""


def _object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        obj = _DupKeys(obj)
        obj.duplicate = dup
    return obj


def _constant(name: str) -> float | None:
    """NaN means "missing" (as in pandas); ±Infinity stay numbers for the rules to reject where they matter."""
    return None if name == "NaN" else float(name.replace("Infinity", "inf"))


_DECODER = json.JSONDecoder(object_pairs_hook=_object_pairs, parse_constant=_constant)


def _loads(text: str) -> Any:
    """Parse JSON text; a JSONDecodeError (line and column in ``text``) for anything json cannot read."""
    start = len(text) - len(text.lstrip())
    try:
        obj, end = _DECODER.raw_decode(text, start)
    except RecursionError as exc:
        raise json.JSONDecodeError("nested too deeply", text, start) from exc
    except json.JSONDecodeError:
        raise
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise json.JSONDecodeError(f"unreadable value ({str(exc).split(';')[0]})", text, start) from exc
    if text[end:].strip():
        raise json.JSONDecodeError("Extra data", text, end + len(text[end:]) - len(text[end:].lstrip()))
    return obj


def _duplicate_key(value: Any, depth: int = 0) -> str | None:
    """The first key that appears twice in one object anywhere inside ``value`` (JSON path-ish), or None."""
    if depth > 100:
        return None
    if isinstance(value, _DupKeys):
        return value.duplicate
    if isinstance(value, dict):
        for k, v in value.items():
            inner = _duplicate_key(v, depth + 1)
            if inner is not None:
                return f"{k}.{inner}"
    elif isinstance(value, list):
        for i, v in enumerate(value):
            inner = _duplicate_key(v, depth + 1)
            if inner is not None:
                return f"{i}.{inner}"
    return None


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _unpaired_surrogate(value: Any, depth: int = 0) -> str | None:
    """The first text inside ``value`` holding an unpaired UTF-16 surrogate (from a ``\\ud800`` escape),
    which is not Unicode text: it cannot be written as UTF-8 (Parquet, the tokenizer)."""
    if depth > 100:
        return None
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"\\u{ord(value[exc.start]):04x}"
        return None
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for v in items:
        found = _unpaired_surrogate(v, depth + 1)
        if found:
            return found
    return None


def _record_problem(path: Path, row: int, obj: Any, record: Any, surrogates: bool = False) -> Quarantined | None:
    """Why a parsed JSON value cannot be a row (not an object, a duplicate key, an unpaired
    surrogate: checked only when ``surrogates``, i.e. the text holds such an escape), or None."""
    if not isinstance(obj, dict):
        return Quarantined(str(path), row, "import", "not_an_object",
                           f"expected a JSON object, got {_json_type(obj)}", record=record)
    dup = _duplicate_key(obj)
    if dup is not None:
        return Quarantined(str(path), row, "import", "duplicate_key",
                           f"key '{dup}' appears twice in one object (which value is meant?)", record=record)
    bad = _unpaired_surrogate(obj) if surrogates else None
    if bad is not None:
        return Quarantined(str(path), row, "import", "bad_unicode",
                           f"text holds an unpaired surrogate {bad}, which is not Unicode text",
                           record=json.loads(json.dumps(obj).replace(bad, "\\ufffd")))
    return None


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _renamed(path: Path, fmt: str, gz: bool) -> str:
    stem = path.name[:-3] if gz else path.name
    stem = stem.rsplit(".", 1)[0] if "." in stem else stem
    return f"{stem}.{fmt}" + (".gz" if gz else "")


def _read_jsonl(path: Path) -> RawRecords:
    data, _, gz = _read_text_file(path)
    # \n, \r\n or a lone \r (old Mac files) end a line: JSON text never holds a raw \r or \n
    lines = data.splitlines()
    first_no, first = next(((i, line) for i, line in enumerate(lines, start=1) if line.strip()), (0, b""))
    head = first.strip()[:1]
    if head in (b"[", b"{"):
        # A pretty-printed document: one JSON value over many lines (or a JSON array on one line).
        try:
            _loads(first.decode("utf-8"))
            first_ok = True
        except (UnicodeDecodeError, json.JSONDecodeError):
            first_ok = False
        if head == b"[" or not first_ok:
            try:
                doc = _loads(data.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                doc = None
            if isinstance(doc, list):
                raise DataError(f"{path}: holds a JSON array, not JSON lines (one object per line); "
                                f"name it {_renamed(path, 'json', gz)}")
            if isinstance(doc, dict) and not first_ok:
                raise DataError(f"{path}: holds one JSON object spread over lines {first_no}-{len(lines)}, not JSON "
                                f"lines (one object per line); write one object per line, or name it "
                                f"{_renamed(path, 'json', gz)}")
    out = RawRecords([], [])
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue  # blank lines are not rows
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            out.quarantined.append(_bad_utf8(path, lineno, exc, raw))
            continue
        try:
            obj = _loads(text)
        except json.JSONDecodeError as exc:
            out.quarantined.append(Quarantined(str(path), lineno, "import", "invalid_json",
                                               f"invalid JSON ({exc.msg} at column {exc.colno})", record=text))
            continue
        problem = _record_problem(path, lineno, obj, obj, surrogates=bool(_SURROGATE_ESCAPE.search(text)))
        if problem:
            out.quarantined.append(problem)
            continue
        out.records.append(obj)
        out.rows.append(lineno)
    return out


def _read_json(path: Path) -> RawRecords:
    raw, _, gz = _read_text_file(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start:exc.start + 1].hex()}); "
                        "a .json file must be valid UTF-8 as a whole") from exc
    try:
        obj = _loads(text)
    except json.JSONDecodeError as exc:
        hint = "use .jsonl to quarantine bad rows one by one"
        first = next((line for line in text.splitlines() if line.strip()), "")
        try:
            if exc.msg == "Extra data" and isinstance(_loads(first), dict):
                hint = f"it looks like JSON lines (one object per line): name it {_renamed(path, 'jsonl', gz)}"
        except json.JSONDecodeError:
            pass
        line = exc.lineno
        raise DataError(f"{path}:{line}: invalid JSON ({exc.msg}); {hint}") from exc
    if isinstance(obj, dict):
        dup = _duplicate_key(obj) if isinstance(obj, _DupKeys) else None
        lists = [v for v in obj.values() if isinstance(v, list)]
        if dup is None and len(lists) == 1 and all(isinstance(v, list) for v in obj.values()):
            obj = lists[0]  # {"data": [...]} wrapper
        elif dup is None and obj and all(isinstance(v, list) for v in obj.values()) and len({len(v) for v in obj.values()}) == 1:
            obj = pd.DataFrame(obj).to_dict(orient="records")  # column-oriented
        else:
            raise DataError(f"{path}: expected a JSON list of row objects (or {{\"data\": [...]}}), got an object "
                            f"with keys {sorted(obj)[:8]}")
    if not isinstance(obj, list):
        raise DataError(f"{path}: expected a JSON list of row objects, got {type(obj).__name__}")
    if not obj:
        raise DataError(f"{path}: empty file (the JSON list has no rows)")
    out = RawRecords([], [])
    surrogates = bool(_SURROGATE_ESCAPE.search(text))
    for i, item in enumerate(obj, start=1):
        problem = _record_problem(path, i, item, item, surrogates=surrogates)
        if problem:
            out.quarantined.append(problem)
            continue
        out.records.append(item)
        out.rows.append(i)
    return out


# ---------------------------------------------------------------------------- CSV


def _csv_lines(path: Path, data: bytes, bad: dict[int, Quarantined]):
    """Decoded lines (with their endings) for the csv module; a non-UTF-8 line is noted in ``bad``
    (by line number) and passed on with replacement characters, so its record can be quarantined."""
    for lineno, raw in enumerate(data.splitlines(keepends=True), start=1):
        if b"\x00" in raw:  # valid UTF-8, but a raw NUL byte in a text file is corruption (JSON refuses it too)
            bad[lineno] = Quarantined(str(path), lineno, "import", "nul_byte",
                                      f"a raw NUL byte at column {raw.index(0) + 1} (binary data in a text file)",
                                      record=raw[:_MAX_RECORD_CHARS].decode("utf-8", errors="replace"))
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad.setdefault(lineno, _bad_utf8(path, lineno, exc, raw))
            yield raw.decode("utf-8", errors="replace")


def _read_csv(path: Path) -> RawRecords:
    data, _, gz = _read_text_file(path)
    if data.lstrip()[:1] in (b"{", b"["):
        fmt = "jsonl" if data.lstrip()[:1] == b"{" else "json"
        raise DataError(f"{path}: holds JSON, not comma-separated values; name it {_renamed(path, fmt, gz)}")
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # replies can be long; the default is 128 KiB
    bad_lines: dict[int, Quarantined] = {}
    reader = csv.reader(_csv_lines(path, data, bad_lines), strict=True)
    out = RawRecords([], [])
    header: list[str] | None = None
    prev_end = 0
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            start, prev_end = prev_end + 1, reader.line_num
            if header is None:
                raise DataError(f"{path}:{start}: malformed CSV header ({exc})") from exc
            if "end of data" in str(exc) or "EOF" in str(exc):
                raise DataError(f"{path}:{start}: unclosed quote: the quoted field that starts on line {start} "
                                "runs to the end of the file") from exc
            out.quarantined.append(Quarantined(str(path), start, "import", "csv_syntax", f"malformed CSV ({exc})"))
            continue
        start, prev_end = prev_end + 1, reader.line_num
        if not any(f.strip() for f in fields):
            continue  # blank lines are not rows
        if header is None:
            if any(n in bad_lines for n in range(start, prev_end + 1)):
                raise DataError(f"{path}:1: CSV header is not UTF-8 text")
            header = [h.strip() for h in fields]
            dup = next((h for h in header if h and header.count(h) > 1), None)
            if dup:
                raise DataError(f"{path}:{start}: the CSV header names the column '{dup}' twice")
            if len(header) == 1 and any(sep in header[0] for sep in (";", "\t", "|")):
                sep = next(sep for sep in (";", "\t", "|") if sep in header[0])
                raise DataError(f"{path}:{start}: the header is one column '{header[0][:60]}': the file looks "
                                f"{'tab' if sep == chr(9) else repr(sep)}-separated, but only commas are read")
            continue
        bad = next((bad_lines[n] for n in range(start, prev_end + 1) if n in bad_lines), None)
        if bad is not None:
            bad.row = start
            out.quarantined.append(bad)
            continue
        if len(fields) != len(header):
            out.quarantined.append(Quarantined(
                str(path), start, "import", "csv_fields",
                f"{len(fields)} fields, but the header has {len(header)} (an unquoted comma, or a missing field?)",
                record=",".join(fields)))
            continue
        out.records.append({k: _parse_csv_cell(k, v) for k, v in zip(header, fields)})
        out.rows.append(start)
    if header is None:
        raise DataError(f"{path}: empty file (no CSV header)")
    if not out.records and not out.quarantined:
        raise DataError(f"{path}: empty file (CSV header but no rows)")
    return out


_CSV_JSON_COLUMNS = {"messages", "chosen", "rejected", "prompt", "completion", "responses", "annotator_labels"}


def _parse_csv_cell(column: str, value: str) -> Any:
    """CSV has no types: empty -> None, JSON lists where lists are expected, booleans/floats by column."""
    if value == "":
        return None
    if column in _CSV_JSON_COLUMNS and value.lstrip().startswith("["):
        try:
            return _loads(value)
        except json.JSONDecodeError:
            return value
    if column == "harmful":
        return {"true": True, "false": False, "1": True, "0": False}.get(value.strip().lower(), value)
    if column in ("margin", "score_chosen", "score_rejected"):
        try:
            number = float(value)
        except ValueError:
            return value
        return number if number == number else value  # "nan" stays text, for the margin rule to name
    return value


# ---------------------------------------------------------------------------- Parquet, datasets


def _read_parquet(path: Path) -> RawRecords:
    data = _read_once(path)
    if not data.strip():
        raise DataError(f"{path}: empty file (no rows)")
    if not data.startswith(b"PAR1"):
        seen = _what_it_is(data, path)
        if seen is None and data.lstrip()[:1] in (b"{", b"["):
            fmt = "jsonl" if data.lstrip()[:1] == b"{" else "json"
            seen = f"holds JSON text; name it {_renamed(path, fmt, False)}"
        raise DataError(f"{path}: not a Parquet file" + (f": it {seen}" if seen else " (it lacks the PAR1 header)"))
    try:
        frame = pd.read_parquet(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        first = (str(exc).strip().splitlines() or [""])[0]
        raise DataError(f"{path}: unreadable Parquet file ({type(exc).__name__}: {first})") from exc
    if frame.empty:
        raise DataError(f"{path}: empty file (no rows)")
    records = [{str(k): _native(v) for k, v in rec.items()} for rec in frame.to_dict(orient="records")]
    return RawRecords(records, list(range(1, len(records) + 1)))


def _native(value: Any) -> Any:
    """numpy arrays/scalars from Parquet/Arrow -> plain Python (lists, dicts, str, NaN -> None)."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, list):
        return [_native(v) for v in value]
    if isinstance(value, dict):
        return {k: _native(v) for k, v in value.items()}
    if isinstance(value, float) and value != value:
        return None
    return value


def _is_dataset_dir(path: Path) -> bool:
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        return True
    return any(any(path.glob(pattern)) or any(path.glob(f"*/{pattern}")) for pattern in _DATASET_DIR_MARKERS)


def _read_datasets(source: str, split: str) -> RawRecords:
    import datasets

    datasets.disable_progress_bars()
    path = Path(source)
    try:
        if path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
            loaded = datasets.load_from_disk(str(path))  # a save_to_disk directory
            if isinstance(loaded, datasets.DatasetDict):
                loaded = loaded[split]
        else:
            loaded = datasets.load_dataset(source, split=split)
    except KeyError as exc:
        raise DataError(f"{source}: dataset has no split '{split}' (set data.dataset_split)") from exc
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = "local dataset" if path.exists() else "not a local path; as a hub dataset"
        raise DataError(f"{source}: cannot load with datasets.load_dataset ({where}: {first})") from exc
    frame = loaded.to_pandas()
    if frame.empty:
        raise DataError(f"{source}: empty dataset (split '{split}' has no rows)")
    records = [{str(k): _native(v) for k, v in rec.items()} for rec in frame.to_dict(orient="records")]
    return RawRecords(records, list(range(1, len(records) + 1)))


def looks_like_hub_id(source: str) -> bool:
    if source.startswith("hf:"):
        return True
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", source)) and not Path(source).suffix


def read_records(path: Path | str, *, split: str = "train") -> RawRecords:
    """Read raw row dicts from a file, a dataset directory or a hub id (each file opened once)."""
    source = str(path)
    if source.startswith("hf:"):
        return _read_datasets(source[3:], split)
    path = Path(source).expanduser()
    if not os.path.lexists(path) and looks_like_hub_id(source):
        return _read_datasets(source, split)
    st = stat_source(path)
    if stat.S_ISDIR(st.st_mode):
        if _is_dataset_dir(path):
            return _read_datasets(str(path), split)
        raise DataError(f"{path}: is a directory, expected a data file (.jsonl, .json, .parquet, .csv) "
                        "or a `datasets` directory with data files")
    what = _not_regular(st.st_mode)
    if what:  # a FIFO would block the read, /dev/zero never end it
        raise DataError(f"{path}: is {what}, not a regular file; copy the data into a file first")
    fmt, gz = file_format(path)
    if fmt is None:
        suffix = "".join(path.suffixes[-2:]) if gz else path.suffix
        raise DataError(f"{path}: unsupported file type '{suffix}' (expected one of "
                        f"{', '.join(sorted(FILE_SUFFIXES))}, .jsonl.gz, .json.gz, .csv.gz, or a dataset directory)")
    return {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv, "parquet": _read_parquet}[fmt](path)


# ---------------------------------------------------------------------------- layouts


class RowError(Exception):
    """A row does not fit the file's layout: (rule, detail)."""

    def __init__(self, rule: str, detail: str) -> None:
        super().__init__(detail)
        self.rule, self.detail = rule, detail


def _is_message_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m and "content" in m
                                                          for m in value)


def _message_problem(messages: list[dict[str, Any]], column: str) -> RowError | None:
    """A message whose role or content is not text (a list, a number, null): one RowError naming it."""
    for i, m in enumerate(messages, start=1):
        for key in ("role", "content"):
            if not isinstance(m.get(key), str):
                return RowError("bad_messages", f"{column}: message {i} has {key} of type "
                                                f"{type(m.get(key)).__name__}, expected text")
    return None


def _turn_problem(history: list[dict[str, Any]], column: str) -> RowError | None:
    """Why the turns before a reply cannot go through a chat template, or None: an optional system
    message, then user and assistant turns alternating, from a user turn to a user turn, none empty."""
    turns = "turn" if column in ("chosen", "rejected") else "message"  # HH transcripts have turns
    for i, m in enumerate(history, start=1):
        role = m["role"]
        if role not in CHAT_ROLES:
            return RowError("unknown_role", f"{column}: {turns} {i} has role '{role}'; a chat template renders "
                                            "only system, user and assistant")
        if role == "system" and i > 1:
            return RowError("turn_order", f"{column}: system {turns} {i} is not the first")
        if not m["content"].strip():
            return RowError("empty_turn", f"{column}: {turns} {i} ({role}) is empty")
    body = history[1:] if history and history[0]["role"] == "system" else history
    if not body:
        return RowError("first_turn_not_user", f"{column}: no user (Human) turn before the reply")
    if body[0]["role"] != "user":
        return RowError("first_turn_not_user", f"{column}: the conversation starts with an {body[0]['role']} "
                                               "turn, not a user (Human) turn")
    offset = len(history) - len(body)
    for i, (a, b) in enumerate(zip(body, body[1:]), start=offset + 1):
        if a["role"] == b["role"]:
            return RowError("turn_order", f"{column}: two {a['role']} {turns}s in a row ({turns}s {i} and {i + 1})")
    if body[-1]["role"] != "user":
        return RowError("turn_order", f"{column}: the turns before the reply end with an assistant turn, not a "
                                      "user turn")
    return None


def render_messages(messages: list[dict[str, Any]]) -> str:
    """A prompt as text: one user turn is its content; several turns become 'Role: content' blocks."""
    if len(messages) == 1 and messages[0].get("role") == "user":
        return messages[0].get("content")  # a non-string stays one, for validation to name
    return "\n\n".join(f"{str(m.get('role')).capitalize()}: {m.get('content')}" for m in messages)


def user_turns(messages: list[dict[str, Any]]) -> str:
    """The user's part of a conversation: its user turns' texts, one paragraph each."""
    return "\n\n".join(m["content"] for m in messages if m.get("role") == "user")


def _conversation(history: list[dict[str, Any]], column: str) -> dict[str, Any]:
    """``prompt`` and ``prompt_messages`` from the turns before a reply (checked): one user turn
    is plain text (prompt_messages None, as single-turn data always was), more are a conversation."""
    history = [{"role": m["role"], "content": m["content"]} for m in history]
    problem = _turn_problem(history, column)
    if problem:
        raise problem
    if len(history) == 1:
        return {"prompt": history[0]["content"], "prompt_messages": None}
    return {"prompt": render_messages(history), "prompt_messages": history}


def _final_reply(value: Any, column: str) -> tuple[list[dict[str, Any]], Any]:
    """(messages before the reply, reply text) from a string (no messages) or a message list."""
    if isinstance(value, list):
        if not _is_message_list(value):
            raise RowError("bad_messages", f"{column}: expected a list of {{role, content}} messages")
        problem = _message_problem(value, column)
        if problem:
            raise problem
        last = value[-1]
        if last.get("role") != "assistant":
            raise RowError("bad_messages", f"{column}: last message must be the assistant's reply, "
                                           f"got role '{last.get('role')}'")
        return [{"role": m["role"], "content": m["content"]} for m in value[:-1]], last.get("content")
    return [], value


def transcript_messages(text: str, column: str) -> list[dict[str, str]]:
    """HH-RLHF: '\\n\\nHuman: a\\n\\nAssistant: b' -> user/assistant messages, the last the final reply
    (which may be empty, for validation to name). Text before the first turn marker is an error."""
    parts = _HH_TURN.split("\n\n" + text.lstrip("\n"))
    if parts[0].strip() or len(parts) < 3:
        raise RowError("first_turn_not_user", f"{column}: the transcript does not start with a '\\n\\nHuman:' turn")
    messages = [{"role": "user" if role == "Human" else "assistant", "content": content.strip()}
                for role, content in zip(parts[1::2], parts[2::2])]
    if messages[-1]["role"] != "assistant":
        raise RowError("not_a_transcript", f"{column}: the transcript ends with a Human turn, not an "
                                           "'\\n\\nAssistant:' reply")
    return messages


def _hh_pair(chosen: Any, rejected: Any) -> tuple[list[dict[str, str]], str, str]:
    """(shared prompt turns, chosen reply, rejected reply) of two HH-RLHF transcripts."""
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        raise RowError("is_string", "chosen/rejected: expected transcript strings")
    for text, column in ((chosen, "chosen"), (rejected, "rejected")):
        if _HH_ASSISTANT not in text:
            raise RowError("not_a_transcript", f"{column}: no '\\n\\nAssistant:' turn in the transcript")
    # Compared as written: two transcripts diverging anywhere before the final reply (HH has a few)
    if chosen[:chosen.rfind(_HH_ASSISTANT)].strip() != rejected[:rejected.rfind(_HH_ASSISTANT)].strip():
        raise RowError("no_shared_prompt", "chosen and rejected transcripts do not share the same prompt")
    c_msgs, r_msgs = transcript_messages(chosen, "chosen"), transcript_messages(rejected, "rejected")
    return c_msgs[:-1], c_msgs[-1]["content"], r_msgs[-1]["content"]


def _prompt_columns(rec: dict[str, Any]) -> dict[str, Any]:
    """``prompt`` and ``prompt_messages`` from a row's prompt column: text as is, a message list as a
    conversation; a curated file read back carries its ``prompt_messages``."""
    value, stored = rec.get("prompt"), rec.get("prompt_messages")
    for messages, column in ((value, "prompt"), (stored, "prompt_messages")):
        if isinstance(messages, list) and messages:
            if not _is_message_list(messages):
                raise RowError("bad_messages", f"{column}: expected a string or a list of {{role, content}} messages")
            problem = _message_problem(messages, column)
            if problem:
                raise problem
            return _conversation(messages, column)
    return {"prompt": value, "prompt_messages": None}


def detect_layout(columns: set[str]) -> str | None:
    """Name the layout a set of column names fits, or None."""
    if {"chosen", "rejected"} <= columns:
        return "pairs" if "prompt" in columns else "pairs_implicit_prompt"
    if "responses" in columns and "prompt" in columns:
        return "rankings"
    # prompt + response first: the canonical demonstrations frame (e.g. a curated parquet)
    # carries `messages` only as an optional extra column, None for plain rows.
    if "prompt" in columns and ({"completion", "response"} & columns):
        return "prompt_completion"
    if "messages" in columns:
        return "messages"
    if "prompt" in columns:
        return "prompt_only"
    return None


PAIR_LAYOUTS = ("pairs", "pairs_implicit_prompt")
_LAYOUT_KIND = {"pairs": "preferences", "pairs_implicit_prompt": "preferences", "rankings": "rankings",
                "messages": "demonstrations", "prompt_completion": "demonstrations", "prompt_only": "prompts"}
_KIND_LAYOUTS = {
    "preferences": {"pairs", "pairs_implicit_prompt", "rankings"},
    "rankings": {"rankings"},
    # A preference pair read as a demonstration: its prompt turns and its chosen reply.
    "demonstrations": {"messages", "prompt_completion", *PAIR_LAYOUTS},
    # Any layout with a prompt can feed RL: its replies are ignored.
    "prompts": {"prompt_only", "prompt_completion", "messages", "pairs", "pairs_implicit_prompt", "rankings"},
}
_EXPECTED = {
    "preferences": "prompt/chosen/rejected, chosen/rejected HH-RLHF transcripts or message lists, or prompt/responses",
    "rankings": "prompt/responses (best first)",
    "demonstrations": "prompt/completion, prompt/response, messages, or preference pairs (their chosen side)",
    "prompts": "a prompt column (or messages, or a preference layout)",
}


def infer_kind(columns: set[str]) -> Kind | None:
    layout = detect_layout(columns)
    return _LAYOUT_KIND[layout] if layout else None  # type: ignore[return-value]


def missing_columns(columns: set[str]) -> tuple[str, list[str]] | None:
    """(kind, missing columns) when ``columns`` are a broken version of a kind's layout: half a
    preference pair, responses without a prompt, a completion without a prompt; else None."""
    pair = {"chosen", "rejected"} & columns
    if len(pair) == 1:
        return "preferences", sorted({"chosen", "rejected"} - pair)
    if "responses" in columns and "prompt" not in columns:
        return "rankings", ["prompt"]
    if {"completion", "response"} & columns and "prompt" not in columns and "messages" not in columns:
        return "demonstrations", ["prompt"]
    return None


def _shown_columns(columns: set[str]) -> str:
    shown = sorted(columns)
    return ", ".join(shown[:12]) + (f", … ({len(shown)} in all)" if len(shown) > 12 else "") or "none"


def columns_of(raw: RawRecords) -> set[str]:
    columns: set[str] = set()
    for rec in raw.records:
        columns.update(rec)
    return columns


def infer_kind_of(raw: RawRecords, path: Path | str) -> Kind:
    """The kind of a file from the columns of its rows; a one-line DataError when no layout fits,
    naming the missing column when the file is a broken version of one (never a different kind)."""
    columns = columns_of(raw)
    broken = missing_columns(columns)
    if broken:
        kind, missing = broken
        names = ", ".join(f"'{c}'" for c in missing)
        raise DataError(f"{path}: looks like {kind} but the column {names} is missing "
                        f"(found columns [{_shown_columns(columns)}])")
    kind = infer_kind(columns)
    if kind is None:
        if not columns:
            raise DataError(f"{path}: no columns: every row is an empty object")
        raise DataError(f"{path}: cannot infer the data kind from columns [{_shown_columns(columns)}] "
                        "(pass --kind prompts|demonstrations|preferences|rankings)")
    return kind


def _extras(rec: dict[str, Any], path: Path, row: int, harmful: bool | None) -> dict[str, Any]:
    """The optional canonical columns, with defaults (id from file and row, source = file name,
    harmful = the input's declaration, None when it has none: unlabelled)."""
    rid = next((rec[k] for k in _ID_ALIASES if k in rec), _MISSING)
    if rid is _MISSING:
        rid = f"{path.stem}-{row}"
    elif _is_int(rid):
        rid = str(rid)  # integer ids are common and lossless as text
    own = rec.get("harmful")
    return {
        "id": rid,
        "topic": rec.get("topic"),
        "user_id": str(rec["user_id"]) if _is_int(rec.get("user_id")) else rec.get("user_id"),
        "source": rec.get("source") if rec.get("source") is not None else path.name,
        "split": rec.get("split"),
        "harmful": harmful if own is None else own,
    }


_MISSING = object()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shared_history(chosen: list[dict[str, Any]], rejected: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if chosen != rejected or not chosen:
        raise RowError("no_shared_prompt", "chosen and rejected conversations do not share the same prompt turns")
    return chosen


def _preference_row(rec: dict[str, Any], layout: str) -> dict[str, Any]:
    chosen, rejected = rec.get("chosen"), rec.get("rejected")
    if layout == "pairs":
        c_history, chosen_text = _final_reply(chosen, "chosen")
        r_history, rejected_text = _final_reply(rejected, "rejected")
        # UltraFeedback: chosen/rejected are whole conversations (its prompt column is their first turn)
        prompt = (_conversation(_shared_history(c_history, r_history), "chosen") if c_history or r_history
                  else _prompt_columns(rec))
    elif isinstance(chosen, list) or isinstance(rejected, list):  # conversational, implicit prompt
        if not (isinstance(chosen, list) and isinstance(rejected, list)):
            raise RowError("bad_messages", "chosen and rejected must both be message lists (or both transcripts)")
        c_history, chosen_text = _final_reply(chosen, "chosen")
        r_history, rejected_text = _final_reply(rejected, "rejected")
        prompt = _conversation(_shared_history(c_history, r_history), "chosen")
    else:  # Anthropic HH-RLHF transcripts
        history, chosen_text, rejected_text = _hh_pair(chosen, rejected)
        prompt = _conversation(history, "chosen")
    margin = rec.get("margin")
    scores = [(k, rec.get(k)) for k in ("score_chosen", "score_rejected") if rec.get(k) is not None]
    for key, score in scores:  # UltraFeedback-binarized: each a finite number, or absent
        if not is_finite_number(score):
            raise RowError("bad_score", f"{key}: expected a finite number, got {type(score).__name__} "
                                        f"{json.dumps(score, default=str)[:40]}")
    if margin is None and len(scores) == 2:
        margin = float(rec["score_chosen"]) - float(rec["score_rejected"])
    return {**prompt, "chosen": chosen_text, "rejected": rejected_text,
            "annotator_labels": rec.get("annotator_labels"), "margin": margin}


def _demonstration_row(rec: dict[str, Any], layout: str) -> dict[str, Any]:
    if layout in PAIR_LAYOUTS:  # the chosen side of a preference pair
        pair = _preference_row(rec, layout)
        history, reply = pair["prompt_messages"], pair["chosen"]
        messages = None if history is None else [*history, {"role": "assistant", "content": reply}]
        return {"prompt": pair["prompt"], "response": reply, "messages": messages}
    if layout == "messages":
        messages = rec.get("messages")
        if not _is_message_list(messages):
            raise RowError("bad_messages", "messages: expected a list of {role, content} messages")
        history, response = _final_reply(messages, "messages")  # checks every message's role and content
        if not history:
            raise RowError("bad_messages", "messages: no prompt turn before the assistant reply")
        return {"prompt": _conversation(history, "messages")["prompt"], "response": response, "messages": messages}
    completion = rec["completion"] if "completion" in rec else rec.get("response")
    prompt = rec.get("prompt")
    _, response = _final_reply(completion, "completion")
    messages = rec.get("messages") if _is_message_list(rec.get("messages")) else None
    if isinstance(prompt, list) and isinstance(completion, list):
        messages = prompt + completion
    return {"prompt": _prompt_columns(rec)["prompt"], "response": response, "messages": messages}


def _prompt_row(rec: dict[str, Any], layout: str) -> dict[str, Any]:
    if layout == "messages":
        messages = rec.get("messages")
        if not _is_message_list(messages):
            raise RowError("bad_messages", "messages: expected a list of {role, content} messages")
        problem = _message_problem(messages, "messages")
        if problem:
            raise problem
        history = messages[:-1] if messages[-1].get("role") == "assistant" else messages
        return _conversation(history, "messages")
    if layout == "pairs_implicit_prompt":
        pair = _preference_row(rec, layout)
        return {"prompt": pair["prompt"], "prompt_messages": pair["prompt_messages"]}
    return _prompt_columns(rec)


def _ranking_rows(rec: dict[str, Any], base: dict[str, Any]) -> list[dict[str, Any]]:
    responses = rec.get("responses")
    if not isinstance(responses, list) or len(responses) < 2:
        raise RowError("bad_responses", "responses: expected a list of 2 or more replies, best first")
    texts = [_final_reply(r, "responses")[1] if isinstance(r, list) else r for r in responses]
    prompt = _prompt_columns(rec)
    rows = []
    for i, j in combinations(range(len(texts)), 2):  # best-first: every earlier reply beats every later one
        rows.append({**base, **prompt, "id": f"{base['id']}-{i}-{j}", "chosen": texts[i],
                     "rejected": texts[j], "annotator_labels": None, "margin": None})
    return rows


def _layout_for(columns: set[str], path: Path, kind: Kind) -> str:
    """The layout of a file read as ``kind``; a one-line DataError when none fits, naming the missing
    column when the columns are a broken version of a layout (a pair missing `rejected`)."""
    found = _shown_columns(columns)
    broken = missing_columns(columns)
    if broken:
        missing = ", ".join(f"'{c}'" for c in broken[1])
        raise DataError(f"{path}: no {kind} layout recognised: the column {missing} is missing "
                        f"(the columns look like {broken[0]}; expected {_EXPECTED[kind]}; found columns [{found}])")
    layout = detect_layout(columns)
    if layout is None or layout not in _KIND_LAYOUTS[kind]:
        raise DataError(f"{path}: no {kind} layout recognised: expected {_EXPECTED[kind]}; found columns [{found}]")
    return layout


def canonicalize(
    raw: RawRecords, path: Path, kind: Kind, *, harmful: bool | None = None
) -> tuple[pd.DataFrame, list[Quarantined]]:
    """Map raw records to the canonical columns of ``kind`` (rankings expand to preference pairs);
    ``harmful`` labels the rows without a ``harmful`` value of their own."""
    layout = _layout_for(columns_of(raw), path, kind)
    out_kind = "preferences" if kind in ("preferences", "rankings") else kind
    rows: list[dict[str, Any]] = []
    quarantined = list(raw.quarantined)
    for rec, row in zip(raw.records, raw.rows):
        base = _extras(rec, path, row, harmful)
        base["_file"], base["_row"] = str(path), row
        try:
            if out_kind == "preferences" and layout == "rankings":
                rows.extend(_ranking_rows(rec, base))
                continue
            if out_kind == "preferences":
                body = _preference_row(rec, layout)
            elif out_kind == "demonstrations":
                body = _demonstration_row(rec, layout)
            else:
                body = _prompt_row(rec, layout)
        except RowError as err:
            quarantined.append(Quarantined(str(path), row, "import", err.rule, err.detail, record=rec))
            continue
        rows.append({**base, **body})
    for q in quarantined:
        q.kind = out_kind
    cols = CANONICAL_COLUMNS[out_kind] + ["_file", "_row"]
    # Object dtype keeps each value as read (an int prompt stays an int for validation to
    # name) and missing values as None rather than NaN.
    frame = pd.DataFrame(rows, columns=cols, dtype=object)
    frame["_row"] = frame["_row"].astype("int64")
    return frame, quarantined


def load_dataset_file(
    path: Path | str, kind: Kind, *, split: str = "train", harmful: bool | None = None
) -> tuple[pd.DataFrame, list[Quarantined]]:
    """Read one source into a canonical frame of ``kind`` plus the rows quarantined on the way.

    ``kind="rankings"`` (or a rankings file read as ``"preferences"``) yields preference pairs;
    a preference file read as ``"demonstrations"`` yields its chosen side. ``harmful`` labels
    the rows that carry no ``harmful`` value (None: unlabelled). The frame carries provenance
    columns ``_file`` and ``_row`` (line for JSONL, 1-based row otherwise). Raises
    :class:`DataError` (one line) when the source as a whole is unusable.
    """
    if kind not in CANONICAL_COLUMNS:
        raise DataError(f"{path}: unknown data kind '{kind}' (expected one of {', '.join(CANONICAL_COLUMNS)})")
    raw = read_records(path, split=split)
    return canonical_frame(raw, path, kind, harmful=harmful)


def canonical_frame(
    raw: RawRecords, path: Path | str, kind: Kind, *, harmful: bool | None = None
) -> tuple[pd.DataFrame, list[Quarantined]]:
    """:func:`load_dataset_file` on records already read (so a file is read once)."""
    if kind not in CANONICAL_COLUMNS:
        raise DataError(f"{path}: unknown data kind '{kind}' (expected one of {', '.join(CANONICAL_COLUMNS)})")
    if not raw.records and raw.quarantined:
        # Every row was bad: still a usable answer (all quarantined), the frame is just empty.
        out_kind = "preferences" if kind in ("preferences", "rankings") else kind
        for q in raw.quarantined:
            q.kind = out_kind
        cols = CANONICAL_COLUMNS[out_kind] + ["_file", "_row"]
        return pd.DataFrame(columns=cols, dtype=object), raw.quarantined
    source = Path(str(path)[3:]) if str(path).startswith("hf:") else Path(path)
    return canonicalize(raw, source, kind, harmful=harmful)
