"""Does a code change leave the pipeline's numbers exactly as they were?

Records a fingerprint of one finished run: a SHA-256 of every tensor of every stage's final
model (name, dtype, shape and raw bytes), of every curated data file, and every metric history
the run sent to MLflow (read from the run's own tracking spool, ``<run>/tracking/*.jsonl``, so no
server is needed). Wall-clock metrics (``time/*``, ``*seconds*``, throughput) are left out: they
are the only values allowed to differ. Then compares two fingerprints, value by value.

Usage (the redesign check of issue 18: same seed, same preset, CPU, before and after)::

    git stash / checkout BEFORE;  .venv/bin/rlhf run -c smoke -w /tmp/before
    .venv/bin/python bench/smoke_identity.py record /tmp/before --out bench/results/smoke_before.json
    checkout AFTER;               .venv/bin/rlhf run -c smoke -w /tmp/after
    .venv/bin/python bench/smoke_identity.py record /tmp/after --out /tmp/smoke_after.json
    .venv/bin/python bench/smoke_identity.py compare bench/results/smoke_before.json /tmp/smoke_after.json

``record`` takes a workspace (its newest run) or a run directory. ``compare`` prints one line per
difference and exits 1 if there is any, 0 if the two runs are bit-identical.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

STAGES = ("sft", "reward", "ppo", "dpo")
TIMING = re.compile(r"(^time/|seconds|_per_s(ec)?$|per_second|throughput|tokens_per|/s_per|wall)")


def _run_dir(path: Path) -> Path:
    if (path / "pipeline.json").exists() or (path / "config.yaml").exists():
        return path
    runs = sorted(p for p in (path / "runs").glob("*") if p.is_dir())
    if not runs:
        sys.exit(f"{path}: neither a run directory nor a workspace with runs/")
    return runs[-1]


def _tensor_hashes(model_dir: Path) -> dict[str, str]:
    from safetensors import safe_open

    out: dict[str, str] = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for name in sorted(handle.keys()):
                tensor = handle.get_tensor(name).contiguous()
                raw = tensor.view(-1).view(__import__("torch").uint8).numpy().tobytes()
                head = f"{tensor.dtype}:{tuple(tensor.shape)}:".encode()
                out[f"{file.name}:{name}"] = hashlib.sha256(head + raw).hexdigest()
    return out


def _metric_histories(run: Path) -> dict[str, list[list[Any]]]:
    histories: dict[str, list[list[Any]]] = {}
    for spool in sorted((run / "tracking").glob("*.jsonl")):
        lines = [json.loads(line) for line in spool.read_text().splitlines() if line.strip()]
        stage = lines[0].get("stage", spool.stem.rsplit("-", 1)[0]) if lines else spool.stem
        for line in lines:
            for key, value in (line.get("metrics") or {}).items():
                if TIMING.search(key):
                    continue
                histories.setdefault(f"{stage}:{key}", []).append([line.get("step"), value])
    return histories


def record(path: Path) -> dict[str, Any]:
    run = _run_dir(path)
    models = {
        stage: _tensor_hashes(run / stage / "model")
        for stage in STAGES
        if (run / stage / "model").is_dir()
    }
    data = {
        f.name: hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted((run / "data").glob("*.parquet"))
    }
    return {"run": str(run), "models": models, "data": data, "metrics": _metric_histories(run)}


def compare(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    diffs: list[str] = []
    for section in ("models", "data", "metrics"):
        left, right = a[section], b[section]
        for key in sorted(set(left) | set(right)):
            if key not in left or key not in right:
                diffs.append(f"{section}: {key} only in {'after' if key not in left else 'before'}")
            elif section == "models":
                for name in sorted(set(left[key]) | set(right[key])):
                    if left[key].get(name) != right[key].get(name):
                        diffs.append(f"models: {key} tensor {name} differs")
            elif left[key] != right[key]:
                diffs.append(f"{section}: {key} differs: {left[key]!r} vs {right[key]!r}"[:200])
    return diffs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record", help="fingerprint a finished run (workspace or run dir)")
    rec.add_argument("path", type=Path)
    rec.add_argument("--out", type=Path, required=True)
    cmp_ = sub.add_parser("compare", help="compare two fingerprints; exit 1 on any difference")
    cmp_.add_argument("before", type=Path)
    cmp_.add_argument("after", type=Path)
    args = parser.parse_args()
    if args.cmd == "record":
        fingerprint = record(args.path)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(fingerprint, indent=1, sort_keys=True) + "\n")
        n_tensors = sum(len(v) for v in fingerprint["models"].values())
        n_points = sum(len(v) for v in fingerprint["metrics"].values())
        print(
            f"{fingerprint['run']}: {len(fingerprint['models'])} models, {n_tensors} tensors, "
            f"{len(fingerprint['data'])} data files, {len(fingerprint['metrics'])} metric "
            f"histories ({n_points} points) -> {args.out}"
        )
        return 0
    before = json.loads(args.before.read_text())
    after = json.loads(args.after.read_text())
    diffs = compare(before, after)
    for line in diffs:
        print(line)
    n_tensors = sum(len(v) for v in before["models"].values())
    verdict = "DIFFERENT" if diffs else "bit-identical"
    print(
        f"{verdict}: {n_tensors} tensors in {len(before['models'])} models, "
        f"{len(before['data'])} data files, {len(before['metrics'])} metric histories compared; "
        f"{len(diffs)} differences"
    )
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
