"""The data stage: raw files -> validated, curated parquet files + a data report.

Steps, in order (a row is dropped by the first step that rejects it, and logged with
that step and its reason in ``dropped.jsonl``):

1. import every input file (bad lines quarantined);
2. validate against the pandera schema of its kind (bad rows quarantined);
3. prompt filters: empty/templated spam, token length, language (the heaviest per-row step:
   ``DataConfig.num_proc`` worker processes run it through ``datasets.Dataset.map``);
4. refusal scrubbing of SFT responses and chosen replies;
5. dedup within each split: exact (normalised hash), then near (MinHash + LSH); a row is the
   same as an earlier one only when its prompt AND its reply(ies) match (see DedupConfig);
6. cross-split contamination: eval rows whose prompt near-duplicates a training prompt;
7. per-user cap of demonstrations and preferences, counted in distinct prompts;
8. coverage: RL prompts outside the preference prompts' support;
9. per-user cap of RL prompts, counted among the prompts every other step kept (a heavy user's
   off-support or duplicate prompts do not use up their quota).

Outputs in ``out_dir``: demonstrations.parquet, preferences.parquet, rl_prompts.parquet
(train split), eval_prompts.parquet, quarantine.jsonl, dropped.jsonl, report.json, report.md.
They appear together once the stage has finished (:mod:`data_checks.outputs`): a failure
leaves no half-written files, and ``out_dir`` must be new, empty or an earlier output of this
stage (nothing else is ever deleted). An input file with no usable row (every row quarantined)
or an input left with no row after curation stops the stage with a :class:`DataError` naming
it and the reasons; the report and the quarantine are still written, the curated files are not.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data_checks import dedup
from data_checks.importers import (
    PAIR_LAYOUTS,
    Quarantined,
    canonical_frame,
    clip_record,
    columns_of,
    detect_layout,
    location,
    read_records,
)
from data_checks.outputs import claim_dir, publish_dir, staging_dir
from rlhf_core.config.data import DataConfig, DedupConfig
from data_checks.prompt_filter import (
    compute_coverage,
    language_reasons,
    length_reasons,
    make_token_counter,
    spam_reasons,
    topic_mix,
    user_cap_reasons,
    user_text,
)
from data_checks.refusal import refusal_reasons
from data_checks.report import DataReport, FileReport
from data_checks.schemas import CANONICAL_COLUMNS, is_null
from data_checks.validate import validate_frame, write_quarantine
from rlhf_core.errors import DataError

INPUTS = ("demonstrations", "preferences", "rl_prompts")
WRITTEN_BY = "rlhf data prepare"
OUTPUT_FILES = ("demonstrations.parquet", "preferences.parquet", "rl_prompts.parquet", "eval_prompts.parquet",
                "quarantine.jsonl", "dropped.jsonl", "report.json", "report.md")
KIND_OF_INPUT = {"demonstrations": "demonstrations", "preferences": "preferences", "rl_prompts": "prompts"}
_MAX_CLUSTERS_REPORTED = 20


def _row_parts(frame: pd.DataFrame, name: str) -> tuple[list[str], list[list[str]]]:
    """(prompts, reply columns) of the rows: no reply for RL prompts, the response for
    demonstrations, chosen and rejected for preferences."""
    replies = {"demonstrations": ["response"], "preferences": ["chosen", "rejected"]}.get(name, [])
    return list(frame["prompt"]), [list(frame[c]) for c in replies]


def exact_duplicate_of(frame: pd.DataFrame, name: str) -> dict[int, int]:
    """Position of each row that repeats an earlier row -> position of that earlier row.

    Same row = equal normalized prompt and reply(ies); a preference pair's replies compare as an
    unordered pair (chosen/rejected swapped is the same comparison, with a conflicting label).
    """
    prompts, replies = _row_parts(frame, name)
    norm = dedup.normalize_text
    cols = [[norm(t) for t in col] for col in replies]
    first: dict[tuple[str, ...], int] = {}
    out: dict[int, int] = {}
    for pos, prompt in enumerate(prompts):
        parts = [col[pos] for col in cols]
        key = (norm(prompt), *(sorted(parts) if name == "preferences" else parts))
        if key in first:
            out[pos] = first[key]
        else:
            first[key] = pos
    return out


def near_duplicate_row_pairs(frame: pd.DataFrame, name: str, cfg: DedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs (i < j, positions) that are near-duplicates: the prompts are (under ``cfg.prompt``)
    and so is every reply (under ``cfg.reply``; a preference pair's replies match straight or swapped).

    Candidates come from MinHash LSH over the prompts, so the work grows with the number of rows
    that share a (near-identical) prompt, not with N^2. Returns ((E, 2) int64 sorted, (E,) the
    smallest estimated Jaccard over the parts).
    """
    prompts, replies = _row_parts(frame, name)
    p, r = cfg.prompt, cfg.reply
    pairs, est = dedup.near_duplicate_pairs(prompts, shingle=p.shingle, shingle_size=p.shingle_size,
                                            num_perm=cfg.num_perm, threshold=p.threshold, seed=cfg.seed,
                                            lsh_weights=cfg.lsh_weights)
    if not replies or len(pairs) == 0:
        return pairs, est
    n = len(prompts)
    # One signature matrix for all reply columns: reply column c of row i is row c*n + i.
    sig = dedup.minhash_signatures([t for col in replies for t in col], shingle=r.shingle,
                                   shingle_size=r.shingle_size, num_perm=cfg.num_perm, seed=cfg.seed)
    i, j = pairs[:, 0], pairs[:, 1]

    def sim(ci: int, cj: int) -> np.ndarray:
        return dedup.estimated_jaccard(sig, ci * n + i, cj * n + j)

    if len(replies) == 1:
        reply_est = sim(0, 0)
    else:  # chosen~chosen and rejected~rejected, or chosen~rejected and rejected~chosen
        reply_est = np.maximum(np.minimum(sim(0, 0), sim(1, 1)), np.minimum(sim(0, 1), sim(1, 0)))
    keep = reply_est >= r.threshold - 1e-12  # est is k/num_perm exactly, the threshold may not be
    return pairs[keep], np.minimum(est[keep], reply_est[keep])


