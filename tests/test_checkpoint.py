"""Checkpoints: round trip, atomic layout, corruption / wrong stage / missing dir refused (rlhf_core.checkpoint)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from rlhf_core.checkpoint import (
    WEIGHTS,
    latest_valid_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from rlhf_core.config.optim import OptimConfig
from rlhf_core.errors import TrainingError
from rlhf_core.checkpoint import MANIFEST
from rlhf_core.training import build_optimizer, build_scheduler


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(4, 3)
        self.b = torch.nn.Linear(3, 1)
        self.frozen = torch.nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def _trained(seed: int = 0):
    torch.manual_seed(seed)
    net = _Net()
    optim_cfg = OptimConfig(learning_rate=1e-2, warmup_steps=2, max_steps=10, weight_decay=0.1)
    opt = build_optimizer(net, optim_cfg)
    sched = build_scheduler(opt, optim_cfg)
    for _ in range(3):
        opt.zero_grad()
        net.b(net.a(torch.randn(5, 4))).pow(2).mean().backward()
        opt.step()
        sched.step()
    return net, opt, sched, optim_cfg


def _save(tmp_path, net, opt, sched, stage="sft", step=3, keep=2):
    return save_checkpoint(
        tmp_path / "checkpoints", stage=stage, step=step, model=net, optimizer=opt, scheduler=sched,
        trainer_state={"epoch": 1, "batch_index": 2, "sampler_seed": 0, "history": [], "fingerprint": {}}, keep=keep,
    )


def test_round_trip_restores_weights_optimizer_scheduler_rng_and_position(tmp_path):
    net, opt, sched, optim_cfg = _trained()
    random.seed(11)
    np.random.seed(12)
    torch.manual_seed(13)
    path = _save(tmp_path, net, opt, sched)
    expected_draws = (random.random(), float(np.random.rand()), torch.rand(3))
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["stage"] == "sft" and manifest["step"] == 3
    assert set(manifest["files"]) >= {WEIGHTS, "optimizer.pt", "scheduler.pt", "rng.pt", "trainer_state.json"}

    torch.manual_seed(99)
    fresh = _Net()
    fresh.frozen.load_state_dict(net.frozen.state_dict())  # the caller supplies the same frozen start
    opt2 = build_optimizer(fresh, optim_cfg)
    sched2 = build_scheduler(opt2, optim_cfg)
    state = load_checkpoint(path, stage="sft", model=fresh, optimizer=opt2, scheduler=sched2)

    assert (state["step"], state["epoch"], state["batch_index"]) == (3, 1, 2)
    for (name, p), q in zip(net.named_parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p, q), name
    for s1, s2 in zip(opt.state.values(), opt2.state.values(), strict=True):
        assert torch.equal(s1["exp_avg_sq"], s2["exp_avg_sq"]) and torch.equal(s1["step"], s2["step"])
    assert sched2.last_epoch == sched.last_epoch and opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert random.random() == expected_draws[0]
    assert float(np.random.rand()) == expected_draws[1]
    assert torch.equal(torch.rand(3), expected_draws[2])


def test_only_trainable_parameters_are_stored_and_old_checkpoints_pruned(tmp_path):
    from safetensors.torch import load_file

    net, opt, sched, _ = _trained()
    for step in (1, 2, 3):
        _save(tmp_path, net, opt, sched, step=step, keep=2)
    (tmp_path / "checkpoints" / ".tmp-step-000009-abc").mkdir()  # a crashed writer's leftover
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step-000002", "step-000003"]
    keys = set(load_file(str(tmp_path / "checkpoints" / "step-000003" / WEIGHTS)))
    assert keys == {"a.weight", "a.bias", "b.weight", "b.bias"}


def test_corrupt_checkpoint_is_refused_naming_the_file(tmp_path):
    net, opt, sched, _ = _trained()
    path = _save(tmp_path, net, opt, sched)
    weights = path / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(TrainingError, match=rf"{weights}.*corrupt \(sha256"):
        verify_checkpoint(path, stage="sft")
    (path / MANIFEST).write_text("{not json")
    with pytest.raises(TrainingError, match=rf"{path / MANIFEST} is corrupt"):
        verify_checkpoint(path, stage="sft")


def test_other_stage_missing_dir_and_non_checkpoint_are_refused(tmp_path):
    net, opt, sched, _ = _trained()
    path = _save(tmp_path, net, opt, sched, stage="sft")
    with pytest.raises(TrainingError, match=rf"checkpoint {path} was written by stage 'sft', not 'reward'"):
        verify_checkpoint(path, stage="reward")
    with pytest.raises(TrainingError, match=r"does not exist"):
        verify_checkpoint(tmp_path / "nope", stage="sft")
    (tmp_path / "plain").mkdir()
    with pytest.raises(TrainingError, match=r"is not a training checkpoint \(no manifest.json\)"):
        verify_checkpoint(tmp_path / "plain", stage="sft")


def test_weights_of_a_different_model_are_refused(tmp_path):
    net, opt, sched, optim_cfg = _trained()
    path = _save(tmp_path, net, opt, sched)
    other = torch.nn.Sequential(torch.nn.Linear(4, 3))
    opt2 = build_optimizer(other, optim_cfg)
    with pytest.raises(TrainingError, match=r"holds weights of a different model or LoRA setting"):
        load_checkpoint(path, stage="sft", model=other, optimizer=opt2, scheduler=build_scheduler(opt2, optim_cfg))


def test_full_disk_while_checkpointing_keeps_the_last_good_one(tmp_path, monkeypatch):
    import errno

    import rlhf_core.checkpoint as ckpt

    net, opt, sched, _ = _trained()
    good = _save(tmp_path, net, opt, sched)  # step 3
    root = tmp_path / "checkpoints"
    real_save = ckpt.torch.save

    def disk_full(obj, path, *args, **kwargs):  # half a file, then ENOSPC, as a full disk does
        Path(path).write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(ckpt.torch, "save", disk_full)
    with pytest.raises(TrainingError, match=rf"could not write checkpoint .*step-000004 \(no space left on device\); "
                                            rf"the last good checkpoint {good} is intact"):
        save_checkpoint(root, stage="sft", step=4, model=net, optimizer=opt, scheduler=sched,
                        trainer_state={}, keep=1)
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    assert [p.name for p in list_checkpoints(root)] == [good.name]  # keep=1 did not prune it
    assert not list(root.glob(".tmp-*"))  # the half-written temp dir is gone
    verify_checkpoint(good, stage="sft")  # and it still verifies


def test_latest_valid_checkpoint_falls_back_past_corrupt_ones(tmp_path):
    net, opt, sched, _ = _trained()
    first = save_checkpoint(tmp_path, stage="sft", step=1, model=net, optimizer=opt, scheduler=sched, trainer_state={}, keep=3)
    second = save_checkpoint(tmp_path, stage="sft", step=2, model=net, optimizer=opt, scheduler=sched, trainer_state={}, keep=3)
    (second / MANIFEST).unlink()  # e.g. a copy interrupted before the manifest
    assert latest_valid_checkpoint(tmp_path, stage="sft") == first
    assert (tmp_path / "corrupt-step-000002").is_dir()
    with pytest.raises(TrainingError, match="written by stage 'sft', not 'reward'"):
        latest_valid_checkpoint(tmp_path, stage="reward")  # another stage's checkpoint is an error, not corruption
    assert latest_valid_checkpoint(tmp_path / "none", stage="sft") is None


# ----------------------------------------------------------------------------- RunState (every training loop's)
def _run_state(tmp_path, optim_cfg, net, opt, sched, fingerprint, tracker=None):
    from rlhf_core.tracking import InMemoryTracker
    from rlhf_core.training import RunState

    return RunState(
        "sft", tmp_path, optim_cfg, fingerprint=fingerprint, tracker=tracker or InMemoryTracker(), model=net,
        optimizer=opt, scheduler=sched, extra_state=lambda: {"position": 42},
    )


def test_run_state_cadence_final_checkpoint_and_resume(tmp_path):
    from rlhf_core.tracking import InMemoryTracker

    net, opt, sched, _ = _trained()
    cfg = OptimConfig(learning_rate=1e-2, max_steps=5, checkpoint_every=2, log_every=2, keep_checkpoints=5)
    tracker = InMemoryTracker()
    run = _run_state(tmp_path, cfg, net, opt, sched, {"data": "abc"}, tracker)
    assert run.resume(True) is None and run.start_step == 0
    with run.steps(progress=False) as steps:
        assert list(steps) == [0, 1, 2, 3, 4]
        for number in range(1, 6):
            run.record(number, {"sft/loss": float(number)})
    # a checkpoint every 2 steps before the last; the tracker every 2 steps and at the last
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step-000002", "step-000004"]
    assert [step for step, _ in tracker.metrics] == [2, 4, 5]
    assert run.finish(5).name == "step-000005" and run.last_metrics == {"sft/loss": 5.0}
    assert run.finish(5).name == "step-000005"  # the newest already: not written twice
    state = json.loads((tmp_path / "checkpoints" / "step-000005" / "trainer_state.json").read_text())
    assert state["position"] == 42 and state["fingerprint"] == {"data": "abc"} and len(state["history"]) == 5

    again = _run_state(tmp_path, cfg, net, opt, sched, {"data": "abc"})
    assert again.resume(True)["position"] == 42
    assert again.start_step == again.saved_at == 5 and [h["step"] for h in again.history] == [1, 2, 3, 4, 5]
    with again.steps(progress=False) as steps:
        assert list(steps) == []


def test_run_state_refuses_a_changed_run_and_fills_old_fingerprints(tmp_path):
    net, opt, sched, _ = _trained()
    cfg = OptimConfig(learning_rate=1e-2, max_steps=2)
    run = _run_state(tmp_path, cfg, net, opt, sched, {"data": "abc"})
    run.resume(True)
    run.finish(2)
    changed = _run_state(tmp_path, cfg, net, opt, sched, {"data": "xyz"})
    with pytest.raises(TrainingError, match=r"cannot resume sft from .*step-000002: the run changed \(data: checkpoint "
                                            r"'abc' vs now 'xyz'\); pass resume=False"):
        changed.resume(True)
    newer = _run_state(tmp_path, cfg, net, opt, sched, {"data": "abc", "samples": 1})
    with pytest.raises(TrainingError, match=r"samples: checkpoint None vs now 1"):
        newer.resume(True)
    assert newer.resume(True, fingerprint_defaults={"samples": 1})["step"] == 2
    fresh = _run_state(tmp_path, cfg, net, opt, sched, {"data": "xyz"})
    assert fresh.resume(False) is None and not (tmp_path / "checkpoints").exists()
