"""Data-parallel training under accelerate: 2 CPU processes (gloo, DDP) match 1 process; bad configs refused.

The 2-process runs go through the real launcher (`torchrun` -> `python -m tasks.distributed_worker`),
exactly as the Prefect task starts them.
"""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from rlhf_core.config.distributed import DistributedConfig
from rlhf_core.config.pipeline import load_config
from rlhf_core.distributed import check_distributed
from rlhf_core.errors import ConfigError, TrainingError
from rlhf_core.tracking import NullTracker
from tasks.artifacts import RunDir
from tasks.distributed import STAGES, train_distributed
from tasks.distributed_worker import _worker
from tasks.stages import dpo, reward, sft
from tests.conftest import MODEL_CACHE

# Step batch 8 = 2 micro-batches of 4 (1 process) or 1 micro-batch of 4 per process (2 processes).
COMMON = [
    f"model.cache_dir={MODEL_CACHE}", "torch_threads=1",
    "sft.optim.max_steps=3", "sft.optim.micro_batch_size=4", "sft.optim.grad_accum_steps=2", "sft.optim.checkpoint_every=2",
    "reward.optim.max_steps=3", "reward.optim.micro_batch_size=4", "reward.optim.grad_accum_steps=2", "reward.optim.checkpoint_every=2",
    "dpo.optim.max_steps=3", "dpo.optim.micro_batch_size=4", "dpo.optim.grad_accum_steps=2", "dpo.optim.checkpoint_every=2",
    "sft.optim.learning_rate=0.01", "reward.optim.learning_rate=0.01", "dpo.optim.learning_rate=0.01",
]
LOSS = {"sft": "sft/loss", "reward": "rm/loss", "dpo": "dpo/loss"}
UNIT = {"sft": "train/tokens", "reward": "train/pairs", "dpo": "train/pairs"}


def _run_dir(path) -> RunDir:
    run = RunDir(path)
    data = run.stage("data")
    demos = pd.DataFrame(
        [{"id": f"d{i}", "prompt": f"What is {i} plus {i}?", "response": f"It is {2 * i}." * (1 + i % 3)} for i in range(21)]
    )
    prefs = pd.DataFrame(
        [{"id": f"p{i}", "prompt": f"Name a colour ({i}).", "chosen": f"Blue, number {i}.",
          "rejected": "no" * (1 + i % 4), "margin": 1.0} for i in range(19)]
    )
    demos.to_parquet(data / "demonstrations.parquet")
    prefs.to_parquet(data / "preferences.parquet")
    run.record_outputs("data", {"demonstrations": str(data / "demonstrations.parquet"),
                                "preferences": str(data / "preferences.parquet")})
    return run


def _weights(model_dir) -> dict[str, torch.Tensor]:
    return load_file(str(next(model_dir.glob("*.safetensors"))))


def _fit_one_process(stage: str, cfg, run: RunDir):
    if stage == "reward":
        return reward.fit(cfg, "tiny", run, NullTracker(), progress=False)[0]
    return (sft if stage == "sft" else dpo).fit(cfg, "tiny", run, NullTracker(), progress=False)


@pytest.mark.parametrize("stage", ["sft", "reward", "dpo"])
def test_two_processes_match_one_process(tmp_path, stage):
    one = load_config("smoke", [*COMMON, f"workspace={tmp_path / 'ws1'}"])
    two = load_config("smoke", [*COMMON, f"workspace={tmp_path / 'ws2'}", "distributed.num_processes=2"])
    single, double = _run_dir(tmp_path / "one"), _run_dir(tmp_path / "two")

    reference = _fit_one_process(stage, one, single)
    result = train_distributed(stage, two, model_dir="tiny", run_dir=str(double.path), mlflow_run_id=None, tracking_uri=None)

    assert result["world_size"] == 2 and result["steps"] == 3
    ours = [h[LOSS[stage]] for h in result["history"]]
    theirs = [h[LOSS[stage]] for h in reference.history]
    # Later steps start from weights that differ in the last bits (see the weights below); a loss is
    # a smooth function of them (measured for DPO: 9e-8 relative at step 3; weights 1.3e-7 apart).
    assert ours == pytest.approx(theirs, rel=1e-5, abs=1e-6)
    assert ours[0] != ours[-1]  # it trained
    if stage == "dpo":
        # Step 1 is bitwise: the same starting weights, each process's micro-batch of 4 is one of the
        # single process's, and the reference log-probs (computed half by each process, then summed)
        # are bitwise the single process's. On this tiny model they are even bitwise the policy's own
        # at step 1 (implicit rewards exactly 0, loss log 2), so a wrong or missing one would show.
        first = {k: v for k, v in result["history"][0].items() if k.startswith("dpo/")}
        assert first == {k: v for k, v in reference.history[0].items() if k.startswith("dpo/")}
    assert [h[UNIT[stage]] for h in result["history"]] == [h[UNIT[stage]] for h in reference.history]  # same step batches
    start = _weights(reference.model_dir)
    got = _weights(double.model_dir(stage))
    assert set(got) == set(start)
    # Not bitwise: the 2 processes sum the gradient in another order, and Adam divides tiny
    # gradients (rare-token embedding rows) by their own tiny sqrt(v), so rounding shows up as
    # ~1e-5 in those rows. 1e-4 is 0.3% of the 3 x lr an Adam update can move a weight.
    for name, value in start.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=1e-4, msg=name)
    step2 = {n.removeprefix("backbone."): v  # the reward model's checkpoint names its backbone
             for n, v in load_file(str(single.checkpoints(stage) / "step-000002" / "trainable.safetensors")).items()}
    shared = [n for n in step2 if n in start]
    assert shared and max(float((start[n] - step2[n]).abs().max()) for n in shared) > 1e-3  # the tolerance is meaningful
    # rank 0 alone wrote checkpoints where a 1-process run writes them
    assert sorted(p.name for p in double.checkpoints(stage).iterdir()) == ["step-000002", "step-000003"]
    if stage == "dpo":  # one more launch (~20 s here), so only for the stage this module tests newest
        _resumes_bitwise(stage, two, double, result)


