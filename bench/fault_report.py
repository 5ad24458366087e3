"""``kill -9`` at random points of SFT, reward-model and PPO training; resume; compare bitwise.

    python -m bench.fault_report [--kills 8] [--seed 0] [--stages sft reward ppo]

Per stage: one uninterrupted run of ``bench.fault_worker`` (the reference; it also measures
the training window, from its ``ready`` line to its ``done`` line). Then, per kill point, a
fresh output directory: the worker is started, SIGKILLed ``U(0, window)`` seconds after its
own ``ready`` line (seeded RNG; the window covers the steps, every checkpoint write, the
mid-run and final evaluations and the final model write; a kill that lands after the run's own
``done`` line, or after it exited, because it ran faster than the reference, is drawn again),
the directory is inspected (newest complete checkpoint, temp directories left behind), and the
worker is run again to the end with the same arguments. The second run must resume from exactly that newest checkpoint and end
with the reference's model state_dict, final checkpoint weights, optimizer state, per-step
metric history and final metrics (all bitwise; only wall-clock timings are excluded).

Prints a table and writes ``bench/results/fault_report.json``. Workers run one at a time
with one torch thread each, so kill times are not distorted by each other.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SCRATCH = ROOT / ".rlhf" / "bench" / "fault"  # gitignored
PYTHON = sys.executable
DEFAULT_STEPS = {"sft": 20, "reward": 20, "ppo": 12}
_STEP_DIR = re.compile(r"^step-(\d+)$")
COMPARED = ("model_sha256", "checkpoint_weights_sha256", "optimizer_sha256", "history", "metrics")


@dataclass
class Attempt:
    """One worker process: its stdout markers (seconds since start), exit status, and whether we killed it."""

    returncode: int
    markers: list[tuple[float, str]] = field(default_factory=list)
    killed: bool = False
    kill_after_ready_s: float | None = None
    log: str = ""

    @property
    def steps_run(self) -> list[int]:
        return [int(m.split()[1]) for _, m in self.markers if m.startswith("step ")]

    def at(self, marker: str) -> float | None:
        return next((t for t, m in self.markers if m == marker), None)


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[key] = "1"
    env.update(TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return env


def run_worker(
    stage: str, out: Path, steps: int, *, seed: int = 0, kill_on: str | None = None, kill_after_ready: float | None = None
) -> Attempt:
    """Run ``python -m bench.fault_worker`` into ``out``; SIGKILL it on stdout line ``kill_on``
    or ``kill_after_ready`` seconds after its ``ready`` line (neither: run to the end)."""
    out.mkdir(parents=True, exist_ok=True)
    log_path = out.parent / f"{out.name}.stderr.log"
    cmd = [PYTHON, "-m", "bench.fault_worker", "--stage", stage, "--out", str(out), "--steps", str(steps),
           "--seed", str(seed), "--threads", "1"]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=worker_env(), stdout=subprocess.PIPE, stderr=log, text=True)
        attempt = Attempt(returncode=0, kill_after_ready_s=kill_after_ready, log=str(log_path))
        t0 = time.perf_counter()
        timer = None

        def kill() -> None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                attempt.killed = True

        try:
            for line in proc.stdout:  # type: ignore[union-attr]
                marker = line.strip()
                attempt.markers.append((time.perf_counter() - t0, marker))
                if marker == kill_on:
                    kill()
                elif marker == "ready" and kill_after_ready is not None:
                    timer = threading.Timer(kill_after_ready, kill)
                    timer.start()
            proc.wait()
        finally:
            if timer is not None:
                timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    attempt.returncode = proc.returncode
    attempt.killed = attempt.killed and proc.returncode == -signal.SIGKILL
    return attempt


def checkpoint_steps(out: Path) -> list[int]:
    """Steps of the complete checkpoints in ``out/checkpoints`` (``step-N`` dirs appear only by rename)."""
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(int(m.group(1)) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name)))


def leftovers(out: Path) -> list[str]:
    """Hidden temp/old directories a killed run left in ``out`` and ``out/checkpoints``."""
    found = []
    for base in (out, out / "checkpoints"):
        if base.is_dir():
            found += [str(p.relative_to(out)) for p in base.iterdir() if p.name.startswith(".") and p.is_dir()]
    return sorted(found)


def read_result(out: Path) -> dict[str, Any]:
    return json.loads((out / "fault_result.json").read_text())


def differences(result: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    """Names of the compared fields that are not bitwise equal (floats compared exactly)."""
    return [key for key in COMPARED if result.get(key) != reference.get(key)]


def landing(left: list[str], last_marker: str | None) -> str:
    """Where a kill landed, judged from what it left on disk and the last stdout line."""
    if any(p.startswith("checkpoints/.tmp-") for p in left):
        return "mid-checkpoint-write"
    if any(not p.startswith("checkpoints/") for p in left):
        return "mid-final-model-write"
    if last_marker == "ready":
        return "setup-or-first-step"
    if last_marker == "done":
        return "after-training"  # hashing the result: the run is complete on disk
    return "in-a-step"  # a step's compute, an evaluation, or checkpoint pruning


def kill_and_resume(
    stage: str, out: Path, steps: int, reference: dict[str, Any], *, seed: int, kill_on: str | None = None,
    kill_after_ready: float | None = None,
) -> dict[str, Any]:
    """Kill a run, inspect its directory, run it again to the end; the comparison record."""
    first = run_worker(stage, out, steps, seed=seed, kill_on=kill_on, kill_after_ready=kill_after_ready)
    ckpts, left = checkpoint_steps(out), leftovers(out)
    expected = ckpts[-1] if ckpts else 0
    record: dict[str, Any] = {
        "killed": first.killed,
        "returncode": first.returncode,
        "kill_after_ready_s": kill_after_ready,
        "kill_on": kill_on,
        "last_marker": first.markers[-1][1] if first.markers else None,
        "steps_before_kill": first.steps_run,
        "checkpoints_after_kill": ckpts,
        "leftovers_after_kill": left,
        "landing": landing(left, first.markers[-1][1] if first.markers else None) if first.killed else "not-killed",
        "expected_resume_step": expected,
    }
    if not first.killed:
        return record
    second = run_worker(stage, out, steps, seed=seed)
    record["rerun_returncode"] = second.returncode
    record["rerun_steps"] = second.steps_run
    record["leftovers_after_rerun"] = leftovers(out)
    if second.returncode != 0:
        record["diffs"] = ["rerun failed"]
        return record
    result = read_result(out)
    record["resumed_from_step"] = result["resumed_from_step"]
    record["resumed_as_expected"] = result["resumed_from_step"] == expected and second.steps_run == list(
        range(expected + 1, steps + 1)
    )
    record["diffs"] = differences(result, reference)
    return record


def bench_stage(stage: str, steps: int, kills: int, rng: random.Random, work: Path, seed: int) -> dict[str, Any]:
    ref_out = work / f"{stage}-reference"
    ref_run = run_worker(stage, ref_out, steps, seed=seed)
    if ref_run.returncode != 0:
        raise SystemExit(f"{stage}: reference run failed (rc {ref_run.returncode}), see {ref_run.log}")
    reference = read_result(ref_out)
    ready, done = ref_run.at("ready"), ref_run.at("done")
    window = (done or 0.0) - (ready or 0.0)
    # the window ends at "done" (training returned); a kill after it also lands in the result
    # hashing / exit, which leaves a complete run behind: resume then trains zero steps
    records = []
    attempts = 0

    def during_training(r: dict[str, Any]) -> bool:
        return r["killed"] and r["landing"] != "after-training"

    while sum(map(during_training, records)) < kills and attempts < 3 * kills:
        attempts += 1
        delay = rng.uniform(0.0, window)
        out = work / f"{stage}-kill{attempts:02d}"
        rec = kill_and_resume(stage, out, steps, reference, seed=seed, kill_after_ready=delay)
        rec["window_fraction"] = delay / window if window else None
        records.append(rec)
        status = "identical" if rec.get("diffs") == [] else f"DIFF {rec.get('diffs')}" if rec["killed"] else "finished first"
        status += "" if during_training(rec) else " (not during training: drawn again)"
        print(f"  {stage:<6} kill {attempts:2d} at +{delay:5.2f}s ({rec['landing']:<22}) resumed from "
              f"{rec.get('resumed_from_step', '-')!s:>3} / {steps}: {status}", flush=True)
    # a run can be faster than the reference (the machine's load varies): a kill after its
    # "done" line or after it exited is not a kill during training; it is drawn again
    killed = [r for r in records if during_training(r)]
    landings: dict[str, int] = {}
    for r in killed:
        landings[r["landing"]] = landings.get(r["landing"], 0) + 1
    return {
        "steps": steps,
        "training_window_s": round(window, 3),
        "reference": {k: reference[k] for k in ("model_sha256", "checkpoint_weights_sha256", "optimizer_sha256")},
        "kills": len(killed),
        "missed": sum(1 for r in records if not during_training(r)),
        # resumed = a checkpoint existed at the kill and the rerun continued from the newest one
        "resumed": sum(1 for r in killed if r["expected_resume_step"] > 0 and r.get("resumed_as_expected")),
        "killed_before_first_checkpoint": sum(1 for r in killed if r["expected_resume_step"] == 0),
        "resumed_as_expected": sum(1 for r in killed if r.get("resumed_as_expected")),
        "identical": sum(1 for r in killed if r.get("diffs") == []),
        "mismatches": sum(1 for r in killed if r.get("diffs") != []),
        "resumed_from_steps": [r.get("resumed_from_step") for r in killed],
        "landings": landings,
        "runs_with_leftover_temp_dirs": sum(1 for r in killed if r.get("leftovers_after_rerun")),
        "missed_runs_identical": sum(1 for r in records if r["killed"] and not during_training(r) and r.get("diffs") == []),
        "records": records,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="+", default=list(DEFAULT_STEPS), choices=list(DEFAULT_STEPS))
    parser.add_argument("--kills", type=int, default=8, help="kill points per stage (>= 5 for the report)")
    parser.add_argument("--steps", type=int, default=None, help="override the per-stage step counts")
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill times (training seed is fixed at 0)")
    parser.add_argument("--out", type=Path, default=RESULTS / "fault_report.json")
    parser.add_argument("--keep", action="store_true", help=f"keep the run directories (under {SCRATCH})")
    args = parser.parse_args(argv)

    SCRATCH.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=SCRATCH))
    rng = random.Random(args.seed)
    started = time.time()
    stages = {}
    try:
        for stage in args.stages:
            steps = args.steps or DEFAULT_STEPS[stage]
            print(f"{stage}: reference run ({steps} steps), then {args.kills} kills", flush=True)
            stages[stage] = bench_stage(stage, steps, args.kills, rng, work, seed=0)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print()
    header = f"{'stage':<7}{'steps':>6}{'window s':>9}{'kills':>6}{'missed':>7}{'resumed':>8}{'identical':>10}{'mismatch':>9}  resumed from steps | landed"
    print(header)
    print("-" * len(header))
    for stage, s in stages.items():
        landed = ", ".join(f"{k} {v}" for k, v in sorted(s["landings"].items()))
        print(f"{stage:<7}{s['steps']:>6}{s['training_window_s']:>9.2f}{s['kills']:>6}{s['missed']:>7}{s['resumed']:>8}"
              f"{s['identical']:>10}{s['mismatches']:>9}  {s['resumed_from_steps']} | {landed}")
    report = {
        "command": "python -m bench.fault_report " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "kill_seed": args.seed,
        "wall_seconds": round(time.time() - started, 1),
        "stages": stages,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(args.out)
    print(f"\nwrote {args.out}")
    bad = sum(s["mismatches"] + s["kills"] - s["resumed_as_expected"] for s in stages.values())
    bad += sum(s["kills"] < args.kills for s in stages.values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
