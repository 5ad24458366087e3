"""The headline figures: what a person compares between pipeline runs, shown first.

The reward and eval stages log many metrics to their own MLflow runs; the handful below are also
put on the pipeline's parent MLflow run (so the runs table compares pipelines at a glance) and in
one Markdown summary on the parent Prefect flow run. They are read back from the files the stages
write (``reward/agreement.json`` and ``eval/eval.json`` keep exactly the values logged), never
recomputed, so a resumed run whose stages came from the cache summarises the same numbers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rlhf_core.eval_report import NO_GOLD_NOTE
from tasks import tracking
from tasks.artifacts import STAGES, RunDir

if TYPE_CHECKING:  # tasks.context imports this module (the agreement table): annotations only
    from tasks.context import StageContext

WALL_SECONDS = "pipeline/wall_seconds"


@dataclass(frozen=True)
class Headline:
    metric: str  # the stage's own MLflow metric name (also its name on the parent run)
    label: str  # "{policy}" stands for the evaluated policy (ppo, or dpo without PPO)
    fmt: str = "{:.3f}"
    ci: bool = False  # the stage also logged <metric>_ci_low / _ci_high

    def text(self, metrics: Mapping[str, float]) -> str:
        value = metrics.get(self.metric)
        if value is None:
            return "–"
        shown = self.fmt.format(value)
        low, high = metrics.get(f"{self.metric}_ci_low"), metrics.get(f"{self.metric}_ci_high")
        if self.ci and low is not None and high is not None:
            shown += f" [{self.fmt.format(low)}, {self.fmt.format(high)}]"
        return shown


HEADLINES = (
    Headline("rm/agreement_majority", "reward model agrees with the annotators' majority", ci=True),
    Headline("rm/agreement_gold", "reward model agrees with the gold scorer", ci=True),
    Headline("rm/agreement_ceiling", "annotators' ceiling (one annotator vs the others' majority)", ci=True),
    Headline("rm/agreement_majority_loo", "reward model on the ceiling's footing (leave-one-out majority)", ci=True),
    Headline("rm/ceiling_gap", "gap to the ceiling (ceiling − leave-one-out agreement)"),
    Headline("eval/gold_win_rate_vs_sft", "gold win rate, {policy} vs SFT", ci=True),
    Headline("eval/gold_delta", "gold score Δ, {policy} − SFT", "{:+.3f}", ci=True),
    Headline("eval/kl_to_ref", "KL of {policy} to the SFT model (nats)", "{:.2f}"),
    Headline("eval/rm_gold_agreement_on_policy", "reward model vs gold on pairs of SFT samples"),
    Headline(WALL_SECONDS, "wall time (s)", "{:.0f}"),
)
# Real data has no gold scorer (eval.gold false): what it allows, the reward model's held-out human
# agreement beside what length alone earns on the same pairs, then PPO against SFT.
NO_GOLD_HEADLINES = (
    Headline("rm/agreement_majority", "reward model agrees with the human choices (held-out pairs)", ci=True),
    Headline("eval/prefer_shorter_held_out", "\"prefer the shorter reply\" on the same pairs", ci=True),
    Headline("eval/rm_delta", "reward-model score Δ, {policy} − SFT (what PPO optimised)", "{:+.3f}", ci=True),
    Headline("eval/rm_win_rate_vs_sft", "reward-model win rate, {policy} vs SFT", ci=True),
    Headline("eval/kl_to_ref", "KL of {policy} to the SFT model (nats)", "{:.2f}", ci=True),
    Headline("eval/refusal_rate", "{policy} refuses", "{:.2f}", ci=True),
    Headline("eval/sft/refusal_rate", "SFT refuses", "{:.2f}"),
    Headline("eval/length", "{policy} reply tokens", "{:.1f}", ci=True),
    Headline("eval/sft/length", "SFT reply tokens", "{:.1f}"),
    Headline("eval/finished_rate", "{policy} replies finished (EOS within max_new_tokens)", "{:.2f}", ci=True),
    Headline("eval/sft/finished_rate", "SFT replies finished", "{:.2f}"),
    Headline(WALL_SECONDS, "wall time (s)", "{:.0f}"),
)


def headlines(gold: bool) -> tuple[Headline, ...]:
    """The headline figures of a run with a gold scorer (the demo) or without one (real data)."""
    return HEADLINES if gold else NO_GOLD_HEADLINES


def headline_metrics(stage_metrics: Mapping[str, float], gold: bool = True) -> dict[str, float]:
    """The headline metrics (with the intervals of those that have one) found in ``stage_metrics``."""
    out: dict[str, float] = {}
    for headline in headlines(gold):
        names = [headline.metric]
        if headline.ci:
            names += [f"{headline.metric}_ci_low", f"{headline.metric}_ci_high"]
        for name in names:
            value = stage_metrics.get(name)
            if value is not None and math.isfinite(value):
                out[name] = float(value)
    return out


@dataclass
class PipelineSummary:
    metrics: dict[str, float]
    policy: str = "ppo"  # the evaluated policy the eval/... names describe
    stage_links: dict[str, str] = field(default_factory=dict)  # stage -> Markdown link to its MLflow run
    parent_link: str = ""
    runs_table: str = ""  # URL of the experiment's runs table
    note: str = ""  # what must run for the links to open
    registered: list[str] = field(default_factory=list)  # registered model names this run adds versions to
    gold: bool = True  # False: no gold scorer for this data (eval.gold false)

    @property
    def tags(self) -> dict[str, str]:
        """Tags for the parent MLflow run: without a gold scorer, its description says so."""
        return {} if self.gold else {"eval.gold_scorer": "none", "mlflow.note.content": NO_GOLD_NOTE}


def read_stage_metrics(run: RunDir) -> tuple[dict[str, float], str]:
    """What the reward and eval stages of ``run`` logged (from their output files); and the evaluated policy.

    The SFT model's own point estimates come from the comparison table as ``eval/sft/<name>``, as the
    eval stage logged them."""
    metrics: dict[str, float] = {}
    policy = "ppo"
    agreement = run.path / "reward" / "agreement.json"
    if agreement.is_file():
        metrics.update(_numbers(json.loads(agreement.read_text(encoding="utf-8")).get("metrics")))
    evaluation = run.path / "eval" / "eval.json"
    if evaluation.is_file():
        report = json.loads(evaluation.read_text(encoding="utf-8"))
        metrics.update(_numbers(report.get("metrics")))
        sft = next((row for row in report.get("table", []) if row.get("method") == "sft"), {})
        metrics.update(_numbers({f"eval/sft/{k}": v for k, v in sft.items() if not k.endswith(("_ci_low", "_ci_high"))}))
        policy = report.get("primary") or policy
    return metrics, policy


def _numbers(values: object) -> dict[str, float]:
    if not isinstance(values, dict):
        return {}
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def pipeline_summary(ctx: StageContext, wall_seconds: float, *, gold: bool = True) -> PipelineSummary:
    """The headline figures of the run ``ctx`` belongs to, with links to its MLflow runs (when tracked).

    ``gold``: the config's ``eval.gold`` (False: real data, :data:`NO_GOLD_HEADLINES`)."""
    stage_metrics, policy = read_stage_metrics(ctx.run)
    summary = PipelineSummary(headline_metrics({**stage_metrics, WALL_SECONDS: wall_seconds}, gold), policy, gold=gold)
    if not ctx.tracking_enabled:
        return summary
    ids = tracking.stage_run_ids(ctx.parent_run_id, ctx.experiment_id, ctx.tracking_uri)
    summary.parent_link = ctx.mlflow_run_link(ctx.parent_run_id, "pipeline run")
    summary.runs_table = tracking.experiment_url(ctx.tracking_uri, ctx.experiment_id)
    summary.stage_links = {stage: ctx.mlflow_run_link(ids[stage], stage) for stage in STAGES if stage in ids}
    summary.note = ctx.mlflow_note()
    if ctx.register_models:
        summary.registered = [ctx.registered_model(kind) for kind, stage in _REGISTERED_BY if stage in ids]
    return summary


