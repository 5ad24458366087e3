"""bench/gpu.py: its FLOP count, its GPU table, its PPO / data-parallel arithmetic, and CPU runs of the
script on the tiny model.

The figures of a CPU run mean nothing; these tests check that every phase runs through our code
paths and that the JSON carries every field, so the script works when a GPU is lent. The vllm
phase needs the vLLM venv (`make vllm`) and a tiny model with a head size vLLM's CPU kernels
accept (>= 32; tests/test_vllm_engine.py); without the venv it is recorded as skipped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import MODEL_CACHE

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "gpu.py"
PYTHON = sys.executable


def _load_gpu_module():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu = _load_gpu_module()


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    return env


@pytest.mark.parametrize(
    ("name", "tflops"),
    [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.0),
     ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA A100 80GB PCIe", 312.0), ("Some Future GPU", None)],
)
def test_peak_table_by_gpu_name(name, tflops):
    assert gpu.peak_tflops_for(name)[0] == tflops


def _eager_tiny(tiny_tokenizer):
    from rlhf_core.config.model import TinyModelConfig
    from rlhf_core.models import build_tiny_model

    model = build_tiny_model(TinyModelConfig(hidden_size=128, intermediate_size=256), tiny_tokenizer)
    model.set_attn_implementation("eager")  # attention as bmm, which torch's FLOP counter sees (CPU sdpa it does not)
    return model


def test_sft_flop_formula_matches_torch_flop_counter(tiny_tokenizer):
    from torch.utils.flop_counter import FlopCounterMode

    from rlhf_core.batching import IGNORE_INDEX, SFTExample, collate_sft, count_target_tokens
    from rlhf_core.sft.train import sft_step_loss

    model = _eager_tiny(tiny_tokenizer)
    shapes = gpu.Shapes(model)
    T, P, B = 128, 124, 2  # a long prompt: trunk and attention, not the LM head, carry most FLOPs
    examples = [SFTExample(str(i), list(range(100 + i, 100 + i + T)), [IGNORE_INDEX] * P + list(range(100 + i + P, 100 + i + T)))
                for i in range(B)]
    batch = collate_sft(examples, 0)
    labelled = count_target_tokens(batch["labels"])
    with FlopCounterMode(display=False) as counter:
        loss, _ = sft_step_loss(model, batch, labelled)
        loss.backward()
    counted = counter.get_total_flops()
    formula = shapes.train_flops(tokens=B * T, seq_len=T, lm_head_positions=labelled)
    head = 6 * shapes.vocab * shapes.hidden * labelled
    assert head < 0.5 * counted  # the comparison is not only about the LM head
    assert formula == pytest.approx(counted, rel=0.01)  # norms/biases (counted in N) are the difference


@pytest.mark.parametrize("shared", [True, False], ids=["shared-prefix", "two-rows"])
def test_rm_flop_formula_matches_torch_flop_counter(tiny_tokenizer, shared):
    from torch.utils.flop_counter import FlopCounterMode

    from rlhf_core.batching import PairExample
    from rlhf_core.reward.model import RewardModel
    from rlhf_core.reward.train import collate_for, pair_step_loss

    model = _eager_tiny(tiny_tokenizer)
    shapes = gpu.Shapes(model)
    rm = RewardModel.from_model(model, pad_token_id=0)
    T, P = 64, 16
    prompt = list(range(100, 100 + P))
    pairs = [PairExample(str(i), prompt + list(range(200, 200 + T - P)), prompt + list(range(300, 300 + T - P)))
             for i in range(2)]
    batch = collate_for(shared)(pairs, 0)
    with FlopCounterMode(display=False) as counter:
        loss, _ = pair_step_loss(0.0)(rm, batch, len(pairs))
        loss.backward()
    row = 2 * T - P if shared else T  # as bench/gpu.py's run_rm counts a row
    assert int(batch["input_ids"].numel()) == len(pairs) * (2 * T - P if shared else 2 * T)
    formula = shapes.train_flops(tokens=int(batch["input_ids"].numel()), seq_len=row,
                                 sequences_with_scalar_head=2 * len(pairs))
    assert formula == pytest.approx(counter.get_total_flops(), rel=0.01)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs the benchmark instead of refusing")
def test_without_cuda_it_refuses_with_one_clear_line(tmp_path):
    out = tmp_path / "never.json"
    proc = subprocess.run([PYTHON, str(SCRIPT), "--out", str(out)], capture_output=True, text=True, cwd=REPO,
                          env=_env(), timeout=300)
    assert proc.returncode == 2
    assert "no CUDA device is visible" in proc.stderr and "--allow-cpu --model tiny" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


@pytest.mark.slow
def test_cpu_run_on_the_tiny_model_reports_every_figure(tmp_path):
    out = tmp_path / "gpu_cpu.json"
    T, P, B, PAIRS, STEPS = 48, 16, 2, 1, 2
    cmd = [PYTHON, str(SCRIPT), "--allow-cpu", "--model", "tiny", "--cache-dir", str(MODEL_CACHE), "--threads", "1",
           "--phases", "sft,rm,gen,ppo", "--seq-len", str(T), "--prompt-tokens", str(P), "--batch-size", str(B), "--rm-batch-size", str(PAIRS),
           "--warmup", "1", "--steps", str(STEPS), "--gen-batch", "2", "--gen-tokens", "6", "--gen-repeats", "1",
           "--ppo-batch", "2", "--ppo-micro", "2", "--ppo-warmup", "1", "--ppo-steps", "1",
           "--peak-tflops", "0.05", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert str(out) in proc.stdout  # the table names the file
    result = json.loads(out.read_text())

    summary = result["summary"]
    for key in ("sft_tokens_per_s", "sft_mfu", "rm_tokens_per_s", "rm_mfu", "generation_tokens_per_s",
                "ppo_generation_share", "peak_memory_gib"):
        assert summary[key] is not None and summary[key] > 0, key
    assert summary["ppo_generation_share"] < 1

    sft, rm, gen, ppo = result["sft"], result["rm"], result["gen"], result["ppo"]
    assert sft["steps_timed"] == STEPS and rm["steps_timed"] == STEPS
    assert sft["tokens_per_step"] == B * T  # fixed-length rows: no padding
    assert sft["labelled_positions_per_step"] == B * (T - P)
    assert rm["layout"] == "shared-prefix" and rm["tokens_per_step"] == PAIRS * (2 * T - P)  # one row a pair
    for phase in (sft, rm):
        for key in ("tokens_per_s", "mfu", "achieved_tflops", "model_flops_per_step", "step_seconds_median",
                    "peak_memory_gib", "loss_last"):
            assert phase[key] > 0, key
        assert phase["mfu"] == pytest.approx(phase["achieved_tflops"] / 0.05)
    assert rm["pairs_per_s"] > 0
    assert gen["sampled_tokens"] == 2 * 6 and gen["tokens_per_s"] > 0 and gen["peak_memory_gib"] > 0
    for key in ("generation_s", "scoring_s", "update_s", "response_length_mean", "generation_tokens_per_s_valid"):
        assert ppo[key] > 0, key
    assert ppo["generation_share"] == pytest.approx(
        ppo["generation_s"] / (ppo["generation_s"] + ppo["scoring_s"] + ppo["update_s"]))

    model = result["model"]
    assert model["source"] == "tiny" and model["precision"] == "fp32"
    assert model["block_parameters_N"] > 0 and model["layers_L"] == 2
    assert result["device"] == {**result["device"], "type": "cpu", "peak_tflops": 0.05, "peak_source": "--peak-tflops"}


# ----------------------------------------------------------------------------- vllm, ppo --ppo-engine, ppo-dp
def _cpu_args(*extra: str):
    return gpu.parse_args(["--allow-cpu", "--model", "tiny", "--cache-dir", str(MODEL_CACHE), "--threads", "1", *extra])


def test_new_phases_and_their_options_parse_and_bad_values_are_refused(capsys):
    args = _cpu_args("--phases", "vllm,ppo-dp", "--ppo-engine", "vllm", "--dp-processes", "4", "--vllm-syncs", "2",
                     "--tiny-hidden-size", "128", "--tiny-heads", "2")
    assert args.phases == ["vllm", "ppo-dp"] and args.ppo_engine == "vllm" and args.dp_processes == 4
    assert gpu.parse_args([]).phases == list(gpu.PHASES)  # every phase by default; the ones that cannot run say so
    tiny = gpu.model_config(args, "cpu").tiny
    assert (tiny.hidden_size // tiny.num_heads, tiny.num_layers) == (64, 2)  # head size 64: what vLLM's CPU kernels take
    assert gpu.model_config(_cpu_args(), "cpu").tiny == type(tiny)()  # no --tiny-*: model.tiny's defaults
    for bad, message in ([["--phases", "ppo,dp"], "unknown dp"], [["--ppo-engine", "sglang"], "invalid choice"],
                         [["--dp-processes", "0"], "--dp-processes must be >= 1"],
                         [["--vllm-syncs", "0"], "--vllm-syncs must be >= 1"],
                         [["--phases", "ppo-dp", "--ppo-warmup", "0"], "--ppo-warmup must be >= 1 for ppo-dp"]):
        with pytest.raises(SystemExit):
            gpu.parse_args(bad)
        assert message in capsys.readouterr().err, bad


def test_ppo_config_times_whole_vllm_steps_and_asks_the_vllm_engine():
    hf = gpu.ppo_config(_cpu_args("--ppo-batch", "8", "--ppo-micro", "2", "--ppo-warmup", "1", "--ppo-steps", "3"))
    assert hf.rollout.engine == "hf" and hf.optim.max_steps == 4 and hf.rollout_size == 8 and hf.minibatch_size == 8
    vllm = gpu.ppo_config(_cpu_args("--ppo-batch", "8", "--ppo-micro", "2", "--ppo-engine", "vllm", "--gen-tokens", "32",
                                    "--vllm-kv-cache-gib", "3", "--vllm-python", "/opt/v/bin/python"))
    # the last step of a run syncs no weights: one untimed step more, so every timed step pays its sync
    assert vllm.optim.max_steps == 1 + 3 + 1
    assert (vllm.rollout.engine, vllm.rollout.kv_cache_gib, vllm.rollout.vllm_python) == ("vllm", 3, "/opt/v/bin/python")
    assert vllm.rollout.max_model_len == vllm.optim.max_length == 256 + 32
    assert vllm.rollout.gpu_memory_utilization == type(vllm.rollout)().gpu_memory_utilization  # ppo.rollout's default


def test_ppo_timers_share_the_step_between_generation_scoring_update_and_weight_sync():
    args = _cpu_args("--ppo-engine", "vllm", "--ppo-warmup", "1", "--ppo-steps", "2", "--ppo-batch", "4", "--ppo-micro", "4")
    step = {"time/generation": 2.0, "time/scoring": 1.0, "time/update": 4.0, "time/weight_sync": 1.0,
            "ppo/response_length": 10.0, "ppo/logprob_mismatch": 1e-5}
    warm = {**step, "time/generation": 50.0}  # the untimed first step
    last = {**step, "time/weight_sync": 0.0, "ppo/logprob_mismatch": 9.0}  # the untimed extra step: left out
    r = gpu.ppo_timers(args, [warm, step, {**step, "time/update": 6.0}, last])
    assert r["steps_timed"] == 2 and (r["generation_s"], r["scoring_s"], r["update_s"], r["weight_sync_s"]) == (4, 2, 10, 2)
    assert r["generation_share"] == pytest.approx(4 / 18) and r["weight_sync_share"] == pytest.approx(2 / 18)
    assert r["step_seconds_median"] == pytest.approx(9.0)  # median of 8 and 10
    assert r["generation_tokens_per_s_valid"] == pytest.approx(2 * 10 * 4 / 4)
    assert r["logprob_mismatch_max"] == 1e-5
    hf = gpu.ppo_timers(_cpu_args("--ppo-warmup", "1", "--ppo-steps", "1"),
                        [step, {k: v for k, v in step.items() if k not in ("time/weight_sync", "ppo/logprob_mismatch")}])
    assert hf["weight_sync_s"] is None and "weight_sync_share" not in hf and hf["generation_share"] == pytest.approx(2 / 7)


def test_dp_scaling_arithmetic():
    assert gpu.scaling_efficiency(10.0, 5.0, 2) == 1.0  # 2 processes halve the step: linear
    assert gpu.scaling_efficiency(10.0, 10.0, 2) == 0.5  # no faster at all
    assert gpu.scaling_efficiency(8.0, 2.5, 4) == pytest.approx(0.8)
    # stamps at the end of steps 1..5: warmup 2 leaves steps 3 and 4 (the extra vllm step 5 is not timed)
    assert gpu.step_window([1.0, 3.0, 6.0, 10.0, 15.0], warmup=2, steps=2) == [3.0, 4.0]
    assert gpu.step_window([1.0, 3.0, 6.0], warmup=1, steps=2) == [2.0, 3.0]
    args = _cpu_args()
    assert gpu.dp_processes(args, SimpleNamespace(cuda=False, info={})) == 2
    assert gpu.dp_processes(args, SimpleNamespace(cuda=True, info={"count": 8})) == 8  # one per visible device
    assert gpu.dp_processes(_cpu_args("--dp-processes", "3"), SimpleNamespace(cuda=True, info={"count": 8})) == 3


def test_missing_vllm_venv_and_too_few_processes_are_recorded_as_skipped(tmp_path):
    out = tmp_path / "gpu.json"
    rc = gpu.main(["--allow-cpu", "--model", "tiny", "--cache-dir", str(MODEL_CACHE), "--threads", "1",
                   "--phases", "vllm,ppo,ppo-dp", "--ppo-engine", "vllm", "--vllm-python", str(tmp_path / "no-venv" / "python"),
                   "--ppo-batch", "2", "--ppo-micro", "1", "--dp-processes", "2", "--out", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    for phase in ("vllm", "ppo", "ppo-dp"):  # each names the missing Python and how to build it
        assert "no-venv/python does not exist: run `make vllm`" in result[phase]["skipped"], phase
        assert result["summary"]["skipped"][phase] == result[phase]["skipped"]
    assert result["summary"]["vllm_tokens_per_s"] is None and result["summary"]["peak_memory_gib"] is None
    assert result["model"]["layers_L"] == 2  # the shapes are still recorded

    rc = gpu.main(["--allow-cpu", "--model", "tiny", "--cache-dir", str(MODEL_CACHE), "--threads", "1",
                   "--phases", "ppo-dp", "--dp-processes", "1", "--out", str(out)])
    assert rc == 0
    assert json.loads(out.read_text())["ppo-dp"]["skipped"].startswith("needs 2 or more processes, this run has 1")


def test_a_rollout_batch_that_processes_cannot_share_is_refused_before_any_phase(tmp_path, capsys):
    out = tmp_path / "never.json"
    rc = gpu.main(["--allow-cpu", "--model", "tiny", "--cache-dir", str(MODEL_CACHE), "--phases", "sft,ppo-dp",
                   "--dp-processes", "3", "--ppo-batch", "4", "--ppo-micro", "2", "--out", str(out)])
    assert rc == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "error: ppo: the rollout batch (4 responses) must be a multiple of distributed.num_processes" in err
    assert "[gpu-bench] sft" not in err  # nothing ran


@pytest.mark.slow
def test_cpu_run_of_vllm_beside_gen_on_a_tiny_model_vllm_serves(tmp_path):
    """~30 s: vLLM's start dominates."""
    from rlhf_core.config.ppo import RolloutConfig
    from rlhf_core.rollout import vllm_venv_problem

    vllm_python = os.environ.get("RLHF_TEST_VLLM_PYTHON", str(REPO / ".venv-vllm" / "bin" / "python"))
    if (problem := vllm_venv_problem(RolloutConfig(engine="vllm", vllm_python=vllm_python))) and not os.environ.get("CI"):
        pytest.skip(problem)
    out = tmp_path / "gpu_vllm.json"
    B, G, CALLS = 4, 8, 2
    cmd = [PYTHON, str(SCRIPT), "--allow-cpu", "--model", "tiny", "--tiny-hidden-size", "128", "--tiny-heads", "2",
           "--cache-dir", str(MODEL_CACHE), "--threads", "1", "--phases", "gen,vllm", "--vllm-python", vllm_python,
           "--vllm-kv-cache-gib", "1", "--seq-len", "32", "--prompt-tokens", "8", "--gen-batch", str(B),
           "--gen-tokens", str(G), "--gen-repeats", str(CALLS), "--vllm-syncs", "2", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    vllm, summary = result["vllm"], result["summary"]
    assert "skipped" not in vllm and vllm["engine"].startswith("vllm")
    assert vllm["calls_timed"] == CALLS and vllm["valid_tokens"] + vllm["tokens_short_of_budget"] == CALLS * B * G
    assert vllm["valid_tokens"] > 0 and vllm["tokens_per_s"] > 0 and vllm["start_seconds"] > 0
    assert len(vllm["weight_sync_seconds"]) == 2 and min(vllm["weight_sync_seconds"]) > 0
    assert summary["vllm_vs_gen_tokens_per_s"] == pytest.approx(vllm["tokens_per_s"] / result["gen"]["tokens_per_s"])
    assert "| vllm (rollout) |" in proc.stdout


@pytest.mark.slow
def test_cpu_run_of_data_parallel_ppo_against_one_process(tmp_path):
    """~45 s: 1 and 2 gloo processes under torchrun, each loading the tiny model."""
    out = tmp_path / "gpu_dp.json"
    cmd = [PYTHON, str(SCRIPT), "--allow-cpu", "--model", "tiny", "--cache-dir", str(MODEL_CACHE), "--threads", "1",
           "--phases", "ppo-dp", "--gen-tokens", "6", "--ppo-batch", "2", "--ppo-micro", "1", "--ppo-warmup", "1",
           "--ppo-steps", "2", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dp = json.loads(out.read_text())["ppo-dp"]
    one, two = dp["one_process"], dp["n_processes"]
    assert (dp["processes"], dp["backend"], one["processes"], two["processes"]) == (2, "gloo", 1, 2)
    assert one["steps_timed"] == two["steps_timed"] == 2 and two["rows_per_process"] == 1
    assert dp["steps_per_s_1"] == one["steps_per_s"] == pytest.approx(2 / one["seconds"])
    assert dp["scaling_efficiency"] == pytest.approx(one["seconds"] / (2 * two["seconds"]))
    for run in (one, two):  # the loop's timers account for rank 0's clock (nothing else runs in a step)
        timers = run["generation_s"] + run["scoring_s"] + run["update_s"]
        assert 0.5 * run["seconds"] < timers <= run["seconds"] * 1.01
    assert "| ppo-dp (hf, gloo) |" in proc.stdout
