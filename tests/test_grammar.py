"""The prompt grammar: coverage of GenEval's categories, parsing, canonical keys, splits."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vgen.world.grammar import (
    SPLITS,
    Count,
    Exists,
    Relation,
    all_prompts,
    make_prompt,
    parse,
    sample_prompts,
    split_of,
    split_prompts,
)
from vgen.world.vocab import CATEGORIES, COLORS, NUMBERS, RELATIONS, SHAPES


def test_vocabulary_is_large_enough():
    assert len(SHAPES) >= 3 and len(COLORS) >= 6
    assert sorted(NUMBERS.values()) == [1, 2, 3, 4]
    assert set(RELATIONS) == {"left of", "right of", "above", "below"}


def test_every_prompt_parses_to_its_category():
    counts = {c: len(all_prompts(c)) for c in CATEGORIES}
    n_s, n_c = len(SHAPES), len(COLORS)
    pairs = n_s * (n_s - 1) // 2
    assert counts == {"single_object": n_s, "two_object": pairs, "counting": 4 * n_s, "colors": n_s * n_c,
                      "position": 4 * n_s * (n_s - 1), "color_attr": pairs * n_c * (n_c - 1)}
    for cat in CATEGORIES:
        for p in all_prompts(cat):
            assert parse(p).category == cat, p
    assert len(set(all_prompts())) == len(all_prompts())


def test_parse_gives_the_constraints():
    assert parse("a photo of three triangles").constraints == (Count("triangle", 3),)
    assert parse("A photo of  an orange square.").constraints == (Exists("square", "orange"),)
    assert parse("a photo of a circle below a diamond").constraints == (
        Exists("circle"), Exists("diamond"), Relation("circle", "below", "diamond"))
    assert parse("a photo of a red circle and a blue square").constraints == (
        Exists("circle", "red"), Exists("square", "blue"))


def test_make_prompt_inverts_parse():
    for p in all_prompts():
        s = parse(p)
        c = s.constraints
        if s.category == "counting":
            again = make_prompt("counting", (c[0].shape,), n=c[0].n)
        elif s.category == "position":
            again = make_prompt("position", (c[2].a, c[2].b), rel=c[2].rel)
        else:
            again = make_prompt(s.category, tuple(x.shape for x in c), tuple(x.color for x in c))
        assert again == p


def test_rephrasings_share_a_key_and_distinct_meanings_do_not():
    a = parse("a photo of a circle left of a square")
    assert a.key == parse("a photo of a square right of a circle").key
    assert a.key != parse("a photo of a circle right of a square").key
    assert parse("a photo of a red circle and a blue square").key == \
        parse("a photo of a blue square and a red circle").key
    keys = [parse(p).key for p in all_prompts() if parse(p).category != "position"]
    assert len(set(keys)) == len(keys)  # only position has rephrasings in the grammar
    pos = [parse(p).key for p in all_prompts("position")]
    assert len(set(pos)) == len(pos) // 2


def test_splits_are_disjoint_in_meaning_and_cover_every_category():
    keys = {s: {parse(p).key for p in split_prompts(s)} for s in SPLITS}
    assert not keys["train"] & keys["val"] and not keys["train"] & keys["test"] and not keys["val"] & keys["test"]
    assert sum(len(split_prompts(s)) for s in SPLITS) == len(all_prompts())
    for cat in CATEGORIES:
        sizes = [len(split_prompts(s, cat)) for s in SPLITS]
        assert all(n >= 1 for n in sizes), (cat, sizes)
        assert sizes[0] > sizes[2] or cat == "single_object", (cat, sizes)
    for p in split_prompts("test"):
        assert split_of(p) == "test"


def test_splits_are_fixed():
    """Split membership is part of the benchmark; it comes from sha256, not Python's hash."""
    assert split_prompts("test", "single_object") == ("a photo of a diamond",)
    assert split_prompts("test", "two_object") == ("a photo of a square and a triangle",)
    assert len(split_prompts("test")) == 56


def test_sample_prompts_is_balanced_and_deterministic():
    ps = sample_prompts("val", 600, seed=3)
    assert ps == sample_prompts("val", 600, seed=3) and ps != sample_prompts("val", 600, seed=4)
    cats = [parse(p).category for p in ps]
    assert all(cats.count(c) == 100 for c in CATEGORIES)
    assert all(split_of(p) == "val" for p in ps)
    with pytest.raises(ValueError, match="unknown category 'colours'"):
        sample_prompts("val", 5, categories=("colours",))


@pytest.mark.parametrize("prompt, needle", [
    ("a photo of a hexagon", "unknown word 'hexagon'"),
    ("a photo of a crimson circle", "unknown word 'crimson'"),
    ("a picture of a circle", "unknown word 'picture'"),
    ("a photo of five circles", "unknown word 'five'"),
    ("a photo of a circle next to a square", "unknown word 'next'"),
    ("photo of a circle", "must start with 'a photo of'"),
    ("a photo of a circles", "expected a singular shape"),
    ("a photo of two circle", "expected a plural shape"),
    ("a photo of a red", "expected a shape"),
    ("a photo of a circle and a circle", "different shapes"),
    ("a photo of two red circles", "counting prompts take no colour"),
    ("a photo of a red circle left of a square", "position prompts take no colours"),
    ("a photo of a red circle and a square", "colour both objects or neither"),
    ("a photo of a circle and a square and a diamond", "unexpected 'and'"),
    ("", "must start with 'a photo of'"),
])
def test_malformed_prompts_raise_a_clear_value_error(prompt, needle):
    with pytest.raises(ValueError) as e:
        parse(prompt)
    assert needle in str(e.value) and "\n" not in str(e.value)


_words = st.sampled_from(["a", "an", "photo", "of", "and", "left", "right", "above", "below", *SHAPES,
                          *[s + "s" for s in SHAPES], *COLORS, *NUMBERS])


@settings(max_examples=300, deadline=None)
@given(st.lists(_words, max_size=9), st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=8),
       st.integers(0, 9))
def test_parser_only_ever_raises_value_error(words, junk, at):
    try:
        parse(" ".join(["a", "photo", "of", *words]))
    except ValueError:
        pass
    bad = junk.strip().lower().rstrip(".")
    sentence = ["a", "photo", "of", *words]
    sentence.insert(min(at, len(sentence)), junk)
    if bad and " " not in bad and bad not in {w.lower() for w in _KNOWN_WORDS}:
        with pytest.raises(ValueError, match="unknown word"):
            parse(" ".join(sentence))


_KNOWN_WORDS = {"a", "an", "photo", "of", "and", "left", "right", "above", "below", *SHAPES,
                *[s + "s" for s in SHAPES], *COLORS, *NUMBERS}