def _resumes_bitwise(stage: str, cfg, run: RunDir, straight: dict) -> None:
    """Killed after step 2's checkpoint, the processes resume to the same final weights, bitwise."""
    final = _weights(run.model_dir(stage))
    shutil.rmtree(run.checkpoints(stage) / "step-000003")
    shutil.rmtree(run.model_dir(stage))
    resumed = train_distributed(stage, cfg, model_dir="tiny", run_dir=str(run.path), mlflow_run_id=None, tracking_uri=None)
    assert resumed["resumed_from_step"] == 2 and resumed["steps"] == 3
    assert [h[LOSS[stage]] for h in resumed["history"]] == [h[LOSS[stage]] for h in straight["history"]]
    got = _weights(run.model_dir(stage))
    assert all(torch.equal(got[name], value) for name, value in final.items())


def test_worker_failure_is_reported_with_its_cause_and_log(tmp_path):
    cfg = load_config("smoke", [*COMMON, f"workspace={tmp_path / 'ws'}", "distributed.num_processes=2",
                                "sft.optim.max_length=8"])  # every demonstration is longer than 8 tokens
    run = _run_dir(tmp_path / "run")
    with pytest.raises(TrainingError, match=r"sft: 2-process training \(backend gloo, ddp\) exited with code 1: "
                                            r"rank \d: TooLongError: sft train data: row d0: sequence has \d+ tokens .*; full log: .*distributed.log"):
        train_distributed("sft", cfg, model_dir="tiny", run_dir=str(run.path), mlflow_run_id=None, tracking_uri=None)


def test_configs_that_cannot_work_here_are_refused_before_anything_starts():
    with pytest.raises(ConfigError, match=r"num_processes=2 with backend nccl needs 2 CUDA devices, this machine has 0"):
        check_distributed(DistributedConfig(num_processes=2, backend="nccl"), cuda_devices=0)
    with pytest.raises(ConfigError, match=r"strategy fsdp needs CUDA devices and backend nccl"):
        check_distributed(DistributedConfig(num_processes=2, strategy="fsdp"), cuda_devices=0)
    with pytest.raises(ConfigError, match=r"distributed.backend: .*'auto', 'gloo' or 'nccl'"):
        load_config("smoke", ["distributed.backend=mpi"])
    with pytest.raises(ConfigError, match=r"distributed.num_processes"):
        load_config("smoke", ["distributed.num_processes=0"])
    check_distributed(DistributedConfig(num_processes=2), cuda_devices=0)  # gloo DDP on CPU is fine
    check_distributed(DistributedConfig(num_processes=1, backend="nccl"), cuda_devices=0)  # 1 process: nothing launched


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_step_batch_smaller_than_world_is_refused(tmp_path, stage):
    cfg = load_config("smoke", [*COMMON, f"workspace={tmp_path / 'ws'}", "distributed.num_processes=3",
                                f"{stage}.optim.micro_batch_size=1", f"{stage}.optim.grad_accum_steps=2"])
    run = _run_dir(tmp_path / "run")
    with pytest.raises(TrainingError, match=rf"{stage}: .*a step batch of 2 examples .* cannot be split over 3 processes"):
        train_distributed(stage, cfg, model_dir="tiny", run_dir=str(run.path), mlflow_run_id=None, tracking_uri=None)


def test_stages_that_cannot_train_data_parallel_are_refused_by_name(tmp_path):
    cfg = load_config("smoke", [*COMMON, f"workspace={tmp_path / 'ws'}", "distributed.num_processes=2"])
    run = _run_dir(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"distributed: stage 'dpo_typo' cannot train data-parallel \(these can: sft, reward, dpo"):
        train_distributed("dpo_typo", cfg, model_dir="tiny", run_dir=str(run.path), mlflow_run_id=None, tracking_uri=None)
    with pytest.raises(SystemExit) as exit_:  # the worker's --stage takes the same table
        _worker(["--stage", "dpo_typo", "--config", "c", "--model-dir", "tiny", "--run-dir", "r", "--result", "x"])
    assert exit_.value.code == 2 and "dpo" in STAGES


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is of FSDP on a machine without CUDA")
def test_dpo_distributed_fsdp_is_refused_without_cuda(tmp_path):
    cfg = load_config("smoke", [*COMMON, f"workspace={tmp_path / 'ws'}", "distributed.num_processes=2",
                                "distributed.strategy=fsdp"])
    run = _run_dir(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"strategy fsdp needs CUDA devices and backend nccl"):
        train_distributed("dpo", cfg, model_dir="tiny", run_dir=str(run.path), mlflow_run_id=None, tracking_uri=None)


def test_cli_refuses_an_impossible_setup_before_any_stage(tmp_path):
    from tests.test_config import _rlhf

    proc = _rlhf("run", "-c", "smoke", "--set", f"workspace={tmp_path}", "--set", "distributed.num_processes=2",
                 "--set", "distributed.backend=nccl")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "num_processes=2 with backend nccl needs 2 CUDA devices, this machine has 0" in proc.stdout + proc.stderr
    assert not (tmp_path / "runs").exists()  # nothing started
