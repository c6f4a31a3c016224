"""One interface over every place sEMG samples come from, chosen by URL (BrainFlow's "one facade, many boards").

    with open_source("serial:///dev/ttyUSB0?profile=armband8") as src:   # __enter__ starts it
        while not src.ended:
            x = src.read(40, timeout=1.0)        # (n <= 40, n_bands, C) float32 microvolts
            for ev in src.read_events():         # discontinuities *before* x: reset or pad
                ...
            feed(x)

Sources (``open_source`` schemes):

==================  ======================================================================================
``serial://PORT``   the armband over a serial port, protocol v1 (``serial_source.SerialSource``)
``sim://``          the simulator in-process, with ground truth (``sim_source.SimSource``)
``replay://FILE``   a recorded session file (``replay_source.ReplaySource``)
``brainflow://B``   any BrainFlow board, e.g. ``cyton`` (``brainflow_source.BrainFlowSource``, optional)
==================  ======================================================================================

Lifecycle (explicit, as BrainFlow's prepare -> start -> read -> stop -> release):
``start()`` opens what the source needs (port, handshake, file) the first time
and starts streaming; ``read`` / ``read_chunk`` take samples; ``stop()`` stops
streaming (``start()`` resumes); ``close()`` releases everything and is
idempotent. The context manager starts on enter and closes on exit.

Samples and discontinuities: every sample has a *stream index* (0, 1, 2, ...),
which also counts samples known to be missing, so ``index / sample_rate_hz``
is the time since the stream began. A read never returns samples that straddle
a discontinuity; the discontinuity is an event placed before the next sample:
``GapEvent(at, n_missing, reason)`` (samples lost on the link, on the device,
in this process's buffer, or dropped as invalid) or ``RestartEvent(at)`` (the
device rebooted or the stream restarted: nothing before can be joined to what
follows). ``read_chunk`` returns them with the samples; ``read`` queues them
for ``read_events``. A gap is never silently glued.

Buffering: each source owns a fixed-capacity ``RingBuffer`` (``buffer_s``
seconds). A live source's reader thread writes it; when the consumer falls
behind, ``overflow=drop_oldest`` (default) discards the oldest samples and
reports them as a ``GapEvent(reason="buffer_overflow")``, ``overflow=raise``
makes the next read raise ``SourceOverflowError``. Pull sources (simulator,
replay) produce samples when read, paced by the wall clock in real-time mode
(and overflow the same way when the consumer is slower than real time).
Every block passes ``validate.SampleValidator`` first: wrong channel counts
raise, NaN/inf rows are dropped as gaps (or raise, per ``nonfinite``).

Common URL parameters: ``buffer_s`` (default 30), ``overflow`` (``drop_oldest``
| ``raise``), ``nonfinite`` (``drop`` | ``raise``), ``profile`` (a name from
``emgkey.profiles``). Unknown parameters are an error.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import math
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from enum import Enum
from types import TracebackType
from typing import Any, ClassVar, TypeVar

import numpy as np

from emgkey.edge_runtime.ringbuffer import OverflowPolicy, RingBuffer
from emgkey.edge_runtime.validate import NonFinitePolicy, SampleValidator
from emgkey.errors import ConfigError, EmgkeyError
from emgkey.profiles import DeviceProfile, get_profile

T = TypeVar("T")
S = TypeVar("S", bound="Source")


# ---------------------------------------------------------------------------------------------------------------------
# Errors


class SourceError(EmgkeyError, RuntimeError):
    """A source failed: cannot open, no handshake, device refused, lost for good. ``code`` says which."""

    def __init__(self, source: str, problem: str, code: str = "source_error") -> None:
        self.source = source
        self.problem = problem
        self.code = code
        super().__init__(f"{source}: {problem}")


class SourceStateError(SourceError):
    """A lifecycle call in the wrong state (read before start, start after close)."""

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(source, problem, code="state")


class SourceOverflowError(SourceError):
    """The consumer fell behind and the buffer's policy is ``raise``."""

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(source, problem, code="overflow")


class MissingDependencyError(EmgkeyError, ImportError):
    """An optional package a source needs is not installed."""


