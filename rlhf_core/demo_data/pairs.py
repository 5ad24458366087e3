"""Step 3a of the demo data: which replies of a prompt are compared (the pairs the panel labels)."""

from __future__ import annotations

import random
from typing import Any

from rlhf_core.config.demo_data import DemoDataConfig
from rlhf_core.demo_data.replies import Candidates


# Which pairs can be built, per prompt kind (A, B); the panel decides who wins.
BENIGN_PAIR_KINDS: tuple[tuple[str, str], ...] = (
    ("sample_a", "sample_b"), ("trimmed_a", "sample_a"), ("greedy", "sample_a"), ("sample_a", "refusal"),
    ("sample_b", "loop"), ("sample_a", "loop"), ("sample_a", "off_topic"), ("trimmed_a", "sample_b"),
)
HARMFUL_PAIR_KINDS: tuple[tuple[str, str], ...] = (
    ("refusal", "sample_a"), ("refusal_2", "sample_b"), ("refusal", "refusal_2"), ("sample_a", "loop"),
    ("refusal_2", "sample_a"),
)


def _sample_letter(key: str) -> str | None:
    """'c' for sample_c or trimmed_c (two forms of one sampled reply); None for other replies."""
    kind, _, letter = key.partition("_")
    return letter if kind in ("sample", "trimmed") and len(letter) == 1 else None


def ranked_pair_kinds(
    replies: dict[str, str], used: set[frozenset[str]] | frozenset[frozenset[str]] = frozenset(),
) -> list[list[tuple[str, str]]]:
    """One pair per two different samples of a prompt, each reply raw or trimmed (picked at random later).

    Grouped by the two samples compared: ``(x raw vs y)`` and ``(x trimmed vs y)`` are the same
    comparison up to a trailing fragment (the data stage would drop one as a near-duplicate), so
    a pair of samples already compared (``used``) is skipped. Returns, per pair of samples, its
    forms, e.g. ``[[("sample_a", "sample_c"), ("trimmed_a", "sample_c")], ...]``.
    """
    forms: dict[str, list[str]] = {}  # sample letter -> its keys ("sample_c", "trimmed_c")
    for key in replies:
        letter = _sample_letter(key)
        if letter:
            forms.setdefault(letter, []).append(key)
    letters = sorted(forms)
    out = []
    for i, x in enumerate(letters):
        for y in letters[i + 1:]:
            if frozenset((x, y)) in used:
                continue
            options = [(ka, kb) for ka in forms[x] for kb in forms[y] if replies[ka].strip() != replies[kb].strip()]
            if options:
                out.append(options)
    return out


def build_pairs(cands: list[Candidates], cfg: DemoDataConfig, rng: random.Random) -> list[dict[str, Any]]:
    """Pick a few pairs per prompt; order A/B at random (the panel has a position bias).

    Then, for benign prompts with ranked samples, ``ranked_pairs_per_prompt`` more pairs of two
    of the prompt's own samples (each raw or trimmed to its last finished sentence): the
    comparisons InstructGPT's labelers made, and the only ones in which both replies are the
    ordinary kind of answer a fine-tuned policy gives. No two pairs of a prompt compare the same
    two samples (raw or trimmed): the data stage would rightly drop one as a near-duplicate.
    """
    pairs = []
    compared: dict[int, set[frozenset[str]]] = {}  # prompt -> pairs of samples already compared
    for n, c in enumerate(cands):
        kinds = HARMFUL_PAIR_KINDS if c.prompt.harmful else BENIGN_PAIR_KINDS
        available = [k for k in kinds if k[0] in c.replies and k[1] in c.replies
                     and c.replies[k[0]].strip() != c.replies[k[1]].strip()]
        k = min(len(available), rng.randint(*cfg.pairs_per_prompt))
        for ka, kb in rng.sample(available, k):
            samples = frozenset((_sample_letter(ka), _sample_letter(kb)))
            if None not in samples and samples in compared.get(n, set()):
                continue  # (a vs b) and (a trimmed vs b): one comparison up to a trailing fragment
            compared.setdefault(n, set()).add(samples)
            if rng.random() < 0.5:
                ka, kb = kb, ka
            pairs.append({"prompt": c.prompt, "a": c.replies[ka], "b": c.replies[kb], "kind": f"{ka}|{kb}"})
    for n, c in enumerate(cands):
        if c.prompt.harmful or not cfg.ranked_pairs_per_prompt:
            continue
        groups = ranked_pair_kinds(c.replies, compared.get(n, set()))
        for options in rng.sample(groups, min(len(groups), cfg.ranked_pairs_per_prompt)):
            ka, kb = rng.choice(options)
            if rng.random() < 0.5:
                ka, kb = kb, ka
            pairs.append({"prompt": c.prompt, "a": c.replies[ka], "b": c.replies[kb], "kind": f"{ka}|{kb}",
                          "ranked": True})
    return pairs
