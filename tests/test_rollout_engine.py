"""The rollout engine interface (rlhf_core.rollout) without vLLM: the hf engine is today's sampler,
the vllm engine's config and process-handling rules on fakes of the engine process.

The real vLLM engine is tests/test_vllm_engine.py.
"""

from __future__ import annotations

import sys
import textwrap

import psutil
import pytest
import torch

from rlhf_core.config.ppo import PPOConfig, RolloutConfig
from rlhf_core.errors import ConfigError, ModelLoadError, TrainingError
from rlhf_core.ppo.experience import check_engine_gap, engine_logprob_gap
from rlhf_core.rollout import vllm_venv_problem
from rlhf_core.rollout.hf_engine import HFEngine
from rlhf_core.rollout.vllm_engine import VLLMEngine
from rlhf_core.sampling import Rollout, sample
from tests.test_ppo_loop import char_tokenizer, tiny_llama

PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
GEN = {"max_new_tokens": 6, "eos_id": 1, "pad_id": 0, "temperature": 0.7, "top_k": 0, "top_p": 1.0}


@pytest.fixture(scope="module")
def policy():
    return tiny_llama(char_tokenizer()).eval()


@pytest.mark.parametrize("seeds", [None, [3, 1, 4]])
@pytest.mark.parametrize("score_tokens,keep_hidden", [(True, True), (False, False)])
def test_hf_engine_is_the_sampler_bit_for_bit(policy, score_tokens, keep_hidden, seeds):
    engine = HFEngine(policy, score_tokens=score_tokens, keep_hidden=keep_hidden)
    torch.manual_seed(7)
    got = engine.generate(PROMPTS, seeds=seeds, **GEN)
    torch.manual_seed(7)
    want = sample(policy, PROMPTS, score_tokens=score_tokens, keep_hidden=keep_hidden, seeds=seeds, **GEN)
    for name in ("query_ids", "query_mask", "response_ids", "response_mask", "has_eos", "logprobs", "hidden"):
        a, b = getattr(got, name), getattr(want, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert torch.equal(a, b), name
    assert engine.load_weights(policy) == 0.0
    with pytest.raises(ValueError, match="module it was built on"):
        engine.load_weights(tiny_llama(char_tokenizer(), seed=1))


def test_missing_vllm_venv_is_one_line_naming_the_install_command(policy, tmp_path):
    cfg = RolloutConfig(engine="vllm", vllm_python=str(tmp_path / "nope" / "bin" / "python"))
    problem = vllm_venv_problem(cfg)
    assert problem is not None and "\n" not in problem
    assert "make vllm" in problem and str(tmp_path / "nope") in problem
    with pytest.raises(ConfigError, match="make vllm"):
        VLLMEngine(policy, cfg)


def test_preflight_names_a_missing_vllm_venv(tmp_path):
    from flows.preflight import preflight_config
    from rlhf_core.config.pipeline import load_config

    cfg = load_config("smoke", ["ppo.rollout.engine=vllm", f"ppo.rollout.vllm_python={tmp_path}/py"])
    with pytest.raises(ConfigError, match=r"ppo.rollout.engine is 'vllm' but .* run `make vllm`"):
        preflight_config(cfg)


def test_preflight_names_the_key_that_asked_for_vllm(tmp_path):
    from flows.preflight import preflight_config
    from rlhf_core.config.pipeline import load_config

    missing = f"ppo.rollout.vllm_python={tmp_path}/py"
    cfg = load_config("smoke", ["eval.engine=vllm", missing])  # PPO on hf, the evaluation on vLLM
    assert cfg.vllm_used_by() == ["eval"]
    with pytest.raises(ConfigError, match=r"(?m)^eval.engine is 'vllm' but .* run `make vllm`"):
        preflight_config(cfg)
    off = load_config("smoke", ["eval.engine=vllm", "eval.enabled=false", missing])
    assert off.vllm_used_by() == []
    # eval.engine unset: the evaluation follows the PPO stage's engine; eval.engine=hf keeps it on the sampler
    assert load_config("smoke", ["ppo.rollout.engine=vllm"]).vllm_used_by() == ["ppo", "eval"]
    assert load_config("smoke", ["ppo.rollout.engine=vllm", "eval.engine=hf"]).vllm_used_by() == ["ppo"]


def test_eval_on_vllm_refuses_sampling_filters_naming_where_the_engine_came_from():
    from rlhf_core.config.pipeline import load_config

    with pytest.raises(ConfigError, match=r"eval.engine is 'vllm'.*set eval.top_k=0 and eval.top_p=1.0"):
        load_config("smoke", ["eval.engine=vllm", "eval.top_p=0.9"])
    with pytest.raises(ConfigError, match=r"ppo.rollout.engine \(eval.engine unset\) is 'vllm'"):
        load_config("smoke", ["ppo.rollout.engine=vllm", "eval.top_k=5"])
    load_config("smoke", ["ppo.rollout.engine=vllm", "eval.engine=hf", "eval.top_k=5"])  # the sampler filters


def test_vllm_engine_config_rules():
    with pytest.raises(ValueError, match="rollout_logprobs"):
        PPOConfig(rollout={"engine": "vllm"}, rollout_logprobs="sampler")
    with pytest.raises(ValueError, match="top_k=0 and top_p=1.0"):
        PPOConfig(rollout={"engine": "vllm"}, top_p=0.9)
    with pytest.raises(ValueError, match="extra"):
        PPOConfig(rollout={"engine": "vllm", "kv_cache": 2})
    assert PPOConfig(rollout={"engine": "vllm"}, top_p=1.0).rollout.engine == "vllm"


def test_engine_logprob_mismatch_is_the_largest_gap_on_response_tokens():
    cfg = PPOConfig(rollout={"max_logprob_mismatch": 0.5})
    mask = torch.tensor([[True, True, False], [True, False, False]])
    ro = Rollout(
        query_ids=torch.ones(2, 1, dtype=torch.long), query_mask=torch.ones(2, 1, dtype=torch.long),
        response_ids=torch.ones(2, 3, dtype=torch.long), response_mask=mask, has_eos=torch.tensor([False, False]),
        logprobs=torch.tensor([[-1.0, -2.0, -9.0], [-3.0, 5.0, 5.0]]),
    )
    trainer = torch.tensor([[-1.1, -2.0, 0.0], [-3.3, 0.0, 0.0]])  # masked positions differ by far more: ignored
    gap = engine_logprob_gap(ro, trainer)
    assert gap == pytest.approx(0.3)
    assert check_engine_gap(gap, cfg, 1) == gap
    with pytest.raises(TrainingError, match=r"step 4 .* up to 0\.3 nats .*max_logprob_mismatch = 0\.2"):
        check_engine_gap(gap, PPOConfig(rollout={"max_logprob_mismatch": 0.2}), 4)


# ----------------------------------------------------------------------------- fakes of the engine process
def fake_engine(tmp_path, body: str) -> RolloutConfig:
    """A RolloutConfig whose 'vLLM Python' is a script speaking (some of) the protocol: our client's logic only."""
    script = tmp_path / "fake-python"
    script.write_text(f"#!{sys.executable}\nimport json, sys\n" + textwrap.dedent(body))
    script.chmod(0o755)
    return RolloutConfig(engine="vllm", vllm_python=str(script), start_timeout_s=60)


def test_an_engine_that_cannot_serve_the_model_names_the_error(policy, tmp_path):
    cfg = fake_engine(tmp_path, """
        print('loading...', file=sys.stderr)
        print(json.dumps({"error": "ValueError: Model architectures ['X'] are not supported"}), flush=True)
        sys.exit(1)
    """)
    with pytest.raises(ModelLoadError, match=r"cannot serve the policy \(LlamaForCausalLM, float32\): .*not supported"):
        VLLMEngine(policy, cfg)


def test_an_engine_dying_at_start_names_its_exit_status_and_last_log_line(policy, tmp_path):
    cfg = fake_engine(tmp_path, """
        print('Fatal: out of memory for the KV cache', file=sys.stderr)
        sys.exit(3)
    """)
    with pytest.raises(TrainingError, match=r"died during start \(exit status 3\); last log line: Fatal: out of memory"):
        VLLMEngine(policy, cfg, log_path=tmp_path / "engine.log")
    assert "out of memory" in (tmp_path / "engine.log").read_text()


def test_an_engine_dying_mid_stage_fails_the_request_and_leaves_no_process(policy, tmp_path):
    cfg = fake_engine(tmp_path, """
        import os, sys
        print(json.dumps({"ready": True, "seconds": 0.0}), flush=True)
        sys.stdin.readline()
        print('Segmentation fault in the sampler', file=sys.stderr)
        os._exit(139)
    """)
    engine = VLLMEngine(policy, cfg, log_path=tmp_path / "engine.log")
    pid = engine.proc.pid
    with pytest.raises(TrainingError, match=r"died during generate \(exit status 139\).*Segmentation fault.*--resume"):
        engine.generate(PROMPTS, seeds=[1, 2, 3], **GEN)
    engine.close()
    engine.close()  # idempotent
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not engine.dir.exists()


def test_a_failed_request_is_named_and_the_reply_is_turned_into_a_rollout(policy, tmp_path):
    # replies: a rollout whose second row stops at EOS (id 1) and whose third ran out of tokens
    cfg = fake_engine(tmp_path, """
        print(json.dumps({"ready": True, "seconds": 0.0}), flush=True)
        req = json.loads(sys.stdin.readline())
        assert req["seeds"] == [1, 2, 3] and req["stop_ids"] == [1], req
        print(json.dumps({"tokens": [[4, 5], [6, 1], [7]], "logprobs": [[-1.0, -2.0], [-3.0, -4.0], [-5.0]]}), flush=True)
        sys.stdin.readline()
        print(json.dumps({"error": "RuntimeError: reload failed"}), flush=True)
        sys.stdin.readline()
    """)
    with VLLMEngine(policy, cfg) as engine:
        ro = engine.generate(PROMPTS, seeds=[1, 2, 3], **GEN)
        assert ro.response_ids.tolist() == [[4, 5], [6, 1], [7, 0]]
        assert ro.response_mask.tolist() == [[True, True], [True, True], [True, False]]
        assert ro.has_eos.tolist() == [False, True, False]
        assert ro.logprobs.tolist() == [[-1.0, -2.0], [-3.0, -4.0], [-5.0, 0.0]]
        assert ro.query_ids.tolist() == [[0, 5, 6, 7], [0, 0, 8, 9], [10, 11, 12, 13]]
        with pytest.raises(TrainingError, match="load_weights failed: RuntimeError: reload failed"):
            engine.load_weights(policy)
        with pytest.raises(ValueError, match="top-k/top-p"):
            engine.generate(PROMPTS, seeds=[1, 2, 3], **{**GEN, "top_k": 5})


def test_closing_an_engine_that_died_with_a_request_unsent_raises_nothing(policy, tmp_path):
    # the request stays in stdin's buffer (the flush failed: no reader), which close() flushes again
    cfg = fake_engine(tmp_path, """
        print(json.dumps({"ready": True, "seconds": 0.0}), flush=True)
        sys.exit(4)
    """)
    engine = VLLMEngine(policy, cfg, log_path=tmp_path / "engine.log")
    engine.proc.wait(timeout=30)
    with pytest.raises(TrainingError, match=r"died during generate \(exit status 4\)"):
        engine.generate([[5, 6]], seeds=[1], **GEN)
    engine.close()
    assert not engine.dir.exists()


def test_the_engine_gets_this_process_gpu_as_the_parent_sees_it(monkeypatch):
    from rlhf_core.rollout.vllm_engine import visible_device

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert visible_device(torch.device("cuda", 1)) == "3"  # local index 1 = physical GPU 3
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_device(torch.device("cuda", 1)) == "1"


def test_a_tiny_model_whose_heads_vllm_cannot_run_on_cpu_is_refused_before_anything_starts(tmp_path):
    from flows.preflight import preflight_config
    from rlhf_core.config.pipeline import load_config

    vllm = [f"workspace={tmp_path}", "model.device=cpu", "ppo.rollout.engine=vllm", f"ppo.rollout.vllm_python={sys.executable}"]
    with pytest.raises(ConfigError, match=r"head size of 32 or more; the tiny model's is 16 \(model.tiny.hidden_size"):
        preflight_config(load_config("smoke", vllm), data=False)
    preflight_config(load_config("smoke", [*vllm, "model.tiny.hidden_size=128", "model.tiny.num_heads=2"]), data=False)
    preflight_config(load_config("smoke", [f"workspace={tmp_path}", "model.device=cpu"]), data=False)  # hf: any head size
