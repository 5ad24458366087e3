"""Issue 4's SFT ablation: does scrubbing the demonstrations matter? Refusals and loops on held-out benign prompts.

    python bench/sft_ablation.py                       # the demo preset, both arms trained here
    python bench/sft_ablation.py --scrubbed-run /tmp/demo1/runs/<id>   # reuse a pipeline run's SFT model
    # options: -c demo --set KEY=VALUE ... --workdir /tmp/sft-ablation --n-prompts N (default: all benign)
    #          --samples-per-prompt 2 --batch-size 24 --n-boot 1000 --seed 0 --threads 2
    #          --out bench/results/demo_sft_ablation.json

Two SFT models from the same base model with the same ``sft`` config and seed, differing only in
their training data:

* ``scrubbed``: the data stage as configured (refusal scrubbing + exact/near dedup on);
* ``unscrubbed``: the same stage with ``data.refusal.enabled=false``, ``data.dedup.exact=false``
  and ``data.dedup.near=false`` (validation, prompt filters and the eval-contamination check stay
  on, so both arms are judged on the same held-out prompts; malformed rows cannot be trained on).

Each model samples ``--samples-per-prompt`` responses to every held-out *benign* prompt of the
scrubbed arm's ``eval_prompts`` (same seed, temperature and ``max_new_tokens`` as the run's
evaluation). Per response: refusal (``rlhf_core.gold.is_refusal``, the evaluation's definition),
loop (``rlhf_core.eval_report.is_looping``), gold score, finished last sentence. Each figure is
averaged per prompt first, then over prompts, with a percentile bootstrap over prompts
(``rlhf_core.stats.estimate``); the arms' difference (unscrubbed - scrubbed) is a paired
bootstrap over the same prompts. ``--scrubbed-run`` reuses a finished pipeline run's curated data
and SFT model as the scrubbed arm (its ``data``/``sft``/``model``/``seed`` settings must equal this
config's, which is checked). Figures go to ``--out``; per-response rows to ``<workdir>/samples.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ARMS = ("scrubbed", "unscrubbed")
FIGURES = ("refusal_rate", "repetition_rate", "mean_gold", "finished_rate")


def unscrubbed_data_config(data_cfg: Any) -> Any:
    """The data config with refusal scrubbing and exact/near dedup off (everything else as is)."""
    dump = data_cfg.model_dump()
    dump["refusal"]["enabled"] = False
    dump["dedup"]["exact"] = False
    dump["dedup"]["near"] = False
    return type(data_cfg).model_validate(dump)


def _split(frame: Any) -> tuple[Any, Any]:
    """Train / eval rows as the pipeline's SFT task splits them (tasks.stages.common.split_train_eval)."""
    split = frame["split"].fillna("train") if "split" in frame else None
    if split is None:
        return frame, frame.iloc[0:0]
    return frame[split != "eval"], frame[split == "eval"]


def _check_same_settings(cfg: Any, run: Path) -> None:
    from rlhf_core.config.pipeline import load_config
    from rlhf_core.errors import ConfigError

    run_cfg = load_config(run / "config.yaml")
    for key in ("data", "sft", "model", "seed"):
        mine, theirs = getattr(cfg, key), getattr(run_cfg, key)
        if key == "model":  # where the weights are cached does not change them
            mine, theirs = mine.model_copy(update={"cache_dir": None}), theirs.model_copy(update={"cache_dir": None})
        if mine != theirs:
            raise ConfigError(f"--scrubbed-run {run}: its '{key}' settings differ from this config's; "
                              "the arms would not differ only in their data")


def data_summary(demos: Any, data_cfg: Any) -> dict[str, Any]:
    """What the SFT arm trains on: rows, benign refusals (by the data stage's own patterns), duplicate responses."""
    import re

    from data_checks.dedup import normalize_text

    train, held = _split(demos)
    patterns = re.compile("|".join(f"(?:{p})" for p in data_cfg.refusal.patterns), re.IGNORECASE)
    harmful = train["harmful"].fillna(False).astype(bool) if "harmful" in train else [False] * len(train)
    benign_refusals = sum(1 for r, h in zip(train["response"], harmful) if not h and patterns.search(str(r)))
    norm = [normalize_text(str(p) + "\n" + str(r)) for p, r in zip(train["prompt"], train["response"])]
    return {"train_rows": int(len(train)), "eval_rows": int(len(held)), "benign_refusals_in_train": benign_refusals,
            "exact_duplicate_rows_in_train": len(norm) - len(set(norm))}


