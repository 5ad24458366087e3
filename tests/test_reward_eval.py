"""`rlhf reward eval`: a reward model measured on labelled preference files (rlhf_core/reward/evaluate.py).

Figures on fakes against hand-computed values; the command end to end on a tiny reward model the
project builds, with one pairs file in five formats (same figures), an HH-RLHF transcript .jsonl.gz,
a run id, and the exit-2 cases.
"""

from __future__ import annotations

import gzip
import json
import math
import signal
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rlhf_core.errors import DataError
from rlhf_core.reward.evaluate import (
    confidence_calibration,
    length_buckets,
    length_rule_scores,
    pair_figures,
    turn_group,
    user_turns_of,
)

# ----------------------------------------------------------------------------- figures on fakes


def test_length_rules_score_one_half_and_zero():
    chosen, rejected = [3, 5, 4], [5, 3, 4]
    assert length_rule_scores(chosen, rejected, prefer="shorter").tolist() == [1.0, 0.0, 0.5]
    assert length_rule_scores(chosen, rejected, prefer="longer").tolist() == [0.0, 1.0, 0.5]
    with pytest.raises(ValueError, match="prefer"):
        length_rule_scores(chosen, rejected, prefer="random")


def test_confidence_calibration_against_hand_computed_bins():
    # margins 2, 0, -2, 0.1: confidences s(2), 0.5, s(2), s(0.1); correct 1, 0.5 (tie), 0, 1
    s2, s01 = 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(-0.1))
    cal = confidence_calibration([2.0, 0.0, -2.0, 0.1], [0.0, 0.0, 0.0, 0.0], n_bins=10)
    counts = {round(b.lower, 2): b.count for b in cal.bins if b.count}
    assert counts == {0.5: 2, 0.85: 2}  # s(2) = 0.881 lands in [0.85, 0.90)
    low = next(b for b in cal.bins if b.lower == 0.5)
    assert low.mean_predicted == pytest.approx((0.5 + s01) / 2) and low.mean_observed == pytest.approx(0.75)
    expected_ece = 0.5 * abs(s2 - 0.5) + 0.5 * abs((0.5 + s01) / 2 - 0.75)
    assert cal.ece == pytest.approx(expected_ece) and cal.n == 4
    assert cal.bins[0].lower == 0.5 and cal.bins[-1].upper == pytest.approx(1.0)


