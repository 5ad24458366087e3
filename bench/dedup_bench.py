"""Near-duplicate detection: data_checks.dedup vs datasketch.MinHashLSH.

Builds a labeled corpus of short synthetic texts with planted near duplicates
(deterministic by --seed), runs both methods on the same texts, shingles,
num_perm and threshold, each in its own subprocess (fair peak-memory figures),
and scores both against the planted ground truth.

    python bench/dedup_bench.py --n 100000 --num-perm 128 --threshold 0.8

Ground truth: a planted pair (two members of one family: a base sentence and
its edited variants) is positive iff the exact Jaccard of the two shingle sets
is >= threshold; planted pairs below it are negatives. Any predicted pair outside
the families is checked exactly too and counted as positive if its Jaccard is
>= threshold (it is then added to the ground truth of both methods), so neither
method is penalised for finding a real accidental near duplicate.

Predicted pairs: ours = :func:`data_checks.dedup.near_duplicate_pairs` (LSH
candidates verified by estimated Jaccard). datasketch = every (i, j) with j in
``lsh.query(minhash_i)`` (its standard output), and, as a second row,
the same candidates filtered by ``MinHash.jaccard >= threshold`` (the same
verification rule as ours; its time is added). datasketch gets its fastest
honest path: ``MinHash.bulk`` with xxhash (``xxh32_intdigest``, faster than its
default SHA-1), an ``insertion_session`` and ``check_duplication=False``.

Writes bench/results/dedup.json and prints a table.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from data_checks.dedup import optimal_lsh_params, text_shingles  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "dedup.json"
_LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))


# ---------------------------------------------------------------------------
# Labeled corpus
# ---------------------------------------------------------------------------


def _vocabulary(rng: np.random.Generator, size: int) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        lens = rng.integers(2, 10, size=size)
        for n in lens:
            words.add("".join(rng.choice(_LETTERS, size=n)))
            if len(words) == size:
                break
    return sorted(words)


def _jaccard(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def build_corpus(
    n: int,
    *,
    seed: int,
    shingle: str,
    shingle_size: int,
    vocab_size: int = 20000,
    family_rate: float = 0.25,
    min_words: int = 8,
    max_words: int = 30,
    target_lo: float = 0.5,
    target_hi: float = 0.92,
) -> tuple[list[str], list[list[int]], dict]:
    """n texts; families of near duplicates (base + 1-3 variants).

    Each variant gets a target Jaccard ~ U(target_lo, target_hi) to its base and
    receives random word edits (substitute / insert / delete) one at a time
    while its shingle Jaccard to the base stays >= the target, plus cosmetic
    changes that normalisation removes (case, spacing, final punctuation).
    Returns (texts, families as lists of row indices, corpus stats).
    """
    rng = np.random.default_rng(seed)
    vocab = _vocabulary(rng, vocab_size)
    zipf = 1.0 / np.arange(1, vocab_size + 1) ** 1.0
    zipf /= zipf.sum()
    draws = iter(rng.choice(vocab_size, size=n * 40, p=zipf).tolist())

    def sentence() -> list[str]:
        return [vocab[next(draws)] for _ in range(int(rng.integers(min_words, max_words + 1)))]

    def render(words: list[str], cosmetic: bool) -> str:
        text = " ".join(words)
        text = text[0].upper() + text[1:]
        if cosmetic:
            if rng.random() < 0.5:
                text = text.upper() if rng.random() < 0.2 else text.lower()
            if rng.random() < 0.5:
                text = text.replace(" ", "  ", 1)
            return text + str(rng.choice(["", "!", "?!", " .", "..."]))
        return text + str(rng.choice([".", "?"]))

    def shingles(words: list[str]) -> set[str]:
        return set(text_shingles(" ".join(words), shingle=shingle, shingle_size=shingle_size))

    texts: list[str] = []
    families: list[list[int]] = []
    edits_hist: dict[int, int] = {}
    while len(texts) < n:
        base = sentence()
        members = [len(texts)]
        texts.append(render(base, cosmetic=False))
        if rng.random() < family_rate:
            base_sh = shingles(base)
            for _ in range(int(rng.integers(1, 4))):
                if len(texts) >= n:
                    break
                target = rng.uniform(target_lo, target_hi)
                words = list(base)
                n_edits = 0
                for _ in range(12):
                    trial = list(words)
                    op = rng.integers(0, 3)
                    pos = int(rng.integers(0, len(trial)))
                    if op == 0:
                        trial[pos] = vocab[next(draws)]
                    elif op == 1:
                        trial.insert(pos, vocab[next(draws)])
                    elif len(trial) > 2:
                        del trial[pos]
                    if _jaccard(base_sh, shingles(trial)) < target:
                        break
                    words, n_edits = trial, n_edits + 1
                edits_hist[n_edits] = edits_hist.get(n_edits, 0) + 1
                members.append(len(texts))
                texts.append(render(words, cosmetic=True))
            if len(members) >= 2:
                families.append(members)
    # Shuffle rows so that duplicates are not adjacent.
    perm = rng.permutation(len(texts))
    new_of_old = np.empty_like(perm)
    new_of_old[perm] = np.arange(len(perm))
    texts = [texts[i] for i in perm]
    families = [sorted(int(new_of_old[i]) for i in f) for f in families]
    stats = {"families": len(families), "rows_in_families": sum(map(len, families)),
             "variant_edit_counts": {str(k): v for k, v in sorted(edits_hist.items())}}
    return texts, families, stats


def ground_truth(texts: list[str], families: list[list[int]], *, shingle: str, shingle_size: int,
                 threshold: float) -> tuple[set[tuple[int, int]], set[tuple[int, int]], list[float]]:
    """(positive planted pairs, all planted pairs, Jaccard of every planted pair)."""
    pos: set[tuple[int, int]] = set()
    planted: set[tuple[int, int]] = set()
    js: list[float] = []
    for fam in families:
        sh = {i: set(text_shingles(texts[i], shingle=shingle, shingle_size=shingle_size)) for i in fam}
        for a in range(len(fam)):
            for b in range(a + 1, len(fam)):
                i, j = fam[a], fam[b]
                jac = _jaccard(sh[i], sh[j])
                planted.add((i, j))
                js.append(jac)
                if jac >= threshold:
                    pos.add((i, j))
    return pos, planted, js


# ---------------------------------------------------------------------------
# Workers (one subprocess per method)
# ---------------------------------------------------------------------------


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _status_mib(key: str) -> float:
    """VmRSS / VmHWM of this process from /proc (Linux), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
    raise KeyError(key)