# ---------------------------------------------------------------------------------------------------------------------
# Events, chunks, stats


class GapReason(str, Enum):
    LINK = "link"  # packets lost or damaged on the link (CRC failures, dropped bytes, a disconnect)
    DEVICE_OVERFLOW = "device_overflow"  # the device's TX buffer overflowed (it said so)
    BUFFER_OVERFLOW = "buffer_overflow"  # this process's ring buffer dropped unread samples (consumer too slow)
    INVALID = "invalid"  # samples dropped by validation (NaN / inf)
    TIMESTAMPS = "timestamps"  # a recorded file's timestamps jump over missing samples
    COUNTER = "counter"  # a board's packet counter skipped (BrainFlow boards)


@dataclass(frozen=True)
class GapEvent:
    """``n_missing`` samples at stream indices ``[at, at + n_missing)`` are missing."""

    at: int
    n_missing: int
    reason: GapReason

    @property
    def stop(self) -> int:
        return self.at + self.n_missing


@dataclass(frozen=True)
class RestartEvent:
    """The stream restarted at ``at`` (device reboot, new recording): do not join across it."""

    at: int
    reason: str


SourceEvent = GapEvent | RestartEvent


@dataclass(frozen=True, eq=False)
class Chunk:
    """Contiguous samples from stream index ``start``; ``events`` happened just before ``samples[0]``."""

    start: int
    samples: np.ndarray  # (n, n_bands, C) float32 microvolts
    events: tuple[SourceEvent, ...] = ()

    @property
    def n(self) -> int:
        return int(self.samples.shape[0])

    @property
    def stop(self) -> int:
        return self.start + self.n


@dataclass
class SourceStats:
    """What a source saw. Fields that do not apply to a source stay 0.

    Invariant (once everything is read): ``samples_read + samples_missing == stream_end``.
    """

    samples_in: int = 0  # sample rows produced by the device / simulator / file (before validation)
    samples_read: int = 0  # delivered to the consumer
    stream_end: int = 0  # stream index one past the last sample or gap produced
    gaps: int = 0  # gap events produced (link, device, invalid, buffer overflow, ...)
    samples_missing: int = 0  # samples those gaps stand for
    restarts: int = 0
    invalid_samples: int = 0  # rows dropped by validation (NaN / inf)
    buffer_dropped: int = 0  # unread samples discarded by overflow=drop_oldest
    # Link-level counters (serial protocol / BrainFlow):
    bytes_in: int = 0
    packets: int = 0  # packets decoded
    dropped_packets: int = 0  # packets missing by sequence number
    crc_errors: int = 0  # frame CRC-32 failures
    header_errors: int = 0  # header CRC-16 failures (incl. false syncs)
    bytes_skipped: int = 0  # bytes discarded while resynchronising
    resyncs: int = 0  # times the decoder lost lock on the frame sequence
    device_overflows: int = 0  # packets flagged by the device as following its own overflow
    duplicates: int = 0
    late: int = 0
    reconnects: int = 0  # successful reconnections after the link was lost
    connect_failures: int = 0  # failed attempts to (re)open / handshake

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class SourceState(str, Enum):
    CREATED = "created"
    STREAMING = "streaming"
    STOPPED = "stopped"
    CLOSED = "closed"


@dataclass(frozen=True)
class BufferConfig:
    """The per-source buffer: capacity in seconds, overflow and non-finite policies."""

    buffer_s: float = 30.0
    overflow: OverflowPolicy = OverflowPolicy.DROP_OLDEST
    nonfinite: NonFinitePolicy = NonFinitePolicy.DROP

    def __post_init__(self) -> None:
        if not (self.buffer_s > 0 and math.isfinite(self.buffer_s)):
            raise ConfigError(f"buffer_s must be positive, got {self.buffer_s}")
        object.__setattr__(self, "overflow", OverflowPolicy.parse(self.overflow))
        object.__setattr__(self, "nonfinite", NonFinitePolicy.parse(self.nonfinite))

    def capacity(self, sample_rate_hz: float) -> int:
        return max(1, math.ceil(self.buffer_s * sample_rate_hz))


@dataclass
class _Boundary:
    """An event at ring position ``ring_at`` (before the sample written there)."""

    ring_at: int
    event: SourceEvent


