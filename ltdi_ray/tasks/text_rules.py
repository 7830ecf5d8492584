"""Few-shot text tasks under hidden rules (``task=text``): how a task is drawn, and which tasks each split holds.

A task is a binary rule over single words (a topic, a sentiment, a property of the spelling) and two label
words picked from ``LABEL_WORDS`` (which class gets which is part of the task): the model sees
``Input: <word>\\nLabel:`` and must answer with the right label word, which it can only know from the
examples. A *rule* is a kind with its parameter (``category`` with ``animal``, ``contains`` with ``e``);
a *task* is a rule, the side the first label names (``flip``) and the ordered pair of label words.

Splits hold out both instances and whole kinds. The kinds in ``HELD_OUT`` never appear in training: one
for validation, two for test. Tasks of the other kinds go to train, val or test by a hash of the task
(80/10/10), so a val or test task of a seen kind is a rule-and-labels combination training never had.
Val and test episodes are of held-out kinds or seen kinds with even odds (``task.kinds``: mixed), or only
one of the two.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

import numpy as np

from ltdi_ray.tasks.text_lexicon import CATEGORIES, LABEL_WORDS, NEGATIVE, POSITIVE

NOUNS = [w for words in CATEGORIES.values() for w in words]
ADJECTIVES = POSITIVE + NEGATIVE
WORDS = NOUNS + ADJECTIVES  # every input word; episodes store indices into it
HELD_OUT = {"ends_with": "val", "sentiment": "test", "length": "test"}  # kind -> the only split it appears in
KIND_MODES = ("mixed", "seen", "heldout")  # task.kinds: val/test episodes of which kinds
BUCKETS = (("train", 0.8), ("val", 0.9), ("test", 1.0))  # seen kinds: a task's hash decides its split


@dataclass(frozen=True)
class Rule:
    """One rule: words on ``positive`` (indices into WORDS) satisfy it, words on ``negative`` do not."""

    kind: str
    param: str
    positive: Tuple[int, ...]
    negative: Tuple[int, ...]


def _split_words(universe: List[str], test: Callable[[str], bool]) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    index = {w: i for i, w in enumerate(WORDS)}
    return tuple(index[w] for w in universe if test(w)), tuple(index[w] for w in universe if not test(w))


def _all_rules() -> List[Rule]:
    rules = []

    def add(kind, param, universe, test):
        rules.append(Rule(kind, str(param), *_split_words(universe, test)))

    cats = sorted(CATEGORIES)
    for c in cats:
        add("category", c, NOUNS, lambda w, c=c: w in CATEGORIES[c])
    for i, a in enumerate(cats):
        for b in cats[i + 1:]:
            add("category_pair", f"{a}|{b}", CATEGORIES[a] + CATEGORIES[b], lambda w, a=a: w in CATEGORIES[a])
    add("part_of_speech", "noun", WORDS, lambda w: w in NOUNS)
    add("first_letter", "a-m", WORDS, lambda w: w[0] <= "m")
    add("vowel_start", "aeiou", WORDS, lambda w: w[0] in "aeiou")
    for letter in "aeiorstnlu":
        add("contains", letter, WORDS, lambda w, letter=letter: letter in w)
    for letter in "estyrnlk":
        add("ends_with", letter, WORDS, lambda w, letter=letter: w.endswith(letter))
    add("sentiment", "positive", ADJECTIVES, lambda w: w in POSITIVE)
    for n in (3, 4, 5, 6):
        add("length", f"<={n}", WORDS, lambda w, n=n: len(w) <= n)
    return rules


RULES = _all_rules()


def usable_rules(per_class: int) -> List[int]:
    """Indices of the rules with at least ``per_class`` words on each side."""
    return [i for i, r in enumerate(RULES) if min(len(r.positive), len(r.negative)) >= per_class]


def task_bucket(rule: int, flip: int, labels: Tuple[int, int]) -> str:
    """The split a task of a seen kind belongs to, from a hash of the task."""
    digest = hashlib.blake2b(f"{RULES[rule].kind}/{RULES[rule].param}/{flip}/{labels[0]}/{labels[1]}".encode(),
                             digest_size=8).digest()
    u = int.from_bytes(digest, "little") / 2**64
    return next(name for name, upper in BUCKETS if u < upper)


def draw_task(rng: np.random.Generator, split: str, kinds: str, rules: List[int]) -> Dict[str, int]:
    """A task of ``split`` among ``rules``: ``rule``, ``flip``, ``label0``, ``label1`` and ``heldout`` (1 when
    its kind never appears in training)."""
    heldout = split != "train" and (kinds == "heldout" or (kinds == "mixed" and rng.random() < 0.5))
    pool = [i for i in rules if HELD_OUT.get(RULES[i].kind) == (split if heldout else None)]
    kinds_in = sorted({RULES[i].kind for i in pool})
    while True:  # a kind, then one of its rules: kinds are equally likely; seen kinds land in val/test 1 in 10
        kind = kinds_in[int(rng.integers(len(kinds_in)))]
        of_kind = [i for i in pool if RULES[i].kind == kind]
        rule, flip = of_kind[int(rng.integers(len(of_kind)))], int(rng.integers(2))
        labels = tuple(int(v) for v in rng.choice(len(LABEL_WORDS), size=2, replace=False))
        if heldout or task_bucket(rule, flip, labels) == split:
            return {"rule": rule, "flip": flip, "label0": labels[0], "label1": labels[1], "heldout": int(heldout)}


def class_words(task: Dict[str, int]) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """The words of class 0 and class 1 of ``task`` (class 0 answers ``label0``)."""
    r = RULES[task["rule"]]
    return (r.negative, r.positive) if task["flip"] else (r.positive, r.negative)


def describe_rules() -> Dict[str, object]:
    """Counts for a dataset manifest: rules per kind and which split holds each held-out kind."""
    kinds: Dict[str, int] = {}
    for r in RULES:
        kinds[r.kind] = kinds.get(r.kind, 0) + 1
    return {"rules_per_kind": kinds, "held_out_kinds": dict(HELD_OUT), "words": len(WORDS),
            "label_words": len(LABEL_WORDS)}
