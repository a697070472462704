"""Prompt grammar of the shapes world: generation, parsing, canonical keys and splits.

Six categories mirror GenEval:

    single_object  "a photo of a circle"                       at least one circle
    two_object     "a photo of a circle and a square"          at least one of each
    counting       "a photo of three triangles"                exactly three triangles
    colors         "a photo of a red circle"                   a red circle exists
    position       "a photo of a circle left of a square"      both exist, relation holds
    color_attr     "a photo of a red circle and a blue square" each coloured shape exists

A prompt parses to a :class:`Spec`: its category and a tuple of constraints. Two prompts
that mean the same thing ("a circle left of a square" / "a square right of a circle")
share a canonical key; splits are made over canonical keys, so a meaning never sits in
two splits.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from functools import cache

from vgen.world.vocab import CATEGORIES, COLORS, NUMBERS, PLURALS, RELATIONS, SHAPES

SPLITS = ("train", "val", "test")
# Fraction of each category's canonical meanings held out for test and val; at least one
# meaning per split per category, so every category is evaluated on unseen prompts.
TEST_FRACTION, VAL_FRACTION = 0.2, 0.1
_SPLIT_SALT = "vgen-shapes-v1"


@dataclass(frozen=True)
class Exists:
    """At least ``n`` objects of ``shape`` (of ``color`` when given)."""

    shape: str
    color: str | None = None
    n: int = 1

    def describe(self) -> str:
        what = f"{self.color} {self.shape}" if self.color else self.shape
        return f"has {what}" if self.n == 1 else f"has >= {self.n} {what}"


@dataclass(frozen=True)
class Count:
    """Exactly ``n`` objects of ``shape``, any colour."""

    shape: str
    n: int

    def describe(self) -> str:
        return f"count {self.shape} == {self.n}"


@dataclass(frozen=True)
class Relation:
    """Some ``a`` lies ``rel`` some ``b`` (centroid relation, see verifier.py)."""

    a: str
    rel: str
    b: str

    def describe(self) -> str:
        return f"{self.a} {self.rel} {self.b}"

    def canonical(self) -> Relation:
        flip = {"right of": "left of", "below": "above"}
        return Relation(self.b, flip[self.rel], self.a) if self.rel in flip else self


Constraint = Exists | Count | Relation


@dataclass(frozen=True)
class Spec:
    """A parsed prompt: its category and the constraints an image must meet."""

    prompt: str
    category: str
    constraints: tuple[Constraint, ...]

    @property
    def key(self) -> str:
        """Canonical meaning: equal for prompts that accept exactly the same images."""
        parts = sorted(repr(c.canonical() if isinstance(c, Relation) else c) for c in self.constraints)
        return self.category + "|" + ";".join(parts)


# ---------------------------------------------------------------- generation


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _np(shape: str, color: str | None = None) -> str:
    head = f"{color} {shape}" if color else shape
    return f"{_article(head)} {head}"


def make_prompt(category: str, shapes: tuple[str, ...], colors: tuple[str | None, ...] = (), n: int = 1,
                rel: str | None = None) -> str:
    """Render a prompt of ``category`` from its parts (the inverse of :func:`parse`)."""
    cols = tuple(colors) + (None,) * (len(shapes) - len(colors))
    if category in ("single_object", "colors"):
        return f"a photo of {_np(shapes[0], cols[0])}"
    if category == "counting":
        word = {v: k for k, v in NUMBERS.items()}[n]
        return f"a photo of {word} {shapes[0] if n == 1 else PLURALS[shapes[0]]}"
    if category in ("two_object", "color_attr"):
        return f"a photo of {_np(shapes[0], cols[0])} and {_np(shapes[1], cols[1])}"
    if category == "position":
        return f"a photo of {_np(shapes[0])} {rel} {_np(shapes[1])}"
    raise ValueError(f"unknown category {category!r}; expected one of {', '.join(CATEGORIES)}")


@cache
def all_prompts(category: str | None = None) -> tuple[str, ...]:
    """Every prompt of the grammar (of one category), in a fixed order.

    Unordered pairs (two_object, color_attr) appear once, shapes in vocabulary order;
    position keeps all four relations, so each of its meanings has two phrasings.
    """
    if category is None:
        return tuple(p for c in CATEGORIES for p in all_prompts(c))
    pairs = [(a, b) for i, a in enumerate(SHAPES) for b in SHAPES[i + 1:]]
    colors = list(COLORS)
    if category == "single_object":
        out = [make_prompt(category, (s,)) for s in SHAPES]
    elif category == "two_object":
        out = [make_prompt(category, p) for p in pairs]
    elif category == "counting":
        out = [make_prompt(category, (s,), n=n) for s in SHAPES for n in NUMBERS.values()]
    elif category == "colors":
        out = [make_prompt(category, (s,), (c,)) for s in SHAPES for c in colors]
    elif category == "position":
        out = [make_prompt(category, (a, b), rel=r) for a in SHAPES for b in SHAPES if a != b for r in RELATIONS]
    elif category == "color_attr":
        out = [make_prompt(category, p, (c1, c2)) for p in pairs for c1 in colors for c2 in colors if c1 != c2]
    else:
        raise ValueError(f"unknown category {category!r}; expected one of {', '.join(CATEGORIES)}")
    return tuple(out)


# ---------------------------------------------------------------- parsing

_KNOWN = set(SHAPES) | set(PLURALS.values()) | set(COLORS) | set(NUMBERS) | {
    "a", "an", "photo", "of", "and", "left", "right", "above", "below"}


def _words(prompt: str) -> list[str]:
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    text = prompt.strip().lower().rstrip(".").strip()
    words = re.split(r"\s+", text) if text else []
    for w in words:
        if w not in _KNOWN:
            raise ValueError(f"unknown word {w!r} in prompt {prompt!r}")
    return words


def _phrase(words: list[str], i: int, prompt: str) -> tuple[tuple[int, str | None, str, bool], int]:
    """Parse ``(a|an|NUMBER) [COLOR] SHAPE`` at ``words[i]``; returns ((n, color, shape, counted), next)."""

    def expect(what: str) -> None:
        got = repr(words[i]) if i < len(words) else "the end"
        raise ValueError(f"expected {what} at word {i + 1} of prompt {prompt!r}, got {got}")

    if i >= len(words) or words[i] not in ("a", "an", *NUMBERS):
        expect("'a', 'an' or a number word")
    counted, n = words[i] in NUMBERS, NUMBERS.get(words[i], 1)
    i += 1
    color = None
    if i < len(words) and words[i] in COLORS:
        color, i = words[i], i + 1
    if i >= len(words):
        expect("a shape")
    word = words[i]
    singular = {p: s for s, p in PLURALS.items()}
    if n == 1 and word in SHAPES:
        return (n, color, word, counted), i + 1
    if n > 1 and word in singular:
        return (n, color, singular[word], counted), i + 1
    expect("a singular shape" if n == 1 else "a plural shape")
    raise AssertionError  # unreachable


def parse(prompt: str) -> Spec:
    """Parse a grammar prompt into a :class:`Spec`; a malformed prompt raises ``ValueError``.

    Accepts any case, repeated spaces, a trailing period, and 'a'/'an' interchangeably.
    """
    words = _words(prompt)
    if words[:3] != ["a", "photo", "of"]:
        raise ValueError(f"prompt must start with 'a photo of': {prompt!r}")
    (n1, c1, s1, counted1), i = _phrase(words, 3, prompt)
    if i == len(words):
        if counted1:
            if c1:
                raise ValueError(f"counting prompts take no colour: {prompt!r}")
            return Spec(prompt, "counting", (Count(s1, n1),))
        if c1:
            return Spec(prompt, "colors", (Exists(s1, c1),))
        return Spec(prompt, "single_object", (Exists(s1),))
    if counted1:
        raise ValueError(f"a counted phrase must end the prompt: {prompt!r}")
    rel = None
    if words[i] == "and":
        i += 1
    elif words[i] in ("above", "below"):
        rel, i = words[i], i + 1
    elif words[i] in ("left", "right") and i + 1 < len(words) and words[i + 1] == "of":
        rel, i = f"{words[i]} of", i + 2
    else:
        raise ValueError(f"expected 'and' or a relation at word {i + 1} of prompt {prompt!r}, got {words[i]!r}")
    (n2, c2, s2, counted2), j = _phrase(words, i, prompt)
    if j != len(words):
        raise ValueError(f"unexpected {words[j]!r} after the second object in prompt {prompt!r}")
    if counted2:
        raise ValueError(f"number words belong to counting prompts only: {prompt!r}")
    if s1 == s2:
        raise ValueError(f"the two objects must be different shapes: {prompt!r}")
    if rel is not None:
        if c1 or c2:
            raise ValueError(f"position prompts take no colours: {prompt!r}")
        return Spec(prompt, "position", (Exists(s1), Exists(s2), Relation(s1, rel, s2)))
    if bool(c1) != bool(c2):
        raise ValueError(f"colour both objects or neither: {prompt!r}")
    if c1:
        return Spec(prompt, "color_attr", (Exists(s1, c1), Exists(s2, c2)))
    return Spec(prompt, "two_object", (Exists(s1), Exists(s2)))


# ---------------------------------------------------------------- splits


def _hash01(text: str) -> float:
    return int.from_bytes(hashlib.sha256((_SPLIT_SALT + text).encode()).digest()[:8], "big") / 2**64


@cache
def _split_of_key() -> dict[str, str]:
    out: dict[str, str] = {}
    for cat in CATEGORIES:
        keys = sorted({parse(p).key for p in all_prompts(cat)}, key=_hash01)
        n_test = max(1, round(TEST_FRACTION * len(keys)))
        n_val = max(1, round(VAL_FRACTION * len(keys)))
        for j, k in enumerate(keys):
            out[k] = "test" if j < n_test else "val" if j < n_test + n_val else "train"
    return out


def split_of(prompt: str) -> str:
    """The split ('train', 'val' or 'test') a prompt's meaning belongs to."""
    return _split_of_key()[parse(prompt).key]


@cache
def split_prompts(split: str, category: str | None = None) -> tuple[str, ...]:
    """All prompts of one split (and category), in grammar order. Splits are disjoint in meaning."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return tuple(p for p in all_prompts(category) if split_of(p) == split)


def sample_prompts(split: str, n: int, seed: int = 0, categories: tuple[str, ...] = CATEGORIES) -> list[str]:
    """``n`` prompts of ``split``, categories in round robin (balanced), prompts drawn uniformly."""
    for c in categories:
        if c not in CATEGORIES:
            raise ValueError(f"unknown category {c!r}; expected one of {', '.join(CATEGORIES)}")
    rng = random.Random(f"{seed}-{split}")
    pools = {c: split_prompts(split, c) for c in categories}
    return [rng.choice(pools[categories[i % len(categories)]]) for i in range(n)]


def is_grammar_prompt(prompt: str) -> bool:
    """Whether ``prompt`` is a prompt of this grammar (so the verifier can judge images of it)."""
    try:
        parse(prompt)
        return True
    except ValueError:
        return False