# ---------------------------------------------------------------------------------------------------------------------
# The interface


class Source(abc.ABC):
    """Base of every source: lifecycle, the ring buffer and event queue, validation, stats.

    Subclasses implement ``_open`` (first start: acquire resources, learn the profile, then call
    ``_configure``), ``_start_stream``, ``_stop_stream`` and ``_release``, and produce samples by calling
    ``_push_samples`` / ``_push_gap`` / ``_push_restart`` / ``_finish`` (from a reader thread, or from
    ``_produce`` for pull sources) and ``_fail`` when they die.
    """

    scheme: ClassVar[str] = ""
    default_buffer: ClassVar[BufferConfig] = BufferConfig()

    def __init__(self, name: str, profile: DeviceProfile | None, buffer: BufferConfig | None = None) -> None:
        self.name = name
        self.buffer_config = buffer or self.default_buffer
        self._cond = threading.Condition(threading.RLock())  # guards everything below; notified on every push
        self._lifecycle = threading.Lock()  # serialises start / stop / close (which may block on I/O)
        self._state = SourceState.CREATED
        self._opened = False
        self._profile: DeviceProfile | None = None
        self._ring: RingBuffer | None = None
        self._validator: SampleValidator | None = None
        self._boundaries: deque[_Boundary] = deque()
        self._pending_events: list[SourceEvent] = []  # for read_events()
        self._w_stream = 0  # stream index of the next sample pushed
        self._r_pos = 0  # ring index of the next sample to read
        self._r_stream = 0  # stream index of the sample at _r_pos
        self._ended = False  # the producer has nothing more
        self._error: BaseException | None = None
        self._stats = SourceStats()
        if profile is not None:
            self._configure(profile)

    @classmethod
    def from_url(cls, url: SourceURL, profile: DeviceProfile | str | None = None) -> Source:
        """Build from a parsed URL (``open_source`` calls this); unknown parameters are a ``ConfigError``."""
        raise NotImplementedError(f"{cls.__name__} cannot be built from a URL")

    # --- description ---------------------------------------------------------------------------------------------

    @property
    def profile(self) -> DeviceProfile:
        if self._profile is None:
            raise SourceStateError(self.name, "profile not known yet: start() the source (it asks the device)")
        return self._profile

    @property
    def sample_rate_hz(self) -> float:
        return self.profile.sample_rate_hz

    @property
    def frame_shape(self) -> tuple[int, int]:
        """(n_bands, channels_per_band) of every sample."""
        return (self.profile.n_bands, self.profile.channels_per_band)

    @property
    def state(self) -> SourceState:
        return self._state

    @property
    def ended(self) -> bool:
        """True once the source has produced its last sample and all of it (and its events) has been read."""
        with self._cond:
            return self._ended and self._available() == 0 and not self._boundaries and self._error is None

    @property
    def stats(self) -> SourceStats:
        """A consistent snapshot of the counters."""
        with self._cond:
            st = dataclasses.replace(self._stats)
            st.stream_end = self._w_stream
            if self._validator is not None:
                st.invalid_samples = self._validator.stats.invalid_samples
            if self._ring is not None:
                st.buffer_dropped = self._ring.dropped
            self._update_stats(st)
            return st

    def __repr__(self) -> str:
        prof = self._profile.name if self._profile is not None else "?"
        return f"{type(self).__name__}({self.name!r}, profile={prof}, state={self._state.value})"

    # --- lifecycle -----------------------------------------------------------------------------------------------

    def start(self: S) -> S:
        """Open on first use (port, handshake, file), then stream. Starting a streaming source is a no-op."""
        with self._lifecycle:
            if self._state == SourceState.CLOSED:
                raise SourceStateError(self.name, "start() after close()")
            if self._state == SourceState.STREAMING:
                return self
            if not self._opened:
                self._open()
                self._opened = True
                assert self._profile is not None, f"{type(self).__name__}._open must configure a profile"
            self._start_stream()
            with self._cond:
                self._state = SourceState.STREAMING
                self._cond.notify_all()
        return self

    def stop(self) -> None:
        """Stop streaming (resources stay open; ``start()`` resumes). Buffered samples can still be read."""
        with self._lifecycle:
            if self._state != SourceState.STREAMING:
                return
            try:
                self._stop_stream()
            finally:
                with self._cond:
                    self._state = SourceState.STOPPED
                    self._cond.notify_all()

    def close(self) -> None:
        """Stop and release everything. Idempotent."""
        with self._lifecycle:
            if self._state == SourceState.CLOSED:
                return
            try:
                if self._state == SourceState.STREAMING:
                    self._stop_stream()
            finally:
                try:
                    if self._opened:
                        self._release()
                finally:
                    with self._cond:
                        self._state = SourceState.CLOSED
                        self._cond.notify_all()

    def __enter__(self: S) -> S:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- reading -------------------------------------------------------------------------------------------------

    def read_chunk(self, n: int, timeout: float | None = 1.0) -> Chunk:
        """Up to ``n`` contiguous samples and the events just before them.

        Waits until ``n`` samples are available, a discontinuity or the end is reached, the source is
        stopped, or ``timeout`` seconds pass (None: no limit); then returns what it has, possibly
        fewer samples or none. ``n`` larger than the buffer is clamped to its capacity.
        """
        assert n > 0, f"n must be positive, got {n}"
        if self._state == SourceState.CREATED:
            raise SourceStateError(self.name, "read before start()")
        if self._state == SourceState.CLOSED:
            raise SourceStateError(self.name, "read after close()")
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        with self._cond:
            ring = self._ring
            assert ring is not None, "a started source has a ring buffer"
            n = min(n, ring.capacity)
            events: list[SourceEvent] = []
            asked = False
            while True:
                self._raise_error()
                events += self._take_events()
                # After taking the events at the read position, the next event (if any) lies ahead of it,
                # so a bounded run is never empty: its samples are final and can be returned at once.
                avail, bounded = self._contiguous()
                if avail >= n or bounded or self._ended or self._state != SourceState.STREAMING:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0 and asked:
                    break
                # Ask at least once, even with timeout=0: a pull source makes what is due without waiting.
                self._produce(n - avail, max(remaining, 0.0))
                asked = True
            k = min(n, self._contiguous()[0])
            samples = ring.peek(k, self._r_pos)
            ring.consume(k)
            self._r_pos += k
            self._r_stream += k
            self._stats.samples_read += k
            return Chunk(self._r_stream - k, samples, tuple(events))

    def read(self, n: int, timeout: float | None = 1.0) -> np.ndarray:
        """``read_chunk(n, timeout).samples``; the chunk's events go to ``read_events()``."""
        chunk = self.read_chunk(n, timeout)
        if chunk.events:
            self._pending_events.extend(chunk.events)
        return chunk.samples

    def read_events(self) -> list[SourceEvent]:
        """Events that happened before the samples ``read`` returned last (and after the ones before); drains."""
        out, self._pending_events = self._pending_events, []
        return out

    def iter_chunks(self, n: int, timeout: float | None = 1.0) -> Iterator[Chunk]:
        """Chunks of up to ``n`` samples until the source ends or is stopped; skips empty timeouts."""
        while not self.ended and self._state == SourceState.STREAMING:
            chunk = self.read_chunk(n, timeout)
            if chunk.n or chunk.events:
                yield chunk
        # A stopped source may still hold samples: hand them out too.
        while self._state != SourceState.CLOSED:
            chunk = self.read_chunk(n, 0.0)
            if not (chunk.n or chunk.events):
                break
            yield chunk

    # --- subclass hooks ------------------------------------------------------------------------------------------

    @abc.abstractmethod
    def _open(self) -> None:
        """First start(): acquire resources; must leave a profile configured (``_configure``)."""

    def _start_stream(self) -> None:  # noqa: B027 (optional hook)
        """Begin producing samples (start a thread, send START, note the pacing clock)."""

    def _stop_stream(self) -> None:  # noqa: B027 (optional hook)
        """Stop producing samples; must not block for long."""

    def _release(self) -> None:  # noqa: B027 (optional hook)
        """Free everything ``_open`` acquired."""

    def _produce(self, want: int, timeout: float) -> None:
        """Called by a reader (lock held) that needs ``want`` more samples within ``timeout`` seconds.

        Threaded sources wait for their thread's pushes (this default); pull sources produce here.
        """
        self._cond.wait(timeout)

    def _update_stats(self, stats: SourceStats) -> None:  # noqa: B027 (optional hook)
        """Add source-specific counters to a stats snapshot (lock held)."""

    # --- producer side (any thread) ------------------------------------------------------------------------------

    def _configure(self, profile: DeviceProfile) -> None:
        """Fix the profile; sizes the ring buffer and the validator from it."""
        with self._cond:
            if self._profile is not None:
                if (profile.n_bands, profile.channels_per_band, profile.sample_rate_hz) != (
                    self._profile.n_bands,
                    self._profile.channels_per_band,
                    self._profile.sample_rate_hz,
                ):
                    raise SourceError(self.name, f"profile changed from {self._profile.name} to {profile.name}")
                return
            self._profile = profile
            cfg = self.buffer_config
            self._ring = RingBuffer(
                cfg.capacity(profile.sample_rate_hz),
                (profile.n_bands, profile.channels_per_band),
                np.float32,
                cfg.overflow,
            )
            self._validator = SampleValidator(self.name, profile.n_bands, profile.channels_per_band, cfg.nonfinite)

    def _push_samples(self, block: np.ndarray) -> None:
        """Validate and buffer (n, n_bands, C) samples; NaN rows become INVALID gaps (or raise)."""
        with self._cond:
            assert self._validator is not None and self._ring is not None, "push before _configure"
            self._stats.samples_in += int(block.shape[0]) if block.ndim else 0
            for run in self._validator.split(block, self._w_stream):
                if isinstance(run, int):
                    self._push_gap(run, GapReason.INVALID)
                else:
                    try:
                        self._ring.write(run)
                    except BufferError as exc:
                        raise SourceOverflowError(
                            self.name,
                            f"buffer of {self._ring.capacity} samples ({self.buffer_config.buffer_s:g} s) is full: "
                            "the consumer is not keeping up (overflow=raise)",
                        ) from exc
                    self._w_stream += int(run.shape[0])
            self._cond.notify_all()

    def _push_gap(self, n_missing: int, reason: GapReason) -> None:
        assert n_missing > 0, f"a gap must miss at least one sample, got {n_missing}"
        with self._cond:
            assert self._ring is not None, "push before _configure"
            self._boundaries.append(_Boundary(self._ring.end, GapEvent(self._w_stream, n_missing, GapReason(reason))))
            self._w_stream += n_missing
            self._stats.gaps += 1
            self._stats.samples_missing += n_missing
            self._cond.notify_all()

    def _push_restart(self, reason: str) -> None:
        with self._cond:
            assert self._ring is not None, "push before _configure"
            self._boundaries.append(_Boundary(self._ring.end, RestartEvent(self._w_stream, reason)))
            self._stats.restarts += 1
            self._cond.notify_all()

    def _finish(self) -> None:
        """The producer has nothing more (end of file, end of simulated session, device out of samples)."""
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def _fail(self, exc: BaseException) -> None:
        """The producer died; the next read raises ``exc``."""
        with self._cond:
            if self._error is None:
                self._error = exc
            self._cond.notify_all()

    # --- internals (lock held) -----------------------------------------------------------------------------------

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _available(self) -> int:
        return 0 if self._ring is None else self._ring.end - max(self._r_pos, self._ring.start)

    def _contiguous(self) -> tuple[int, bool]:
        """(samples readable before the next event or the end of the buffer, whether an event bounds them)."""
        assert self._ring is not None
        if self._boundaries:
            return self._boundaries[0].ring_at - self._r_pos, True
        return self._ring.end - self._r_pos, False

    def _take_events(self) -> list[SourceEvent]:
        """Pop events at the read position; first turn unread samples the ring dropped into a gap."""
        ring = self._ring
        assert ring is not None
        out: list[SourceEvent] = []
        if ring.start > self._r_pos:
            dropped = ring.start - self._r_pos
            missing = dropped
            restarted = False
            while self._boundaries and self._boundaries[0].ring_at < ring.start:
                ev = self._boundaries.popleft().event
                if isinstance(ev, GapEvent):
                    missing += ev.n_missing  # already counted in stats when pushed
                else:
                    restarted = True
            out.append(GapEvent(self._r_stream, missing, GapReason.BUFFER_OVERFLOW))
            self._stats.gaps += 1
            self._stats.samples_missing += dropped
            self._r_stream += missing
            self._r_pos = ring.start
            if restarted:
                out.append(RestartEvent(self._r_stream, "restart inside samples dropped by buffer overflow"))
        while self._boundaries and self._boundaries[0].ring_at == self._r_pos:
            ev = self._boundaries.popleft().event
            if isinstance(ev, GapEvent):
                assert ev.at == self._r_stream, f"gap at {ev.at}, reader at {self._r_stream}"
                self._r_stream = ev.stop
            out.append(ev)
        return out


