"""The ``vllm`` rollout engine: vLLM in its own venv and process, spoken to in JSON lines.

vLLM pins transformers and fastapi below the project's pins (bench/README.md, "Rollout engines"),
so it runs as a child process (TRL's ``vllm-serve`` and OpenRLHF's way) started once per PPO stage
from the venv ``make vllm`` builds, with :mod:`rlhf_core.rollout.vllm_server` as its program.
The policy reaches it through files: its weights (LoRA adapters merged into a copy) are written
as safetensors into a private temporary directory, which the engine starts from and, after every
update, reloads in place (vLLM's ``reload_weights``). On CPU both sides share the memory
bandwidth anyway. On CUDA the same files are used (an NCCL weight broadcast, as OpenRLHF and
TRL's vllm-serve do, is not built), and the LoRA merge copies the policy on its device.

The child cannot outlive the trainer (:func:`rlhf_core.processes.guarded`), and :meth:`close`
stops its whole process tree (:func:`rlhf_core.processes.stop_tree`). Its log (vLLM's own
output) goes to ``log_path``; an engine that dies mid-stage fails the stage naming its exit
status and the log's last line.

Log-probs: vLLM's ``processed_logprobs`` (log-softmax of the logits after temperature, and
after top-k/top-p when those are on: the config refuses them with this engine, so the returned
log-probs are those of the unfiltered, tempered distribution, as the interface says).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import selectors
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rlhf_core.config.ppo import RolloutConfig
from rlhf_core.errors import ConfigError, ModelLoadError, TrainingError
from rlhf_core.processes import guarded, stop_tree
from rlhf_core.rollout import vllm_venv_problem
from rlhf_core.sampling import Rollout, left_pad, truncate_after_eos

log = logging.getLogger(__name__)

SERVER = Path(__file__).with_name("vllm_server.py")
RESUME_HINT = "`rlhf run --resume` continues from the last checkpoint"


def visible_device(device: torch.device) -> str:
    """The ``CUDA_VISIBLE_DEVICES`` entry of ``device`` as this process sees it (its own list, if it has one)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return visible[index] if index < len(visible) else str(index)


def write_weights(policy: torch.nn.Module, directory: Path) -> None:
    """``policy``'s full weights (LoRA adapters merged, into a copy) and config, as HF safetensors in ``directory``.

    Written by hand, not with ``save_pretrained``: under torch.distributed transformers writes on
    rank 0 only, and every data-parallel process feeds its own engine. A tied weight is written
    once, under its source name (``lm_head.weight`` tied to the embeddings is left out, as HF does).
    """
    from safetensors.torch import save_file

    model = copy.deepcopy(policy).merge_and_unload() if hasattr(policy, "merge_and_unload") else policy
    tied = getattr(model, "all_tied_weights_keys", None) or {}  # target -> source
    state = model.state_dict()
    for target, source in tied.items():
        if target in state and source in state and state[target].data_ptr() == state[source].data_ptr():
            del state[target]
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(directory / "model.safetensors"),
              metadata={"format": "pt"})
    model.config.save_pretrained(directory)


