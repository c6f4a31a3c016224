"""Prefix beam search: exact on small cases, LM fixes greedy errors, backspace-aware LM state, online == offline."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emgkey import charset
from emgkey.decoding import greedy_decode
from emgkey.edge_runtime.beam import BeamConfig, CTCBeamDecoder, beam_decode
from emgkey.edge_runtime.lm import ArpaLM, LMBuildConfig, build_ngram_model

V = charset.NUM_CLASSES
BLANK = charset.BLANK
BKSP = charset.key_to_label("Key.backspace")
SHIFT = charset.key_to_label("Key.shift")
L = charset.str_to_labels


def _lm() -> ArpaLM:
    corpus = ["the cat sat on the mat", "the hat is there", "then the cat ate", "that is the thing"] * 5
    return ArpaLM(build_ngram_model(corpus, LMBuildConfig(order=4, extra_chars="gqz")))


def _peaky(seq: list[int | dict[int, float]], floor: float = 1e-4) -> np.ndarray:
    """One frame per item: a label id (prob 1 - floor mass) or {label: prob}; the rest shares ``floor``."""
    rows = []
    for item in seq:
        probs = {item: 1.0} if isinstance(item, int) else dict(item)
        row = np.full(V, floor / V)
        for lab, p in probs.items():
            row[lab] = p
        rows.append(np.log(row / row.sum()))
    return np.array(rows)


def _exhaustive(num_classes: int, blank: int) -> BeamConfig:
    return BeamConfig(
        beam_size=10_000,
        max_labels_per_frame=num_classes,
        label_threshold=1e9,
        beam_threshold=1e9,
        lm_weight=0.0,
        insertion_bonus=0.0,
        blank=blank,
        num_classes=num_classes,
    )


def test_without_pruning_scores_are_exact_prefix_probabilities():
    rng = np.random.default_rng(0)
    C, blank, T = 4, 3, 5
    em = np.log(rng.dirichlet(np.ones(C), size=T))  # (T, C)
    brute: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(C), repeat=T):
        collapsed = [k for k, _ in itertools.groupby(path) if k != blank]
        p = math.exp(sum(em[t, k] for t, k in enumerate(path)))
        brute[tuple(collapsed)] = brute.get(tuple(collapsed), 0.0) + p
    dec = CTCBeamDecoder(_exhaustive(C, blank))
    dec.decode(em, finish=True)
    got = {tuple(labels): math.exp(score) for labels, score in dec.nbest(10_000)}
    assert set(got) == set(brute)
    for prefix, p in brute.items():
        assert got[prefix] == pytest.approx(p, rel=1e-9), prefix
    assert tuple(dec.labels) == max(brute.items(), key=lambda kv: kv[1])[0]


def test_beam_beats_greedy_by_summing_paths():
    a = L("a")[0]
    em = _peaky([{a: 0.4, BLANK: 0.6}, {a: 0.4, BLANK: 0.6}], floor=0.0 + 1e-9)
    assert greedy_decode(em) == []  # best single path: blank, blank (0.36)
    assert beam_decode(em, BeamConfig(lm_weight=0.0, insertion_bonus=0.0)) == [a]  # P("a") = 0.64


def test_lm_fixes_what_greedy_gets_wrong():
    t, h, g, e = L("thge")
    em = _peaky([t, BLANK, {g: 0.55, h: 0.45 - 1e-4}, BLANK, e, BLANK])
    assert charset.labels_to_str(greedy_decode(em)) == "tge"
    no_lm = beam_decode(em, BeamConfig(lm_weight=0.0, insertion_bonus=0.0))
    assert charset.labels_to_str(no_lm) == "tge"
    with_lm = beam_decode(em, BeamConfig(), _lm())
    assert charset.labels_to_str(with_lm) == "the"


def test_backspace_keeps_the_label_but_the_lm_follows_the_edited_text():
    lm = _lm()
    c, z, a, t = L("czat")
    typo = _peaky([c, BLANK, z, BLANK, BKSP, BLANK, a, BLANK, t])
    clean = _peaky([c, BLANK, a, BLANK, t])
    d1, d2 = CTCBeamDecoder(BeamConfig(), lm), CTCBeamDecoder(BeamConfig(), lm)
    assert d1.decode(typo) == [c, z, BKSP, a, t]  # the keys as typed, uncorrected
    assert d2.decode(clean) == [c, a, t]
    assert d1.lm_context() == d2.lm_context() == "cat"
    # Same LM state and the same LM score (+ bonuses): the typo and its correction cost the LM nothing.
    assert d1.best.lm.state == d2.best.lm.state
    assert d1.best.lm.score == pytest.approx(d2.best.lm.score, abs=1e-12)
    # Right after the backspace, the context is the text with the last character removed.
    d3 = CTCBeamDecoder(BeamConfig(), lm)
    d3.decode(_peaky([c, BLANK, z, BLANK, BKSP]))
    assert d3.lm_context() == "c"
    assert d3.best.lm.state == lm.score(lm.begin_state(), "c")[1]
    # Backspace on empty text stays at the start of the sentence.
    d4 = CTCBeamDecoder(BeamConfig(), lm)
    d4.decode(_peaky([BKSP, BLANK, BKSP]))
    assert d4.labels == [BKSP, BKSP] and d4.lm_context() == "" and d4.best.lm.state == lm.begin_state()


def test_shift_is_transparent_to_the_lm():
    lm = _lm()
    a, b = L("ab")
    d1, d2 = CTCBeamDecoder(BeamConfig(), lm), CTCBeamDecoder(BeamConfig(), lm)
    d1.decode(_peaky([a, BLANK, SHIFT, BLANK, b]))
    d2.decode(_peaky([a, BLANK, b]))
    assert d1.labels == [a, SHIFT, b] and d1.lm_context() == "ab"
    assert d1.best.lm.score == pytest.approx(d2.best.lm.score)
    d3 = CTCBeamDecoder(BeamConfig(), lm)
    d3.decode(_peaky([a, BLANK, b, BLANK, SHIFT, BLANK, BKSP]))  # ⌫ after ⇧ deletes the b, as apply_backspaces
    assert d3.lm_context() == "a" == charset.apply_backspaces(charset.labels_to_str(d3.labels))


def test_timestamps_are_label_onsets():
    a, b = L("ab")
    em = _peaky([BLANK, a, a, BLANK, b, BLANK, b])
    dec = CTCBeamDecoder(BeamConfig(lm_weight=0, insertion_bonus=0))
    dec.decode(em, timestamps=np.arange(7) * 0.01 + 1.0)
    assert dec.labels == [a, b, b]
    assert dec.timestamps == pytest.approx([1.01, 1.04, 1.06])


def test_reset_and_finish():
    lm = _lm()
    dec = CTCBeamDecoder(BeamConfig(), lm)
    t, h, e = L("the")
    dec.decode(_peaky([t, BLANK, h, BLANK, e]), finish=True)
    assert dec.text == "the"
    before = [(list(x), s) for x, s in dec.nbest(3)]
    dec.decode(np.zeros((0, V)), finish=True)  # finishing again changes nothing
    assert [(list(x), s) for x, s in dec.nbest(3)] == before
    dec.reset()
    assert dec.labels == [] and dec.lm_context() == "" and dec.frames == 0


def _random_emissions(rng: np.random.Generator, T: int) -> np.ndarray:
    """Peaky CTC-like emissions over a few likely keys, with ambiguity."""
    keys = [*L("theca s"), BKSP]
    rows = []
    for _ in range(T):
        logits = rng.normal(0.0, 1.0, V) - 6.0
        logits[BLANK] += rng.uniform(4, 9)
        for k in rng.choice(keys, size=2, replace=False):
            logits[k] += rng.uniform(0, 9)
        rows.append(logits - np.log(np.exp(logits).sum()))
    return np.array(rows)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), T=st.integers(1, 40), cuts=st.lists(st.integers(0, 40), max_size=5))
def test_streaming_equals_offline(seed, T, cuts):
    lm = _LM
    em = _random_emissions(np.random.default_rng(seed), T)
    ts = np.arange(T) * 0.008
    cfg = BeamConfig(beam_size=8)
    offline = CTCBeamDecoder(cfg, lm)
    offline.decode(em, ts, finish=True)
    online = CTCBeamDecoder(cfg, lm)
    bounds = [0, *sorted(min(c, T) for c in cuts), T]
    for lo, hi in itertools.pairwise(bounds):
        online.decode(em[lo:hi], ts[lo:hi])
    online.decode(em[:0], ts[:0], finish=True)
    assert online.labels == offline.labels
    assert online.timestamps == offline.timestamps
    assert online.nbest(8) == offline.nbest(8)


_LM = _lm()


def test_pruning_keeps_the_beam_bounded():
    rng = np.random.default_rng(3)
    dec = CTCBeamDecoder(BeamConfig(beam_size=4), _LM)
    dec.decode(_random_emissions(rng, 200))
    assert 1 <= len(dec.beam) <= 4
