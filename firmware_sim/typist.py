"""A simulated typist: prompt texts in, a timeline of key presses and releases out.

The session follows emg2qwerty's protocol: a prompt (a sentence) is shown, the
user reads it, types it and presses Enter, then the next prompt appears. The
timeline is what a keylogger would record: one ``KeyEvent`` per physical key
press (Shift included), in press order, with the geometry the physiology needs
to know which muscles moved.

Timing model (all times in seconds from the start of the session):
- inter-key intervals (IKI, press to press) are log-normal around the user's
  median, lengthened after a space (word boundary), for symbols, for a second
  key on the same finger, and shortened when the hands alternate;
- hold times (press to release) are log-normal; a key can be pressed before the
  previous one is released (rollover), as fast typists do;
- Shift is pressed with the other hand's pinky shortly before a shifted key and
  released after it; consecutive shifted keys on the same side share one press;
- typos strike a neighbouring key; the typist notices at once or after one or
  two more keys, pauses, presses Backspace as often as needed and retypes, so
  the text that remains is exactly the prompt.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from emgkey import charset
from emgkey.firmware_sim.keyboard import (
    BACKSPACE,
    ENTER,
    SHIFT,
    SPACE,
    Hand,
    KeyGeometry,
    base_key,
    char_to_key,
    is_typeable,
    key_geometry,
    needs_shift,
    neighbours,
    shift_hand_for,
)

# Floors that keep the timeline physically possible (seconds).
MIN_IKI_S = 0.03  # no two presses closer than this
MIN_SAME_KEY_GAP_S = 0.012  # a key must be up this long before it is pressed again
MIN_HOLD_S = 0.025
SHIFT_ORDER_GAP_S = 0.015  # Shift goes down after the previous key's press, so label order is typing order


@dataclass(frozen=True)
class TypingStyle:
    """How one person types. Defaults are a mid-range typist (see docs/simulator.md for sources)."""

    iki_median_s: float = 0.24  # median press-to-press interval inside a word
    iki_sigma: float = 0.40  # log-normal sigma of the IKI
    hold_median_s: float = 0.10  # median press-to-release time
    hold_sigma: float = 0.25
    typo_rate: float = 0.03  # probability that a letter is mistyped
    late_notice_prob: float = 0.3  # fraction of typos noticed only after one or two more keys
    word_pause: float = 1.35  # IKI factor for the key after a space
    alternation_factor: float = 0.7  # IKI factor when the previous key was on the other hand
    same_finger_factor: float = 1.3  # IKI factor for a different key on the same finger
    symbol_factor: float = 1.6  # IKI factor for digits and punctuation
    hesitation_prob: float = 0.04  # chance of a longer pause at a word boundary
    hesitation_s: float = 0.8  # median length of that pause
    correction_delay_s: float = 0.35  # median extra pause before the first Backspace of a correction
    shift_lead_s: float = 0.09  # Shift goes down this long before the shifted key
    shift_lag_s: float = 0.05  # and comes up this long after it is released
    space_hand: Hand = "right"  # thumb used for the space bar
    prompt_reaction_s: float = 1.0  # median time from a prompt appearing to its first key
    inter_prompt_s: float = 1.2  # median pause after Enter before the next prompt appears

    def __post_init__(self) -> None:
        assert 0.05 <= self.iki_median_s <= 2.0, f"iki_median_s {self.iki_median_s} outside human range"
        assert 0.01 <= self.hold_median_s <= 0.5, f"hold_median_s {self.hold_median_s} outside human range"
        assert self.iki_sigma >= 0 and self.hold_sigma >= 0, "log-normal sigmas must be >= 0"
        assert 0.0 <= self.typo_rate < 0.5, f"typo_rate {self.typo_rate} must be in [0, 0.5)"
        assert 0.0 <= self.late_notice_prob <= 1.0, "late_notice_prob is a probability"
        assert self.space_hand in ("left", "right"), f"space_hand {self.space_hand!r}"


@dataclass(frozen=True)
class KeyEvent:
    """One physical key press as a keylogger sees it (times in seconds from session start)."""

    key: str  # emg2qwerty keystroke name: "a", "A", "!", "Key.space", "Key.shift", ...
    press: float
    release: float
    geometry: KeyGeometry  # the physical key and finger (tells left Shift from right Shift)


@dataclass(frozen=True)
class PromptSpan:
    start: float  # prompt shown
    end: float  # prompt finished (shortly after Enter is released)
    text: str  # the prompt as shown (no trailing newline, as emg2qwerty stores it)


@dataclass(frozen=True)
class TypingTimeline:
    """Everything the user did in one session, in seconds from the session start."""

    events: tuple[KeyEvent, ...]  # press order
    prompts: tuple[PromptSpan, ...]  # start order
    duration_s: float

    def keystrokes(self, t0: float) -> list[dict[str, Any]]:
        """emg2qwerty keystroke dicts with unix times (``t0`` = unix time of the session start)."""
        return [{"key": e.key, "start": t0 + e.press, "end": t0 + e.release} for e in self.events]

    def prompt_dicts(self, t0: float) -> list[dict[str, Any]]:
        return [{"start": t0 + p.start, "end": t0 + p.end, "payload": {"text": p.text}} for p in self.prompts]

    def typed_text(self) -> str:
        """The key string the keylogger saw (⇧ and ⌫ included), emgkey.charset's unicode form."""
        return charset.keys_to_str([e.key for e in self.events])


