"""The `rlhf` command line.

Start-up must stay fast (`rlhf --help` < 1 s): this module imports only typer/rich
at the top; torch, prefect, mlflow and great_expectations are imported inside the
commands that need them. Every :class:`UserError` becomes one ``error: ...`` line
and a non-zero exit code, never a bare traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from flows.cli_reward import register as _register_reward_commands
from flows.cli_servers import register as _register_server_commands
from rlhf_core.config.presets import DEFAULT_PRESET, preset_names


def _help_layout() -> str | None:
    """typer's rich help, as panels, cuts option names to 15 characters under 100 columns
    ("--label-studio-…", and a CI log is 80): there, click's plain layout, which wraps the text instead."""
    import shutil

    return "rich" if shutil.get_terminal_size().columns >= 100 else None


HELP_LAYOUT = _help_layout()
app = typer.Typer(
    name="rlhf",
    help=(
        "rlhf-pipeline: the InstructGPT recipe (curated data -> SFT -> reward model -> PPO) "
        "as validated, tracked workflows."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=HELP_LAYOUT,
)
config_app = typer.Typer(help="Inspect and validate pipeline configs.", no_args_is_help=True, rich_markup_mode=HELP_LAYOUT)
model_app = typer.Typer(help="Fetch, inspect and try the base model.", no_args_is_help=True, rich_markup_mode=HELP_LAYOUT)
data_app = typer.Typer(
    help="Data contracts and curation: check files, build the demo data.", no_args_is_help=True, rich_markup_mode=HELP_LAYOUT
)
app.add_typer(config_app, name="config")
app.add_typer(model_app, name="model")
app.add_typer(data_app, name="data")
tracking_app = typer.Typer(
    help="MLflow tracking: send metrics held back while the tracking server was down.",
    no_args_is_help=True,
    rich_markup_mode=HELP_LAYOUT,
)
app.add_typer(tracking_app, name="tracking")
_register_server_commands(app)  # rlhf ui, rlhf deploy
_register_reward_commands(app)  # rlhf reward eval

ConfigOpt = Annotated[
    Optional[str],
    typer.Option(
        "--config",
        "-c",
        help=f"YAML config file, or a preset name under configs/ ({', '.join(preset_names())}). Default: {DEFAULT_PRESET}.",
    ),
]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a config key, e.g. --set sft.optim.max_steps=10 (repeatable)."),
]
WorkspaceOpt = Annotated[
    Optional[Path],
    typer.Option("--workspace", "-w", help="Workspace directory (default: the config's, ./.rlhf)."),
]


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _load(config: str | None, overrides: list[str] | None, workspace: Path | None = None):
    from rlhf_core.config.pipeline import load_config

    cfg = load_config(config, overrides or [])
    if workspace is not None:
        cfg.workspace = workspace
    return cfg


@app.command()
def run(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    workspace: WorkspaceOpt = None,
    resume: Annotated[
        Optional[str],
        typer.Option(help="Re-run this run id (a directory under <workspace>/runs): finished stages are skipped."),
    ] = None,
) -> None:
    """Run the pipeline (data -> SFT -> reward model -> PPO) on a config (default: demo) and say where outputs went.

    Resumable: a killed run re-run with --resume skips finished stages and continues training from the last good checkpoint (a corrupt one is set aside); an interrupt or a failed stage prints that command whole.

    Data-parallel SFT, reward model, DPO and PPO: --set distributed.num_processes=2 (DDP under torchrun; distributed.strategy=fsdp or deepspeed on CUDA for SFT/RM/DPO). PPO rollouts on vLLM: make vllm, then --set ppo.rollout.engine=vllm (the evaluation samples on it too; eval.engine=hf keeps it on the trainer's sampler). An impossible setup is refused before any stage starts.
    """
    from flows.pipeline import run_pipeline
    from flows.runtime import Interrupted
    from rlhf_core.errors import UserError

    cfg = _load(config, set_, workspace)
    try:
        summary = run_pipeline(cfg, resume_run=resume)
    except Interrupted as exc:
        if exc.run_id:
            exc.resume = _same_command(["run", "--resume", exc.run_id], config, set_, workspace)
        raise _stopped(exc) from None
    except UserError as exc:  # a stage failed: its finished stages are kept
        if exc.run_id:
            again = _same_command(["run", "--resume", exc.run_id], config, set_, workspace)
            exc.resume = f"finished stages are kept; a fix outside the config carries the run on with: {again}"
        raise
    console = _console()
    console.print(f"[bold green]pipeline finished[/] in {summary.wall_seconds:.1f} s")
    console.print(f"run directory: [bold]{summary.run_dir}[/]")
    for line in summary.lines:
        console.print(f"  {line}", soft_wrap=True)


