"""Fixed-length training windows over session files (numpy twin of emg2qwerty's ``WindowedEmgDataset``).

A window is ``window_length`` samples starting every ``stride`` samples, widened
by ``padding = (left, right)`` samples of context that the model sees but is not
scored on: labels are the keys pressed between the first and last timestamp of
the *un-padded* window, exactly as emg2qwerty computes them. Left padding is cut
at the start of the session; right padding is cut at the end, so edge windows
are shorter. With ``jitter`` each window's offset moves right by a random amount
below ``min(stride, leftover)``, drawn from an explicit ``np.random.Generator``.

Lengths here are in samples; ``WindowConfig`` states them in seconds so one
config serves devices with different rates (emg2qwerty's 8000-sample windows
with (1800, 200) padding at 2 kHz are ``WindowConfig()`` at 2 kHz).

Files are opened on first use, not at construction, and the open handle is
dropped when pickling, so datasets can be sent to DataLoader worker processes.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from emgkey.session import SessionFile


@dataclass(frozen=True)
class WindowSamples:
    """Window geometry in samples (``window_length=None``: the whole session is one window)."""

    window_length: int | None
    stride: int | None
    padding: tuple[int, int]


@dataclass(frozen=True)
class WindowConfig:
    """Window geometry in seconds; ``stride_s=None`` means non-overlapping windows.

    Defaults are emg2qwerty's training windows: 4 s, with 0.9 s of past and
    0.1 s of future context.
    """

    window_s: float | None = 4.0
    stride_s: float | None = None
    padding_s: tuple[float, float] = (0.9, 0.1)

    def __post_init__(self) -> None:
        assert self.window_s is None or self.window_s > 0, f"window_s must be positive, got {self.window_s}"
        assert self.stride_s is None or self.stride_s > 0, f"stride_s must be positive, got {self.stride_s}"
        assert len(self.padding_s) == 2 and min(self.padding_s) >= 0, f"bad padding_s {self.padding_s}"

    def in_samples(self, sample_rate_hz: float) -> WindowSamples:
        """Round each length to the nearest whole sample at ``sample_rate_hz``."""

        def n(seconds: float) -> int:
            return round(seconds * sample_rate_hz)

        window = None if self.window_s is None else max(1, n(self.window_s))
        stride = None if self.stride_s is None else max(1, n(self.stride_s))
        return WindowSamples(window, stride, (n(self.padding_s[0]), n(self.padding_s[1])))


class WindowedSession:
    """Windows of one session: ``ws[i] -> (emg (T, n_bands, C) float32 µV, labels (L,) int32)``.

    Only ``on_keyboard`` sessions are supported, as in emg2qwerty: prompt
    labels carry no key times, so they cannot be cut to a window.
    """

    def __init__(
        self,
        path: str | Path,
        window_length: int | None = None,
        stride: int | None = None,
        padding: tuple[int, int] = (0, 0),
        jitter: bool = False,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.path = Path(path)
        with SessionFile(self.path) as session:
            if session.condition != "on_keyboard":
                raise ValueError(f"{self.path}: windowing needs keystroke labels, condition is {session.condition!r}")
            self.session_length = len(session)
            self.sample_rate_hz = session.sample_rate_hz
        self.window_length = window_length if window_length is not None else self.session_length
        self.stride = stride if stride is not None else self.window_length
        assert self.window_length > 0 and self.stride > 0, f"window {self.window_length} / stride {self.stride}"
        self.left_padding, self.right_padding = (int(p) for p in padding)
        assert self.left_padding >= 0 and self.right_padding >= 0, f"padding must be >= 0, got {padding}"
        if jitter and rng is None:
            raise ValueError("jitter=True needs an explicit rng (np.random.Generator)")
        self.jitter = jitter
        self.rng = rng
        self._session: SessionFile | None = None

    @classmethod
    def from_config(
        cls,
        path: str | Path,
        config: WindowConfig,
        jitter: bool = False,
        rng: np.random.Generator | None = None,
    ) -> WindowedSession:
        """Windows sized in seconds, converted at this file's own sample rate."""
        with SessionFile(path) as session:
            rate = session.sample_rate_hz
        w = config.in_samples(rate)
        return cls(path, w.window_length, w.stride, w.padding, jitter=jitter, rng=rng)

    def set_rng(self, rng: np.random.Generator) -> None:
        """Give this dataset its own generator, e.g. in a DataLoader ``worker_init_fn``.

        Without it, forked workers share copies of one generator and jitter identically.
        """
        self.rng = rng

    def __len__(self) -> int:
        return max(0, (self.session_length - self.window_length) // self.stride + 1)

    def _open(self) -> SessionFile:
        if self._session is None:
            self._session = SessionFile(self.path)
        return self._session

    def __getitem__(self, idx: int) -> tuple[np.ndarray, np.ndarray]:
        emg, labels, _ = self.item(idx)
        return emg, labels

    def item(self, idx: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(emg (T, n_bands, C) µV, labels (L,) int32, label_samples (L,) int64)``.

        ``label_samples[i]`` is the row of ``emg`` at which key ``i`` was pressed (from the
        keylogger's press time), so training can use the alignment the data set records.
        """
        if not 0 <= idx < len(self):
            raise IndexError(f"window {idx} out of range for {len(self)} windows of {self.path}")
        session = self._open()
        offset = idx * self.stride
        leftover = self.session_length - (offset + self.window_length)
        assert leftover >= 0, "guaranteed by __len__"
        if leftover > 0 and self.jitter:
            assert self.rng is not None, "checked in __init__"
            offset += int(self.rng.integers(0, min(self.stride, leftover)))

        # Widen by the context padding; the left edge is clipped at 0, the right by the read.
        window_start = max(offset - self.left_padding, 0)
        window_end = offset + self.window_length + self.right_padding
        rows = session.read_raw(window_start, window_end)  # (T,) structured
        emg = session.rows_to_emg(rows)  # (T, n_bands, C) µV

        # Labels come from the un-padded window: keys pressed within [its first, its last] timestamp.
        times = rows[SessionFile.TIMESTAMPS]  # (T,)
        start_t = float(times[offset - window_start])
        end_t = float(times[offset + self.window_length - 1 - window_start])
        truth = session.ground_truth(start_t, end_t)
        labels = truth.labels  # (L,) int32
        if truth.timestamps is not None and len(truth.timestamps) == len(labels):
            label_samples = np.searchsorted(times, np.asarray(truth.timestamps, dtype=np.float64)).astype(np.int64)
        else:  # no press times recorded: alignment unknown
            label_samples = np.full(len(labels), -1, dtype=np.int64)
        return emg, labels, label_samples  # (T, n_bands, C), (L,), (L,)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def __enter__(self) -> WindowedSession:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # h5py handles cannot be pickled; each process reopens the file on first access.
        state = self.__dict__.copy()
        state["_session"] = None
        return state

    def __repr__(self) -> str:
        return (
            f"WindowedSession({str(self.path)!r}, window_length={self.window_length}, stride={self.stride}, "
            f"padding=({self.left_padding}, {self.right_padding}), jitter={self.jitter}, windows={len(self)})"
        )


class WindowedDataset:
    """Several sessions' windows end to end (what a training split iterates over)."""

    def __init__(self, sessions: Sequence[WindowedSession]) -> None:
        self.sessions = list(sessions)
        self._ends: list[int] = []  # cumulative window counts
        total = 0
        for s in self.sessions:
            total += len(s)
            self._ends.append(total)

    @classmethod
    def from_paths(
        cls,
        paths: Sequence[str | Path],
        config: WindowConfig,
        jitter: bool = False,
        rng: np.random.Generator | None = None,
    ) -> WindowedDataset:
        """One ``WindowedSession`` per file, all sharing ``config`` (in seconds) and ``rng``."""
        return cls([WindowedSession.from_config(p, config, jitter=jitter, rng=rng) for p in paths])

    def set_rng(self, rng: np.random.Generator) -> None:
        for s in self.sessions:
            s.set_rng(rng)

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def locate(self, idx: int) -> tuple[int, int]:
        """Global window index -> (session index, window index within that session)."""
        if not 0 <= idx < len(self):
            raise IndexError(f"window {idx} out of range for {len(self)} windows")
        k = bisect.bisect_right(self._ends, idx)
        return k, idx - (self._ends[k - 1] if k else 0)

    def __getitem__(self, idx: int) -> tuple[np.ndarray, np.ndarray]:
        k, i = self.locate(idx)
        return self.sessions[k][i]

    def close(self) -> None:
        for s in self.sessions:
            s.close()

    def __enter__(self) -> WindowedDataset:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
