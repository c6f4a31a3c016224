"""Calibration data: prompts from the prompt corpus, a prompted recording, and its fit / held-out split.

A calibration session shows prompts one at a time and records the armband; what comes out is a
``CalibrationRecording``: the samples (microvolts) and, for every prompt, the sample at which it was
shown and the one at which the next one was (``PromptSpan``). There is no keylogger on a device: a
prompt's **target** is its text as the keyboard types it (``prompt_keys``: ⇧ before capitals and
shifted symbols, ⏎ at the end), and the user's typos are simply keys the target lacks (CTC scoring
tolerates them, ``calib_ctc``).

``CalibrationSet.from_recording`` computes the features once (``emgkey.features``, the device's own
front end), cuts them into one segment per prompt, checks the data (clear ``CalibrationDataError``
codes: ``wrong_channels``, ``non_finite``, ``flat_channel``, ``too_little_data``), and splits the
segments in time: the first ones fit the calibration, the last ``heldout_fraction`` of them are the
held-out slice that decides whether the calibration beats the current model.

Shapes are time first: samples ``(T, n_bands, C)``, features ``(F, n_bands, C, n_freq)``.
"""

from __future__ import annotations

import json
import math
import string
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from emgkey import charset
from emgkey.atomic import atomic_path
from emgkey.corpus import PromptSampler, load_prompts
from emgkey.errors import EmgkeyError
from emgkey.features import FeatureConfig, compute_features
from emgkey.profiles import DeviceProfile

# Characters typed with Shift held on a US layout (capitals and the upper symbols).
SHIFTED_CHARS = frozenset(string.ascii_uppercase) | frozenset('~!@#$%^&*()_+{}|:"<>?')


