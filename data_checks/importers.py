"""Read data files in the common RLHF layouts into canonical frames.

Sources: local JSONL, JSON, Parquet and CSV files, and anything ``datasets.load_dataset``
reads (a local dataset directory or script, a ``save_to_disk`` directory, or a hub id,
written ``hf:org/name`` or plainly ``org/name``).

Layouts recognised (by column names):

* TRL standard: ``prompt`` + ``chosen``/``rejected``; ``prompt`` + ``completion``/``response``;
  ``prompt`` alone (prompt-only);
* TRL conversational: ``messages``; ``prompt``/``chosen``/``rejected`` as message lists, with an
  explicit or implicit (shared-prefix) prompt;
* Anthropic HH-RLHF: ``chosen``/``rejected`` transcripts ("\\n\\nHuman: … \\n\\nAssistant: …"),
  split into the shared prompt and the two final replies (a multi-turn prompt is kept as
  transcript text; :func:`transcript_to_messages` turns it into messages);
* UltraFeedback-binarized: ``prompt`` + ``chosen``/``rejected`` full conversations
  (+ ``score_chosen``/``score_rejected`` -> ``margin``);
* rankings: ``prompt`` + ``responses`` (best first), expanded to all K·(K−1)/2 pairs.

Row-level problems (invalid JSON, non-UTF-8 bytes, a row whose shape fits no layout) become
:class:`Quarantined` rows naming ``file:row``; file-level problems (missing file, empty file,
a directory, no recognisable layout) raise one-line :class:`DataError` s.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import pandas as pd

from data_checks.config import Kind
from data_checks.schemas import CANONICAL_COLUMNS
from rlhf_core.errors import DataError

FILE_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".pq": "parquet",
                 ".csv": "csv"}
_DATASET_DIR_MARKERS = ("*.jsonl", "*.json", "*.parquet", "*.csv", "*.arrow", "*.py", "*.txt")
_HH_ASSISTANT = "\n\nAssistant:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_ID_ALIASES = ("id", "prompt_id", "uid")
_MAX_RECORD_CHARS = 2_000  # how much of a bad row the quarantine file keeps


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
        return f"{self.file}:{self.row}: {self.rule}: {self.detail}"

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
    if hasattr(value, "tolist"):
        return clip_record(value.tolist())
    if isinstance(value, float) and value != value:
        return None
    return value


# ---------------------------------------------------------------------------- reading


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except PermissionError as exc:
        raise DataError(f"{path}: cannot read file (permission denied)") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    if not data.strip():
        raise DataError(f"{path}: empty file (no rows)")
    return data


def _bad_utf8(path: Path, row: int, exc: UnicodeDecodeError, raw: bytes) -> Quarantined:
    bad = raw[exc.start:exc.start + 1].hex()
    return Quarantined(str(path), row, "import", "utf8",
                       f"not UTF-8 text (byte 0x{bad} at column {exc.start + 1})",
                       record=raw[:_MAX_RECORD_CHARS].decode("utf-8", errors="replace"))


def _read_jsonl(path: Path) -> RawRecords:
    out = RawRecords([], [])
    for lineno, raw in enumerate(_read_bytes(path).split(b"\n"), start=1):
        if not raw.strip():
            continue  # blank lines are not rows
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            out.quarantined.append(_bad_utf8(path, lineno, exc, raw))
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            out.quarantined.append(Quarantined(str(path), lineno, "import", "invalid_json",
                                               f"invalid JSON ({exc.msg} at column {exc.colno})", record=text))
            continue
        if not isinstance(obj, dict):
            out.quarantined.append(Quarantined(str(path), lineno, "import", "not_an_object",
                                               f"expected a JSON object, got {type(obj).__name__}", record=obj))
            continue
        out.records.append(obj)
        out.rows.append(lineno)
    return out


def _read_json(path: Path) -> RawRecords:
    raw = _read_bytes(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start:exc.start + 1].hex()}); "
                        "a .json file must be valid UTF-8 as a whole") from exc
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno}); "
                        "use .jsonl to quarantine bad rows one by one") from exc
    if isinstance(obj, dict):
        lists = [v for v in obj.values() if isinstance(v, list)]
        if len(lists) == 1 and all(isinstance(v, list) for v in obj.values()):
            obj = lists[0]  # {"data": [...]} wrapper
        elif obj and all(isinstance(v, list) for v in obj.values()) and len({len(v) for v in obj.values()}) == 1:
            obj = pd.DataFrame(obj).to_dict(orient="records")  # column-oriented
        else:
            raise DataError(f"{path}: expected a JSON list of row objects (or {{\"data\": [...]}}), got an object "
                            f"with keys {sorted(obj)[:8]}")
    if not isinstance(obj, list):
        raise DataError(f"{path}: expected a JSON list of row objects, got {type(obj).__name__}")
    if not obj:
        raise DataError(f"{path}: empty file (the JSON list has no rows)")
    out = RawRecords([], [])
    for i, item in enumerate(obj, start=1):
        if isinstance(item, dict):
            out.records.append(item)
            out.rows.append(i)
        else:
            out.quarantined.append(Quarantined(str(path), i, "import", "not_an_object",
                                               f"expected a JSON object, got {type(item).__name__}", record=item))
    return out


def _read_csv(path: Path) -> RawRecords:
    raw = _read_bytes(path)
    quarantined: list[Quarantined] = []
    good_lines: list[bytes] = []
    # Decode line by line so one bad byte quarantines one row, not the file.
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as exc:
            if lineno == 1:
                raise DataError(f"{path}:1: CSV header is not UTF-8 text") from exc
            quarantined.append(_bad_utf8(path, lineno, exc, line))
            continue
        good_lines.append(line)
    text = b"\n".join(good_lines).decode("utf-8")
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_filter=False)
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path}: empty file (no CSV header)") from exc
    except pd.errors.ParserError as exc:
        raise DataError(f"{path}: malformed CSV ({str(exc).strip().splitlines()[-1]})") from exc
    if frame.empty:
        raise DataError(f"{path}: empty file (CSV header but no rows)")
    records = [{k: _parse_csv_cell(k, v) for k, v in rec.items()} for rec in frame.to_dict(orient="records")]
    # Row numbers are data rows (header excluded), which matches line numbers for simple CSV.
    return RawRecords(records, list(range(2, len(records) + 2)), quarantined)


_CSV_JSON_COLUMNS = {"messages", "chosen", "rejected", "prompt", "completion", "responses", "annotator_labels"}


def _parse_csv_cell(column: str, value: str) -> Any:
    """CSV has no types: empty -> None, JSON lists where lists are expected, booleans/floats by column."""
    if value == "":
        return None
    if column in _CSV_JSON_COLUMNS and value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if column == "harmful":
        return {"true": True, "false": False, "1": True, "0": False}.get(value.strip().lower(), value)
    if column in ("margin", "score_chosen", "score_rejected"):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _read_parquet(path: Path) -> RawRecords:
    _read_bytes(path)
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{path}: unreadable Parquet file ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
    if frame.empty:
        raise DataError(f"{path}: empty file (no rows)")
    records = [{k: _native(v) for k, v in rec.items()} for rec in frame.to_dict(orient="records")]
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
    records = [{k: _native(v) for k, v in rec.items()} for rec in frame.to_dict(orient="records")]
    return RawRecords(records, list(range(1, len(records) + 1)))


def looks_like_hub_id(source: str) -> bool:
    if source.startswith("hf:"):
        return True
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", source)) and not Path(source).suffix


def read_records(path: Path | str, *, split: str = "train") -> RawRecords:
    """Read raw row dicts from a file, a dataset directory or a hub id."""
    source = str(path)
    if source.startswith("hf:"):
        return _read_datasets(source[3:], split)
    path = Path(source).expanduser()
    if not path.exists():
        if looks_like_hub_id(source):
            return _read_datasets(source, split)
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        if _is_dataset_dir(path):
            return _read_datasets(str(path), split)
        raise DataError(f"{path}: is a directory, expected a data file (.jsonl, .json, .parquet, .csv) "
                        "or a `datasets` directory with data files")
    fmt = FILE_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unsupported file type '{path.suffix}' (expected one of "
                        f"{', '.join(sorted(FILE_SUFFIXES))}, or a dataset directory)")
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


def render_messages(messages: list[dict[str, Any]]) -> str:
    """A prompt as text: one user turn is its content; several turns become 'Role: content' blocks."""
    if len(messages) == 1 and messages[0].get("role") == "user":
        return messages[0].get("content")  # a non-string stays one, for validation to name
    return "\n\n".join(f"{str(m.get('role')).capitalize()}: {m.get('content')}" for m in messages)


def _final_reply(value: Any, column: str) -> tuple[list[dict[str, Any]] | None, Any]:
    """(prompt messages before the reply, reply text) from a string or a message list."""
    if isinstance(value, list):
        if not _is_message_list(value):
            raise RowError("bad_messages", f"{column}: expected a list of {{role, content}} messages")
        last = value[-1]
        if last.get("role") != "assistant":
            raise RowError("bad_messages", f"{column}: last message must be the assistant's reply, "
                                           f"got role '{last.get('role')}'")
        return value[:-1], last.get("content")
    return None, value


def split_transcript(text: str) -> tuple[str, str]:
    """HH-RLHF: '\\n\\nHuman: q\\n\\nAssistant: a' -> (prompt transcript up to 'Assistant:', final reply)."""
    cut = text.rfind(_HH_ASSISTANT)
    if cut < 0:
        raise RowError("not_a_transcript", "no '\\n\\nAssistant:' turn in the transcript")
    prompt = text[:cut + len(_HH_ASSISTANT)].strip()
    return prompt, text[cut + len(_HH_ASSISTANT):].strip()


def transcript_to_messages(transcript: str) -> list[dict[str, str]]:
    """'Human: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant:' -> user/assistant messages (empty tail dropped)."""
    text = "\n\n" + transcript.strip()
    parts = _HH_TURN.split(text)
    messages = []
    for role, content in zip(parts[1::2], parts[2::2]):
        if content.strip():
            messages.append({"role": "user" if role == "Human" else "assistant", "content": content.strip()})
    return messages


def _prompt_text(value: Any) -> Any:
    if isinstance(value, list):
        if not _is_message_list(value):
            raise RowError("bad_messages", "prompt: expected a string or a list of {role, content} messages")
        return render_messages(value)
    return value


def _common_prefix(a: list[Any], b: list[Any]) -> list[Any]:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


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


_LAYOUT_KIND = {"pairs": "preferences", "pairs_implicit_prompt": "preferences", "rankings": "rankings",
                "messages": "demonstrations", "prompt_completion": "demonstrations", "prompt_only": "prompts"}
_KIND_LAYOUTS = {
    "preferences": {"pairs", "pairs_implicit_prompt", "rankings"},
    "rankings": {"rankings"},
    "demonstrations": {"messages", "prompt_completion"},
    # Any layout with a prompt can feed RL: its replies are ignored.
    "prompts": {"prompt_only", "prompt_completion", "messages", "pairs", "pairs_implicit_prompt", "rankings"},
}
_EXPECTED = {
    "preferences": "prompt/chosen/rejected, chosen/rejected HH-RLHF transcripts or message lists, or prompt/responses",
    "rankings": "prompt/responses (best first)",
    "demonstrations": "prompt/completion, prompt/response or messages",
    "prompts": "a prompt column (or messages, or a preference layout)",
}


def infer_kind(columns: set[str]) -> Kind | None:
    layout = detect_layout(columns)
    return _LAYOUT_KIND[layout] if layout else None  # type: ignore[return-value]


def _extras(rec: dict[str, Any], path: Path, row: int) -> dict[str, Any]:
    """The optional canonical columns, with defaults (id from file and row, source = file name)."""
    rid = next((rec[k] for k in _ID_ALIASES if k in rec), _MISSING)
    if rid is _MISSING:
        rid = f"{path.stem}-{row}"
    elif isinstance(rid, int) and not isinstance(rid, bool):
        rid = str(rid)  # integer ids are common and lossless as text
    harmful = rec.get("harmful")
    return {
        "id": rid,
        "topic": rec.get("topic"),
        "user_id": str(rec["user_id"]) if isinstance(rec.get("user_id"), int) else rec.get("user_id"),
        "source": rec.get("source") if rec.get("source") is not None else path.name,
        "split": rec.get("split"),
        "harmful": False if harmful is None else harmful,
    }


_MISSING = object()


def _preference_row(rec: dict[str, Any], layout: str) -> dict[str, Any]:
    chosen, rejected = rec.get("chosen"), rec.get("rejected")
    if layout == "pairs":
        prompt = _prompt_text(rec.get("prompt"))
        _, chosen_text = _final_reply(chosen, "chosen")
        _, rejected_text = _final_reply(rejected, "rejected")
    elif isinstance(chosen, list) or isinstance(rejected, list):  # conversational, implicit prompt
        if not (isinstance(chosen, list) and isinstance(rejected, list)):
            raise RowError("bad_messages", "chosen and rejected must both be message lists (or both transcripts)")
        c_prompt, chosen_text = _final_reply(chosen, "chosen")
        r_prompt, rejected_text = _final_reply(rejected, "rejected")
        if c_prompt != r_prompt or not c_prompt:
            raise RowError("no_shared_prompt", "chosen and rejected conversations do not share the same prompt turns")
        prompt = render_messages(c_prompt)
    else:  # Anthropic HH-RLHF transcripts
        if not isinstance(chosen, str) or not isinstance(rejected, str):
            raise RowError("is_string", "chosen/rejected: expected transcript strings")
        c_prompt, chosen_text = split_transcript(chosen)
        r_prompt, rejected_text = split_transcript(rejected)
        if c_prompt != r_prompt:
            raise RowError("no_shared_prompt", "chosen and rejected transcripts do not share the same prompt")
        prompt = c_prompt
    margin = rec.get("margin")
    if margin is None and rec.get("score_chosen") is not None and rec.get("score_rejected") is not None:
        try:  # UltraFeedback-binarized scores
            margin = float(rec["score_chosen"]) - float(rec["score_rejected"])
        except (TypeError, ValueError):
            margin = None
    return {"prompt": prompt, "chosen": chosen_text, "rejected": rejected_text,
            "annotator_labels": rec.get("annotator_labels"), "margin": margin}


def _demonstration_row(rec: dict[str, Any], layout: str) -> dict[str, Any]:
    if layout == "messages":
        messages = rec.get("messages")
        if not _is_message_list(messages):
            raise RowError("bad_messages", "messages: expected a list of {role, content} messages")
        history, response = _final_reply(messages, "messages")
        if not history:
            raise RowError("bad_messages", "messages: no prompt turn before the assistant reply")
        return {"prompt": render_messages(history), "response": response, "messages": messages}
    completion = rec["completion"] if "completion" in rec else rec.get("response")
    prompt = rec.get("prompt")
    _, response = _final_reply(completion, "completion")
    messages = rec.get("messages") if _is_message_list(rec.get("messages")) else None
    if isinstance(prompt, list) and isinstance(completion, list):
        messages = prompt + completion
    return {"prompt": _prompt_text(prompt), "response": response, "messages": messages}


def _prompt_row(rec: dict[str, Any], layout: str) -> dict[str, Any]:
    if layout == "messages":
        messages = rec.get("messages")
        if not _is_message_list(messages):
            raise RowError("bad_messages", "messages: expected a list of {role, content} messages")
        history = messages[:-1] if messages[-1].get("role") == "assistant" else messages
        return {"prompt": render_messages(history)}
    if layout == "pairs_implicit_prompt":
        return {"prompt": _preference_row(rec, layout)["prompt"]}
    return {"prompt": _prompt_text(rec.get("prompt"))}


def _ranking_rows(rec: dict[str, Any], base: dict[str, Any]) -> list[dict[str, Any]]:
    responses = rec.get("responses")
    if not isinstance(responses, list) or len(responses) < 2:
        raise RowError("bad_responses", "responses: expected a list of 2 or more replies, best first")
    texts = [_final_reply(r, "responses")[1] if isinstance(r, list) else r for r in responses]
    prompt = _prompt_text(rec.get("prompt"))
    rows = []
    for i, j in combinations(range(len(texts)), 2):  # best-first: every earlier reply beats every later one
        rows.append({**base, "id": f"{base['id']}-{i}-{j}", "prompt": prompt, "chosen": texts[i],
                     "rejected": texts[j], "annotator_labels": None, "margin": None})
    return rows


def canonicalize(raw: RawRecords, path: Path, kind: Kind) -> tuple[pd.DataFrame, list[Quarantined]]:
    """Map raw records to the canonical columns of ``kind`` (rankings expand to preference pairs)."""
    columns: set[str] = set()
    for rec in raw.records:
        columns.update(rec)
    layout = detect_layout(columns)
    if layout is None or layout not in _KIND_LAYOUTS[kind]:
        found = ", ".join(sorted(columns)[:12]) or "none"
        raise DataError(f"{path}: no {kind} layout recognised: expected {_EXPECTED[kind]}; found columns [{found}]")
    out_kind = "preferences" if kind in ("preferences", "rankings") else kind
    rows: list[dict[str, Any]] = []
    quarantined = list(raw.quarantined)
    for rec, row in zip(raw.records, raw.rows):
        base = _extras(rec, path, row)
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


def load_dataset_file(path: Path | str, kind: Kind, *, split: str = "train") -> tuple[pd.DataFrame, list[Quarantined]]:
    """Read one source into a canonical frame of ``kind`` plus the rows quarantined on the way.

    ``kind="rankings"`` (or a rankings file read as ``"preferences"``) yields preference pairs.
    The frame carries provenance columns ``_file`` and ``_row`` (line for JSONL, 1-based row
    otherwise). Raises :class:`DataError` (one line) when the source as a whole is unusable.
    """
    if kind not in CANONICAL_COLUMNS:
        raise DataError(f"{path}: unknown data kind '{kind}' (expected one of {', '.join(CANONICAL_COLUMNS)})")
    raw = read_records(path, split=split)
    if not raw.records and raw.quarantined:
        # Every row was bad: still a usable answer (all quarantined), the frame is just empty.
        out_kind = "preferences" if kind in ("preferences", "rankings") else kind
        for q in raw.quarantined:
            q.kind = out_kind
        cols = CANONICAL_COLUMNS[out_kind] + ["_file", "_row"]
        return pd.DataFrame(columns=cols, dtype=object), raw.quarantined
    source = Path(str(path)[3:]) if str(path).startswith("hf:") else Path(path)
    return canonicalize(raw, source, kind)