class PacedSource(Source):
    """A pull source: samples are made when a reader needs them, paced by the wall clock at ``speed`` x real time.

    Subclasses implement ``_next_item(max_n)``: the next (k <= max_n, n_bands, C) block, an int for a gap
    of that many samples, or None at the end. ``speed=inf`` produces as fast as the reader reads (and
    never overflows); a finite speed makes samples due at ``rate * speed`` from ``start()``, like a device:
    a reader slower than that overflows the buffer exactly as it would with a live source.
    """

    def __init__(
        self, name: str, profile: DeviceProfile | None, buffer: BufferConfig | None = None, speed: float = math.inf
    ) -> None:
        if not speed > 0:
            raise ConfigError(f"{name}: speed must be positive (inf = as fast as possible), got {speed}")
        super().__init__(name, profile, buffer)
        self.speed = float(speed)
        self._t0 = 0.0  # wall time at which stream index 0 was due
        self._produced = 0  # stream samples made (blocks and gaps)

    @property
    def realtime(self) -> bool:
        return math.isfinite(self.speed)

    def _start_stream(self) -> None:
        # Resuming after stop() continues the pacing where it left off instead of bursting the pause.
        self._t0 = time.monotonic() - self._produced / (self.sample_rate_hz * self.speed)

    @abc.abstractmethod
    def _next_item(self, max_n: int) -> np.ndarray | int | None:
        """Up to ``max_n`` samples (k, n_bands, C), or an int: a gap of that many; None: the source ended."""

    def _make(self, n: int) -> None:
        """Produce ``n`` stream samples (fewer if the source ends)."""
        while n > 0 and not self._ended:
            item = self._next_item(n)
            if item is None:
                self._finish()
            elif isinstance(item, int):
                self._push_gap(item, GapReason.TIMESTAMPS)
                self._produced += item
                n -= item
            else:
                self._push_samples(item)
                self._produced += int(item.shape[0])
                n -= int(item.shape[0])

    def _produce(self, want: int, timeout: float) -> None:
        if not self.realtime:
            self._make(want)
            return
        rate = self.sample_rate_hz * self.speed
        now = time.monotonic()
        due = math.floor((now - self._t0) * rate) - self._produced
        if due > 0:
            self._make(due)
            return
        # Sleep (releasing the lock) until the samples asked for are due, or the timeout.
        wake = self._t0 + (self._produced + want) / rate
        self._cond.wait(min(timeout, max(wake - now, 1e-4)))


