"""data_checks.dedup: exact and MinHash/LSH near-duplicate detection.

Tier (a): the vectorised code against naive references (exact Jaccard over
Python sets of shingles, a Python-int MinHash, datasketch's LSH parameter
optimiser); invariants (chunk sizes, seeds); edge cases and bad input.
"""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from data_checks import dedup
from data_checks.dedup import (
    cross_split_contamination,
    exact_duplicates,
    minhash_signatures,
    near_duplicate_clusters,
    near_duplicate_pairs,
    near_duplicates_to_drop,
    normalize_text,
    optimal_lsh_params,
    text_shingles,
)
from rlhf_core.errors import ConfigError, DataError

MARGIN = 0.15  # ~4.5 standard errors of a 128-permutation estimate near J = 0.8


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def _family_corpus(seed: int, n_base: int = 50, vocab: int = 400) -> list[str]:
    """Random sentences plus variants with 0-5 word edits (a spread of Jaccard)."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(vocab)]
    texts = []
    for _ in range(n_base):
        base = rng.choices(words, k=rng.randint(6, 24))
        texts.append(" ".join(base))
        for _ in range(rng.randint(0, 3)):
            var = list(base)
            for _ in range(rng.randint(0, 5)):
                op, pos = rng.randrange(3), rng.randrange(len(var))
                if op == 0:
                    var[pos] = rng.choice(words)
                elif op == 1:
                    var.insert(pos, rng.choice(words))
                elif len(var) > 2:
                    del var[pos]
            texts.append(" ".join(var).upper() if rng.random() < 0.2 else " ".join(var) + "!")
    rng.shuffle(texts)
    return texts


def _reference_jaccard(texts: list[str], shingle: str, k: int) -> dict[tuple[int, int], float]:
    sh = [set(text_shingles(t, shingle=shingle, shingle_size=k)) for t in texts]
    return {(i, j): _jaccard(sh[i], sh[j]) for i, j in itertools.combinations(range(len(texts)), 2)}


# --- normalisation and exact duplicates -------------------------------------


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("  Hello,\t  WORLD!! ", "hello, world"),
        ("ＦＵＬＬ　ｗｉｄｔｈ", "full width"),  # NFKC: full-width letters and space
        ("ﬁne Straße", "fine strasse"),  # NFKC ligature, casefold ß
        ("¡¿Qué tal?!", "qué tal"),  # Unicode punctuation stripped at both edges only
        ("don't stop", "don't stop"),
        ("...", ""),
        ("", ""),
        ("ΣΊΣΥΦΟΣ", "σίσυφοσ"),  # casefold, not lower(): no final-sigma context
    ],
)
def test_normalize_text(raw: str, norm: str) -> None:
    assert normalize_text(raw) == norm


def test_exact_duplicates_after_normalisation() -> None:
    texts = ["Hello world", "other text", "  HELLO   world!", "hello world.", "Other text?", "third"]
    assert exact_duplicates(texts) == [2, 3, 4]
    assert exact_duplicates([]) == []
    assert exact_duplicates(["only one"]) == []


# --- LSH parameters -----------------------------------------------------------


@pytest.mark.parametrize(
    ("threshold", "num_perm"), [(0.8, 128), (0.5, 128), (0.9, 64), (0.7, 256), (0.85, 100), (0.3, 32)]
)
def test_optimal_lsh_params_match_datasketch(threshold: float, num_perm: int) -> None:
    lsh = pytest.importorskip("datasketch.lsh")
    assert optimal_lsh_params(threshold, num_perm) == lsh._optimal_param(threshold, num_perm, 0.5, 0.5)


# --- hashing and signatures vs naive references --------------------------------


MIXED = [
    "The quick brown fox jumps over the lazy dog",
    "the quick brown fox jumps over the lazy dog again and again",
    "Привет, как дела? Всё хорошо, спасибо",
    "我们今天去公园散步然后吃午饭",
    "emoji 🙂 test 🙂 test",
    "a b",
    "x",
    "",
    "   ",
    "repeat repeat repeat repeat repeat",
]


@pytest.mark.parametrize(("shingle", "k"), [("word", 1), ("word", 3), ("word", 5), ("char", 3), ("char", 5)])
def test_shingle_hashes_match_python_shingles(shingle: str, k: int) -> None:
    """The vectorised hashing yields one distinct hash per distinct shingle string."""
    texts = MIXED + _family_corpus(1, n_base=10)
    x, doc = dedup._shingle_hashes32([normalize_text(t) for t in texts], shingle, k)
    for i, t in enumerate(texts):
        want = set(text_shingles(t, shingle=shingle, shingle_size=k))
        assert len(set(x[doc == i].tolist())) == len(want), (i, t)


def test_signatures_match_python_int_minhash() -> None:
    texts = MIXED + _family_corpus(2, n_base=5)
    num_perm, seed = 16, 7
    sig = minhash_signatures(texts, num_perm=num_perm, seed=seed)
    a, b = dedup._permutations(num_perm, seed)
    x, doc = dedup._shingle_hashes32([normalize_text(t) for t in texts], "word", 3)
    for i in range(len(texts)):
        hs = x[doc == i].tolist()
        want = [min(((int(ak) * h + int(bk)) % 2**32 for h in hs), default=2**32 - 1) for ak, bk in zip(a, b)]
        assert sig[i].tolist() == want


def test_signatures_do_not_depend_on_chunk_sizes() -> None:
    texts = MIXED + _family_corpus(3) + [" ".join(f"t{i}" for i in range(500))]
    ref = minhash_signatures(texts, shingle="char", shingle_size=4)
    # chunk_shingles=64 routes every text with > 1 shingle through the long-text path.
    for kw in ({"chunk_chars": 1}, {"chunk_chars": 100, "chunk_shingles": 64}, {"chunk_shingles": 4}):
        np.testing.assert_array_equal(minhash_signatures(texts, shingle="char", shingle_size=4, **kw), ref)


def test_minhash_estimate_matches_true_jaccard() -> None:
    """Unigram sets with planted overlap: per-pair error within 5 sigma, no bias."""
    num_perm = 256
    n = 60
    texts, truth = [], []
    for overlap in range(0, n + 1, 2):
        texts.append(" ".join(f"a{overlap}_{i}" for i in range(n)))
        texts.append(" ".join(f"a{overlap}_{i}" for i in range(n - overlap, 2 * n - overlap)))
        truth.append(overlap / (2 * n - overlap))
    sig = minhash_signatures(texts, shingle="word", shingle_size=1, num_perm=num_perm, seed=3)
    idx = np.arange(0, len(texts), 2)
    est = dedup.estimated_jaccard(sig, idx, idx + 1)
    truth_a = np.array(truth)
    sigma = np.sqrt(truth_a * (1 - truth_a) / num_perm)
    assert np.all(np.abs(est - truth_a) <= 5 * sigma + 1.5 / num_perm), np.c_[truth_a, est]
    assert abs(float(np.mean(est - truth_a))) < 0.02
    assert est[-1] == 1.0 and est[0] <= 2 / num_perm


# --- near duplicates vs exact Jaccard -------------------------------------------


@pytest.mark.parametrize(
    ("shingle", "k", "threshold", "seed"), [("word", 3, 0.6, 0), ("char", 5, 0.7, 1), ("word", 2, 0.5, 2)]
)
def test_near_duplicate_pairs_against_exact_jaccard(shingle: str, k: int, threshold: float, seed: int) -> None:
    texts = _family_corpus(seed, n_base=80)
    ref = _reference_jaccard(texts, shingle, k)
    pairs, est = near_duplicate_pairs(texts, shingle=shingle, shingle_size=k, threshold=threshold, seed=seed)
    found = set(map(tuple, pairs.tolist()))
    strong = {p for p, j in ref.items() if j >= threshold + MARGIN}
    weak = {p for p, j in ref.items() if j <= threshold - MARGIN}
    # the corpus exercises both sides, with near misses (edited variants) below
    assert len(strong) >= 20 and sum(1 for p in weak if ref[p] > 0.2) >= 20
    assert strong <= found
    assert not (weak & found)
    assert np.all(est >= threshold)
    assert all(abs(e - ref[p]) < MARGIN for p, e in zip(map(tuple, pairs.tolist()), est))


def test_near_duplicate_clusters_against_exact_jaccard() -> None:
    texts = _family_corpus(4)
    ref = _reference_jaccard(texts, "word", 3)
    threshold = 0.6
    clusters = near_duplicate_clusters(texts, threshold=threshold)
    cluster_of = {i: c for c, members in enumerate(clusters) for i in members}
    for (i, j), jac in ref.items():
        if jac >= threshold + MARGIN:
            assert i in cluster_of and cluster_of[i] == cluster_of.get(j), (texts[i], texts[j])
    # every cluster lies inside one connected component of the loose reference graph
    loose = dedup._components(len(texts), *np.array([p for p, j in ref.items() if j > threshold - MARGIN]).T)
    for members in clusters:
        assert len({int(loose[i]) for i in members}) == 1
        assert members == sorted(members) and len(members) >= 2
    assert [c[0] for c in clusters] == sorted(c[0] for c in clusters)
    assert sorted(i for c in clusters for i in c) == sorted(cluster_of)  # disjoint


def test_pairs_include_every_exact_copy() -> None:
    base = "please write a short poem about the sea and the sky at night"
    texts = [base, "unrelated words here for sure", base.upper() + "!", base.replace("night", "dusk"), base + "."]
    pairs, est = near_duplicate_pairs(texts, threshold=0.7)
    assert pairs.tolist() == [[0, 2], [0, 3], [0, 4], [2, 3], [2, 4], [3, 4]]
    assert est.tolist()[:2] == [1.0, est[1]] and est[0] == 1.0 and est[1] < 1.0
    assert near_duplicate_clusters(texts, threshold=0.7) == [[0, 2, 3, 4]]


def test_near_duplicates_to_drop_keeps_first_of_each_cluster() -> None:
    assert near_duplicates_to_drop([[0, 3, 7], [2, 5]]) == [3, 5, 7]
    assert near_duplicates_to_drop([]) == []


def test_large_bucket_is_windowed_but_stays_connected() -> None:
    prefix = " ".join(f"common{i}" for i in range(40))
    texts = [f"{prefix} tail{i}" for i in range(300)] + ["something else entirely different"]
    clusters = near_duplicate_clusters(texts, threshold=0.8, max_bucket_pairs=3)
    assert clusters == [list(range(300))]
    pairs, _ = near_duplicate_pairs(texts, threshold=0.8, max_bucket_pairs=3)
    bands = optimal_lsh_params(0.8, 128)[0]
    assert len(pairs) <= bands * 300 * 3 < 300 * 299 // 2  # bounded per band, not quadratic


# --- contamination across splits ------------------------------------------------


def test_cross_split_contamination() -> None:
    train = [
        "How do I bake sourdough bread at home with a simple starter recipe",
        "What is the capital of France and why is it famous",
        "Explain quantum entanglement to a ten year old child please",
    ]
    evals = [
        "what is the capital of france and why is it famous?",  # exact after normalisation
        "How do I bake sourdough bread at home with a simple starter recipe today",  # near
        "Write a haiku about autumn leaves falling in the wind",  # clean
        "Write a haiku about autumn leaves falling in the wind!",  # eval-only duplicate: clean
        "Explain gravity to a ten year old",  # related, below threshold
    ]
    assert cross_split_contamination(train, evals, threshold=0.7) == [0, 1]
    assert cross_split_contamination(train, evals, shingle="char", shingle_size=5, threshold=0.7) == [0, 1]
    assert cross_split_contamination([], evals) == []
    assert cross_split_contamination(train, []) == []


# --- determinism, edge cases, non-ASCII, bad input --------------------------------


def test_deterministic_by_seed() -> None:
    texts = _family_corpus(5)
    s1, s2 = minhash_signatures(texts, seed=11), minhash_signatures(texts, seed=11)
    np.testing.assert_array_equal(s1, s2)
    assert not np.array_equal(s1, minhash_signatures(texts, seed=12))
    assert near_duplicate_clusters(texts, seed=11) == near_duplicate_clusters(list(texts), seed=11)


def test_empty_and_single_inputs() -> None:
    assert near_duplicate_clusters([]) == []
    assert near_duplicate_pairs([])[0].shape == (0, 2)
    assert minhash_signatures([]).shape == (0, 128)
    assert near_duplicate_clusters(["just one text here"]) == []
    # empty texts are exact duplicates of each other, never near-duplicates of text
    assert near_duplicate_clusters(["", "  ", "!!", "a real sentence"]) == [[0, 1, 2]]
    assert np.all(minhash_signatures([""]) == np.iinfo(np.uint32).max)


def test_texts_shorter_than_the_shingle() -> None:
    # fewer tokens / characters than the shingle size: the whole text is one shingle
    assert near_duplicate_clusters(["Hi there", "hi   there!", "hi where"], shingle_size=3) == [[0, 1]]
    assert near_duplicate_clusters(["abc", "ABC.", "abd"], shingle="char", shingle_size=5) == [[0, 1]]
    assert text_shingles("Hi there", shingle_size=3) == ["hi there"]


def test_non_ascii_texts() -> None:
    zh = "我们今天下午去公园散步然后在湖边的小餐馆吃了一顿非常好吃的午饭"
    texts = [
        zh,
        zh.replace("午饭", "晚饭"),
        "Привет, как дела у тебя сегодня?",
        "ПРИВЕТ, как дела у тебя сегодня",
        "Un café à Paris, s'il vous plaît",
        "un cafe a paris s'il vous plait",  # accents are not folded: a different text
        "lone \ud800 surrogate",
    ]
    # char shingles see the one-character edit in a sentence without spaces
    assert near_duplicate_clusters(texts, shingle="char", shingle_size=5, threshold=0.7) == [[0, 1], [2, 3]]
    # with word shingles the Chinese sentence is a single token: only exact copies match
    assert near_duplicate_clusters(texts, threshold=0.7) == [[2, 3]]


def test_bad_input_raises_one_line_errors() -> None:
    with pytest.raises(DataError, match=r"row 1 is int, expected str"):
        near_duplicate_clusters(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(DataError, match=r"eval_texts row 0 is NoneType"):
        cross_split_contamination(["a"], [None])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="threshold"):
        near_duplicate_clusters(["a"], threshold=1.5)
    with pytest.raises(ConfigError, match="shingle_size"):
        near_duplicate_clusters(["a"], shingle_size=0)
    with pytest.raises(ConfigError, match="num_perm"):
        minhash_signatures(["a"], num_perm=1)
    with pytest.raises(ConfigError, match="shingle must be"):
        near_duplicate_pairs(["a"], shingle="line")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_bucket_pairs"):
        near_duplicate_clusters(["a b c", "a b c d"], max_bucket_pairs=0)
