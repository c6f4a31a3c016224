"""The keyboard as the hands see it: which finger presses each key, and how far it reaches.

A US QWERTY layout with standard touch-typing finger assignment. Every key the
simulated typist can press maps to a ``KeyGeometry``: the hand and finger that
press it and the reach from that finger's home-row key, expressed in the
hand's own frame (``row_offset`` > 0 is away from the palm, towards the number
row; ``lateral_offset`` > 0 is towards the thumb side). The physiology turns
that reach into a movement: flexion to press, finger extension for upper rows,
extra curl for the bottom row, radial or ulnar deviation for sideways reaches.

Geometry is in key units (one key pitch, ~19 mm) on a standard staggered board:
each row is offset by the width of its leading modifier (Tab 1.5, Caps 1.75,
Shift 2.25). Shifted characters (``A``, ``!``) share the geometry of their base
key and are pressed with Shift held by the pinky of the *other* hand; space is a
thumb key (right thumb by default, users may prefer the left); Enter, Backspace
and the right Shift are right-pinky reaches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import Literal

Hand = Literal["left", "right"]
Finger = Literal["thumb", "index", "middle", "ring", "pinky"]

HANDS: tuple[Hand, ...] = ("left", "right")
FINGERS: tuple[Finger, ...] = ("thumb", "index", "middle", "ring", "pinky")

SPACE = "Key.space"
ENTER = "Key.enter"
BACKSPACE = "Key.backspace"
SHIFT = "Key.shift"

# Movement components of a key press, in the order of ``KeyGeometry.movement()``.
MOVEMENTS: tuple[str, ...] = ("press", "extend", "curl", "radial", "ulnar", "reach")


@dataclass(frozen=True)
class KeyGeometry:
    """Where a key is, relative to the finger that presses it.

    ``key`` is the base key's keystroke name (``"a"``, ``"1"``, ``"Key.shift"``);
    ``x``/``y`` are board coordinates of its centre in key units (``y`` grows
    towards the user: 0 = number row, 3 = bottom letter row, 4 = space bar).
    """

    key: str
    hand: Hand
    finger: Finger
    row_offset: float  # + = away from the palm (upper rows), - = towards it
    lateral_offset: float  # + = towards the thumb (radial), - = towards the little finger (ulnar)
    x: float
    y: float

    @property
    def finger_id(self) -> int:
        """0..9: left thumb..pinky then right thumb..pinky (a flat index for per-finger tables)."""
        return HANDS.index(self.hand) * len(FINGERS) + FINGERS.index(self.finger)

    @property
    def reach_distance(self) -> float:
        return math.hypot(self.row_offset, self.lateral_offset)

    def movement(self) -> tuple[float, ...]:
        """Movement components, ``MOVEMENTS`` order, in key units (press is always 1).

        ``reach`` is the part of the travel beyond one key pitch: long reaches
        move the hand (wrist) as well as the finger.
        """
        return (
            1.0,
            max(self.row_offset, 0.0),
            max(-self.row_offset, 0.0),
            max(self.lateral_offset, 0.0),
            max(-self.lateral_offset, 0.0),
            max(self.reach_distance - 1.2, 0.0),
        )


# Rows: (y, x of the first key's centre, unshifted keys, shifted keys, finger per key).
# The finger letters are hand+finger: L/R then i(ndex) m(iddle) r(ing) p(inky).
_ROWS: tuple[tuple[int, float, str, str, tuple[str, ...]], ...] = (
    (
        0,
        0.5,
        "`1234567890-=",
        "~!@#$%^&*()_+",
        ("Lp", "Lp", "Lr", "Lm", "Li", "Li", "Ri", "Ri", "Rm", "Rr", "Rp", "Rp", "Rp"),
    ),
    (
        1,
        2.0,
        "qwertyuiop[]\\",
        "QWERTYUIOP{}|",
        ("Lp", "Lr", "Lm", "Li", "Li", "Ri", "Ri", "Rm", "Rr", "Rp", "Rp", "Rp", "Rp"),
    ),
    (2, 2.25, "asdfghjkl;'", 'ASDFGHJKL:"', ("Lp", "Lr", "Lm", "Li", "Li", "Ri", "Ri", "Rm", "Rr", "Rp", "Rp")),
    (3, 2.75, "zxcvbnm,./", "ZXCVBNM<>?", ("Lp", "Lr", "Lm", "Li", "Li", "Ri", "Ri", "Rm", "Rr", "Rp")),
)
_HOME_ROW_Y = 2
# Home-row key of each finger (the touch-typing rest position).
_HOME_KEYS: dict[tuple[Hand, Finger], str] = {
    ("left", "pinky"): "a",
    ("left", "ring"): "s",
    ("left", "middle"): "d",
    ("left", "index"): "f",
    ("right", "index"): "j",
    ("right", "middle"): "k",
    ("right", "ring"): "l",
    ("right", "pinky"): ";",
}
_FINGER_CODE: dict[str, Finger] = {"i": "index", "m": "middle", "r": "ring", "p": "pinky"}
_HAND_CODE: dict[str, Hand] = {"L": "left", "R": "right"}

# Modifier keys: (hand, x, y). Thumbs rest on the space bar, so space has no reach.
_SPACE_X = {"left": 5.75, "right": 8.25}
_MODIFIERS: dict[tuple[str, Hand], tuple[float, float]] = {
    (ENTER, "right"): (13.6, 2.0),
    (BACKSPACE, "right"): (14.0, 0.0),
    (SHIFT, "left"): (1.1, 3.0),
    (SHIFT, "right"): (13.6, 3.0),
}


def _key_positions() -> tuple[dict[str, tuple[float, float, Hand, Finger]], dict[str, str]]:
    pos: dict[str, tuple[float, float, Hand, Finger]] = {}
    shifted: dict[str, str] = {}
    for y, x0, keys, shifted_keys, fingers in _ROWS:
        assert len(keys) == len(shifted_keys) == len(fingers), f"row {y} is inconsistent"
        for i, (k, sk, code) in enumerate(zip(keys, shifted_keys, fingers)):
            pos[k] = (x0 + i, float(y), _HAND_CODE[code[0]], _FINGER_CODE[code[1]])
            shifted[sk] = k
    return pos, shifted


_POSITIONS, SHIFTED_TO_BASE = _key_positions()


def _lateral(hand: Hand, x: float, home_x: float) -> float:
    # The hand's own frame: the thumb is to the right of the left hand and to the left of the right hand.
    return x - home_x if hand == "left" else home_x - x


def _build_layout() -> dict[tuple[str, Hand | None], KeyGeometry]:
    layout: dict[tuple[str, Hand | None], KeyGeometry] = {}
    home_x = {hf: _POSITIONS[k][0] for hf, k in _HOME_KEYS.items()}
    for key, (x, y, hand, finger) in _POSITIONS.items():
        layout[(key, None)] = KeyGeometry(
            key, hand, finger, float(_HOME_ROW_Y - y), _lateral(hand, x, home_x[(hand, finger)]), x, y
        )
    for (key, hand), (x, y) in _MODIFIERS.items():
        layout[(key, hand)] = KeyGeometry(
            key, hand, "pinky", float(_HOME_ROW_Y - y), _lateral(hand, x, home_x[(hand, "pinky")]), x, y
        )
    for hand in HANDS:
        layout[(SPACE, hand)] = KeyGeometry(SPACE, hand, "thumb", 0.0, 0.0, _SPACE_X[hand], 4.0)
    return layout


_LAYOUT = _build_layout()

# Every keystroke name the typist can produce for a character (printable keys and the modifiers).
PRINTABLE_BASE_KEYS: tuple[str, ...] = tuple(_POSITIONS)


def base_key(key: str) -> str:
    """The physical key of a keystroke name: ``"A"`` -> ``"a"``, ``"!"`` -> ``"1"``, modifiers unchanged."""
    return SHIFTED_TO_BASE.get(key, key)


def needs_shift(key: str) -> bool:
    """True for characters typed with Shift held (capitals and upper-row symbols)."""
    return key in SHIFTED_TO_BASE


def key_geometry(key: str, *, shift_hand: Hand | None = None, space_hand: Hand = "right") -> KeyGeometry:
    """Geometry of a keystroke name (``"a"``, ``"A"``, ``"Key.space"``, ``"Key.shift"``, ...).

    ``Key.shift`` needs ``shift_hand`` (which Shift key); ``Key.space`` takes
    ``space_hand`` (which thumb). Unknown keys raise ``KeyError``.
    """
    k = base_key(key)
    if k == SHIFT:
        assert shift_hand is not None, "Key.shift is on both sides: say which with shift_hand"
        return _LAYOUT[(SHIFT, shift_hand)]
    if k == SPACE:
        return _LAYOUT[(SPACE, space_hand)]
    if k in (ENTER, BACKSPACE):
        return _LAYOUT[(k, "right")]
    try:
        return _LAYOUT[(k, None)]
    except KeyError:
        raise KeyError(f"no key {key!r} on the simulated keyboard") from None


def shift_hand_for(key: str) -> Hand:
    """Touch typists hold the Shift key of the hand that does not press the character."""
    return "right" if key_geometry(key).hand == "left" else "left"


def all_geometries() -> tuple[KeyGeometry, ...]:
    """Every distinct physical key (both Shift keys, both thumbs on space)."""
    return tuple(_LAYOUT.values())


def char_to_key(c: str) -> str:
    """Keystroke name for one character of a prompt: ``" "`` -> ``Key.space``, ``"⏎"``/``"\\n"`` -> ``Key.enter``."""
    if c == " ":
        return SPACE
    if c in ("\u23ce", "\n", "\r"):
        return ENTER
    if c == "\u232b":
        return BACKSPACE
    if c in _POSITIONS or c in SHIFTED_TO_BASE:
        return c
    raise KeyError(f"character {c!r} has no key on the simulated keyboard")


def is_typeable(c: str) -> bool:
    try:
        char_to_key(c)
    except KeyError:
        return False
    return True


@cache
def neighbours(key: str, max_distance: float = 1.3) -> tuple[str, ...]:
    """Letter keys adjacent to a letter key (typo candidates), same case as ``key``; () otherwise.

    Adjacent means centres within ``max_distance`` key pitches on the staggered
    board, which gives the usual 3-6 neighbours of a letter.
    """
    if not (len(key) == 1 and key.isalpha()):
        return ()
    k = key.lower()
    x, y = _POSITIONS[k][:2]
    out = []
    for other, (ox, oy, _, _) in _POSITIONS.items():
        if other != k and other.isalpha() and math.hypot(ox - x, oy - y) <= max_distance:
            out.append(other.upper() if key.isupper() else other)
    return tuple(out)
