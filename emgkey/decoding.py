"""CTC decoding shared by training (validation) and the device.

Decoders are stateful and online like emg2qwerty's: ``reset()``, then
``decode(emissions, timestamps, finish)`` any number of times; the batch helpers
are loops over the online form, so offline and streaming agree by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from emgkey import charset


@dataclass
class CTCGreedyDecoder:
    """Best path: argmax per frame, collapse repeats, drop blanks."""

    blank: int = charset.BLANK
    num_classes: int = charset.NUM_CLASSES
    labels: list[int] = field(init=False, default_factory=list)
    timestamps: list[float] = field(init=False, default_factory=list)
    _prev: int = field(init=False, default=charset.BLANK)

    def reset(self) -> None:
        self.labels = []
        self.timestamps = []
        self._prev = self.blank

    def decode(self, emissions: np.ndarray, timestamps: np.ndarray | None = None, finish: bool = False) -> list[int]:
        """emissions (T, num_classes) scores or log-probs; returns every label decoded so far."""
        assert emissions.ndim == 2 and emissions.shape[1] == self.num_classes, (
            f"expected (T, {self.num_classes}) emissions, got {emissions.shape}"
        )
        if timestamps is None:
            timestamps = np.arange(len(emissions), dtype=np.float64)
        assert len(timestamps) == len(emissions), "one timestamp per emission frame"
        best = emissions.argmax(axis=-1)  # (T,)
        prev = np.concatenate(([self._prev], best[:-1]))
        new = np.flatnonzero((best != self.blank) & (best != prev))
        self.labels.extend(int(x) for x in best[new])
        self.timestamps.extend(float(x) for x in np.asarray(timestamps)[new])
        if len(best):
            self._prev = int(best[-1])
        return self.labels

    @property
    def text(self) -> str:
        return charset.labels_to_str(self.labels)


def greedy_decode(emissions: np.ndarray, length: int | None = None) -> list[int]:
    """Batch helper: one sequence (T, C) -> labels."""
    dec = CTCGreedyDecoder(num_classes=emissions.shape[-1])
    return list(dec.decode(emissions[: length if length is not None else len(emissions)], finish=True))