class VLLMEngine:
    """A vLLM engine process serving ``policy``'s current weights (see the module docstring).

    Raises ConfigError when the venv is missing, ModelLoadError when vLLM cannot serve the
    policy (its error, named), TrainingError when the process dies or a request fails.
    """

    name = "vllm"

    def __init__(
        self, policy: torch.nn.Module, cfg: RolloutConfig, *, device: torch.device | str = "cpu",
        log_path: str | Path | None = None,
    ) -> None:
        if problem := vllm_venv_problem(cfg):
            raise ConfigError(problem)
        self.device = torch.device(device)
        self.dir = Path(tempfile.mkdtemp(prefix="rlhf-vllm-"))
        # the log outlives the engine: an error names it
        self.log_path = Path(log_path) if log_path is not None else self.dir.with_suffix(".log")
        self.proc: subprocess.Popen | None = None
        self.weights = self.dir / "weights-0"
        self.syncs = 0
        self.request_timeout_s = cfg.request_timeout_s
        try:
            self._start(policy, cfg)
        except BaseException:
            self.close()
            raise

    def _start(self, policy: torch.nn.Module, cfg: RolloutConfig) -> None:
        t0 = time.perf_counter()
        write_weights(policy, self.weights)
        max_len = min(cfg.max_model_len, getattr(policy.config, "max_position_embeddings", cfg.max_model_len))
        dtype = str(next(policy.parameters()).dtype).removeprefix("torch.")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the venv sees only its own packages
        env.update(VLLM_CPU_KVCACHE_SPACE=str(cfg.kv_cache_gib), VLLM_ENABLE_V1_MULTIPROCESSING="0", HF_HUB_OFFLINE="1")
        # the trainer waits while the engine samples: the engine uses the trainer's threads (vLLM would take 1)
        env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
        extra: list[str] = []
        if self.device.type == "cuda":  # this process's GPU (one engine per data-parallel process), shared with the trainer
            env["CUDA_VISIBLE_DEVICES"] = visible_device(self.device)
            extra = ["--gpu-memory-utilization", str(cfg.gpu_memory_utilization)]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen(
                guarded([str(Path(cfg.vllm_python).expanduser().absolute()), str(SERVER), "--model", str(self.weights),
                         "--dtype", dtype, "--max-model-len", str(max_len), *extra]),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file, env=env, text=True,
            )
        reply = self._read(timeout=cfg.start_timeout_s, doing="start")
        if "error" in reply:
            arch = ",".join(getattr(policy.config, "architectures", None) or [type(policy).__name__])
            raise ModelLoadError(f"vllm rollout engine cannot serve the policy ({arch}, {dtype}): {reply['error']}")
        self.start_seconds = time.perf_counter() - t0
        log.info("vllm rollout engine ready in %.1f s (pid %d, log %s)", self.start_seconds, self.proc.pid, self.log_path)

    # ------------------------------------------------------------------------- protocol
    def _died(self, doing: str) -> TrainingError:
        code = self.proc.poll() if self.proc is not None else None
        try:
            last = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()][-1:]
        except OSError:
            last = []
        return TrainingError(
            f"vllm rollout engine (pid {self.proc.pid if self.proc else '?'}) died during {doing} "
            f"(exit status {code}); last log line: {last[0].strip() if last else '(none)'}; full log {self.log_path}; "
            f"{RESUME_HINT}"
        )

    def _read(self, *, timeout: float | None, doing: str) -> dict[str, Any]:
        """The next reply line; TrainingError when the process dies (or ``timeout`` s pass) first."""
        assert self.proc is not None and self.proc.stdout is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while not sel.select(timeout=1.0):
                if self.proc.poll() is not None:
                    raise self._died(doing)
                if deadline is not None and time.monotonic() > deadline:
                    raise TrainingError(f"vllm rollout engine: no answer to {doing} within {timeout:.0f} s; log {self.log_path}")
        line = self.proc.stdout.readline()
        if not line.endswith("\n"):  # end of file, or a reply cut off: the process is ending
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
            raise self._died(doing)
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            raise TrainingError(f"vllm rollout engine: unreadable answer to {doing}: {line[:200]!r}; log {self.log_path}") from None

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        doing = request["op"]
        if self.proc is None:
            raise TrainingError(f"vllm rollout engine: {doing} after close")
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._died(doing) from None
        reply = self._read(timeout=self.request_timeout_s, doing=doing)
        if "error" in reply:
            raise TrainingError(f"vllm rollout engine: {doing} failed: {reply['error']} (log {self.log_path})")
        return reply

    # ------------------------------------------------------------------------- the interface
    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        *,
        seeds: Sequence[int] | None,
        max_new_tokens: int,
        eos_id: int | Sequence[int],
        pad_id: int,
        temperature: float,
        top_k: int,
        top_p: float,
    ) -> Rollout:
        """One sampled response per prompt; ``seeds[i]`` is prompt i's vLLM request seed.

        ``seeds`` None: one seed per row drawn from the global torch RNG (restored by a
        checkpoint, so a resumed run draws the same ones).
        """
        if temperature <= 0 or top_k or top_p < 1.0:
            raise ValueError("VLLMEngine.generate: needs temperature > 0 and no top-k/top-p filter (see the module docstring)")
        query_ids, query_mask = left_pad(prompt_ids, pad_id)  # (B, P)
        B = query_ids.shape[0]
        if seeds is None:
            seeds = torch.randint(0, 2**31 - 1, (B,)).tolist()
        if len(seeds) != B:
            raise ValueError(f"VLLMEngine.generate: {len(seeds)} seeds for {B} prompts (one per row)")
        stop_ids = [eos_id] if isinstance(eos_id, int) else list(eos_id)
        reply = self._call({
            "op": "generate", "prompts": [list(map(int, p)) for p in prompt_ids], "seeds": [int(s) for s in seeds],
            "max_new_tokens": max_new_tokens, "stop_ids": stop_ids, "temperature": temperature, "top_k": 0, "top_p": 1.0,
        })
        lengths = torch.tensor([len(t) for t in reply["tokens"]])  # (B,)
        R = max(1, int(lengths.max()))
        tokens = torch.full((B, R), pad_id, dtype=torch.long)
        logprobs = torch.zeros((B, R), dtype=torch.float32)
        for row, (ids, lps) in enumerate(zip(reply["tokens"], reply["logprobs"], strict=True)):
            tokens[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            logprobs[row, : len(lps)] = torch.tensor(lps, dtype=torch.float32)
        ids, mask = truncate_after_eos(tokens, eos_id, pad_id)  # (B, R)
        mask = mask & (torch.arange(R) < lengths.unsqueeze(1))  # a row shorter than R ends there
        ids = torch.where(mask, ids, torch.full_like(ids, pad_id))
        has_eos = (torch.isin(ids, torch.tensor(stop_ids)) & mask).any(-1)  # (B,)
        d = self.device
        return Rollout(
            query_ids=query_ids.to(d), query_mask=query_mask.to(d), response_ids=ids.to(d), response_mask=mask.to(d),
            has_eos=has_eos.to(d), logprobs=torch.where(mask, logprobs, 0.0).to(d),
        )

    def load_weights(self, policy: torch.nn.Module) -> float:
        """Write ``policy``'s weights and have the engine reload them in place; the seconds both took."""
        t0 = time.perf_counter()
        self.syncs += 1
        new = self.dir / f"weights-{self.syncs}"
        write_weights(policy, new)
        t_write = time.perf_counter() - t0
        reply = self._call({"op": "load_weights", "path": str(new)})
        shutil.rmtree(self.weights, ignore_errors=True)
        self.weights = new
        seconds = time.perf_counter() - t0
        log.info("vllm weight sync %d: %.2f s (write %.2f s, reload %.2f s)", self.syncs, seconds, t_write, reply["seconds"])
        return seconds

    def close(self) -> None:
        """Stop the engine process (and everything it started) and remove its weight files; idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                proc.stdin.write(json.dumps({"op": "close"}) + "\n")
                proc.stdin.flush()
                proc.wait(timeout=30)
            except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                pass
        try:
            if proc is not None:
                stop_tree(proc, grace_s=10.0)
                for stream in (proc.stdin, proc.stdout):
                    if stream is not None:
                        # closing stdin flushes what a failed request left buffered: a dead engine's pipe is broken
                        with contextlib.suppress(OSError):
                            stream.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
