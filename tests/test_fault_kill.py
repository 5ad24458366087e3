"""``kill -9`` of real training processes (SFT, reward model, PPO), then resume: bitwise equal to no kill.

Per stage, one output directory sees successive processes of ``bench.fault_worker`` (tiny
random model, ``checkpoint_every=1``, ``resume=True``, the real ``train_sft`` /
``train_reward_model`` / ``train_ppo``): each but the last is SIGKILLed as soon as it prints a
chosen ``step k`` line or has written the final model's temp directory (see ``KILL_ON``), the last runs to the end. Every process must continue
right after the newest checkpoint its predecessor completed, and the final weights, checkpoint
weights, optimizer state, per-step metrics and final metrics must equal, bitwise, those of an
uninterrupted run of the same function in this process. ``bench/fault_report.py`` does the
same with subprocesses killed at random times.

The workers are ``bench.fault_worker.main`` in processes forked from a multiprocessing
forkserver that imported torch, transformers and rlhf_core once (started with ``python -m``,
each would spend ~5 CPU-s importing them: most of its time); each is killed with SIGKILL
like any process. The three stages' chains run in background threads while this process
trains the references.
"""

from __future__ import annotations

import multiprocessing
import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from bench.fault_report import COMPARED, Attempt, checkpoint_steps, leftovers, read_result
from bench.fault_worker import main as worker_main
from bench.fault_worker import train_stage

STEPS = 6
MODEL_WRITE = "model-write"
# When successive processes of one output directory are killed: on printing "step k" (after
# step k's update, before checkpoint k is written, so the kill lands in checkpoint k's write or
# early in step k+1; for k = STEPS in the final checkpoint's write, the final evaluation or the
# final model's write), or MODEL_WRITE: when the final model's temp directory is written, before its rename.
# PPO, with the most state to restore (sampling RNG, KL controller, critic), is killed twice.
KILL_ON = {"sft": ("step 3", MODEL_WRITE), "reward": (f"step {STEPS}", MODEL_WRITE), "ppo": ("step 2", MODEL_WRITE)}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers run with one thread too: same reduction order, same bits
    yield
    torch.set_num_threads(before)


PRELOAD = ["torch", "transformers", "transformers.models.llama.modeling_llama", "peft", "rlhf_core.models",
           "rlhf_core.sft.train", "rlhf_core.reward.train", "rlhf_core.ppo.trainer", "rlhf_core.gold", __name__]


class _LinesTo:
    """A stdout that sends each line through a multiprocessing connection."""

    def __init__(self, conn) -> None:
        self.conn, self.buffer = conn, ""

    def write(self, text: str) -> int:
        *lines, self.buffer = (self.buffer + text).split("\n")
        for line in lines:
            self.conn.send(line)
        return len(text)

    def flush(self) -> None:
        pass


def _announce_model_writes() -> None:
    """In the worker: print MODEL_WRITE when a model's temp directory is complete and about to be renamed
    into place, then wait, so the kill reliably lands mid-write (a tiny model is written in milliseconds:
    polling for the temp directory from outside missed it under load)."""
    import rlhf_core.dpo.trainer
    import rlhf_core.ppo.trainer
    import rlhf_core.reward.train
    import rlhf_core.sft.train
    import rlhf_core.stage_io
    import rlhf_core.training
    from rlhf_core.stage_io import replace_dir

    def announced(tmp: Path, final: Path) -> Path:
        print(MODEL_WRITE, flush=True)
        time.sleep(30)  # the test kills the process here
        return replace_dir(tmp, final)

    # every module that writes a final model through replace_dir (its own name for it)
    for module in (rlhf_core.training, rlhf_core.stage_io, rlhf_core.sft.train, rlhf_core.reward.train,
                   rlhf_core.ppo.trainer, rlhf_core.dpo.trainer):
        if hasattr(module, "replace_dir"):
            module.replace_dir = announced


def _worker_process(conn, argv: list[str], log: str, kill_on: str | None) -> None:
    import os
    import sys

    os.dup2(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND), 2)  # warnings, progress bars
    sys.stdout = _LinesTo(conn)
    if kill_on == MODEL_WRITE:
        _announce_model_writes()
    worker_main(argv)  # an exception's traceback goes to the log (multiprocessing prints it)


