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
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data_checks import dedup
from data_checks.config import DataConfig, DedupConfig
from data_checks.importers import Quarantined, clip_record, load_dataset_file
from data_checks.prompt_filter import (
    compute_coverage,
    language_reasons,
    length_reasons,
    make_token_counter,
    spam_reasons,
    topic_mix,
    user_cap_reasons,
)
from data_checks.refusal import refusal_reasons
from data_checks.report import DataReport, FileReport
from data_checks.schemas import CANONICAL_COLUMNS
from data_checks.validate import validate_frame, write_quarantine
from rlhf_core.errors import DataError

INPUTS = ("demonstrations", "preferences", "rl_prompts")
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
        self.per_file: dict[str, dict[str, int]] = {}

    def _count(self, file: str, key: str) -> None:
        counts = self.per_file.setdefault(file, {})
        counts[key] = counts.get(key, 0) + 1

    def quarantine(self, rows: list[Quarantined], name: str) -> None:
        for q in rows:
            self.quarantined.append(q)
            key = f"{q.stage}:{q.rule}"
            self._count(q.file, key)
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
            self._count(file, f"{stage}:{rule}")
            self.dropped.append({"input": name, "file": file, "row": line, "id": row["id"], "stage": stage,
                                 "rule": rule, "reason": f"{file}:{line}: {rule}: {detail}",
                                 "record": clip_record(row.drop(["_file", "_row"]).to_dict())})
        return frame[~mask.to_numpy()]


def _id_of(record: Any) -> Any:
    return record.get("id") if isinstance(record, dict) else None


def _load_inputs(cfg: DataConfig, ledger: _Ledger, report: DataReport) -> dict[str, pd.DataFrame]:
    frames: dict[str, pd.DataFrame] = {}
    for name in INPUTS:
        kind = KIND_OF_INPUT[name]
        parts = []
        for path in getattr(cfg, name):
            frame, quarantined = load_dataset_file(path, kind, split=cfg.dataset_split)  # type: ignore[arg-type]
            files = set(frame["_file"]) | {q.file for q in quarantined} or {str(path)}
            for file in sorted(files):
                n = int((frame["_file"] == file).sum()) + sum(q.file == file for q in quarantined)
                report.files.append(FileReport(file=file, input=name, rows_in=n))
            ledger.quarantine(quarantined, name)
            parts.append(frame)
        columns = CANONICAL_COLUMNS["preferences" if name == "preferences" else kind] + ["_file", "_row"]
        parts = [p for p in parts if not p.empty]
        frames[name] = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns, dtype=object)
    return frames


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
    key = frame["prompt"].map(dedup.normalize_text)
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


def _write_parquet(frame: pd.DataFrame, path: Path, columns: list[str]) -> None:
    out = frame.drop(columns=["_file", "_row"], errors="ignore").reindex(columns=columns).reset_index(drop=True)
    if "messages" in out:  # one struct type for pyarrow: role + content only
        out["messages"] = out["messages"].map(
            lambda ms: [{"role": str(m["role"]), "content": str(m["content"])} for m in ms] if ms is not None else None)
    if "harmful" in out:
        out["harmful"] = out["harmful"].astype(bool)
    out.to_parquet(path, index=False)


