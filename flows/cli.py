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

app = typer.Typer(
    name="rlhf",
    help=(
        "rlhf-pipeline: the InstructGPT recipe (curated data -> SFT -> reward model -> PPO) "
        "as validated, tracked workflows."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
config_app = typer.Typer(help="Inspect and validate pipeline configs.", no_args_is_help=True)
model_app = typer.Typer(help="Fetch, inspect and try the base model.", no_args_is_help=True)
data_app = typer.Typer(help="Data contracts and curation: check files, build the demo data.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(model_app, name="model")
app.add_typer(data_app, name="data")

ConfigOpt = Annotated[
    Optional[str],
    typer.Option(
        "--config",
        "-c",
        help="YAML config file, or a preset name under configs/ (smoke, demo, hh-rlhf). Default: demo.",
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
    from flows.config import load_config

    cfg = load_config(config, overrides or [])
    if workspace is not None:
        cfg.workspace = workspace
    return cfg


@app.command()
def run(config: ConfigOpt = None, set_: SetOpt = None, workspace: WorkspaceOpt = None) -> None:
    """Run the pipeline on a config (default: the demo preset) and say where its outputs are."""
    from flows.pipeline import run_pipeline

    cfg = _load(config, set_, workspace)
    summary = run_pipeline(cfg)
    console = _console()
    console.print(f"[bold green]pipeline finished[/] in {summary.wall_seconds:.1f} s")
    console.print(f"run directory: [bold]{summary.run_dir}[/]")
    for line in summary.lines:
        console.print(f"  {line}")


@config_app.command("show")
def config_show(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Print the fully resolved config (preset + overrides) as YAML."""
    from flows.config import dump_config

    typer.echo(dump_config(_load(config, set_)), nl=False)


@config_app.command("validate")
def config_validate(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Validate a config; exit 2 with one line per problem if it is invalid."""
    cfg = _load(config, set_)
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


def main() -> None:
    """Console-script entry point: run the app, turning user errors into one line."""
    from rlhf_core.errors import UserError

    try:
        app(standalone_mode=False)
    except UserError as exc:
        console = _console(stderr=True)
        for line in str(exc).splitlines() or [type(exc).__name__]:
            console.print(f"[bold red]error:[/] {line}", soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _console(stderr=True).print("[yellow]interrupted[/]")
        sys.exit(130)
    except Exception as exc:  # click usage errors and aborts
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        raise


if __name__ == "__main__":  # pragma: no cover
    main()
