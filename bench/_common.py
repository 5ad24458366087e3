"""Shared plumbing of the TRL side-by-side benchmarks (``trl_sft_rm.py``, ``trl_ppo.py``).

Import-light on purpose: only the standard library at module level, because the workers run
in three different venvs (ours, ``bench/.venv-trl116``, ``bench/.venv-trl024``) and only ours
has ``rlhf_core``. Torch is imported inside the functions that need it.

Protocol: the parent (our venv) writes a *spec* JSON (model dirs, rows, sizes), then runs one
worker per (side, repeat) in a fresh subprocess, ``python <script> --worker SIDE --spec S --out O``.
A worker times optimizer steps with :class:`StepMeter` (wall and process CPU time at each
step end; the first ``warmup`` steps are excluded) and writes a result JSON; the parent adds
the child's own rusage (CPU seconds, ``ru_maxrss``) from ``os.wait4``.
"""

from __future__ import annotations

import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
OUR_PYTHON = ROOT / ".venv" / "bin" / "python"
TRL116_PYTHON = BENCH / ".venv-trl116" / "bin" / "python"
TRL024_PYTHON = BENCH / ".venv-trl024" / "bin" / "python"
MODEL_CACHE = ROOT / ".rlhf" / "models"
SCRATCH = ROOT / ".rlhf" / "bench"  # gitignored: model copies, specs, per-run logs and output dirs
DEMO_DIR = ROOT / "data" / "demo"


# ----------------------------------------------------------------------------- threads / memory
def pin_threads(n: int) -> None:
    """Same intra-op thread count on every side; one inter-op thread (nothing runs ops in parallel)."""
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once in this process
        pass


