"""bench/gpu.py: its FLOP count, its GPU table, and a whole CPU run of the script on the tiny model.

The figures of a CPU run mean nothing; these tests check that every phase runs through our code
paths and that the JSON carries every field, so the script works when a GPU is lent.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

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
           "--seq-len", str(T), "--prompt-tokens", str(P), "--batch-size", str(B), "--rm-batch-size", str(PAIRS),
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
