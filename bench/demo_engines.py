"""Demo pipeline wall time, and its PPO and evaluation stages on each rollout engine (issue 20).

    .venv/bin/python bench/demo_engines.py                      # demo preset, ~35 min on 2 cores
    .venv/bin/python bench/demo_engines.py --config smoke \\
        --set model.tiny.hidden_size=128 --set model.tiny.num_heads=2   # a check of the script, ~6 min

1. **pipeline**: ``rlhf run -c <config>`` in a fresh workspace, as ``make run`` runs it on a new
   machine (the base model converted into the workspace first): the process's wall time, and each
   stage's span read off the run's ``run.log`` (from its subflow's start to the next one's; the last
   ends at the log's last line), orchestration included.
   ``--source-run RUN_DIR --workspace WS`` skips this step and reuses a finished run.
2. **engines**: the PPO and evaluation stages again, for each ``ppo.rollout.engine`` (the evaluation
   follows it: ``eval.engine`` unset), ``--repeats`` times in alternating order, each in a fresh
   process: a new run directory whose data, SFT and reward stages are those of the run of step 1
   (linked, not retrained), then the stage task bodies (``train_ppo_stage.fn``, ``evaluate_stage.fn``,
   as ``bench/orchestration_overhead.py``'s bare side calls them) with tracking off. Equal work on
   both sides: the same config, data, SFT and reward models, seeds, steps and prompts; only the
   engine differs. The vllm side's figures include its engine's start (once per stage: PPO and the
   evaluation each start one) and every weight sync; the engine start is read off its log.

Writes ``bench/results/demo_engines.json`` (``--out``). Run it on a quiet machine: the figures are
wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402  (stdlib-only)

REPO = Path(__file__).resolve().parent.parent
ENGINES = ("hf", "vllm")
REUSED_STAGES = ("data", "sft", "reward")  # the stages the engine runs share, linked from the pipeline run

STAGES = r"""
import json, logging, sys, time
from flows.runtime import prepare_environment
from rlhf_core.config.pipeline import load_config
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
logging.getLogger("rlhf_core.rollout.vllm_engine").setLevel(logging.INFO)  # 'ready in X s', the weight syncs
cfg = load_config(sys.argv[1], sys.argv[3:])
prepare_environment(cfg.workspace)
from tasks.context import StageContext
from tasks.evaluation import evaluate_stage
from tasks.training import train_ppo_stage
if cfg.torch_threads:
    import torch; torch.set_num_threads(cfg.torch_threads)
# imported before the clocks start, as the pipeline's earlier stages have imported them by then
import peft, rlhf_core.evaluation, rlhf_core.ppo.trainer, rlhf_core.rollout.vllm_engine, tasks.stages.eval  # noqa
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification  # noqa
ctx = StageContext(run_dir=sys.argv[2], parent_run_id="", experiment_id="", tracking_uri="", register_models=False,
                   tracking_enabled=False, log_checkpoints=False)
sft = ctx.run.require("sft")["model_dir"]
out = {}
t0 = time.perf_counter()
train_ppo_stage.fn(cfg, sft, ctx)
out["ppo_s"] = time.perf_counter() - t0
t0 = time.perf_counter()
evaluate_stage.fn(cfg, ctx)
out["eval_s"] = time.perf_counter() - t0
print(json.dumps(out))
"""

BEGIN = re.compile(r"^(\S+ \S+) \| .*Beginning subflow run '.*' for flow '([\w-]+)'")
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+) \|")
ENGINE_READY = re.compile(r"ready in ([\d.]+) s")


def stage_spans(run_log: Path) -> dict[str, float]:
    """Seconds from each stage subflow's start to the next one's (the last: to the log's last line)."""

    def when(text: str) -> float:
        return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()

    starts: list[tuple[str, float]] = []
    last = None
    for line in run_log.read_text(encoding="utf-8", errors="replace").splitlines():
        if m := BEGIN.match(line):
            starts.append((m.group(2), when(m.group(1))))
        if m := STAMP.match(line):
            last = when(m.group(1))
    if not starts or last is None:
        raise SystemExit(f"{run_log}: no stage subflow found in the run's log")
    ends = [t for _, t in starts[1:]] + [last]
    return {name: round(end - start, 1) for (name, start), end in zip(starts, ends, strict=True)}


def run_pipeline(config: str, overrides: list[str], workspace: Path) -> dict[str, Any]:
    cmd = [str(REPO / ".venv" / "bin" / "rlhf"), "run", "-c", config, "-w", str(workspace)]
    for s in overrides:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    runs = sorted((workspace / "runs").iterdir())
    return {"command": " ".join(cmd), "process_wall_s": round(wall, 1), "run_dir": str(runs[-1]),
            "stage_spans_s": stage_spans(runs[-1] / "run.log")}


def run_engine(config: str, overrides: list[str], engine: str, source_run: Path, workspace: Path) -> dict[str, Any]:
    run_dir = Path(tempfile.mkdtemp(prefix=f"engines-{engine}-", dir=workspace / "runs"))
    for stage in REUSED_STAGES:
        (run_dir / stage).symlink_to(source_run / stage, target_is_directory=True)
    sets = [*overrides, f"workspace={workspace}", f"ppo.rollout.engine={engine}"]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", STAGES, config, str(run_dir), *sets], cwd=REPO, capture_output=True,
                          text=True, check=False, env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"the {engine} stages failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out = {k: round(v, 1) for k, v in out.items()} | {"engine": engine, "process_wall_s": round(wall, 1),
                                                      "run_dir": str(run_dir)}
    if engine == "vllm":
        out["engine_start_s"] = engine_starts(proc.stderr + proc.stdout)  # PPO's, then the evaluation's
        out["weight_syncs"] = len(re.findall(r"vllm weight sync \d+:", proc.stderr))
    shutil.rmtree(run_dir / "ppo", ignore_errors=True)  # the models: hundreds of MB a repeat
    return out


