"""An `rlhf iterate` round's labelling stage: the champion's own replies out, validated preference rows back.

1. :func:`fresh_prompts`: ``iterate.prompts_per_round`` curated RL prompts (inside the preference
   support: the data stage's coverage filter made them) that no earlier round labelled.
2. The champion samples ``iterate.replies_per_prompt`` replies to each (the PPO stage's sampler,
   temperature and length); :func:`rlhf_core.labeling.make_tasks` pairs them.
3. The labeller gets the batch; :func:`wait_for_labels` polls its progress until every task has a
   label or ``iterate.label_timeout_s`` passes (then :class:`LabelTimeout`: the labels given stay
   with the labeller, and a resumed round waits again).
4. The labels become canonical preference rows (round, policy version, agreement), checked by the
   preference schema (failing rows quarantined with their rule) and the Great Expectations suite.

Files in `<run>/label/`: ``tasks.jsonl`` (written once: a resumed round sends the same tasks),
``labels.jsonl``, ``preferences.parquet`` (this round's rows), ``quarantine.jsonl``, ``report.json``.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlhf_core.config.pipeline import PipelineConfig
from rlhf_core.errors import DataError, UserError
from rlhf_core.labeling import ONLINE_SOURCE, Label, Labeler, LabelTask, Progress, inter_annotator_agreement, make_tasks, to_preferences
from tasks.artifacts import RunDir
from tasks.stages.common import StageOutputs, StageTracker

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

STAGE = "label"


@dataclass(frozen=True)
class Champion:
    """The policy a round starts from, and what trained it."""

    policy_dir: str
    reward_dir: str
    source_run: str  # the run directory (name) that produced it
    version: str  # e.g. "rlhf-demo-policy v3", or "run <id>" when not from the registry


class LabelTimeout(UserError):
    """The batch was not fully labelled in time; what was labelled is kept by the labeller.
    ``resume_run``: the round to resume (set once the flow knows it)."""

    def __init__(self, message: str, resume_run: str | None = None) -> None:
        super().__init__(message)
        self.resume_run = resume_run

    def __reduce__(self):  # Prefect may copy an exception across a flow boundary: keep ``resume_run``
        return (type(self), (str(self), self.resume_run))


def fresh_prompts(rl_prompts: pd.DataFrame, preferences: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """Up to ``n`` RL prompt rows whose prompt no online (earlier-round) preference row has, drawn with ``seed``."""
    used: set[str] = set()
    if "source" in preferences:
        used = set(preferences.loc[preferences["source"] == ONLINE_SOURCE, "prompt"])
    pool = rl_prompts[~rl_prompts["prompt"].isin(used)]
    if pool.empty:
        raise DataError(f"no fresh RL prompts left: all {len(rl_prompts)} curated RL prompts were labelled in earlier rounds")
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    return pool.iloc[sorted(order[:n])].reset_index(drop=True)


def sample_replies(cfg: PipelineConfig, champion: Champion, sft_dir: str, prompts: pd.DataFrame, seed: int) -> list[list[str]]:
    """``iterate.replies_per_prompt`` replies of the champion to each prompt, with PPO's sampling settings."""
    from rlhf_core.batching import resolve_format
    from rlhf_core.best_of_n import sample_responses, tokenize_prompts
    from rlhf_core.models import load_tokenizer
    from rlhf_core.stage_io import load_stage_policy

    tokenizer = load_tokenizer(cfg.model, cfg.model_cache)
    policy = load_stage_policy(champion.policy_dir, model=cfg.model, cache_dir=cfg.model_cache, tokenizer=tokenizer,
                               sft_dir=sft_dir, lora=cfg.ppo.optim.lora)
    rows = prompts.to_dict(orient="records")
    ids = tokenize_prompts(policy, tokenizer, rows, fmt=resolve_format(tokenizer, cfg.ppo.prompt_format),
                           max_new_tokens=cfg.ppo.max_new_tokens, source="RL prompts")
    samples = sample_responses(policy, tokenizer, ids, n=cfg.iterate.replies_per_prompt,
                               max_new_tokens=cfg.ppo.max_new_tokens, temperature=cfg.ppo.temperature, seed=seed)
    return samples.grouped()


