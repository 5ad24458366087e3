"""Data-parallel PPO: 2 CPU processes (gloo) through the real launcher train as 1 process does.

Selected by ``pytest -k "ppo and distributed"``. The 2-process run goes through
``torchrun -> python -m tasks.distributed_worker``, exactly as the Prefect task starts it; the
1-process reference is the stage body ``tasks.stages.ppo.fit`` in this process.
"""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from rlhf_core.config.pipeline import load_config
from rlhf_core.errors import ConfigError
from rlhf_core.models import build_tiny_model, load_tokenizer
from rlhf_core.ppo.parallel import rollout_seeds
from rlhf_core.reward.model import RewardModel
from rlhf_core.sampling import sample
from rlhf_core.tracking import NullTracker
from tasks.artifacts import RunDir
from tasks.distributed import train_distributed
from tasks.stages import ppo
from tests.conftest import MODEL_CACHE

# Rollout 8 = 4 prompts x 2 samples; 2 processes sample 2 prompts each. Minibatch 4 = 2 micro-batches
# of 2 in 1 process, 1 micro-batch of 2 per process: the same micro-batches either way.
COMMON = [
    f"model.cache_dir={MODEL_CACHE}", "torch_threads=1",
    "ppo.optim.max_steps=3", "ppo.optim.micro_batch_size=2", "ppo.optim.grad_accum_steps=2",
    "ppo.optim.checkpoint_every=2", "ppo.optim.learning_rate=0.003", "ppo.rollout_batch_size=8",
    "ppo.samples_per_prompt=2", "ppo.center_scores=true", "ppo.ppo_epochs=2", "ppo.max_new_tokens=8",
]
PROMPTS = [f"Tell me about the number {i}." for i in range(10)]


def _run_dir(path, cfg) -> RunDir:
    """A run whose data and reward stages are done: RL prompts and a tiny random reward model."""
    run = RunDir(path)
    data = run.stage("data")
    pd.DataFrame([{"id": f"p{i}", "prompt": p} for i, p in enumerate(PROMPTS)]).to_parquet(data / "rl_prompts.parquet")
    run.record_outputs("data", {"rl_prompts": str(data / "rl_prompts.parquet")})
    tokenizer = load_tokenizer(cfg.model, cfg.model_cache)
    tiny = cfg.model.tiny.model_copy(update={"seed": 1})
    reward = RewardModel.from_model(build_tiny_model(tiny, tokenizer), pad_token_id=tokenizer.pad_token_id, seed=1)
    model_dir = reward.save_pretrained(run.model_dir("reward"), tokenizer=tokenizer)
    run.record_outputs("reward", {"model_dir": str(model_dir)})
    return run


def _weights(model_dir) -> dict[str, torch.Tensor]:
    return load_file(str(next(model_dir.glob("*.safetensors"))))


def train_one_and_two(root, overrides=()):
    """The smoke PPO stage (COMMON + ``overrides``) in this process and in 2 processes through the launcher:
    (1-process result, 2-process result dict, their run dirs, the 2-process config)."""
    one = load_config("smoke", [*COMMON, *overrides, f"workspace={root / 'ws1'}"])
    two = load_config("smoke", [*COMMON, *overrides, f"workspace={root / 'ws2'}", "distributed.num_processes=2"])
    single, double = _run_dir(root / "one", one), _run_dir(root / "two", two)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = ppo.fit(one, "tiny", single, NullTracker(), progress=False)
    finally:
        torch.set_num_threads(threads)
    result = train_distributed("ppo", two, model_dir="tiny", run_dir=str(double.path), mlflow_run_id=None, tracking_uri=None)
    return reference, result, single, double, two


def assert_same_training(result, reference, double) -> None:
    """2 processes trained as 1: the same per-step metrics and final weights within the tolerances argued below."""
    assert result["world_size"] == 2 and result["steps"] == 3 and not result["stopped_early"]
    ours, theirs = result["history"], reference.history
    assert len(ours) == len(theirs) == 3
    # The same tokens are sampled (per-row seeds), so the rewards match to the reward model's float
    # noise between batch paddings (measured 1.1e-7 relative). Losses and statistics after step 1
    # also carry the weights' differences from gradient summation order (measured <= 1.7e-6
    # relative); 2e-5 leaves 10x room, while another sample, minibatch or token weighting moves
    # these numbers by far more (ppo/reward moves by ~0.3 between steps here).
    for step, (a, b) in enumerate(zip(ours, theirs, strict=True), start=1):
        assert set(a) == set(b)
        for key in sorted(a):
            if key.startswith("time/") or key == "ppo/logprob_mismatch":  # wall clock; rounding-noise by definition
                continue
            assert a[key] == pytest.approx(b[key], rel=2e-5, abs=1e-6), (step, key)
        assert a["ppo/logprob_mismatch"] < 1e-4 and b["ppo/logprob_mismatch"] < 1e-4
    got, want = _weights(double.model_dir("ppo")), _weights(reference.model_dir)
    assert set(got) == set(want)
    # Not bitwise: the 2 processes sum the gradient in another order, and Adam divides tiny gradients
    # by their own tiny sqrt(v) (as tests/test_distributed.py argues). Measured 1.2e-7; 1e-5 is
    # 0.1% of the 12 x lr (3 steps x 2 epochs x 2 minibatches) Adam can move a weight.
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=1e-5, msg=name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """train_one_and_two on the smoke PPO settings, trained once for the module."""
    return train_one_and_two(tmp_path_factory.mktemp("ppo-dp"))


