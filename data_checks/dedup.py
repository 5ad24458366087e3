"""Exact and near-duplicate detection: normalised-text hashing, MinHash + LSH.

Pure functions over sequences of strings (numpy + xxhash only). Row indices in
and out refer to positions in the input sequence.

Pipeline of :func:`near_duplicate_pairs` (the other near-duplicate functions
build on it), every step vectorised with numpy and processed in chunks:

1. :func:`normalize_text` every row; rows with equal normalised text (xxhash64)
   are exact duplicates and are collapsed to their first occurrence, so MinHash
   runs once per distinct text and huge groups of copies cost nothing in LSH.
2. Shingles. ``shingle="word"`` (default): word ``shingle_size``-grams (default
   3) over the whitespace-separated tokens of the normalised text — few
   shingles per short text, hence fast, and robust to reordering of clauses.
   ``shingle="char"``: character ``shingle_size``-grams (5 is typical) —
   several times more shingles, but finer-grained on very short prompts and the
   only sensible choice for scripts written without spaces (Chinese, Japanese,
   Thai), where a whole sentence is one "word". A text with fewer tokens
   (characters) than ``shingle_size`` is one shingle: the whole text.
   Each shingle is hashed to 64 bits without a Python loop: a token is the sum
   of a 64-bit mix (MurmurHash3 ``fmix64``) of every (byte, position) pair, a
   k-gram is a polynomial fold of its k element hashes mod 2^64.
3. MinHash with ``num_perm`` permutations in datasketch's "affine32" scheme
   (datasketch >= 2.0 default): the shingle hash is mixed to 32 bits ``h`` and
   permutation k is ``a_k * h + b_k mod 2^32`` with odd ``a_k`` (a bijection, so
   the permutation adds no collisions). Texts are sorted by shingle count and
   step j folds the j-th shingle of every text that has one into a (texts x
   num_perm) uint32 block with ``np.minimum`` (contiguous SIMD work, no padding).
4. LSH: ``b`` bands of ``r`` rows chosen like datasketch
   (:func:`optimal_lsh_params`, with ``lsh_weights`` = datasketch's ``weights``). Each band's rows are hashed to 64 bits;
   candidates are texts with an equal band hash, found by sorting (no Python
   dicts). Buckets larger than ``max_bucket_pairs + 1`` pair each member only with
   its next ``max_bucket_pairs`` neighbours (bounded work on templated spam;
   connected components are still found when neighbours verify).
5. Verification: a candidate pair is kept only if its MinHash-estimated Jaccard
   (share of equal signature entries over all ``num_perm``) is ``>= threshold``.
   This cuts the LSH false positives (pairs below the threshold that share a band).

Empty texts (nothing left after normalisation) have no shingles: they are
never near duplicates of a non-empty text, but they are exact duplicates of
each other, and every exact duplicate counts as a near duplicate (Jaccard 1).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from functools import lru_cache
from typing import Literal

import numpy as np
import xxhash

from rlhf_core.errors import ConfigError, DataError

ShingleKind = Literal["word", "char"]

DEFAULT_SHINGLE: ShingleKind = "word"
DEFAULT_SHINGLE_SIZE = 3
DEFAULT_NUM_PERM = 128
DEFAULT_THRESHOLD = 0.8
# Bounded memory: a chunk of texts is at most this many characters (transient
# arrays ~ 60 bytes per character), and one MinHash block is at most this many
# shingles (x num_perm x 4 bytes: 32 MiB at 128 permutations).
DEFAULT_CHUNK_CHARS = 1 << 19
DEFAULT_CHUNK_SHINGLES = 1 << 16
DEFAULT_MAX_BUCKET_PAIRS = 256
# (false-positive, false-negative) weights of the LSH banding (datasketch's default). Every
# candidate is verified against the threshold afterwards, so raising the false-negative weight
# costs only verification work: at threshold 0.8 and 128 permutations (0.5, 0.5) finds a pair of
# Jaccard 0.83 with probability 0.57, (0.1, 0.9) with 0.95.
DEFAULT_LSH_WEIGHTS: tuple[float, float] = (0.5, 0.5)

_U64 = np.uint64
# MurmurHash3 fmix64 constants and a 64-bit odd multiplier for polynomial folds
# (the golden-ratio constant used by splitmix64).
_FMIX_C1 = _U64(0xFF51AFD7ED558CCD)
_FMIX_C2 = _U64(0xC4CEB9FE1A85EC53)
_FOLD_M = _U64(0x9E3779B97F4A7C15)
_S33 = _U64(33)
_S32 = _U64(32)
_S8 = _U64(8)
_TOKEN_SALT = _U64(0x2545F4914F6CDD1D)
_MAX32 = np.uint32(0xFFFFFFFF)


# ---------------------------------------------------------------------------
# Normalisation and exact duplicates
# ---------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _is_edge_junk(ch: str) -> bool:
    """Punctuation (Unicode category P*) or whitespace."""
    return ch.isspace() or unicodedata.category(ch).startswith("P")


def normalize_text(s: str) -> str:
    """Unicode NFKC, casefold, collapse whitespace runs to one space, strip
    punctuation and whitespace at both ends (inner punctuation is kept).

    ``normalize_text("  Ｈello,\\tWORLD!! ") == "hello, world"``
    """
    s = " ".join(unicodedata.normalize("NFKC", s).casefold().split())
    if not s or (s[0].isalnum() and s[-1].isalnum()):  # fast path: nothing to strip
        return s
    i, j = 0, len(s)
    while i < j and _is_edge_junk(s[i]):
        i += 1
    while j > i and _is_edge_junk(s[j - 1]):
        j -= 1
    return s[i:j]


def _check_texts(texts: Sequence[str], what: str = "texts") -> list[str]:
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise DataError(f"dedup: {what} row {i} is {type(t).__name__}, expected str")
    return texts


def _exact_hashes(norm: Sequence[str]) -> np.ndarray:
    """xxhash64 of each normalised text. (N,) uint64."""
    enc = [s.encode("utf-8", "surrogatepass") for s in norm]
    return np.fromiter(map(xxhash.xxh64_intdigest, enc), dtype=_U64, count=len(enc))


def exact_duplicates(texts: Sequence[str]) -> list[int]:
    """Indices of rows whose normalised text was already seen earlier (the first
    occurrence is kept), ascending."""
    texts = _check_texts(texts)
    if not texts:
        return []
    h = _exact_hashes([normalize_text(t) for t in texts])
    _, first = np.unique(h, return_index=True)
    dup = np.ones(len(texts), dtype=bool)
    dup[first] = False
    return np.flatnonzero(dup).tolist()


# ---------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------


def _check_params(shingle: str, shingle_size: int, num_perm: int, threshold: float) -> None:
    if shingle not in ("word", "char"):
        raise ConfigError(f"dedup: shingle must be 'word' or 'char', got {shingle!r}")
    if not isinstance(shingle_size, (int, np.integer)) or shingle_size < 1:
        raise ConfigError(f"dedup: shingle_size must be an integer >= 1, got {shingle_size!r}")
    if not isinstance(num_perm, (int, np.integer)) or num_perm < 2:
        raise ConfigError(f"dedup: num_perm must be an integer >= 2, got {num_perm!r}")
    if not 0.0 < float(threshold) <= 1.0:
        raise ConfigError(f"dedup: threshold must be in (0, 1], got {threshold!r}")


@lru_cache(maxsize=64)
def optimal_lsh_params(
    threshold: float, num_perm: int, weights: tuple[float, float] = (0.5, 0.5)
) -> tuple[int, int]:
    """Bands ``b`` and rows per band ``r`` (``b * r <= num_perm``) minimising
    ``w_fp * FP + w_fn * FN``, the same objective and tie-breaking as
    ``datasketch.lsh._optimal_param`` (so both index the same way):

    ``FP = integral_0^t  1 - (1 - s^r)^b ds``   (pairs below t that collide in a band)
    ``FN = integral_t^1  (1 - s^r)^b ds``       (pairs above t that never collide)

    datasketch integrates with scipy's adaptive quadrature; the integrands are
    polynomials of degree b*r <= num_perm, which Gauss-Legendre quadrature with
    num_perm // 2 + 1 nodes integrates exactly.
    """
    _check_params("word", 1, num_perm, threshold)
    w_fp, w_fn = weights
    br = np.array([(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)], dtype=np.float64)
    b, r = br[:, :1], br[:, 1:]  # (C, 1)
    x, w = np.polynomial.legendre.leggauss(num_perm // 2 + 1)
    t = float(threshold)
    s_lo = (x + 1.0) * (t / 2.0)  # nodes on [0, t]
    s_hi = t + (x + 1.0) * ((1.0 - t) / 2.0)  # nodes on [t, 1]
    fp = ((1.0 - (1.0 - s_lo[None, :] ** r) ** b) @ w) * (t / 2.0)
    fn = (((1.0 - s_hi[None, :] ** r) ** b) @ w) * ((1.0 - t) / 2.0)
    best = int(np.argmin(w_fp * fp + w_fn * fn))  # first minimum, datasketch's order
    return int(br[best, 0]), int(br[best, 1])


def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) of the affine permutations, each (P,) uint32, ``a`` odd."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 1 << 31, size=num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = rng.integers(0, 1 << 32, size=num_perm, dtype=np.uint64).astype(np.uint32)
    return a, b


# ---------------------------------------------------------------------------
# Shingles and their hashes
# ---------------------------------------------------------------------------


def text_shingles(
    text: str, *, shingle: ShingleKind = DEFAULT_SHINGLE, shingle_size: int = DEFAULT_SHINGLE_SIZE
) -> list[str]:
    """The shingles of one text, as strings (the plain-Python definition that the
    vectorised hashing implements; used by tests and by the datasketch benchmark).
    """
    norm = normalize_text(text)
    if shingle == "word":
        toks = norm.split(" ") if norm else []
        if len(toks) < shingle_size:
            return [" ".join(toks)] if toks else []
        return [" ".join(toks[i : i + shingle_size]) for i in range(len(toks) - shingle_size + 1)]
    if not norm:
        return []
    if len(norm) < shingle_size:
        return [norm]
    return [norm[i : i + shingle_size] for i in range(len(norm) - shingle_size + 1)]


def _fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3 64-bit finaliser, in place on a uint64 array (a bijection)."""
    h ^= h >> _S33
    h *= _FMIX_C1
    h ^= h >> _S33
    h *= _FMIX_C2
    h ^= h >> _S33
    return h


