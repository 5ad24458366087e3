"""How fast `rlhf --help` answers (issue 2 goal: under a second). Not a test: a measurement.

    .venv/bin/python bench/cli_startup.py [--runs 20]

Runs the installed console script repeatedly in fresh processes and reports the
median and worst wall time, plus which heavy libraries (if any) the help path imported.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HEAVY = ("torch", "transformers", "prefect", "mlflow", "great_expectations", "pandera", "pandas")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    exe = shutil.which("rlhf", path=str(Path(sys.executable).parent)) or "rlhf"
    times = []
    for _ in range(args.runs):
        started = time.perf_counter()
        subprocess.run([exe, "--help"], check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, flows.cli; print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"],
        check=True, capture_output=True, text=True,
    )
    heavy_loaded = sorted(set(probe.stdout.split()) & set(HEAVY))
    result = {
        "command": f"{exe} --help",
        "runs": args.runs,
        "median_s": round(statistics.median(times), 4),
        "max_s": round(max(times), 4),
        "heavy_modules_on_help_path": heavy_loaded,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
