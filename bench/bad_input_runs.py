"""Bad configs, bad models, bad runs and interrupts against the real CLI: a clear error or a handled end?

    .venv/bin/python bench/bad_input_runs.py [--only SUBSTRING] [--fast] [--keep]

Each case builds what it needs in a fresh directory (a config file, a model directory, a run to
resume) and runs one real command as a new user would (`rlhf config validate`, `rlhf run`,
`rlhf eval`, `rlhf model info`), as a subprocess in its own session with a timeout (``COLUMNS=80``,
no PREFECT_* variables: each `rlhf run` starts its own ephemeral API). The interrupt cases wait
until SFT trains, then send Ctrl-C as a terminal does (SIGINT to the process group), SIGTERM or
SIGKILL to `rlhf run`, and follow every process of the session and every descendant seen.

Outcome classes (:func:`classify`):

* ``clear``     non-zero exit with `error:` line(s) naming what the case requires (the key, file or
  rule), no traceback, no Prefect ERROR records, nothing written that should not be;
* ``handled``   an interrupt: exit 130 (Ctrl-C) / 143 or 130 (SIGTERM) with ONE line saying how to
  carry on (`rlhf run --resume RUN_ID ...`), or -9 (SIGKILL); nothing left running afterwards;
* ``wrong``     anything else: exit 0 where it should fail, an error that does not name the key or
  file, a file changed or created by a refused command, a process left behind;
* ``traceback`` a Python traceback in the output;
* ``hang``      the command did not end within the case's timeout.

Prints a table (80 columns) and the counts; writes ``bench/results/bad_input_runs.json``.
A plain module: importing it runs nothing (``bench/bad_inputs.py`` may take :data:`CASES`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MODEL_CACHE = ROOT / ".rlhf" / "models"  # the smoke preset's tokenizer (`make test` fetches it)
CLASSES = ("clear", "handled", "wrong", "traceback", "hang")
FAST_S, RUN_S, SLOW_S = 60.0, 240.0, 420.0  # timeouts: a refused command, a failing run, an interrupt


# ---------------------------------------------------------------------------- cases


@dataclass
class Command:
    """What a case's setup made: the command to run and what its outcome must show."""

    argv: list[str]  # after `rlhf`
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = ROOT
    say: list[str] = field(default_factory=list)  # words the error line(s) must hold (clear)
    unchanged: list[Path] = field(default_factory=list)  # trees a refused command must leave as they were
    absent: list[Path] = field(default_factory=list)  # paths a refused command must not create
    signal: str | None = None  # "SIGINT" (to the process group, as Ctrl-C), "SIGTERM", "SIGKILL" (to `rlhf run`)
    when: str = "sft: step"  # ... sent once a line of the output starts with this


@dataclass
class Case:
    name: str
    group: str  # config | data | model | resume | run | interrupt
    setup: Callable[[Path], Command]
    expect: str = "clear"  # clear | handled
    timeout: float = FAST_S
    note: str = ""


def _write(tmp: Path, name: str, content: str | bytes) -> Path:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _validate(*sets: str, config: str = "smoke", say: list[str] | None = None) -> Callable[[Path], Command]:
    """`rlhf config validate -c CONFIG --set ...` ({tmp} in a value is the case's directory)."""

    def setup(tmp: Path) -> Command:
        argv = ["config", "validate", "-c", config.format(tmp=tmp)]
        for assignment in sets:
            argv += ["--set", assignment.format(tmp=tmp)]
        return Command(argv, say=[w.format(tmp=tmp) for w in say or []])

    return setup


def _config_file(content: str | bytes, say: list[str]) -> Callable[[Path], Command]:
    def setup(tmp: Path) -> Command:
        path = _write(tmp, "config.yaml", content)
        return Command(["config", "validate", "-c", str(path)], say=[str(path), *say])

    return setup


