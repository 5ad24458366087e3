"""The REAL vLLM rollout engine on CPU (rlhf_core.rollout.vllm_engine), from the venv `make vllm` builds.

Tiny random Llamas over the character tokenizer of tests/test_ppo_loop.py, fp32, eager mode,
1 GiB of KV cache. vLLM's CPU attention kernels need a head size of 32 or more (64 here; the
tiny models of the other tests use 8 or 16, which vLLM refuses: a test below checks that error).
One engine serves the module; a start costs ~10-20 s here (~50 s for SmolLM2-135M). Outside CI,
the module is skipped when the venv is absent; in CI `make test` builds it first, so it never skips.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest
import torch

from rlhf_core.config.ppo import RolloutConfig
from rlhf_core.errors import ModelLoadError, TrainingError
from rlhf_core.ppo.logprobs import policy_logprobs
from rlhf_core.rollout import vllm_venv_problem
from rlhf_core.rollout.vllm_engine import VLLMEngine
from tests.test_ppo_loop import PROMPTS, TokenFractionReward, char_tokenizer, ppo_cfg

REPO = Path(__file__).resolve().parent.parent
VLLM_PYTHON = os.environ.get("RLHF_TEST_VLLM_PYTHON", str(REPO / ".venv-vllm" / "bin" / "python"))
CFG = RolloutConfig(engine="vllm", vllm_python=VLLM_PYTHON, kv_cache_gib=1, start_timeout_s=300)
TEMPERATURE = 0.7
GEN = {"max_new_tokens": 12, "eos_id": 1, "pad_id": 0, "temperature": TEMPERATURE, "top_k": 0, "top_p": 1.0}
# |vLLM - trainer| log-prob per response token, fp32 on CPU (SmolLM2-135M + LoRA: <= 5.5e-5, bench/rollout_engines.py)
LOGPROB_BOUND = 1e-4

if vllm_venv_problem(CFG) and not os.environ.get("CI"):
    pytest.skip(f"the vLLM venv is absent ({VLLM_PYTHON}); build it with `make vllm`", allow_module_level=True)


def vllm_llama(seed: int = 0, *, head_dim: int = 64):
    """A 2-layer Llama over the 128-symbol character vocabulary, 2 heads of ``head_dim``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = char_tokenizer()
    config = LlamaConfig(
        vocab_size=128, hidden_size=2 * head_dim, intermediate_size=4 * head_dim, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # entropy ~3 nats at temperature 0.7, not the random init's near-uniform ~4.8
        model.model.embed_tokens.weight.mul_(2.0)
    return model


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


@pytest.fixture(scope="module")
def policy():
    return vllm_llama()


@pytest.fixture(scope="module")
def engine(policy):
    with VLLMEngine(policy, CFG) as eng:
        yield eng


def prompt_ids(tok, n: int = 8) -> list[list[int]]:
    return [tok(p)["input_ids"] for p in PROMPTS[:n]]


def trainer_logprobs(model, ro) -> torch.Tensor:
    with torch.no_grad():
        return policy_logprobs(model, ro.query_response_ids, ro.attention_mask, ro.response_start, TEMPERATURE)


def engine_children() -> set[int]:
    """Pids of the vLLM engine processes below this one (the module's shared engine among them)."""
    pids = set()
    for proc in psutil.Process().children(recursive=True):
        try:  # other tests' children may be zombies not yet reaped, or gone by now
            if "vllm_server" in " ".join(proc.cmdline()):
                pids.add(proc.pid)
        except psutil.Error:
            continue
    return pids


def test_generate_returns_valid_rollouts_with_the_trainers_logprobs(engine, policy, tok):
    ids = prompt_ids(tok)
    ro = engine.generate(ids, seeds=list(range(8)), **GEN)
    B, R = ro.response_ids.shape
    assert B == 8 and 1 <= R <= GEN["max_new_tokens"]
    assert ro.query_ids.shape[0] == 8 and ro.logprobs.shape == (B, R)
    assert bool(((ro.response_ids >= 0) & (ro.response_ids < 128)).all())
    lengths = ro.response_mask.sum(-1)
    for row in range(B):  # valid up to the first EOS (or max_new_tokens), pad after
        n = int(lengths[row])
        assert bool(ro.response_mask[row, :n].all()) and not bool(ro.response_mask[row, n:].any())
        assert bool((ro.response_ids[row, n:] == GEN["pad_id"]).all())
        assert bool(ro.has_eos[row]) == (int(ro.response_ids[row, n - 1]) == GEN["eos_id"])
        assert bool(ro.has_eos[row]) or n == GEN["max_new_tokens"]
    gap = (ro.logprobs - trainer_logprobs(policy, ro)).abs()[ro.response_mask]
    assert float(gap.max()) < LOGPROB_BOUND, float(gap.max())
    assert float(ro.logprobs[ro.response_mask].max()) <= 0.0


def test_a_rows_tokens_depend_on_its_seed_alone(engine, tok):
    ids = prompt_ids(tok)
    a = engine.generate(ids, seeds=list(range(8)), **GEN)
    b = engine.generate(ids[:3], seeds=[0, 1, 2], **GEN)  # same seeds, a smaller batch
    c = engine.generate(ids, seeds=list(range(100, 108)), **GEN)
    for row in range(3):
        n = int(a.response_mask[row].sum())
        assert a.response_ids[row, :n].tolist() == b.response_ids[row, :n].tolist()
        assert int(b.response_mask[row].sum()) == n
    assert a.response_ids.tolist() != c.response_ids[:, : a.response_ids.shape[1]].tolist()


def test_a_batch_past_the_schedulers_token_budget_samples_with_per_row_seeds(engine, tok):
    """48 prompts of ~180 tokens: more prompt tokens than vLLM's CPU default step budget (2048), which
    with chunked prefill split a seeded request and failed ("CPU Generator does not use offset"; the
    demo's best-of-N candidates hit it). One long request, seeded, must still draw what it draws alone."""
    text = " ".join(PROMPTS) * 3
    ids = [tok(text[i : i + 400])["input_ids"][:180] for i in range(48)]
    seeds = list(range(1000, 1048))
    ro = engine.generate(ids, seeds=seeds, **GEN)
    assert ro.response_ids.shape[0] == 48
    alone = engine.generate(ids[40:41], seeds=seeds[40:41], **GEN)
    n = int(alone.response_mask[0].sum())
    assert int(ro.response_mask[40].sum()) == n
    assert ro.response_ids[40, :n].tolist() == alone.response_ids[0, :n].tolist()


def test_the_stop_token_ends_a_response_and_counts_as_eos(engine, tok):
    ids = prompt_ids(tok, 1)
    free = engine.generate(ids, seeds=[5], **{**GEN, "eos_id": 127})  # 127 = DEL: never in the text vocabulary
    stop = int(free.response_ids[0, 2])
    first = free.response_ids[0].tolist().index(stop)
    ro = engine.generate(ids, seeds=[5], **{**GEN, "eos_id": [127, stop]})
    assert ro.response_ids[0, : first + 1].tolist() == free.response_ids[0, : first + 1].tolist()
    assert int(ro.response_mask[0].sum()) == first + 1 and bool(ro.has_eos[0])


def test_reloaded_weights_change_what_is_sampled(engine, policy, tok):
    """Full weights, then a LoRA policy (merged before the sync), then the original weights back.

    The last prompt is longer than vLLM's CPU KV block (128 tokens), so its first block sits in the
    prefix cache across the syncs: the engine must not reuse keys/values of the old weights.
    """
    from peft import LoraConfig, get_peft_model

    ids, seeds = prompt_ids(tok) + [tok(" ".join(PROMPTS) * 2)["input_ids"][:160]], list(range(9))
    before = engine.generate(ids, seeds=seeds, **GEN)
    other = vllm_llama(seed=1)
    assert engine.load_weights(other) > 0
    after = engine.generate(ids, seeds=seeds, **GEN)
    assert after.response_ids.tolist() != before.response_ids.tolist()
    assert float((after.logprobs - trainer_logprobs(other, after)).abs()[after.response_mask].max()) < LOGPROB_BOUND

    lora = get_peft_model(vllm_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # B = 0 at init: make the adapter matter
    engine.load_weights(lora)
    adapted = engine.generate(ids, seeds=seeds, **GEN)
    assert adapted.response_ids.tolist() != before.response_ids.tolist()
    gap = (adapted.logprobs - trainer_logprobs(lora, adapted)).abs()[adapted.response_mask]
    assert float(gap.max()) < LOGPROB_BOUND
    assert hasattr(lora, "peft_config")  # the policy itself stays a peft model (the merge ran on a copy)

    engine.load_weights(policy)
    again = engine.generate(ids, seeds=seeds, **GEN)
    assert again.response_ids.tolist() == before.response_ids.tolist()


def test_evaluation_and_best_of_n_sample_through_the_vllm_engine(engine, policy, tok):
    """compare_methods on the engine: SFT and best-of-N from the weights it started on, then each policy loaded
    in turn; a copy of the SFT weights draws the SFT samples again (per-row seeds), its KL is 0."""
    from rlhf_core.best_of_n import best_of_n_candidates
    from rlhf_core.config.eval import EvalConfig
    from rlhf_core.evaluation import compare_methods

    reward = TokenFractionReward(tok.convert_tokens_to_ids("e"), n=12)
    cfg = EvalConfig(best_of_n=[1, 4], n_prompts=None, max_new_tokens=12, n_boot=50, batch_size=4, gold=False)
    other, copy = vllm_llama(seed=1), vllm_llama()
    try:
        comp = compare_methods({"ppo": other, "copy": copy}, tok, reference=policy, reward_model=reward,
                               reward_tokenizer=tok, prompts=PROMPTS, cfg=cfg, prompt_format="plain",
                               engine=engine, max_engine_gap=LOGPROB_BOUND)
        reports = comp.reports
        assert list(reports) == ["sft", "best-of-1", "best-of-4", "ppo", "copy"]
        assert [s["policy_response"] for s in reports["copy"].samples] == [s["sft_response"] for s in reports["copy"].samples]
        assert reports["copy"].estimates["kl_to_ref"].value == pytest.approx(0.0, abs=1e-5)
        assert reports["ppo"].estimates["kl_to_ref"].value > 0.01  # other weights: the sync took
        for name in ("ppo", "copy"):
            assert reports[name].settings["engine"] == "vllm"
            assert reports[name].settings["engine_logprob_gap"] < LOGPROB_BOUND
        rm1 = [s["policy_rm"] for s in reports["best-of-1"].samples]
        rm4 = [s["policy_rm"] for s in reports["best-of-4"].samples]
        assert all(b >= a for a, b in zip(rm1, rm4, strict=True))

        engine.load_weights(policy)  # best-of-N on its own, from the same candidates' seeds: the same picks
        cand = best_of_n_candidates(policy, tok, reward, tok, PROMPTS, n=4, max_new_tokens=12, temperature=0.7,
                                    seed=cfg.seed + 1, batch_size=3, prompt_format="plain", engine=engine)
        assert cand.best()[0] == [s["policy_response"] for s in reports["best-of-4"].samples]
    finally:
        engine.load_weights(policy)  # the module's engine serves the module's policy


def test_a_model_vllm_cannot_serve_is_named_before_anything_runs():
    running = engine_children()
    with pytest.raises(ModelLoadError, match=r"cannot serve the policy \(LlamaForCausalLM, float32\): .*head_dim=16"):
        VLLMEngine(vllm_llama(head_dim=16), CFG)
    assert engine_children() == running


def test_the_engine_dying_mid_stage_fails_the_request_naming_it(tmp_path):
    running = engine_children()
    eng = VLLMEngine(vllm_llama(), CFG, log_path=tmp_path / "engine.log")
    try:
        os.kill(eng.proc.pid, signal.SIGKILL)
        with pytest.raises(TrainingError, match=rf"vllm rollout engine \(pid {eng.proc.pid}\) died during generate .*--resume"):
            eng.generate([[5, 6]], seeds=[0], **GEN)
    finally:
        eng.close()
    assert engine_children() == running


def test_ppo_on_the_vllm_engine_resumes_exactly_and_stops_the_engine(tok, tmp_path):
    """Weights synced after every update (else the mismatch bound stops the run); a killed run resumes
    bit for bit, since row seeds are a function of (seed, step, row) and the engine reloads the checkpoint's weights."""
    from rlhf_core.ppo.trainer import train_ppo
    from tests.test_ppo_loop import StopAt

    running = engine_children()
    cfg = ppo_cfg(optim={"max_steps": 3, "checkpoint_every": 1, "max_length": 64}, ppo_epochs=1,
                  rollout={**CFG.model_dump(), "max_logprob_mismatch": 1e-3})
    straight = vllm_llama()
    full = train_ppo(cfg, straight, tok, TokenFractionReward(5, n=8), tok, PROMPTS, output_dir=tmp_path / "a")
    assert engine_children() == running
    assert [h["ppo/logprob_mismatch"] < LOGPROB_BOUND for h in full.history] == [True] * 3
    assert full.history[0]["time/weight_sync"] > 0 and full.history[-1]["time/weight_sync"] == 0.0  # none after the last
    with pytest.raises(KeyboardInterrupt):
        train_ppo(cfg, vllm_llama(), tok, TokenFractionReward(5, n=8), tok, PROMPTS, output_dir=tmp_path / "b",
                  tracker=StopAt(3))
    assert engine_children() == running
    resumed_policy = vllm_llama()
    resumed = train_ppo(cfg, resumed_policy, tok, TokenFractionReward(5, n=8), tok, PROMPTS, output_dir=tmp_path / "b")
    assert resumed.resumed_from_step == 2
    for (name, a), (_, b) in zip(straight.named_parameters(), resumed_policy.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    assert full.history[-1]["ppo/reward"] == resumed.history[-1]["ppo/reward"]


def test_ppo_distributed_on_vllm_engines_matches_one_process(tmp_path):
    """Data-parallel PPO with one vLLM engine per process (torchrun, gloo) trains as 1 process on 1 engine.

    Each process's engine samples its rows with the rows' own seeds, so both runs draw the same tokens;
    the tolerances are tests/test_distributed_ppo.py's (gradient summation order).
    """
    from tests.test_distributed_ppo import assert_same_training, train_one_and_two

    running = engine_children()
    engine = [  # heads of 64 (vLLM's CPU kernels need >= 32)
        "model.tiny.hidden_size=128", "model.tiny.num_heads=2", "model.tiny.intermediate_size=256",
        "ppo.rollout.engine=vllm", f"ppo.rollout.vllm_python={VLLM_PYTHON}", "ppo.rollout.kv_cache_gib=1",
        "ppo.rollout.max_logprob_mismatch=1e-3", "ppo.optim.checkpoint_every=10",
    ]
    reference, result, _, double, _ = train_one_and_two(tmp_path, engine)
    assert engine_children() == running  # every engine stopped with its stage
    assert sorted(p.name for p in double.stage("ppo").glob("vllm-engine*.log")) == [
        "vllm-engine.rank0.log", "vllm-engine.rank1.log"]
    assert_same_training(result, reference, double)