def clean_prompt(text: str) -> str:
    """A prompt reduced to what the keyboard can type: charset-normalised, single-spaced, stripped."""
    cleaned = charset.clean_str(text)
    kept = "".join(c for c in cleaned if c == " " or (c.isprintable() and c.isascii() and is_typeable(c)))
    return " ".join(kept.split())


def _lognormal(rng: np.random.Generator, median: float, sigma: float) -> float:
    return float(median * math.exp(sigma * rng.standard_normal()))


def _plan_strokes(text: str, style: TypingStyle, rng: np.random.Generator) -> list[tuple[str, bool]]:
    """Keys to press for one prompt, typos and corrections included: (keystroke name, starts a correction)."""
    chars = [char_to_key(c) for c in text] + [ENTER]
    plan: list[tuple[str, bool]] = []
    i = 0
    while i < len(chars):
        key = chars[i]
        near = neighbours(key)
        if near and rng.random() < style.typo_rate:
            wrong = near[int(rng.integers(len(near)))]
            # A late notice types up to two more correct keys first (never the final Enter).
            n_more = 0
            if rng.random() < style.late_notice_prob:
                n_more = min(int(rng.integers(1, 3)), len(chars) - 2 - i)
            more = chars[i + 1 : i + 1 + n_more]
            plan.append((wrong, False))
            plan += [(k, False) for k in more]
            plan += [(BACKSPACE, j == 0) for j in range(1 + n_more)]
            plan.append((key, False))
            plan += [(k, False) for k in more]
            i += 1 + n_more
        else:
            plan.append((key, False))
            i += 1
    return plan


def _type_prompt(text: str, shown: float, style: TypingStyle, rng: np.random.Generator) -> list[KeyEvent]:
    """Time one prompt's key presses (Enter included), starting after the user has read it."""
    plan = _plan_strokes(text, style, rng)
    t = shown + _lognormal(rng, style.prompt_reaction_s, 0.3)
    presses: list[tuple[str, float, float, KeyGeometry]] = []
    prev: KeyGeometry | None = None
    prev_key = ""
    for n, (key, starts_correction) in enumerate(plan):
        geom = key_geometry(key, space_hand=style.space_hand)
        if n > 0:
            iki = _lognormal(rng, style.iki_median_s, style.iki_sigma)
            assert prev is not None, "prev is set after the first key"
            if prev_key == SPACE:
                iki *= style.word_pause
                if rng.random() < style.hesitation_prob:
                    iki += _lognormal(rng, style.hesitation_s, 0.4)
            if geom.finger != "thumb" and prev.finger != "thumb" and geom.hand != prev.hand:
                iki *= style.alternation_factor
            elif geom.finger_id == prev.finger_id and geom.key != prev.key:
                iki *= style.same_finger_factor
            if len(key) == 1 and not key.isalpha():
                iki *= style.symbol_factor
            if key == ENTER:
                iki *= 1.3  # end of sentence: a check of the text and a long pinky reach
            if needs_shift(key) and not needs_shift(prev_key):
                iki += 0.5 * style.shift_lead_s  # part of the Shift reach is not overlapped
            if starts_correction:
                iki += _lognormal(rng, style.correction_delay_s, 0.35)
            iki = max(iki, MIN_IKI_S)
            if base_key(key) == base_key(prev_key):
                # The same key twice: it must come up and go down again.
                iki = max(iki, presses[-1][2] - presses[-1][1] + MIN_SAME_KEY_GAP_S + MIN_HOLD_S)
            t += iki
        hold = _lognormal(rng, style.hold_median_s, style.hold_sigma)
        if key == SPACE:
            hold *= 0.9  # thumb taps on the space bar are a little shorter
        presses.append((key, t, t + max(hold, MIN_HOLD_S), geom))
        prev, prev_key = geom, key

    # Rollover is fine, but a key cannot be pressed again before it came up.
    for i in range(len(presses) - 1):
        key, p, r, g = presses[i]
        nxt = presses[i + 1]
        if base_key(key) == base_key(nxt[0]) and r > nxt[1] - MIN_SAME_KEY_GAP_S:
            presses[i] = (key, p, max(p + MIN_HOLD_S, nxt[1] - MIN_SAME_KEY_GAP_S), g)

    events = [KeyEvent(k, p, r, g) for k, p, r, g in presses]
    events += _shift_events(presses, style, rng)
    events.sort(key=lambda e: e.press)
    return events


