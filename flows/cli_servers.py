"""`rlhf ui` and `rlhf deploy`: the servers and the deployments, from the command line.

``register(app)`` adds both commands to the main `rlhf` app (flows/cli.py). Only
typer is imported at module level: prefect and mlflow load inside the commands so
``rlhf --help`` stays fast. ``python -m flows.cli_servers ...`` runs the two commands
on their own (the end-to-end test uses it).
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from rlhf_core.config.presets import preset_names
from rlhf_core.redact import redact_text

LOOPBACK = ("127.0.0.1", "localhost", "::1")
REPO_DIR = Path(__file__).resolve().parent.parent  # where `make label-studio` builds its venv


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


class _Terminated(Exception):
    """SIGTERM turned into an exception so `finally` blocks stop the servers."""


def _raise_terminated(signum, frame):  # noqa: ARG001 - signal handler signature
    raise _Terminated()


def _install_stop_signals() -> dict:
    """Ctrl-C and SIGTERM both stop the command cleanly; return the previous handlers.

    SIGINT is set explicitly: a parent shell that started us in the background may have
    left it ignored, and then Ctrl-C / `kill -INT` would do nothing.
    """
    return {
        signal.SIGTERM: signal.signal(signal.SIGTERM, _raise_terminated),
        signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
    }


def _restore_signals(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def _follow(path: Path, position: int) -> int:
    """Echo the lines appended to ``path`` since ``position``, secrets masked; return the new position."""
    try:
        with open(path, "rb") as fh:
            fh.seek(position)
            chunk = fh.read()
    except OSError:
        return position
    if chunk:
        # Whole lines only, so a secret split across two reads is still masked.
        whole = chunk[: chunk.rfind(b"\n") + 1]
        sys.stdout.write(redact_text(whole.decode("utf-8", errors="replace")))
        sys.stdout.flush()
        return position + len(whole)
    return position


def _block(procs, follow: Path | None = None) -> None:
    """Wait until Ctrl-C / SIGTERM; raise ServerError (with its log tail) if a process dies."""
    from flows.health import ServerError

    position = 0
    while True:
        for proc in procs:
            if not proc.running():
                raise ServerError(
                    f"the {proc.name} ({proc.url}) stopped unexpectedly with code {proc.process.returncode}; "
                    f"last lines of {proc.log_path}:\n{proc.log_tail()}"
                )
        if follow is not None:
            position = _follow(follow, position)
        time.sleep(0.5)


def ui(
    workspace: Annotated[
        Path, typer.Option("--workspace", "-w", help="Workspace whose Prefect and MLflow stores to serve.")
    ] = Path(".rlhf"),
    prefect_port: Annotated[int, typer.Option(min=1, max=65535, help="Prefect server port.")] = 4200,
    mlflow_port: Annotated[int, typer.Option(min=1, max=65535, help="MLflow server port.")] = 5000,
    host: Annotated[
        str,
        typer.Option(help="Interface to listen on. Anything but loopback exposes unauthenticated UIs: see infra/README.md."),
    ] = "127.0.0.1",
    mlflow_allowed_hosts: Annotated[
        Optional[str], typer.Option(help="MLflow --allowed-hosts (Host headers accepted) when not on loopback.")
    ] = None,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds to wait for both servers to be healthy.")] = 180.0,
    label_studio: Annotated[
        bool,
        typer.Option("--label-studio/--no-label-studio", help="Also start Label Studio for `rlhf iterate` rounds "
                     "(make label-studio; admin login from LABEL_STUDIO_USERNAME and LABEL_STUDIO_PASSWORD)."),
    ] = False,
    label_studio_port: Annotated[int, typer.Option(min=1, max=65535, help="Label Studio's port.")] = 8080,
) -> None:
    """Start the Prefect server and the MLflow tracking server (and with --label-studio, Label Studio); stop them on Ctrl-C."""
    from flows.servers import start_servers

    studio_login = _label_studio_login() if label_studio else None  # before anything starts

    console = _console()
    if host not in LOOPBACK:
        _console(stderr=True).print(
            f"[yellow]warning:[/] listening on {host}: neither UI has authentication; "
            "put a reverse proxy with auth in front (infra/README.md)"
        )
    console.print(f"starting the Prefect and MLflow servers for workspace [bold]{workspace.resolve()}[/] ...", soft_wrap=True)
    previous = _install_stop_signals()
    try:
        servers = start_servers(
            workspace, prefect_port=prefect_port, mlflow_port=mlflow_port, host=host,
            timeout=timeout, allowed_hosts=mlflow_allowed_hosts,
        )  # fmt: skip
    except (KeyboardInterrupt, _Terminated):  # start_servers already stopped what it started
        _restore_signals(previous)
        console.print("[yellow]interrupted while starting; stopped[/]")
        return
    studio = None
    try:
        took = ", ".join(f"{name} {sec:.0f} s" for name, sec in servers.startup_seconds.items())
        console.print(f"[green]both servers are healthy[/] ({took})")
        console.print(f"  Prefect UI:  [bold]{servers.prefect_url}[/]")
        # The experiments list in "Model training" mode: MLflow 3 otherwise opens its GenAI view.
        console.print(f"  MLflow UI:   [bold]{servers.mlflow_url}/#/experiments?workflowType=machine_learning[/]", soft_wrap=True)
        console.print("to use them from another shell:")
        # Commands to copy: one line each, however narrow the terminal (a wrapped one breaks the paste),
        # naming this workspace absolutely (the other shell may be elsewhere).
        here = shlex.quote(str(workspace.resolve()))
        console.print(f"  export PREFECT_API_URL={servers.prefect_api_url}", soft_wrap=True)
        console.print(f"  rlhf deploy --workspace {here} --tracking-uri {servers.mlflow_url}", soft_wrap=True, markup=False)
        console.print(f"  rlhf run --workspace {here} --set tracking.tracking_uri={servers.mlflow_url}", soft_wrap=True, markup=False)
        watched = [servers.prefect, servers.mlflow]
        if studio_login is not None:
            studio = _start_label_studio(console, workspace, host, label_studio_port, studio_login, timeout)
            watched.append(studio)
        console.print(f"logs: {servers.prefect.log_path.parent}   (Ctrl-C to stop)", soft_wrap=True)
        _block(watched)
    except (KeyboardInterrupt, _Terminated):
        pass
    finally:
        console.print("stopping the servers ...")
        if studio is not None:
            studio.stop()
        servers.stop()
        _restore_signals(previous)
    console.print("[green]stopped[/]")

def _label_studio_login() -> tuple[str, str]:
    """Label Studio's admin login from the environment (never a flag: flags show in `ps` and shell history)."""
    from rlhf_core.errors import ConfigError
    from rlhf_core.label_studio import PASSWORD_ENV, USERNAME_ENV

    user, password = os.environ.get(USERNAME_ENV, ""), os.environ.get(PASSWORD_ENV, "")
    if not (user and password):
        raise ConfigError(f"--label-studio needs {USERNAME_ENV} (an email) and {PASSWORD_ENV} in the environment "
                          "(the admin login Label Studio creates on its first start)")
    return user, password


