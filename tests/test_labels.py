"""LabelData: emg2qwerty's label semantics, pinned with hand-built keystrokes and prompts."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from emgkey import charset
from emgkey.labels import LabelData

T0 = 1_600_000_000.0


def ks(key: str, start: float) -> dict[str, Any]:
    return {"key": key, "start": T0 + start, "end": T0 + start + 0.08}


KEYSTROKES = [
    ks("h", 1.0),
    ks("Key.ctrl", 1.5),  # out of vocabulary: drops out
    ks("i", 2.0),
    ks("Key.space", 3.0),
    ks("Key.shift", 4.0),
    ks("A", 4.1),
    ks("Key.backspace", 5.0),
    ks("Key.enter", 6.0),
]


def test_known_label_ids_match_emg2qwerty() -> None:
    label = LabelData.from_str("aA0!")
    assert label.labels.tolist() == [0, 26, 52, 62]
    assert LabelData.from_keystroke("Key.backspace").labels.tolist() == [94]
    assert LabelData.from_keystroke("Key.enter").labels.tolist() == [95]
    assert LabelData.from_keystroke("Key.space").labels.tolist() == [96]
    assert LabelData.from_keystroke("Key.shift").labels.tolist() == [97]
    assert label.labels.dtype == np.int32


def test_from_keystrokes_drops_out_of_vocabulary_and_keeps_press_times() -> None:
    label = LabelData.from_keystrokes(KEYSTROKES)
    assert label.label_str == f"hi {charset.SHIFT}A{charset.BACKSPACE}{charset.ENTER}"
    assert label.timestamps is not None
    np.testing.assert_allclose(label.timestamps - T0, [1.0, 2.0, 3.0, 4.0, 4.1, 5.0, 6.0], atol=1e-6)


def test_from_keystrokes_window_is_closed_on_press_times() -> None:
    # Both ends inclusive, as emg2qwerty: a press exactly at start_t or end_t counts.
    label = LabelData.from_keystrokes(KEYSTROKES, start_t=T0 + 2.0, end_t=T0 + 4.0)
    assert label.label_str == f"i {charset.SHIFT}"
    just_inside = LabelData.from_keystrokes(KEYSTROKES, start_t=math.nextafter(T0 + 2.0, math.inf), end_t=T0 + 4.0)
    assert just_inside.label_str == f" {charset.SHIFT}"
    empty = LabelData.from_keystrokes(KEYSTROKES, start_t=T0 + 6.5)
    assert len(empty) == 0 and empty.timestamps is not None and len(empty.timestamps) == 0


def test_from_keystrokes_stops_at_first_press_after_window() -> None:
    # emg2qwerty breaks out of the scan; a (malformed) later key with an early time is not reached.
    out_of_order = [ks("a", 1.0), ks("b", 9.0), ks("c", 2.0)]
    assert LabelData.from_keystrokes(out_of_order, end_t=T0 + 5.0).label_str == "a"


def test_from_keystroke_forms() -> None:
    bare = LabelData.from_keystroke("x")
    assert bare.label_str == "x" and bare.timestamps is None
    stamped = LabelData.from_keystroke("x", timestamp=3.0)
    assert stamped.timestamps is not None and stamped.timestamps.tolist() == [3.0]
    from_dict = LabelData.from_keystroke(ks("y", 1.0))
    assert from_dict.timestamps is not None and from_dict.timestamps.tolist() == [T0 + 1.0]
    overridden = LabelData.from_keystroke(ks("y", 1.0), timestamp=7.0)
    assert overridden.timestamps is not None and overridden.timestamps.tolist() == [7.0]
    oov = LabelData.from_keystroke(ks("Key.alt", 1.0))
    assert oov.label_str == "" and oov.timestamps is not None and len(oov.timestamps) == 0


def test_from_prompts_newlines_and_empty_payloads() -> None:
    prompts: list[dict[str, Any]] = [
        {"start": T0 + 0.0, "end": T0 + 5.0, "payload": {"text": "it’s ok"}},
        {"start": T0 + 5.0, "end": T0 + 6.0, "payload": None},  # pause screen: no text, no ⏎
        {"start": T0 + 6.0, "end": T0 + 9.0, "payload": {"text": "done\n"}},  # already ends in a newline
    ]
    label = LabelData.from_prompts(prompts)
    assert label.label_str == f"it's ok{charset.ENTER}done{charset.ENTER}"
    assert label.timestamps is None
    assert str(label) == "it's ok\ndone\n"
    assert LabelData.from_prompts(prompts, enforce_newline=False).label_str == f"it's okdone{charset.ENTER}"
    # Window selection is by prompt start, both ends inclusive.
    assert LabelData.from_prompts(prompts, start_t=T0 + 5.0, end_t=T0 + 6.0).label_str == f"done{charset.ENTER}"
    assert LabelData.from_prompt("").label_str == charset.ENTER


def test_from_labels_and_blank() -> None:
    assert LabelData.from_labels([7, 4, 11, 11, 14]).label_str == "hello"
    with pytest.raises(ValueError, match="blank"):
        LabelData.from_labels([charset.BLANK])


def test_from_str_cleans_and_checks_timestamps() -> None:
    assert LabelData.from_str("naïve — ok\n").label_str == f"naive - ok{charset.ENTER}"
    with pytest.raises(ValueError, match="timestamps"):
        LabelData.from_str("ab", timestamps=[1.0])


def test_add_keeps_timestamps_only_when_both_have_them() -> None:
    a = LabelData.from_keystroke("a", timestamp=1.0)
    b = LabelData.from_keystroke("b", timestamp=2.0)
    both = a + b
    assert both.label_str == "ab" and both.timestamps is not None and both.timestamps.tolist() == [1.0, 2.0]
    assert (a + LabelData.from_str("b")).timestamps is None


def test_equality_is_by_text_and_instances_are_unhashable() -> None:
    assert LabelData.from_keystroke("a", timestamp=1.0) == LabelData.from_str("a")
    assert LabelData.from_str("a") != LabelData.from_str("b")
    assert LabelData.from_str("a") != "a"
    with pytest.raises(TypeError):
        hash(LabelData.from_str("a"))


def test_constructor_is_closed() -> None:
    with pytest.raises(TypeError, match="from_"):
        LabelData("abc")


def test_timestamps_must_be_monotonic() -> None:
    with pytest.raises(ValueError, match="monotonic"):
        LabelData.from_str("ab", timestamps=[2.0, 1.0])


key_ids = st.lists(st.integers(0, charset.NUM_KEYS - 1), max_size=40)


@given(key_ids)
def test_labels_round_trip(ids: list[int]) -> None:
    label = LabelData.from_labels(ids)
    assert label.labels.tolist() == ids
    assert LabelData.from_str(label.label_str) == label  # a canonical string is a fixed point of cleaning
    assert len(label) == len(ids)


@given(key_ids, key_ids)
def test_addition_concatenates(a: list[int], b: list[int]) -> None:
    assert (LabelData.from_labels(a) + LabelData.from_labels(b)).labels.tolist() == a + b


@given(
    st.lists(st.tuples(st.sampled_from(charset.KEYS), st.floats(0, 100)), max_size=30),
    st.floats(-1, 101),
)
def test_keystroke_windows_partition_the_session(events: list[tuple[str, float]], cut: float) -> None:
    strokes = [{"key": k, "start": t, "end": t + 0.1} for k, t in sorted(events, key=lambda e: e[1])]
    whole = LabelData.from_keystrokes(strokes)
    left = LabelData.from_keystrokes(strokes, end_t=cut)
    right = LabelData.from_keystrokes(strokes, start_t=math.nextafter(cut, math.inf))
    joined = left + right
    assert joined == whole
    assert joined.timestamps is not None and whole.timestamps is not None
    np.testing.assert_array_equal(joined.timestamps, whole.timestamps)