def near_duplicate_of(n: int, pairs: np.ndarray) -> dict[int, int]:
    """Greedy in row order: a row is dropped when it near-duplicates an earlier *kept* row
    (-> the first such row). Unlike connected components, a chain a~b~c with a !~ c keeps c
    when b is dropped, and every drop names a kept row it really resembles."""
    out: dict[int, int] = {}
    if len(pairs) == 0:
        return out
    order = np.lexsort((pairs[:, 0], pairs[:, 1]))  # by j, then i: rows before j are final
    kept = np.ones(n, dtype=bool)
    for i, j in pairs[order].tolist():
        if kept[j] and kept[i]:
            kept[j] = False
            out[j] = i
    return out


def _is_eval(frame: pd.DataFrame) -> pd.Series:
    return frame["split"].map(lambda s: s == "eval")


class _Ledger:
    """Every dropped row, with the step and the reason; quarantined rows separately too."""

    def __init__(self) -> None:
        self.dropped: list[dict[str, Any]] = []
        self.quarantined: list[Quarantined] = []
        # (input, file) -> "<stage>:<rule>" -> rows: one file may feed several inputs (HH-RLHF does)
        self.per_file: dict[tuple[str, str], dict[str, int]] = {}

    def _count(self, name: str, file: str, key: str) -> None:
        counts = self.per_file.setdefault((name, file), {})
        counts[key] = counts.get(key, 0) + 1

    def quarantine(self, rows: list[Quarantined], name: str) -> None:
        for q in rows:
            self.quarantined.append(q)
            key = f"{q.stage}:{q.rule}"
            self._count(name, q.file, key)
            self.dropped.append({"input": name, "file": q.file, "row": q.row, "id": _id_of(q.record),
                                 "stage": q.stage, "rule": q.rule, "reason": q.message, "record": clip_record(q.record)})

    def drop(self, frame: pd.DataFrame, reasons: pd.Series, name: str, stage: str) -> pd.DataFrame:
        """Remove the rows with a reason; log each (stage, rule, detail)."""
        mask = reasons.map(lambda r: r is not None)
        if not mask.any():
            return frame
        for idx in frame.index[mask.to_numpy()]:
            rule, detail = reasons[idx]
            row = frame.loc[idx]
            file, line = str(row["_file"]), int(row["_row"])
            self._count(name, file, f"{stage}:{rule}")
            self.dropped.append({"input": name, "file": file, "row": line, "id": row["id"], "stage": stage,
                                 "rule": rule, "reason": f"{location(file, line)}: {rule}: {detail}",
                                 "record": clip_record(row.drop(["_file", "_row"]).to_dict())})
        return frame[~mask.to_numpy()]