_REGISTERED_BY = (("sft", "sft"), ("reward", "reward"), ("policy", "ppo"))  # model kind, the stage registering it


def summary_markdown(summary: PipelineSummary) -> str:
    """The parent flow run's artifact: the headline table, then links to every MLflow run."""
    lines = ["# Pipeline summary", ""] + ([] if summary.gold else [f"**{NO_GOLD_NOTE}**", ""])
    lines += ["| figure | value [95% CI] | MLflow metric |", "|---|---|---|"]
    for headline in headlines(summary.gold):
        label = headline.label.format(policy=summary.policy)
        lines.append(f"| {label} | {headline.text(summary.metrics)} | `{headline.metric}` |")
    paragraphs = ["\n".join(lines)]
    if summary.parent_link:
        paragraphs.append(f"MLflow: {summary.parent_link} (these figures are its metrics; "
                          f"[all runs]({summary.runs_table}) to compare pipelines)")  # fmt: skip
        if summary.stage_links:
            paragraphs.append("Stage runs: " + " · ".join(summary.stage_links.values()))
        if summary.note:
            paragraphs.append(summary.note)
    else:
        paragraphs.append("MLflow tracking is off for this run: no MLflow links.")
    if summary.registered:
        paragraphs.append("Registered models (alias `candidate` on this run's versions): "
                          + ", ".join(f"`{name}`" for name in summary.registered))  # fmt: skip
    return "\n\n".join(paragraphs) + "\n"


AGREEMENT_ROWS = (
    ("rm/agreement_majority", "reward model vs the annotators' majority"),
    ("rm/agreement_gold", "reward model vs the gold scorer"),
    ("rm/agreement_ceiling", "annotators' ceiling: one annotator vs the others' majority"),
    ("rm/agreement_majority_loo", "reward model vs the leave-one-out majority (the ceiling's footing)"),
    ("rm/ceiling_gap", "ceiling − leave-one-out agreement"),
    ("rm/annotator_pairwise_agreement", "two annotators agree"),
    ("rm/agreement_unanimous", "reward model on pairs the annotators agreed on unanimously"),
    ("rm/agreement_split", "reward model on split-vote pairs"),
    ("rm/ece", "expected calibration error"),
)


def agreement_rows(metrics: Mapping[str, float]) -> list[dict[str, object]]:
    """The reward-model agreement table: the headline rows first, then per topic (vs majority and vs gold)."""

    def row(name: str, what: str) -> dict[str, object]:
        low, high = metrics.get(f"{name}_ci_low"), metrics.get(f"{name}_ci_high")
        ci = f"[{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
        return {"metric": name, "value": round(metrics[name], 4), "95% CI": ci, "what": what}  # numbers before the wide text

    rows = [row(name, what) for name, what in AGREEMENT_ROWS if name in metrics]
    for prefix, what in (("rm/agreement_topic/", "vs majority, topic"), ("rm/agreement_gold_topic/", "vs gold, topic")):
        rows += [row(name, f"{what} '{name.removeprefix(prefix)}'") for name in sorted(metrics) if name.startswith(prefix)]
    return rows
