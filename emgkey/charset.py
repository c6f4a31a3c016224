"""The emg2qwerty character set: 98 keys + CTC blank = 99 classes.

Label ids, key names and unicode code points are identical to emg2qwerty's
``CharacterSet`` so that models and label files move between the two projects
unchanged (``tests/test_charset.py`` pins every id).

Representations (same as emg2qwerty):
- *key*: a printable character (``"a"``, ``"!"``) or a pynput-style modifier
  name (``"Key.space"``, ``"Key.backspace"``, ``"Key.enter"``, ``"Key.shift"``).
- *unicode string*: one code point per key; modifiers use ⌫ (U+232B),
  ⏎ (U+23CE), space and ⇧ (U+21E7).
- *label*: the key's index in ``KEYS``; the blank is ``len(KEYS) == 98``.
"""

from __future__ import annotations

import string
import unicodedata
from collections.abc import Sequence
from functools import lru_cache

BACKSPACE = "\u232b"  # ⌫
ENTER = "\u23ce"  # ⏎
SHIFT = "\u21e7"  # ⇧

# Order matters: it defines the label ids. letters, digits, punctuation, then modifiers.
_PRINTABLE_KEYS: tuple[str, ...] = tuple(string.ascii_letters + string.digits + string.punctuation)
_MODIFIER_KEYS: tuple[tuple[str, int], ...] = (
    ("Key.backspace", ord(BACKSPACE)),
    ("Key.enter", ord(ENTER)),
    ("Key.space", ord(" ")),
    ("Key.shift", ord(SHIFT)),
)

KEYS: tuple[str, ...] = _PRINTABLE_KEYS + tuple(k for k, _ in _MODIFIER_KEYS)
UNICODES: tuple[int, ...] = tuple(ord(c) for c in _PRINTABLE_KEYS) + tuple(u for _, u in _MODIFIER_KEYS)

NUM_KEYS = len(KEYS)  # 98
BLANK = NUM_KEYS  # CTC blank / null class = 98
NUM_CLASSES = NUM_KEYS + 1  # 99

# Unicode characters that stand for keys (emg2qwerty's UNICHAR_TO_KEY).
UNICHAR_TO_KEY: dict[str, str] = {
    " ": "Key.space",
    "\r": "Key.enter",
    "\u21e5": "Key.tab",
    "\u21e7": "Key.shift",
    "\u2303": "Key.ctrl",
    "\u2318": "Key.cmd",
    "\u232b": "Key.backspace",
    "\u23ce": "Key.enter",
    "\u2191": "Key.shift_l",
    "\u21e1": "Key.shift_r",
}

# Unsupported characters and their supported stand-ins (emg2qwerty's CHAR_SUBSTITUTIONS).
CHAR_SUBSTITUTIONS: dict[str, str] = {
    "\n": ENTER,
    "\r": ENTER,
    "\b": BACKSPACE,
    "\u2019": "'",  # ’
    "\u201c": '"',  # “
    "\u201d": '"',  # ”
    "\u2014": "-",  # —
}

_KEY_TO_LABEL: dict[str, int] = {k: i for i, k in enumerate(KEYS)}
_UNICODE_TO_LABEL: dict[int, int] = {u: i for i, u in enumerate(UNICODES)}
_UNICODE_SET = frozenset(UNICODES)


def key_to_label(key: str) -> int:
    return _KEY_TO_LABEL[key]


def label_to_key(label: int) -> str:
    return KEYS[label]


def key_to_unicode(key: str) -> int:
    return UNICODES[_KEY_TO_LABEL[key]]


def unicode_to_key(code: int) -> str:
    return KEYS[_UNICODE_TO_LABEL[code]]


