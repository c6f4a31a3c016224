"""``replay://FILE.hdf5``: a recorded session file played back as a source.

    replay:///data/user3/session0.hdf5?speed=1.0      # real time
    replay://runs/sessions/u3_s0.hdf5?speed=max        # as fast as it is read (relative path)

The file is read lazily through ``emgkey.session.SessionFile``, ``block_s``
seconds of rows at a time (default 1 s), so a long recording never sits in
memory. Samples are exactly ``SessionFile.read()`` (float32 microvolts).

A jump in the file's timestamps larger than 1.5 sample periods is a gap in the
recording: it is reported as ``GapEvent(reason="timestamps")`` of
``round(dt * rate) - 1`` samples rather than glued. A non-finite sample means a
corrupt file: the default ``nonfinite=raise`` (``SessionFile`` itself raises
``SessionFileError`` naming the file and row); ``nonfinite=drop`` turns such rows into
``GapEvent(reason="invalid")`` instead, as the other sources do. ``start=`` / ``stop=`` replay a
row range. The file's ground truth is exposed (``keystrokes``, ``prompts``,
``session`` for ``ground_truth(t0, t1)``, ``time_of(index)``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from emgkey.edge_runtime.sources import BufferConfig, PacedSource, SourceStateError, SourceURL, UrlParams, parse_speed
from emgkey.edge_runtime.validate import NonFinitePolicy
from emgkey.errors import ConfigError
from emgkey.profiles import DeviceProfile
from emgkey.session import SessionFile

# A step between timestamps longer than this many sample periods is a gap in the recording.
GAP_THRESHOLD_PERIODS = 1.5


class ReplaySource(PacedSource):
    scheme = "replay"
    default_buffer = BufferConfig(nonfinite=NonFinitePolicy.RAISE)

    def __init__(
        self,
        path: str | Path,
        speed: float = 1.0,
        block_s: float = 1.0,
        start: int = 0,
        stop: int | None = None,
        profile: DeviceProfile | None = None,
        buffer: BufferConfig | None = None,
    ) -> None:
        if not block_s > 0:
            raise ConfigError(f"replay: block_s must be positive, got {block_s}")
        if start < 0 or (stop is not None and stop < start):
            raise ConfigError(f"replay: bad row range start={start} stop={stop}")
        self.path = Path(path)
        super().__init__(f"replay://{self.path}", None, buffer, speed)
        self._expected_profile = profile
        self.block_s = block_s
        self._row0 = start
        self._row_stop = stop
        self._file: SessionFile | None = None
        self._pos = start  # next file row to read
        self._pending: list[np.ndarray | int] = []  # items read ahead: sample blocks and gaps
        self._last_t: float | None = None  # timestamp of the last row read

    @classmethod
    def from_url(cls, url: SourceURL, profile: DeviceProfile | str | None = None) -> ReplaySource:
        if not url.target:
            raise ConfigError(f"replay URL {url.url!r} names no file: replay://PATH.hdf5?speed=1.0")
        p = UrlParams(url)
        prof = p.profile(profile)
        speed = p.get("speed", parse_speed, 1.0)
        block_s = p.get("block_s", float, 1.0)
        start = p.get("start", int, 0)
        stop = p.get("stop", int, None)
        buffer = p.buffer(cls.default_buffer)
        p.finish()
        return cls(url.target, speed, block_s, start, stop, prof, buffer)

    # --- ground truth ----------------------------------------------------------------------------------------------

    @property
    def session(self) -> SessionFile:
        """The open file (after start()): metadata and ``ground_truth(start_t, end_t)``."""
        if self._file is None:
            raise SourceStateError(self.name, "file not open: start() the source first")
        return self._file

    @property
    def keystrokes(self) -> list[dict[str, Any]]:
        return self.session.keystrokes

    @property
    def prompts(self) -> list[dict[str, Any]]:
        return self.session.prompts

    @property
    def start_time(self) -> float:
        """Unix time of stream index 0 (the first replayed row)."""
        return float(self.session.read_raw(self._row0, self._row0 + 1)[SessionFile.TIMESTAMPS][0])

    def time_of(self, index: int | np.ndarray) -> float | np.ndarray:
        """Unix time of stream index ``index`` (gaps included in the index, so this holds across them)."""
        return self.start_time + np.asarray(index, dtype=np.float64) / self.sample_rate_hz

    # --- production -------------------------------------------------------------------------------------------------

    def _open(self) -> None:
        f = SessionFile(self.path)
        try:
            prof = f.profile
            want = self._expected_profile
            if want is not None and (want.n_bands, want.channels_per_band, want.sample_rate_hz) != (
                prof.n_bands,
                prof.channels_per_band,
                prof.sample_rate_hz,
            ):
                raise ConfigError(
                    f"{self.name}: file holds {prof.name} ({prof.n_bands}x{prof.channels_per_band} at "
                    f"{prof.sample_rate_hz:g} Hz), profile={want.name} was asked for"
                )
            if self._row0 > f.n_samples:
                raise ConfigError(f"{self.name}: start={self._row0} is past the file's {f.n_samples} rows")
            self._configure(want or prof)
        except BaseException:
            f.close()
            raise
        self._file = f

    def _release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _read_ahead(self) -> None:
        """Read the next ``block_s`` of rows and split them at timestamp jumps into blocks and gaps."""
        f = self._file
        assert f is not None
        stop = f.n_samples if self._row_stop is None else min(self._row_stop, f.n_samples)
        a = self._pos
        b = min(stop, a + max(1, math.ceil(self.block_s * f.sample_rate_hz)))
        if a >= b:
            return
        # Times are always checked (finite, monotonic); samples too unless NaN rows are to become gaps, which
        # the source's validator does after this read (nonfinite=drop).
        drop = self.buffer_config.nonfinite is NonFinitePolicy.DROP
        rows = f.read_raw(a, b, check_finite=not drop)  # (n,) structured
        emg = f.rows_to_emg(rows)  # (n, n_bands, C) float32 uV
        t = np.asarray(rows[SessionFile.TIMESTAMPS], dtype=np.float64)  # (n,)
        self._pos = b
        period = 1.0 / f.sample_rate_hz
        steps = np.diff(t, prepend=t[0] if self._last_t is None else self._last_t)  # (n,) step into each row
        jumps = np.flatnonzero(steps > GAP_THRESHOLD_PERIODS * period)
        prev = 0
        for j in jumps.tolist():
            if j > prev:
                self._pending.append(emg[prev:j])
            self._pending.append(max(1, round(float(steps[j]) / period) - 1))
            prev = j
        self._pending.append(emg[prev:])
        self._last_t = float(t[-1])

    def _next_item(self, max_n: int) -> np.ndarray | int | None:
        if not self._pending:
            self._read_ahead()
            if not self._pending:
                return None
        item = self._pending[0]
        if isinstance(item, int):
            self._pending.pop(0)
            return item
        out, rest = item[:max_n], item[max_n:]
        if rest.shape[0]:
            self._pending[0] = rest
        else:
            self._pending.pop(0)
        return out