def trainable_replies(cfg: PipelineConfig, prompts: pd.DataFrame, replies: list[list[str]]) -> tuple[list[list[str]], int]:
    """The replies with their edge whitespace trimmed (not content: a person does not see it), less
    those the reward model cannot be trained on (the chat template re-tokenises the prompt when the
    reply is added): checked before anyone labels them, not after. Returns (kept, how many dropped)."""
    from rlhf_core.batching import prompt_response_ids, resolve_format
    from rlhf_core.conversation import row_context
    from rlhf_core.models import load_tokenizer

    tokenizer = load_tokenizer(cfg.model, cfg.model_cache)
    fmt = resolve_format(tokenizer, cfg.reward.prompt_format)
    kept, dropped = [], 0
    for i, (row, texts) in enumerate(zip(prompts.to_dict(orient="records"), replies, strict=True)):
        context = row_context(row, f"rl_prompts[{i}]")
        ok = []
        for text in (t.strip() for t in texts):
            try:
                prompt_response_ids(tokenizer, row["prompt"], text, fmt, context=context)
                ok.append(text)
            except DataError:
                dropped += 1
        kept.append(ok)
    return kept, dropped


def location(labeler: Labeler, batch: str) -> str | None:
    """Where people label ``batch``: the Label Studio project's page, the file labeller's labels.jsonl."""
    link = getattr(labeler, "link", None)
    if callable(link):
        return link(batch)
    labels_path = getattr(labeler, "labels_path", None)
    return str(labels_path(batch)) if callable(labels_path) else None


def wait_for_labels(labeler: Labeler, batch: str, timeout_s: float, poll_s: float,
                    on_progress: Callable[[Progress], None], *, clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep) -> Progress:
    """Poll ``labeler.progress(batch)`` until complete; :class:`LabelTimeout` after ``timeout_s``."""
    deadline = clock() + timeout_s
    last = None
    while True:
        progress = labeler.progress(batch)
        if progress != last:
            on_progress(progress)
            last = progress
        if progress.complete:
            return progress
        if clock() >= deadline:
            where = location(labeler, batch)
            raise LabelTimeout(
                (f"{where}: " if where else "") +
                f"batch {batch!r} ({labeler.name} labeller): {progress.labelled_tasks} of {progress.total_tasks} tasks "
                f"labelled after {timeout_s:g} s (iterate.label_timeout_s); the {progress.labels} label(s) given are kept: "
                "resume the round to wait again"
            )
        sleep(min(poll_s, max(0.0, deadline - clock())))


def round_tasks(cfg: PipelineConfig, run: RunDir, source: RunDir, champion: Champion, round_no: int) -> tuple[list[LabelTask], dict[str, Any]]:
    """This round's comparison tasks: read back from ``tasks.jsonl`` when a resumed round wrote them."""
    import pandas as pd

    path = run.stage(STAGE) / "tasks.jsonl"
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()
        return [LabelTask.from_dict(json.loads(line)) for line in lines if line.strip()], {"resumed": True}
    data = source.require("data")
    seed = cfg.seed * 1000 + round_no
    prompts = fresh_prompts(pd.read_parquet(data["rl_prompts"]), pd.read_parquet(data["preferences"]),
                            cfg.iterate.prompts_per_round, seed)
    replies, unrenderable = trainable_replies(cfg, prompts, sample_replies(cfg, champion, source.require("sft")["model_dir"],
                                                                           prompts, seed))
    tasks, accounting = make_tasks(prompts.to_dict(orient="records"), replies, round=round_no,
                                   policy_version=champion.version, pairs_per_prompt=cfg.iterate.pairs_per_prompt, seed=seed)
    accounting["replies"] += unrenderable
    accounting["skipped_replies"]["not_trainable"] = unrenderable
    if not tasks:
        raise DataError(f"round {round_no}: the champion's {accounting['replies']} replies gave no pair to label "
                        f"(skipped: {accounting['skipped_replies']})")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(t.to_dict(), ensure_ascii=False) + "\n" for t in tasks), encoding="utf-8")
    tmp.replace(path)
    return tasks, accounting


def validated_rows(frame: pd.DataFrame, labels_path: Path, out_dir: Path) -> tuple[pd.DataFrame, int]:
    """This round's preference rows that pass the preference schema; the others go to ``quarantine.jsonl``."""
    from data_checks.validate import validate_frame, write_quarantine

    framed = frame.assign(_file=str(labels_path), _row=range(1, len(frame) + 1))
    valid, quarantined = validate_frame(framed, "preferences")
    write_quarantine(quarantined, out_dir / "quarantine.jsonl")
    return valid.drop(columns=["_file", "_row"]), len(quarantined)


def check_suite(path: Path) -> None:
    """The Great Expectations preference suite on ``path``; DataError naming the first failed expectation."""
    from data_checks.check import check_files

    result = check_files([path], "preferences")
    if not result.success:
        check = result.files[0]
        first = check.error or (check.failures[0] if check.failures else "failed")
        raise DataError(f"{path}: the preference suite fails: {first}")


