"""`rlhf reward eval`: a reward model measured on any labelled preference file.

``register(app)`` adds the ``reward`` command group to the main `rlhf` app (flows/cli.py). Only
typer at module level: torch and transformers load inside the command so ``rlhf --help`` stays
fast. The figures are computed by :mod:`rlhf_core.reward.evaluate`; this module finds the model
(a directory, a run, a registry URI), prints the report at 80 columns and writes ``--json``.
"""

from __future__ import annotations

import json
import textwrap
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

if TYPE_CHECKING:  # pragma: no cover
    from rlhf_core.config.pipeline import PipelineConfig
    from rlhf_core.reward.evaluate import PairFigures, PairsRead, ScoreSettings
    from rlhf_core.stats import Estimate

SHOWN_SET_ASIDE = 10  # rows listed per rule; --json has every pair


@dataclass(frozen=True)
class ResolvedModel:
    """A reward-model directory and, when it belongs to a pipeline run, that run's config."""

    model_dir: Path
    run_config: PipelineConfig | None
    origin: str  # how the argument was read, for the report's first line


def _run_config(run_path: Path) -> PipelineConfig | None:
    from rlhf_core.config.pipeline import load_config

    config = run_path / "config.yaml"
    return load_config(config) if config.is_file() else None


def _in_run(model_dir: Path) -> PipelineConfig | None:
    """The config of the run that wrote ``model_dir`` (``<run>/reward/model``), if it is one's."""
    model_dir = model_dir.resolve()
    return _run_config(model_dir.parent.parent) if model_dir.parent.name == "reward" else None


