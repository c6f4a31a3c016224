"""Session files: emg2qwerty's HDF5 container, read lazily and written atomically.

One file is one recording session. The layout is emg2qwerty's, byte for byte in
what emg2qwerty reads, so files move between the two projects unchanged:

- group ``emg2qwerty`` holding a 1-D compound dataset ``timeseries`` whose rows
  are ``(emg_right (C,), emg_left (C,), time)``: one row per sample, time in
  float64 unix seconds;
- group attributes ``keystrokes`` and ``prompts`` (JSON strings), and
  ``session_name``, ``user``, ``condition``, ``duration_mins``.

Devices other than emg2qwerty's bands use the same container with their own
channel count and storage type (int16 ADC counts for ``armband8``), and every
file emgkey writes describes its device in extra attributes
(``emgkey_format_version``, ``profile`` as JSON, and flat ``sample_rate_hz``,
``channels_per_band``, ``sample_format``, ``adc_scale_uv_per_count``).
emg2qwerty's reader loads unknown attributes into its metadata and ignores them.
A file without these attributes (a published emg2qwerty file) is read as the
``emg2qwerty`` profile once its shapes and sampling rate are checked to fit.

``SessionFile`` never loads the whole EMG: opening reads the attributes, the
dtype and two timestamps; ``read`` fetches only the rows asked for and checks
them (finite samples, monotonic time) on the way out. Any problem with a file
is a ``SessionFileError`` naming the file and what is wrong with it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import h5py
import numpy as np

from emgkey.atomic import atomic_path
from emgkey.errors import SessionFileError
from emgkey.labels import LabelData
from emgkey.profiles import EMG2QWERTY, DeviceProfile

log = logging.getLogger(__name__)

FORMAT_VERSION = 1

# Reading tolerances. Keystrokes come from a keylogger process with its own clock, so a press
# may be stamped a little outside the EMG span of a real recording; files we write are strict.
TIME_SLACK_S = 1.0
# duration_mins must agree with the timestamps' span to within this (seconds, or fraction of span).
DURATION_TOL_S = 5.0
DURATION_TOL_FRAC = 0.02
# The median sample spacing must match the profile's rate to within this fraction.
RATE_TOL_FRAC = 0.05
# Timestamps read at open to estimate the sampling rate (0.5 s at 2 kHz: the first chunk or few).
_RATE_PROBE_ROWS = 1025
# Rows per block when scanning a whole file (validate) or writing one.
_SCAN_ROWS = 1 << 16

_STORAGE_DTYPES: dict[str, np.dtype] = {"float32": np.dtype("<f4"), "int16": np.dtype("<i2")}


def band_field(band_name: str) -> str:
    """Name of a band's EMG field in ``timeseries`` (``left`` -> ``emg_left``)."""
    return SessionFile.EMG_PREFIX + band_name


def storage_dtype(profile: DeviceProfile) -> np.dtype:
    """The dtype one channel is stored in: float32 microvolts or int16 ADC counts."""
    return _STORAGE_DTYPES[profile.sample_format]


def timeseries_dtype(profile: DeviceProfile) -> np.dtype:
    """The compound row type, fields in emg2qwerty's order (right band first, then left, then time)."""
    base = storage_dtype(profile)
    emg_fields = [(band_field(b), base, (profile.channels_per_band,)) for b in reversed(profile.band_names)]
    return np.dtype([*emg_fields, (SessionFile.TIMESTAMPS, "<f8")])


def counts_to_microvolts(emg: np.ndarray, profile: DeviceProfile) -> np.ndarray:
    """Stored samples (any shape) -> float32 microvolts, using the profile's ADC scale."""
    out = emg.astype(np.float32, copy=False)
    if profile.adc_scale_uv_per_count != 1.0:
        out = out * np.float32(profile.adc_scale_uv_per_count)  # a new array: never scale the caller's in place
    return out


