"""Labelling for iterated online RLHF: pairs of a policy's own replies go out, labels come back.

One round (Bai et al. 2022, "Iterated Online RLHF", sec. 4.5) samples K replies per prompt from
the champion policy; this module turns them into comparison tasks, hands them to a labelling
backend, reads the labels back and turns them into canonical preference rows:

1. :func:`make_tasks`: up to ``pairs_per_prompt`` distinct unordered pairs of a prompt's replies,
   A/B order at random (people and the simulated panel have a position bias). Identical or blank
   replies are never paired; every reply or pair left out is counted by reason.
2. A :class:`Labeler` backend: ``submit(tasks, batch)``, ``progress(batch)``, ``collect(batch)``.
   :class:`FileLabeler` exchanges JSONL files with people or any other tool; :class:`SimulatedLabeler`
   is the demo data's annotator panel (``rlhf_core/demo_data/annotators.py``).
3. :func:`to_preferences`: one preference row per task with a majority (ties are abstentions),
   tagged with round, policy version, label count and agreement; the rest counted by reason.

A batch (e.g. ``"round-3"``) is the unit a round waits for. Submitting the same tasks to a batch
again is a no-op (a round resumed after a crash), other tasks refuse. A label is keyed by
(annotator, task): several annotators per task give inter-annotator agreement, the same
annotator twice is refused, so no label is imported twice.

Pure python plus pandas: no torch, no orchestration.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from rlhf_core.conversation import row_context
from rlhf_core.demo_data.annotators import calibrate_tau, expected_agreement, make_panel, preference_probs
from rlhf_core.errors import ConfigError, DataError
from rlhf_core.gold import gold_score

CHOICES = ("a", "b", "tie")
# The canonical preference columns (data_checks/schemas.py CANONICAL_COLUMNS["preferences"], which
# imports pandera, so it is repeated here; a test keeps the two equal), then this module's own.
PREFERENCE_COLUMNS = [
    "id", "prompt", "prompt_messages", "chosen", "rejected", "annotator_labels", "margin",
    "topic", "user_id", "source", "split", "harmful",
]
ROUND_COLUMNS = ["task_id", "round", "policy_version", "n_labels", "agreement"]
# ``source`` of every row this module writes: pairs of the policy's own replies, labelled online.
ONLINE_SOURCE = "online"
DROP_REASONS = ("unlabelled", "all_tie", "even_split")
TASK_ID_CHARS = 16  # 64 bits of sha256: collisions are out of reach for any number of tasks a person labels
_BATCH_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # one safe path component
LABEL_KEYS = ("task_id", "choice", "annotator", "note")
SHOWN_PROBLEMS = 5  # a LabelError names the line of the first problem and of up to this many more


# ----------------------------------------------------------------------------- tasks


def task_id_for(round: int, policy_version: str, prompt: str, prompt_messages: list[dict[str, str]] | None,
                reply_a: str, reply_b: str) -> str:
    """Short sha256 of what is compared. The replies are sorted first: the same comparison shown
    A/B or B/A is one task, so it can never be labelled under two ids."""
    key = json.dumps({"round": round, "policy_version": policy_version, "prompt": prompt,
                      "prompt_messages": prompt_messages, "replies": sorted((reply_a, reply_b))},
                     sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:TASK_ID_CHARS]


@dataclass(frozen=True)
class LabelTask:
    """One comparison to label: which of ``reply_a`` / ``reply_b`` answers the prompt better.

    ``prompt_messages``: the conversation before the reply (None for one user turn, whose text is
    ``prompt``). ``harmful``, ``topic``, ``user_id``, ``split``: carried from the prompt row into
    the preference row. ``task_id`` must equal :func:`task_id_for` of the content (checked), so a
    task read back from a file is the task that was sent; build new ones with :meth:`create`.
    """

    task_id: str
    round: int
    policy_version: str
    prompt: str
    prompt_messages: list[dict[str, str]] | None
    reply_a: str
    reply_b: str
    harmful: bool | None = None
    topic: str | None = None
    user_id: str | None = None
    split: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.round, int) or isinstance(self.round, bool) or self.round < 0:
            raise ValueError(f"round must be a non-negative integer, got {self.round!r}")
        for name in ("policy_version", "prompt", "reply_a", "reply_b"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name} must be non-blank text, got {value!r}")
        if self.harmful is not None and not isinstance(self.harmful, bool):
            raise ValueError(f"harmful must be true, false or null, got {self.harmful!r}")
        expected = task_id_for(self.round, self.policy_version, self.prompt, self.prompt_messages,
                               self.reply_a, self.reply_b)
        if self.task_id != expected:
            raise ValueError(f"task_id {self.task_id!r} does not match the task's content (expected {expected!r})")

    @classmethod
    def create(cls, *, round: int, policy_version: str, prompt: str, prompt_messages: list[dict[str, str]] | None,
               reply_a: str, reply_b: str, **meta: Any) -> LabelTask:
        tid = task_id_for(round, policy_version, prompt, prompt_messages, reply_a, reply_b)
        return cls(task_id=tid, round=round, policy_version=policy_version, prompt=prompt,
                   prompt_messages=prompt_messages, reply_a=reply_a, reply_b=reply_b, **meta)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LabelTask:
        """The inverse of :meth:`to_dict`; ValueError on unknown or missing keys or a wrong task_id."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown keys {unknown} (a task has {sorted(known)})")
        try:
            return cls(**d)
        except TypeError as exc:  # a required key missing
            raise ValueError(str(exc).replace("__init__() ", "")) from exc


