"""The evaluation stage: SFT vs PPO (and DPO) vs best-of-N on the held-out prompts.

``run`` reads the stage models from the run directory and calls :func:`run_evaluation`, the
same comparison on explicit paths (bench/eval_demo.py uses it directly). Outputs in ``<run>/eval/``:

* ``eval.json``        the primary policy's figures (``eval/...`` names) and the whole comparison
                       (every method's estimates with their 95% intervals)
* ``comparison.md``    the comparison table (one row per method) in Markdown
* ``samples.jsonl``    one row per (method, prompt): prompt, SFT response, the method's response,
                       gold and reward-model scores, KL
* ``gold_vs_kl.png``   gold and reward-model score against sqrt(KL) (Gao et al. 2022)

With ``eval.gold: false`` (real data: no gold scorer) nothing gold is computed: the table shows the
reward-model score, KL, refusals, length and finished replies, the plot is ``rm_vs_kl.png`` (the
reward-model score alone), and the report opens with :data:`NO_GOLD_NOTE` and closes with the reward
model's held-out human agreement (the reward stage's ``agreement.json``) beside the rule "prefer the
shorter reply" on the same pairs (:func:`held_out_agreement`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlhf_core.config.eval import EvalConfig
from rlhf_core.errors import DataError
from rlhf_core.eval_report import NO_GOLD_NOTE, MethodComparison
from rlhf_core.evaluation import ppo_checkpoint_steps
from rlhf_core.tracking import NullTracker, Tracker, metric_name
from tasks.artifacts import RunDir
from tasks.stages.common import StageOutputs, StageTracker, log_curated_inputs, split_train_eval

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from rlhf_core.config.pipeline import PipelineConfig
    from rlhf_core.rollout import RolloutEngine

PRIMARY = "ppo"  # the policy whose figures get the plain eval/... names, when present
PREVIOUS_CHAMPION = "champion"  # in an `rlhf iterate` round: the policy PPO started from
AGREEMENT_ON_POLICY = "eval/rm_gold_agreement_on_policy"
_CI_SUFFIXES = ("_ci_low", "_ci_high")

# Columns of comparison.md: (estimate, header, format)
_TABLE_COLUMNS = (
    ("mean_gold", "gold", "{:.3f}"),
    ("gold_delta", "gold Δ vs SFT [95% CI]", None),
    ("gold_win_rate_vs_sft", "gold win", "{:.2f}"),
    ("mean_rm", "RM", "{:.3f}"),
    ("rm_win_rate_vs_sft", "RM win", "{:.2f}"),
    ("kl_to_ref", "KL (nats)", "{:.2f}"),
    ("refusal_rate_benign", "refuse benign", "{:.2f}"),
    ("refusal_rate_harmful", "refuse harmful", "{:.2f}"),
    ("repetition_rate", "loops", "{:.2f}"),
    ("length", "tokens", "{:.1f}"),
)
# Without a gold scorer: no gold columns; refusals over all prompts and finished replies instead.
_NO_GOLD_TABLE_COLUMNS = (
    ("mean_rm", "RM", "{:.3f}"),
    ("rm_delta", "RM Δ vs SFT [95% CI]", None),
    ("rm_win_rate_vs_sft", "RM win", "{:.2f}"),
    ("kl_to_ref", "KL (nats)", "{:.2f}"),
    ("refusal_rate", "refuse", "{:.2f}"),
    ("repetition_rate", "loops", "{:.2f}"),
    ("length", "tokens", "{:.1f}"),
    ("finished_rate", "finished", "{:.2f}"),
)
HELD_OUT_METRICS = ("eval/rm_agreement_held_out", "eval/prefer_shorter_held_out")


def run(cfg: PipelineConfig, run: RunDir, tracker: StageTracker) -> StageOutputs:
    """Evaluate the run's SFT, PPO and DPO models (those it has) and best-of-N on the curated eval prompts."""
    data, sft, reward = run.require("data"), run.require("sft"), run.require("reward")
    policy_dirs = {name: run.require(name)["model_dir"] for name in ("ppo", "dpo") if run.outputs(name)}
    if cfg.ppo.init_from:  # an `rlhf iterate` round: the champion it started from is compared too
        policy_dirs[PREVIOUS_CHAMPION] = cfg.ppo.init_from
    out_dir = run.stage("eval")
    tracker.log_params({"eval": cfg.eval.model_dump(mode="json")})
    log_curated_inputs(tracker, data, ("eval_prompts",), context="evaluation")
    held_out = None
    if not cfg.eval.gold:
        from rlhf_core.models import load_tokenizer

        tracker.set_tags({"eval.gold_scorer": "none", "mlflow.note.content": NO_GOLD_NOTE})
        held_out = held_out_agreement(reward["agreement"], data["preferences"], load_tokenizer(cfg.model, cfg.model_cache),
                                      n_boot=cfg.eval.n_boot, seed=cfg.eval.seed, confidence=cfg.eval.confidence)

    result = run_evaluation(cfg, sft["model_dir"], policy_dirs, reward["model_dir"], data["eval_prompts"], out_dir, tracker,
                            held_out=held_out)

    files = {k: result[k] for k in ("eval_json", "comparison_md", "samples", "plot")}
    report = Path(result["comparison_md"]).read_text(encoding="utf-8")
    return StageOutputs(files, metrics=result["metrics"], report=report)