# ---------------------------------------------------------------------------------------------------------------------
# URLs


@dataclass(frozen=True)
class SourceURL:
    """``scheme://target?key=value&...``: target is everything between ``://`` and ``?`` (a port, a file, a board)."""

    scheme: str
    target: str
    params: dict[str, str]
    url: str

    @classmethod
    def parse(cls, url: str) -> SourceURL:
        scheme, sep, rest = url.partition("://")
        if not sep or not scheme:
            raise ConfigError(f"source URL {url!r} has no scheme; expected one of {sorted(SOURCE_KINDS)}://...")
        target, _, query = rest.partition("?")
        params: dict[str, str] = {}
        for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=False):
            if key in params:
                raise ConfigError(f"source URL {url!r}: parameter {key!r} given twice")
            params[key] = value
        if query and not params:
            raise ConfigError(f"source URL {url!r}: cannot parse the query {query!r} (key=value&...)")
        return cls(scheme.lower(), urllib.parse.unquote(target), params, url)


class UrlParams:
    """Typed access to a URL's parameters; ``finish()`` rejects the ones nobody asked for (typos)."""

    def __init__(self, url: SourceURL) -> None:
        self.url = url
        self._left = dict(url.params)
        self._known: list[str] = []

    def get(self, key: str, convert: Callable[[str], T], default: T) -> T:
        self._known.append(key)
        if key not in self._left:
            return default
        raw = self._left.pop(key)
        try:
            return convert(raw)
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"source URL {self.url.url!r}: {key}={raw!r} is invalid: {exc}") from None

    def raw(self, key: str) -> str | None:
        return self.get(key, str, None)

    def finish(self) -> None:
        if self._left:
            raise ConfigError(
                f"source URL {self.url.url!r}: unknown parameter(s) {sorted(self._left)} for {self.url.scheme}://; "
                f"known: {sorted(set(self._known))}"
            )

    def buffer(self, default: BufferConfig) -> BufferConfig:
        return BufferConfig(
            buffer_s=self.get("buffer_s", float, default.buffer_s),
            overflow=self.get("overflow", OverflowPolicy.parse, default.overflow),
            nonfinite=self.get("nonfinite", NonFinitePolicy.parse, default.nonfinite),
        )

    def profile(self, given: DeviceProfile | str | None) -> DeviceProfile | None:
        """``profile=`` from the URL and the ``profile`` argument; both given and different is an error."""
        name = self.raw("profile")
        from_url = _resolve_profile(name) if name is not None else None
        from_arg = _resolve_profile(given) if given is not None else None
        if from_url is not None and from_arg is not None and from_url.name != from_arg.name:
            raise ConfigError(
                f"source URL {self.url.url!r} says profile={from_url.name} but profile={from_arg.name} was passed"
            )
        return from_arg or from_url