def _reset_peak_rss() -> float:
    """Free what loading the corpus left behind, then reset the peak-RSS mark to the
    current RSS (Linux >= 4.0: "5" > /proc/self/clear_refs), so the peak measured
    afterwards belongs to the method alone. Returns the baseline RSS in MiB."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mib("VmRSS")


def _worker(method: str, corpus: Path, out: Path, *, shingle: str, shingle_size: int, num_perm: int,
            threshold: float, seed: int) -> None:
    if method == "ours":
        from data_checks.dedup import near_duplicate_pairs
    else:
        import xxhash
        from datasketch import MinHash, MinHashLSH
    texts = json.loads(corpus.read_text())
    base_rss = _reset_peak_rss()
    result: dict = {}
    c0 = _cpu_seconds()
    t0 = time.perf_counter()
    if method == "ours":
        pairs, _ = near_duplicate_pairs(texts, shingle=shingle, shingle_size=shingle_size, num_perm=num_perm,
                                        threshold=threshold, seed=seed)
        elapsed = time.perf_counter() - t0
        cpu = _cpu_seconds() - c0
        verified = pairs
    else:
        data = [
            [s.encode("utf-8", "surrogatepass") for s in text_shingles(t, shingle=shingle, shingle_size=shingle_size)]
            for t in texts
        ]
        t_shingle = time.perf_counter() - t0
        mhs = MinHash.bulk(data, num_perm=num_perm, seed=seed, hashfunc=xxhash.xxh32_intdigest)
        t_minhash = time.perf_counter() - t0 - t_shingle
        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        with lsh.insertion_session() as session:
            for i, m in enumerate(mhs):
                session.insert(i, m, check_duplication=False)
        cand = []
        for i, m in enumerate(mhs):
            for j in lsh.query(m):
                if j > i:
                    cand.append((i, j))
        elapsed = time.perf_counter() - t0
        cpu = _cpu_seconds() - c0
        pairs = np.array(sorted(cand), dtype=np.int64).reshape(-1, 2)
        t1, c1 = time.perf_counter(), _cpu_seconds()
        verified = np.array([(i, j) for i, j in cand if mhs[i].jaccard(mhs[j]) >= threshold],
                            dtype=np.int64).reshape(-1, 2)
        result["verify_seconds"] = time.perf_counter() - t1
        result["verify_cpu_seconds"] = _cpu_seconds() - c1
        result["stage_seconds"] = {"shingles": t_shingle, "minhash_bulk": t_minhash,
                                   "lsh_insert_query": elapsed - t_shingle - t_minhash}
        result["bands_rows"] = [lsh.b, lsh.r]
    peak = _status_mib("VmHWM")
    result.update(seconds=elapsed, cpu_seconds=cpu, peak_rss_mib=peak, baseline_rss_mib=base_rss,
                  peak_over_baseline_mib=peak - base_rss)
    np.save(out.with_suffix(".pairs.npy"), pairs)
    np.save(out.with_suffix(".verified.npy"), verified)
    out.write_text(json.dumps(result))


def _run_worker(method: str, corpus: Path, tmp: Path, args: argparse.Namespace) -> tuple[dict, np.ndarray, np.ndarray]:
    out = tmp / f"{method}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", method, "--corpus", str(corpus),
           "--worker-out", str(out), "--shingle", args.shingle, "--shingle-size", str(args.shingle_size),
           "--num-perm", str(args.num_perm), "--threshold", str(args.threshold), "--seed", str(args.seed)]
    subprocess.run(cmd, check=True, cwd=ROOT)
    return (json.loads(out.read_text()), np.load(out.with_suffix(".pairs.npy")),
            np.load(out.with_suffix(".verified.npy")))


# ---------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------


def _as_set(pairs: np.ndarray) -> set[tuple[int, int]]:
    return set(map(tuple, pairs.tolist()))


def _score(pred: set[tuple[int, int]], truth: set[tuple[int, int]]) -> dict:
    tp = len(pred & truth)
    p = tp / len(pred) if pred else 1.0
    r = tp / len(truth) if truth else 1.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"pairs": len(pred), "tp": tp, "fp": len(pred) - tp, "fn": len(truth) - tp,
            "precision": p, "recall": r, "f1": f1}


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="texts in the corpus")
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--shingle", choices=["word", "char"], default="word")
    ap.add_argument("--shingle-size", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--worker", choices=["ours", "datasketch"], help=argparse.SUPPRESS)
    ap.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args.worker, args.corpus, args.worker_out, shingle=args.shingle, shingle_size=args.shingle_size,
                num_perm=args.num_perm, threshold=args.threshold, seed=args.seed)
        return None

    t0 = time.perf_counter()
    texts, families, corpus_stats = build_corpus(args.n, seed=args.seed, shingle=args.shingle,
                                                 shingle_size=args.shingle_size)
    truth, planted, planted_j = ground_truth(texts, families, shingle=args.shingle,
                                             shingle_size=args.shingle_size, threshold=args.threshold)
    build_s = time.perf_counter() - t0
    print(f"corpus: {len(texts)} texts, {len(families)} families, {len(planted)} planted pairs, "
          f"{len(truth)} with Jaccard >= {args.threshold} (built in {build_s:.1f}s)", flush=True)

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        corpus = tmp / "corpus.json"
        corpus.write_text(json.dumps(texts))
        runs = {}
        for method in ("ours", "datasketch"):
            runs[method] = _run_worker(method, corpus, tmp, args)
            print(f"  {method}: {runs[method][0]['seconds']:.2f}s", flush=True)

    predictions = {
        "ours": _as_set(runs["ours"][2]),
        "datasketch": _as_set(runs["datasketch"][1]),
        "datasketch+verify": _as_set(runs["datasketch"][2]),
    }
    # Adjudicate predicted pairs outside the planted families exactly.
    norm_cache: dict[int, set[str]] = {}

    def sh(i: int) -> set[str]:
        if i not in norm_cache:
            norm_cache[i] = set(text_shingles(texts[i], shingle=args.shingle, shingle_size=args.shingle_size))
        return norm_cache[i]

    extra = {pq for pred in predictions.values() for pq in pred - planted
             if _jaccard(sh(pq[0]), sh(pq[1])) >= args.threshold}
    truth_all = truth | extra

    n = len(texts)
    rows = {}
    for name, pred in predictions.items():
        run = runs["ours" if name == "ours" else "datasketch"][0]
        verify = name == "datasketch+verify"
        seconds = run["seconds"] + (run["verify_seconds"] if verify else 0.0)
        cpu = run["cpu_seconds"] + (run["verify_cpu_seconds"] if verify else 0.0)
        rows[name] = {"seconds": seconds, "docs_per_s": n / seconds, "cpu_seconds": cpu,
                      "docs_per_cpu_s": n / cpu, "peak_rss_mib": run["peak_rss_mib"],
                      "peak_over_baseline_mib": run["peak_over_baseline_mib"], **_score(pred, truth_all)}
    for name in ("datasketch", "datasketch+verify"):
        rows[name]["ours_speedup"] = rows["ours"]["docs_per_s"] / rows[name]["docs_per_s"]
        rows[name]["ours_speedup_cpu"] = rows["ours"]["docs_per_cpu_s"] / rows[name]["docs_per_cpu_s"]

    hist, edges = np.histogram(planted_j, bins=[0, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0 + 1e-9])
    hist_labels = [f"[{edges[k]:.2f},{edges[k + 1]:.2f})" for k in range(len(hist) - 1)] + ["[0.95,1.00]"]
    result = {
        "command": "python bench/dedup_bench.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "params": {"n": n, "num_perm": args.num_perm, "threshold": args.threshold, "shingle": args.shingle,
                   "shingle_size": args.shingle_size, "seed": args.seed,
                   "bands_rows": list(optimal_lsh_params(args.threshold, args.num_perm)),
                   "datasketch_bands_rows": runs["datasketch"][0]["bands_rows"]},
        "corpus": {**corpus_stats, "planted_pairs": len(planted), "positive_planted_pairs": len(truth),
                   "accidental_positive_pairs_found": len(extra), "build_seconds": build_s,
                   "mean_chars": float(np.mean([len(t) for t in texts])),
                   "planted_jaccard_histogram": dict(zip(hist_labels, map(int, hist)))},
        "results": rows,
        "datasketch_stage_seconds": runs["datasketch"][0]["stage_seconds"],
        "datasketch_verify_seconds": runs["datasketch"][0]["verify_seconds"],
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n{'method':<19}{'wall s':>7}{'docs/s':>9}{'cpu s':>7}{'docs/cpu-s':>11}{'peak MiB':>9}"
          f"{'+MiB':>6}{'P':>7}{'R':>7}{'F1':>7}{'ours x (wall/cpu)':>19}")
    for name, r in rows.items():
        speed = f"{r['ours_speedup']:>11.1f} / {r['ours_speedup_cpu']:.1f}" if "ours_speedup" in r else ""
        print(f"{name:<19}{r['seconds']:>7.2f}{r['docs_per_s']:>9.0f}{r['cpu_seconds']:>7.2f}"
              f"{r['docs_per_cpu_s']:>11.0f}{r['peak_rss_mib']:>9.0f}{r['peak_over_baseline_mib']:>6.0f}"
              f"{r['precision']:>7.4f}{r['recall']:>7.4f}{r['f1']:>7.4f}{speed}")
    print(f"\nwrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return result


if __name__ == "__main__":
    main()