def run_evaluation(
    cfg: PipelineConfig,
    sft_dir: str,
    policy_dirs: Mapping[str, str],
    reward_dir: str,
    eval_prompts_path: str,
    out_dir: str | Path,
    tracker: Tracker | None = None,
    *,
    eval_cfg: EvalConfig | None = None,
    log: Callable[[str], None] | None = print,
    held_out: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate SFT, best-of-N and every policy in ``policy_dirs`` (name -> model dir) on the held-out prompts.

    ``eval_cfg`` defaults to ``cfg.eval`` (``EvalConfig()`` when the pipeline config has none).
    With ``eval_cfg.ppo_checkpoints`` the kept intermediate PPO checkpoints join the comparison
    (see :func:`with_ppo_checkpoints`). The primary policy (``ppo``, else the first given, else the
    SFT model) is logged under the dashboard names ``eval/...`` with their 95% intervals
    (``..._ci_low``/``..._ci_high``); every method's point estimates also as ``eval/<method>/...``,
    their intervals in ``eval.json``, ``comparison.md`` and (with MLflow) the ``eval_comparison.json``
    table, not as ~150 more one-point metric charts. ``held_out``: the reward model's held-out
    human agreement beside the shorter-reply rule (:func:`held_out_agreement`), reported and logged
    as ``eval/rm_agreement_held_out`` / ``eval/prefer_shorter_held_out`` (real data, ``eval.gold``
    false). Returns the output paths and the primary metrics.
    """
    from rlhf_core.devices import resolve_device
    from rlhf_core.evaluation import compare_methods
    from rlhf_core.models import load_causal_lm, load_tokenizer
    from rlhf_core.reward.model import RewardModel
    from rlhf_core.stage_io import load_stage_policy
    from tasks.plots import plot_gold_vs_sqrt_kl

    ecfg = eval_cfg or getattr(cfg, "eval", None) or EvalConfig()
    tracker = tracker or NullTracker()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prompts = read_eval_prompts(eval_prompts_path)
    dirs = with_ppo_checkpoints(policy_dirs) if ecfg.ppo_checkpoints else dict(policy_dirs)

    tokenizer = load_tokenizer(cfg.model, cfg.model_cache)
    reference = load_causal_lm(cfg.model, cfg.model_cache, tokenizer, path=sft_dir).eval().requires_grad_(False)
    # the reward tokenizer is the policy's, as in the PPO stage (the reward model starts from the SFT model)
    reward_model = RewardModel.from_pretrained(
        reward_dir, device=resolve_device(cfg.model.device), trust_remote_code=cfg.model.trust_remote_code
    )
    stage_policy = dict(model=cfg.model, cache_dir=cfg.model_cache, tokenizer=tokenizer, sft_dir=sft_dir, lora=cfg.ppo.optim.lora)
    loaders = {name: (lambda d=d: load_stage_policy(d, **stage_policy)) for name, d in dirs.items()}
    engine = eval_engine(cfg, ecfg, reference, out, log)
    try:
        comparison = compare_methods(
            loaders, tokenizer, reference=reference, reward_model=reward_model, reward_tokenizer=tokenizer,
            prompts=prompts, cfg=ecfg, prompt_format=cfg.ppo.prompt_format, reward_prompt_format=cfg.reward.prompt_format,
            log=log, engine=engine, max_engine_gap=cfg.ppo.rollout.max_logprob_mismatch,
        )
    finally:
        if engine is not None:
            engine.close()  # the vllm engine's process tree, on error and interrupt too

    primary = PRIMARY if PRIMARY in comparison.reports else next(iter(policy_dirs), "sft")
    every_method = comparison.metrics()
    primary_metrics = comparison.reports[primary].metrics()
    if AGREEMENT_ON_POLICY in every_method:
        primary_metrics[AGREEMENT_ON_POLICY] = every_method[AGREEMENT_ON_POLICY]
    if primary in comparison.diversity:  # eval/diversity/..., the SFT model's beside it, with intervals
        primary_metrics.update(comparison.diversity[primary].metrics("eval/diversity"))
    for rating in comparison.elo:  # eval/elo: the primary's Elo among all methods (SFT = 1000), with its interval
        if rating.name == primary:
            primary_metrics.update({"eval/elo": rating.rating, "eval/elo_ci_low": rating.ci_low,
                                    "eval/elo_ci_high": rating.ci_high})
    if held_out is not None:
        primary_metrics.update(held_out_metrics(held_out))
    tracker.log_metrics({**point_estimates(every_method), **primary_metrics}, step=0)

    eval_json = out / "eval.json"
    eval_json.write_text(json.dumps(_jsonable({
        "primary": primary,
        "metrics": primary_metrics,
        "settings": ecfg.model_dump(mode="json"),
        "policy_dirs": dirs,
        **comparison.to_dict(include_samples=False),
        **({"held_out_agreement": held_out} if held_out is not None else {}),
    }), indent=2, allow_nan=False))
    table_md = out / "comparison.md"
    table_md.write_text(comparison_markdown(comparison, held_out), encoding="utf-8")
    samples_path = out / "samples.jsonl"
    sample_rows = [{"method": name, **row} for name, r in comparison.reports.items() for row in r.samples]
    with samples_path.open("w", encoding="utf-8") as fh:
        for row in sample_rows:
            fh.write(json.dumps(_jsonable(row), ensure_ascii=False) + "\n")
    if ecfg.gold:
        plot = plot_gold_vs_sqrt_kl(comparison.points(), out / "gold_vs_kl.png")
    else:
        plot = plot_gold_vs_sqrt_kl(comparison.points(), out / "rm_vs_kl.png",
                                    title="Reward-model score against sqrt(KL): no gold scorer for this data")
    for path in (eval_json, table_md, samples_path, plot):
        tracker.log_artifact(path)
    _log_tables(tracker, sample_rows, comparison.table())
    return {
        "eval_json": str(eval_json),
        "comparison_md": str(table_md),
        "samples": str(samples_path),
        "plot": str(plot),
        "primary": primary,
        "metrics": {k: v for k, v in primary_metrics.items() if math.isfinite(v)},
        "methods": [metric_name(n) for n in comparison.reports],
    }


def eval_engine(
    cfg: PipelineConfig, ecfg: EvalConfig, reference: Any, out: Path, log: Callable[[str], None] | None
) -> RolloutEngine | None:
    """The rollout engine that samples the evaluation (``ecfg.engine``, else ``ppo.rollout.engine``), started on
    the SFT model's weights with ``ppo.rollout``'s settings; None for 'hf' (the trainer's own sampler, in process)."""
    if (ecfg.engine or cfg.ppo.rollout.engine) != "vllm":
        return None
    from rlhf_core.rollout.vllm_engine import VLLMEngine

    engine = VLLMEngine(reference, cfg.ppo.rollout, device=next(reference.parameters()).device,
                        log_path=out / "vllm-engine.log")
    if log:
        log(f"eval: vllm engine ready in {engine.start_seconds:.1f} s (log {engine.log_path})")
    return engine


def read_eval_prompts(path: str | Path) -> pd.DataFrame:
    """Held-out prompts from .parquet / .jsonl / .json (canonical prompt columns); DataError naming the file."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: evaluation prompts file not found")
    try:
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
        elif path.suffix in (".jsonl", ".json"):
            frame = pd.read_json(path, lines=path.suffix == ".jsonl")
        else:
            raise DataError(f"{path}: unsupported evaluation prompts format (use .parquet, .jsonl or .json)")
    except DataError:
        raise
    except Exception as exc:  # pandas/pyarrow raise many types for a corrupt file
        raise DataError(f"{path}: cannot read evaluation prompts ({type(exc).__name__}: {exc})") from exc
    if "prompt" not in frame.columns:
        raise DataError(f"{path}: evaluation prompts need a 'prompt' column (got {', '.join(map(str, frame.columns))})")
    if frame.empty:
        raise DataError(f"{path}: no evaluation prompts (0 rows)")
    return frame


def with_ppo_checkpoints(policy_dirs: Mapping[str, str], *, final_name: str = PRIMARY) -> dict[str, str]:
    """``policy_dirs`` plus ``<final_name>-step-<k>`` for each kept PPO checkpoint before the final model.

    The checkpoints live next to the final model (``<ppo>/checkpoints`` beside ``<ppo>/model``);
    the one at the final model's step is the final model itself and is skipped.
    """
    from rlhf_core.stage_io import CHECKPOINTS_DIR, read_stage_marker

    out = dict(policy_dirs)
    if final_name not in policy_dirs:
        return out
    final = Path(policy_dirs[final_name])
    marker = read_stage_marker(final) if final.is_dir() else None
    final_step = marker.get("step") if marker else None
    steps = ppo_checkpoint_steps(final.parent / CHECKPOINTS_DIR)
    extra = {f"{final_name}-step-{k:06d}": str(p) for k, p in sorted(steps.items()) if k != final_step}
    ordered: dict[str, str] = {}
    for name, path in out.items():
        if name == final_name:
            ordered.update(extra)
        ordered[name] = path
    return ordered


def comparison_markdown(comparison: MethodComparison, held_out: Mapping[str, Any] | None = None) -> str:
    """The comparison as a Markdown table (what `comparison.md` and the flow's artifact show); without a
    gold scorer it opens with :data:`NO_GOLD_NOTE` and ends with ``held_out`` (:func:`held_out_agreement`)."""
    columns = _TABLE_COLUMNS if comparison.gold else _NO_GOLD_TABLE_COLUMNS
    header = ["method", *[h for _, h, _ in columns]]
    lines = [] if comparison.gold else [f"**{NO_GOLD_NOTE}**", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in comparison.table():
        cells = [str(row["method"])]
        for key, _, fmt in columns:
            value = row.get(key)
            if value is None:
                cells.append("–")
            elif fmt is None:
                cells.append(f"{value:+.3f} [{row[f'{key}_ci_low']:+.3f}, {row[f'{key}_ci_high']:+.3f}]")
            else:
                cells.append(fmt.format(value))
        lines.append("| " + " | ".join(cells) + " |")
    agreement = comparison.rm_gold_agreement_on_policy
    if agreement is not None and math.isfinite(agreement.value):
        lines += ["", (
            f"Reward model vs gold scorer on samples of the SFT model (pairs of best-of-N candidates, "
            f"{agreement.n} prompts): agree on {agreement.value:.3f} [{agreement.ci_low:.3f}, {agreement.ci_high:.3f}] "
            "of the pairs (0.5 = chance: the nearer to it, the less optimising the reward can raise the gold score)."
        )]
    lines += diversity_markdown(comparison) + elo_markdown(comparison)
    if held_out is not None:
        rm, shorter = held_out["reward_model"], held_out["prefer_shorter"]
        lines += ["", (
            f"Reward model vs the human choices on {held_out['n_pairs']} held-out pairs ({held_out['held_out']}): "
            f"agrees on {_interval(rm)}; always preferring the shorter reply: {_interval(shorter)} on the same pairs "
            "(what length alone earns: a reward model has to beat it)."
        )]
    return "\n".join(lines) + "\n"


def diversity_markdown(comparison: MethodComparison) -> list[str]:
    """comparison.md's output-diversity table (no lines when diversity was off): distinct-1/2 and the samples'
    pairwise similarity per method, each policy's difference from SFT with its interval."""
    from rlhf_core.diversity import DiversityComparison

    if "sft" not in comparison.diversity:
        return []
    sft = comparison.diversity["sft"]
    k = sft.per_prompt[0].n_samples
    lines = ["", f"Output diversity: {k} samples per prompt on {sft.n_prompts} prompts (distinct n-grams over a "
             "prompt's samples, higher = more varied; self-similarity = word-bigram Jaccard of two samples, higher = "
             "more alike). RLHF narrowing what the model says shows as distinct-2 below SFT's and self-similarity above.",
             "", "| method | distinct-1 | distinct-2 | self-similarity | distinct-2 Δ vs SFT [95% CI] | "
             "self-similarity Δ vs SFT [95% CI] |", "|---|---|---|---|---|---|"]
    for name, div in comparison.diversity.items():
        own = div.policy if isinstance(div, DiversityComparison) else div
        cells = [name, f"{own.distinct_1.value:.3f}", f"{own.distinct_2.value:.3f}", f"{own.self_similarity.value:.3f}"]
        if isinstance(div, DiversityComparison):
            cells += [_signed(div.distinct_2_diff), _signed(div.self_similarity_diff)]
        else:
            cells += ["–", "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def elo_markdown(comparison: MethodComparison) -> list[str]:
    """comparison.md's Elo table (no lines without ratings): best first, with intervals and records."""
    if not comparison.elo:
        return []
    lines = ["", "Elo from gold head-to-heads (every method against every other on each prompt, the higher gold "
             "score wins, equal scores tie; Bradley-Terry, SFT = 1000, 95% bootstrap interval over games):", "",
             "| method | Elo [95% CI] | won | lost | tied |", "|---|---|---|---|---|"]
    for r in comparison.elo:
        lines.append(f"| {r.name} | {r.rating:.0f} [{r.ci_low:.0f}, {r.ci_high:.0f}] | {r.wins} | {r.losses} | {r.ties} |")
    return lines


def _signed(est: Any) -> str:
    return f"{est.value:+.3f} [{est.ci_low:+.3f}, {est.ci_high:+.3f}]"


def _interval(est: Mapping[str, Any]) -> str:
    """``0.581 [0.530, 0.632]`` from an Estimate's dict (``–`` for a missing value)."""
    if est.get("value") is None:
        return "–"
    return f"{est['value']:.3f} [{est['ci_low']:.3f}, {est['ci_high']:.3f}]"


def held_out_agreement(
    agreement_path: str | Path, preferences_path: str | Path, tokenizer: Any, *, n_boot: int, seed: int, confidence: float
) -> dict[str, Any]:
    """The reward model's agreement with the human choices on the held-out pairs, beside "prefer the shorter reply".

    The agreement is the reward stage's (``agreement.json``: ``agreement_majority``, which on data with
    one label per pair is agreement with that label); the rule is scored here on the very pairs the
    reward stage measured (the curated preferences' eval split, or the train split when there is none)
    by reply tokens (:func:`rlhf_core.reward.evaluate.length_rule_scores`). DataError when the two
    files do not describe the same pairs.
    """
    import pandas as pd

    from rlhf_core.reward.evaluate import length_rule_scores, reply_tokens
    from rlhf_core.stats import estimate

    report = json.loads(Path(agreement_path).read_text(encoding="utf-8"))
    train, held = split_train_eval(pd.read_parquet(preferences_path))
    pairs = held if len(held) else train
    if len(pairs) != report["n_pairs"]:
        raise DataError(f"{agreement_path}: the reward model was measured on {report['n_pairs']} pairs but "
                        f"{preferences_path} holds {len(pairs)} held-out pairs: re-run the reward stage")
    shorter = length_rule_scores(reply_tokens(tokenizer, pairs["chosen"].tolist()),
                                 reply_tokens(tokenizer, pairs["rejected"].tolist()), prefer="shorter")
    return {
        "held_out": report.get("held_out", "eval split"),
        "n_pairs": int(report["n_pairs"]),
        "reward_model": report["agreement_majority"],
        "prefer_shorter": estimate(shorter, n_boot=n_boot, seed=seed, confidence=confidence).to_dict(),
    }


def held_out_metrics(held_out: Mapping[str, Any]) -> dict[str, float]:
    """:data:`HELD_OUT_METRICS` with their intervals (``_ci_low`` / ``_ci_high``) from :func:`held_out_agreement`."""
    out: dict[str, float] = {}
    for name, key in zip(HELD_OUT_METRICS, ("reward_model", "prefer_shorter"), strict=True):
        est = held_out[key]
        for suffix, field in (("", "value"), *zip(_CI_SUFFIXES, ("ci_low", "ci_high"), strict=True)):
            if est.get(field) is not None:
                out[f"{name}{suffix}"] = float(est[field])
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value



def point_estimates(metrics: Mapping[str, float]) -> dict[str, float]:
    """``metrics`` without the 95% interval bounds (``..._ci_low`` / ``..._ci_high``)."""
    return {k: v for k, v in metrics.items() if not k.endswith(_CI_SUFFIXES)}


def _log_tables(tracker: Tracker, sample_rows: list[dict[str, Any]], comparison_rows: list[dict[str, Any]]) -> None:
    """With MLflow, the samples and the comparison (every method's estimates and intervals) also as
    tables the UI shows in its Artifacts view (mlflow.log_table)."""
    # An MLflow tracker (tasks.tracking, a layer above this one) exposes its client; others log no tables.
    client = getattr(tracker, "client", None)
    if client is None:
        return
    import pandas as pd

    if sample_rows:
        columns = ["method", "id", "prompt", "harmful", "sft_response", "policy_response",
                   "sft_gold", "policy_gold", "sft_rm", "policy_rm", "kl"]
        present = [c for c in columns if c in sample_rows[0]]  # no gold columns without a gold scorer
        client.log_table(tracker.run_id, pd.DataFrame(sample_rows)[present], artifact_file="eval_samples.json")
    if comparison_rows:
        client.log_table(tracker.run_id, pd.DataFrame(comparison_rows), artifact_file="eval_comparison.json")