def train_arm(cfg: Any, demos: Any, out_dir: Path) -> tuple[str, dict[str, Any]]:
    """SFT from the base model on ``demos`` exactly as the pipeline's SFT task does; returns (model dir, figures)."""
    from rlhf_core.models import load_causal_lm, load_tokenizer
    from rlhf_core.sft.train import train_sft

    tokenizer = load_tokenizer(cfg.model, cfg.model_cache)
    model = load_causal_lm(cfg.model, cfg.model_cache, tokenizer)
    train_rows, eval_rows = _split(demos)
    result = train_sft(cfg.sft, model, tokenizer, train_rows, output_dir=out_dir, eval_rows=eval_rows if len(eval_rows) else None,
                       seed=cfg.seed, resume=False, progress=False)
    return str(result.model_dir), {"steps": result.steps, "wall_seconds": round(result.wall_seconds, 1),
                                   "examples": result.examples,
                                   "final_metrics": {k: float(v) for k, v in result.metrics.items()}}


def sample_arm(cfg: Any, model_dir: str, prompts: list[str], *, k: int, seed: int, batch_size: int) -> list[list[str]]:
    """``k`` sampled responses per prompt from the SFT model in ``model_dir`` (the evaluation's sampler and settings)."""
    from rlhf_core.batching import resolve_format
    from rlhf_core.best_of_n import sample_responses, tokenize_prompts
    from rlhf_core.models import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(cfg.model, cfg.model_cache)
    model = load_causal_lm(cfg.model, cfg.model_cache, tokenizer, path=model_dir).eval()
    e = cfg.eval
    ids = tokenize_prompts(model, tokenizer, prompts, fmt=resolve_format(tokenizer, cfg.sft.prompt_format),
                           max_new_tokens=e.max_new_tokens, source="ablation prompts")
    samples = sample_responses(model, tokenizer, ids, n=k, max_new_tokens=e.max_new_tokens, temperature=e.temperature,
                               top_p=e.top_p, top_k=e.top_k, seed=seed, batch_size=batch_size)
    return samples.grouped()