def test_user_turns_count_user_messages_only():
    assert user_turns_of(None) == 1 and user_turns_of(float("nan")) == 1 and user_turns_of([]) == 1
    conversation = [{"role": "system", "content": "s"}, {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    assert user_turns_of(conversation) == 2
    assert user_turns_of(np.array(conversation, dtype=object)) == 2  # as parquet gives a list back
    assert [turn_group(t) for t in (1, 2, 3, 4, 9)] == ["1", "2", "3", "4+", "4+"]


def test_length_buckets_are_quartiles_labelled_by_their_lengths():
    index, labels = length_buckets([8, 1, 2, 7, 3, 6, 4, 5])
    assert labels == ["1-2", "3-4", "5-6", "7-8"]
    assert index.tolist() == [3, 0, 0, 3, 1, 2, 1, 2]
    index, labels = length_buckets([5, 5, 5])  # every pair alike: one bucket, none empty
    assert labels == ["5-5"] and index.tolist() == [0, 0, 0]


def test_pair_figures_groups_and_baselines_on_fakes():
    # four pairs: the model is right on the two one-turn pairs, wrong and tied on the others
    figures = pair_figures(
        [1.0, 2.0, 0.0, 0.5], [0.0, 1.0, 1.0, 0.5],
        chosen_tokens=[1, 10, 3, 4], rejected_tokens=[2, 5, 3, 40], user_turns=[1, 1, 2, 5], n_boot=50,
    )
    assert figures.n == 4 and figures.agreement.value == pytest.approx(2.5 / 4)
    assert figures.prefer_shorter.value == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert figures.prefer_longer.value == pytest.approx(1 - figures.prefer_shorter.value)
    turns = {g.label: (g.agreement.n, g.agreement.value, g.prefer_shorter) for g in figures.by_turns}
    assert turns == {"1": (2, 1.0, 0.5), "2": (1, 0.0, 0.5), "4+": (1, 0.5, 1.0)}  # no 3-turn pair: no row
    assert sum(g.agreement.n for g in figures.by_length) == 4
    assert figures.agreement.ci_low <= figures.agreement.value <= figures.agreement.ci_high
    out = figures.to_dict()
    assert out["agreement"]["value"] == pytest.approx(0.625) and out["n"] == 4
    assert out["rewards"]["mean_margin"] == pytest.approx((1 + 1 - 1 + 0) / 4)


def test_pair_figures_refuses_mismatched_or_empty_input():
    with pytest.raises(ValueError, match="chosen_tokens has 1 entries"):
        pair_figures([1.0, 2.0], [0.0, 0.0], chosen_tokens=[1], rejected_tokens=[1, 2], user_turns=[1, 1])
    with pytest.raises(DataError, match="no preference pair"):
        pair_figures([], [], chosen_tokens=[], rejected_tokens=[], user_turns=[])


# ----------------------------------------------------------------------------- the command, end to end
PAIRS = [  # chosen is the shorter reply in 4 of 6 pairs, by far (in characters and tokens alike)
    {"prompt": "How do I boil an egg?", "chosen": "Boil it for nine minutes.",
     "rejected": "Eggs are laid by hens, which are birds that people keep on farms all over the world."},
    {"prompt": "What is the capital of France?", "chosen": "Paris.",
     "rejected": "France is a country in Europe with many cities; its capital city is Paris."},
    {"prompt": "Name a prime number.", "chosen": "Seven.", "rejected": "Numbers are fun and there are many of them."},
    {"prompt": "Is the sea salty?", "chosen": "Yes, it is.",
     "rejected": "I am not able to say anything about the sea at all, sorry about that."},
    {"prompt": "Explain rain.", "chosen": "Water vapour condenses into droplets that grow heavy and fall as rain.",
     "rejected": "Wet."},
    {"prompt": "Explain snow.", "chosen": "Ice crystals form in cold clouds, stick together and fall as flakes.",
     "rejected": "Cold."},
]


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A tiny random reward model as the reward stage writes it (weights, tokenizer, stage marker)."""
    from rlhf_core.config.model import TinyModelConfig
    from rlhf_core.models import build_tiny_model
    from rlhf_core.reward.model import RewardModel

    directory = tmp_path_factory.mktemp("rm") / "model"
    rm = RewardModel.from_model(build_tiny_model(TinyModelConfig(), tiny_tokenizer), seed=3)
    rm.save_pretrained(directory, tokenizer=tiny_tokenizer, step=1)
    return directory


def rlhf(args: list[str], capsys) -> tuple[int, str, str]:
    """``rlhf <args>`` in this process through the console entry point: (exit code, stdout, stderr)."""
    from flows import cli

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    argv = sys.argv
    sys.argv = ["rlhf", *args]
    try:
        with pytest.raises(SystemExit) as exited:
            cli.main()
    finally:
        sys.argv = argv
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    out = capsys.readouterr()
    return exited.value.code, out.out, out.err


def write_formats(rows: list[dict], directory: Path) -> list[Path]:
    frame = pd.DataFrame(rows)
    paths = [directory / n for n in ("p.jsonl", "p.json", "p.csv", "p.parquet", "p.jsonl.gz")]
    paths[0].write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths[1].write_text(json.dumps(rows))
    frame.to_csv(paths[2], index=False)
    frame.to_parquet(paths[3])
    paths[4].write_bytes(gzip.compress(paths[0].read_bytes()))
    return paths


def test_same_figures_from_every_format_and_they_match_score_pairs(reward_dir, tmp_path, capsys, tiny_tokenizer, monkeypatch):
    from rlhf_core.config.reward import RewardConfig
    from rlhf_core.reward.agreement import preference_score
    from rlhf_core.reward.model import RewardModel
    from rlhf_core.reward.train import score_pairs

    monkeypatch.setenv("COLUMNS", "80")
    figures = []
    for path in write_formats(PAIRS, tmp_path):
        code, out, err = rlhf(["reward", "eval", str(reward_dir), "--pairs", str(path), "--json", f"{path}.out.json"], capsys)
        assert code == 0, err
        paths = ("reward model: ", "figures: ")  # lines that name a (long) path
        assert all(len(line) <= 80 for line in out.splitlines() if not line.startswith(paths)), out
        report = json.loads(Path(f"{path}.out.json").read_text())
        figures.append({k: report[k] for k in ("n", "agreement", "baselines", "by_length", "calibration", "rewards")})
    assert all(f == figures[0] for f in figures[1:])  # JSONL, JSON, CSV, Parquet, .jsonl.gz alike

    report = json.loads(Path(f"{tmp_path / 'p.jsonl'}.out.json").read_text())
    assert report["n"] == 6 and report["set_aside"] == [] and report["files"][str(tmp_path / "p.jsonl")] == \
        {"pairs": 6, "scored": 6, "set_aside": 0}
    for key in ("value", "ci_low", "ci_high"):
        assert isinstance(report["agreement"][key], float)
    assert report["baselines"]["prefer_shorter"]["value"] == pytest.approx(4 / 6)
    assert report["baselines"]["prefer_longer"]["value"] == pytest.approx(2 / 6)
    assert [g["label"] for g in report["by_user_turns"]] == ["1"]
    default_length = RewardConfig().optim.max_length  # no run config: the reward stage's defaults
    assert report["settings"] == {"fmt": "chat", "max_length": default_length, "truncate": True, "share_prompt": True,
                                  "batch_size": 16}
    # the agreement is the reward model's own: the same rewards as scoring the pairs directly
    chosen, rejected = score_pairs(RewardModel.from_pretrained(reward_dir), tiny_tokenizer, PAIRS, max_length=default_length)
    assert report["agreement"]["value"] == pytest.approx(float(preference_score(np.array(chosen), np.array(rejected)).mean()))
    assert report["rewards"]["mean_chosen"] == pytest.approx(float(np.mean(chosen)), abs=1e-5)


def hh(turns: list[tuple[str, str]]) -> str:
    return "".join(f"\n\n{role}: {text}" for role, text in turns)


def test_hh_transcripts_gz_with_bad_rows_named(reward_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    prompt = [("Human", "How do I pick a lock?")]
    rows = [
        {"chosen": hh(prompt + [("Assistant", "I can't help with that.")]),
         "rejected": hh(prompt + [("Assistant", "Use a tension wrench and a pick on each pin in turn.")])},
        {"chosen": hh(prompt + [("Assistant", "Why?"), ("Human", "For fun."), ("Assistant", "Try a puzzle lock.")]),
         "rejected": hh(prompt + [("Assistant", "Why?"), ("Human", "For fun."), ("Assistant", "Break a window.")])},
        {"chosen": hh([("Human", "Hi")] + [("Assistant", "Hello!")]), "rejected": hh([("Human", "Hey")] + [("Assistant", "Go away.")])},
        {"chosen": hh(prompt + [("Assistant", "")]), "rejected": hh(prompt + [("Assistant", "Sure.")])},
        {"chosen": hh(prompt + [("Assistant", "No.")]), "rejected": hh(prompt + [("Assistant", "No.")])},
    ]
    path = tmp_path / "harmless.jsonl.gz"
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    code, out, err = rlhf(["reward", "eval", str(reward_dir), "--pairs", str(path), "--json", str(tmp_path / "r.json")], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["n"] == 2 and report["files"][str(path)] == {"pairs": 5, "scored": 2, "set_aside": 3}
    aside = {s["row"]: s["rule"] for s in report["set_aside"]}
    assert set(aside) == {3, 4, 5}  # the importer's quarantine and this command's own, each named
    assert aside[3] == "no_shared_prompt" and aside[5] == "same_reply"
    assert "harmless.jsonl.gz:3" in out and "harmless.jsonl.gz:5" in out and "set aside 3 pairs" in out
    assert sum(g["n"] for g in report["by_user_turns"]) == 2


def test_a_run_id_uses_the_runs_reward_settings(reward_dir, tmp_path, capsys):
    import shutil

    from rlhf_core.config.pipeline import dump_config, load_config

    run = tmp_path / "ws" / "runs" / "r1"
    shutil.copytree(reward_dir, run / "reward" / "model")
    (run / "reward" / "outputs.json").write_text(json.dumps({"model_dir": "reward/model"}))
    (run / "config.yaml").write_text(dump_config(load_config("smoke", ["reward.optim.max_length=16"])))
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    code, out, err = rlhf(["reward", "eval", "r1", "-w", str(tmp_path / "ws"), "--pairs", str(path),
                           "--json", str(tmp_path / "r.json")], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["settings"]["max_length"] == 16 and report["origin"] == "run r1"
    # prompts are cut from the left, but the longest replies alone are over 16 tokens
    assert report["set_aside_by_rule"].get("too_long", 0) >= 1
    assert report["n"] >= 1 and report["n"] + len(report["set_aside"]) == 6
    assert "too_long" in out


def test_several_files_and_a_ranking_row_counted_as_its_pairs(reward_dir, tmp_path, capsys):
    pairs, ranking = tmp_path / "p.jsonl", tmp_path / "rank.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    ranking.write_text(json.dumps({"prompt": "Pick a colour.", "responses": ["Blue.", "Red, or some other colour.", ""]}) + "\n")
    code, out, err = rlhf(["reward", "eval", str(reward_dir), "--pairs", str(pairs), "--pairs", str(ranking),
                           "--json", str(tmp_path / "r.json")], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["n"] == 7 and report["files"][str(ranking)] == {"pairs": 3, "scored": 1, "set_aside": 2}
    assert [(s["row"], s["rule"], s["id"]) for s in report["set_aside"]] == \
        [(1, "empty_reply", "rank-1-0-2"), (1, "empty_reply", "rank-1-1-2")]
    assert "    rank.jsonl:1\n" in out  # the ranking row named once for its two pairs


@pytest.mark.parametrize("case", ["missing file", "no layout", "nothing scorable", "not a model", "sft model", "no run"])
def test_unusable_file_or_model_exits_2_with_one_line(case, reward_dir, tmp_path, capsys):
    pairs = tmp_path / "p.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    model, expected = str(reward_dir), None
    if case == "missing file":
        pairs, expected = tmp_path / "missing.jsonl", "missing.jsonl"
    elif case == "no layout":
        pairs.write_text(json.dumps({"text": "hello"}) + "\n")
        expected = "no preferences layout recognised"
    elif case == "nothing scorable":
        pairs.write_text(json.dumps({"prompt": "p", "chosen": "same", "rejected": "same"}) + "\n")
        expected = "no pair can be scored"
    elif case == "not a model":
        (tmp_path / "empty").mkdir()
        model, expected = str(tmp_path / "empty"), "not a reward model directory"
    elif case == "sft model":
        from rlhf_core.stage_io import write_stage_marker

        sft = tmp_path / "sft"
        sft.mkdir()
        write_stage_marker(sft, "sft")
        model, expected = str(sft), "holds a 'sft' checkpoint, not a reward model"
    else:
        model, expected = "no-such-run", "no such run"
    code, out, err = rlhf(["reward", "eval", model, "--pairs", str(pairs), "-w", str(tmp_path / "ws")], capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert "Traceback" not in err and out == ""


def test_help_describes_the_command():
    from typer.testing import CliRunner

    from flows.cli import app

    out = CliRunner().invoke(app, ["reward", "eval", "--help"], env={"COLUMNS": "100"})
    assert out.exit_code == 0
    for words in ("reward-bench", "--pairs", "--json", "shorter", "set aside", "MODEL_DIR_OR_RUN_ID"):
        assert words in out.stdout