def _ascii_fold(c: str) -> str:
    """Best-effort single-character ASCII stand-in for a spurious character.

    emg2qwerty uses ``unidecode`` here; we use NFKD decomposition, which agrees
    for the accented Latin letters that appear in English prompt text
    (é -> e, ñ -> n) and leaves anything it cannot fold untouched.
    """
    if c in _EXTRA_FOLDS:
        return _EXTRA_FOLDS[c]
    decomposed = unicodedata.normalize("NFKD", c)
    # Accept only "ASCII letter/digit + combining accents" (é, ñ, Å). Spacing marks such
    # as ¨ decompose to a space plus an accent and must not become a space key.
    base, marks = decomposed[:1], decomposed[1:]
    if base.isascii() and base.isalnum() and all(unicodedata.combining(ch) for ch in marks):
        return base
    return c


# Characters NFKD does not fold but unidecode maps to one ASCII character.
_EXTRA_FOLDS: dict[str, str] = {
    "\u2013": "-",  # en dash
    "\u2212": "-",  # minus sign
    "\u2018": "'",  # left single quote
    "\u00b4": "'",  # acute accent
    "\u00a0": " ",  # no-break space
    "\u00d7": "x",  # multiplication sign
    "\u2010": "-",  # hyphen
    "\u2011": "-",  # non-breaking hyphen
    "\u2012": "-",  # figure dash
    "\u201a": ",",  # low single quote
    "\u201b": "'",  # reversed single quote
    "\u201f": '"',  # reversed double quote
    "\u2032": "'",  # prime
    "\u2033": '"',  # double prime
    "\u2039": "<",  # single angle quote
    "\u203a": ">",  # single angle quote
    "\u00a1": "!",  # inverted exclamation
    "\u00bf": "?",  # inverted question
    "\u00f8": "o",
    "\u00d8": "O",
    "\u0142": "l",
    "\u0141": "L",
    "\u0111": "d",
    "\u0110": "D",
    "\u00f0": "d",
    "\u00d0": "D",
    "\u0131": "i",
}


def _is_known(c: str) -> bool:
    return ord(c) in _UNICODE_SET or c in UNICHAR_TO_KEY


def normalize_str(text: str) -> str:
    """Apply substitutions and ASCII folding; does not drop unknown characters."""
    for src, dst in CHAR_SUBSTITUTIONS.items():
        text = text.replace(src, dst)
    return "".join(c if _is_known(c) else (_ascii_fold(c) if _is_known(_ascii_fold(c)) else c) for c in text)


def _normalize_key(key: str) -> str:
    if key in _KEY_TO_LABEL:
        return key
    if len(key) == 1:
        key = normalize_str(key)
        key = UNICHAR_TO_KEY.get(key, key)
    return key


def clean_keys(keys: Sequence[str]) -> list[str]:
    """Normalize keys in any representation and drop out-of-vocabulary ones."""
    out = []
    for key in keys:
        k = _normalize_key(key)
        if k in _KEY_TO_LABEL:
            out.append(k)
    return out


def str_to_keys(text: str) -> list[str]:
    return clean_keys(list(normalize_str(text)))


def keys_to_str(keys: Sequence[str]) -> str:
    return normalize_str("".join(chr(key_to_unicode(k)) for k in keys))


def clean_str(text: str) -> str:
    """Canonical string: every character is one of the 98 keys' code points."""
    return keys_to_str(str_to_keys(text))


def str_to_labels(text: str) -> list[int]:
    return [_KEY_TO_LABEL[k] for k in str_to_keys(text)]


def labels_to_str(labels: Sequence[int]) -> str:
    for lab in labels:
        if not 0 <= int(lab) < NUM_KEYS:
            raise ValueError(f"label {lab} is not a key label (0..{NUM_KEYS - 1}); the blank is {BLANK}")
    return keys_to_str([KEYS[int(lab)] for lab in labels])


def to_display(text: str) -> str:
    """Human-readable form: ⏎ becomes a newline (as emg2qwerty's LabelData.__str__)."""
    return text.replace(ENTER, "\n")


def apply_backspaces(text: str) -> str:
    """The text a reader sees after ⌫ deletes the preceding character (⇧ is dropped)."""
    out: list[str] = []
    for c in text:
        if c == BACKSPACE:
            if out:
                out.pop()
        elif c != SHIFT:
            out.append(c)
    return "".join(out)


@lru_cache(maxsize=1)
def charset_summary() -> str:
    return keys_to_str(KEYS)
