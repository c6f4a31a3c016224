"""CER breakdown and greedy CTC decoding, from hand-made cases and properties."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from emgkey import charset
from emgkey.decoding import CTCGreedyDecoder, greedy_decode
from emgkey.metrics import EditCounts, edit_counts, substitution_pairs


def _reference_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def test_hand_made_edit_counts():
    assert edit_counts("kitten", "kitten") == EditCounts(0, 0, 0, 6)
    c = edit_counts("sitting", "kitten")  # k->s, e->i, +g
    assert (c.substitutions, c.insertions, c.deletions) == (2, 1, 0)
    c = edit_counts("hllo", "hello")
    assert (c.substitutions, c.insertions, c.deletions) == (0, 0, 1)
    assert edit_counts("", "abc").cer == 100.0
    assert edit_counts("ab", "").insertions == 2


def test_hand_made_substitution_pairs():
    assert substitution_pairs("sitting", "kitten") == [("k", "s"), ("e", "i")]
    assert substitution_pairs("tesr", "test") == [("t", "r")]
    assert substitution_pairs("hllo", "hello") == []  # a deletion is not a confusion
    assert substitution_pairs("", "abc") == [] and substitution_pairs("abc", "") == []


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet="abc ", max_size=20), st.text(alphabet="abc ", max_size=20))
def test_substitution_pairs_are_the_counted_substitutions(pred, target):
    pairs = substitution_pairs(pred, target)
    assert len(pairs) == edit_counts(pred, target).substitutions
    assert all(a != b and a in target and b in pred for a, b in pairs)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="abc⌫ ", max_size=25), st.text(alphabet="abc⌫ ", max_size=25))
def test_distance_matches_reference_and_breakdown_adds_up(pred, target):
    c = edit_counts(pred, target)
    assert c.errors == _reference_distance(target, pred)
    assert c.target_len == len(target)
    # Every alignment operation accounts for one character of one side.
    assert c.substitutions + c.deletions <= len(target)
    assert len(target) - c.deletions + c.insertions == len(pred)


def _one_hot(labels: list[int]) -> np.ndarray:
    e = np.full((len(labels), charset.NUM_CLASSES), -10.0, dtype=np.float32)
    e[np.arange(len(labels)), labels] = 0.0
    return e


def test_greedy_collapses_repeats_and_blanks():
    a, b, blank = charset.key_to_label("a"), charset.key_to_label("b"), charset.BLANK
    assert greedy_decode(_one_hot([a, a, blank, a, b, b, blank])) == [a, a, b]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, charset.BLANK), min_size=1, max_size=60),
    st.lists(st.integers(1, 7), min_size=1, max_size=10),
)
def test_greedy_streaming_equals_offline(frames, chunk_sizes):
    e = _one_hot(frames)
    dec = CTCGreedyDecoder()
    pos, i = 0, 0
    while pos < len(e):
        n = chunk_sizes[i % len(chunk_sizes)]
        dec.decode(e[pos : pos + n])
        pos, i = pos + n, i + 1
    assert dec.labels == greedy_decode(e)