def engine_starts(output: str) -> list[float]:
    """Engine start seconds, as the engine logs them ('vllm rollout engine ready in X s'): PPO's, then the evaluation's."""
    return [float(m.group(1)) for line in output.splitlines() if "vllm rollout engine ready" in line and (m := ENGINE_READY.search(line))]


def source_run_parser(description: str | None) -> argparse.ArgumentParser:
    """The arguments of the benches that train the PPO stage again on a finished run's data, SFT and RM."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="demo", help="preset or YAML file (default demo)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config override (repeatable)")
    p.add_argument("--workspace", type=Path, required=True, help="the workspace of --source-run")
    p.add_argument("--source-run", type=Path, required=True, help="a finished run of --config (data, sft, reward)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="demo", help="preset or YAML file (default demo)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config override (repeatable)")
    p.add_argument("--repeats", type=int, default=1, help="engine runs per side, alternating order")
    p.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset of hf,vllm")
    p.add_argument("--workspace", type=Path, default=None, help="keep the workspace here (default: a temporary one)")
    p.add_argument("--out", type=Path, default=None, help="result JSON (default bench/results/demo_engines.json)")
    p.add_argument("--source-run", type=Path, default=None,
                   help="skip step 1: a finished run of --config (its data, SFT and reward stages) in --workspace")
    args = p.parse_args(argv)
    engines = [e for e in args.engines.split(",") if e]
    if bad := [e for e in engines if e not in ENGINES]:
        p.error(f"--engines: unknown {', '.join(bad)} (choose from {', '.join(ENGINES)})")
    out_path = args.out or REPO / "bench" / "results" / "demo_engines.json"
    workspace = args.workspace or Path(tempfile.mkdtemp(prefix="demo-engines-"))
    workspace.mkdir(parents=True, exist_ok=True)
    machine = C.machine_info()
    try:
        if args.source_run is not None:
            if args.workspace is None or not all((args.source_run / s).is_dir() for s in REUSED_STAGES):
                p.error("--source-run needs --workspace and a run directory with data, sft and reward stages")
            pipeline = {"source_run": str(args.source_run), "run_dir": str(args.source_run)}
        else:
            print(f"pipeline: rlhf run -c {args.config} (fresh workspace {workspace})", flush=True)
            pipeline = run_pipeline(args.config, args.overrides, workspace)
            print(f"  {pipeline['process_wall_s']:.1f} s; stages {pipeline['stage_spans_s']}", flush=True)
        runs: list[dict[str, Any]] = []
        for repeat, engine in C.alternating(engines, args.repeats):
            print(f"engines: repeat {repeat + 1}, {engine}", flush=True)
            runs.append(run_engine(args.config, args.overrides, engine, Path(pipeline["run_dir"]), workspace) | {"repeat": repeat})
            print(f"  {runs[-1]}", flush=True)
    finally:
        if args.workspace is None:
            shutil.rmtree(workspace, ignore_errors=True)
    summary = {e: {k: C.median_of([r for r in runs if r["engine"] == e], k) for k in ("ppo_s", "eval_s")} for e in engines}
    if {"hf", "vllm"} <= set(engines):
        summary["speedup_vllm_over_hf"] = {k: round(summary["hf"][k] / summary["vllm"][k], 3) for k in ("ppo_s", "eval_s")}
    payload = {
        "benchmark": "demo_engines",
        "command": "python bench/demo_engines.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": args.config, "overrides": args.overrides, "machine_before": machine, "machine_after": C.machine_info(),
        "pipeline": pipeline, "engine_runs": runs, "summary": summary,
    }
    C.write_json(out_path, payload)
    print(json.dumps(summary, indent=1))
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