def _shift_events(
    presses: list[tuple[str, float, float, KeyGeometry]], style: TypingStyle, rng: np.random.Generator
) -> list[KeyEvent]:
    """One Shift press per run of consecutive shifted keys that use the same Shift key."""
    runs: list[tuple[Hand, int, int]] = []  # (shift hand, first index, last index)
    for i, (key, _, _, _) in enumerate(presses):
        if not needs_shift(key):
            continue
        hand = shift_hand_for(key)
        if runs and runs[-1][0] == hand and runs[-1][2] == i - 1:
            runs[-1] = (hand, runs[-1][1], i)
        else:
            runs.append((hand, i, i))
    out: list[KeyEvent] = []
    last_release: dict[Hand, float] = {}
    for hand, first, last in runs:
        press = presses[first][1] - _lognormal(rng, style.shift_lead_s, 0.25)
        if first > 0:
            press = max(press, presses[first - 1][1] + SHIFT_ORDER_GAP_S)
        press = min(press, presses[first][1] - 0.005)
        if hand in last_release:
            press = max(press, last_release[hand] + MIN_SAME_KEY_GAP_S)
        release = presses[last][2] + _lognormal(rng, style.shift_lag_s, 0.3)
        if last + 1 < len(presses):
            # Let go before the same Shift is needed again for a later run.
            nxt = next((j for j in range(last + 1, len(presses)) if needs_shift(presses[j][0])), None)
            if nxt is not None and shift_hand_for(presses[nxt][0]) == hand:
                release = min(release, presses[nxt][1] - _lognormal(rng, style.shift_lead_s, 0.25) - 0.02)
        release = max(release, presses[last][1] + 0.01)
        last_release[hand] = release
        out.append(KeyEvent(SHIFT, press, release, key_geometry(SHIFT, shift_hand=hand)))
    return out


def type_prompts(
    texts: Iterable[str],
    style: TypingStyle,
    rng: np.random.Generator,
    duration_s: float,
    start_rest_s: float = 2.0,
    end_rest_s: float = 1.0,
) -> TypingTimeline:
    """Type prompts one after another until the session (``duration_s``) is full.

    Every prompt is typed in full; the last one that would overrun the session
    is shortened to the words that fit (as if a shorter prompt had been shown),
    so the recorded prompt text always equals what was typed. ``texts`` may be
    an endless iterator; it is consumed only as far as needed. Rest periods at
    the start and end of the session, and between prompts, are EMG at rest.
    """
    assert duration_s > 0, f"duration_s must be positive, got {duration_s}"
    events: list[KeyEvent] = []
    prompts: list[PromptSpan] = []
    t = start_rest_s
    for raw in texts:
        text = clean_prompt(raw)
        if not text:
            continue
        prompt_seed = int(rng.integers(2**63))
        words = text.split(" ")
        typed: list[KeyEvent] = []
        shown_text = ""
        for n_words in range(len(words), 0, -1):
            candidate = " ".join(words[:n_words])
            # Every attempt replays the same random stream, so shortening keeps the typing of the kept words.
            attempt = _type_prompt(candidate, t, style, np.random.default_rng(prompt_seed))
            if max(e.release for e in attempt) + end_rest_s <= duration_s:
                typed, shown_text = attempt, candidate
                break
        if not typed:
            break
        # An earlier key on a previous prompt may still be up in the air: keep press order global.
        assert not events or typed[0].press >= events[-1].press, "prompts must not overlap"
        end = max(e.release for e in typed) + 0.05
        events += typed
        prompts.append(PromptSpan(t, end, shown_text))
        if shown_text != text:
            break
        t = end + _lognormal(rng, style.inter_prompt_s, 0.3)
    return TypingTimeline(tuple(events), tuple(prompts), float(duration_s))
