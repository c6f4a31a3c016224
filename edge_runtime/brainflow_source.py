"""``brainflow://BOARD``: any board BrainFlow supports, as a source (BrainFlow is optional).

    brainflow://cyton?serial_port=/dev/ttyUSB0                 # OpenBCI Cyton: 1 band x 8 channels, 250 Hz
    brainflow://synthetic?bands=2                              # BrainFlow's synthetic board: 2 x 8, 250 Hz
    brainflow://0?serial_port=/dev/ttyUSB0&profile=cyton8      # board by number, checked against a profile
    brainflow://cyton_daisy?serial_port=COM3&channels=1,2,3,4,5,6,7,8

The board is named as in ``BoardIds`` (case-insensitive, ``_BOARD`` optional:
``cyton``, ``CYTON_BOARD``, ``synthetic``) or by number. Every field of
``BrainFlowInputParams`` (``serial_port``, ``mac_address``, ``ip_address``,
``ip_port``, ``serial_number``, ``timeout``, ``file``, ...) is a URL parameter.

Rate and channels come from BrainFlow's board descriptor, not from constants:
the sample rate is ``sampling_rate``, the electrode rows are ``emg_channels``
(else ``exg_channels``, else ``eeg_channels``), or ``channels=`` rows given
explicitly. Rows are assigned band-major: with ``bands=B`` and C = rows / B,
board row ``rows[b * C + i]`` becomes band ``b`` channel ``i``.

Channel map: a source delivers channels in the profile's *board* order, the
order in which session files and the simulator store them (the simulator's
front end applies ``profile.channel_map``: "board channel i carries electrode
channel_map[i]"). So the map is not applied again here; it tells which
electrode each delivered channel is. If the amplifier is wired in a different
order from the profile's board, list its rows in the profile's board order with
``channels=``.

The profile: ``profile=`` (or the ``profile`` argument) is checked against the
board (rate, band x channel count; a mismatch is a ``SourceError``); without
one, a profile is derived from the descriptor (``board_profile``).

Gaps: boards with a ``package_num_channel`` (the Cyton's 0..255 sample counter)
are checked for counter jumps; a jump of k reports ``k - 1`` missing samples
(``GapEvent(reason="counter")``; ``counter_gaps=0`` turns this off, e.g. for a
board that counts packets of several samples). Counter gaps of 256 samples or
more alias and cannot be seen. NaN/inf from a driver are dropped as invalid
gaps (``nonfinite=drop``).

Install: ``brainflow==5.23.0``. Its Python package loads its native library
through ``pkg_resources`` on Python 3.11, which setuptools 81 removed, so it
also needs ``setuptools<81``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np

from emgkey.edge_runtime.sources import (
    BufferConfig,
    GapReason,
    MissingDependencyError,
    Source,
    SourceError,
    SourceStats,
    SourceURL,
    UrlParams,
)
from emgkey.errors import ConfigError
from emgkey.profiles import ARMBAND8, DeviceProfile

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'brainflow==5.23.0' 'setuptools<81'"

# BrainFlowInputParams fields (stable across BrainFlow 5.x) and their types, so URLs are checked without brainflow.
INPUT_PARAMS: dict[str, type] = {
    "serial_port": str,
    "mac_address": str,
    "ip_address": str,
    "ip_address_aux": str,
    "ip_address_anc": str,
    "ip_port": int,
    "ip_port_aux": int,
    "ip_port_anc": int,
    "ip_protocol": int,
    "other_info": str,
    "timeout": int,
    "serial_number": str,
    "file": str,
    "file_aux": str,
    "file_anc": str,
    "master_board": int,
}
COUNTER_MODULO = 256  # BrainFlow stores the boards' u8 packet counters


def import_brainflow() -> ModuleType:
    """``brainflow.board_shim``, or a ``MissingDependencyError`` saying how to install it."""
    try:
        from brainflow import board_shim
    except ImportError as exc:
        raise MissingDependencyError(
            f"brainflow:// sources need BrainFlow, which is not installed: {INSTALL_HINT}"
        ) from exc
    return board_shim


def resolve_board_id(board: str | int) -> int:
    """``cyton`` / ``CYTON_BOARD`` / ``0`` -> 0. Unknown names raise ``ConfigError`` listing close ones."""
    if isinstance(board, int) or str(board).lstrip("-").isdigit():
        return int(board)
    ids = import_brainflow().BoardIds
    name = str(board).strip().upper().replace("-", "_")
    for cand in (name, f"{name}_BOARD"):
        if cand in ids.__members__:
            return int(ids[cand].value)
    close = sorted(m for m in ids.__members__ if name.split("_")[0] in m)[:10]
    raise ConfigError(f"unknown BrainFlow board {board!r}; similar: {close or 'none'} (or give the board id number)")


def electrode_rows(descr: Mapping[str, Any]) -> list[int]:
    """The rows of a board descriptor that carry electrode signals: emg, else exg, else eeg channels."""
    for key in ("emg_channels", "exg_channels", "eeg_channels"):
        rows = descr.get(key)
        if rows:
            return [int(r) for r in rows]
    raise ConfigError(f"BrainFlow board {descr.get('name')!r} has no emg/exg/eeg channels; give channels=")


def board_profile(name: str, sample_rate_hz: float, n_channels: int, bands: int = 1) -> DeviceProfile:
    """A profile for a board nobody described: its rate and channels, electrodes evenly around the band.

    The analogue front-end fields (high-pass, anti-alias) are unknown for an arbitrary board and only
    matter to the simulator; a model should be paired with the profile it was trained on (``profile=``).
    """
    if n_channels % bands:
        raise ConfigError(f"{n_channels} channels do not split into {bands} bands")
    c = n_channels // bands
    return DeviceProfile(
        name=f"brainflow-{name.lower()}",
        channels_per_band=c,
        sample_rate_hz=float(sample_rate_hz),
        sample_format="float32",
        adc_scale_uv_per_count=1.0,
        adc_bits=24,
        electrode_angles_deg=tuple(360.0 * i / c for i in range(c)),
        electrode_width_deg=ARMBAND8.electrode_width_deg,
        highpass_hz=0.0,  # unknown: the board's own front end
        anti_alias_hz=None,
        serial_baud=0,
        samples_per_packet=1,
        n_bands=bands,
        band_names=("right",) if bands == 1 else ("left", "right"),
    )


class BrainFlowSource(Source):
    scheme = "brainflow"

    def __init__(
        self,
        board: str | int,
        params: Mapping[str, str | int] | None = None,
        profile: DeviceProfile | None = None,
        *,
        channels: Sequence[int] | None = None,
        bands: int | None = None,
        poll_s: float = 0.02,
        stream_buffer: int = 450_000,
        counter_gaps: bool = True,
        buffer: BufferConfig | None = None,
    ) -> None:
        unknown = set(params or {}) - set(INPUT_PARAMS)
        if unknown:
            raise ConfigError(f"unknown BrainFlowInputParams field(s) {sorted(unknown)}; known: {sorted(INPUT_PARAMS)}")
        assert poll_s > 0 and stream_buffer > 0, "poll_s and stream_buffer must be positive"
        super().__init__(f"brainflow://{board}", None, buffer)
        self.board = board
        self.params = dict(params or {})
        self._want_profile = profile
        self._channels = list(channels) if channels is not None else None
        self._bands = bands
        self.poll_s = poll_s
        self.stream_buffer = stream_buffer
        self.counter_gaps = counter_gaps
        self.board_id: int | None = None
        self.descriptor: dict[str, Any] = {}
        self.rows: list[int] = []  # board rows, band-major, in the profile's board channel order
        self._shim: Any = None
        self._bf: ModuleType | None = None
        self._counter_row: int | None = None
        self._last_counter: int | None = None
        self._stop_evt = threading.Event()
        self._thread: threading.Thread | None = None
        self._counter_missing = 0  # samples the packet counter says were lost

    @classmethod
    def from_url(cls, url: SourceURL, profile: DeviceProfile | str | None = None) -> BrainFlowSource:
        if not url.target:
            raise ConfigError(f"brainflow URL {url.url!r} names no board: brainflow://cyton?serial_port=...")
        p = UrlParams(url)
        prof = p.profile(profile)
        params: dict[str, str | int] = {}
        for key, kind in INPUT_PARAMS.items():
            value = p.get(key, kind, None)
            if value is not None:
                params[key] = value
        channels = p.get("channels", _int_list, None)
        bands = p.get("bands", int, None)
        poll_s = p.get("poll_s", float, 0.02)
        counter_gaps = p.get("counter_gaps", lambda s: s.strip().lower() in ("1", "true", "yes", "on"), True)
        buffer = p.buffer(cls.default_buffer)
        p.finish()
        return cls(
            url.target,
            params,
            prof,
            channels=channels,
            bands=bands,
            poll_s=poll_s,
            counter_gaps=counter_gaps,
            buffer=buffer,
        )

    # --- lifecycle ---------------------------------------------------------------------------------------------------

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        """Run a BoardShim call; BrainFlow's errors become ``SourceError`` carrying BrainFlow's exit code."""
        assert self._bf is not None
        try:
            return fn(*args)
        except self._bf.BrainFlowError as exc:
            code = getattr(exc, "exit_code", None)
            raise SourceError(self.name, f"{what} failed: {exc}", code=f"brainflow_exit_{code}") from exc

    def _open(self) -> None:
        bf = import_brainflow()
        self._bf = bf
        try:
            self.board_id = board_id = resolve_board_id(self.board)
            self.descriptor = descr = dict(self._call("get_board_descr", bf.BoardShim.get_board_descr, board_id))
        except ModuleNotFoundError as exc:  # brainflow's loader falls back to pkg_resources on Python 3.11
            raise MissingDependencyError(
                f"BrainFlow cannot load its native library ({exc}); it needs setuptools<81: {INSTALL_HINT}"
            ) from exc
        rate = float(descr["sampling_rate"])
        rows = self._channels if self._channels is not None else electrode_rows(descr)
        n_rows = int(descr["num_rows"])
        bad = [r for r in rows if not 0 <= r < n_rows]
        if bad:
            raise ConfigError(f"{self.name}: rows {bad} do not exist (board has {n_rows} rows)")
        want = self._want_profile
        bands = self._bands or (want.n_bands if want is not None else 1)
        if want is not None:
            if want.sample_rate_hz != rate or want.n_channels != len(rows) or want.n_bands != bands:
                raise SourceError(
                    self.name,
                    f"board {descr.get('name')} streams {len(rows)} channels at {rate:g} Hz (as {bands} band(s)); "
                    f"profile {want.name} needs {want.n_bands}x{want.channels_per_band} at {want.sample_rate_hz:g} Hz",
                    code="profile",
                )
            prof = want
        else:
            prof = board_profile(str(descr.get("name", self.board)), rate, len(rows), bands)
        self.rows = list(rows)
        self._counter_row = int(descr["package_num_channel"]) if "package_num_channel" in descr else None
        self._configure(prof)
        ip = bf.BrainFlowInputParams()
        for key, value in self.params.items():
            setattr(ip, key, value)
        self._shim = bf.BoardShim(board_id, ip)
        self._call("prepare_session", self._shim.prepare_session)

    def _start_stream(self) -> None:
        self._call("start_stream", self._shim.start_stream, self.stream_buffer)
        self._stop_evt.clear()
        self._thread = threading.Thread(target=self._run, name=f"brainflow-source {self.board}", daemon=True)
        self._thread.start()

    def _stop_stream(self) -> None:
        self._stop_evt.set()
        if self._thread is not None:
            self._thread.join(5.0)
            if self._thread.is_alive():
                raise SourceError(self.name, "reader thread did not stop", code="thread")
            self._thread = None
        self._call("stop_stream", self._shim.stop_stream)
        self._drain()  # what arrived between the last poll and the stop

    def _release(self) -> None:
        if self._shim is not None:
            shim, self._shim = self._shim, None
            self._call("release_session", shim.release_session)

    def _update_stats(self, st: SourceStats) -> None:
        st.dropped_packets = self._counter_missing  # one packet per sample on counter-checked boards

    # --- reader thread -----------------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop_evt.wait(self.poll_s):
                self._drain()
        except BaseException as exc:  # the next read() raises it
            log.error("%s: reader thread failed: %r", self.name, exc)
            self._fail(exc)

    def _drain(self) -> None:
        data = self._call("get_board_data", self._shim.get_board_data)  # (num_rows, n) float64, consumed
        n = int(data.shape[1])
        if n == 0:
            return
        prof = self.profile
        samples = np.ascontiguousarray(data[self.rows].T)  # (n, bands * C), band-major
        samples = samples.reshape(n, prof.n_bands, prof.channels_per_band)  # (n, bands, C)
        if not (self.counter_gaps and self._counter_row is not None):
            self._push_samples(samples)
            return
        counters = data[self._counter_row].astype(np.int64)  # (n,)
        prev = counters[0] - 1 if self._last_counter is None else self._last_counter
        steps = np.diff(counters, prepend=prev) % COUNTER_MODULO  # (n,) 1 when nothing is missing
        self._last_counter = int(counters[-1])
        jumps = np.flatnonzero(steps > 1)
        start = 0
        for j in jumps.tolist():
            if j > start:
                self._push_samples(samples[start:j])
            self._push_gap(int(steps[j]) - 1, GapReason.COUNTER)
            self._counter_missing += int(steps[j]) - 1
            start = j
        self._push_samples(samples[start:])


def _int_list(raw: str) -> list[int]:
    out = [int(v) for v in raw.split(",") if v.strip()]
    if not out:
        raise ValueError("expected a comma-separated list of row numbers")
    return out
