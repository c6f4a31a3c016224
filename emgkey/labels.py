"""Ground-truth label sequences, with the semantics of emg2qwerty's ``LabelData``.

A ``LabelData`` is a canonical key string (one code point per key, see
``emgkey.charset``) plus, when the labels came from a keylogger, one key-press
time per character. It is built only through the ``from_*`` classmethods so
that every instance holds a cleaned string: keystrokes, prompts, integer labels
and free text all go through the same normalisation, and out-of-vocabulary keys
(``Key.ctrl``, ``Key.alt``, ...) drop out exactly as they do in emg2qwerty.

Window selection follows emg2qwerty to the letter, because training labels
depend on it: a keystroke belongs to ``[start_t, end_t]`` when its *press* time
lies in the closed interval, and the scan stops at the first press after
``end_t`` (keystrokes and prompts are stored in press order).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import InitVar, dataclass
from typing import Any

import numpy as np

from emgkey import charset

Keystroke = Mapping[str, Any]  # {"key": "a" | "Key.space" | ..., "start": float, "end": float}
Prompt = Mapping[str, Any]  # {"start": float, "end": float, "payload": {"text": str} | None}

# Handed to the constructor by the factories only; see ``LabelData.__post_init__``.
_FACTORY = object()


@dataclass(eq=False)
class LabelData:
    """A cleaned key string and, optionally, one press time (unix seconds) per key.

    Build with ``from_keystrokes``, ``from_keystroke``, ``from_prompts``,
    ``from_prompt``, ``from_labels`` or ``from_str``; calling the constructor
    directly raises ``TypeError`` (an uncleaned string would silently produce
    wrong label ids later).
    """

    label_str: str
    timestamps: np.ndarray | None = None  # (L,) float64, non-decreasing; None for prompt labels
    _factory: InitVar[object] = None

    __hash__ = None  # type: ignore[assignment]  # mutable and compared by value, so unhashable

    def __post_init__(self, _factory: object) -> None:
        if _factory is not _FACTORY:
            raise TypeError("build LabelData with a LabelData.from_* classmethod (e.g. LabelData.from_str)")
        if self.timestamps is not None:
            ts = np.asarray(self.timestamps, dtype=np.float64)  # (L,)
            if ts.ndim != 1 or len(ts) != len(self.label_str):
                raise ValueError(f"need one timestamp per label: got shape {ts.shape} for {len(self.label_str)} labels")
            if len(ts) > 1 and not (np.diff(ts) >= 0).all():
                raise ValueError("label timestamps are not monotonic (keystrokes must be in press order)")
            self.timestamps = ts

    @classmethod
    def _make(cls, label_str: str, timestamps: Sequence[float] | np.ndarray | None = None) -> LabelData:
        return cls(label_str, None if timestamps is None else np.asarray(timestamps, dtype=np.float64), _FACTORY)

    # ---- factories -------------------------------------------------------------------------------

    @classmethod
    def from_keystrokes(
        cls, keystrokes: Iterable[Keystroke], start_t: float = -math.inf, end_t: float = math.inf
    ) -> LabelData:
        """Keys pressed in ``[start_t, end_t]`` (closed), with their press times.

        Stops at the first press after ``end_t``: like emg2qwerty, this relies on
        keystrokes being in press order, which session files guarantee.
        """
        keys: list[str] = []
        times: list[float] = []
        for keystroke in keystrokes:
            start = float(keystroke["start"])
            if start > end_t:
                break
            if start >= start_t:
                one = cls.from_keystroke(keystroke)
                keys.append(one.label_str)
                times.extend([start] * len(one.label_str))
        return cls._make("".join(keys), times)

    @classmethod
    def from_keystroke(cls, keystroke: str | Keystroke, timestamp: float | None = None) -> LabelData:
        """One key, given as a pynput-style name or a keystroke dict (empty if out of vocabulary).

        A dict brings its press time unless ``timestamp`` overrides it; a bare
        key name has a timestamp only if one is given.
        """
        if isinstance(keystroke, str):
            key = keystroke
        else:
            key = keystroke["key"]
            timestamp = float(keystroke["start"]) if timestamp is None else timestamp
        assert isinstance(key, str), f"keystroke key must be a str, got {key!r}"
        cleaned = charset.clean_keys([key])
        if not cleaned:  # out of vocabulary, e.g. Key.ctrl
            return cls._make("", [])
        label_str = charset.keys_to_str(cleaned)
        return cls._make(label_str, None if timestamp is None else [timestamp] * len(label_str))

    @classmethod
    def from_prompts(
        cls,
        prompts: Iterable[Prompt],
        enforce_newline: bool = True,
        start_t: float = -math.inf,
        end_t: float = math.inf,
    ) -> LabelData:
        """Text of the prompts shown in ``[start_t, end_t]`` (by prompt start), without timestamps."""
        parts: list[str] = []
        for prompt in prompts:
            start = float(prompt["start"])
            if start > end_t:
                break
            if start >= start_t:
                parts.append(cls.from_prompt(prompt, enforce_newline=enforce_newline).label_str)
        return cls._make("".join(parts))

    @classmethod
    def from_prompt(cls, prompt: str | Prompt, enforce_newline: bool = True) -> LabelData:
        """One prompt's cleaned text; with ``enforce_newline`` it ends in ⏎ (the user pressed Enter).

        A prompt dict whose payload is None (a pause screen) yields an empty
        label, with no ⏎: nothing was shown, so nothing was typed.
        """
        if isinstance(prompt, str):
            text: str | None = prompt
        else:
            payload = prompt["payload"]
            text = None if payload is None else payload["text"]
        if text is None:
            return cls._make("")
        label_str = charset.clean_str(text)
        if enforce_newline and not label_str.endswith(charset.ENTER):
            label_str += charset.ENTER
        return cls._make(label_str)

    @classmethod
    def from_labels(cls, labels: Sequence[int] | np.ndarray, timestamps: Sequence[float] | None = None) -> LabelData:
        """From integer key labels (0..97); the CTC blank is not a key and is rejected."""
        return cls._make(charset.labels_to_str([int(x) for x in labels]), timestamps)

    @classmethod
    def from_str(cls, text: str, timestamps: Sequence[float] | None = None) -> LabelData:
        """From free text, cleaned as prompts are (substitutions, ASCII folding, unknowns dropped).

        Timestamps, if given, must match the *cleaned* length.
        """
        label_str = charset.clean_str(text)
        if timestamps is not None and len(timestamps) != len(label_str):
            raise ValueError(
                f"{len(timestamps)} timestamps for {len(label_str)} characters after cleaning {text!r} -> {label_str!r}"
            )
        return cls._make(label_str, timestamps)

    # ---- views and algebra -----------------------------------------------------------------------

    @property
    def labels(self) -> np.ndarray:
        """Integer key ids, (L,) int32, as CTC targets."""
        return np.asarray(charset.str_to_labels(self.label_str), dtype=np.int32)  # (L,)

    def __len__(self) -> int:
        return len(self.label_str)

    def __eq__(self, other: object) -> bool:
        # As in emg2qwerty, equality is about the text; timestamps are annotations.
        if not isinstance(other, LabelData):
            return NotImplemented
        return self.label_str == other.label_str

    def __add__(self, other: LabelData) -> LabelData:
        """Concatenation; timestamps survive only if both sides have them."""
        if not isinstance(other, LabelData):
            return NotImplemented
        if self.timestamps is not None and other.timestamps is not None:
            return LabelData._make(self.label_str + other.label_str, np.append(self.timestamps, other.timestamps))
        return LabelData._make(self.label_str + other.label_str)

    def __str__(self) -> str:
        return charset.to_display(self.label_str)