def per_prompt_figures(prompts: list[str], responses: list[list[str]]) -> dict[str, list[float]]:
    """Each figure averaged over a prompt's responses -> one value per prompt (B,) per figure."""
    import numpy as np

    from rlhf_core.eval_report import is_looping
    from rlhf_core.gold import gold_components, is_refusal

    out: dict[str, list[float]] = {name: [] for name in FIGURES}
    for prompt, group in zip(prompts, responses, strict=True):
        comps = [gold_components(prompt, r) for r in group]
        out["refusal_rate"].append(float(np.mean([is_refusal(r) for r in group])))
        out["repetition_rate"].append(float(np.mean([is_looping(r) for r in group])))
        out["mean_gold"].append(float(np.mean([c.score for c in comps])))
        out["finished_rate"].append(float(np.mean([c.ends_cleanly for c in comps])))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", default="demo", help="preset name or YAML file (default: demo)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE override (repeatable)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sft-ablation"), help="curated data, models, samples")
    parser.add_argument("--scrubbed-run", type=Path, help="reuse this finished pipeline run as the scrubbed arm")
    parser.add_argument("--n-prompts", type=int, help="cap on held-out benign prompts (default: all)")
    parser.add_argument("--samples-per-prompt", type=int, default=2)
    parser.add_argument("--batch-size", type=int, help="responses sampled per batch (default: the run's eval.batch_size)")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompt subset, sampling and bootstrap")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "demo_sft_ablation.json")
    args = parser.parse_args(argv)
    if args.samples_per_prompt < 1:
        parser.error("--samples-per-prompt must be >= 1")

    import numpy as np
    import pandas as pd
    import torch

    from data_checks.stage import run_data_stage
    from rlhf_core.config.pipeline import dump_config, load_config
    from rlhf_core.errors import UserError
    from rlhf_core.eval_prompts import eval_prompts, select_eval_prompts
    from rlhf_core.stats import estimate
    from rlhf_core.models import load_tokenizer

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    try:
        cfg = load_config(args.config, args.overrides)
        work = args.workdir.resolve()
        work.mkdir(parents=True, exist_ok=True)
        (work / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
        tokenizer = load_tokenizer(cfg.model, cfg.model_cache)
        data_cfgs = {"scrubbed": cfg.data, "unscrubbed": unscrubbed_data_config(cfg.data)}
        data_dirs: dict[str, Path] = {}
        model_dirs: dict[str, str] = {}
        training: dict[str, Any] = {}
        timings: dict[str, float] = {}
        if args.scrubbed_run is not None:
            from tasks.artifacts import RunDir

            run = args.scrubbed_run.resolve()
            _check_same_settings(cfg, run)
            data_dirs["scrubbed"] = run / "data"
            model_dirs["scrubbed"] = RunDir(run).require("sft")["model_dir"]
            training["scrubbed"] = {"reused_from_run": str(run)}
        for arm in ARMS:
            if arm not in data_dirs:
                t0 = time.perf_counter()
                run_data_stage(data_cfgs[arm], work / arm / "data", tokenizer=tokenizer)
                timings[f"{arm}/data_seconds"] = round(time.perf_counter() - t0, 1)
                data_dirs[arm] = work / arm / "data"
        demos = {arm: pd.read_parquet(data_dirs[arm] / "demonstrations.parquet") for arm in ARMS}
        for arm in ARMS:
            if arm not in model_dirs:
                print(f"sft ablation: training the {arm} arm on {len(_split(demos[arm])[0])} demonstrations", flush=True)
                model_dirs[arm], training[arm] = train_arm(cfg, demos[arm], work / arm / "sft")
                timings[f"{arm}/sft_seconds"] = training[arm]["wall_seconds"]

        held = eval_prompts(pd.read_parquet(data_dirs["scrubbed"] / "eval_prompts.parquet"), "eval prompts")
        benign = held.subset([i for i, h in enumerate(held.harmful) if not h])
        if len(benign) == 0:
            raise UserError(f"{data_dirs['scrubbed']}/eval_prompts.parquet: no benign held-out prompts to evaluate")
        benign = select_eval_prompts(benign, args.n_prompts, args.seed)
        batch = args.batch_size or cfg.eval.batch_size
        responses, per_prompt = {}, {}
        for arm in ARMS:
            print(f"sft ablation: sampling {args.samples_per_prompt} x {len(benign)} responses from the {arm} model", flush=True)
            t0 = time.perf_counter()
            responses[arm] = sample_arm(cfg, model_dirs[arm], benign.prompts, k=args.samples_per_prompt,
                                        seed=args.seed, batch_size=batch)
            timings[f"{arm}/sampling_seconds"] = round(time.perf_counter() - t0, 1)
            per_prompt[arm] = per_prompt_figures(benign.prompts, responses[arm])
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    boot = {"n_boot": args.n_boot, "seed": args.seed}
    figures: dict[str, Any] = {}
    for name in FIGURES:
        row = {arm: estimate(per_prompt[arm][name], **boot).to_dict() for arm in ARMS}
        diff = np.asarray(per_prompt["unscrubbed"][name]) - np.asarray(per_prompt["scrubbed"][name])
        row["unscrubbed_minus_scrubbed"] = estimate(diff, **boot).to_dict()  # paired over prompts
        figures[name] = row
    counts = {arm: {"refusals": int(round(sum(per_prompt[arm]["refusal_rate"]) * args.samples_per_prompt)),
                    "loops": int(round(sum(per_prompt[arm]["repetition_rate"]) * args.samples_per_prompt)),
                    "responses": len(benign) * args.samples_per_prompt} for arm in ARMS}
    result = {
        "what": "SFT on scrubbed vs unscrubbed demonstrations: held-out benign prompts (issue 4)",
        "config": str(args.config),
        "overrides": args.overrides,
        "n_prompts": len(benign),
        "samples_per_prompt": args.samples_per_prompt,
        "sampling": {"max_new_tokens": cfg.eval.max_new_tokens, "temperature": cfg.eval.temperature,
                     "top_p": cfg.eval.top_p, "top_k": cfg.eval.top_k, "seed": args.seed, "batch_size": batch},
        "bootstrap": {**boot, "confidence": 0.95, "unit": "prompt (figures averaged over its responses first)"},
        "data": {arm: data_summary(demos[arm], data_cfgs[arm]) for arm in ARMS},
        "training": training,
        "counts": counts,
        "figures": figures,
        "timings": timings,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch_threads": args.threads, "loadavg_end": list(os.getloadavg())},
        "model_dirs": model_dirs,
    }
    with (work / "samples.jsonl").open("w", encoding="utf-8") as fh:
        for arm in ARMS:
            for i, group in enumerate(responses[arm]):
                for j, text in enumerate(group):
                    fh.write(json.dumps({"arm": arm, "id": benign.ids[i], "sample": j, "prompt": benign.prompts[i],
                                         "response": text}, ensure_ascii=False) + "\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"{'figure':<16} {'scrubbed':>24} {'unscrubbed':>24} {'unscrubbed - scrubbed':>26}")
    for name in FIGURES:
        cells = []
        for key in (*ARMS, "unscrubbed_minus_scrubbed"):
            e = figures[name][key]
            cells.append(f"{e['value']:+.3f} [{e['ci_low']:+.3f}, {e['ci_high']:+.3f}]")
        print(f"{name:<16} {cells[0]:>24} {cells[1]:>24} {cells[2]:>26}")
    print(f"{len(benign)} benign prompts x {args.samples_per_prompt} samples per arm; counts {json.dumps(counts)}")
    print(f"figures in {args.out}; samples in {work / 'samples.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