def _hf_dir(tmp: Path, name: str = "model", *, context: int = 128, weights: str = "model.safetensors",
            config: bool = True) -> Path:
    root = tmp / name
    root.mkdir(parents=True)
    if config:
        (root / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": context}))
    (root / weights).write_bytes(b"\0" * 64)
    return root


def _with_dir(make: Callable[[Path], Path], *sets: str, say: list[str], command: str = "validate") -> Callable[[Path], Command]:
    """A model/data path the case makes (``{path}`` in the overrides), then validate or model info."""

    def setup(tmp: Path) -> Command:
        path = make(tmp)
        values = [s.format(path=path, tmp=tmp) for s in sets]
        head = ["config", "validate", "-c", "smoke"] if command == "validate" else [
            "model", "info", "-c", "smoke", "-w", str(tmp / "ws")]
        argv = head + [a for s in values for a in ("--set", s)]
        return Command(argv, say=[w.format(path=path, tmp=tmp) for w in say])

    return setup


def _empty_file(tmp: Path) -> Path:
    return _write(tmp, "empty.jsonl", "")


def _dangling(tmp: Path) -> Path:
    link = tmp / "gone.jsonl"
    link.symlink_to(tmp / "never-written.jsonl")
    return link


def _gguf(content: bytes) -> Callable[[Path], Path]:
    return lambda tmp: _write(tmp, "model.gguf", content)


SMOKE_RUN = ["-c", "smoke", "--set", f"model.cache_dir={MODEL_CACHE}"]
SHORT = ["--set", "ppo.enabled=false", "--set", "dpo.enabled=false", "--set", "eval.enabled=false"]


def _tree_digest(root: Path) -> dict[str, str]:
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _fake_run(ws: Path, *sets: str) -> str:
    """A run directory as `rlhf run` leaves it after its data stage (config.yaml, data report)."""
    from rlhf_core.config.pipeline import dump_config, load_config

    run_id = "20260101-000000-rlhf-smoke-abcdef"
    run = ws / "runs" / run_id
    (run / "data").mkdir(parents=True)
    cfg = load_config("smoke", [f"model.cache_dir={MODEL_CACHE}", f"workspace={ws}", *sets])
    (run / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
    (run / "data" / "report.json").write_text("{}")
    return run_id


def _resume(run_id_of: Callable[[Path, Path], str], *sets: str, say: list[str], other_ws: bool = False,
            command: str = "run") -> Callable[[Path], Command]:
    """`rlhf run --resume ID` (or `rlhf eval ID`) on a workspace holding one earlier run."""

    def setup(tmp: Path) -> Command:
        ws = tmp / "ws"
        made = _fake_run(ws)
        run_id = run_id_of(tmp, ws) if not isinstance(run_id_of, str) else run_id_of
        target = tmp / "other-ws" if other_ws else ws
        extra = [a for s in sets for a in ("--set", s)]
        if command == "run":
            argv = ["run", *SMOKE_RUN, "-w", str(target), *extra, "--resume", run_id]
        else:
            argv = ["eval", run_id, *SMOKE_RUN, "-w", str(target), *extra]
        words = [w.format(run=made, ws=ws, tmp=tmp) for w in say]
        return Command(argv, say=words, unchanged=[ws], absent=[tmp / "other-ws"] if other_ws else [])

    return setup


def _run_refused(*sets: str, say: list[str], make: Callable[[Path], Any] | None = None) -> Callable[[Path], Command]:
    """`rlhf run` refused before it starts anything: no workspace is created."""

    def setup(tmp: Path) -> Command:
        if make is not None:
            make(tmp)
        ws = tmp / "ws"
        extra = [a for s in sets for a in ("--set", s.format(tmp=tmp))]
        return Command(["run", *SMOKE_RUN, "-w", str(ws), *extra], say=[w.format(tmp=tmp) for w in say], absent=[ws])

    return setup


def _run_fails(*sets: str, say: list[str]) -> Callable[[Path], Command]:
    """`rlhf run` that fails inside the flow (only the run can find the problem)."""

    def setup(tmp: Path) -> Command:
        extra = [a for s in sets for a in ("--set", s)]
        return Command(["run", *SMOKE_RUN, "-w", str(tmp / "ws"), *SHORT, *extra], say=say)

    return setup


def _interrupt(sig: str) -> Callable[[Path], Command]:
    def setup(tmp: Path) -> Command:
        argv = ["run", *SMOKE_RUN, "-w", str(tmp / "ws"), "--set", "sft.optim.max_steps=100000", *SHORT]
        return Command(argv, signal=sig)

    return setup


CASES: list[Case] = [
    # --- the config file and its overrides
    Case("yaml-malformed", "config", _config_file("a: [\n", ["malformed YAML", "line 2"])),
    Case("yaml-top-level-list", "config", _config_file("- 1\n- 2\n", ["top level must be a mapping"])),
    Case("yaml-not-utf8", "config", _config_file(b"name: caf\xe9\n", ["not UTF-8"])),
    Case("yaml-unknown-section", "config", _config_file("modle:\n  base: tiny\n", ["modle: unknown key"])),
    Case("config-file-missing", "config", _validate(config="{tmp}/missing.yaml", say=["config file not found"])),
    Case("config-is-directory", "config", _validate(config="{tmp}", say=["is a directory"])),
    Case("config-unknown-preset", "config", _validate(config="smok", say=["neither a file nor a preset"])),
    Case("set-unknown-key", "config", _validate("sft.optim.max_stepz=3", say=["sft.optim.max_stepz: unknown key"])),
    Case("set-wrong-type", "config", _validate("sft.optim.max_steps=abc", say=["sft.optim.max_steps", "integer"])),
    Case("set-out-of-range", "config", _validate("sft.optim.max_steps=0", say=["sft.optim.max_steps", "greater than"])),
    Case("set-bad-choice", "config", _validate("model.dtype=float8", say=["model.dtype"])),
    Case("set-no-equals", "config", _validate("nonsense", say=["expected KEY=VALUE"])),
    Case("set-into-a-scalar", "config", _validate("seed.x=1", say=["'seed' is not a section"])),
    Case("set-warmup-past-steps", "config", _validate("sft.optim.warmup_steps=10", say=["warmup_steps (10) exceeds"])),
    Case("credential-in-uri", "config", _validate("tracking.tracking_uri=postgresql://u:pw@db/mlflow",
                                                  say=["tracking.tracking_uri", "password"])),
    Case("hf-token-in-a-field", "config", _validate("name=hf_abcdefghijklmnopqrstuvwxyzABCD", say=["name:", "token"])),
    # --- data files the config names
    Case("data-file-missing", "data", _validate("data.preferences=[{tmp}/nope.jsonl]",
                                                say=["data.preferences[0]", "no such file"])),
    Case("data-path-is-directory", "data", _validate("data.demonstrations=[{tmp}]",
                                                     say=["data.demonstrations[0]", "is a directory"])),
    Case("data-file-empty", "data", _with_dir(_empty_file, "data.rl_prompts=[{path}]", say=["data.rl_prompts[0]", "is empty"])),
    Case("data-dangling-symlink", "data", _with_dir(_dangling, "data.preferences=[{path}]",
                                                    say=["data.preferences[0]", "dangling symlink"])),
    Case("data-preferences-empty-list", "data", _validate("data.preferences=[]", say=["data.preferences: empty list"])),
    Case("data-relative-from-elsewhere", "data", lambda tmp: Command(["config", "validate", "-c", "smoke"], cwd=tmp,
                                                                     say=["data.demonstrations[0]", "relative to"])),
    # --- the model
    Case("model-dir-missing", "model", _validate("model.base=./no-such-model", say=["model.base", "does not exist"])),
    Case("model-dir-no-config-json", "model", _with_dir(lambda t: _hf_dir(t, config=False), "model.base={path}",
                                                        say=["model.base", "no config.json"])),
    Case("model-dir-pickled-only", "model", _with_dir(lambda t: _hf_dir(t, weights="pytorch_model.bin"),
                                                      "model.base={path}", say=["model.base", "pickled weights"])),
    Case("model-gguf-corrupt", "model", _with_dir(_gguf(b"<html>404</html>"), "model.base={path}",
                                                  say=["model.base", "not a GGUF file"])),
    Case("model-gguf-missing", "model", _validate("model.base={tmp}/absent.gguf", say=["model.base", "not found"])),
    Case("model-gguf_file-not-in-dir", "model", _with_dir(lambda t: _hf_dir(t), "model.base={path}",
                                                          "model.gguf_file=q4.gguf", say=["model.gguf_file", "q4.gguf"])),
    Case("max-length-past-tiny-context", "model", _validate("sft.optim.max_length=100000",
                                                            say=["sft.optim.max_length", "context of 512"])),
    Case("max-length-past-dir-context", "model", _with_dir(
        lambda t: _hf_dir(t, context=128), "model.base={path}", *[f"{s}.optim.max_length=128" for s in ("reward", "ppo", "dpo")],
        "sft.optim.max_length=256", say=["sft.optim.max_length: 256", "context of 128", "config.json"])),
    Case("ppo-new-tokens-past-context", "model", _validate("ppo.max_new_tokens=600", say=["ppo.max_new_tokens", "context"])),
    Case("tiny-heads-do-not-divide", "model", _validate("model.tiny.hidden_size=66", say=["model.tiny.hidden_size"])),
    Case("model-info-corrupt-gguf", "model", _with_dir(_gguf(b"GGUF" + b"\0" * 60), "model.base={path}",
                                                       say=["model.gguf"], command="info"),
         note="magic bytes right, the rest garbage: only reading it can tell"),
    # --- rlhf run / eval refused before anything starts
    Case("run-missing-data-file", "run", _run_refused("data.preferences=[{tmp}/nope.jsonl]",
                                                      say=["data.preferences[0]", "no such file"])),
    Case("run-corrupt-gguf", "run", _run_refused("model.base={tmp}/model.gguf", make=_gguf(b"\x00" * 64),
                                                 say=["model.base", "model.gguf", "not a GGUF file"])),
    Case("resume-dotdot", "resume", _resume("..", say=["--resume '..'", "not a path"])),
    Case("resume-absolute-path", "resume", _resume(lambda tmp, ws: str(ws / "runs"), say=["not a path"])),
    Case("resume-unknown-id", "resume", _resume("20990101-no-such-run", say=["20990101-no-such-run", "no such run"])),
    Case("resume-other-workspace", "resume", _resume(lambda tmp, ws: "20260101-000000-rlhf-smoke-abcdef",
                                                     say=["no such run"], other_ws=True)),
    Case("resume-other-config", "resume", _resume(lambda tmp, ws: "20260101-000000-rlhf-smoke-abcdef",
                                                  "sft.optim.max_steps=5",
                                                  say=["another config", "sft.optim.max_steps: 4 -> 5", "-c {ws}/runs/{run}/config.yaml"])),
    Case("eval-dotdot", "resume", _resume("..", say=["rlhf eval '..'", "not a path"], command="eval")),
    Case("eval-unknown-run", "resume", _resume("nope", say=["nope"], command="eval")),
    # --- a failure only the run finds: one error line and the log file
    Case("run-rows-longer-than-max-length", "run", _run_fails("sft.optim.max_length=16",
                                                              say=["over max_length 16", "optim.truncate_prompt"]),
         timeout=RUN_S, note="the data decide: fails inside the SFT stage"),
    # --- ended from outside, mid-SFT
    Case("ctrl-c-mid-sft", "interrupt", _interrupt("SIGINT"), "handled", SLOW_S),
    Case("sigterm-mid-sft", "interrupt", _interrupt("SIGTERM"), "handled", SLOW_S),
    Case("sigkill-mid-sft", "interrupt", _interrupt("SIGKILL"), "handled", SLOW_S),
]


# ---------------------------------------------------------------------------- running


@dataclass
class Result:
    """One case's run, as :func:`classify` reads it."""

    name: str
    group: str
    expect: str
    code: int | None  # None: killed at the timeout
    output: str
    seconds: float
    timed_out: bool = False
    say: list[str] = field(default_factory=list)
    signal: str | None = None
    after_signal: list[str] = field(default_factory=list)  # output lines from the signal on
    leftovers: list[str] = field(default_factory=list)  # processes still alive after the end
    changed: list[str] = field(default_factory=list)  # files a refused command wrote or changed
    outcome: str = ""
    why: str = ""


RESUME_LINE = re.compile(r"^(interrupted \(Ctrl-C\)|stopped by SIG\w+): run \S+ stopped .*carry on with: rlhf run --resume \S+")
EXPECTED_CODES = {"SIGINT": (130,), "SIGTERM": (143, 130), "SIGKILL": (-9,)}


def classify(result: Result) -> tuple[str, str]:
    """(outcome class, why) of one result: clear / handled / wrong / traceback / hang."""
    if result.timed_out:
        return "hang", f"no end within {result.seconds:.0f} s"
    if "Traceback (most recent call last)" in result.output:
        return "traceback", "a Python traceback in the output"
    if result.leftovers:
        return "wrong", f"left running: {result.leftovers[0]}"
    if result.changed:
        return "wrong", f"written by a refused command: {result.changed[0]}"
    if result.signal:
        if result.code not in EXPECTED_CODES[result.signal]:
            return "wrong", f"exit {result.code} after {result.signal}"
        if result.signal != "SIGKILL":
            told = [line for line in result.after_signal if RESUME_LINE.match(line)]
            if len(told) != 1:
                return "wrong", f"{len(told)} resume lines after {result.signal}"
            noise = [line for line in result.after_signal
                     if line not in told and any(w in line for w in ("ERROR", "error", "Crash", "WARNING"))]
            if noise:
                return "wrong", f"more than one line: {noise[0][:60]}"
        return "handled", ""
    if result.code == 0:
        return "wrong", "exit 0"
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    if not errors:
        return "wrong", f"exit {result.code} without an error line"
    if any(" | ERROR " in line for line in result.output.splitlines()):
        return "wrong", "Prefect's ERROR records on the console"
    said = "\n".join(errors)
    missing = [w for w in result.say if w not in said]
    if missing:
        return "wrong", f"the error does not say {missing[0]!r}"
    return "clear", ""


def _session_processes(pid: int) -> list[Any]:
    import psutil

    found = []
    try:
        found = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        pass
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == pid:
                found.append(proc)
        except (ProcessLookupError, PermissionError):
            continue
    return found


def _alive(procs: dict[int, Any]) -> list[str]:
    import psutil

    alive = []
    for proc in procs.values():
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"pid {proc.pid} {' '.join(proc.cmdline())[:60]}")
        except psutil.NoSuchProcess:
            continue
    return alive


def run_case(case: Case, work: Path) -> Result:
    """Set the case up in ``work``, run its command, and classify what happened."""
    import psutil

    cmd = case.setup(work)
    before = {str(p): _tree_digest(p) for p in cmd.unchanged}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"COLUMNS": "80", "HF_HUB_OFFLINE": "1", **cmd.env})
    argv = [sys.executable, "-m", "flows.cli", *cmd.argv]
    started = time.monotonic()
    proc = subprocess.Popen(argv, cwd=cmd.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: lines.extend(
        (time.monotonic(), raw.decode(errors="replace").rstrip()) for raw in proc.stdout), daemon=True)
    reader.start()
    seen: dict[int, Any] = {}
    sent_at, timed_out = None, False
    deadline = started + case.timeout
    while proc.poll() is None:
        for p in _session_processes(proc.pid):
            seen.setdefault(p.pid, p)
        if cmd.signal and sent_at is None and any(line.startswith(cmd.when) for _, line in lines):
            sent_at = time.monotonic()
            sig = getattr(signal, cmd.signal)
            os.killpg(proc.pid, sig) if cmd.signal == "SIGINT" else os.kill(proc.pid, sig)
        if time.monotonic() > deadline:
            timed_out = True
            break
        time.sleep(0.2)
    seconds = time.monotonic() - (sent_at or started)
    leftovers: list[str] = []
    if timed_out:
        for p in [*seen.values(), psutil.Process(proc.pid)]:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
    else:
        gone_by = time.monotonic() + 15  # what outlives `rlhf run` must go within seconds
        while (leftovers := _alive(seen)) and time.monotonic() < gone_by:
            time.sleep(0.2)
        for p in seen.values():  # never leave one behind for the next case
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
    proc.wait()
    reader.join(timeout=5)
    changed = []
    for root, digest in before.items():
        after = _tree_digest(Path(root))
        changed += [f"{root}/{name}" for name in sorted(digest.keys() | after.keys()) if digest.get(name) != after.get(name)]
    changed += [str(p) for p in cmd.absent if p.exists()]
    result = Result(
        case.name, case.group, case.expect, proc.returncode if not timed_out else None,
        "\n".join(line for _, line in lines), round(seconds, 2), timed_out, cmd.say, cmd.signal,
        [line for t, line in lines if sent_at is not None and t >= sent_at and line.strip()], leftovers, changed,
    )
    result.outcome, result.why = classify(result)
    return result