def run_forked_worker(stage: str, out: Path, *, kill_on: str | None = None) -> Attempt:
    """``fault_worker --stage STAGE --out OUT``, SIGKILLed on printing ``kill_on`` or at MODEL_WRITE."""
    ctx = multiprocessing.get_context("forkserver")
    recv, send = ctx.Pipe(duplex=False)
    argv = ["--stage", stage, "--out", str(out), "--steps", str(STEPS), "--threads", "1"]
    log = out.parent / f"{out.name}.stderr.log"
    proc = ctx.Process(target=_worker_process, args=(send, argv, str(log), kill_on), daemon=True)
    proc.start()
    send.close()  # EOF on recv once the child is gone
    attempt = Attempt(returncode=0, log=str(log))
    t0 = time.perf_counter()
    try:
        while True:
            if recv.poll(0.001):  # a line, or EOF
                try:
                    line = recv.recv()
                except EOFError:
                    break
                attempt.markers.append((time.perf_counter() - t0, line))
                if line == kill_on:
                    proc.kill()
    finally:
        proc.join()
        recv.close()
    attempt.returncode = proc.exitcode
    return attempt


def _log(attempt: Attempt) -> str:
    path = Path(attempt.log)
    return path.read_text()[-3000:] if path.is_file() else "(no log)"


def _chain(stage: str, out: Path) -> dict:
    kills = []
    for marker in KILL_ON[stage]:
        attempt = run_forked_worker(stage, out, kill_on=marker)
        kills.append({"attempt": attempt, "checkpoints": checkpoint_steps(out), "leftovers": leftovers(out)})
    final = run_forked_worker(stage, out)
    result = read_result(out) if final.returncode == 0 else None
    return {"kills": kills, "final": final, "result": result, "leftovers": leftovers(out)}


@pytest.fixture(scope="module")
def chains(tmp_path_factory) -> dict[str, Future]:
    multiprocessing.get_context("forkserver").set_forkserver_preload(PRELOAD)
    pool = ThreadPoolExecutor(max_workers=len(KILL_ON))
    futures = {stage: pool.submit(_chain, stage, tmp_path_factory.mktemp(f"fault-{stage}")) for stage in KILL_ON}
    yield futures
    pool.shutdown(wait=True)


@pytest.mark.parametrize("stage", list(KILL_ON))
def test_kill_9_then_resume_matches_an_uninterrupted_run_bitwise(stage, chains, tmp_path):
    reference = train_stage(stage, tmp_path / "reference", STEPS)
    assert reference["resumed_from_step"] == 0 and reference["steps"] == STEPS
    assert [row["step"] for row in reference["history"]] == list(range(1, STEPS + 1))

    chain = chains[stage].result(timeout=600)
    resume = 0
    for marker, kill in zip(KILL_ON[stage], chain["kills"], strict=True):
        attempt = kill["attempt"]
        assert attempt.returncode == -signal.SIGKILL, (marker, _log(attempt))
        # each process continues right after the newest checkpoint its predecessor completed ...
        ran = attempt.steps_run
        assert ran and ran == list(range(resume + 1, ran[-1] + 1)), (marker, resume, ran)
        # ... which is the last step it printed or the one before (the kill may cut that one's write)
        resume = max(kill["checkpoints"], default=0)
        assert resume in (ran[-1] - 1, ran[-1]), (marker, ran, kill["checkpoints"])
        if marker == MODEL_WRITE:  # all steps and the final checkpoint done, the model half written
            assert resume == STEPS, kill
            assert [p for p in kill["leftovers"] if not p.startswith("checkpoints/")], kill
        else:
            assert int(marker.split()[1]) in ran, (marker, ran)

    final = chain["final"]
    assert final.returncode == 0, _log(final)
    assert final.steps_run == list(range(resume + 1, STEPS + 1))
    result = chain["result"]
    # resumed from the newest checkpoint (>= 1: every kill came after checkpoint 1 was complete);
    # resumed at STEPS it trains no step and only writes the model
    assert result["resumed_from_step"] == resume and result["steps"] == STEPS
    for key in COMPARED:
        assert result[key] == reference[key], f"{stage}: {key} differs from the uninterrupted run"
    # the temp dir of a checkpoint or of the final model cut short by a kill is removed by the next write
    assert not chain["leftovers"], chain["leftovers"]