def _kgram_hashes(vals: np.ndarray, doc: np.ndarray, n_docs: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every k-gram of consecutive elements inside one document; a
    document with 0 < length < k yields one hash of all its elements.

    vals: (L,) uint64 element hashes, doc: (L,) int64 sorted document ids.
    Returns (hashes (S,) uint64, doc ids (S,) int64) sorted by document.
    """
    lens = np.bincount(doc, minlength=n_docs)
    starts = np.cumsum(lens) - lens
    short = np.flatnonzero((lens > 0) & (lens < k))
    short_len = lens[short]
    short_hash = np.empty(len(short), dtype=_U64)
    f = vals.copy()  # f_j[i]: fold of the j elements starting at i
    for j in range(1, k + 1):
        if j > 1:
            f = f[:-1] * _FOLD_M + vals[j - 1 :]
        sel = short_len == j
        if sel.any():
            short_hash[sel] = f[starts[short[sel]]]
        if j == k or len(f) == 0:
            break
    windows = np.empty(0, dtype=_U64)
    wdoc = np.empty(0, dtype=np.int64)
    if len(vals) >= k:
        valid = doc[: len(vals) - k + 1] == doc[k - 1 :]  # window inside one document
        windows = f[valid]
        wdoc = doc[: len(vals) - k + 1][valid]
    h = np.concatenate([windows, short_hash])
    d = np.concatenate([wdoc, short])
    if len(short) and len(windows):
        order = np.argsort(d, kind="stable")
        h, d = h[order], d[order]
    return _fmix64(h), d


def _word_element_hashes(norm: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Hash of every whitespace token of the normalised texts, in order.
    Returns (token hashes (T,) uint64, document id of each token (T,) int64)."""
    # Normalised text has single spaces and no newlines: "\n" separates texts.
    data = np.frombuffer(("\n".join(norm) + "\n").encode("utf-8", "surrogatepass"), dtype=np.uint8)
    sep = (data == 32) | (data == 10)
    is_start = ~sep
    is_start[1:] &= sep[:-1]
    tstart = np.flatnonzero(is_start)
    if len(tstart) == 0:
        return np.empty(0, dtype=_U64), np.empty(0, dtype=np.int64)
    # Position of each byte inside its token (separators are zeroed below).
    pos = np.arange(len(data), dtype=_U64)
    pos[tstart[0] :] -= np.repeat(tstart.astype(_U64), np.diff(tstart, append=len(data)))
    # Token hash = sum over its bytes of fmix64(position, byte): a collision needs
    # a linear relation between pseudo-random 64-bit values (probability ~2^-64).
    v = pos
    v <<= _S8
    v |= data
    v += _TOKEN_SALT
    _fmix64(v)
    v[sep] = 0
    th = _fmix64(np.add.reduceat(v, tstart))
    tdoc = np.searchsorted(np.flatnonzero(data == 10), tstart).astype(np.int64)
    return th, tdoc


def _char_element_hashes(norm: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Hash of every code point of the normalised texts, in order.
    Returns (hashes (C,) uint64, document id of each character (C,) int64)."""
    cps = np.frombuffer("".join(norm).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    lens = np.fromiter(map(len, norm), dtype=np.int64, count=len(norm))
    v = cps.astype(_U64)
    v += _TOKEN_SALT
    return _fmix64(v), np.repeat(np.arange(len(norm), dtype=np.int64), lens)


def _shingle_hashes32(norm: Sequence[str], shingle: ShingleKind, shingle_size: int) -> tuple[np.ndarray, np.ndarray]:
    """32-bit shingle hashes of normalised texts: ((S,) uint32, (S,) int64 doc ids)."""
    if shingle == "word":
        vals, doc = _word_element_hashes(norm)
    else:
        vals, doc = _char_element_hashes(norm)
    h, d = _kgram_hashes(vals, doc, len(norm), shingle_size)
    return (h >> _S32).astype(np.uint32), d


# ---------------------------------------------------------------------------
# MinHash signatures
# ---------------------------------------------------------------------------


def _signatures_of_normalized(
    norm: Sequence[str],
    *,
    shingle: ShingleKind,
    shingle_size: int,
    num_perm: int,
    seed: int,
    chunk_chars: int,
    chunk_shingles: int,
) -> np.ndarray:
    n = len(norm)
    sig = np.full((n, num_perm), _MAX32, dtype=np.uint32)  # (N, P); all-max = no shingles
    if n == 0:
        return sig
    a, b = _permutations(num_perm, seed)
    lens = np.fromiter(map(len, norm), dtype=np.int64, count=n)
    # Chunk boundaries by cumulative characters (at least one text per chunk).
    cum = np.cumsum(lens + 1)
    lo = 0
    while lo < n:
        base = cum[lo - 1] if lo else 0
        hi = max(lo + 1, int(np.searchsorted(cum, base + chunk_chars, side="right")))
        x, d = _shingle_hashes32(norm[lo:hi], shingle, shingle_size)
        _minhash_into(sig[lo:hi], x, d, a, b, chunk_shingles)
        lo = hi
    return sig


def _minhash_into(sig: np.ndarray, x: np.ndarray, doc: np.ndarray, a: np.ndarray, b: np.ndarray,
                  chunk_shingles: int) -> None:
    """sig[d] = min over the shingles x of text d of (a * x + b mod 2^32).

    sig: (D, P) uint32, updated in place; x: (S,) uint32 shingle hashes; doc: (S,)
    sorted text ids; a, b: (P,) uint32.
    """
    counts = np.bincount(doc, minlength=sig.shape[0])
    starts = np.cumsum(counts) - counts
    num_perm = len(a)
    # Texts with up to `cap` shingles: sort by count, descending; step j folds the
    # j-th shingle of the texts that have more than j (a prefix). Contiguous
    # (m, P) blocks, no padding, no segmented reduction (np.minimum.reduceat
    # along axis 0 is ~5x slower).
    cap = max(1, chunk_shingles // 64)
    small = np.flatnonzero((counts > 0) & (counts <= cap))
    small = small[np.argsort(-counts[small], kind="stable")]
    rows = max(1, chunk_shingles // 16)  # acc + tmp: 2 x (rows, P) uint32, ~2 MiB at the defaults
    for r0 in range(0, len(small), rows):
        ids = small[r0 : r0 + rows]
        c_sorted = counts[ids]
        st = starts[ids]
        acc = np.empty((len(ids), num_perm), dtype=np.uint32)
        tmp = np.empty_like(acc)
        np.multiply(x[st][:, None], a, out=acc)
        acc += b
        neg = -c_sorted  # ascending
        for j in range(1, int(c_sorted[0])):
            m = int(np.searchsorted(neg, -j, side="left"))  # texts with > j shingles
            t = tmp[:m]
            np.multiply(x[st[:m] + j][:, None], a, out=t)
            t += b
            np.minimum(acc[:m], t, out=acc[:m])
        sig[ids] = np.minimum(sig[ids], acc)
    # Long texts: blocks of at most chunk_shingles rows, each reduced at once.
    for t_id in np.flatnonzero(counts > cap):
        row = sig[t_id]
        for s0 in range(int(starts[t_id]), int(starts[t_id] + counts[t_id]), chunk_shingles):
            xs = x[s0 : min(s0 + chunk_shingles, int(starts[t_id] + counts[t_id]))]
            block = xs[:, None] * a
            block += b
            np.minimum(row, block.min(axis=0), out=row)


def minhash_signatures(
    texts: Sequence[str],
    *,
    shingle: ShingleKind = DEFAULT_SHINGLE,
    shingle_size: int = DEFAULT_SHINGLE_SIZE,
    num_perm: int = DEFAULT_NUM_PERM,
    seed: int = 0,
    chunk_chars: int = DEFAULT_CHUNK_CHARS,
    chunk_shingles: int = DEFAULT_CHUNK_SHINGLES,
) -> np.ndarray:
    """MinHash signature of every text. Returns (N, num_perm) uint32; a text with
    no shingles (empty after normalisation) is all 0xFFFFFFFF. Results do not
    depend on the chunk sizes, only on the texts, the shingling, num_perm and seed.
    """
    _check_params(shingle, shingle_size, num_perm, 1.0)
    texts = _check_texts(texts)
    return _signatures_of_normalized(
        [normalize_text(t) for t in texts],
        shingle=shingle,
        shingle_size=shingle_size,
        num_perm=num_perm,
        seed=seed,
        chunk_chars=chunk_chars,
        chunk_shingles=max(1, chunk_shingles),
    )


def estimated_jaccard(sig: np.ndarray, u: np.ndarray, v: np.ndarray, chunk: int = 1 << 15) -> np.ndarray:
    """Share of equal MinHash values of rows u[i] and v[i] of ``sig`` (N, P).
    Returns (E,) float64."""
    out = np.empty(len(u), dtype=np.float64)
    for s in range(0, len(u), chunk):
        out[s : s + chunk] = np.count_nonzero(sig[u[s : s + chunk]] == sig[v[s : s + chunk]], axis=1)
    out /= sig.shape[1]
    return out


# ---------------------------------------------------------------------------
# LSH candidates
# ---------------------------------------------------------------------------


def _band_hashes(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """64-bit hash of each band (rows consecutive signature values) of each
    signature. sig (N, P) -> (N, bands) uint64."""
    view = sig[:, : bands * rows].reshape(sig.shape[0], bands, rows)
    salt = [(j * int(_FOLD_M) + int(_TOKEN_SALT)) & 0xFFFFFFFFFFFFFFFF for j in range(bands)]
    h = np.broadcast_to(np.array(salt, dtype=_U64), (sig.shape[0], bands)).copy()
    for c in range(rows):
        h ^= view[:, :, c]
        h *= _FOLD_M
    return _fmix64(h)


def _run_pairs(order: np.ndarray, keys_sorted: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of members of each run of equal keys in ``keys_sorted``; member at
    run position p is paired with positions p+1 .. p+window of its run.
    ``order[p]`` is the item at sorted position p. Returns (left, right) int64."""
    n = len(keys_sorted)
    if n < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    same_next = keys_sorted[1:] == keys_sorted[:-1]
    if not same_next.any():
        return np.empty(0, np.int64), np.empty(0, np.int64)
    # end (exclusive) of the run containing each position
    brk = np.flatnonzero(~same_next) + 1
    run_end = np.concatenate((brk, [n]))
    run_start = np.concatenate(([0], brk))
    sizes = run_end - run_start
    multi = sizes >= 2
    run_start, run_end, sizes = run_start[multi], run_end[multi], sizes[multi]
    total = int(sizes.sum())
    pos = np.repeat(run_start, sizes) + (np.arange(total) - np.repeat(np.cumsum(sizes) - sizes, sizes))
    end = np.repeat(run_end, sizes)
    cnt = np.minimum(end - pos - 1, window)
    left = np.repeat(pos, cnt)
    first = np.cumsum(cnt) - cnt
    right = left + (np.arange(int(cnt.sum())) - np.repeat(first, cnt) + 1)
    return order[left].astype(np.int64), order[right].astype(np.int64)


def _candidate_pairs(band_h: np.ndarray, window: int) -> np.ndarray:
    """Unique pairs (i < j) of rows sharing at least one band hash. (E, 2) int64."""
    if window < 1:
        raise ConfigError(f"dedup: max_bucket_pairs must be >= 1, got {window}")
    n = band_h.shape[0]
    keys = []
    for j in range(band_h.shape[1]):
        col = band_h[:, j]
        order = np.argsort(col, kind="stable")
        left, right = _run_pairs(order, col[order], window)
        lo, hi = np.minimum(left, right), np.maximum(left, right)
        keys.append(lo * n + hi)
    if not keys:
        return np.empty((0, 2), np.int64)
    k = np.unique(np.concatenate(keys))
    return np.stack((k // n, k % n), axis=1) if len(k) else np.empty((0, 2), np.int64)


def _components(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Connected-component label (smallest member) of each of n nodes given edges
    (u, v): hook-and-compress union-find in numpy. (n,) int64."""
    parent = np.arange(n, dtype=np.int64)
    if len(u) == 0:
        return parent
    while True:
        pu, pv = parent[u], parent[v]
        diff = pu != pv
        if not diff.any():
            return parent
        # hook the larger root under the smaller (roots: parent is compressed)
        np.minimum.at(parent, np.maximum(pu[diff], pv[diff]), np.minimum(pu[diff], pv[diff]))
        while True:
            nxt = parent[parent]
            if np.array_equal(nxt, parent):
                break
            parent = nxt


# ---------------------------------------------------------------------------
# Near duplicates
# ---------------------------------------------------------------------------


class _Prepared:
    """Normalised texts collapsed to distinct texts, with signatures and bands."""

    def __init__(self, texts: list[str], shingle: ShingleKind, shingle_size: int, num_perm: int,
                 threshold: float, seed: int, chunk_chars: int, chunk_shingles: int,
                 lsh_weights: tuple[float, float] = DEFAULT_LSH_WEIGHTS):
        self.n = len(texts)
        norm = [normalize_text(t) for t in texts]
        h = _exact_hashes(norm)
        _, first, inv = np.unique(h, return_index=True, return_inverse=True)
        # Distinct texts numbered by first occurrence, so results are in input order.
        rank = np.empty(len(first), dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(len(first))
        self.rep_of_row = rank[inv.reshape(-1)]  # (N,) distinct-text id of each row
        self.rep_rows = np.sort(first)  # (U,) first row of each distinct text
        rep_norm = [norm[i] for i in self.rep_rows]
        self.nonempty = np.flatnonzero(np.fromiter(map(len, rep_norm), dtype=np.int64, count=len(rep_norm)) > 0)
        self.sig = _signatures_of_normalized(
            [rep_norm[i] for i in self.nonempty], shingle=shingle, shingle_size=shingle_size,
            num_perm=num_perm, seed=seed, chunk_chars=chunk_chars, chunk_shingles=max(1, chunk_shingles),
        )  # (U', P) for the non-empty distinct texts
        b, r = optimal_lsh_params(threshold, num_perm, tuple(lsh_weights))  # type: ignore[arg-type]
        self.bands = _band_hashes(self.sig, b, r)
        self.threshold = threshold

    def verified(self, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Candidate pairs of signature rows -> (pairs of distinct-text ids (E, 2), est. Jaccard (E,))."""
        est = estimated_jaccard(self.sig, cand[:, 0], cand[:, 1])
        # float tolerance: est is k/P exactly, the threshold may not be
        keep = est >= self.threshold - 1e-12
        return self.nonempty[cand[keep]], est[keep]


def _prepare(texts: Sequence[str], shingle: ShingleKind, shingle_size: int, num_perm: int, threshold: float,
             seed: int, chunk_chars: int, chunk_shingles: int, what: str = "texts",
             lsh_weights: tuple[float, float] = DEFAULT_LSH_WEIGHTS) -> _Prepared:
    _check_params(shingle, shingle_size, num_perm, threshold)
    if chunk_chars < 1 or chunk_shingles < 1:
        raise ConfigError(f"dedup: chunk_chars and chunk_shingles must be >= 1, got {chunk_chars}, {chunk_shingles}")
    w_fp, w_fn = lsh_weights
    if w_fp < 0 or w_fn < 0 or w_fp + w_fn <= 0:
        raise ConfigError(f"dedup: lsh_weights must be two non-negative numbers, not both 0, got {lsh_weights!r}")
    return _Prepared(_check_texts(texts, what), shingle, shingle_size, num_perm, threshold, seed,
                     chunk_chars, chunk_shingles, (float(w_fp), float(w_fn)))


def near_duplicate_pairs(
    texts: Sequence[str],
    *,
    shingle: ShingleKind = DEFAULT_SHINGLE,
    shingle_size: int = DEFAULT_SHINGLE_SIZE,
    num_perm: int = DEFAULT_NUM_PERM,
    threshold: float = DEFAULT_THRESHOLD,
    seed: int = 0,
    max_bucket_pairs: int = DEFAULT_MAX_BUCKET_PAIRS,
    chunk_chars: int = DEFAULT_CHUNK_CHARS,
    chunk_shingles: int = DEFAULT_CHUNK_SHINGLES,
    lsh_weights: tuple[float, float] = DEFAULT_LSH_WEIGHTS,
) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of rows (i < j) that are exact duplicates after normalisation
    or whose MinHash-estimated Jaccard is >= threshold after an LSH collision.

    ``lsh_weights`` = (false-positive, false-negative) weights that choose the LSH bands
    (:func:`optimal_lsh_params`); candidates are verified, so a larger false-negative weight
    trades verification time for recall.

    Returns (pairs (E, 2) int64 sorted lexicographically, estimated Jaccard (E,)
    float64; 1.0 for exact duplicates). Groups of k exact copies yield k(k-1)/2
    pairs: use :func:`near_duplicate_clusters` for large corpora of copies.
    """
    prep = _prepare(texts, shingle, shingle_size, num_perm, threshold, seed, chunk_chars, chunk_shingles,
                    lsh_weights=lsh_weights)
    rep_pairs, est = prep.verified(_candidate_pairs(prep.bands, max_bucket_pairs))
    # Expand distinct-text pairs to row pairs: rows grouped by distinct text.
    order = np.argsort(prep.rep_of_row, kind="stable")
    size = np.bincount(prep.rep_of_row, minlength=len(prep.rep_rows))
    start = np.cumsum(size) - size
    # cross pairs: every row of text u with every row of text v
    su, sv = size[rep_pairs[:, 0]], size[rep_pairs[:, 1]]
    cnt = su * sv
    e = np.repeat(np.arange(len(rep_pairs)), cnt)
    k = np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    left = order[start[rep_pairs[e, 0]] + k // sv[e]]
    right = order[start[rep_pairs[e, 1]] + k % sv[e]]
    # within pairs: copies of one distinct text
    gl, gr = _run_pairs(order, prep.rep_of_row[order], window=len(order))
    i = np.concatenate((left, gl))
    j = np.concatenate((right, gr))
    est_all = np.concatenate((est[e], np.ones(len(gl))))
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    srt = np.lexsort((hi, lo))
    return np.stack((lo[srt], hi[srt]), axis=1).astype(np.int64), est_all[srt]


def near_duplicate_clusters(
    texts: Sequence[str],
    *,
    shingle: ShingleKind = DEFAULT_SHINGLE,
    shingle_size: int = DEFAULT_SHINGLE_SIZE,
    num_perm: int = DEFAULT_NUM_PERM,
    threshold: float = DEFAULT_THRESHOLD,
    seed: int = 0,
    max_bucket_pairs: int = DEFAULT_MAX_BUCKET_PAIRS,
    chunk_chars: int = DEFAULT_CHUNK_CHARS,
    chunk_shingles: int = DEFAULT_CHUNK_SHINGLES,
    lsh_weights: tuple[float, float] = DEFAULT_LSH_WEIGHTS,
) -> list[list[int]]:
    """Clusters (size >= 2) of rows linked by near-duplicate pairs (see
    :func:`near_duplicate_pairs`; connected components, so two members may be
    linked only through a third). Each cluster sorted; clusters sorted by their
    first row."""
    prep = _prepare(texts, shingle, shingle_size, num_perm, threshold, seed, chunk_chars, chunk_shingles,
                    lsh_weights=lsh_weights)
    rep_pairs, _ = prep.verified(_candidate_pairs(prep.bands, max_bucket_pairs))
    label = _components(len(prep.rep_rows), rep_pairs[:, 0], rep_pairs[:, 1])[prep.rep_of_row]  # (N,)
    order = np.argsort(label, kind="stable")  # rows ascending within a label
    sl = label[order]
    brk = np.flatnonzero(sl[1:] != sl[:-1]) + 1
    groups = np.split(order, brk) if len(order) else []
    clusters = [g.tolist() for g in groups if len(g) >= 2]
    clusters.sort(key=lambda c: c[0])
    return clusters


def near_duplicates_to_drop(clusters: Sequence[Sequence[int]]) -> list[int]:
    """Rows to drop so that each cluster keeps only its first (smallest) row. Sorted."""
    return sorted(i for c in clusters for i in sorted(c)[1:])


def cross_split_contamination(
    train_texts: Sequence[str],
    eval_texts: Sequence[str],
    *,
    shingle: ShingleKind = DEFAULT_SHINGLE,
    shingle_size: int = DEFAULT_SHINGLE_SIZE,
    num_perm: int = DEFAULT_NUM_PERM,
    threshold: float = DEFAULT_THRESHOLD,
    seed: int = 0,
    max_bucket_pairs: int = DEFAULT_MAX_BUCKET_PAIRS,
    chunk_chars: int = DEFAULT_CHUNK_CHARS,
    chunk_shingles: int = DEFAULT_CHUNK_SHINGLES,
    lsh_weights: tuple[float, float] = DEFAULT_LSH_WEIGHTS,
) -> list[int]:
    """Indices into ``eval_texts`` of rows that have an exact or near duplicate
    (same rule as :func:`near_duplicate_pairs`) in ``train_texts``. Duplicates
    among eval rows alone do not count. Sorted."""
    train = _check_texts(train_texts, "train_texts")
    ev = _check_texts(eval_texts, "eval_texts")
    if not train or not ev:
        _check_params(shingle, shingle_size, num_perm, threshold)
        return []
    prep = _prepare(train + ev, shingle, shingle_size, num_perm, threshold, seed, chunk_chars, chunk_shingles,
                    lsh_weights=lsh_weights)
    n_tr = len(train)
    u_count = len(prep.rep_rows)
    in_train = np.zeros(u_count, dtype=bool)
    in_train[prep.rep_of_row[:n_tr]] = True
    in_eval = np.zeros(u_count, dtype=bool)
    in_eval[prep.rep_of_row[n_tr:]] = True
    cand = _candidate_pairs(prep.bands, max_bucket_pairs)
    cu, cv = prep.nonempty[cand[:, 0]], prep.nonempty[cand[:, 1]]
    cross = (in_train[cu] & in_eval[cv]) | (in_train[cv] & in_eval[cu])
    rep_pairs, _ = prep.verified(cand[cross])
    bad = in_train.copy()  # an eval row identical (normalised) to a train row
    bad[rep_pairs[in_train[rep_pairs[:, 0]], 1]] = True
    bad[rep_pairs[in_train[rep_pairs[:, 1]], 0]] = True
    return np.flatnonzero(bad[prep.rep_of_row[n_tr:]]).tolist()