def run_data_stage(
    cfg: DataConfig,
    out_dir: Path,
    tokenizer: Any = None,
    *,
    model_cache: Path | None = None,
) -> DataReport:
    """Import, validate and curate every input of ``cfg``; write the clean files and the report.

    ``tokenizer`` counts prompt tokens for the length bounds: a ``str -> int`` callable, a
    Hugging Face tokenizer, a :class:`rlhf_core.config.ModelConfig` (loaded through
    rlhf_core.models with ``model_cache``), or None (whitespace words). Raises DataError
    (one line) when an input is unusable as a whole (missing, empty, unknown layout).
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = DataReport()
    ledger = _Ledger()
    timings: dict[str, float] = {}

    def timed(step: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        result = fn()
        timings[step] = timings.get(step, 0.0) + time.perf_counter() - t0
        return result

    frames = timed("import", lambda: _load_inputs(cfg, ledger, report))
    before = {name: topic_mix(frames[name]["topic"]) for name in INPUTS}

    # 2. validation
    for name in INPUTS:
        kind = "preferences" if name == "preferences" else KIND_OF_INPUT[name]
        frame, quarantined = timed("validate", lambda: validate_frame(frames[name], kind,  # type: ignore[arg-type]
                                                                      max_text_chars=cfg.max_text_chars))
        ledger.quarantine(quarantined, name)
        frames[name] = frame

    # 3. prompt filters: spam, length, language
    pf = cfg.prompt_filter
    count = timed("tokenizer", lambda: make_token_counter(tokenizer, model_cache=model_cache))
    for name in pf.apply_to:
        frames[name] = timed("filter", lambda: ledger.drop(frames[name], spam_reasons(frames[name]["prompt"], pf),
                                                           name, "filter"))
        frames[name] = timed("filter", lambda: ledger.drop(
            frames[name], length_reasons(frames[name]["prompt"], count, pf.min_tokens, pf.max_tokens), name, "filter"))
        frames[name] = timed("language", lambda: ledger.drop(
            frames[name], language_reasons(frames[name]["prompt"], pf, num_proc=cfg.num_proc), name, "filter"))

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

    # outputs
    rl = frames["rl_prompts"]
    is_eval = _is_eval(rl).to_numpy() if not rl.empty else np.zeros(0, dtype=bool)
    outputs = {
        "demonstrations": (frames["demonstrations"], "demonstrations"),
        "preferences": (frames["preferences"], "preferences"),
        "rl_prompts": (rl[~is_eval], "prompts"),
        "eval_prompts": (rl[is_eval], "prompts"),
    }
    for out_name, (frame, kind) in outputs.items():
        path = out_dir / f"{out_name}.parquet"
        timed("write", lambda: _write_parquet(frame, path, CANONICAL_COLUMNS[kind]))
        report.outputs[out_name] = str(path)
    write_quarantine(ledger.quarantined, out_dir / "quarantine.jsonl")
    with (out_dir / "dropped.jsonl").open("w", encoding="utf-8") as fh:
        for row in ledger.dropped:
            fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    report.outputs.update({"quarantine": str(out_dir / "quarantine.jsonl"), "dropped": str(out_dir / "dropped.jsonl")})

    for f in report.files:
        f.dropped = dict(sorted(ledger.per_file.get(f.file, {}).items()))
        frame = frames[f.input]
        f.rows_kept = int((frame["_file"] == f.file).sum()) if not frame.empty else 0
    report.topic_mix = {name: {"before": before[name], "after": topic_mix(frames[name]["topic"])} for name in INPUTS}
    report.timings = {k: round(v, 4) for k, v in timings.items()}
    report.seconds = time.perf_counter() - start
    report.outputs.update({"report": str(out_dir / "report.json"), "report_md": str(out_dir / "report.md")})
    report.write(out_dir)
    if not report.balanced:  # a bug here, not bad data: never hand on a report that does not add up
        bad = next(f for f in report.files if not f.balanced)
        raise DataError(f"{bad.file}: data report does not balance ({bad.rows_in} in != {bad.rows_kept} kept + "
                        f"{sum(bad.dropped.values())} dropped)")
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
    cov = compute_coverage(list(rl["prompt"]), list(ref["prompt"]), list(ref["topic"]), method=pf.coverage_method,
                           threshold=pf.effective_coverage_threshold, n_topics=pf.coverage_topics)
    frames["rl_prompts"] = ledger.drop(rl, cov.reasons(rl.index), "rl_prompts", "filter")
    # "Reached" counts the RL prompts that train PPO: kept (inside) and in the train split.
    train = ~_is_eval(rl).to_numpy()
    return lambda kept: cov.summary(kept=cov.inside & train & rl.index.isin(kept))