def thread_env(n: int) -> dict[str, str]:
    """Environment for a worker: BLAS/OpenMP pools sized like torch's, no tokenizer thread pool."""
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[key] = str(n)
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env["HF_DATASETS_OFFLINE"] = "1"
    env["PYTHONHASHSEED"] = "0"
    env["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    env["DISABLE_MLFLOW_INTEGRATION"] = "TRUE"
    env["WANDB_DISABLED"] = "true"
    env.pop("PYTHONPATH", None)
    return env


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def reset_peak_rss() -> float:
    """Free what can be freed, reset the kernel's peak-RSS mark; return the RSS now (MiB).

    After this, ``VmHWM`` is the peak of what runs next (Linux >= 4.0: ``5 > clear_refs``).
    """
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # pragma: no cover - non-glibc
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # pragma: no cover - not permitted: VmHWM then covers the whole process
        pass
    return _status_mib("VmRSS")


def peak_rss_mib() -> float:
    return _status_mib("VmHWM")


def cpu_seconds() -> float:
    """User + system CPU of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ----------------------------------------------------------------------------- step timing
class StepMeter:
    """Wall and CPU time at the end of every optimizer step.

    ``mark(**extra)`` is called once per finished step (a trainer callback, a tracker hook);
    ``start()`` once just before the first step. Per-step figures are the differences between
    consecutive marks, so data loading/collation between steps is counted on both sides.
    """

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.marks: list[tuple[float, float]] = []
        self.extra: list[dict[str, float]] = []
        self._t0: tuple[float, float] | None = None

    def start(self) -> None:
        self._t0 = (time.perf_counter(), cpu_seconds())

    def mark(self, **extra: float) -> None:
        if self._t0 is None:
            self.start()
        self.marks.append((time.perf_counter(), cpu_seconds()))
        self.extra.append({k: float(v) for k, v in extra.items()})

    def steps(self) -> list[dict[str, float]]:
        """One row per step: ``wall_s``, ``cpu_s`` and whatever was passed to ``mark``."""
        assert self._t0 is not None, "StepMeter.start() was never called"
        rows, prev = [], self._t0
        for (wall, cpu), extra in zip(self.marks, self.extra, strict=True):
            rows.append({"wall_s": wall - prev[0], "cpu_s": cpu - prev[1], **extra})
            prev = (wall, cpu)
        return rows

    def summary(self, sums: Sequence[str] = ()) -> dict[str, Any]:
        """Totals over the measured (post-warmup) steps; ``sums`` are extra keys to add up."""
        rows = self.steps()
        measured = rows[self.warmup :]
        if not measured:
            raise RuntimeError(f"no measured steps: {len(rows)} steps ran, warmup is {self.warmup}")
        out: dict[str, Any] = {
            "steps_total": len(rows),
            "steps_measured": len(measured),
            "wall_s": sum(r["wall_s"] for r in measured),
            "cpu_s": sum(r["cpu_s"] for r in measured),
            "step_wall_s_median": statistics.median(r["wall_s"] for r in measured),
            "step_cpu_s_median": statistics.median(r["cpu_s"] for r in measured),
            "per_step": rows,
        }
        for key in sums:
            out[key] = sum(r.get(key, 0.0) for r in measured)
        return out


# ----------------------------------------------------------------------------- data
_WORDS = (
    "the a to of and in for on with as is it this that you your can will be by or from at an are not "
    "make sure first then next water time day keep plan step small simple good easy best way use take "
    "start try need help want look find each more some other many most one two three few long short "
    "warm cold slowly gently carefully often daily weekly before after during until while because so "
    "heat pan pot salt oil rice egg bread soup garden soil seed plant leaf sun shade pot budget money "
    "save spend bank card week month list note check track move walk run stretch rest sleep breathe "
    "ticket bag road map train hotel city friend family phone email meeting desk chair light window"
).split()

_TOPICS = ("cooking", "travel", "fitness", "personal_finance", "gardening", "home", "study", "work")
_PROMPT_TEMPLATES = (
    "How do I {x}?", "What is the best way to {x}?", "Can you explain how to {x}?",
    "Give me a few tips to {x}.", "I want to {x}. Where should I start?",
)
_SLOTS = (
    "boil an egg", "cook rice on the stove", "pack for a weekend trip", "start running as a beginner",
    "make a monthly budget", "grow herbs on a balcony", "clean a cast iron pan", "study for an exam",
    "write a polite email to my manager", "fix a squeaky door", "plan a road trip", "save for a holiday",
    "keep houseplants alive", "stretch after a workout", "organise my desk", "learn a new language",
)


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(6, 16))]
    return " ".join(words).capitalize() + "."


def _text(rng: random.Random, n_words: int) -> str:
    out: list[str] = []
    while sum(len(s.split()) for s in out) < n_words:
        out.append(_sentence(rng))
    return " ".join(out)


def synth_prompts(n: int, seed: int) -> list[dict[str, Any]]:
    """Deterministic prompt rows (canonical ``id, prompt, topic``)."""
    rng = random.Random(seed)
    return [
        {"id": f"p{i:05d}", "prompt": rng.choice(_PROMPT_TEMPLATES).format(x=rng.choice(_SLOTS)), "topic": rng.choice(_TOPICS)}
        for i in range(n)
    ]


def synth_demonstrations(n: int, seed: int, *, min_words: int, max_words: int) -> list[dict[str, Any]]:
    """Deterministic demonstration rows (``id, prompt, response``), response lengths uniform in words."""
    rng = random.Random(seed + 1)
    return [
        {**p, "id": f"d{i:05d}", "response": _text(rng, rng.randint(min_words, max_words))}
        for i, p in enumerate(synth_prompts(n, seed))
    ]


def synth_preferences(n: int, seed: int, *, min_words: int, max_words: int) -> list[dict[str, Any]]:
    """Deterministic preference rows (``id, prompt, chosen, rejected``), independent response lengths."""
    rng = random.Random(seed + 2)
    return [
        {
            **p,
            "id": f"r{i:05d}",
            "chosen": _text(rng, rng.randint(min_words, max_words)),
            "rejected": _text(rng, rng.randint(min_words, max_words)),
        }
        for i, p in enumerate(synth_prompts(n, seed))
    ]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open() as fh:
        return [json.loads(line) for line in fh if line.strip()]


def demo_rows(name: str) -> list[dict[str, Any]] | None:
    """``data/demo/<name>.jsonl`` (train split when rows carry one), or None when it is absent."""
    path = DEMO_DIR / f"{name}.jsonl"
    if not path.is_file():
        return None
    rows = read_jsonl(path)
    train = [r for r in rows if r.get("split") in (None, "train")]
    return train or rows


# ----------------------------------------------------------------------------- TRL row formats
def trl_sft_row(row: dict[str, Any]) -> dict[str, Any]:
    """Our demonstration row -> TRL's conversational prompt-completion row (loss on the completion only)."""
    return {
        "prompt": [{"role": "user", "content": row["prompt"]}],
        "completion": [{"role": "assistant", "content": row["response"]}],
    }


def trl_preference_row(row: dict[str, Any]) -> dict[str, Any]:
    """Our preference row -> TRL's conversational preference row with an explicit prompt."""
    return {
        "prompt": [{"role": "user", "content": row["prompt"]}],
        "chosen": [{"role": "assistant", "content": row["chosen"]}],
        "rejected": [{"role": "assistant", "content": row["rejected"]}],
    }


# ----------------------------------------------------------------------------- parent side
# (these import rlhf_core: only the parent, in our venv, calls them)
def model_dir(quick: bool) -> Path:
    """The benchmark model in HF format: the tiny random Llama (quick) or the cached SmolLM2-135M-Instruct."""
    if quick:
        return tiny_model_dir()
    found = sorted(MODEL_CACHE.glob("smollm2-135m-instruct-*"))
    found = [p for p in found if (p / "config.json").is_file()]
    if found:
        return found[-1]
    from rlhf_core.config.model import ModelConfig
    from rlhf_core.models import materialize

    return Path(materialize(ModelConfig(), MODEL_CACHE).location)  # dequantizes the GGUF once (~20 s)


def tiny_model_dir() -> Path:
    """The tests' tiny random Llama (SmolLM2 tokenizer), saved once in HF format so every side loads the same weights."""
    target = SCRATCH / "tiny-model"
    if (target / "config.json").is_file():
        return target
    from rlhf_core.config.model import ModelConfig, TinyModelConfig
    from rlhf_core.models import build_tiny_model, load_tokenizer

    tokenizer = load_tokenizer(ModelConfig(base="tiny"), MODEL_CACHE)
    model = build_tiny_model(TinyModelConfig(), tokenizer)
    model.config.pad_token_id = tokenizer.pad_token_id
    SCRATCH.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=SCRATCH))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)
    return target


