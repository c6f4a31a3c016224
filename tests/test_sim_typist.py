"""The simulated typist: a valid keylogger timeline whose corrected text is exactly the prompt."""

from __future__ import annotations

import itertools
import string
from dataclasses import replace

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from emgkey import charset
from emgkey.firmware_sim.keyboard import needs_shift
from emgkey.firmware_sim.typist import TypingStyle, clean_prompt, type_prompts

PROMPTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Hello World! It's 5 o'clock in the USA, said Mr. O'Brien.",
    "pack my box with five dozen liquor jugs",
)


def _timeline(style: TypingStyle | None = None, seed: int = 0, duration_s: float = 60.0, prompts=PROMPTS):
    return type_prompts(iter(list(prompts) * 20), style or TypingStyle(), np.random.default_rng(seed), duration_s)


def _final_texts(tl) -> list[str]:
    """The text left on screen for each prompt (⏎ terminates each)."""
    text = charset.apply_backspaces(tl.typed_text())
    return text.split(charset.ENTER)[:-1]


def test_corrected_text_is_the_prompt():
    tl = _timeline(TypingStyle(typo_rate=0.15, late_notice_prob=0.5), duration_s=180.0)
    assert len(tl.prompts) >= 4
    assert _final_texts(tl) == [p.text for p in tl.prompts]
    assert [p.text for p in tl.prompts[:3]] == [clean_prompt(p) for p in PROMPTS]
    assert any(e.key == "Key.backspace" for e in tl.events), "a 15% typo rate must produce corrections"


@settings(max_examples=40, deadline=None)
@given(
    text=st.text(alphabet=string.ascii_letters + string.digits + string.punctuation + "  ", min_size=1, max_size=40),
    seed=st.integers(0, 2**32 - 1),
    typo=st.floats(0.0, 0.4),
)
def test_any_text_round_trips(text, seed, typo):
    tl = _timeline(TypingStyle(typo_rate=typo, late_notice_prob=0.5), seed=seed, duration_s=120.0, prompts=[text])
    cleaned = clean_prompt(text)
    if not cleaned:
        assert tl.events == ()
        return
    assert _final_texts(tl)[0] == tl.prompts[0].text
    assert tl.prompts[0].text == cleaned or cleaned.startswith(tl.prompts[0].text)


def test_timeline_is_a_valid_keylogger_record():
    tl = _timeline(TypingStyle(typo_rate=0.05))
    ks = tl.keystrokes(t0=1000.0)
    starts = [k["start"] for k in ks]
    assert starts == sorted(starts)
    assert all(k["end"] > k["start"] for k in ks), "every hold must be positive"
    assert all(k["key"] in charset.KEYS for k in ks)
    assert all(1000.0 <= k["start"] and k["end"] <= 1000.0 + tl.duration_s for k in ks)
    prompts = tl.prompt_dicts(t0=1000.0)
    for a, b in itertools.pairwise(prompts):
        assert a["start"] < a["end"] <= b["start"]
    for p in prompts:
        assert isinstance(p["payload"]["text"], str) and not p["payload"]["text"].endswith(charset.ENTER)
    # The same physical key is never pressed again before it came up.
    by_key: dict[str, float] = {}
    for e in tl.events:
        phys = (e.geometry.key, e.geometry.hand)
        assert e.press >= by_key.get(str(phys), -1.0), f"{e.key} pressed while still down"
        by_key[str(phys)] = e.release


def test_shift_wraps_shifted_keys_on_the_other_hand():
    tl = _timeline()
    shifts = [e for e in tl.events if e.key == "Key.shift"]
    shifted = [e for e in tl.events if needs_shift(e.key)]
    assert shifted and shifts
    for e in shifted:
        holding = [s for s in shifts if s.press < e.press and s.release > e.press]
        assert holding, f"{e.key} at {e.press:.3f} typed without Shift held"
        assert any(s.geometry.hand != e.geometry.hand for s in holding), "Shift is the other hand's pinky"
    # Shift comes first in label order, right before its key.
    keys = [e.key for e in tl.events]
    for i, k in enumerate(keys):
        if needs_shift(k) and (i == 0 or not needs_shift(keys[i - 1])):
            assert keys[i - 1] == "Key.shift"


def test_enter_ends_every_prompt():
    tl = _timeline()
    enters = [e for e in tl.events if e.key == "Key.enter"]
    assert len(enters) == len(tl.prompts)
    for p, e in zip(tl.prompts, enters):
        assert p.start < e.press < p.end


def test_timing_follows_the_style():
    fast = _timeline(TypingStyle(iki_median_s=0.15, typo_rate=0.0), duration_s=120.0)
    slow = _timeline(TypingStyle(iki_median_s=0.35, typo_rate=0.0), duration_s=120.0)

    def ikis(tl):
        out = []
        for p in tl.prompts:
            presses = [e.press for e in tl.events if e.key != "Key.shift" and p.start <= e.press <= p.end]
            out += np.diff(presses).tolist()
        return np.asarray(out)

    assert 0.1 < np.median(ikis(fast)) < 0.25 < np.median(ikis(slow)) < 0.6
    holds = np.array([e.release - e.press for e in fast.events if e.key != "Key.shift"])
    assert 0.07 < np.median(holds) < 0.13
    # Fast typists press the next key before releasing the last one (rollover) now and then.
    non_shift = [e for e in fast.events if e.key != "Key.shift"]
    overlaps = sum(b.press < a.release for a, b in itertools.pairwise(non_shift))
    assert overlaps > 0


def test_same_seed_same_timeline_and_short_sessions_shorten_the_prompt():
    assert _timeline(seed=3) == _timeline(seed=3)
    assert _timeline(seed=3) != _timeline(seed=4)
    tl = _timeline(replace(TypingStyle(), prompt_reaction_s=0.5), duration_s=8.0)
    assert len(tl.prompts) == 1
    shown = tl.prompts[0].text
    assert PROMPTS[0].startswith(shown) and shown != PROMPTS[0]
    assert _final_texts(tl) == [shown]
    assert max(e.release for e in tl.events) <= 8.0
