"""The loop machinery SFT and reward modelling share.

One optimizer step = one length-bucketed *step batch* of ``micro_batch_size * grad_accum_steps``
examples, split into ``grad_accum_steps`` micro-batches. Before any forward pass the step's
total normaliser (target tokens for SFT, pairs for the reward model) is counted, and every
micro-batch contributes ``its_sum / step_total`` to the gradient, so k micro-batches give
exactly the gradient of one k-times-larger batch (not a mean of per-micro-batch means).

Then: global-norm clipping, AdamW, linear warmup + cosine decay (``LambdaLR``), metrics to the
tracker, a checkpoint every ``checkpoint_every`` steps and at the end. A NaN/inf loss or
gradient norm stops the run *before* the update with a TrainingError naming the step.

Exact resume: data order is a pure function of ``(seed, epoch)`` (see
:class:`rlhf_core.batching.LengthBucketedBatches`); a checkpoint stores weights, optimizer,
scheduler, RNG states and the data position, so a resumed run replays the same micro-batches
with the same state. On CPU with a fixed seed the final weights are bitwise identical to an
uninterrupted run's (tested); CUDA kernels are not bitwise deterministic by default.

Out of memory: a step that raises ``torch.OutOfMemoryError`` is retried with half the
micro-batch (twice as many micro-batches, the same step batch, so the same data order and
gradient up to float summation order), with a warning in the log; the smaller size is kept
for the rest of the run and stored in the checkpoint. At micro-batch 1 it stops clearly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from rlhf_core.batching import LengthBucketedBatches, split_micro_batches
from rlhf_core.checkpoint import (
    MANIFEST,
    latest_checkpoint,
    latest_valid_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from rlhf_core.config.optim import OptimConfig
from rlhf_core.distributed import DataParallel
from rlhf_core.errors import ConfigError, TrainingError
from rlhf_core.stage_io import CHECKPOINTS_DIR, MODEL_DIR, STAGE_MARKER
from rlhf_core.tracking import NullTracker, Tracker

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
# (model, micro_batch, step_total) -> (loss contribution to backprop, additive stats).
# The step's loss is the SUM of the contributions; stats are summed the same way, so each
# stage scales its per-micro-batch means by (micro_units / step_total).
LossFn = Callable[[torch.nn.Module, Batch, int], tuple[torch.Tensor, dict[str, float]]]


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (CPU and all CUDA devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- optimizer / schedule


def build_optimizer(model: torch.nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW over trainable parameters; no weight decay on vectors (biases, norms), as in GPT-2/nanoGPT."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise ConfigError("no trainable parameters: the model is entirely frozen")
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel updates all parameters in one pass: several times less CPU time per step
    # than the default per-tensor loop (bench/README.md, TRL comparison).
    fused = all(p.device.type in ("cpu", "cuda") for p in decay + no_decay)
    return torch.optim.AdamW(
        [g for g in groups if g["params"]],
        lr=optim.learning_rate,
        betas=(optim.adam_beta1, optim.adam_beta2),
        eps=optim.adam_eps,
        fused=fused,
    )


def lr_factor(step: int, *, warmup_steps: int, max_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the peak LR for optimizer step ``step`` (0-based).

    Linear warmup ``(step+1)/warmup`` (the first step already moves), then cosine from 1 down
    to ``min_lr_ratio`` over the remaining steps.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return min_lr_ratio + (1.0 - min_lr_ratio) * cosine


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig) -> torch.optim.lr_scheduler.LambdaLR:
    warmup, total, floor = optim.warmup_steps, optim.max_steps, optim.min_lr_ratio

    def factor(step: int) -> float:  # a plain function: LambdaLR.state_dict skips it
        return lr_factor(step, warmup_steps=warmup, max_steps=total, min_lr_ratio=floor)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def count_trainable(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- results


@dataclass
class TrainResult:
    """What a training stage returns (plain data: safe to hand to a Prefect task)."""

    stage: str
    model_dir: Path
    steps: int
    resumed_from_step: int
    metrics: dict[str, float]  # last step's training metrics + final evaluation
    history: list[dict[str, float]]  # one dict per optimizer step (includes "step")
    wall_seconds: float  # this process only (a resumed run counts its own part)
    tokens_per_second: float  # non-pad tokens through forward+backward, this process
    examples: int
    checkpoint_dir: Path | None = None
    trainable_parameters: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_outcome(
        cls, stage: str, outcome: LoopOutcome, model_dir: Path, *, examples: int, trainable: int, **fields: Any
    ) -> TrainResult:
        """The result of a stage whose loop ran through :func:`run_training_loop`."""
        wall = outcome.wall_seconds
        return cls(
            stage=stage,
            model_dir=model_dir,
            steps=outcome.steps,
            resumed_from_step=outcome.resumed_from_step,
            metrics={**outcome.last_metrics, **outcome.eval_metrics},
            history=outcome.history,
            wall_seconds=wall,
            tokens_per_second=outcome.tokens / wall if wall > 0 else 0.0,
            examples=examples,
            checkpoint_dir=outcome.checkpoint,
            trainable_parameters=trainable,
            **fields,
        )


@dataclass
class LoopOutcome:
    steps: int
    resumed_from_step: int
    history: list[dict[str, float]]
    last_metrics: dict[str, float]
    eval_metrics: dict[str, float]
    wall_seconds: float
    tokens: int
    units: int
    checkpoint: Path | None


# --------------------------------------------------------------------------- the loop


def dataset_fingerprint(items: Sequence[Sequence[int]]) -> str:
    """sha256 over the tokenised dataset: a resumed run must see the same data."""
    digest = hashlib.sha256()
    for ids in items:
        digest.update(np.asarray(ids, dtype=np.int64).tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:16]


def autocast_dtype(optim: OptimConfig, model: torch.nn.Module) -> torch.dtype | None:
    """The autocast dtype for ``optim.mixed_precision`` (None = run in the weights' dtype)."""
    param = next(model.parameters())
    if optim.mixed_precision == "no":
        return None
    if optim.mixed_precision == "bf16":
        return torch.bfloat16
    if param.device.type == "cuda" and param.dtype == torch.float32 and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def _autocast(device: torch.device, dtype: torch.dtype | None):
    import contextlib

    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def check_output_dir(output_dir: Path, stage: str) -> None:
    """Refuse an output directory whose final model belongs to another stage (it would be overwritten)."""
    marker = Path(output_dir) / MODEL_DIR / STAGE_MARKER
    if marker.is_file():
        try:
            found = json.loads(marker.read_text()).get("stage")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            found = None
        if found != stage:
            raise TrainingError(
                f"output directory {output_dir} holds a '{found}' model ({marker}), not '{stage}'; "
                "use a separate output directory per stage"
            )


def _to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


PROGRESS_INTERVAL_S = 10.0  # off a terminal: at most one progress line per this many seconds


class StepProgress:
    """A training loop's progress, one :meth:`update` per optimizer step, on stderr.

    On a terminal, a tqdm bar (``ppo:  19%|██  | 3/16 [01:33<06:45, 31.2s/step, reward=0.1235, kl=0.04512]``).
    Anywhere else (a CI log, ``| tee``, a file) tqdm's carriage-return redraws pile up into one
    ever-longer line that log viewers show only once the stage is over, so there each report is
    a line of its own, no wider than the terminal (``COLUMNS``, else 80), for the first step,
    the last, and in between at most one every ``PROGRESS_INTERVAL_S`` seconds:
    ``ppo: step 3/16, 31.2 s/step, 6m45s left | reward 0.1235, kl 0.04512``.
    It reads a clock and formats numbers it is given: no RNG, no tensors, so a loop trains the
    same with it or without.
    """

    def __init__(self, stage: str, total: int, initial: int = 0, *, stream: TextIO | None = None) -> None:
        self.stage, self.total, self.done, self._first = stage, total, initial, initial
        self.stream = stream if stream is not None else sys.stderr
        self._started = self._printed = time.monotonic()
        self._bar = None
        isatty = getattr(self.stream, "isatty", None)
        if isatty is not None and isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=stage, unit="step", dynamic_ncols=True, file=self.stream)

    def update(self, stats: dict[str, float] | None = None) -> None:
        """One step done; ``stats``: a few numbers to show (``ppo/kl`` shows as ``kl``)."""
        self.done += 1
        shown = {key.rsplit("/", 1)[-1]: f"{value:.4g}" for key, value in (stats or {}).items()}
        if self._bar is not None:
            self._bar.set_postfix(shown, refresh=False)
            self._bar.update(1)
            return
        now = time.monotonic()
        if self.done == self._first + 1 or self.done >= self.total or now - self._printed >= PROGRESS_INTERVAL_S:
            self._printed = now
            self.stream.write(self.line(now - self._started, shown) + "\n")
            self.stream.flush()

    def line(self, elapsed: float, shown: dict[str, str]) -> str:
        """``stage: step i/N, rate, time left | stats``, dropping stats (then cutting) to fit the width."""
        per_step = elapsed / max(1, self.done - self._first)
        head = f"{self.stage}: step {self.done}/{self.total}, {per_step:.3g} s/step"
        if self.done < self.total:
            head += f", {_duration(per_step * (self.total - self.done))} left"
        parts = [f"{key} {value}" for key, value in shown.items()]
        width = shutil.get_terminal_size((80, 24)).columns
        while parts and len(head) + 3 + len(", ".join(parts)) > width:
            parts.pop()
        text = f"{head} | {', '.join(parts)}" if parts else head
        return text if len(text) <= width else text[: width - 1] + "…"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _duration(seconds: float) -> str:
    """``42s``, ``6m45s``, ``1h02m``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


# --------------------------------------------------------------------------- run state


def resolve_resume(resume: bool | str | Path, root: Path, stage: str) -> Path | None:
    """The checkpoint a run resumes from, or None to start fresh.

    ``True``: the newest checkpoint under ``root`` that verifies (corrupt ones are moved aside);
    ``False``: none, and ``root``'s old checkpoints are removed (refused if another stage's);
    a path: that checkpoint, or the newest one in an output or checkpoints directory.
    """
    if resume is False:
        if root.exists():  # starting over: stale checkpoints would be picked up by a later resume
            for path in list_checkpoints(root):  # never delete another stage's work
                try:
                    other = json.loads((path / MANIFEST).read_text()).get("stage")
                except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
                    continue
                if other != stage:
                    raise TrainingError(
                        f"{root} holds checkpoints of stage '{other}', not '{stage}'; "
                        "use a separate output directory per stage"
                    )
            shutil.rmtree(root)
        return None
    if resume is True:  # the newest checkpoint that verifies (corrupt ones are moved aside)
        return latest_valid_checkpoint(root, stage=stage)
    path = Path(resume)
    if not path.exists():
        raise TrainingError(f"cannot resume {stage}: checkpoint {path} does not exist")
    if not (path / MANIFEST).exists() and (found := latest_checkpoint(path / CHECKPOINTS_DIR) or latest_checkpoint(path)):
        return found  # an output_dir or checkpoints/ dir was given: take its newest checkpoint
    return path


class RunState:
    """What every training loop keeps besides the model: one instance per run, used in this order.

    1. :meth:`resume` — find the checkpoint (:func:`resolve_resume`), refuse it if the run's
       fingerprint changed, restore weights, optimizer, scheduler and RNG; the trainer state.
    2. :meth:`steps` — the step indices still to run, with a progress bar / progress lines and
       the wall clock around them.
    3. :meth:`record` after each step — history, tracker (every ``log_every`` steps and the
       last), progress, a checkpoint every ``checkpoint_every`` steps.
    4. :meth:`finish` — the final checkpoint, unless the last step wrote it.

    A checkpoint's trainer state is ``history``, ``fingerprint`` and what ``extra_state()``
    returns (the loop's own position: data order, micro-batch size, KL controller...).
    Data-parallel: only the main process writes; ``barrier`` waits for it.
    """

    def __init__(
        self,
        stage: str,
        output_dir: Path,
        optim: OptimConfig,
        *,
        fingerprint: dict[str, Any],
        tracker: Tracker,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        extra_state: Callable[[], dict[str, Any]],
        is_main: bool = True,
        barrier: Callable[[], None] | None = None,
    ) -> None:
        self.stage, self.optim, self.fingerprint, self.tracker = stage, optim, fingerprint, tracker
        self.root = Path(output_dir) / CHECKPOINTS_DIR
        self.model, self.optimizer, self.scheduler, self.extra_state = model, optimizer, scheduler, extra_state
        self.is_main, self.barrier = is_main, barrier
        self.history: list[dict[str, float]] = []  # one dict per optimizer step (with "step")
        self.start_step = 0
        self.last_checkpoint: Path | None = None
        self.saved_at = -1  # the step the newest checkpoint holds
        self.wall_seconds = 0.0  # of :meth:`steps`, this process only
        self._bar: StepProgress | None = None

    def resume(
        self,
        resume: bool | str | Path,
        *,
        fingerprint_defaults: dict[str, Any] | None = None,
        first: AbstractContextManager[Any] | None = None,
    ) -> dict[str, Any] | None:
        """Restore the checkpoint ``resume`` names (see :func:`resolve_resume`); its trainer state, or None.

        ``fingerprint_defaults``: values of fingerprint keys that older checkpoints lack.
        ``first``: a context to resolve the checkpoint in (data-parallel: rank 0 first).
        """
        with first if first is not None else nullcontext():
            self.last_checkpoint = resolve_resume(resume, self.root, self.stage)
        if self.last_checkpoint is None:
            return None

        def same_run(saved: dict[str, Any]) -> None:
            before = {**(fingerprint_defaults or {}), **saved.get("fingerprint", {})}
            differs = {k: (before.get(k), v) for k, v in self.fingerprint.items() if before.get(k) != v}
            if differs:
                detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in differs.items())
                raise TrainingError(
                    f"cannot resume {self.stage} from {self.last_checkpoint}: the run changed ({detail}); "
                    "pass resume=False (or a fresh output_dir) to start over"
                )

        state = load_checkpoint(
            self.last_checkpoint, stage=self.stage, model=self.model, optimizer=self.optimizer,
            scheduler=self.scheduler, check_state=same_run,
        )
        self.history = list(state["history"])
        self.start_step = self.saved_at = int(state["step"])
        return state

    @contextmanager
    def steps(self, progress: bool) -> Iterator[range]:
        """The 0-based indices of the steps still to run; progress on stderr when ``progress`` (main process)."""
        self._bar = StepProgress(self.stage, self.optim.max_steps, self.start_step) if progress and self.is_main else None
        started = time.perf_counter()
        try:
            yield range(self.start_step, self.optim.max_steps)
        finally:
            if self._bar is not None:
                self._bar.close()
            self.wall_seconds = time.perf_counter() - started

    def record(self, number: int, metrics: dict[str, float], shown: dict[str, float] | None = None) -> None:
        """Step ``number`` (1-based) is done: history, tracker, progress (``shown``), checkpoint cadence."""
        self.history.append({"step": float(number), **metrics})
        if number % self.optim.log_every == 0 or number == self.optim.max_steps:
            self.tracker.log_metrics(metrics, step=number)
        if self._bar is not None:
            self._bar.update(shown)
        if self.optim.checkpoint_every and number % self.optim.checkpoint_every == 0 and number < self.optim.max_steps:
            self.checkpoint(number)

    def checkpoint(self, number: int) -> None:
        """Write the checkpoint of step ``number`` (main process; the others wait at the barrier)."""
        if self.is_main:
            self.last_checkpoint = save_checkpoint(
                self.root, stage=self.stage, step=number, model=self.model, optimizer=self.optimizer,
                scheduler=self.scheduler, keep=self.optim.keep_checkpoints,
                trainer_state={"history": self.history, "fingerprint": self.fingerprint, **self.extra_state()},
            )
        if self.barrier is not None:
            self.barrier()
        self.saved_at = number

    def finish(self, final_step: int) -> Path | None:
        """The checkpoint of ``final_step`` (written unless it is the newest already); its path."""
        if self.saved_at != final_step and self.is_main:
            self.last_checkpoint = save_checkpoint(
                self.root, stage=self.stage, step=final_step, model=self.model, optimizer=self.optimizer,
                scheduler=self.scheduler, keep=self.optim.keep_checkpoints,
                trainer_state={"history": self.history, "fingerprint": self.fingerprint, **self.extra_state()},
            )
        if self.barrier is not None:
            self.barrier()
        return self.last_checkpoint

    @property
    def last_metrics(self) -> dict[str, float]:
        """The newest step's metrics (without ``step``); {} before the first."""
        return {k: v for k, v in (self.history[-1] if self.history else {}).items() if k != "step"}


def run_training_loop(
    *,
    stage: str,
    model: torch.nn.Module,
    optim: OptimConfig,
    lengths: Sequence[int],
    collate: Callable[[list[int]], Batch],
    units_of: Callable[[Batch], int],
    loss_fn: LossFn,
    output_dir: Path,
    tracker: Tracker | None = None,
    evaluate: Callable[[], dict[str, float]] | None = None,
    resume: bool | str | Path = True,
    seed: int = 0,
    fingerprint: dict[str, Any] | None = None,
    progress: bool = True,
    unit_name: str = "tokens",
    dist: DataParallel | None = None,
) -> LoopOutcome:
    """Train ``model`` in place for ``optim.max_steps`` optimizer steps; see the module docstring.

    ``lengths`` (N,) are example lengths for bucketing; ``collate(indices)`` builds a CPU
    micro-batch; ``units_of(batch)`` counts its normaliser units (tokens or pairs);
    ``loss_fn(model, batch, step_units)`` returns its loss contribution and additive stats.
    Call :func:`set_seed` and any LoRA wrapping *before* this (they define the start state).
    ``dist``: train data-parallel in this process group (see :mod:`rlhf_core.distributed`);
    only rank 0 tracks, checkpoints and evaluates.
    """
    main = dist is None or dist.is_main
    output_dir = Path(output_dir)
    check_output_dir(output_dir, stage)
    device = next(model.parameters()).device
    amp = autocast_dtype(optim, model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(model, optim)
    scheduler = build_scheduler(optimizer, optim)
    sampler = LengthBucketedBatches(lengths, _step_size(stage, optim, dist), window=optim.length_bucket_window, seed=seed)
    run_fp = {
        "stage": stage, "seed": seed, "batch_size": optim.micro_batch_size,  # the key checkpoints were written with
        "grad_accum_steps": optim.grad_accum_steps,
        "length_bucket_window": optim.length_bucket_window, "examples": len(lengths), **(fingerprint or {}),
    }
    run = RunState(
        stage, output_dir, optim, fingerprint=run_fp, tracker=(tracker or NullTracker()) if main else NullTracker(),
        model=model, optimizer=optimizer, scheduler=scheduler, is_main=main,
        barrier=dist.barrier if dist is not None else None,
        extra_state=lambda: {"epoch": epoch, "batch_index": batch_index, "sampler_seed": seed, "micro_batch_size": micro_size},
    )
    state = run.resume(resume, first=dist.main_first() if dist is not None else None) or {}  # rank 0 prunes first
    epoch, batch_index = int(state.get("epoch", 0)), int(state.get("batch_index", 0))
    order = sampler.epoch(epoch)
    # Shrinks (never grows back) after an out-of-memory error; the step batch, and so the data
    # order and the gradient, stay those of the configuration.
    micro_size = int(state.get("micro_batch_size", optim.micro_batch_size))
    train_model = dist.wrap(model) if dist is not None else model  # DDP wrapper: forward syncs gradients
    model.train()
    tokens_total = units_total = 0
    eval_metrics: dict[str, float] = {}
    with run.steps(progress) as steps:
        for step in steps:
            number = step + 1  # 1-based: what users and trackers see
            if batch_index >= len(order):
                epoch, batch_index = epoch + 1, 0
                order = sampler.epoch(epoch)
            indices = order[batch_index]
            batch_index += 1
            t0 = time.perf_counter()
            stats, step_units, step_tokens, micro_size = _step_gradients(
                stage, number, model, train_model, indices, micro_size, collate=collate, units_of=units_of,
                loss_fn=loss_fn, device=device, amp=amp, unit_name=unit_name, last_checkpoint=run.last_checkpoint, dist=dist,
            )
            grad_norm, lr = _optimizer_step(stage, number, params, optimizer, scheduler, optim, run.last_checkpoint)
            seconds = time.perf_counter() - t0
            tokens_total += step_tokens
            units_total += step_units
            metrics = {
                **stats,
                "train/lr": lr,
                "train/grad_norm": grad_norm,
                "train/epoch": epoch + batch_index / len(order),
                "train/step_seconds": seconds,
                "train/tokens_per_second": step_tokens / seconds if seconds > 0 else 0.0,
                f"train/{unit_name}": float(step_units),
                "train/micro_batch_size": float(micro_size),
            }
            if main and evaluate is not None and optim.eval_every and number % optim.eval_every == 0 and number < optim.max_steps:
                eval_metrics = _run_eval(model, evaluate, device, amp)
                metrics.update(eval_metrics)
            loss_key = next((k for k in stats if k.endswith("/loss")), None)
            run.record(number, metrics, {loss_key: stats[loss_key]} if loss_key else None)
    final_step = max(run.start_step, optim.max_steps)
    run.finish(final_step)
    if evaluate is not None and main:
        eval_metrics = _run_eval(model, evaluate, device, amp)
        run.tracker.log_metrics(eval_metrics, step=final_step)
    return LoopOutcome(
        steps=final_step, resumed_from_step=run.start_step, history=run.history, last_metrics=run.last_metrics,
        eval_metrics=eval_metrics, wall_seconds=run.wall_seconds, tokens=tokens_total, units=units_total,
        checkpoint=run.last_checkpoint,
    )


def _step_size(stage: str, optim: OptimConfig, dist: DataParallel | None) -> int:
    """Examples per optimizer step (``micro_batch_size x grad_accum_steps``); ConfigError if the processes cannot share it."""
    step_size = optim.micro_batch_size * optim.grad_accum_steps
    if dist is not None and step_size < dist.world_size:
        raise ConfigError(
            f"{stage}: a step batch of {step_size} examples (micro_batch_size x grad_accum_steps) cannot be split "
            f"over {dist.world_size} processes; raise micro_batch_size or lower distributed.num_processes"
        )
    return step_size


def _step_gradients(
    stage: str,
    number: int,
    model: torch.nn.Module,
    train_model: torch.nn.Module,
    indices: Sequence[int],
    micro_size: int,
    *,
    collate: Callable[[list[int]], Batch],
    units_of: Callable[[Batch], int],
    loss_fn: LossFn,
    device: torch.device,
    amp: torch.dtype | None,
    unit_name: str,
    last_checkpoint: Path | None,
    dist: DataParallel | None,
) -> tuple[dict[str, float], int, int, int]:
    """The step batch's gradients (:func:`_accumulate_step`); (stats, units, tokens, micro-batch size).

    An out-of-memory error redoes the step with half the micro-batch, except data-parallel: the
    other processes would already be inside a collective.
    """

    def accumulate(n: int) -> tuple[dict[str, float], int, int]:
        return _accumulate_step(
            stage, number, train_model, indices, n, collate, units_of, loss_fn, device, amp, unit_name, last_checkpoint,
            dist,
        )

    if dist is not None:
        return (*accumulate(micro_size), micro_size)
    (stats, units, tokens), micro_size = retry_smaller_on_oom(
        accumulate, micro_size, stage=stage, step=number, total=len(indices), model=model, device=device
    )
    return stats, units, tokens, micro_size


def _optimizer_step(
    stage: str,
    number: int,
    params: Sequence[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    optim: OptimConfig,
    last_checkpoint: Path | None,
) -> tuple[float, float]:
    """Clip, check, step the optimizer and the schedule; (gradient norm, the learning rate the step used)."""
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, optim.max_grad_norm))
    if not math.isfinite(grad_norm):
        raise TrainingError(
            f"{stage}: gradient norm is {grad_norm} at step {number}; stopped before the update, "
            f"last checkpoint: {last_checkpoint or 'none'}; lower optim.learning_rate or check the data"
        )
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    return grad_norm, lr


def _accumulate_step(
    stage: str,
    number: int,
    model: torch.nn.Module,
    indices: Sequence[int],
    micro_size: int,
    collate: Callable[[list[int]], Batch],
    units_of: Callable[[Batch], int],
    loss_fn: LossFn,
    device: torch.device,
    amp: torch.dtype | None,
    unit_name: str,
    last_ckpt: Path | None,
    dist: DataParallel | None = None,
) -> tuple[dict[str, float], int, int]:
    """Forward/backward over the step batch in micro-batches of ``micro_size``; (stats, units, tokens).

    Gradients are zeroed first, so after an out-of-memory error the step can simply run again.
    Data-parallel: this process takes its shard; units, tokens and stats are summed over the
    group, and each loss is scaled by the world size because DDP *averages* gradients. A
    process whose shard is empty (a short last batch) runs one example with weight 0 so that
    it still joins the gradient all-reduce.
    """
    world = dist.world_size if dist is not None else 1
    mine = dist.shard(indices) if dist is not None else list(indices)
    weight = 1.0 if mine else 0.0
    micro = [collate(chunk) for chunk in split_micro_batches(mine or list(indices[:1]), micro_size)]
    local_units = sum(units_of(b) for b in micro) if mine else 0
    step_units = int(dist.sum([local_units])[0]) if dist is not None else local_units
    if step_units == 0:
        raise TrainingError(f"{stage}: step {number} has no {unit_name} to train on (all labels masked)")
    model.zero_grad(set_to_none=True)
    stats: dict[str, float] = {}
    step_tokens = 0
    for k, batch in enumerate(micro):
        step_tokens += int(batch["attention_mask"].sum()) if mine else 0
        with dist.no_sync(model, sync=k == len(micro) - 1) if dist is not None else nullcontext():
            with _autocast(device, amp):
                loss, micro_stats = loss_fn(model, _to_device(batch, device), step_units)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainingError(
                    f"{stage}: loss is {value} at step {number} (micro-batch {k + 1}/{len(micro)}); stopped "
                    f"before the update, last checkpoint: {last_ckpt or 'none'}; lower optim.learning_rate or check the data"
                )
            (loss * (weight * world)).backward()
        del loss
        for key, v in micro_stats.items():
            stats[key] = stats.get(key, 0.0) + v * weight
    if dist is not None:
        keys = sorted(stats)
        totals = dist.sum([stats[key] for key in keys] + [step_tokens])
        stats, step_tokens = dict(zip(keys, totals[:-1])), int(totals[-1])
    return stats, step_units, step_tokens


def retry_smaller_on_oom(
    fn: Callable[[int], Any], micro: int, *, stage: str, step: int, total: int, model: torch.nn.Module, device: torch.device
) -> tuple[Any, int]:
    """``(fn(micro), micro)``; after ``torch.OutOfMemoryError`` frees the gradients and tries half the micro-batch.

    ``fn(n)`` must do the same work in micro-batches of ``n`` from a clean start (zeroed gradients),
    so the result, the effective batch ``total``, is the same. Gives up at micro-batch 1.
    """
    while True:
        try:
            return fn(micro), micro
        except torch.OutOfMemoryError as exc:
            micro = _shrink_after_oom(stage, step, micro, total, model, device, exc)


def _shrink_after_oom(
    stage: str, number: int, micro_size: int, step_size: int, model: torch.nn.Module, device: torch.device, exc: BaseException
) -> int:
    """Half the micro-batch after an out-of-memory error (same step batch: more micro-batches), or give up at 1."""
    model.zero_grad(set_to_none=True)  # free the partial gradients before retrying
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if micro_size <= 1:
        raise TrainingError(
            f"{stage}: out of memory at step {number} even with micro-batch 1 ({exc}); lower optim.max_length, "
            "enable LoRA or use a bigger device"
        ) from exc
    smaller = micro_size // 2
    log.warning(
        "%s: out of memory at step %d with micro-batch %d; retrying the step with micro-batch %d "
        "(%d micro-batches, same effective batch of %d)",
        stage, number, micro_size, smaller, math.ceil(step_size / smaller), step_size,
    )
    return smaller


def _run_eval(
    model: torch.nn.Module, evaluate: Callable[[], dict[str, float]], device: torch.device, amp: torch.dtype | None
) -> dict[str, float]:
    # eval mode + no_grad consume no RNG, so evaluating mid-run does not perturb exact resume
    model.eval()
    try:
        with torch.no_grad(), _autocast(device, amp):
            return evaluate()
    finally:
        model.train()


def eval_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Evaluation order: sorted by length (least padding), no shuffling needed."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return split_micro_batches(order, batch_size)



def config_params(cfg: Any, prefix: str) -> dict[str, Any]:
    """A pydantic config as flat ``prefix.key -> value`` for ``tracker.log_params``."""
    from rlhf_core.tracking import flatten_params

    return flatten_params({prefix: json.loads(cfg.model_dump_json())})