def parse_bool(raw: str) -> bool:
    v = raw.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


def parse_speed(raw: str) -> float:
    """``max`` (or ``inf``, ``0``) -> inf: as fast as possible; else a positive real-time factor."""
    v = raw.strip().lower()
    if v in ("max", "inf", "0"):
        return math.inf
    speed = float(v)
    if not speed > 0:
        raise ValueError("speed must be positive or 'max'")
    return speed


def _resolve_profile(profile: DeviceProfile | str) -> DeviceProfile:
    if isinstance(profile, DeviceProfile):
        return profile
    try:
        return get_profile(profile)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


# scheme -> "module:Class", imported on use so that e.g. a serial-only device never imports h5py or brainflow.
SOURCE_KINDS: dict[str, str] = {
    "serial": "emgkey.edge_runtime.serial_source:SerialSource",
    "sim": "emgkey.edge_runtime.sim_source:SimSource",
    "replay": "emgkey.edge_runtime.replay_source:ReplaySource",
    "brainflow": "emgkey.edge_runtime.brainflow_source:BrainFlowSource",
}


def source_class(scheme: str) -> type[Source]:
    try:
        spec = SOURCE_KINDS[scheme]
    except KeyError:
        raise ConfigError(f"unknown source scheme {scheme!r}; known: {sorted(SOURCE_KINDS)}") from None
    module, _, cls = spec.partition(":")
    kind: Any = getattr(importlib.import_module(module), cls)
    return kind


def open_source(url: str, profile: DeviceProfile | str | None = None) -> Source:
    """Build (not start) the source a URL names; see the module docstring for schemes and parameters."""
    parsed = SourceURL.parse(url)
    return source_class(parsed.scheme).from_url(parsed, profile)


__all__ = [
    "SOURCE_KINDS",
    "BufferConfig",
    "Chunk",
    "GapEvent",
    "GapReason",
    "MissingDependencyError",
    "PacedSource",
    "RestartEvent",
    "Source",
    "SourceError",
    "SourceEvent",
    "SourceOverflowError",
    "SourceState",
    "SourceStateError",
    "SourceStats",
    "SourceURL",
    "UrlParams",
    "open_source",
    "parse_bool",
    "parse_speed",
    "source_class",
]
