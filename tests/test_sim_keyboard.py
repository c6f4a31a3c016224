"""The simulated keyboard: every key the charset knows has a finger and a reach."""

from __future__ import annotations

import string

import pytest

from emgkey import charset
from emgkey.firmware_sim import keyboard as kb


def test_every_charset_key_has_a_geometry():
    for key in charset.KEYS:
        if key == kb.SHIFT:
            for hand in kb.HANDS:
                assert kb.key_geometry(key, shift_hand=hand).finger == "pinky"
        else:
            g = kb.key_geometry(key)
            assert g.hand in kb.HANDS and g.finger in kb.FINGERS, key


@pytest.mark.parametrize(
    ("key", "hand", "finger"),
    [
        ("a", "left", "pinky"),
        ("s", "left", "ring"),
        ("e", "left", "middle"),
        ("f", "left", "index"),
        ("g", "left", "index"),
        ("h", "right", "index"),
        ("k", "right", "middle"),
        ("o", "right", "ring"),
        ("p", "right", "pinky"),
        ("/", "right", "pinky"),
        ("Key.enter", "right", "pinky"),
        ("Key.backspace", "right", "pinky"),
        ("Key.space", "right", "thumb"),
    ],
)
def test_touch_typing_fingers(key, hand, finger):
    g = kb.key_geometry(key)
    assert (g.hand, g.finger) == (hand, finger)


def test_reach_offsets_in_hand_frame():
    for home in "asdfjkl;":
        g = kb.key_geometry(home)
        assert g.row_offset == 0 and g.lateral_offset == 0, home
    assert kb.key_geometry("e").row_offset == 1
    assert kb.key_geometry("c").row_offset == -1
    assert kb.key_geometry("3").row_offset == 2
    # Index-finger inner column: towards the thumb on both hands.
    assert kb.key_geometry("g").lateral_offset > 0
    assert kb.key_geometry("h").lateral_offset > 0
    # Pinky reaches to Enter / Backspace go towards the little-finger side.
    assert kb.key_geometry("Key.enter").lateral_offset < -2
    assert kb.key_geometry("Key.backspace").row_offset == 2


def test_movement_components():
    press, extend, curl = kb.key_geometry("e").movement()[:3]
    assert press == 1 and extend == 1 and curl == 0
    assert kb.key_geometry("c").movement()[2] == 1  # curl for the bottom row
    assert kb.key_geometry("Key.backspace").movement()[5] > 0  # long reach moves the hand
    assert kb.key_geometry("d").movement() == (1.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def test_shift_uses_the_other_hand():
    assert kb.shift_hand_for("A") == "right"
    assert kb.shift_hand_for("J") == "left"
    assert kb.shift_hand_for("!") == "right"  # '1' is a left-pinky key
    assert kb.shift_hand_for("?") == "left"
    assert kb.needs_shift("A") and kb.needs_shift("{") and not kb.needs_shift("a") and not kb.needs_shift("[")
    assert kb.base_key("A") == "a" and kb.base_key("%") == "5" and kb.base_key("Key.space") == "Key.space"
    with pytest.raises(AssertionError, match="shift_hand"):
        kb.key_geometry("Key.shift")


def test_shifted_keys_share_base_geometry():
    for shifted, base in kb.SHIFTED_TO_BASE.items():
        g, b = kb.key_geometry(shifted), kb.key_geometry(base)
        assert (g.hand, g.finger, g.row_offset, g.lateral_offset) == (b.hand, b.finger, b.row_offset, b.lateral_offset)


def test_neighbours_are_adjacent_letters_of_the_same_case():
    near = kb.neighbours("a")
    assert {"q", "s", "z"} <= set(near) and "d" not in near and "a" not in near
    assert all(c.isupper() for c in kb.neighbours("G"))
    assert kb.neighbours("1") == () and kb.neighbours("Key.space") == ()
    for c in string.ascii_lowercase:
        assert 2 <= len(kb.neighbours(c)) <= 7, c


def test_char_to_key():
    assert kb.char_to_key(" ") == "Key.space"
    assert kb.char_to_key(charset.ENTER) == "Key.enter"
    assert kb.char_to_key("x") == "x"
    assert kb.is_typeable("~") and not kb.is_typeable("é")
    with pytest.raises(KeyError):
        kb.char_to_key("\t")