def _table(results: list[Result]) -> str:
    rows = [f"{'case':<31} {'group':<9} {'expect':<7} {'outcome':<9} {'exit':>5} {'s':>6}", "-" * 72]
    for r in results:
        code = "-" if r.code is None else str(r.code)
        mark = "" if r.outcome == r.expect else " *"
        rows.append(f"{r.name[:31]:<31} {r.group:<9} {r.expect:<7} {r.outcome:<9} {code:>5} {r.seconds:>6.1f}{mark}")
        if r.outcome != r.expect:
            rows.append(f"    {r.why}"[:80])
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run the cases whose name holds this text")
    parser.add_argument("--fast", action="store_true", help="leave out the interrupts and the failing run")
    parser.add_argument("--keep", action="store_true", help="keep each case's directory (printed)")
    parser.add_argument("--out", type=Path, default=RESULTS / "bad_input_runs.json")
    args = parser.parse_args(argv)
    cases = [c for c in CASES if (not args.only or args.only in c.name) and (not args.fast or c.timeout <= FAST_S)]
    base = Path(tempfile.mkdtemp(prefix="bad-input-runs-"))
    results: list[Result] = []
    started = time.monotonic()
    try:
        for case in cases:
            work = base / case.name
            work.mkdir()
            result = run_case(case, work)
            results.append(result)
            print(f"{case.name}: {result.outcome}{' (' + result.why + ')' if result.why else ''}", flush=True)
    finally:
        if args.keep:
            print(f"case directories: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    counts = {c: sum(r.outcome == c for r in results) for c in CLASSES}
    as_expected = sum(r.outcome == r.expect for r in results)
    print()
    print(_table(results))
    print()
    print(", ".join(f"{c} {n}" for c, n in counts.items()) + f"; as expected {as_expected}/{len(results)}"
          f" ({time.monotonic() - started:.0f} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": " ".join([Path(sys.executable).name, "bench/bad_input_runs.py", *(argv or sys.argv[1:])]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "counts": counts, "as_expected": as_expected, "cases": len(results),
        "results": [{k: v for k, v in asdict(r).items() if k != "output"} | {"output_tail": r.output[-1500:]}
                    for r in results],
    }, indent=2))
    print(f"written: {args.out}")
    return 0 if as_expected == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