def _prompt_meta(row: Mapping[str, Any], where: str) -> dict[str, Any]:
    harmful = row.get("harmful")
    if harmful is not None and not (isinstance(harmful, float) and math.isnan(harmful)):
        if not isinstance(harmful, (bool, np.bool_)):  # numpy's bool: a row taken from a frame
            raise DataError(f"{where}: 'harmful' must be true, false or null, got {harmful!r}")
        harmful = bool(harmful)
    else:
        harmful = None
    meta: dict[str, Any] = {"harmful": harmful}
    for key in ("topic", "user_id", "split"):
        value = row.get(key)
        meta[key] = value if isinstance(value, str) else None
    return meta


def make_tasks(
    prompt_rows: Sequence[Mapping[str, Any]],
    replies: Sequence[Sequence[str]],
    *,
    round: int,
    policy_version: str,
    pairs_per_prompt: int,
    seed: int,
) -> tuple[list[LabelTask], dict[str, Any]]:
    """Comparison tasks from K sampled replies per prompt; returns (tasks, accounting).

    ``prompt_rows[i]``: a dict with ``prompt``, optional ``prompt_messages``, ``harmful`` (and
    ``topic``/``user_id``/``split``, carried along); ``replies[i]``: the K replies sampled for it.
    Per prompt, blank replies and replies identical to an earlier one (ignoring surrounding
    whitespace, the preference schema's rule) are left out; of the remaining distinct replies,
    ``min(pairs_per_prompt, C(n, 2))`` unordered pairs are drawn without replacement (one seeded
    stream, in prompt order), each shown A/B or B/A with equal chance.

    ``accounting``: ``prompts``, ``replies``, ``tasks``, ``skipped_replies`` ({reason: count}),
    ``prompts_without_pair`` (fewer than two usable replies), ``pairs_not_drawn`` (usable pairs
    over ``pairs_per_prompt``), ``skipped_pairs`` ({"duplicate_task": n}: the same prompt and
    replies twice in the batch).
    """
    if len(prompt_rows) != len(replies):
        raise ValueError(f"make_tasks: {len(prompt_rows)} prompt rows but {len(replies)} reply lists")
    if pairs_per_prompt < 1:
        raise ValueError(f"make_tasks: pairs_per_prompt must be >= 1, got {pairs_per_prompt}")
    rng = random.Random(seed)
    tasks: list[LabelTask] = []
    seen: set[str] = set()
    skipped_replies = Counter({"blank_reply": 0, "identical_reply": 0})
    skipped_pairs = Counter({"duplicate_task": 0})
    without_pair = not_drawn = n_replies = 0
    for i, (row, texts) in enumerate(zip(prompt_rows, replies, strict=True)):
        where = f"prompt_rows[{i}]"
        prompt = row.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"{where}: 'prompt' must be non-blank text, got {prompt!r}")
        messages = row_context(row, where)
        meta = _prompt_meta(row, where)
        usable: list[str] = []
        for text in texts:
            n_replies += 1
            if not isinstance(text, str) or not text.strip():
                skipped_replies["blank_reply"] += 1
            elif any(text.strip() == u.strip() for u in usable):
                skipped_replies["identical_reply"] += 1  # no preference signal between the two
            else:
                usable.append(text)
        pairs = list(itertools.combinations(range(len(usable)), 2))
        if not pairs:
            without_pair += 1
            continue
        drawn = rng.sample(pairs, min(pairs_per_prompt, len(pairs)))
        not_drawn += len(pairs) - len(drawn)
        for ia, ib in drawn:
            if rng.random() < 0.5:
                ia, ib = ib, ia
            task = LabelTask.create(round=round, policy_version=policy_version, prompt=prompt,
                                    prompt_messages=messages, reply_a=usable[ia], reply_b=usable[ib], **meta)
            if task.task_id in seen:
                skipped_pairs["duplicate_task"] += 1
                continue
            seen.add(task.task_id)
            tasks.append(task)
    accounting = {
        "prompts": len(prompt_rows), "replies": n_replies, "tasks": len(tasks),
        "skipped_replies": dict(skipped_replies), "prompts_without_pair": without_pair,
        "pairs_not_drawn": not_drawn, "skipped_pairs": dict(skipped_pairs),
    }
    return tasks, accounting