@app.command("eval")
def eval_(
    run_id: Annotated[str, typer.Argument(help="A finished run (directory name under <workspace>/runs).")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """Evaluate a run's PPO (and DPO) policy against its SFT model and best-of-N on held-out prompts.

    Gold score, reward-model score, win rates, KL to the SFT model, refusal and repetition rates, output diversity (policy vs SFT), with bootstrap intervals; writes eval/comparison.md, eval.json, samples and the gold-vs-sqrt(KL) plot. Samples through ppo.rollout.engine (or eval.engine).
    """
    from flows.pipeline import run_eval
    from flows.runtime import Interrupted
    from rlhf_core.errors import UserError

    cfg = _load(config, set_, workspace)
    try:
        result = run_eval(cfg, run_id)
    except Interrupted as exc:
        exc.resume = _same_command(["eval", run_id], config, set_, workspace)
        raise _stopped(exc) from None
    except UserError as exc:
        if exc.run_id:
            exc.resume = f"once the cause is fixed, evaluate again with: {_same_command(['eval', run_id], config, set_, workspace)}"
        raise
    console = _console()
    console.print(Path(result["comparison_md"]).read_text(encoding="utf-8"), soft_wrap=True)
    console.print(f"report: [bold]{result['eval_json']}[/]; plot: {result['plot']}", soft_wrap=True)


@app.command()
def iterate(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    workspace: WorkspaceOpt = None,
    rounds: Annotated[int, typer.Option(help="Rounds to run one after the other (each a `rlhf-iterate` flow run).")] = 1,
    labeler: Annotated[
        Optional[str],
        typer.Option(help="Who labels: simulated (the demo panel), file (JSONL out and back), label-studio "
                     "(LABEL_STUDIO_URL with LABEL_STUDIO_API_KEY, or LABEL_STUDIO_USERNAME and LABEL_STUDIO_PASSWORD). "
                     "Default: the config's iterate.labeler."),
    ] = None,
    from_run: Annotated[
        Optional[str], typer.Option(help="Start from this run's PPO policy instead of the registry's champion.")
    ] = None,
    resume: Annotated[
        Optional[str], typer.Option(help="Carry on a round (its run id) that timed out or was stopped; labels given are kept.")
    ] = None,
) -> None:
    """Iterated online RLHF: label the champion's own replies, update the reward model, PPO from the champion, evaluate.

    A round starts from the registry's champion policy (models:/<name>-policy@champion, made by `rlhf run`), samples replies to fresh RL prompts, sends the pairs for labelling and waits (iterate.label_timeout_s), then trains the reward model from the champion's on old + new pairs and PPO from the champion, evaluates the new policy beside the champion and moves `champion` by the registry rule. Elo by round: <workspace>/iterate/<name>/. Settings: iterate.* (rlhf config show).
    """
    from flows.iterate import run_iterate
    from flows.runtime import Interrupted

    overrides = [*(set_ or []), *([f"iterate.labeler={labeler}"] if labeler else [])]
    cfg = _load(config, overrides, workspace)
    from tasks.stages.label import LabelTimeout

    try:
        summary = run_iterate(cfg, rounds=rounds, from_run=from_run, resume_run=resume)
    except Interrupted as exc:
        raise _stopped(exc) from None
    except LabelTimeout as exc:
        if exc.resume_run is None:
            raise
        again = _same_command(["iterate", "--resume", exc.resume_run], config, overrides, workspace)
        raise LabelTimeout(str(exc).rsplit(": rlhf iterate --resume", 1)[0] + f": {again}") from None
    console = _console()
    for row in summary.rounds:
        console.print(f"round {row['round']} ({row['run']}): {row['labels']} labels, {row['rows_added']} pairs added; "
                      f"Elo new {row['elo_new']:.0f} vs champion {row['elo_champion']:.0f} ({row['champion_before']})",
                      soft_wrap=True)
        console.print(f"  registry: {row['decision']}", soft_wrap=True)
    console.print(f"history: {summary.history} (rounds.jsonl, elo_by_round.png)", soft_wrap=True)


def _stopped(exc) -> typer.Exit:
    """Say in one line what an interrupt stopped and how to carry on; the exit (130 Ctrl-C, 143 SIGTERM) to raise.

    Printed here: typer turns a KeyboardInterrupt that leaves a command into a silent exit 130.
    """
    from flows.runtime import exit_hard_on_next_signal

    exit_hard_on_next_signal(exc.exit_code)  # a second Ctrl-C while the servers stop: out at once
    _console(stderr=True).print(exc.describe(), style="yellow", soft_wrap=True, markup=False)
    return typer.Exit(exc.exit_code)


def _same_command(head: list[str], config: str | None, set_: list[str] | None, workspace: Path | None) -> str:
    """`rlhf <head...>` with this call's --config/--set/--workspace, quoted for a shell."""
    import shlex

    argv = ["rlhf", *head]
    if config:
        argv += ["-c", config]
    for assignment in set_ or []:
        argv += ["--set", assignment]
    if workspace is not None:
        argv += ["-w", str(workspace)]
    return " ".join(shlex.quote(a) for a in argv)


@config_app.command("show")
def config_show(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Print the fully resolved config (preset + overrides) as YAML."""
    from rlhf_core.config.pipeline import dump_config

    typer.echo(dump_config(_load(config, set_)), nl=False)


@config_app.command("validate")
def config_validate(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Validate a config; exit 2 with one line per problem if it is invalid.

    Beyond the schema, what `rlhf run` checks before it starts: the data files exist (and are
    files or `datasets` directories), the inputs the enabled stages need are not empty, the model
    is where the config says (not a corrupt GGUF, not pickled weights only), the lengths fit its context.
    """
    from flows.preflight import preflight_config

    cfg = _load(config, set_)
    preflight_config(cfg)
    _console().print(f"[green]ok[/]: config '{cfg.name}' is valid")


@model_app.command("fetch")
def model_fetch(config: ConfigOpt = None, set_: SetOpt = None, workspace: WorkspaceOpt = None) -> None:
    """Make the config's base model available locally (dequantize + cache a GGUF once)."""
    from rlhf_core.models import materialize

    cfg = _load(config, set_, workspace)
    if cfg.model.base == "tiny":
        cfg.model.base = cfg.model.tiny.tokenizer
    source = materialize(cfg.model, cfg.model_cache)
    _console().print(f"[green]ok[/]: {cfg.model.base} -> {source.location}")


@model_app.command("chat")
def model_chat(
    prompt: Annotated[str, typer.Argument(help="The user message.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    workspace: WorkspaceOpt = None,
    model_dir: Annotated[
        Optional[Path], typer.Option(help="Chat with a trained stage model directory instead of the base model.")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, max=4096)] = 64,
    temperature: Annotated[float, typer.Option(min=0.0)] = 0.7,
    seed: int = 0,
) -> None:
    """Sample one reply from the base model (or a trained one) to a chat prompt."""
    from rlhf_core.generation import chat_reply
    from rlhf_core.models import load_causal_lm, load_tokenizer

    cfg = _load(config, set_, workspace)
    tokenizer = load_tokenizer(cfg.model, cfg.model_cache)
    model = load_causal_lm(cfg.model, cfg.model_cache, tokenizer, path=model_dir)
    reply = chat_reply(model, tokenizer, prompt, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    typer.echo(reply)


@model_app.command("info")
def model_info(config: ConfigOpt = None, set_: SetOpt = None, workspace: WorkspaceOpt = None) -> None:
    """Load the config's base model and print its size, device and dtype."""
    from rlhf_core.models import count_parameters, load_causal_lm, load_tokenizer

    cfg = _load(config, set_, workspace)
    tokenizer = load_tokenizer(cfg.model, cfg.model_cache)
    model = load_causal_lm(cfg.model, cfg.model_cache, tokenizer)
    c = model.config
    _console().print(
        f"{type(model).__name__}: {count_parameters(model) / 1e6:.1f} M parameters, "
        f"{c.num_hidden_layers} layers, hidden {c.hidden_size}, vocab {len(tokenizer)}, "
        f"device {model.device}, dtype {model.dtype}, chat template: {'yes' if tokenizer.chat_template else 'no'}"
    )


@data_app.command("check")
def data_check(
    paths: Annotated[list[Path], typer.Argument(help="Data files (JSONL, JSON, Parquet, CSV) or datasets sources.")],
    kind: Annotated[
        Optional[str],
        typer.Option(help="prompts | demonstrations | preferences | rankings (default: inferred from the columns)."),
    ] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the machine-readable report here.")] = None,
    docs_dir: Annotated[Optional[Path], typer.Option(help="Write Great Expectations Data Docs (HTML) here.")] = None,
    harmful: Annotated[
        Optional[bool],
        typer.Option("--harmful/--benign", help="Declare every prompt of the files harmful (e.g. HH-RLHF "
                     "harmless-base: refusing is then allowed) or benign; a row's own harmful column wins. "
                     "Default: rows without one are unlabelled, and may not refuse."),
    ] = None,
) -> None:
    """Run the Great Expectations suites on data files (JSONL, JSON, CSV, also .gz; Parquet).

    Prints one block per failed expectation, cut to the terminal width, with the file's own row numbers. As strict as `rlhf data prepare`: the rows it would quarantine fail here. --json and --docs-dir never replace anything this command did not write.

    Exit codes: 0 every expectation met; 1 some expectation failed; 2 an input is unusable (missing, empty, unreadable, unknown layout, no readable row) or an output path is refused.
    """
    from data_checks.check import run_check

    kinds = ("prompts", "demonstrations", "preferences", "rankings")
    if kind is not None and kind not in kinds:
        from rlhf_core.errors import DataError

        raise DataError(f"--kind '{kind}': expected one of {', '.join(kinds)}")
    raise typer.Exit(run_check(paths, kind=kind, json_out=json_out, docs_dir=docs_dir, console=_console(),
                               harmful=harmful))


@data_app.command("prepare")
def data_prepare(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    workspace: WorkspaceOpt = None,
    out: Annotated[Optional[Path], typer.Option(help="Output directory (default: a new run directory).")] = None,
) -> None:
    """Run the data stage alone: import, validate, scrub refusals, dedup, filter prompts; write the report.

    A data input is a path or {path: FILE, harmful: true|false} (all its prompts harmful or benign; unlabelled refusals are kept and flagged). A preference file under data.demonstrations gives its chosen side as demonstrations (with a warning).

    --out must be new, empty or an earlier output of this command; the outputs appear when the stage has finished. Exit 2 when an input is unusable or has no usable row (the report and quarantine.jsonl are still written then, naming every bad row's file, row and rule).
    """
    from data_checks.stage import run_data_stage
    from tasks.artifacts import workspace_from

    cfg = _load(config, set_, workspace)
    out_dir = out or workspace_from(cfg.workspace).new_run(f"{cfg.name}-data").stage("data")
    tokenizer = cfg.model if cfg.model.base != "tiny" else None
    # Refuses an --out holding files it did not write; an input with no usable row exits 2 (the
    # report and quarantine still written). Outputs appear only when the stage has finished.
    report = run_data_stage(cfg.data, out_dir, tokenizer=tokenizer, model_cache=cfg.model_cache,
                            option="--out" if out else "output directory")
    console = _console()
    for warning in report.warnings:
        console.print(f"warning: {warning}", style="yellow", soft_wrap=True, markup=False)
    console.print(
        f"[green]data stage done[/] in {report.seconds:.1f} s: {report.rows_in} rows in, "
        f"{report.rows_kept} kept, {report.rows_in - report.rows_kept} dropped (every one listed in dropped.jsonl)"
    )
    console.print(f"outputs and report: [bold]{out_dir}[/] (report.md, report.json, quarantine.jsonl)")


@data_app.command("make-demo")
def data_make_demo(
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("data/demo"),
    seed: int = 0,
    n_prompts_per_topic: Annotated[int, typer.Option(min=1, help="Benign prompts with replies per topic.")] = 28,
    n_rl_prompts_per_topic: Annotated[int, typer.Option(min=1)] = 27,
    ranked_samples: Annotated[
        int, typer.Option(min=0, max=8, help="Extra samples per benign prompt, compared with each other (on-policy pairs).")
    ] = 2,
    model: Annotated[Optional[str], typer.Option(help="Model source for the replies (default: the base model).")] = None,
    threads: Annotated[Optional[int], typer.Option(min=1, help="torch CPU threads while sampling.")] = None,
    samples: Annotated[
        Optional[Path], typer.Option(help="JSON file of raw sampled replies: reused where it matches, written otherwise.")
    ] = None,
    cache_dir: Annotated[Path, typer.Option(help="Model cache.")] = Path(".rlhf/models"),
) -> None:
    """Regenerate the shipped demo data set (1,248 replies sampled from the base model: ~17 min at 1 thread).

    With --samples data/demo/samples.json (the shipped replies) it rebuilds the shipped files in seconds.
    """
    from rlhf_core.config.model import ModelConfig
    from rlhf_core.demo_data.generate import make_demo_data

    overrides: dict = {"n_rl_prompts_per_topic": n_rl_prompts_per_topic, "ranked_samples": ranked_samples,
                       "threads": threads}
    if model:
        overrides["model"] = ModelConfig(base=model)
    stats = make_demo_data(
        out, seed=seed, n_prompts_per_topic=n_prompts_per_topic, cache_dir=cache_dir, samples_path=samples,
        log=lambda line: _console().print(line), **overrides,
    )
    _console().print(f"[green]demo data written[/] to {out}: {stats.get('sizes', stats)}")


@tracking_app.command("flush")
def tracking_flush(
    run: Annotated[
        str,
        typer.Argument(help="A run id (directory under <workspace>/runs), a run directory, or one spool file (.jsonl)."),
    ],
    workspace: WorkspaceOpt = None,
    tracking_uri: Annotated[
        Optional[str], typer.Option(help="Send to this MLflow server instead of the one recorded in each spool.")
    ] = None,
    timeout: Annotated[float, typer.Option(min=0, help="Seconds to keep retrying an unreachable server.")] = 60.0,
) -> None:
    """Send a run's metrics that never reached the MLflow tracking server.

    While the server is unreachable a run keeps training: every metric batch is written first to
    <run>/tracking/<stage>-<mlflow-run-id>.jsonl and sent when the server answers again. If it was
    still down when a stage ended, the stage failed naming that file; this command sends what is
    left (each batch once: the spool records what MLflow accepted) and sets the runs' final status.
    `rlhf run --resume RUN_ID` does the same before it re-runs anything. Exit 2 if the server
    still does not answer.
    """
    from tasks.tracking import flush_run_spools, flush_spool

    target = Path(run)
    if not target.exists():
        target = (workspace or _load(None, None).workspace) / "runs" / run
    if target.is_file():
        reports = [r for r in [flush_spool(target, tracking_uri=tracking_uri, timeout_s=timeout)] if r.batches or r.status]
    elif target.is_dir():
        reports = flush_run_spools(target, tracking_uri=tracking_uri, timeout_s=timeout)
    else:
        from rlhf_core.errors import UserError

        raise UserError(f"rlhf tracking flush {run}: no such run directory or spool file ({target})")
    console = _console()
    for r in reports:
        status = f"; run marked {r.status}" if r.status else ""
        console.print(
            f"sent {r.batches} metric batch(es) ({r.values} values) from {r.spool} to MLflow run {r.run_id} "
            f"at {r.tracking_uri}{status}", soft_wrap=True,
        )  # fmt: skip
    if not reports:
        console.print(f"nothing to send: every metric of {target} is already in MLflow", soft_wrap=True)


def main() -> None:
    """Console-script entry point: run the app, turning user errors into one line."""
    from flows.runtime import Interrupted, exit_hard_on_next_signal, handle_termination
    from rlhf_core.errors import UserError

    handle_termination()  # SIGTERM/SIGHUP unwind as Ctrl-C does: states recorded, servers stopped
    try:
        # Outside standalone mode click returns the code of `typer.Exit(code)` instead of exiting.
        code = app(standalone_mode=False)
    except UserError as exc:
        from rlhf_core.redact import redact_text

        console = _console(stderr=True)
        from rich.text import Text

        for line in redact_text(str(exc)).splitlines() or [type(exc).__name__]:
            # as plain text: "[chosen, rejected]" in a message is data, not rich markup
            console.print(Text.assemble(("error:", "bold red"), " ", line), soft_wrap=True)
        if exc.log_file:
            console.print(f"full log (with the traceback): {exc.log_file}", soft_wrap=True, markup=False)
        if exc.resume:  # whole on one line to paste, as a run's own config/--set/-w (redacted, as the error)
            console.print(redact_text(exc.resume), soft_wrap=True, markup=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:  # outside a command (typer makes one inside a silent exit 130)
        if not isinstance(exc, Interrupted):
            exc = Interrupted()
        exit_hard_on_next_signal(exc.exit_code)
        _console(stderr=True).print(exc.describe(), style="yellow", soft_wrap=True, markup=False)
        sys.exit(exc.exit_code)
    except Exception as exc:  # usage errors and aborts
        usage, exits, aborts = _cli_exception_types()
        if isinstance(exc, usage):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, exits):
            sys.exit(exc.exit_code)
        if isinstance(exc, aborts):
            sys.exit(1)
        raise
    sys.exit(code if isinstance(code, int) else 0)


def _cli_exception_types() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(usage errors, exits, aborts): click's, and those of the copy of click newer typers vendor
    (typer._click), whose classes do not derive from click's; a bad option raises typer's."""
    import click

    usage: list[type] = [click.exceptions.ClickException]
    exits: list[type] = [click.exceptions.Exit]
    aborts: list[type] = [click.exceptions.Abort]
    try:
        import typer.exceptions
        from typer._click.exceptions import ClickException
    except ImportError:  # a typer that uses click itself
        pass
    else:
        usage.append(ClickException)
        exits.append(typer.exceptions.Exit)
        aborts.append(typer.exceptions.Abort)
    return tuple(usage), tuple(exits), tuple(aborts)


if __name__ == "__main__":  # pragma: no cover
    main()