def test_ppo_rows_sample_the_same_tokens_whatever_their_batch_mates():
    """Per-row seeds: a row's response depends on its prompt and seed, not on the other rows of the batch."""
    cfg = load_config("smoke", [f"model.cache_dir={MODEL_CACHE}"])
    tokenizer = load_tokenizer(cfg.model, cfg.model_cache)
    model = build_tiny_model(cfg.model.tiny, tokenizer).eval()
    prompts = [tokenizer(p)["input_ids"] for p in ["Hi", "What is the capital of France, please?", "Why?", "Go"]]
    seeds = rollout_seeds(0, 1, len(prompts))
    kwargs = {"max_new_tokens": 6, "eos_id": tokenizer.eos_token_id, "pad_id": tokenizer.pad_token_id, "temperature": 1.0}
    together = sample(model, prompts, seeds=seeds, **kwargs)
    for i in range(len(prompts)):
        alone = sample(model, [prompts[i]], seeds=[seeds[i]], **kwargs)
        r = alone.response_ids.shape[1]
        assert torch.equal(alone.response_ids[0], together.response_ids[i, :r]), i
        assert not together.response_mask[i, r:].any()  # it ended where the row alone did
    other = sample(model, prompts, seeds=rollout_seeds(0, 2, len(prompts)), **kwargs)
    assert not torch.equal(other.response_ids, together.response_ids)  # another step draws other tokens
    assert rollout_seeds(0, 1, 3) == rollout_seeds(0, 1, 5)[:3] and len(set(rollout_seeds(0, 1, 64))) == 64


def test_ppo_two_processes_match_one_process(runs):
    reference, result, _, double, _ = runs
    assert_same_training(result, reference, double)
    assert len({h["ppo/reward"] for h in result["history"]}) == 3  # different samples each step


def test_ppo_distributed_trained_and_rank0_alone_wrote_checkpoints(runs):
    _, _, single, double, two = runs
    tokenizer = load_tokenizer(two.model, two.model_cache)
    start = build_tiny_model(two.model.tiny, tokenizer).state_dict()
    final = _weights(double.model_dir("ppo"))
    moved = max(float((final[n] - start[n]).abs().max()) for n in final if n in start)
    assert moved > 1e-3  # it trained, by 100x the tolerance above
    assert sorted(p.name for p in double.checkpoints("ppo").iterdir()) == ["step-000002", "step-000003"]
    assert sorted(p.name for p in single.checkpoints("ppo").iterdir()) == ["step-000002", "step-000003"]


def test_ppo_distributed_resume_continues_exactly(runs, tmp_path):
    """Cut the 2-process run back to its step-2 checkpoint and relaunch: step 3 is redone bitwise."""
    _, result, _, double, two = runs
    copy = RunDir(tmp_path / "resumed")
    shutil.copytree(double.path, copy.path)
    shutil.rmtree(copy.checkpoints("ppo") / "step-000003")
    shutil.rmtree(copy.model_dir("ppo"))
    resumed = train_distributed("ppo", two, model_dir="tiny", run_dir=str(copy.path), mlflow_run_id=None, tracking_uri=None)
    assert resumed["resumed_from_step"] == 2 and resumed["steps"] == 3
    drop = ("time/",)
    assert [{k: v for k, v in h.items() if not k.startswith(drop)} for h in resumed["history"]] == [
        {k: v for k, v in h.items() if not k.startswith(drop)} for h in result["history"]
    ]
    got, want = _weights(copy.model_dir("ppo")), _weights(double.model_dir("ppo"))
    for name, value in want.items():
        assert torch.equal(got[name], value), name


def test_ppo_distributed_bad_setups_are_refused_before_anything_starts(tmp_path):
    from flows.preflight import preflight_config

    cfg = load_config("smoke", [*COMMON, f"workspace={tmp_path}", "distributed.num_processes=3"])
    message = r"ppo: the rollout batch \(8 responses\) must be a multiple of distributed.num_processes x samples_per_prompt \(3 x 2 = 6\)"
    with pytest.raises(ConfigError, match=message):
        preflight_config(cfg, data=False)
    with pytest.raises(ConfigError, match=message):  # the stage itself, before launching anything
        ppo.run(cfg, "tiny", RunDir(tmp_path / "run"), NullTracker())
    assert not (tmp_path / "run" / "ppo").exists()
    with pytest.raises(ConfigError, match=r"strategy fsdp is not supported for PPO; data-parallel PPO supports ddp"):
        cfg.ppo.check_processes(2, "fsdp")
    cfg.ppo.check_processes(4, "ddp")  # 8 = 4 x 2: fine
    cfg.ppo.check_processes(1, "fsdp")  # 1 process: nothing launched