# ----------------------------------------------------------------------------- labels and backends


@dataclass(frozen=True)
class Label:
    """One annotator's verdict on one task: ``"a"``, ``"b"`` or ``"tie"``."""

    task_id: str
    choice: str
    annotator: str
    note: str | None = None

    def __post_init__(self) -> None:
        if self.choice not in CHOICES:
            raise ValueError(f"choice must be one of {list(CHOICES)}, got {self.choice!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Label:
        return cls(task_id=d["task_id"], choice=d["choice"], annotator=d["annotator"], note=d.get("note"))


@dataclass(frozen=True)
class Progress:
    """How far a batch is: tasks with at least one label, of all tasks; labels in all."""

    labelled_tasks: int
    total_tasks: int
    labels: int

    @property
    def complete(self) -> bool:
        return self.labelled_tasks >= self.total_tasks


@runtime_checkable
class Labeler(Protocol):
    """A labelling backend. ``submit`` is idempotent for the same tasks and refuses other tasks
    for an existing batch; ``progress`` and ``collect`` may be called any time after it."""

    name: str

    def submit(self, tasks: Sequence[LabelTask], batch: str) -> None: ...

    def progress(self, batch: str) -> Progress: ...

    def collect(self, batch: str) -> list[Label]: ...


@dataclass(frozen=True)
class LabelProblem:
    line: int
    rule: str
    detail: str


class LabelError(DataError):
    """A labels (or tasks) file breaks a rule. The message names the file, the line and the rule
    of the first problem, and how many more there are; ``problems`` holds them all."""

    def __init__(self, file: Path | str, problems: list[LabelProblem]) -> None:
        self.file = str(file)
        self.problems = problems
        first = problems[0]
        more = ""
        if len(problems) > 1:
            counts = Counter(p.rule for p in problems[1:])
            listed = ", ".join(f"{n} {rule}" for rule, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
            lines = ", ".join(f"{p.line} {p.rule}" for p in problems[1:1 + SHOWN_PROBLEMS])
            etc = ", ..." if len(problems) > 1 + SHOWN_PROBLEMS else ""
            more = f" (and {len(problems) - 1} more: {listed}; lines {lines}{etc})"
        super().__init__(f"{self.file}:{first.line}: {first.rule}: {first.detail}{more}")


def _check_batch_name(batch: str) -> None:
    if not isinstance(batch, str) or not _BATCH_NAME.match(batch) or batch in (".", ".."):
        raise DataError(f"batch name {batch!r} must be letters, digits, '.', '_' or '-' (e.g. 'round-3')")


def _check_new_tasks(tasks: Sequence[LabelTask], batch: str) -> dict[str, LabelTask]:
    if not tasks:
        raise DataError(f"batch {batch!r}: no tasks to label (every prompt's replies were identical or blank?)")
    by_id: dict[str, LabelTask] = {}
    for t in tasks:
        if t.task_id in by_id:
            raise DataError(f"batch {batch!r}: task {t.task_id} is listed twice")
        by_id[t.task_id] = t
    return by_id


def _check_same_tasks(existing: dict[str, LabelTask], new: dict[str, LabelTask], batch: str, where: str) -> None:
    if existing == new:
        return
    common = len(existing.keys() & new.keys())
    raise DataError(
        f"{where}: batch {batch!r} already exists with different tasks ({len(existing)} there, {len(new)} "
        f"submitted, {common} in common); resume it with the same tasks or use a new batch name"
    )


def _progress(task_ids: Sequence[str] | set[str], labels: Sequence[Label]) -> Progress:
    labelled = {lab.task_id for lab in labels}
    return Progress(labelled_tasks=len(labelled & set(task_ids)), total_tasks=len(task_ids), labels=len(labels))


README_TEXT = """\
Batch {batch}: {n} comparisons to label.

tasks.jsonl has one task a line: a prompt (prompt_messages holds the conversation before the
reply, when there is one) and two replies, reply_a and reply_b. For each task you label, add one
line to labels.jsonl in this folder:

  {{"task_id": "<task_id from tasks.jsonl>", "choice": "a", "annotator": "<your name>"}}

choice: "a" if reply_a is the better reply, "b" if reply_b is, "tie" if neither is better.
An optional "note" (text) may explain the choice. Several people may label the same task (each
under their own annotator name); one person labels a task once. Lines for unknown tasks, a
second label by the same person for the same task, other choices or other keys are refused
when the labels are imported, naming the line.
"""


def _write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename: a crash never leaves half a tasks file behind."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _json_object(text: str) -> Any:
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in items]
        dup = next((k for k in keys if keys.count(k) > 1), None)
        if dup is not None:
            raise ValueError(f"key {dup!r} appears twice")
        return dict(items)

    return json.loads(text, object_pairs_hook=pairs)


def _lines(path: Path) -> list[tuple[int, str | None, bool]]:
    """(line number, text or None if not UTF-8, whether the line ends with a newline), blank lines left out."""
    data = path.read_bytes()
    raw_lines = data.splitlines(keepends=True)
    out = []
    for n, raw in enumerate(raw_lines, start=1):
        ended = raw.endswith((b"\n", b"\r"))
        body = raw.rstrip(b"\r\n")
        if n == 1 and body.startswith(b"\xef\xbb\xbf"):
            body = body[3:]  # a byte-order mark some editors write
        try:
            text: str | None = body.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None and not text.strip():
            continue
        out.append((n, text, ended))
    return out


def _text_field(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    return value.strip() if isinstance(value, str) and value.strip() else None


def parse_labels(path: Path, task_ids: set[str], *, batch: str, allow_partial_tail: bool = False) -> list[Label]:
    """Read and check a labels JSONL file against the batch's task ids; :class:`LabelError` on any problem.

    ``allow_partial_tail``: a last line without a newline that is not valid JSON is taken to be
    still being written, and skipped (for polling while someone appends); otherwise it is malformed.
    """
    labels: list[Label] = []
    problems: list[LabelProblem] = []
    first_line: dict[tuple[str, str], int] = {}
    lines = _lines(path)
    for k, (n, text, ended) in enumerate(lines):
        if text is None:
            problems.append(LabelProblem(n, "malformed_line", "not UTF-8 text"))
            continue
        try:
            obj = _json_object(text)
        except ValueError as exc:
            if allow_partial_tail and k == len(lines) - 1 and not ended:
                continue
            problems.append(LabelProblem(n, "malformed_line", f"not a JSON object ({str(exc).split(':')[0]})"))
            continue
        if not isinstance(obj, dict):
            problems.append(LabelProblem(n, "malformed_line", f"expected a JSON object, got {type(obj).__name__}"))
            continue
        unknown = sorted(set(obj) - set(LABEL_KEYS))
        if unknown:
            problems.append(LabelProblem(n, "unknown_field", f"unknown keys {unknown}; a label has {list(LABEL_KEYS)}"))
            continue
        missing = [key for key in ("task_id", "choice", "annotator") if key not in obj]
        if missing:
            problems.append(LabelProblem(n, "missing_field", f"missing {missing}"))
            continue
        task_id, annotator = _text_field(obj, "task_id"), _text_field(obj, "annotator")
        if task_id is None or annotator is None:
            bad = "task_id" if task_id is None else "annotator"
            problems.append(LabelProblem(n, "bad_field", f"{bad} must be non-blank text, got {obj[bad]!r}"))
            continue
        note = obj.get("note")
        if note is not None and not isinstance(note, str):
            problems.append(LabelProblem(n, "bad_field", f"note must be text or null, got {note!r}"))
            continue
        if obj["choice"] not in CHOICES:
            problems.append(LabelProblem(n, "invalid_choice",
                                         f"choice {obj['choice']!r} is not one of \"a\", \"b\", \"tie\""))
            continue
        if task_id not in task_ids:
            problems.append(LabelProblem(n, "unknown_task",
                                         f"task_id {task_id!r} is not a task of batch {batch!r} (tasks.jsonl)"))
            continue
        key = (annotator, task_id)
        if key in first_line:
            problems.append(LabelProblem(
                n, "duplicate_label",
                f"annotator {annotator!r} already labelled task {task_id} on line {first_line[key]} "
                "(no label is imported twice)"))
            continue
        first_line[key] = n
        labels.append(Label(task_id=task_id, choice=obj["choice"], annotator=annotator, note=note))
    if problems:
        raise LabelError(path, problems)
    return labels


class FileLabeler:
    """Labelling through files: ``<directory>/<batch>/tasks.jsonl`` out, ``labels.jsonl`` back.

    ``submit`` writes the tasks (one JSON object a line, :meth:`LabelTask.to_dict`) and a
    README.txt saying what to write back; people or any other tool append lines
    ``{"task_id": ..., "choice": "a"|"b"|"tie", "annotator": ...}`` to ``labels.jsonl``.
    ``progress`` and ``collect`` read and check that file every call (nothing is cached, so
    a resumed round sees exactly what is on disk).
    """

    name = "file"

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)

    def batch_dir(self, batch: str) -> Path:
        _check_batch_name(batch)
        return self.directory / batch

    def tasks_path(self, batch: str) -> Path:
        return self.batch_dir(batch) / "tasks.jsonl"

    def labels_path(self, batch: str) -> Path:
        return self.batch_dir(batch) / "labels.jsonl"

    def submit(self, tasks: Sequence[LabelTask], batch: str) -> None:
        new = _check_new_tasks(tasks, batch)
        path = self.tasks_path(batch)
        if path.exists():
            _check_same_tasks(self.tasks(batch), new, batch, str(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        readme = path.parent / "README.txt"
        if not readme.exists():
            _write_atomic(readme, README_TEXT.format(batch=batch, n=len(new)))
        if not path.exists():
            _write_atomic(path, "".join(json.dumps(t.to_dict(), ensure_ascii=False) + "\n" for t in tasks))

    def tasks(self, batch: str) -> dict[str, LabelTask]:
        """The batch's tasks by id, read back from tasks.jsonl (checked)."""
        path = self.tasks_path(batch)
        if not path.exists():
            raise DataError(f"{path}: batch {batch!r} was never submitted (no tasks file)")
        out: dict[str, LabelTask] = {}
        problems: list[LabelProblem] = []
        for n, text, _ in _lines(path):
            try:
                if text is None:
                    raise ValueError("not UTF-8 text")
                task = LabelTask.from_dict(_json_object(text))
            except (ValueError, TypeError) as exc:
                problems.append(LabelProblem(n, "bad_task", str(exc)))
                continue
            if task.task_id in out:
                problems.append(LabelProblem(n, "duplicate_task", f"task {task.task_id} is listed twice"))
                continue
            out[task.task_id] = task
        if problems:
            raise LabelError(path, problems)
        return out

    def _labels(self, batch: str, *, allow_partial_tail: bool) -> tuple[set[str], list[Label]]:
        task_ids = set(self.tasks(batch))
        path = self.labels_path(batch)
        if not path.exists():
            return task_ids, []
        return task_ids, parse_labels(path, task_ids, batch=batch, allow_partial_tail=allow_partial_tail)

    def progress(self, batch: str) -> Progress:
        task_ids, labels = self._labels(batch, allow_partial_tail=True)
        return _progress(task_ids, labels)

    def collect(self, batch: str) -> list[Label]:
        return self._labels(batch, allow_partial_tail=False)[1]


@dataclass
class SimulatedLabeler:
    """The demo data's simulated panel (``rlhf_core/demo_data/annotators.py``) labelling online tasks.

    Annotator ``sim-k`` prefers A with probability ``sigmoid(gap / (tau * t_k) + b_k * tanh(dwords / 40)
    + p_k)`` on the gold-score gap; every annotator labels every task at ``submit``, so labels are
    there at once. The panel (its people) is fixed by ``seed`` for all batches; ``tau`` is solved
    per batch so that the expected pairwise agreement on that batch's (gap, word-count difference)
    items is ``target_agreement`` (InstructGPT's ~73%, Ouyang et al. 2022, sec. 5.1), as the demo
    data does. The votes are drawn from a stream seeded by (seed, batch): the same batch gets
    the same labels in any process, so a resumed round re-imports exactly what it had.
    """

    n_annotators: int = 3
    target_agreement: float = 0.73
    seed: int = 0
    name: str = "simulated"
    _tasks: dict[str, dict[str, LabelTask]] = field(default_factory=dict, init=False, repr=False)
    _labels: dict[str, list[Label]] = field(default_factory=dict, init=False, repr=False)
    _stats: dict[str, dict[str, Any]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.n_annotators < 2:
            raise ConfigError(f"simulated labeler: n_annotators must be >= 2 to agree at all (got {self.n_annotators})")
        if not 0.5 < self.target_agreement < 1.0:
            raise ConfigError(f"simulated labeler: target_agreement must be in (0.5, 1) (got {self.target_agreement})")
        self.panel = make_panel(self.n_annotators, random.Random(self.seed))

    def submit(self, tasks: Sequence[LabelTask], batch: str) -> None:
        _check_batch_name(batch)
        new = _check_new_tasks(tasks, batch)
        if batch in self._tasks:
            _check_same_tasks(self._tasks[batch], new, batch, f"{self.name} labeler")
            return
        items = []
        for t in tasks:
            harmful = bool(t.harmful)  # unlabelled prompts are scored as benign, as evaluation does
            gap = gold_score(t.prompt, t.reply_a, harmful=harmful) - gold_score(t.prompt, t.reply_b, harmful=harmful)
            items.append((gap, len(t.reply_a.split()) - len(t.reply_b.split())))
        tau = calibrate_tau(items, self.panel, self.target_agreement)
        rng = random.Random(f"{self.seed}/{batch}")
        labels = []
        for t, (gap, dwords) in zip(tasks, items, strict=True):
            for k, p in enumerate(preference_probs(gap, dwords, self.panel, tau)):
                labels.append(Label(task_id=t.task_id, choice="a" if rng.random() < p else "b", annotator=f"sim-{k}"))
        self._tasks[batch], self._labels[batch] = new, labels
        self._stats[batch] = {"tau": tau, "expected_agreement": expected_agreement(items, self.panel, tau)}

    def _known(self, batch: str) -> None:
        if batch not in self._tasks:
            raise DataError(f"{self.name} labeler: batch {batch!r} was never submitted")

    def progress(self, batch: str) -> Progress:
        self._known(batch)
        return _progress(self._tasks[batch].keys(), self._labels[batch])

    def collect(self, batch: str) -> list[Label]:
        self._known(batch)
        return list(self._labels[batch])

    def panel_stats(self, batch: str) -> dict[str, Any]:
        """``tau`` and the expected pairwise agreement the panel was calibrated to on ``batch``."""
        self._known(batch)
        return dict(self._stats[batch])


# ----------------------------------------------------------------------------- labels -> preferences


def _by_task(tasks: Sequence[LabelTask], labels: Sequence[Label]) -> dict[str, list[Label]]:
    ids = {t.task_id for t in tasks}
    grouped: dict[str, list[Label]] = {tid: [] for tid in ids}
    seen: set[tuple[str, str]] = set()
    for lab in labels:
        if lab.task_id not in ids:
            raise DataError(f"label by {lab.annotator!r}: task {lab.task_id} is not one of the {len(ids)} tasks given")
        if (lab.annotator, lab.task_id) in seen:
            raise DataError(f"label by {lab.annotator!r}: task {lab.task_id} labelled twice by the same annotator")
        seen.add((lab.annotator, lab.task_id))
        grouped[lab.task_id].append(lab)
    return grouped


def to_preferences(tasks: Sequence[LabelTask], labels: Sequence[Label]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One canonical preference row per task whose labels have a majority; returns (frame, accounting).

    A ``"tie"`` vote abstains: the reply with more a/b votes is ``chosen``. Tasks are dropped, by
    reason, when they have no label (``unlabelled``: a half-labelled batch keeps what was
    labelled), only ties (``all_tie``) or as many votes for A as for B (``even_split``).

    Columns: the canonical preference columns (``id`` = ``task_id``; ``annotator_labels``: one 0/1
    per a/b vote, 1 = preferred ``chosen``, by annotator name; ``margin`` = (votes for chosen -
    votes against) / all labels, so ties shrink it; ``source`` = ``"online"``), then ``task_id``,
    ``round``, ``policy_version``, ``n_labels`` and ``agreement`` (share of all the task's labels,
    ties included, that chose the majority reply). Rows follow the order of ``tasks``.
    """
    grouped = _by_task(tasks, labels)
    dropped = Counter({reason: 0 for reason in DROP_REASONS})
    rows = []
    for t in tasks:
        votes = sorted(grouped[t.task_id], key=lambda lab: lab.annotator)
        counts = Counter(lab.choice for lab in votes)
        if not votes:
            dropped["unlabelled"] += 1
            continue
        if counts["a"] == counts["b"]:
            dropped["all_tie" if counts["tie"] == len(votes) else "even_split"] += 1
            continue
        winner = "a" if counts["a"] > counts["b"] else "b"
        chosen, rejected = (t.reply_a, t.reply_b) if winner == "a" else (t.reply_b, t.reply_a)
        decisive = [1 if lab.choice == winner else 0 for lab in votes if lab.choice != "tie"]
        n_for = sum(decisive)
        rows.append({
            "id": t.task_id, "prompt": t.prompt, "prompt_messages": t.prompt_messages,
            "chosen": chosen, "rejected": rejected, "annotator_labels": decisive,
            "margin": (2 * n_for - len(decisive)) / len(votes),
            "topic": t.topic, "user_id": t.user_id, "source": ONLINE_SOURCE, "split": t.split, "harmful": t.harmful,
            "task_id": t.task_id, "round": t.round, "policy_version": t.policy_version,
            "n_labels": len(votes), "agreement": n_for / len(votes),
        })
    frame = pd.DataFrame(rows, columns=PREFERENCE_COLUMNS + ROUND_COLUMNS)
    accounting = {"tasks": len(tasks), "labels": len(labels), "rows": len(rows), "dropped": dict(dropped),
                  "tie_votes": sum(lab.choice == "tie" for lab in labels)}
    return frame, accounting


def inter_annotator_agreement(labels: Sequence[Label]) -> float | None:
    """Mean share of annotator pairs of a task that gave the same choice (a, b or tie), over tasks
    with >= 2 labels; None when there are none. With only a/b votes this is the demo data's
    :func:`rlhf_core.demo_data.annotators.pairwise_agreement` (which counts two choices only)."""
    by_task: dict[str, Counter[str]] = {}
    for lab in labels:
        by_task.setdefault(lab.task_id, Counter())[lab.choice] += 1
    shares = []
    for counts in by_task.values():
        k = sum(counts.values())
        if k >= 2:
            shares.append(sum(math.comb(c, 2) for c in counts.values()) / math.comb(k, 2))
    return sum(shares) / len(shares) if shares else None
