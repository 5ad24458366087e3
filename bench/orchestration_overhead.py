"""Orchestration + tracking overhead (issue 6 goal: <= 3% of wall time).

    .venv/bin/python bench/orchestration_overhead.py --config smoke [--repeats 2]
    .venv/bin/python bench/orchestration_overhead.py --config demo  --repeats 1

Runs, each in a fresh subprocess, alternating order:
  * "orchestrated": `rlhf run` (the Prefect flow with its subflows and tasks, MLflow parent +
    nested runs, dataset inputs, artifacts, model registry, Prefect artifacts);
  * "bare": the same stage task bodies (`task.fn`, DPO too when the preset enables it) called in
    the same order with tracking off, no Prefect engine, no MLflow.
Reports the wall time of each and the overhead share (orchestrated - bare) / orchestrated, and
beside it the CPU seconds the stages took (this process and its child processes, the Prefect
API server included): on a shared machine wall time carries other jobs' noise, CPU time less.
Each stage task's body (`Task.fn`) is timed on both sides, so the overhead splits into what the
stages' own MLflow tracking adds inside the bodies (per stage) and what Prefect's engine adds
outside them (`engine_overhead_s`). Because the bodies themselves vary by tens of seconds between
runs, the orchestrated side also accounts for its overhead directly (`accounted`): the engine's
time outside the bodies, plus the main-thread time of every tracking call inside them (MLflow
client, tracker, registry, Prefect artifacts; `tracking_calls_s` per stage), plus the Prefect
API server's CPU seconds divided by the cores. Start-up is reported separately, as `rlhf run` does it (flows.pipeline.start_up): Prefect's
ephemeral API, with a new workspace's MLflow store created beside it while the API starts;
paid once per process, not per stage. `process_wall_s` is the whole subprocess, start-up included.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CPU = r"""
import functools, threading, time as _time
import psutil
STAGE_S = {}
TRACKING_S = {}  # per stage: main-thread seconds inside tracking/registry/Prefect-artifact calls, in the body
_IN_BODY = []  # the stage whose body the main thread is in
_DEPTH = threading.local()
def time_stage_bodies():
    # Each stage task's own body (Task.fn), timed alike on both sides: on the orchestrated side
    # what lies outside the bodies is Prefect's engine (task/flow runs, states, caching, the
    # MLflow parent run), what lies inside and not on the bare side is the stage's MLflow tracking.
    import tasks.data, tasks.evaluation, tasks.training
    stages = {"data": tasks.data.prepare_data, "sft": tasks.training.train_sft_stage,
              "reward": tasks.training.train_reward_stage, "ppo": tasks.training.train_ppo_stage,
              "dpo": tasks.training.train_dpo_stage, "eval": tasks.evaluation.evaluate_stage}
    for name, task in stages.items():
        def timed(*args, __fn=task.fn, __name=name, **kwargs):
            t = _time.perf_counter()
            _IN_BODY.append(__name)
            try:
                return __fn(*args, **kwargs)
            finally:
                _IN_BODY.pop()
                STAGE_S[__name] = STAGE_S.get(__name, 0.0) + _time.perf_counter() - t
        task.fn = functools.wraps(task.fn)(timed)
def _timed_call(fn):
    # outermost call only (a tracker method calling the client counts once), main thread, in a body
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        depth = getattr(_DEPTH, "n", 0)
        if depth or not _IN_BODY or threading.current_thread() is not threading.main_thread():
            return fn(*args, **kwargs)
        _DEPTH.n = 1
        t = _time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _DEPTH.n = 0
            TRACKING_S[_IN_BODY[-1]] = TRACKING_S.get(_IN_BODY[-1], 0.0) + _time.perf_counter() - t
    return wrapper
def time_tracking_calls():
    # The direct account of the in-body overhead: every call the stage bodies make into MLflow's
    # client, our tracker, the registry and Prefect's artifacts (all the bare side skips),
    # timed on the main thread. The metric sender thread works beside training and is not counted.
    import inspect
    from mlflow.tracking import MlflowClient
    import prefect.artifacts, tasks.context, tasks.registry, tasks.tracking
    for cls in (MlflowClient, tasks.tracking.MlflowTracker):
        for attr, member in list(vars(cls).items()):
            if inspect.isfunction(member) and (attr == "__init__" or not attr.startswith("_")):
                setattr(cls, attr, _timed_call(member))
    for attr in ("register", "log_checkpoint", "publish_markdown", "publish_agreement", "parent_tracker"):
        setattr(tasks.context.StageContext, attr, _timed_call(getattr(tasks.context.StageContext, attr)))
    for module, names in ((tasks.registry, ("register_candidate", "promote_if_better")),
                          (prefect.artifacts, ("create_markdown_artifact", "create_table_artifact", "create_link_artifact"))):
        for attr in names:
            if hasattr(module, attr):
                setattr(module, attr, _timed_call(getattr(module, attr)))