def _id_of(record: Any) -> Any:
    return record.get("id") if isinstance(record, dict) else None


CHOSEN_SIDE_WARNING = (
    "{file}: {n} demonstrations from the chosen side of preference pairs. Taken unfiltered this copies "
    "refusals and muddled replies into SFT (seed 000: N. Lambert, \"How RLHF actually works\", 2023, on "
    "HH-RLHF's chosen replies used as instructions); refusal scrubbing and dedup apply, their counts are "
    "in the report")


def _load_inputs(cfg: DataConfig, ledger: _Ledger, report: DataReport) -> dict[str, pd.DataFrame]:
    frames: dict[str, pd.DataFrame] = {}
    for name in INPUTS:
        kind = KIND_OF_INPUT[name]
        parts = []
        for source in cfg.sources(name):  # type: ignore[arg-type]
            raw = read_records(source.path, split=cfg.dataset_split)
            frame, quarantined = canonical_frame(raw, source.path, kind, harmful=source.harmful)  # type: ignore[arg-type]
            files = set(frame["_file"]) | {q.file for q in quarantined} or {str(source.path)}
            for file in sorted(files):
                n = int((frame["_file"] == file).sum()) + sum(q.file == file for q in quarantined)
                known = next((f for f in report.files if (f.input, f.file) == (name, file)), None)
                if known:  # the same file listed twice for one input: one entry, all its rows
                    known.rows_in += n
                else:
                    report.files.append(FileReport(file=file, input=name, rows_in=n))
            if name == "demonstrations" and detect_layout(columns_of(raw)) in PAIR_LAYOUTS:
                file = str(source.path)
                report.chosen_side[file] = report.chosen_side.get(file, 0) + len(frame)
                report.warnings.append(CHOSEN_SIDE_WARNING.format(file=file, n=len(frame)))
            ledger.quarantine(quarantined, name)
            parts.append(frame)
        columns = CANONICAL_COLUMNS["preferences" if name == "preferences" else kind] + ["_file", "_row"]
        parts = [p for p in parts if not p.empty]
        frames[name] = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns, dtype=object)
    return frames


