"""Pin ``emgkey.charset`` to emg2qwerty's ``CharacterSet``.

Label ids, key names and code points must match emg2qwerty exactly, or label
files and trained models stop moving between the two projects. The expected
values are written out literally here (not derived from ``string``), so a
change on either side shows up as a failing test rather than a silent shift.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emgkey import charset

LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
DIGITS = "0123456789"
PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"  # Python's string.punctuation, in its order
MODIFIERS = ("Key.backspace", "Key.enter", "Key.space", "Key.shift")

EXPECTED_KEYS = (*LETTERS, *DIGITS, *PUNCTUATION, *MODIFIERS)
EXPECTED_UNICODES = (*(ord(c) for c in LETTERS + DIGITS + PUNCTUATION), 9003, 9166, 32, 8679)

# Every character a canonical string may contain: one per key.
CHARSET_CHARS = "".join(chr(u) for u in EXPECTED_UNICODES)
charset_text = st.text(alphabet=CHARSET_CHARS, max_size=200)


# --- ids and code points -------------------------------------------------------------------


def test_sizes() -> None:
    assert charset.NUM_KEYS == 98
    assert charset.BLANK == 98
    assert charset.NUM_CLASSES == 99


def test_all_98_keys_in_emg2qwerty_order() -> None:
    assert charset.KEYS == EXPECTED_KEYS
    assert [charset.key_to_label(k) for k in EXPECTED_KEYS] == list(range(98))
    assert [charset.label_to_key(i) for i in range(98)] == list(EXPECTED_KEYS)


@pytest.mark.parametrize(
    ("key", "label"),
    [
        ("a", 0),
        ("z", 25),
        ("A", 26),
        ("Z", 51),
        ("0", 52),
        ("9", 61),
        ("!", 62),
        ('"', 63),
        ("'", 68),
        (",", 73),
        ("-", 74),
        (".", 75),
        ("?", 82),
        ("~", 93),
        ("Key.backspace", 94),
        ("Key.enter", 95),
        ("Key.space", 96),
        ("Key.shift", 97),
    ],
)
def test_landmark_labels(key: str, label: int) -> None:
    assert charset.key_to_label(key) == label
    assert charset.label_to_key(label) == key


def test_unicode_code_points() -> None:
    assert charset.UNICODES == EXPECTED_UNICODES
    assert (charset.BACKSPACE, charset.ENTER, charset.SHIFT) == ("⌫", "⏎", "⇧")
    assert charset.key_to_unicode("Key.backspace") == 9003
    assert charset.key_to_unicode("Key.enter") == 9166
    assert charset.key_to_unicode("Key.space") == 32
    assert charset.key_to_unicode("Key.shift") == 8679
    for key, code in zip(EXPECTED_KEYS, EXPECTED_UNICODES):
        assert charset.key_to_unicode(key) == code
        assert charset.unicode_to_key(code) == key


def test_unichar_to_key_table() -> None:
    assert charset.UNICHAR_TO_KEY == {
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


def test_charset_summary_lists_every_key_once() -> None:
    assert charset.charset_summary() == CHARSET_CHARS
    assert len(set(charset.charset_summary())) == 98


# --- substitutions and cleaning -----------------------------------------------------------------


def test_substitution_table() -> None:
    assert charset.CHAR_SUBSTITUTIONS == {
        "\n": "⏎",
        "\r": "⏎",
        "\b": "⌫",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u2014": "-",
    }


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("a\nb", "a⏎b"),
        ("a\rb", "a⏎b"),
        ("a\r\nb", "a⏎⏎b"),
        ("ab\bc", "ab⌫c"),
        ("it\u2019s", "it's"),
        ("\u201cquoted\u201d", '"quoted"'),
        ("em\u2014dash", "em-dash"),
    ],
)
def test_substitutions(raw: str, clean: str) -> None:
    assert charset.clean_str(raw) == clean


def test_str_to_keys_matches_emg2qwerty_docstring_example() -> None:
    assert charset.str_to_keys("the\x08⏎\n") == ["t", "h", "e", "Key.backspace", "Key.enter", "Key.enter"]


def test_clean_keys_accepts_every_representation() -> None:
    keys = ["a", "Key.space", " ", "\r", "⏎", "\n", "⌫", "⇧", "Key.shift", "Key.tab", "⇥", "Key.ctrl"]
    assert charset.clean_keys(keys) == [
        "a",
        "Key.space",
        "Key.space",
        "Key.enter",
        "Key.enter",
        "Key.enter",
        "Key.backspace",
        "Key.shift",
        "Key.shift",
    ]


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("tab\there", "tabhere"),  # \t is not a key
        ("日本 ok", " ok"),
        ("a\u21e5b", "ab"),  # ⇥ -> Key.tab, which is not in the charset
        ("a\u2303\u2318b", "ab"),  # ctrl, cmd
        ("a\u2191\u21e1b", "ab"),  # shift_l / shift_r are not Key.shift
        ("emoji \U0001f600!", "emoji !"),
        ("\x00\x7f", ""),
    ],
)
def test_clean_str_drops_unsupported(raw: str, clean: str) -> None:
    assert charset.clean_str(raw) == clean


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        # Folds that agree with emg2qwerty's unidecode.
        ("café", "cafe"),
        ("señor", "senor"),
        ("naïve Ångström", "naive Angstrom"),
        ("1\u20132", "1-2"),  # en dash
        ("3\u22121", "3-1"),  # minus sign
        ("\u2018hi'", "'hi'"),
        ("a\u00b4", "a'"),
        ("no\u00a0break", "no break"),
        ("2\u00d73", "2x3"),
    ],
)
def test_ascii_folding(raw: str, clean: str) -> None:
    assert charset.clean_str(raw) == clean


def test_latin1_letters_fold_like_unidecode() -> None:
    """Accented Latin-1 letters fold to their base letter, as unidecode does.

    Ð ð Ø ø are the exceptions: NFKD does not decompose them (unidecode gives
    D d O o), so emgkey drops them; see test_spacing_marks_do_not_become_spaces.
    """
    expected = dict(
        zip(
            "ÀÁÂÃÄÅÇÈÉÊËÌÍÎÏÑÒÓÔÕÖÙÚÛÜÝàáâãäåçèéêëìíîïñòóôõöùúûüýÿ",
            "AAAAAACEEEEIIIINOOOOOUUUUYaaaaaaceeeeiiiinooooouuuuyy",
        )
    )
    for src, dst in expected.items():
        assert charset.clean_str(src) == dst, src


@pytest.mark.parametrize("mark", ["\u00a8", "\u00af", "\u00b8", "\u203e", "\u2017"])
def test_spacing_marks_do_not_become_spaces(mark: str) -> None:
    assert " " not in charset.clean_str(f"a{mark}b")


@given(st.text(max_size=100))
def test_clean_str_is_canonical_and_idempotent(text: str) -> None:
    cleaned = charset.clean_str(text)
    assert set(cleaned) <= set(CHARSET_CHARS)
    assert charset.clean_str(cleaned) == cleaned


# --- round trips ---------------------------------------------------------------------------------


@given(charset_text)
def test_str_labels_round_trip(text: str) -> None:
    labels = charset.str_to_labels(text)
    assert len(labels) == len(text)
    assert all(0 <= lab < charset.NUM_KEYS for lab in labels)
    assert charset.labels_to_str(labels) == text


@given(charset_text)
def test_str_keys_round_trip(text: str) -> None:
    assert charset.clean_str(text) == text
    assert charset.keys_to_str(charset.str_to_keys(text)) == text


@given(st.lists(st.integers(min_value=0, max_value=97), max_size=200))
def test_labels_str_round_trip(labels: list[int]) -> None:
    assert charset.str_to_labels(charset.labels_to_str(labels)) == labels


@pytest.mark.parametrize("bad", [98, -1, 99, 1000])
def test_labels_to_str_rejects_non_key_labels(bad: int) -> None:
    with pytest.raises(ValueError, match="not a key label"):
        charset.labels_to_str([0, bad])


def test_to_display() -> None:
    assert charset.to_display("hi⏎there") == "hi\nthere"


# --- backspaces ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "seen"),
    [
        ("abc⌫d", "abd"),
        ("a⌫⌫b", "b"),
        ("⌫⌫", ""),
        ("⇧hello", "hello"),
        ("ab⇧⌫c", "ac"),
        ("line⏎⌫x", "linex"),
    ],
)
def test_apply_backspaces(typed: str, seen: str) -> None:
    assert charset.apply_backspaces(typed) == seen


@given(st.text(alphabet=CHARSET_CHARS.replace("⌫", "").replace("⇧", ""), max_size=100))
def test_apply_backspaces_is_identity_without_editing_keys(text: str) -> None:
    assert charset.apply_backspaces(text) == text


@given(charset_text, st.sampled_from(CHARSET_CHARS.replace("⌫", "").replace("⇧", "")))
def test_typo_then_backspace_cancels(text: str, typo: str) -> None:
    assert charset.apply_backspaces(text + typo + "⌫") == charset.apply_backspaces(text)