def server_cpu_s():
    # CPU of the live child processes (the ephemeral Prefect API server): it competes with training for the 2 cores
    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return total
def cpu_s():
    # user + system CPU of this process, of its children already reaped, and of the live ones (the Prefect API server)
    return sum(psutil.Process().cpu_times()[:4]) + server_cpu_s()
"""

BARE = CPU + r"""
import json, sys, time
from pathlib import Path
from flows.runtime import prepare_environment
from rlhf_core.config.pipeline import load_config
cfg = load_config(sys.argv[1], sys.argv[2:])
prepare_environment(cfg.workspace)
t0 = time.perf_counter()
from tasks.artifacts import workspace_from
from tasks.context import StageContext
from tasks.data import prepare_data
from tasks.evaluation import evaluate_stage
from tasks.training import fetch_base_model, train_dpo_stage, train_ppo_stage, train_reward_stage, train_sft_stage
time_stage_bodies()
if cfg.torch_threads:
    import torch; torch.set_num_threads(cfg.torch_threads)
imports = time.perf_counter() - t0
run = workspace_from(cfg.workspace).new_run(cfg.name)
ctx = StageContext(run_dir=str(run.path), parent_run_id="", experiment_id="", tracking_uri="",
                   register_models=False, tracking_enabled=False)
t0, c0 = time.perf_counter(), cpu_s()
base = fetch_base_model.fn(cfg.model, str(cfg.model_cache))
prepare_data.fn(cfg.data, cfg.model, str(cfg.model_cache), ctx)
sft = train_sft_stage.fn(cfg, base, ctx)["model_dir"]
train_reward_stage.fn(cfg, sft, ctx)
if cfg.ppo.enabled:
    train_ppo_stage.fn(cfg, sft, ctx)
if cfg.dpo.enabled:  # as the flow: smoke runs the DPO baseline, demo does not
    train_dpo_stage.fn(cfg, sft, ctx)
if cfg.eval.enabled:
    evaluate_stage.fn(cfg, ctx)
print(json.dumps({"stages_s": time.perf_counter() - t0, "stages_cpu_s": cpu_s() - c0, "imports_s": imports,
                  "stage_bodies_s": STAGE_S}))
"""

ORCHESTRATED = CPU + r"""
import json, sys, time
from flows.runtime import prepare_environment
from rlhf_core.config.pipeline import load_config
cfg = load_config(sys.argv[1], sys.argv[2:])
prepare_environment(cfg.workspace)
t0 = time.perf_counter()
from flows.pipeline import start_up
start_up(cfg)  # as `rlhf run`: the ephemeral Prefect API (and a new MLflow store beside it), timed apart
startup = time.perf_counter() - t0
t0 = time.perf_counter()
from flows.stages import rlhf_pipeline
imports = time.perf_counter() - t0
time_stage_bodies()
time_tracking_calls()
t0, c0, s0 = time.perf_counter(), cpu_s(), server_cpu_s()
rlhf_pipeline(cfg)
print(json.dumps({"stages_s": time.perf_counter() - t0, "stages_cpu_s": cpu_s() - c0, "imports_s": imports,
                  "prefect_startup_s": startup, "stage_bodies_s": STAGE_S, "tracking_calls_s": TRACKING_S,
                  "server_cpu_s": server_cpu_s() - s0}))