def run(cfg: PipelineConfig, run: RunDir, source: RunDir, champion: Champion, round_no: int, labeler: Labeler,
        tracker: StageTracker, *, on_progress: Callable[[Progress], None], on_submitted: Callable[[str], None]) -> StageOutputs:
    """The round's labelling stage (see the module docstring); outputs ``preferences``, ``labels``, ``tasks``, ``report``."""
    import pandas as pd

    out = run.stage(STAGE)
    tasks, accounting = round_tasks(cfg, run, source, champion, round_no)
    batch = run.run_id
    labeler.submit(tasks, batch)
    on_submitted(batch)
    wait_for_labels(labeler, batch, cfg.iterate.label_timeout_s, cfg.iterate.poll_interval_s, on_progress)
    labels = labeler.collect(batch)
    labels_path = out / "labels.jsonl"
    labels_path.write_text("".join(json.dumps(lab.to_dict(), ensure_ascii=False) + "\n" for lab in labels), encoding="utf-8")
    frame, made = to_preferences(tasks, labels)
    rows, n_bad = validated_rows(frame, labels_path, out)
    if rows.empty:
        raise DataError(f"{labels_path}: batch {batch!r} gave no usable preference row "
                        f"({made['dropped']}, {n_bad} quarantined): nothing to train on this round")
    prefs = out / "preferences.parquet"
    rows.to_parquet(prefs, index=False)
    report = label_report(tasks, labels, made, accounting, n_bad, len(rows), labeler.name, batch)
    (out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    tracker.log_metrics(report_metrics(report), step=round_no)
    for path in (out / "tasks.jsonl", labels_path, out / "report.json"):
        tracker.log_artifact(path)
    tracker.log_dataset(rows, prefs, "online_preferences", "training")
    files = {"tasks": str(out / "tasks.jsonl"), "labels": str(labels_path), "preferences": str(prefs),
             "report": str(out / "report.json")}
    return StageOutputs(files, metrics=report_metrics(report), report=label_markdown(report))


def label_report(tasks: list[LabelTask], labels: list[Label], made: dict[str, Any], accounting: dict[str, Any],
                 quarantined: int, rows: int, labeler: str, batch: str) -> dict[str, Any]:
    """What the round sent, what came back, and where every task that gave no row went."""
    return {
        "labeler": labeler, "batch": batch, "tasks": len(tasks), "labels": len(labels),
        "annotators": len({lab.annotator for lab in labels}),
        "inter_annotator_agreement": inter_annotator_agreement(labels),
        "rows": rows, "dropped": {**made["dropped"], "quarantined": quarantined}, "tie_votes": made["tie_votes"],
        "sampling": accounting,
    }


def report_metrics(report: dict[str, Any]) -> dict[str, float]:
    metrics = {"label/tasks": report["tasks"], "label/labels": report["labels"], "label/rows": report["rows"],
               "label/annotators": report["annotators"]}
    if report["inter_annotator_agreement"] is not None:
        metrics["label/inter_annotator_agreement"] = report["inter_annotator_agreement"]
    metrics.update({f"label/dropped_{reason}": n for reason, n in report["dropped"].items()})
    return {k: float(v) for k, v in metrics.items()}


def label_markdown(report: dict[str, Any]) -> str:
    agreement = report["inter_annotator_agreement"]
    dropped = ", ".join(f"{n} {reason}" for reason, n in report["dropped"].items() if n) or "none"
    return (f"Labelled by **{report['labeler']}** (batch `{report['batch']}`): {report['tasks']} tasks, "
            f"{report['labels']} labels from {report['annotators']} annotator(s); inter-annotator agreement "
            f"{'n/a' if agreement is None else f'{agreement:.3f}'} (people agree ~0.73). "
            f"{report['rows']} preference rows added; tasks without a row: {dropped}.")


def link_round_inputs(run: RunDir, source: RunDir) -> dict[str, str]:
    """The round's data and SFT stages: the source run's curated files and SFT model, with the
    preference pairs grown by this round's labelled rows (checked whole by the preference suite)."""
    import pandas as pd

    data = dict(source.require("data"))
    old = pd.read_parquet(data["preferences"])
    new = pd.read_parquet(run.require(STAGE)["preferences"])
    combined = run.stage("data") / "preferences.parquet"
    pd.concat([old, new], ignore_index=True).to_parquet(combined, index=False)
    check_suite(combined)
    data["preferences"] = str(combined)
    run.record_outputs("sft", source.require("sft"))
    return run.record_outputs("data", data)
