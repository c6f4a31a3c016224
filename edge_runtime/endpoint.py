"""Endpointing: when a typed segment is over, as rules that are data (sherpa-onnx's design).

A rule fires when all of its conditions hold on the current segment (frames since the
last ``reset``):

- ``must_contain_nonsilence``: some frame's best class was a key (not blank);
- ``min_trailing_silence_s``: the frames since the last non-blank best class span at least this long;
- ``min_utterance_length_s``: the segment spans at least this long.

An endpoint is reached when any rule fires. "Silence" here is the model's blank, not
low EMG power: a hand resting on the band and a hand moving without typing both emit
blank. The defaults are for typing, where pauses between words are short and a pause
of a second and a half means the sentence (or burst) is done:

1. nothing typed for 5 s -> endpoint (flushes an idle segment, keeps segments bounded);
2. something typed, then 1.5 s without a key -> endpoint;
3. any segment reaching 30 s -> endpoint.

``EndpointConfig.from_dict`` takes ``{"rules": [{...}, ...]}`` (JSON on the command line,
``emgkey run --endpoint FILE``); unknown keys are an error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from emgkey.errors import ConfigError


@dataclass(frozen=True)
class EndpointRule:
    must_contain_nonsilence: bool
    min_trailing_silence_s: float
    min_utterance_length_s: float

    def __post_init__(self) -> None:
        if self.min_trailing_silence_s < 0 or self.min_utterance_length_s < 0:
            raise ConfigError(f"endpoint rule durations must be >= 0: {self}")
        if self.min_trailing_silence_s == 0 and self.min_utterance_length_s == 0:
            raise ConfigError("an endpoint rule needs a trailing silence or a minimum length, or it always fires")

    def fires(self, has_nonsilence: bool, trailing_silence_s: float, utterance_length_s: float) -> bool:
        return (
            (has_nonsilence or not self.must_contain_nonsilence)
            and trailing_silence_s >= self.min_trailing_silence_s
            and utterance_length_s >= self.min_utterance_length_s
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EndpointRule:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(
                f"unknown endpoint rule keys {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}"
            )
        try:
            return cls(
                must_contain_nonsilence=bool(d["must_contain_nonsilence"]),
                min_trailing_silence_s=float(d.get("min_trailing_silence_s", 0.0)),
                min_utterance_length_s=float(d.get("min_utterance_length_s", 0.0)),
            )
        except KeyError as exc:
            raise ConfigError(f"endpoint rule lacks {exc}") from None


DEFAULT_RULES = (
    EndpointRule(must_contain_nonsilence=False, min_trailing_silence_s=5.0, min_utterance_length_s=0.0),
    EndpointRule(must_contain_nonsilence=True, min_trailing_silence_s=1.5, min_utterance_length_s=0.0),
    EndpointRule(must_contain_nonsilence=False, min_trailing_silence_s=0.0, min_utterance_length_s=30.0),
)


@dataclass(frozen=True)
class EndpointConfig:
    rules: tuple[EndpointRule, ...] = DEFAULT_RULES
    enabled: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "rules": [asdict(r) for r in self.rules]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EndpointConfig:
        unknown = set(d) - {"rules", "enabled"}
        if unknown:
            raise ConfigError(f"unknown endpoint config keys {sorted(unknown)}; known: ['enabled', 'rules']")
        rules = tuple(EndpointRule.from_dict(r) for r in d.get("rules", [asdict(r) for r in DEFAULT_RULES]))
        return cls(rules=rules, enabled=bool(d.get("enabled", True)))


@dataclass
class EndpointDetector:
    """Per-stream counters the rules read, updated with each chunk of emissions."""

    config: EndpointConfig
    frame_rate_hz: float
    blank: int
    frames: int = field(init=False, default=0)
    trailing_blank_frames: int = field(init=False, default=0)
    has_nonsilence: bool = field(init=False, default=False)
    forced: bool = field(init=False, default=False)  # e.g. a long signal gap ended the segment

    def reset(self) -> None:
        self.frames = 0
        self.trailing_blank_frames = 0
        self.has_nonsilence = False
        self.forced = False

    def update(self, emissions: np.ndarray) -> None:
        """emissions (T, num_classes) log-probs of the segment's next T frames."""
        if len(emissions) == 0:
            return
        keys = np.flatnonzero(emissions.argmax(axis=1) != self.blank)  # (n_key_frames,)
        self.frames += len(emissions)
        if len(keys):
            self.has_nonsilence = True
            self.trailing_blank_frames = len(emissions) - 1 - int(keys[-1])
        else:
            self.trailing_blank_frames += len(emissions)

    @property
    def trailing_silence_s(self) -> float:
        return self.trailing_blank_frames / self.frame_rate_hz

    @property
    def utterance_length_s(self) -> float:
        return self.frames / self.frame_rate_hz

    def is_endpoint(self) -> bool:
        if self.forced:
            return True
        if not self.config.enabled:
            return False
        return any(
            r.fires(self.has_nonsilence, self.trailing_silence_s, self.utterance_length_s) for r in self.config.rules
        )