"""


def _run(script: str, config: str, overrides: list[str]) -> dict:
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", script, config, *overrides], cwd=REPO, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - started
    if out.returncode != 0:
        raise SystemExit(f"benchmark run failed ({out.returncode}):\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = wall
    return result


@contextlib.contextmanager
def _workspace(mode: str, keep: Path | None):
    """A fresh workspace directory: deleted afterwards, or kept under ``keep``."""
    if keep is None:
        with tempfile.TemporaryDirectory(prefix=f"overhead-{mode}-") as ws:
            yield ws
    else:
        keep.mkdir(parents=True, exist_ok=True)
        yield tempfile.mkdtemp(prefix=f"overhead-{mode}-", dir=keep)


def breakdown(runs: dict[str, list[dict]]) -> dict:
    """Where the overhead lies (medians over repeats): each stage body on both sides; on the
    orchestrated side the time outside the bodies (Prefect's engine: flow and task runs, their
    states and heartbeats, caching, and the MLflow parent run) minus the bare side's (only the
    calls between the bodies)."""
    stages = sorted({name for mode in runs.values() for r in mode for name in r["stage_bodies_s"]})
    bodies = {
        name: {mode: round(statistics.median(r["stage_bodies_s"].get(name, 0.0) for r in runs[mode]), 2) for mode in runs}
        for name in stages
    }
    for name, row in bodies.items():
        row["overhead_s"] = round(row["orchestrated"] - row["bare"], 2)
    outside = {mode: statistics.median(r["stages_s"] - sum(r["stage_bodies_s"].values()) for r in runs[mode]) for mode in runs}
    engine = outside["orchestrated"] - outside["bare"]
    out = {
        "stage_bodies_s": bodies,
        "outside_bodies_s": {mode: round(v, 2) for mode, v in outside.items()},
        "engine_overhead_s": round(engine, 2),
        "in_body_tracking_overhead_s": round(sum(row["overhead_s"] for row in bodies.values()), 2),
    }
    orchestrated = [r for r in runs["orchestrated"] if "tracking_calls_s" in r]
    if orchestrated:
        # The direct account, free of the bodies' run-to-run noise: Prefect's engine (outside the
        # bodies) + the tracking calls the bodies make (timed, main thread) + the API server's CPU
        # shared out over the cores it competes for (an estimate of its slowdown of training).
        calls = statistics.median(sum(r["tracking_calls_s"].values()) for r in orchestrated)
        server = statistics.median(r["server_cpu_s"] for r in orchestrated)
        stages_s = statistics.median(r["stages_s"] for r in orchestrated)
        cores = os.cpu_count() or 1
        accounted = engine + calls + server / cores
        out["tracking_calls_s"] = {
            name: round(statistics.median(r["tracking_calls_s"].get(name, 0.0) for r in orchestrated), 2) for name in stages
        }
        out["accounted"] = {
            "engine_s": round(engine, 2),
            "tracking_calls_s": round(calls, 2),
            "server_cpu_s": round(server, 2),
            "server_share_of_cores_s": round(server / cores, 2),
            "overhead_s": round(accounted, 2),
            "overhead_share": round(accounted / stages_s, 4),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="smoke")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], help="extra config overrides")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "orchestration_overhead.json")
    parser.add_argument("--keep-workspaces", type=Path, default=None, metavar="DIR",
                        help="put each run's workspace under DIR and keep it (models, eval results) instead of deleting it")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {"bare": [], "orchestrated": []}
    cache = str(REPO / ".rlhf" / "models")
    for i in range(args.repeats):
        order = ["bare", "orchestrated"] if i % 2 == 0 else ["orchestrated", "bare"]
        for mode in order:
            with _workspace(mode, args.keep_workspaces) as ws:
                overrides = [f"workspace={ws}", f"model.cache_dir={cache}", *args.set]
                if mode == "bare":
                    overrides.append("tracking.enabled=false")
                result = _run(BARE if mode == "bare" else ORCHESTRATED, args.config, overrides)
                runs[mode].append(result)
                print(f"{mode:>12}: stages {result['stages_s']:.1f} s, {result['stages_cpu_s']:.1f} CPU-s", flush=True)
    bare = statistics.median(r["stages_s"] for r in runs["bare"])
    orch = statistics.median(r["stages_s"] for r in runs["orchestrated"])
    bare_cpu = statistics.median(r["stages_cpu_s"] for r in runs["bare"])
    orch_cpu = statistics.median(r["stages_cpu_s"] for r in runs["orchestrated"])
    summary = {
        "config": args.config,
        "repeats": args.repeats,
        "bare_stages_s": round(bare, 2),
        "orchestrated_stages_s": round(orch, 2),
        "overhead_s": round(orch - bare, 2),
        "overhead_share": round((orch - bare) / orch, 4),
        "bare_stages_cpu_s": round(bare_cpu, 2),
        "orchestrated_stages_cpu_s": round(orch_cpu, 2),
        "overhead_cpu_s": round(orch_cpu - bare_cpu, 2),
        "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "startup_s": round(statistics.median(r["prefect_startup_s"] for r in runs["orchestrated"]), 2),
        "bare_process_wall_s": round(statistics.median(r["process_wall_s"] for r in runs["bare"]), 2),
        "orchestrated_process_wall_s": round(statistics.median(r["process_wall_s"] for r in runs["orchestrated"]), 2),
        **breakdown(runs),
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