class SessionFile:
    """Read-only, lazy view of one session file; use as a context manager.

    Field and attribute names are the class constants below (emg2qwerty's, plus
    emgkey's device attributes). The constructor checks everything that is cheap
    to check (layout, dtypes, attributes, ground truth against the time span,
    sampling rate); ``validate()`` scans the samples themselves.
    """

    HDF5_GROUP: ClassVar[str] = "emg2qwerty"
    TIMESERIES: ClassVar[str] = "timeseries"
    EMG_PREFIX: ClassVar[str] = "emg_"  # one field per band: emg_<band name>
    EMG_LEFT: ClassVar[str] = EMG_PREFIX + "left"
    EMG_RIGHT: ClassVar[str] = EMG_PREFIX + "right"
    TIMESTAMPS: ClassVar[str] = "time"
    SESSION_NAME: ClassVar[str] = "session_name"
    USER: ClassVar[str] = "user"
    CONDITION: ClassVar[str] = "condition"
    DURATION_MINS: ClassVar[str] = "duration_mins"
    KEYSTROKES: ClassVar[str] = "keystrokes"
    PROMPTS: ClassVar[str] = "prompts"
    # emgkey's device description (absent from published emg2qwerty files).
    FORMAT_VERSION: ClassVar[str] = "emgkey_format_version"
    PROFILE: ClassVar[str] = "profile"
    SAMPLE_RATE_HZ: ClassVar[str] = "sample_rate_hz"
    CHANNELS_PER_BAND: ClassVar[str] = "channels_per_band"
    SAMPLE_FORMAT: ClassVar[str] = "sample_format"
    ADC_SCALE: ClassVar[str] = "adc_scale_uv_per_count"

    REQUIRED_ATTRS: ClassVar[tuple[str, ...]] = (SESSION_NAME, USER, CONDITION, DURATION_MINS, KEYSTROKES, PROMPTS)
    DEVICE_ATTRS: ClassVar[tuple[str, ...]] = (
        FORMAT_VERSION,
        PROFILE,
        SAMPLE_RATE_HZ,
        CHANNELS_PER_BAND,
        SAMPLE_FORMAT,
        ADC_SCALE,
    )
    JSON_ATTRS: ClassVar[tuple[str, ...]] = (KEYSTROKES, PROMPTS, PROFILE)

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._timestamps: np.ndarray | None = None  # cached by the ``timestamps`` property
        self._starts: dict[str, np.ndarray] = {}  # KEYSTROKES / PROMPTS -> (n,) start times, for ground_truth
        if not self.path.is_file():
            raise SessionFileError(self.path, "no such file")
        try:
            self._file = h5py.File(self.path, "r")
        except (OSError, ValueError) as exc:
            raise SessionFileError(self.path, f"not a readable HDF5 file (corrupt or truncated?): {exc}") from exc
        try:
            with self._h5_errors("reading the file header"):
                self._open_checks()
        except BaseException:
            self._file.close()
            raise

    # ---- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        self._file.close()

    @property
    def closed(self) -> bool:
        return not self._file.id.valid

    def _require_open(self) -> None:
        if self.closed:
            raise ValueError(f"{self.path}: SessionFile is closed")

    def __enter__(self) -> SessionFile:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SessionFile({str(self.path)!r}, profile={self.profile.name}, n_samples={self.n_samples})"

    # ---- metadata --------------------------------------------------------------------------------

    @property
    def profile(self) -> DeviceProfile:
        return self._profile

    @property
    def n_samples(self) -> int:
        return self._n

    def __len__(self) -> int:
        return self._n

    @property
    def sample_rate_hz(self) -> float:
        """The device's nominal rate (checked at open against the timestamps' median spacing)."""
        return self._profile.sample_rate_hz

    @property
    def band_fields(self) -> tuple[str, ...]:
        """EMG field names in band order: index ``b`` of ``read(...)[:, b]`` is ``band_fields[b]``."""
        return tuple(band_field(b) for b in self._profile.band_names)

    @property
    def session_name(self) -> str:
        return str(self._meta[self.SESSION_NAME])

    @property
    def user(self) -> str:
        return str(self._meta[self.USER])

    @property
    def condition(self) -> str:
        return str(self._meta[self.CONDITION])

    @property
    def duration_mins(self) -> float:
        return float(self._meta[self.DURATION_MINS])

    @property
    def keystrokes(self) -> list[dict[str, Any]]:
        return self._meta[self.KEYSTROKES]

    @property
    def prompts(self) -> list[dict[str, Any]]:
        return self._meta[self.PROMPTS]

    @property
    def metadata(self) -> dict[str, Any]:
        """All group attributes, JSON ones parsed (as emg2qwerty's ``metadata``); a shallow copy."""
        return dict(self._meta)

    @property
    def start_time(self) -> float:
        """Unix time of the first sample."""
        return self._t_first

    @property
    def end_time(self) -> float:
        """Unix time of the last sample."""
        return self._t_last

    # ---- samples ---------------------------------------------------------------------------------

    @property
    def timestamps(self) -> np.ndarray:
        """All sample times, (T,) float64, read from the ``time`` field only and cached.

        Checked finite and monotonic. Holds T x 8 bytes, not the EMG; HDF5
        still reads every chunk once, since rows are stored interleaved.
        """
        if self._timestamps is None:
            self._require_open()
            with self._h5_errors("reading timestamps"):
                ts = np.asarray(self._ds.fields(self.TIMESTAMPS)[:], dtype=np.float64)  # (T,)
            self._check_times(ts, 0)
            self._timestamps = ts
        return self._timestamps

    def read_raw(self, start: int | None = None, stop: int | None = None, check_finite: bool = True) -> np.ndarray:
        """Rows ``[start, stop)`` as stored (structured array), with slice semantics for the bounds.

        Only these rows are read. Their times must be finite and monotonic and (unless
        ``check_finite=False``, for a reader that handles bad samples itself, such as the
        replay source with ``nonfinite=drop``) their samples finite, else ``SessionFileError``.
        """
        self._require_open()
        a, b, _ = slice(start, stop).indices(self._n)
        b = max(a, b)
        with self._h5_errors(f"reading rows {a}:{b}"):
            rows = self._ds[a:b]  # (n,) structured
        self._check_times(rows[self.TIMESTAMPS], a)
        if check_finite and self._profile.sample_format == "float32":
            for name in self.band_fields:
                finite = np.isfinite(rows[name]).all(axis=1)  # (n,)
                if not finite.all():
                    bad = a + int(np.argmin(finite))
                    raise SessionFileError(self.path, f"non-finite EMG sample (NaN or inf) in {name} at row {bad}")
        return rows

    def rows_to_emg(self, rows: np.ndarray) -> np.ndarray:
        """Structured rows -> (n, n_bands, C) float32 microvolts, bands in profile order (left, right)."""
        stacked = np.stack([rows[name] for name in self.band_fields], axis=1)  # (n, n_bands, C) stored units
        return counts_to_microvolts(stacked, self._profile)

    def read(self, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """EMG rows ``[start, stop)`` as (n, n_bands, C) float32 microvolts (int16 counts are scaled)."""
        return self.rows_to_emg(self.read_raw(start, stop))

    def index_range(self, start_t: float = -math.inf, end_t: float = math.inf) -> tuple[int, int]:
        """Row range ``[a, b)`` of samples with ``start_t <= time < end_t`` (emg2qwerty's ``searchsorted``)."""
        a, b = self.timestamps.searchsorted([start_t, end_t])
        return int(a), int(b)

    def slice_time(self, start_t: float = -math.inf, end_t: float = math.inf) -> np.ndarray:
        """Stored rows between two unix times, as emg2qwerty's ``slice``."""
        return self.read_raw(*self.index_range(start_t, end_t))

    def ground_truth(self, start_t: float = -math.inf, end_t: float = math.inf) -> LabelData:
        """Labels in ``[start_t, end_t]``: keystrokes when typing on a keyboard, prompts otherwise.

        Same result as emg2qwerty's linear scan; because the open checks
        guarantee start order, a binary search first narrows the list to the
        window, so a long session costs O(log n) per training window.
        """
        kind = self.KEYSTROKES if self.condition == "on_keyboard" else self.PROMPTS
        events = self._meta[kind]
        if kind not in self._starts:
            self._starts[kind] = np.array([float(e["start"]) for e in events], dtype=np.float64)  # (n,)
        a = int(self._starts[kind].searchsorted(start_t, side="left"))
        b = int(self._starts[kind].searchsorted(end_t, side="right"))
        if kind == self.KEYSTROKES:
            return LabelData.from_keystrokes(events[a:b], start_t=start_t, end_t=end_t)
        return LabelData.from_prompts(events[a:b], start_t=start_t, end_t=end_t)

    def validate(self, full: bool = True) -> None:
        """Check the data itself, block by block; raise ``SessionFileError`` on the first problem.

        ``full=False`` checks the timestamps (finite, monotonic); ``full=True``
        also reads every EMG sample and checks it is finite. The header checks
        already ran when the file was opened.
        """
        if not full:
            self.timestamps  # noqa: B018 (reading them is the check)
            return
        prev_t = -math.inf
        for a in range(0, self._n, _SCAN_ROWS):
            rows = self.read_raw(a, a + _SCAN_ROWS)
            first = float(rows[self.TIMESTAMPS][0])
            if first < prev_t:
                raise SessionFileError(self.path, f"timestamps are not monotonic at row {a}")
            prev_t = float(rows[self.TIMESTAMPS][-1])

    # ---- checks ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _h5_errors(self, doing: str) -> Iterator[None]:
        """Turn h5py's low-level failures (truncated or corrupt data) into SessionFileError."""
        try:
            yield
        except SessionFileError:
            raise
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:
            # ValueError/TypeError: h5py decoding garbage (bad UTF-8, impossible float types) in a corrupt header.
            raise SessionFileError(self.path, f"HDF5 error while {doing} (corrupt or truncated file?): {exc}") from exc

    def _fail(self, problem: str) -> SessionFileError:
        return SessionFileError(self.path, problem)

    def _check_times(self, ts: np.ndarray, offset: int) -> None:
        if not np.isfinite(ts).all():
            bad = offset + int(np.argmin(np.isfinite(ts)))
            raise self._fail(f"non-finite timestamp at row {bad}")
        if len(ts) > 1:
            steps = np.diff(ts)  # (n-1,)
            if not (steps >= 0).all():
                bad = offset + 1 + int(np.argmin(steps >= 0))
                raise self._fail(
                    f"timestamps are not monotonic at row {bad} ({ts[bad - offset - 1]!r} -> {ts[bad - offset]!r})"
                )

    def _open_checks(self) -> None:
        f = self._file
        group = f.get(self.HDF5_GROUP)
        if not isinstance(group, h5py.Group):
            raise self._fail(f"no {self.HDF5_GROUP!r} group (not an emg2qwerty-format session file)")
        ds = group.get(self.TIMESERIES)
        if not isinstance(ds, h5py.Dataset):
            raise self._fail(f"no {self.HDF5_GROUP}/{self.TIMESERIES} dataset")
        if ds.ndim != 1 or ds.dtype.fields is None:
            raise self._fail(f"{self.TIMESERIES} must be a 1-D compound dataset, got shape {ds.shape} dtype {ds.dtype}")
        self._ds = ds
        self._n = int(ds.shape[0])
        self._meta = self._read_attrs(group)
        self._profile = self._resolve_profile()
        self._check_fields()
        if self._n < 2:
            raise self._fail(f"{self.TIMESERIES} has {self._n} rows; a session needs at least 2")
        probe = np.asarray(ds.fields(self.TIMESTAMPS)[: min(self._n, _RATE_PROBE_ROWS)], dtype=np.float64)  # (P,)
        self._check_times(probe, 0)
        self._t_first = float(probe[0])
        self._t_last = float(ds.fields(self.TIMESTAMPS)[self._n - 1 : self._n][0])
        if not math.isfinite(self._t_last) or self._t_last < float(probe[-1]):
            raise self._fail(f"last timestamp {self._t_last!r} is not finite or precedes earlier ones")
        self._check_rate(probe)
        self._check_duration()
        self._meta[self.KEYSTROKES] = _check_events(
            self._meta[self.KEYSTROKES], "keystroke", self._t_first, self._t_last, TIME_SLACK_S, self._fail
        )
        self._meta[self.PROMPTS] = _check_events(
            self._meta[self.PROMPTS], "prompt", self._t_first, self._t_last, TIME_SLACK_S, self._fail
        )

    def _read_attrs(self, group: h5py.Group) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        for key, val in group.attrs.items():
            if isinstance(val, bytes):
                val = val.decode("utf-8")
            elif isinstance(val, np.generic):
                val = val.item()
            if key in self.JSON_ATTRS:
                try:
                    val = json.loads(val)
                except (TypeError, ValueError) as exc:
                    raise self._fail(f"attribute {key!r} is not valid JSON: {exc}") from exc
            meta[key] = val
        missing = [k for k in self.REQUIRED_ATTRS if k not in meta]
        if missing:
            raise self._fail(f"missing attribute(s) {missing} on group {self.HDF5_GROUP!r}")
        for key in (self.SESSION_NAME, self.USER, self.CONDITION):
            if not isinstance(meta[key], str):
                raise self._fail(f"attribute {key!r} must be a string, got {meta[key]!r}")
        dur = meta[self.DURATION_MINS]
        if isinstance(dur, bool) or not isinstance(dur, int | float) or not math.isfinite(dur) or dur < 0:
            raise self._fail(f"attribute {self.DURATION_MINS!r} must be a finite non-negative number, got {dur!r}")
        return meta

    def _resolve_profile(self) -> DeviceProfile:
        present = [k for k in self.DEVICE_ATTRS if k in self._meta]
        if not present:
            return EMG2QWERTY  # a published emg2qwerty file; _check_fields and _check_rate confirm it fits
        if len(present) != len(self.DEVICE_ATTRS):
            missing = sorted(set(self.DEVICE_ATTRS) - set(present))
            raise self._fail(f"incomplete emgkey device attributes: missing {missing}")
        version = self._meta[self.FORMAT_VERSION]
        if version != FORMAT_VERSION:
            raise self._fail(f"{self.FORMAT_VERSION} is {version!r}; this emgkey reads version {FORMAT_VERSION}")
        spec = self._meta[self.PROFILE]
        if not isinstance(spec, dict):
            raise self._fail(f"attribute {self.PROFILE!r} must be a JSON object, got {spec!r}")
        try:
            profile = DeviceProfile.from_dict(spec)
        except (TypeError, ValueError, AssertionError) as exc:
            raise self._fail(f"attribute {self.PROFILE!r} is not a valid device profile: {exc}") from exc
        flat = {
            self.SAMPLE_RATE_HZ: profile.sample_rate_hz,
            self.CHANNELS_PER_BAND: profile.channels_per_band,
            self.SAMPLE_FORMAT: profile.sample_format,
            self.ADC_SCALE: profile.adc_scale_uv_per_count,
        }
        for key, expected in flat.items():
            if self._meta[key] != expected:
                raise self._fail(f"attribute {key}={self._meta[key]!r} disagrees with the profile's {expected!r}")
        return profile

    def _check_fields(self) -> None:
        fields = self._ds.dtype.fields
        assert fields is not None, "checked in _open_checks"
        p = self._profile
        want = storage_dtype(p)
        time_field = fields.get(self.TIMESTAMPS)
        if time_field is None:
            raise self._fail(f"{self.TIMESERIES} has no {self.TIMESTAMPS!r} field (fields: {list(fields)})")
        t_dtype = time_field[0]
        if t_dtype.shape != () or t_dtype.kind != "f" or t_dtype.itemsize != 8:
            raise self._fail(f"field {self.TIMESTAMPS!r} must be scalar float64, got {t_dtype}")
        for name in self.band_fields:
            if name not in fields:
                raise self._fail(f"{self.TIMESERIES} has no {name!r} field (fields: {list(fields)})")
            dtype = fields[name][0]
            base = dtype.base
            if dtype.shape != (p.channels_per_band,):
                raise self._fail(
                    f"field {name!r} has shape {dtype.shape} per row; profile {p.name!r} has "
                    f"{p.channels_per_band} channels per band"
                )
            if base.kind != want.kind or base.itemsize != want.itemsize:
                raise self._fail(f"field {name!r} stores {base}, profile {p.name!r} stores {p.sample_format}")

    def _check_rate(self, probe: np.ndarray) -> None:
        spacing = float(np.median(np.diff(probe)))
        if spacing <= 0:
            raise self._fail("timestamps do not advance (median spacing is zero)")
        rate = 1.0 / spacing
        nominal = self._profile.sample_rate_hz
        if abs(rate / nominal - 1.0) > RATE_TOL_FRAC:
            raise self._fail(
                f"timestamps advance at {rate:.1f} Hz but profile {self._profile.name!r} samples at {nominal:g} Hz"
            )

    def _check_duration(self) -> None:
        span_s = self._t_last - self._t_first
        stated_s = 60.0 * self.duration_mins
        if abs(stated_s - span_s) > max(DURATION_TOL_S, DURATION_TOL_FRAC * span_s):
            raise self._fail(
                f"{self.DURATION_MINS}={self.duration_mins:.4f} but the timestamps span {span_s / 60.0:.4f} minutes"
            )


def _is_time(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _check_events(
    events: object,
    kind: str,
    t_first: float,
    t_last: float,
    slack_s: float,
    fail: Any,
) -> list[dict[str, Any]]:
    """Check keystroke or prompt dicts: well-formed, in start order, starting inside the recording.

    ``fail(problem)`` builds the exception to raise, so the same rules serve the
    reader (SessionFileError naming the file) and the writer (ValueError).
    """
    if not isinstance(events, list):
        raise fail(f"{kind}s must be a JSON list, got {type(events).__name__}")
    out: list[dict[str, Any]] = []
    prev = -math.inf
    for i, ev in enumerate(events):
        if not isinstance(ev, Mapping):
            raise fail(f"{kind} {i} is not an object: {ev!r}")
        start, end = ev.get("start"), ev.get("end")
        if not _is_time(start) or not _is_time(end):
            raise fail(f"{kind} {i} needs finite numeric 'start' and 'end', got {start!r}, {end!r}")
        assert isinstance(start, int | float) and isinstance(end, int | float), "checked by _is_time"
        if end < start:
            raise fail(f"{kind} {i} ends ({end!r}) before it starts ({start!r})")
        if start < prev:
            raise fail(f"{kind}s are not in start order at {kind} {i}")
        prev = start
        if not t_first - slack_s <= start <= t_last + slack_s:
            raise fail(f"{kind} {i} starts at {start!r}, outside the recording's time range [{t_first!r}, {t_last!r}]")
        if kind == "keystroke":
            if not isinstance(ev.get("key"), str):
                raise fail(f"keystroke {i} needs a string 'key', got {ev.get('key')!r}")
        else:
            if "payload" not in ev:
                raise fail(f"prompt {i} has no 'payload' (use null for an empty one)")
            payload = ev["payload"]
            if payload is not None and not (isinstance(payload, Mapping) and isinstance(payload.get("text"), str)):
                raise fail(f"prompt {i} payload must be null or an object with a string 'text', got {payload!r}")
        out.append(dict(ev))
    return out


def _plain(x: Any) -> Any:
    """numpy scalars -> Python, for json.dumps."""
    return x.item() if isinstance(x, np.generic) else x


def write_session(
    path: str | Path,
    *,
    profile: DeviceProfile,
    timestamps: np.ndarray,
    emg: np.ndarray,
    keystrokes: Sequence[Mapping[str, Any]],
    prompts: Sequence[Mapping[str, Any]],
    session_name: str,
    user: str,
    condition: str = "on_keyboard",
    extra_attrs: Mapping[str, Any] | None = None,
    compress: bool = False,
    chunk_rows: int | None = None,
) -> Path:
    """Write one session in emg2qwerty's layout plus emgkey's device attributes; return ``path``.

    ``timestamps`` is (T,) float64 unix seconds, non-decreasing, spaced at the
    profile's rate; ``emg`` is (T, n_bands, C) in the profile's storage dtype
    (float32 microvolts or int16 counts), bands in profile order (left, right).
    Keystrokes and prompts must be in start order and start inside the
    recording. Bad inputs raise ``ValueError`` before anything is written; the
    file appears at ``path`` complete or not at all. Chunks hold about one
    second of rows so a training window touches a few chunks; gzip is off by
    default because reading speed matters more than disk here.
    """
    if not isinstance(profile, DeviceProfile):
        raise ValueError(f"profile must be a DeviceProfile, got {type(profile).__name__}")

    def fail(problem: str) -> ValueError:
        return ValueError(f"write_session({str(path)!r}): {problem}")

    ts = np.asarray(timestamps)
    if ts.dtype != np.float64 or ts.ndim != 1:
        raise fail(f"timestamps must be (T,) float64 unix seconds, got {ts.shape} {ts.dtype}")
    n = len(ts)
    if n < 2:
        raise fail(f"need at least 2 samples, got {n}")
    if not np.isfinite(ts).all():
        raise fail("timestamps contain NaN or inf")
    if not (np.diff(ts) >= 0).all():
        raise fail("timestamps are not monotonic")
    spacing = float(np.median(np.diff(ts[:_RATE_PROBE_ROWS])))
    if spacing <= 0 or abs(1.0 / (spacing * profile.sample_rate_hz) - 1.0) > RATE_TOL_FRAC:
        raise fail(f"timestamps' median spacing {spacing!r} s does not match {profile.sample_rate_hz:g} Hz")
    want_shape = (n, profile.n_bands, profile.channels_per_band)
    if emg.shape != want_shape:
        raise fail(f"emg must have shape (T, n_bands, C) = {want_shape}, got {emg.shape}")
    want_dtype = storage_dtype(profile)
    if emg.dtype.kind != want_dtype.kind or emg.dtype.itemsize != want_dtype.itemsize:
        raise fail(f"emg must be {profile.sample_format} for profile {profile.name!r}, got {emg.dtype}")
    if emg.dtype.kind == "f" and not np.isfinite(emg).all():
        raise fail("emg contains NaN or inf")
    for key, val in (("session_name", session_name), ("user", user), ("condition", condition)):
        if not isinstance(val, str) or not val:
            raise fail(f"{key} must be a non-empty string, got {val!r}")
    t_first, t_last = float(ts[0]), float(ts[-1])
    ks = [
        {k: _plain(v) for k, v in d.items()}
        for d in _check_events(list(keystrokes), "keystroke", t_first, t_last, 0.0, fail)
    ]
    ps = [dict(d) for d in _check_events(list(prompts), "prompt", t_first, t_last, 0.0, fail)]
    extra = dict(extra_attrs or {})
    reserved = set(SessionFile.REQUIRED_ATTRS) | set(SessionFile.DEVICE_ATTRS)
    clash = sorted(reserved & set(extra))
    if clash:
        raise fail(f"extra_attrs may not set reserved attributes {clash}")

    S = SessionFile
    attrs: dict[str, Any] = {
        S.SESSION_NAME: session_name,
        S.USER: user,
        S.CONDITION: condition,
        S.DURATION_MINS: (t_last - t_first) / 60.0,
        S.KEYSTROKES: json.dumps(ks),
        S.PROMPTS: json.dumps(ps),
        S.FORMAT_VERSION: FORMAT_VERSION,
        S.PROFILE: json.dumps(profile.to_dict()),
        S.SAMPLE_RATE_HZ: float(profile.sample_rate_hz),
        S.CHANNELS_PER_BAND: int(profile.channels_per_band),
        S.SAMPLE_FORMAT: profile.sample_format,
        S.ADC_SCALE: float(profile.adc_scale_uv_per_count),
        **extra,
    }
    dtype = timeseries_dtype(profile)
    rows_per_chunk = chunk_rows or max(1, min(n, round(profile.sample_rate_hz)))
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            group = f.create_group(S.HDF5_GROUP)
            ds = group.create_dataset(
                S.TIMESERIES,
                shape=(n,),
                dtype=dtype,
                chunks=(rows_per_chunk,),
                compression="gzip" if compress else None,
            )
            for a in range(0, n, _SCAN_ROWS):
                b = min(n, a + _SCAN_ROWS)
                rows = np.empty(b - a, dtype=dtype)  # (block,) structured
                rows[S.TIMESTAMPS] = ts[a:b]
                for i, band in enumerate(profile.band_names):
                    rows[band_field(band)] = emg[a:b, i]  # (block, C)
                ds[a:b] = rows
            for key, val in attrs.items():
                group.attrs[key] = val
    log.debug("wrote %s: %s, %d samples, %d keystrokes", path, profile.name, n, len(ks))
    return Path(path)