class CalibrationDataError(EmgkeyError):
    """The calibration data cannot be used; ``code`` says why (nothing is written or activated)."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(f"[{code}] {message}")


# ---------------------------------------------------------------------------------------------------------------------
# Prompts and their targets


def prompt_keys(text: str) -> str:
    """The keys a touch typist presses for ``text``: ⇧ before each run of shifted characters, ⏎ at the end.

    Canonical charset form (``emgkey.charset``), whitespace collapsed as the prompt screen shows it. The
    simulated typist presses one Shift per run of shifted keys on the same Shift key; a run that switches
    hands needs a second ⇧, which this rule leaves out (one key of CTC slack, not an error).
    """
    cleaned = " ".join(charset.clean_str(text).split())
    out: list[str] = []
    prev_shifted = False
    for c in cleaned:
        shifted = c in SHIFTED_CHARS
        if shifted and not prev_shifted:
            out.append(charset.SHIFT)
        out.append(c)
        prev_shifted = shifted
    out.append(charset.ENTER)
    return "".join(out)


def prompt_targets(text: str) -> np.ndarray:
    """CTC targets of a prompt, (L,) int64 label ids (see ``prompt_keys``)."""
    return np.asarray(charset.str_to_labels(prompt_keys(text)), dtype=np.int64)


@dataclass(frozen=True)
class PromptChoice:
    """Which prompts a calibration shows: short sentences of the prompt corpus (not LM text), or for sessions
    shorter than ``PHRASES_BELOW_S`` the leading phrases of corpus sentences (``for_session``)."""

    min_chars: int = 10
    max_chars: int = 24
    seed: int = 0
    # True: each corpus sentence offers its leading words (as many as fit in max_chars, cut at a space, the
    # trailing ,;: dropped); False: whole sentences of min_chars..max_chars
    phrases: bool = False

    PHRASES_BELOW_S: ClassVar[float] = 30.0

    @classmethod
    def for_session(cls, seconds: float, seed: int = 0) -> PromptChoice:
        """The choice for a ``seconds`` session: sentences of 10-24 chars, or for a short session phrases of
        6-14 chars. The simulated typists need 6-14 s for a sentence, so 15 s of sentences hold one finished
        prompt (nothing left to hold out); 15 s of phrases hold two to four."""
        if seconds < cls.PHRASES_BELOW_S:
            return cls(min_chars=4, max_chars=10, seed=seed, phrases=True)
        return cls(seed=seed)

    def candidate(self, text: str) -> str | None:
        """What this choice shows for corpus sentence ``text``, or None when it offers nothing."""
        if "|" in text:  # the sim:// URL separates prompts with it
            return None
        if self.phrases:
            words = text.split()
            out = ""
            for w in words:
                longer = f"{out} {w}" if out else w
                if len(longer) > self.max_chars:
                    break
                out = longer
            text = out.rstrip(",;:")
        return text if self.min_chars <= len(text) <= self.max_chars else None

    def choose(self, n: int, salt: str = "") -> list[tuple[int, str]]:
        """``n`` distinct ``(corpus id, text)`` prompts, deterministic in ``(seed, salt)`` (e.g. the user name).

        Short prompts: more of them fit in a minute, so the held-out slice holds several sentences, and 30 s
        hold two finished ones (one to fit, one held out) even for slow typists (the simulated ones need 6-14 s
        a prompt; 15 s hold one, too little: ``for_session`` gives phrases there). Prompts holding ``|`` are
        skipped (the ``sim://`` URL separates prompts with it).
        """
        assert n >= 1, "choose at least one prompt"
        prompts = load_prompts()
        salt_seed = int.from_bytes(salt.encode("utf-8")[:8].ljust(8, b"\0"), "little")
        sampler = PromptSampler(seed=(self.seed * 1_000_003 + salt_seed) % (2**62))
        out: list[tuple[int, str]] = []
        seen: set[str] = set()
        for i in range(len(sampler)):
            pid = sampler.prompt_id(i)
            text = self.candidate(prompts[pid])
            if text is not None and text not in seen:
                seen.add(text)
                out.append((pid, text))
                if len(out) == n:
                    return out
        raise CalibrationDataError(
            "no_prompts", f"the prompt corpus has only {len(out)} prompts of {self.min_chars}-{self.max_chars} chars"
        )

    def enough_for(self, seconds: float) -> int:
        """Prompts to prepare for ``seconds`` of typing by a fast typist (unused ones are never shown)."""
        per_prompt_s = 1.5 if self.phrases else 2.5
        return max(4, math.ceil(seconds / per_prompt_s) + 2)


# ---------------------------------------------------------------------------------------------------------------------
# The recording


@dataclass(frozen=True)
class PromptSpan:
    """Prompt ``text`` was on screen from sample ``start`` until sample ``stop`` (the next prompt, or the end)."""

    text: str
    start: int
    stop: int
    prompt_id: int | None = None

    def __post_init__(self) -> None:
        assert 0 <= self.start <= self.stop, f"bad prompt span [{self.start}, {self.stop})"


@dataclass
class CalibrationRecording:
    """Samples of a prompted calibration session and when each prompt was shown."""

    profile: DeviceProfile
    samples: np.ndarray  # (T, n_bands, C) float32 microvolts; samples lost on the link are zeros
    spans: list[PromptSpan]
    source: str = ""
    missing: list[tuple[int, int]] = field(default_factory=list)  # (start, n) sample ranges lost (zero-filled)
    notes: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.profile.sample_rate_hz

    def save(self, path: str | Path) -> Path:
        """One ``.npz`` (samples as float32 plus a JSON header), written atomically."""
        header = {
            "profile": self.profile.to_dict(),
            "spans": [asdict(s) for s in self.spans],
            "source": self.source,
            "missing": [list(m) for m in self.missing],
            "notes": self.notes,
        }
        with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, samples=self.samples.astype(np.float32), header=np.array(json.dumps(header)))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> CalibrationRecording:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(str(z["header"]))
            samples = np.asarray(z["samples"], dtype=np.float32)
        return cls(
            profile=DeviceProfile.from_dict(header["profile"]),
            samples=samples,
            spans=[PromptSpan(**s) for s in header["spans"]],
            source=header.get("source", ""),
            missing=[(int(a), int(n)) for a, n in header.get("missing", [])],
            notes=list(header.get("notes", [])),
        )

    def head(self, seconds: float) -> CalibrationRecording:
        """The first ``seconds`` of the recording: prompts shown in it, the last one cut where the data ends."""
        n = min(len(self.samples), round(seconds * self.profile.sample_rate_hz))
        spans = [PromptSpan(s.text, s.start, min(s.stop, n), s.prompt_id) for s in self.spans if s.stop <= n]
        missing = [(a, min(k, n - a)) for a, k in self.missing if a < n]
        return CalibrationRecording(self.profile, self.samples[:n], spans, self.source, missing, list(self.notes))


# ---------------------------------------------------------------------------------------------------------------------
# Segments, checks and the split


@dataclass(frozen=True)
class Segment:
    """One prompt: feature frames ``[start, stop)`` of the recording and the prompt's targets."""

    text: str
    start: int
    stop: int
    targets: np.ndarray  # (L,) int64

    @property
    def frames(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class DataLimits:
    """What a calibration needs before it is trusted with anything."""

    min_fit_s: float = 4.0  # prompted typing in the fit part (one short phrase: 15 s sessions hold two or three)
    min_heldout_segments: int = 1
    heldout_fraction: float = 0.25
    max_missing_fraction: float = 0.1  # of the samples, lost on the link
    flat_std_uv: float = 1e-3  # a channel this still is not connected

    def __post_init__(self) -> None:
        assert self.min_fit_s > 0 and self.min_heldout_segments >= 1, "limits must be positive"
        assert 0.0 < self.heldout_fraction < 1.0, "heldout_fraction must be in (0, 1)"


@dataclass
class CalibrationSet:
    """Features of a recording, one segment per prompt, the first ``n_fit`` segments for fitting."""

    features: np.ndarray  # (F, n_bands, C, n_freq) float32, device features before any normalization
    segments: list[Segment]
    n_fit: int
    feature_config: FeatureConfig
    dropped: list[str] = field(default_factory=list)  # prompts left out, and why

    @property
    def fit(self) -> list[Segment]:
        return self.segments[: self.n_fit]

    @property
    def heldout(self) -> list[Segment]:
        return self.segments[self.n_fit :]

    @property
    def fit_stop(self) -> int:
        """First frame after the fit part (the held-out slice starts later): fit statistics come from before."""
        return self.fit[-1].stop

    def seconds(self, segments: Sequence[Segment]) -> float:
        return sum(s.frames for s in segments) / self.feature_config.frame_rate_hz

    @classmethod
    def from_recording(
        cls, rec: CalibrationRecording, feature_config: FeatureConfig, limits: DataLimits | None = None
    ) -> CalibrationSet:
        lim = limits or DataLimits()
        prof = rec.profile
        x = rec.samples
        want = (prof.n_bands, prof.channels_per_band)
        if x.ndim != 3 or x.shape[1:] != want:
            raise CalibrationDataError(
                "wrong_channels",
                f"samples have shape {x.shape}; the bundle's device {prof.name!r} has {want[0]} bands x {want[1]} "
                "electrodes: wrong device or wrong channel map",
            )
        if not np.all(np.isfinite(x)):
            bad = np.argwhere(~np.isfinite(x))[0]
            raise CalibrationDataError(
                "non_finite", f"sample {bad[0]} band {bad[1]} electrode {bad[2]} is {x[tuple(bad)]}: corrupt data"
            )
        n_missing = sum(n for _, n in rec.missing)
        if len(x) and n_missing / len(x) > lim.max_missing_fraction:
            raise CalibrationDataError(
                "too_many_gaps",
                f"{n_missing} of {len(x)} samples were lost on the link ({100 * n_missing / len(x):.0f}%): "
                "check the connection and record again",
            )
        if len(x) >= 2:
            std = x.std(axis=0)  # (n_bands, C)
            flat = np.argwhere(std < lim.flat_std_uv)
            if len(flat):
                names = ", ".join(f"{prof.band_names[b]} electrode {c}" for b, c in flat[:4])
                raise CalibrationDataError(
                    "flat_channel", f"{names}: no signal (std < {lim.flat_std_uv} uV); is the band on and in contact?"
                )
        feats = compute_features(x, feature_config)  # (F, n_bands, C, n_freq)
        hop, n_fft = feature_config.hop, feature_config.n_fft
        lost = np.zeros(len(x) + 1, dtype=np.int64)
        for a, n in rec.missing:
            lost[a : a + n] = 1
        lost_cum = np.concatenate([[0], np.cumsum(lost[:-1])])
        segments: list[Segment] = []
        dropped: list[str] = []
        for s in sorted(rec.spans, key=lambda s: s.start):
            f0 = s.start // hop
            f1 = min(len(feats), max(0, (s.stop - n_fft) // hop + 1))  # frames wholly inside the span
            y = prompt_targets(s.text)
            if f1 - f0 < 2 * len(y):  # not even two frames per key: cut short, or not typed
                dropped.append(f"{s.text!r}: {max(f1 - f0, 0)} frames for {len(y)} keys")
                continue
            if lost_cum[min(s.stop, len(x))] - lost_cum[s.start] > 0.05 * (s.stop - s.start):
                dropped.append(f"{s.text!r}: samples lost on the link")
                continue
            segments.append(Segment(s.text, f0, f1, y))
        n_held = max(lim.min_heldout_segments, round(lim.heldout_fraction * len(segments)))
        n_fit = len(segments) - n_held
        fit_s = sum(s.frames for s in segments[:n_fit]) / feature_config.frame_rate_hz
        if n_fit < 1 or fit_s < lim.min_fit_s:
            raise CalibrationDataError(
                "too_little_data",
                f"{len(segments)} usable prompts ({rec.seconds:.1f} s recorded): {max(fit_s, 0):.1f} s to fit after "
                f"holding out {n_held}; a calibration needs at least {lim.min_fit_s:.0f} s of prompted typing to fit "
                f"and {lim.min_heldout_segments} held-out prompt(s): record longer (--seconds)"
                + (f"; left out: {'; '.join(dropped[:3])}" if dropped else ""),
            )
        return cls(feats, segments, n_fit, feature_config, dropped)

    def summary(self) -> dict[str, Any]:
        return {
            "prompts_fit": len(self.fit),
            "prompts_heldout": len(self.heldout),
            "seconds_fit": round(self.seconds(self.fit), 2),
            "seconds_heldout": round(self.seconds(self.heldout), 2),
            "keys_fit": int(sum(len(s.targets) for s in self.fit)),
            "keys_heldout": int(sum(len(s.targets) for s in self.heldout)),
            "prompts_dropped": self.dropped,
        }