def machine_info() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "loadavg_1_5_15": list(os.getloadavg()),
        "nice": os.nice(0),
    }


def run_worker(python: Path, script: Path, side: str, spec_path: Path, out_path: Path, *, threads: int,
               timeout: float, log_path: Path, cpus: Sequence[int] | None = None) -> dict[str, Any]:
    """Run one worker in a fresh subprocess; its result JSON plus the child's rusage.

    ``cpus``: pin the worker to these cores (two workers run side by side, each on its own core).

    ``child_cpu_s`` / ``child_maxrss_mib`` come from ``os.wait4`` (the whole process: imports,
    loading, training). A failed worker raises with the tail of its log.
    """
    if not Path(python).exists():
        raise FileNotFoundError(f"{python} missing: run `bash bench/setup_trl_venvs.sh` first")
    cmd = [str(python), str(script), "--worker", side, "--spec", str(spec_path), "--out", str(out_path)]
    started = time.perf_counter()
    with open(log_path, "w") as log:
        pin = None if cpus is None else (lambda: os.sched_setaffinity(0, set(cpus)))
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=thread_env(threads), cwd=str(ROOT),
                                preexec_fn=pin)
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                raise TimeoutError(f"worker {side} ran over {timeout:.0f} s (log: {log_path})")
            time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode != 0 or not out_path.is_file():
        tail = "".join(Path(log_path).read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"worker {side} failed (exit {proc.returncode}); log {log_path}:\n{tail}")
    result = json.loads(out_path.read_text())
    result["child_wall_s"] = wall
    result["child_cpu_s"] = usage.ru_utime + usage.ru_stime
    result["child_maxrss_mib"] = usage.ru_maxrss / 1024.0  # Linux reports KiB
    return result


def alternating(sides: Sequence[str], repeats: int) -> list[tuple[int, str]]:
    """(repeat, side) in run order: A B, B A, A B, ... so neither side always runs first/last."""
    order: list[tuple[int, str]] = []
    for r in range(repeats):
        seq = list(sides) if r % 2 == 0 else list(reversed(sides))
        order.extend((r, s) for s in seq)
    return order


def median_of(runs: Sequence[dict[str, Any]], key: str) -> float:
    return statistics.median(float(r[key]) for r in runs)


def worker_argv(argv: Sequence[str] | None = None) -> tuple[str, Path, Path] | None:
    """``--worker SIDE --spec S --out O`` if this process is a worker, else None."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--worker" not in args:
        return None
    get: Callable[[str], str] = lambda flag: args[args.index(flag) + 1]  # noqa: E731
    return get("--worker"), Path(get("--spec")), Path(get("--out"))


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")
    tmp.replace(path)


def versions(*modules: str) -> dict[str, str]:
    import importlib

    out = {}
    for name in modules:
        try:
            out[name] = str(importlib.import_module(name).__version__)
        except Exception:  # noqa: BLE001 - report what is there
            out[name] = "absent"
    return out