def _start_label_studio(console, workspace: Path, host: str, port: int, login: tuple[str, str], timeout: float):
    """Label Studio beside the two servers, its sqlite store in ``<workspace>/label-studio``."""
    from flows.label_studio_server import start_label_studio
    from rlhf_core.label_studio import URL_ENV

    studio = start_label_studio(REPO_DIR / ".venv-label-studio", workspace / "label-studio", port, *login,
                                workspace / "logs" / "label-studio.log", host=host, timeout_s=max(timeout, 300.0))
    console.print(f"  Label Studio: [bold]{studio.url}[/] ({studio.startup_s:.0f} s; sign in as {login[0]})", soft_wrap=True)
    console.print(f"  export {URL_ENV}={studio.url}   # then: rlhf iterate --labeler label-studio", soft_wrap=True)
    return studio


def deploy(
    config: Annotated[
        Optional[str],
        typer.Option("--config", "-c", help=f"YAML config or preset name ({', '.join(preset_names())}): the deployments' default parameters."),
    ] = None,
    set_: Annotated[
        Optional[list[str]], typer.Option("--set", "-s", help="Override a config key (repeatable).")
    ] = None,
    workspace: Annotated[
        Optional[Path], typer.Option("--workspace", "-w", help="Workspace the scheduled runs write to (default: the config's).")
    ] = None,
    cron: Annotated[
        Optional[str],
        typer.Option(help="The pipeline's schedule, cron syntax in UTC (default '0 3 * * *' = 03:00 daily; '' for none)."),
    ] = None,
    interval: Annotated[
        Optional[float], typer.Option(help="Instead of --cron: run the pipeline every SECONDS.", metavar="SECONDS")
    ] = None,
    paused: Annotated[
        bool, typer.Option("--paused/--active", help="Register the schedule off (turn it on in the UI) or on.")
    ] = True,
    pool: Annotated[str, typer.Option(help="Prefect process work pool (created if missing).")] = "rlhf-process",
    name: Annotated[Optional[str], typer.Option(help="Deployment name (default: the config's name).")] = None,
    prefect_api_url: Annotated[
        Optional[str], typer.Option(help="Prefect API (default: $PREFECT_API_URL or http://127.0.0.1:4200/api).")
    ] = None,
    tracking_uri: Annotated[
        Optional[str], typer.Option(help="MLflow tracking URI for the runs, e.g. http://127.0.0.1:5000 (default: the config's).")
    ] = None,
    worker: Annotated[bool, typer.Option("--worker/--no-worker", help="Start a worker and run until Ctrl-C.")] = True,
    scheduled_flow: Annotated[
        str, typer.Option(help="The flow the schedule goes on: rlhf-pipeline, or rlhf-iterate (one round of iterated "
                          "RLHF from the registry's champion each time).")
    ] = "rlhf-pipeline",
) -> None:
    """Register a deployment per flow (the pipeline's, or with --scheduled-flow rlhf-iterate the round's, with a schedule) and start a worker for them.

    Every flow (the whole pipeline and each stage) can be run by hand from the Prefect UI; the schedule goes on the pipeline only. Relative data paths resolve against the current directory, else the repository (the presets' data/demo files); a missing file is refused.
    """
    from flows.deploy import DEFAULT_CRON, absolutize_paths, deploy_flows, make_schedule, resolve_inputs
    from flows.servers import preflight, start_worker
    from rlhf_core.config.pipeline import load_config

    from flows.deploy import SCHEDULABLE_FLOWS
    from rlhf_core.errors import UserError

    if scheduled_flow not in SCHEDULABLE_FLOWS:
        raise UserError(f"--scheduled-flow {scheduled_flow!r}: one of {', '.join(SCHEDULABLE_FLOWS)}")
    schedule = make_schedule(DEFAULT_CRON if cron is None and interval is None else cron, interval, not paused)
    cfg = load_config(config, set_ or [])
    if workspace is not None:
        cfg.workspace = workspace
    # Absolute: the worker runs flows from the repository directory, not from here.
    resolve_inputs(cfg, Path.cwd())
    absolutize_paths(cfg, Path.cwd())
    if tracking_uri:
        from pydantic import ValidationError

        from rlhf_core.config.pipeline import format_validation_error
        from rlhf_core.errors import ConfigError

        try:  # validated like the config's own value: no password in it (rlhf_core/redact.py)
            cfg.tracking.tracking_uri = tracking_uri
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, "--tracking-uri")) from exc
    api = prefect_api_url or os.environ.get("PREFECT_API_URL") or "http://127.0.0.1:4200/api"
    preflight(cfg.tracking.tracking_uri, api)

    console = _console()
    deployed = deploy_flows(cfg, api, pool=pool, schedule=schedule, deployment_name=name, scheduled_flow=scheduled_flow)
    console.print(f"[green]deployed[/] {len(deployed)} flows as '{deployed[0].deployment_name}' on work pool '{pool}':")
    width = max(len(d.flow_name) for d in deployed)
    for d in deployed:
        console.print(f"  {d.flow_name:<{width}}  {d.schedule}", soft_wrap=True)
    console.print(f"{deployed[0].flow_name} in the Prefect UI:")
    console.print(deployed[0].url, soft_wrap=True)  # one line, even where the terminal is narrower
    console.print(f"runs write to {cfg.workspace}", soft_wrap=True)
    console.print(f"tracking: {redact_text(cfg.tracking.tracking_uri or 'the workspace sqlite store')}", soft_wrap=True)
    if not worker:
        console.print("start a worker with:")
        console.print(f"  PREFECT_API_URL={api} prefect worker start --pool {pool}", soft_wrap=True)
        return
    previous = _install_stop_signals()
    proc = start_worker(pool, api, cfg.workspace)
    console.print(f"worker started on pool '{pool}'; Ctrl-C to stop; log:")
    console.print(str(proc.log_path), soft_wrap=True)
    try:
        _block([proc], follow=proc.log_path)
    except (KeyboardInterrupt, _Terminated):
        pass
    finally:
        proc.stop()
        _restore_signals(previous)
    console.print("[green]worker stopped[/]")


def register(app: typer.Typer) -> None:
    """Add the `ui` and `deploy` commands to ``app``."""
    app.command("ui")(ui)
    app.command("deploy")(deploy)


def main() -> None:
    """`python -m flows.cli_servers`: the two commands alone, with the CLI's error handling."""
    from rlhf_core.errors import UserError

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True)
    register(app)
    try:
        app(standalone_mode=False)
    except UserError as exc:
        for line in redact_text(str(exc)).splitlines() or [type(exc).__name__]:
            _console(stderr=True).print(f"[bold red]error:[/] {line}", soft_wrap=True)
        sys.exit(exc.exit_code)
    except Exception as exc:
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, (click.exceptions.Exit, click.exceptions.Abort)):
            sys.exit(getattr(exc, "exit_code", 1))
        raise


if __name__ == "__main__":
    main()