def _from_registry(uri: str, workspace: Path) -> ResolvedModel:
    """``models:/<name>@<alias>`` or ``models:/<name>/<version>`` in the workspace's MLflow registry."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from rlhf_core.errors import ModelLoadError
    from tasks.artifacts import workspace_from

    ws = workspace_from(workspace)
    client = mlflow.MlflowClient(tracking_uri=ws.mlflow_uri, registry_uri=ws.mlflow_uri)
    ref = uri.removeprefix("models:/")
    try:
        if "@" in ref:
            version = client.get_model_version_by_alias(*ref.split("@", 1))
        else:
            name, _, number = ref.rpartition("/")
            version = client.get_model_version(name, number)
        stage_dir = Path(version.tags.get("rlhf.stage_dir", ""))
        local = stage_dir if version.tags.get("rlhf.stage_dir") and stage_dir.is_dir() else Path(
            mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=ws.mlflow_uri)
        )
    except MlflowException as exc:
        raise ModelLoadError(f"{uri}: not found in the registry of {ws.root} ({exc.message.splitlines()[0]})") from exc
    return ResolvedModel(local, _in_run(local), f"{uri} (version {version.version})")


def resolve_reward_model(target: str, workspace: Path) -> ResolvedModel:
    """A reward-model directory, a run directory, a run id in ``workspace`` or a ``models:/`` URI -> the model."""
    from rlhf_core.errors import ModelLoadError
    from rlhf_core.stage_io import STAGE_MARKER
    from tasks.artifacts import OUTPUTS_FILE, RunDir, workspace_from

    if target.startswith("models:/"):
        return _from_registry(target, workspace)
    path = Path(target).expanduser()
    if path.is_dir() and (path / STAGE_MARKER).is_file():
        return ResolvedModel(path, _in_run(path), str(path))
    if path.is_dir() and ((path / "reward" / OUTPUTS_FILE).is_file() or (path / "config.yaml").is_file()):
        run = RunDir(path)
        return ResolvedModel(Path(run.require("reward")["model_dir"]), _run_config(path), f"run {path}")
    if path.exists():
        raise ModelLoadError(f"{path}: not a reward model directory (no {STAGE_MARKER}) "
                             f"nor a pipeline run directory (no reward/{OUTPUTS_FILE})")
    if "/" in target or target.startswith((".", "~")):
        raise ModelLoadError(f"{path}: no such reward model or run directory")
    run = workspace_from(workspace).existing_run(target, option="rlhf reward eval")
    return ResolvedModel(Path(run.require("reward")["model_dir"]), _run_config(run.path), f"run {target}")


def _load(resolved: ResolvedModel, workspace: Path, max_length: int | None, truncate: bool, batch_size: int):
    """(reward model, tokenizer, ScoreSettings): the run's reward-stage settings where there is a run."""
    from rlhf_core.batching import resolve_format
    from rlhf_core.config.model import ModelConfig
    from rlhf_core.config.reward import RewardConfig
    from rlhf_core.devices import resolve_device
    from rlhf_core.errors import ConfigError, ModelLoadError
    from rlhf_core.models import load_tokenizer
    from rlhf_core.reward.evaluate import ScoreSettings
    from rlhf_core.reward.model import RewardModel

    cfg = resolved.run_config
    reward_cfg = cfg.reward if cfg is not None else RewardConfig()
    model_cfg = cfg.model if cfg is not None else ModelConfig()
    if cfg is not None and cfg.torch_threads:  # as the run did: small models run fastest on few threads
        import torch

        torch.set_num_threads(cfg.torch_threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a "Loading weights" bar on every run is noise in a CI log
    reward_model = RewardModel.from_pretrained(
        resolved.model_dir, device=resolve_device(model_cfg.device), trust_remote_code=model_cfg.trust_remote_code
    )
    if (resolved.model_dir / "tokenizer_config.json").is_file():  # the reward stage saves it beside the weights
        own = ModelConfig(base=str(resolved.model_dir), trust_remote_code=model_cfg.trust_remote_code)
        tokenizer = load_tokenizer(own, workspace / "models")
    elif cfg is not None:
        tokenizer = load_tokenizer(cfg.model, cfg.model_cache)
    else:
        raise ModelLoadError(f"{resolved.model_dir}: no tokenizer files beside the model, and no run config naming one")
    length = max_length or reward_cfg.optim.max_length
    positions = getattr(reward_model.config, "max_position_embeddings", None)
    if positions is not None and length > positions:
        raise ConfigError(f"--max-length {length}: over the model's {positions} positions ({resolved.model_dir})")
    share = reward_cfg.share_prompt
    if share:
        try:
            reward_model.check_pair_layout()
        except ConfigError:  # a backbone without 4D masks: two rows per pair give the same rewards
            share = False
    fmt = resolve_format(tokenizer, reward_cfg.prompt_format)
    return reward_model, tokenizer, ScoreSettings(fmt, length, truncate, share, batch_size)


# ----------------------------------------------------------------------------- the report
def _ci(est: Estimate) -> str:
    return f"{est.value:.3f} [{est.ci_low:.3f}, {est.ci_high:.3f}]"


def _short_names(files: list[str]) -> dict[str, str]:
    """Each file by its base name when those are unique (80 columns), else as given; --json keeps the paths."""
    names = {f: Path(f).name for f in files}
    return names if len(set(names.values())) == len(names) else {f: f for f in files}


def report_lines(figures: PairFigures, pairs: PairsRead, settings: ScoreSettings, origin: str) -> list[str]:
    """The report as text lines of at most 80 characters (long model paths aside)."""
    from data_checks.importers import location

    how = "prompts cut from the left to fit" if settings.truncate else "over-long pairs set aside"
    lines = [f"reward model: {origin}",
             f"  format {settings.fmt}, max_length {settings.max_length} ({how})"]
    short = _short_names([*pairs.per_file, *(s.file for s in pairs.set_aside)])
    for file, c in pairs.per_file.items():
        lines.append(f"pairs: {short[file]}: {c['pairs']} read, {c['scored']} scored, {c['set_aside']} set aside")
    lines += ["", f"agreement with the human labels: {_ci(figures.agreement)}  (n={figures.n})",
              "baselines on the same pairs:",
              f"  prefer the shorter reply   {_ci(figures.prefer_shorter)}",
              f"  prefer the longer reply    {_ci(figures.prefer_longer)}"]
    for title, groups in (("user turns", figures.by_turns), ("reply tokens (c+r)", figures.by_length)):
        lines += ["", f"by {title:<20} {'n':>6}  {'agreement [95% CI]':<22}  shorter reply"]
        for g in groups:
            lines.append(f"  {g.label:<21} {g.agreement.n:>6}  {_ci(g.agreement):<22}  {g.prefer_shorter:.3f}")
    cal = figures.calibration
    lines += ["", f"calibration: ECE {cal.ece:.3f} (confidence sigmoid(|r_c - r_r|) vs accuracy)",
              f"  {'confidence':<12} {'n':>6}  {'mean conf':>9}  {'accuracy':>8}"]
    for b in cal.bins:
        if b.count:
            lines.append(f"  {b.lower:.2f}-{b.upper:.2f}    {b.count:>6}  {b.mean_predicted:>9.3f}  {b.mean_observed:>8.3f}")
    if pairs.set_aside:
        lines += ["", f"set aside {len(pairs.set_aside)} pairs (--json gives each its reason):"]
        for rule, count in Counter(s.rule for s in pairs.set_aside).most_common():
            rows = [s for s in pairs.set_aside if s.rule == rule]
            lines += textwrap.wrap(f"{rule} ({count}), e.g. {rows[0].detail}", 78, initial_indent="  ",
                                   subsequent_indent="    ")
            places = list(dict.fromkeys(location(short[s.file], s.row) for s in rows))  # a ranking row's pairs: once
            where = ", ".join(places[:SHOWN_SET_ASIDE])
            more = f", and {len(places) - SHOWN_SET_ASIDE} more" if len(places) > SHOWN_SET_ASIDE else ""
            lines += textwrap.wrap(where + more, 78, initial_indent="    ", subsequent_indent="    ")
    return lines


def report_json(figures: PairFigures, pairs: PairsRead, settings: ScoreSettings, resolved: ResolvedModel) -> dict[str, Any]:
    """What ``--json`` writes: the figures, the settings, per-file counts and every row set aside."""
    from dataclasses import asdict

    return {
        "model": str(resolved.model_dir), "origin": resolved.origin, "settings": asdict(settings),
        **figures.to_dict(), "files": pairs.per_file,
        "set_aside_by_rule": dict(Counter(s.rule for s in pairs.set_aside)),
        "set_aside": [{**asdict(s), "reason": s.message} for s in pairs.set_aside],
    }


def register(app: typer.Typer) -> None:
    """Add the `reward` command group (`rlhf reward eval`) to ``app``."""
    reward_app = typer.Typer(
        help="Reward models: measure one on labelled preference pairs.", no_args_is_help=True,
        rich_markup_mode=app.rich_markup_mode,  # the parent's help layout (flows.cli._help_layout)
    )  # fmt: skip
    app.add_typer(reward_app, name="reward")

    @reward_app.command("eval")
    def eval_(
        model: Annotated[str, typer.Argument(
            metavar="MODEL_DIR_OR_RUN_ID", show_default=False,
            help="A reward-model directory (<run>/reward/model), a run directory, a run id in the workspace, "
                 "or a registry URI (models:/<name>@<alias>, models:/<name>/<version>).")],
        pairs: Annotated[list[str], typer.Option(
            "--pairs", "-p", metavar="FILE", show_default=False,
            help="Preference file, `datasets` directory or hub id (repeatable), in any layout `rlhf data check` "
                 "reads: TRL, HH-RLHF transcripts, UltraFeedback, rankings.")],
        json_out: Annotated[Optional[Path], typer.Option(
            "--json", metavar="OUT", help="Write every figure and set-aside pair here.")] = None,
        workspace: Annotated[Path, typer.Option("--workspace", "-w", help="Workspace of run ids and models:/ URIs.")] = Path(".rlhf"),
        max_length: Annotated[Optional[int], typer.Option(
            min=8, help="Token limit per sequence. Default: the reward stage's optim.max_length.")] = None,
        truncate: Annotated[bool, typer.Option(
            "--truncate-prompt/--no-truncate-prompt",
            help="Cut an over-long prompt from the left (the replies are kept whole); off: set such pairs aside.")] = True,
        batch_size: Annotated[int, typer.Option(min=1, help="Pairs per forward pass.")] = 16,
        n_boot: Annotated[int, typer.Option(min=1, help="Bootstrap resamples per 95% interval.")] = 1000,
        seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
    ) -> None:
        """Agreement of a reward model with human labels on any preference file, as reward-bench does.

        Prints agreement with its 95% interval, the "prefer the shorter / longer reply" baselines on the same pairs, agreement by user turns and by reply length, and calibration (ECE). Pairs that cannot be scored are set aside and named (file:row: rule), never dropped silently.

        Exit 0 on success, 2 on an unusable file or model.
        """
        from rlhf_core.reward.evaluate import evaluate_reward_model

        resolved = resolve_reward_model(model, workspace)
        reward_model, tokenizer, settings = _load(resolved, workspace, max_length, truncate, batch_size)
        figures, read = evaluate_reward_model(reward_model, tokenizer, pairs, settings, n_boot=n_boot, seed=seed)
        typer.echo("\n".join(report_lines(figures, read, settings, resolved.origin)))
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(report_json(figures, read, settings, resolved), indent=2) + "\n")
            typer.echo(f"\nfigures: {json_out}")
