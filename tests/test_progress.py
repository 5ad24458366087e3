"""StepProgress: a tqdm bar on a terminal; short, throttled lines in a CI log (not a terminal)."""

from __future__ import annotations

import io

import pytest

import rlhf_core.training as training
from rlhf_core.training import StepProgress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(training.time, "monotonic", fake)
    return fake


def test_log_lines_are_throttled_and_fit_the_width(clock, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    out = io.StringIO()  # not a terminal, as a CI log
    bar = StepProgress("sft", 100, stream=out)
    for step in range(100):
        clock.now += 0.5  # 0.5 s a step: a line for step 1, then every 10 s (20 steps), and the last
        bar.update({"sft/loss": 2.0 - step / 100, "sft/a_long_statistic_name": 123456.789,
                    "sft/another_long_statistic_name": 0.000123})
    bar.close()
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [f"sft: step {n}/100" for n in (1, 21, 41, 61, 81, 100)]
    assert lines[0] == "sft: step 1/100, 0.5 s/step, 50s left | loss 2, a_long_statistic_name 1.235e+05"
    assert lines[1].startswith("sft: step 21/100, 0.5 s/step, 40s left | loss 1.8")
    assert lines[-1].startswith("sft: step 100/100, 0.5 s/step | loss 1.01")
    assert all(len(line) <= 80 for line in lines)


def test_resumed_run_counts_from_its_checkpoint(clock):
    out = io.StringIO()
    bar = StepProgress("ppo", 20, initial=12, stream=out)
    clock.now += 90.0
    bar.update({"ppo/reward": 0.5, "ppo/kl": 0.01})
    assert out.getvalue() == "ppo: step 13/20, 90 s/step, 10m30s left | reward 0.5, kl 0.01\n"


def test_terminal_gets_a_tqdm_bar(clock):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    bar = StepProgress("reward", 4, stream=out)
    for _ in range(4):
        bar.update({"rm/loss": 0.6931})
    bar.close()
    text = out.getvalue()
    assert "\r" in text and "reward: 100%" in text and "4/4" in text and "loss=0.6931" in text
    assert "reward: step" not in text


def test_narrow_terminal_cuts_the_line(clock, monkeypatch):
    monkeypatch.setenv("COLUMNS", "24")
    out = io.StringIO()
    bar = StepProgress("ppo", 16, stream=out)
    clock.now += 31.2
    bar.update({"ppo/reward": 0.1})
    assert out.getvalue() == "ppo: step 1/16, 31.2 s/…\n"