def held_out_share(key: str) -> float:
    """Where a conversation falls in [0, 1): a stable hash of its user turns (whitespace and case folded)."""
    digest = hashlib.sha256(" ".join(key.lower().split()).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def hold_out(frame: pd.DataFrame, fraction: float) -> tuple[pd.DataFrame, int]:
    """Rows without a ``split`` go to eval when their conversation's share is under ``fraction``
    (``data.eval_fraction``), else to train; rows with a split keep it. Returns the frame and how many went to eval."""
    if frame.empty:
        return frame, 0
    unset = frame["split"].map(is_null).to_numpy(dtype=bool)
    keys = user_text(frame)
    to_eval = np.array([u and held_out_share(str(k)) < fraction for u, k in zip(unset, keys)], dtype=bool)
    frame = frame.copy()
    frame.loc[unset, "split"] = np.where(to_eval[unset], "eval", "train")
    return frame, int(to_eval.sum())


def _dedup_step(frames: dict[str, pd.DataFrame], cfg: DataConfig, ledger: _Ledger) -> dict[str, Any]:
    d = cfg.dedup
    summary: dict[str, Any] = {}
    for name in INPUTS:
        frame = frames[name]
        info: dict[str, Any] = {"exact_dropped": 0, "near_clusters": 0, "near_dropped": 0,
                                "contamination_dropped": 0, "clusters": []}
        for is_eval in (False, True):  # within each split
            part = frame[_is_eval(frame).to_numpy() == is_eval] if not frame.empty else frame
            if len(part) < 2:
                continue
            if d.exact:
                reasons = pd.Series([None] * len(frame), index=frame.index, dtype=object)
                for pos, first in exact_duplicate_of(part, name).items():
                    reasons[part.index[pos]] = ("exact_duplicate",
                                                f"same normalized text as id '{part.iloc[first]['id']}'")
                info["exact_dropped"] += int(reasons.notna().sum())
                frame = ledger.drop(frame, reasons, name, "dedup")
                part = part.loc[part.index.intersection(frame.index)]
            if d.near and len(part) >= 2:
                pairs, _ = near_duplicate_row_pairs(part, name, d)
                dup_of = near_duplicate_of(len(part), pairs)
                reasons = pd.Series([None] * len(frame), index=frame.index, dtype=object)
                groups: dict[int, list[int]] = {}
                for pos, keep in sorted(dup_of.items()):
                    groups.setdefault(keep, []).append(pos)
                    reasons[part.index[pos]] = ("near_duplicate", f"near-duplicate of id '{part.iloc[keep]['id']}'")
                for keep, rest in sorted(groups.items()):
                    if len(info["clusters"]) < _MAX_CLUSTERS_REPORTED:
                        info["clusters"].append({"split": "eval" if is_eval else "train",
                                                 "ids": [str(part.iloc[q]["id"]) for q in [keep, *rest]],
                                                 "example": str(part.iloc[keep]["prompt"])[:120]})
                info["near_clusters"] += len(groups)
                info["near_dropped"] += len(dup_of)
                frame = ledger.drop(frame, reasons, name, "dedup")
        frames[name] = frame
        summary[name] = info
    if d.cross_split:
        # An eval prompt that (near-)duplicates a prompt trained on anywhere (SFT, RM or PPO) is contamination.
        p = d.prompt
        params = {"shingle": p.shingle, "shingle_size": p.shingle_size, "num_perm": d.num_perm,
                  "threshold": p.threshold, "seed": d.seed, "lsh_weights": d.lsh_weights}
        train_prompts = sorted({q for f in frames.values() if not f.empty
                                for q in f.loc[~_is_eval(f).to_numpy(), "prompt"]})
        for name in INPUTS:
            frame = frames[name]
            ev = frame[_is_eval(frame).to_numpy()] if not frame.empty else frame
            if ev.empty or not train_prompts:
                continue
            hits = dedup.cross_split_contamination(train_prompts, list(ev["prompt"]), **params)
            reasons = pd.Series([None] * len(frame), index=frame.index, dtype=object)
            for pos in hits:
                reasons[ev.index[pos]] = ("contamination", "eval prompt near-duplicates a training prompt")
            summary[name]["contamination_dropped"] = len(hits)
            frames[name] = ledger.drop(frame, reasons, name, "dedup")
    return summary


def user_cap_by_prompt(frame: pd.DataFrame, cap: int | None) -> pd.Series:
    """Per-user cap counted in distinct prompts (InstructGPT: 200 prompts per user id): a
    prompt's several demonstrations or comparisons count once and go together."""
    reasons = pd.Series([None] * len(frame), index=frame.index, dtype=object)
    if cap is None or frame.empty:
        return reasons
    key = user_text(frame).map(dedup.normalize_text)  # what the user wrote
    first = ~pd.DataFrame({"u": frame["user_id"], "k": key}).duplicated()
    over = user_cap_reasons(frame.loc[first.to_numpy(), "user_id"], cap).dropna()
    if over.empty:
        return reasons
    over_keys = dict(zip(zip(frame.loc[over.index, "user_id"], key[over.index]), over))
    for idx, user, k in zip(frame.index, frame["user_id"], key):
        reason = over_keys.get((user, k))
        if reason is not None:
            reasons[idx] = reason
    return reasons


def _arrow_type(column: str) -> Any:
    import pyarrow as pa

    messages = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    return {
        "annotator_labels": pa.list_(pa.int64()),
        "margin": pa.float64(),
        "harmful": pa.bool_(),
        "messages": messages,
        "prompt_messages": messages,
    }.get(column, pa.string())


def _write_parquet(frame: pd.DataFrame, path: Path, columns: list[str]) -> None:
    """Write the curated rows with a fixed Arrow type per column (the same schema whatever the input).

    Validation admits only values of these types, so a failure here is a gap in the rules; it is
    still reported as one line naming the file, row and column, never a bare Arrow traceback.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = frame.reset_index(drop=True)
    arrays = []
    for column in columns:
        values = list(frame[column]) if column in frame else [None] * len(frame)
        values = [None if not isinstance(v, (list, dict)) and is_null(v) else v for v in values]
        if column in ("messages", "prompt_messages"):  # one struct type: role + content only
            values = [[{"role": m["role"], "content": m["content"]} for m in ms] if ms is not None else None
                      for ms in values]
        elif column == "margin":
            values = [float(v) if v is not None else None for v in values]
        typ = _arrow_type(column)
        try:
            arrays.append(pa.array(values, type=typ))
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            for i, v in enumerate(values):
                try:
                    pa.array([v], type=typ)
                except (pa.ArrowException, TypeError, ValueError, OverflowError):
                    where = location(str(frame.at[i, "_file"]), int(frame.at[i, "_row"])) if "_row" in frame else path
                    raise DataError(f"{where}: {column}: value {str(v)[:60]!r} cannot be written as {typ} "
                                    f"({str(exc).splitlines()[0]}); please report this validation gap") from exc
            raise DataError(f"{path}: {column}: cannot be written as {typ} ({exc})") from exc
    pq.write_table(pa.Table.from_arrays(arrays, names=columns), path)


def legacy_output(path: Path) -> list[str] | None:
    """An output of this stage written before the marker existed (its report.json is ours): its files."""
    try:
        data = json.loads((path / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not (isinstance(data, dict) and {"files", "totals", "balanced"} <= set(data)):
        return None
    return [name for name in OUTPUT_FILES if (path / name).is_file()]


def _reasons(counts: dict[str, int]) -> str:
    """``{"validate:chosen:is_string": 2, "import:invalid_json": 1}`` -> ``"2 chosen:is_string, 1 invalid_json"``."""
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{n} {key.split(':', 1)[1]}" for key, n in items)


def run_data_stage(
    cfg: DataConfig,
    out_dir: Path,
    tokenizer: Any = None,
    *,
    model_cache: Path | None = None,
    option: str = "data stage output",
) -> DataReport:
    """Import, validate and curate every input of ``cfg``; write the clean files and the report.

    ``tokenizer`` counts prompt tokens for the length bounds: a ``str -> int`` callable, a
    Hugging Face tokenizer, a :class:`rlhf_core.config.model.ModelConfig` (loaded through
    rlhf_core.models with ``model_cache``), or None (whitespace words). Raises DataError
    (one line per problem) when an input is unusable as a whole (missing, empty, unknown
    layout, no usable row), when curation leaves an input empty, or when ``out_dir`` holds
    files this stage did not write (``option`` names ``out_dir`` in that message, e.g. ``--out``).
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    claim_dir(out_dir, WRITTEN_BY, option, legacy_output)  # before any work: refuse a directory of other files
    report = DataReport()
    ledger = _Ledger()
    timings: dict[str, float] = {}

    def timed(step: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        result = fn()
        timings[step] = timings.get(step, 0.0) + time.perf_counter() - t0
        return result

    frames = timed("import", lambda: _load_inputs(cfg, ledger, report))
    if cfg.eval_fraction > 0:
        for name in INPUTS:
            frames[name], report.held_out[name] = hold_out(frames[name], cfg.eval_fraction)
    before = {name: topic_mix(frames[name]["topic"]) for name in INPUTS}

    # 2. validation
    for name in INPUTS:
        kind = "preferences" if name == "preferences" else KIND_OF_INPUT[name]
        frame, quarantined = timed("validate", lambda: validate_frame(frames[name], kind,  # type: ignore[arg-type]
                                                                      max_text_chars=cfg.max_text_chars))
        ledger.quarantine(quarantined, name)
        frames[name] = frame

    errors = _unusable_files(report, frames, ledger, out_dir)
    if errors:  # stop: the report and the quarantine say why; no curated files
        return _finish(report, frames, ledger, out_dir, option, start, timings, errors=errors)

    # 3. prompt filters: spam, length, language
    pf = cfg.prompt_filter
    count = timed("tokenizer", lambda: make_token_counter(tokenizer, model_cache=model_cache))
    for name in pf.apply_to:  # each judges the user's turns, never the assistant's (user_text)
        frames[name] = timed("filter", lambda: ledger.drop(frames[name], spam_reasons(user_text(frames[name]), pf),
                                                           name, "filter"))
        frames[name] = timed("filter", lambda: ledger.drop(
            frames[name], length_reasons(user_text(frames[name]), count, pf.min_tokens, pf.max_tokens), name, "filter"))
        frames[name] = timed("language", lambda: ledger.drop(
            frames[name], language_reasons(user_text(frames[name]), pf, num_proc=cfg.num_proc), name, "filter"))

    # 4. refusals
    for name in ("demonstrations", "preferences"):
        reasons, stats = timed("refusal", lambda: refusal_reasons(frames[name], name, cfg.refusal))
        frames[name] = ledger.drop(frames[name], reasons, name, "refusal")
        report.refusals[name] = stats.to_json()

    # 5-6. dedup within split, then eval-vs-train contamination
    report.dedup = timed("dedup", lambda: _dedup_step(frames, cfg, ledger))

    def cap(name: str) -> None:
        frames[name] = ledger.drop(frames[name], user_cap_by_prompt(frames[name], pf.max_prompts_per_user),
                                   name, "filter")

    capped = pf.apply_to if pf.user_cap_inputs is None else pf.user_cap_inputs
    # 7. per-user cap of the labelled data (before coverage: the preference prompts define the support)
    for name in capped:
        if name != "rl_prompts":
            cap(name)

    # 8. coverage of RL prompts by the preference prompts
    coverage = timed("coverage", lambda: _coverage_step(frames, cfg, ledger))

    # 9. per-user cap of RL prompts, among the prompts that passed every other step
    if "rl_prompts" in capped:
        cap("rl_prompts")
    report.coverage = coverage(frames["rl_prompts"].index)  # what PPO is left with, after the cap

    report.topic_mix = {name: {"before": before[name], "after": topic_mix(frames[name]["topic"])} for name in INPUTS}
    errors = [f"{name}: no rows left after curation: all {n} valid rows dropped ({_reasons(counts)}); "
              f"see {out_dir / 'dropped.jsonl'}"
              for name, n, counts in _emptied_inputs(cfg, report, frames, ledger)]
    return _finish(report, frames, ledger, out_dir, option, start, timings, errors=errors)


def _unusable_files(report: DataReport, frames: dict[str, pd.DataFrame], ledger: _Ledger, out_dir: Path) -> list[str]:
    """One line per input file that gave no usable row: every row quarantined at import or validation."""
    errors = []
    for f in report.files:
        frame = frames[f.input]
        usable = int((frame["_file"] == f.file).sum()) if not frame.empty else 0
        if usable == 0:
            counts = ledger.per_file.get((f.input, f.file), {})
            errors.append(f"{f.file}: no usable rows for {f.input}: all {f.rows_in} rows quarantined "
                          f"({_reasons(counts)}); see {out_dir / 'quarantine.jsonl'}")
    return errors


def _emptied_inputs(
    cfg: DataConfig, report: DataReport, frames: dict[str, pd.DataFrame], ledger: _Ledger
) -> list[tuple[str, int, dict[str, int]]]:
    """(input, valid rows, drops by reason) for each configured input that curation left empty."""
    out = []
    for name in INPUTS:
        if not getattr(cfg, name) or not frames[name].empty:
            continue
        counts: dict[str, int] = {}
        for f in report.files:
            if f.input == name:
                for key, n in ledger.per_file.get((name, f.file), {}).items():
                    if not key.startswith(("import:", "validate:")):
                        counts[key] = counts.get(key, 0) + n
        out.append((name, sum(counts.values()), counts))
    return out


def _finish(
    report: DataReport, frames: dict[str, pd.DataFrame], ledger: _Ledger, out_dir: Path, option: str,
    start: float, timings: dict[str, float], *, errors: list[str],
) -> DataReport:
    """Write every output into a staging directory, publish it to ``out_dir`` in one go, and raise
    DataError with ``errors`` (one line each) if there are any: then only the report, the quarantine
    and dropped.jsonl are published, no curated files."""
    staging = staging_dir(out_dir, option)
    try:
        if not errors:
            rl = frames["rl_prompts"]
            is_eval = _is_eval(rl).to_numpy() if not rl.empty else np.zeros(0, dtype=bool)
            outputs = {
                "demonstrations": (frames["demonstrations"], "demonstrations"),
                "preferences": (frames["preferences"], "preferences"),
                "rl_prompts": (rl[~is_eval], "prompts"),
                "eval_prompts": (rl[is_eval], "prompts"),
            }
            t0 = time.perf_counter()
            for out_name, (frame, kind) in outputs.items():
                _write_parquet(frame, staging / f"{out_name}.parquet", CANONICAL_COLUMNS[kind])
                report.outputs[out_name] = str(out_dir / f"{out_name}.parquet")
            timings["write"] = timings.get("write", 0.0) + time.perf_counter() - t0
        write_quarantine(ledger.quarantined, staging / "quarantine.jsonl")
        with (staging / "dropped.jsonl").open("w", encoding="utf-8") as fh:
            for row in ledger.dropped:
                fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        report.outputs.update({"quarantine": str(out_dir / "quarantine.jsonl"),
                               "dropped": str(out_dir / "dropped.jsonl")})
        for f in report.files:
            f.dropped = dict(sorted(ledger.per_file.get((f.input, f.file), {}).items()))
            frame = frames[f.input]
            f.rows_kept = int((frame["_file"] == f.file).sum()) if not frame.empty else 0
        report.errors = list(errors)
        if not report.balanced and not errors:  # a bug here, not bad data: never hand on a report that does not add up
            bad = next(f for f in report.files if not f.balanced)
            errors = [f"{bad.file}: data report does not balance ({bad.rows_in} in != {bad.rows_kept} kept + "
                      f"{sum(bad.dropped.values())} dropped)"]
            report.errors = errors
            report.outputs = {k: v for k, v in report.outputs.items() if k in ("quarantine", "dropped")}
            for name in ("demonstrations", "preferences", "rl_prompts", "eval_prompts"):
                (staging / f"{name}.parquet").unlink(missing_ok=True)
        report.timings = {k: round(v, 4) for k, v in timings.items()}
        report.seconds = time.perf_counter() - start
        report.outputs.update({"report": str(out_dir / "report.json"), "report_md": str(out_dir / "report.md")})
        report.write(staging)
        publish_dir(staging, out_dir, WRITTEN_BY, option, legacy_output)
    except OSError as exc:  # a full disk, a read-only file system: one line, and nothing half-written
        raise DataError(f"{option} {out_dir}: cannot write the outputs ({exc.strerror or exc})") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already once published
    if errors:
        raise DataError("\n".join(errors))
    return report


def _coverage_step(
    frames: dict[str, pd.DataFrame], cfg: DataConfig, ledger: _Ledger
) -> Callable[[pd.Index], dict[str, Any]]:
    """Drop the RL prompts outside the support; return the summary as a function of the RL rows finally kept."""
    pf = cfg.prompt_filter
    rl, prefs = frames["rl_prompts"], frames["preferences"]
    if pf.coverage_method == "off":
        return lambda _kept: {"skipped": "prompt_filter.coverage_method is 'off'"}
    if prefs.empty:
        return lambda _kept: {"skipped": "no preference prompts left to define the support"}
    if rl.empty:
        return lambda _kept: {"skipped": "no RL prompts left"}
    ref = prefs.drop_duplicates("prompt")  # rankings expand to many pairs per prompt
    cov = compute_coverage(list(user_text(rl)), list(user_text(ref)), list(ref["topic"]), method=pf.coverage_method,
                           threshold=pf.effective_coverage_threshold, n_topics=pf.coverage_topics)
    frames["rl_prompts"] = ledger.drop(rl, cov.reasons(rl.index), "rl_prompts", "filter")
    # "Reached" counts the RL prompts that train PPO: kept (inside) and in the train split.
    train = ~_is_eval(rl).to_numpy()
    return lambda kept: cov.summary(kept=cov.inside & train & rl.index.isin(kept))
