"""Edge-runtime sources: the Source contract, validation, URLs, and each source against its ground truth.

Serial tests run the simulated armband firmware behind a real pseudo-terminal and read it with the real
``SerialSource`` (pyserial, protocol decoder, reader thread). Reconnect logic is tested twice: over a real pty
that disappears and comes back at the same path, and deterministically with an in-process fake transport.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from emgkey import protocol as P
from emgkey.edge_runtime.replay_source import ReplaySource
from emgkey.edge_runtime.serial_source import HandshakeError, SerialSource, TransportError
from emgkey.edge_runtime.sim_source import SimSource
from emgkey.edge_runtime.sources import (
    BufferConfig,
    Chunk,
    GapEvent,
    GapReason,
    RestartEvent,
    Source,
    SourceError,
    SourceEvent,
    SourceOverflowError,
    SourceState,
    SourceStateError,
    SourceURL,
    open_source,
)
from emgkey.edge_runtime.validate import ChannelCountError, InvalidSampleError, SampleValidator
from emgkey.errors import ConfigError
from emgkey.firmware_sim.faults import FaultInjector
from emgkey.firmware_sim.firmware import ArmbandFirmware, ArraySource, FirmwareConfig
from emgkey.firmware_sim.link import FirmwareRunner, PtyLink
from emgkey.firmware_sim.simulate import simulate_session
from emgkey.profiles import ARMBAND8, EMG2QWERTY, DeviceProfile
from emgkey.session import SessionFile, write_session

SPP = ARMBAND8.samples_per_packet
# armband8 at 5x the rate, so real-time pty tests take a second, not five.
FAST = dataclasses.replace(ARMBAND8, name="armband8-fast", sample_rate_hz=1000.0, serial_baud=1_000_000)


def counts_array(profile: DeviceProfile, n: int, seed: int = 0) -> np.ndarray:
    """(n, n_bands, C) int16 counts."""
    rng = np.random.default_rng(seed)
    return rng.integers(-3000, 3000, (n, profile.n_bands, profile.channels_per_band)).astype(np.int16)


def uv_of(counts: np.ndarray, scale: float = 0.5) -> np.ndarray:
    return counts.astype(np.float32) * np.float32(scale)


@dataclasses.dataclass
class Collected:
    chunks: list[Chunk]
    events: list[SourceEvent]
    end: int  # stream index after the last chunk or gap

    @property
    def gaps(self) -> list[GapEvent]:
        return [e for e in self.events if isinstance(e, GapEvent)]


def collect(src: Source, n: int = 64, timeout_s: float = 20.0, until: int | None = None, pos: int = 0) -> Collected:
    """Read chunks until the source ends (or ``until`` stream samples); checks the chunks and events tile the stream.

    ``pos``: the stream index already reached (to continue an earlier ``collect``).
    """
    chunks: list[Chunk] = []
    events: list[SourceEvent] = []
    deadline = time.monotonic() + timeout_s
    while not src.ended and (until is None or pos < until):
        assert time.monotonic() < deadline, f"source did not end in {timeout_s} s (at {pos}; {src.stats.as_dict()})"
        chunk = src.read_chunk(n, timeout=0.5)
        for ev in chunk.events:
            assert ev.at == pos, f"event {ev} not at the read position {pos}"
            if isinstance(ev, GapEvent):
                pos = ev.stop
            events.append(ev)
        assert chunk.start == pos, f"chunk at {chunk.start}, expected {pos}"
        assert chunk.samples.dtype == np.float32 and np.isfinite(chunk.samples).all()
        if chunk.n:
            chunks.append(chunk)
        pos = chunk.stop
    return Collected(chunks, events, pos)


class ManualSource(Source):
    """A source whose producer is the test: it pushes samples, gaps and restarts by hand."""

    scheme = "manual"

    def __init__(self, profile: DeviceProfile = ARMBAND8, buffer: BufferConfig | None = None) -> None:
        super().__init__("manual://test", profile, buffer)

    def _open(self) -> None:
        pass


def block(first: int, n: int) -> np.ndarray:
    """(n, 2, 8) float32 whose every value is its stream index."""
    return np.broadcast_to(np.arange(first, first + n, dtype=np.float32)[:, None, None], (n, 2, 8)).copy()


# ---------------------------------------------------------------------------------------------------------------------
# The Source contract


def test_events_precede_their_samples_and_are_never_glued() -> None:
    src = ManualSource().start()
    src._push_samples(block(0, 10))
    src._push_gap(5, GapReason.LINK)
    src._push_samples(block(15, 5))
    src._push_restart("device rebooted")
    src._push_samples(block(20, 7))
    src._finish()
    got = [(c.start, c.n, c.events) for c in src.iter_chunks(100, timeout=0)]
    assert got == [
        (0, 10, ()),
        (15, 5, (GapEvent(10, 5, GapReason.LINK),)),
        (20, 7, (RestartEvent(20, "device rebooted"),)),
    ]
    assert src.ended
    st = src.stats
    assert (st.samples_read, st.samples_missing, st.stream_end, st.gaps, st.restarts) == (22, 5, 27, 1, 1)


def test_read_and_read_events() -> None:
    src = ManualSource().start()
    src._push_samples(block(0, 4))
    src._push_gap(3, GapReason.DEVICE_OVERFLOW)
    src._push_samples(block(7, 4))
    x = src.read(10, timeout=0)
    assert x.shape == (4, 2, 8) and src.read_events() == []  # stops short of the gap
    x = src.read(10, timeout=0)
    np.testing.assert_array_equal(x[:, 0, 0], [7, 8, 9, 10])
    assert src.read_events() == [GapEvent(4, 3, GapReason.DEVICE_OVERFLOW)]  # happened before these samples
    assert src.read_events() == []


def test_read_waits_for_n_samples_or_the_timeout() -> None:
    src = ManualSource().start()
    src._push_samples(block(0, 3))
    t0 = time.monotonic()
    assert src.read(10, timeout=0.1).shape[0] == 3
    assert time.monotonic() - t0 >= 0.09
    pusher = threading.Timer(0.05, lambda: src._push_samples(block(3, 10)))
    pusher.start()
    x = src.read(10, timeout=5.0)
    pusher.join()
    np.testing.assert_array_equal(x[:, 0, 0], np.arange(3, 13))


def test_lifecycle_is_explicit() -> None:
    src = ManualSource()
    with pytest.raises(SourceStateError, match="before start"):
        src.read(1)
    src.start()
    src.start()  # idempotent
    src._push_samples(block(0, 5))
    src.stop()
    assert src.state == SourceState.STOPPED
    assert src.read(10, timeout=5).shape[0] == 5  # buffered samples survive stop(), and reading does not block
    src.close()
    src.close()
    with pytest.raises(SourceStateError, match="after close"):
        src.start()
    with pytest.raises(SourceStateError, match="after close"):
        src.read(1)
    with ManualSource() as s2:
        assert s2.state == SourceState.STREAMING
    assert s2.state == SourceState.CLOSED


def test_producer_failure_surfaces_on_read() -> None:
    src = ManualSource().start()
    src._fail(SourceError(src.name, "cable chewed by dog", code="disconnected"))
    with pytest.raises(SourceError, match="cable chewed"):
        src.read(1)


def test_buffer_overflow_drop_oldest_reports_an_exact_gap() -> None:
    src = ManualSource(buffer=BufferConfig(buffer_s=0.1)).start()  # 20 samples at 200 Hz
    src._push_samples(block(0, 15))
    src._push_gap(5, GapReason.LINK)
    src._push_samples(block(20, 30))  # stream 0..49; the ring keeps the newest 20 samples (stream 30..49)
    chunk = src.read_chunk(100, timeout=0)
    assert chunk.events == (GapEvent(0, 30, GapReason.BUFFER_OVERFLOW),)
    assert chunk.start == 30 and chunk.n == 20
    np.testing.assert_array_equal(chunk.samples[:, 1, 7], np.arange(30, 50))
    st = src.stats
    assert (st.buffer_dropped, st.gaps, st.samples_missing, st.samples_read, st.stream_end) == (25, 2, 30, 20, 50)
    assert st.samples_read + st.samples_missing == st.stream_end


def test_buffer_overflow_raise_fails_loudly() -> None:
    src = ManualSource(buffer=BufferConfig(buffer_s=0.1, overflow="raise")).start()
    src._push_samples(block(0, 15))
    with pytest.raises(SourceOverflowError, match=r"manual://test: buffer of 20 samples .* not keeping up"):
        src._push_samples(block(15, 10))


def test_realtime_reader_that_falls_behind_overflows() -> None:
    url = "sim://?user=1&minutes=0.02&speed=20&buffer_s=0.1"  # 240 samples due in 60 ms; room for 20
    with open_source(url) as src:
        time.sleep(0.2)
        c = collect(src, n=50)
    assert c.gaps and c.gaps[0].reason == GapReason.BUFFER_OVERFLOW and c.gaps[0].at == 0
    st = src.stats
    assert st.buffer_dropped > 0 and st.samples_read + st.samples_missing == 240 == c.end
    with open_source(url + "&overflow=raise") as src, pytest.raises(SourceOverflowError):
        time.sleep(0.2)
        src.read(50)


# ---------------------------------------------------------------------------------------------------------------------
# Validation


def test_nonfinite_rows_are_dropped_as_invalid_gaps() -> None:
    src = ManualSource().start()
    x = block(0, 10)
    x[3, 1, 2] = np.nan
    x[4, 0, 0] = np.inf
    x[8, 1, 7] = -np.inf
    src._push_samples(x)
    src._finish()
    c = collect(src, n=100)
    assert c.gaps == [GapEvent(3, 2, GapReason.INVALID), GapEvent(8, 1, GapReason.INVALID)]
    assert [(ch.start, ch.n) for ch in c.chunks] == [(0, 3), (5, 3), (9, 1)]
    for ch in c.chunks:
        np.testing.assert_array_equal(ch.samples[:, 0, 0], np.arange(ch.start, ch.stop))
    assert src.stats.invalid_samples == 3 and src.stats.samples_missing == 3


def test_nonfinite_raise_names_source_sample_and_channel() -> None:
    src = ManualSource(buffer=BufferConfig(nonfinite="raise")).start()
    src._push_samples(block(0, 5))
    x = block(5, 5)
    x[2, 1, 6] = np.nan
    with pytest.raises(InvalidSampleError, match=r"manual://test: non-finite sample \(nan\) at stream index 7, band 1"):
        src._push_samples(x)


def test_wrong_channel_count_is_rejected_with_a_clear_message() -> None:
    src = ManualSource().start()
    with pytest.raises(ChannelCountError, match=r"manual://test: got a block of shape \(4, 2, 7\), expected \(n, 2, 8"):
        src._push_samples(np.zeros((4, 2, 7), np.float32))
    with pytest.raises(ChannelCountError, match="wrong profile"):
        src._push_samples(np.zeros((4, 16), np.float32))
    with pytest.raises(InvalidSampleError, match="not real numbers"):
        src._push_samples(np.zeros((4, 2, 8), np.complex64))
    assert src.stats.samples_read == 0 and src.read(1, timeout=0).shape == (0, 2, 8)


def test_validator_split_runs() -> None:
    v = SampleValidator("x", 1, 2)
    a = np.arange(12, dtype=np.float64).reshape(6, 1, 2)
    a[0, 0, 0] = a[2, 0, 1] = a[3, 0, 0] = np.nan
    runs = v.split(a)
    assert [r if isinstance(r, int) else r.shape[0] for r in runs] == [1, 1, 2, 2]
    assert runs[1].dtype == np.float32 and v.stats.invalid_samples == 3
    big = np.full((2, 1, 2), 1e300)  # finite in float64, inf in float32: caught after the conversion
    assert v.split(big) == [2]
    assert v.split(np.zeros((3, 1, 2), np.int16))[0].dtype == np.float32


# ---------------------------------------------------------------------------------------------------------------------
# URLs


def test_url_parsing() -> None:
    u = SourceURL.parse("replay:///abs/dir/s.hdf5?speed=max")
    assert (u.scheme, u.target, u.params) == ("replay", "/abs/dir/s.hdf5", {"speed": "max"})
    assert SourceURL.parse("serial://COM3?baud=9600").target == "COM3"
    assert SourceURL.parse("sim://?user=3&session=0").params == {"user": "3", "session": "0"}
    assert SourceURL.parse("replay://runs/my%20file.hdf5").target == "runs/my file.hdf5"


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("nope://x", "unknown source scheme"),
        ("/dev/ttyUSB0", "no scheme"),
        ("sim://?user=1&usr=2", r"unknown parameter\(s\) \['usr'\] for sim://; known: .*'user'"),
        ("sim://?user=1&user=2", "given twice"),
        ("sim://?minutes=abc", "minutes='abc' is invalid"),
        ("sim://?realtime=maybe", "realtime='maybe' is invalid"),
        ("sim://?realtime=0&speed=2", "contradicts"),
        ("sim://?overflow=drop_newest", "overflow='drop_newest' is invalid"),
        ("sim://?profile=armband9", "unknown device profile"),
        ("sim://somewhere", "takes no target"),
        ("replay://", "names no file"),
        ("replay://x.hdf5?speed=-1", "speed='-1' is invalid"),
        ("serial:///dev/ttyUSB0?baudrate=9600", r"unknown parameter\(s\) \['baudrate'\]"),
        ("brainflow://cyton?serial_prot=/dev/ttyUSB0", r"unknown parameter\(s\) \['serial_prot'\]"),
        ("brainflow://?serial_port=/dev/ttyUSB0", "names no board"),
    ],
)
def test_bad_urls_are_config_errors(url: str, match: str) -> None:
    with pytest.raises((ConfigError, SourceError), match=match):
        open_source(url)


def test_profile_argument_and_url_must_agree() -> None:
    with pytest.raises(ConfigError, match="says profile=armband8 but profile=emg2qwerty"):
        open_source("sim://?profile=armband8", profile="emg2qwerty")
    assert open_source("sim://?profile=armband8&minutes=0.01", profile=ARMBAND8).profile is ARMBAND8


# ---------------------------------------------------------------------------------------------------------------------
# sim://


def test_sim_source_equals_simulate_session() -> None:
    ref = simulate_session(ARMBAND8, 3, 0, 0.1, 0)
    src = open_source("sim://?user=3&session=0&seed=0&profile=armband8&minutes=0.1&realtime=0")
    assert isinstance(src, SimSource)
    with src:
        c = collect(src, n=37)
    got = np.concatenate([ch.samples for ch in c.chunks])
    np.testing.assert_array_equal(got, ref.emg_uv())
    assert c.events == [] and c.end == ref.n_samples == src.n_samples
    assert src.keystrokes == ref.keystrokes and src.prompts == ref.prompts and src.keystrokes
    assert src.start_time == ref.timestamps[0] and src.time_of(10) == pytest.approx(ref.timestamps[10])
    assert (src.user, src.session_name) == (ref.user, ref.session_name)


def test_sim_source_with_prompts_and_pacing() -> None:
    src = open_source("sim://?user=2&minutes=0.2&speed=40&prompts=hello%20world|abc")  # 2400 samples in 0.3 s
    assert isinstance(src, SimSource)
    t0 = time.monotonic()
    with src:
        c = collect(src, n=100)
    elapsed = time.monotonic() - t0
    assert c.end == 2400 and 0.25 <= elapsed < 3.0, elapsed
    assert [p["payload"]["text"] for p in src.prompts[:2]] == ["hello world", "abc"]
    assert "".join(k["key"] for k in src.keystrokes[:5]) == "hello"
    ref = simulate_session(ARMBAND8, 2, 0, 0.2, 0, prompts=["hello world", "abc"])
    np.testing.assert_array_equal(np.concatenate([ch.samples for ch in c.chunks]), ref.emg_uv())


def test_pull_source_with_zero_timeout_still_produces() -> None:
    with open_source("sim://?minutes=0.01&realtime=0") as src:
        assert src.read(50, timeout=0).shape == (50, 2, 8)
        assert sum(c.n for c in src.iter_chunks(64, timeout=0)) == 70


# ---------------------------------------------------------------------------------------------------------------------
# replay://


def write_sim_session(path: Path, minutes: float = 0.05, shift_from: int | None = None, shift_s: float = 0.0) -> Path:
    sim = simulate_session(ARMBAND8, 1, 0, minutes, 0)
    ts = sim.timestamps.copy()
    if shift_from is not None:
        ts[shift_from:] += shift_s  # a hole in the recording
    return write_session(
        path,
        profile=ARMBAND8,
        timestamps=ts,
        emg=sim.emg,
        keystrokes=sim.keystrokes,
        prompts=sim.prompts,
        session_name=sim.session_name,
        user=sim.user,
    )


def test_replay_source_equals_the_file(tmp_path: Path) -> None:
    path = write_sim_session(tmp_path / "s.hdf5")
    src = open_source(f"replay://{path}?speed=max&block_s=0.3")
    assert isinstance(src, ReplaySource)
    with src, SessionFile(path) as f:
        c = collect(src, n=45)
        want = f.read()
        assert src.keystrokes == f.keystrokes and src.start_time == f.start_time
        assert src.session.ground_truth(f.start_time, f.end_time) == f.ground_truth(f.start_time, f.end_time)
    np.testing.assert_array_equal(np.concatenate([ch.samples for ch in c.chunks]), want)
    assert c.events == [] and c.end == len(want) == 600
    with open_source(f"replay://{path}?speed=max&start=100&stop=250") as part:
        c = collect(part, n=1000)
    np.testing.assert_array_equal(np.concatenate([ch.samples for ch in c.chunks]), want[100:250])


def test_replay_marks_timestamp_holes_as_gaps(tmp_path: Path) -> None:
    path = write_sim_session(tmp_path / "hole.hdf5", shift_from=250, shift_s=0.5)  # 100 samples missing at 250
    with open_source(f"replay://{path}?speed=max&block_s=0.4") as src, SessionFile(path) as f:
        c = collect(src, n=64)
        want = f.read()
    assert c.gaps == [GapEvent(250, 100, GapReason.TIMESTAMPS)]
    assert c.end == 700 and src.stats.samples_missing == 100
    got = {ch.start: ch.samples for ch in c.chunks}
    np.testing.assert_array_equal(np.concatenate([got[s] for s in sorted(got) if s < 250]), want[:250])
    np.testing.assert_array_equal(np.concatenate([got[s] for s in sorted(got) if s >= 350]), want[250:])


def test_replay_real_time_pacing_and_profile_check(tmp_path: Path) -> None:
    path = write_sim_session(tmp_path / "s.hdf5", minutes=0.01)  # 120 samples = 0.6 s
    t0 = time.monotonic()
    with open_source(f"replay://{path}?speed=4") as src:
        c = collect(src, n=30)
    assert c.end == 120 and 0.1 <= time.monotonic() - t0 < 2.0
    with pytest.raises(ConfigError, match="file holds armband8"), open_source(f"replay://{path}", profile=EMG2QWERTY):
        pass
    with pytest.raises(Exception, match="no such file"), open_source(f"replay://{tmp_path}/missing.hdf5"):
        pass


# ---------------------------------------------------------------------------------------------------------------------
# serial:// over a real pty


@dataclasses.dataclass
class SerialRun:
    collected: Collected
    src: SerialSource
    firmware: ArmbandFirmware
    runner: FirmwareRunner
    forced_drops: list[int]


def serial_over_pty(
    profile: DeviceProfile,
    counts: np.ndarray,
    faults: FaultInjector | None = None,
    realtime: bool = False,
    url_extra: str = "",
) -> SerialRun:
    forced: list[int] = []

    def drop_hook() -> bool:
        assert faults is not None
        drop = faults.drop_packet()
        if drop:
            forced.append(fw.next_index - profile.samples_per_packet)
        return drop

    fw = ArmbandFirmware(profile, ArraySource(counts), drop_hook=drop_hook if faults else None)
    with (
        PtyLink() as link,
        FirmwareRunner(fw, link.master_fd, realtime=realtime, faults=faults, record_damage=True) as runner,
    ):
        src = open_source(f"serial://{link.path}?stall_s=1.0&command_timeout_s=0.2{url_extra}", profile=profile)
        assert isinstance(src, SerialSource)
        with src:
            collected = collect(src)
    return SerialRun(collected, src, fw, runner, forced)


def check_samples(c: Collected, counts: np.ndarray, scale: float = 0.5) -> set[int]:
    """Every chunk equals the source; returns the packet starts that are missing (inside gaps)."""
    flat = uv_of(counts, scale)
    for ch in c.chunks:
        np.testing.assert_array_equal(ch.samples, flat[ch.start : ch.stop])
    assert c.end == len(counts)
    return {s for g in c.gaps for s in range(g.at, g.stop, SPP)}


@pytest.mark.pty
def test_serial_source_reads_exact_samples() -> None:
    counts = counts_array(ARMBAND8, 1000)
    run = serial_over_pty(ARMBAND8, counts)
    assert check_samples(run.collected, counts) == set() and run.collected.events == []
    st = run.src.stats
    # 100 DATA + INFO, STATUS, START's ACK and the END_OF_SOURCE STATUS.
    assert (st.samples_read, st.packets, st.crc_errors, st.bytes_skipped, st.reconnects) == (1000, 104, 0, 0, 0)
    assert run.src.info is not None and run.src.info.profile_name == "armband8"


@pytest.mark.pty
def test_serial_source_learns_the_profile_from_info() -> None:
    counts = counts_array(ARMBAND8, 100)
    fw = ArmbandFirmware(ARMBAND8, ArraySource(counts))
    with PtyLink() as link, FirmwareRunner(fw, link.master_fd, realtime=False):
        src = open_source(f"serial://{link.path}")
        with pytest.raises(SourceStateError, match="profile not known yet"):
            src.profile  # noqa: B018
        with src:
            assert src.profile is ARMBAND8
            c = collect(src)
    assert check_samples(c, counts) == set()


@pytest.mark.pty
def test_serial_source_with_one_percent_byte_corruption_keeps_going() -> None:
    """~1% of bytes damaged (almost every 360-byte packet): nothing crashes, every intact packet gets through."""
    counts = counts_array(ARMBAND8, 2000, seed=1)
    faults = FaultInjector.parse("bitflip=1.25e-3,drop=1e-3,stall=0.05,stall_s=0.01", seed=5)
    run = serial_over_pty(ARMBAND8, counts, faults)
    missing = check_samples(run.collected, counts)
    damaged = set(run.runner.stats.damaged_indices)
    assert missing <= damaged, "an undamaged packet was lost: the decoder did not resync within one packet"
    assert len(damaged) > 150 and len(missing) > 150
    st = run.src.stats
    assert st.crc_errors + st.header_errors > 0 and st.resyncs > 0 and st.bytes_skipped > 0
    assert st.samples_read + st.samples_missing == 2000 and st.gaps == len(run.collected.gaps)
    assert all(g.reason == GapReason.LINK for g in run.collected.gaps)


@pytest.mark.pty
def test_serial_source_faults_counted_exactly() -> None:
    counts = counts_array(ARMBAND8, 1000, seed=3)
    spec = "bitflip=3e-5,drop=2e-5,dup=2e-5,burst=0.03,stall=0.02,stall_s=0.005,overflow=0.03"
    faults = FaultInjector.parse(spec + ",disconnect_at=3,disconnect_s=0.5", seed=11)
    run = serial_over_pty(ARMBAND8, counts, faults)
    missing = check_samples(run.collected, counts)
    damaged = set(run.runner.stats.damaged_indices)
    dropped = set(run.forced_drops)
    disconnected = set(range(600, 700, SPP))  # device time [3.0, 3.5) s
    assert dropped and damaged
    # What is missing is exactly what the device dropped, what was sent while the link was down, and
    # (some of) what the link damaged: every undamaged packet the device sent arrived.
    assert missing - damaged == dropped | disconnected
    st = run.src.stats
    assert st.samples_missing == len(missing) * SPP and st.duplicates == st.late == 0
    assert st.device_overflows > 0
    assert any(g.reason == GapReason.DEVICE_OVERFLOW for g in run.collected.gaps)


@pytest.mark.pty
def test_serial_source_reconnects_when_the_port_disappears_and_comes_back(tmp_path: Path) -> None:
    """The pty (and its path) vanish mid-stream like an unplugged USB adapter; the same device comes back."""
    counts = counts_array(FAST, 2000, seed=2)
    path = tmp_path / "armband"
    fw = ArmbandFirmware(FAST, ArraySource(counts))  # keeps its state (boot id, sample index) across the outage
    link = PtyLink(path).open()
    runner = FirmwareRunner(fw, link.master_fd, realtime=True).start()
    src = SerialSource(str(path), FAST, backoff_s=0.02, backoff_max_s=0.1, stall_s=1.0)
    try:
        with src:
            first = collect(src, until=300)
            runner.stop()
            link.close()  # the port is gone: reads fail, opens fail
            assert not os.path.exists(path)
            time.sleep(0.3)
            link = PtyLink(path).open()
            runner = FirmwareRunner(fw, link.master_fd, realtime=True).start()
            rest = collect(src, pos=first.end)
    finally:
        runner.stop()
        link.close()
    c = Collected(first.chunks + rest.chunks, first.events + rest.events, rest.end)
    check_samples(c, counts)
    st = src.stats
    assert st.reconnects == 1 and st.connect_failures >= 1
    assert st.samples_read + st.samples_missing == 2000 and st.restarts == 0
    assert all(isinstance(e, GapEvent) and e.reason in (GapReason.LINK, GapReason.DEVICE_OVERFLOW) for e in c.events)


@pytest.mark.pty
def test_serial_source_without_a_device() -> None:
    with pytest.raises(SourceError, match="cannot open") as info:
        open_source("serial:///dev/nonexistent-armband").start()
    assert info.value.code == "open"
    with PtyLink() as link:  # a port with nothing behind it
        src = open_source(f"serial://{link.path}?command_timeout_s=0.05&command_retries=1", profile="armband8")
        with pytest.raises(HandshakeError, match="no reply to CMD_INFO after 2 tries"):
            src.start()
        src.close()


@pytest.mark.pty
def test_serial_source_rejects_a_device_of_another_profile() -> None:
    fw = ArmbandFirmware(ARMBAND8, ArraySource(counts_array(ARMBAND8, 50)))
    with PtyLink() as link, FirmwareRunner(fw, link.master_fd, realtime=False):
        src = open_source(f"serial://{link.path}", profile=EMG2QWERTY)
        with pytest.raises(SourceError, match=r"device streams 2x8 channels at 200 Hz .* profile emg2qwerty is 2x16"):
            src.start()
        src.close()


# ---------------------------------------------------------------------------------------------------------------------
# serial: reconnect logic against a deterministic fake transport


class FakeLink:
    """A transport talking to an ``ArmbandFirmware`` in-process, ``chunk`` bytes per read; unplugs on cue."""

    def __init__(self, fw: ArmbandFirmware, chunk: int = 97, read_delay_s: float = 0.0) -> None:
        self.fw = fw
        self.chunk = chunk
        self.read_delay_s = read_delay_s  # slows the device down (a real link is not infinitely fast)
        self.buf = bytearray()
        self.is_open = False
        self.bytes_read = 0
        self.opens = 0
        self.open_failures = 0  # the next N opens fail (the port is not there yet)
        self.unplug_at: int | None = None  # after this many bytes read, the next read fails
        self.on_unplug = lambda link: None
        self.swap_at: int | None = None  # after this many bytes, the device silently becomes ``swap_to``
        self.swap_to: ArmbandFirmware | None = None

    def open(self) -> None:
        if self.open_failures:
            self.open_failures -= 1
            raise TransportError("fake: no such device")
        self.is_open = True
        self.opens += 1

    def close(self) -> None:
        self.is_open = False
        self.buf.clear()  # bytes in flight are lost with the connection

    def write(self, data: bytes) -> None:
        if not self.is_open:
            raise TransportError("fake: not open")
        self.fw.receive(data)

    def read(self, max_bytes: int) -> bytes:
        if not self.is_open:
            raise TransportError("fake: not open")
        if self.read_delay_s:
            time.sleep(self.read_delay_s)
        if self.unplug_at is not None and self.bytes_read >= self.unplug_at:
            self.unplug_at = None
            self.close()
            self.on_unplug(self)
            raise TransportError("fake: device disconnected")
        if self.swap_at is not None and self.bytes_read >= self.swap_at:
            assert self.swap_to is not None
            self.swap_at, self.fw, self.buf = None, self.swap_to, bytearray()  # rebooted: idle, new boot id
        if not self.buf:
            if self.fw.streaming and self.fw.tx_empty:
                self.fw.acquire(1)
            f = self.fw.pop_tx()
            if f is not None:
                self.buf += f.data
        if not self.buf:
            time.sleep(0.002)
            return b""
        n = min(max_bytes, self.chunk, len(self.buf))
        for cue in (self.unplug_at, self.swap_at):
            if cue is not None and cue > self.bytes_read:
                n = min(n, cue - self.bytes_read)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        self.bytes_read += n
        return out


def fake_source(link: FakeLink, **kw: object) -> SerialSource:
    opts: dict[str, object] = dict(backoff_s=0.005, backoff_max_s=0.02, stall_s=0.2, command_timeout_s=0.1)
    opts.update(kw)
    return SerialSource("fake0", ARMBAND8, transport=link, **opts)


def test_reconnect_after_unplug_with_backoff() -> None:
    counts = counts_array(ARMBAND8, 1000, seed=4)
    link = FakeLink(ArmbandFirmware(ARMBAND8, ArraySource(counts)))
    link.unplug_at = 12_345  # mid-frame
    link.on_unplug = lambda lk: setattr(lk, "open_failures", 3)  # the port takes a while to come back
    src = fake_source(link)
    with src:
        c = collect(src)
    missing = check_samples(c, counts)
    assert len(missing) == 1 and c.gaps == [GapEvent(330, 10, GapReason.LINK)]  # the frame cut in half
    st = src.stats
    assert (st.reconnects, st.connect_failures, link.opens) == (1, 3, 2)
    assert st.samples_read + st.samples_missing == 1000


def test_reconnect_to_a_rebooted_device_reports_a_restart() -> None:
    before = counts_array(ARMBAND8, 1000, seed=5)
    after = counts_array(ARMBAND8, 300, seed=6)
    link = FakeLink(ArmbandFirmware(ARMBAND8, ArraySource(before)))
    link.unplug_at = 7_200  # exactly 20 frames (and the handshake's INFO + ACK) in
    rebooted = ArmbandFirmware(ARMBAND8, ArraySource(after), FirmwareConfig(seed=7))
    link.on_unplug = lambda lk: setattr(lk, "fw", rebooted)
    src = fake_source(link)
    with src:
        c = collect(src)
    restarts = [e for e in c.events if isinstance(e, RestartEvent)]
    assert len(restarts) == 1 and "rebooted" in restarts[0].reason
    r = restarts[0].at
    for ch in c.chunks:
        want = uv_of(before)[ch.start : ch.stop] if ch.stop <= r else uv_of(after)[ch.start - r : ch.stop - r]
        np.testing.assert_array_equal(ch.samples, want)
    assert c.end == r + 300 and src.stats.restarts == 1 and src.stats.reconnects == 1


def test_silent_reboot_behind_the_adapter_is_caught_by_the_stall_timer() -> None:
    before = counts_array(ARMBAND8, 1000, seed=8)
    after = counts_array(ARMBAND8, 200, seed=9)
    link = FakeLink(ArmbandFirmware(ARMBAND8, ArraySource(before)))
    link.swap_at = 20_000
    link.swap_to = ArmbandFirmware(ARMBAND8, ArraySource(after), FirmwareConfig(seed=3))  # idle after its reboot
    src = fake_source(link)
    t0 = time.monotonic()
    with src:
        c = collect(src)
    assert src.stalls >= 1 and src.stats.reconnects == 0 and time.monotonic() - t0 >= 0.2
    restarts = [e for e in c.events if isinstance(e, RestartEvent)]
    assert len(restarts) == 1 and c.end == restarts[0].at + 200


def test_reconnect_gives_up_after_max_attempts() -> None:
    link = FakeLink(ArmbandFirmware(ARMBAND8, ArraySource(counts_array(ARMBAND8, 1000))))
    link.unplug_at = 5_000
    link.on_unplug = lambda lk: setattr(lk, "open_failures", 100)
    src = fake_source(link, max_attempts=3)
    with src, pytest.raises(SourceError, match="gave up reconnecting after 3 attempts") as info:
        collect(src, timeout_s=5)
    assert info.value.code == "disconnected" and src.stats.connect_failures == 3


def test_no_reconnect_when_disabled() -> None:
    link = FakeLink(ArmbandFirmware(ARMBAND8, ArraySource(counts_array(ARMBAND8, 1000))))
    link.unplug_at = 5_000
    src = fake_source(link, reconnect=False)
    with src, pytest.raises(SourceError, match="link lost and reconnect=0"):
        collect(src, timeout_s=5)


def test_stop_and_restart_continue_the_stream() -> None:
    counts = counts_array(ARMBAND8, 3000, seed=10)
    fw = ArmbandFirmware(ARMBAND8, ArraySource(counts))
    src = fake_source(FakeLink(fw, read_delay_s=0.0005))  # ~200 kB/s: 108 kB take a while
    with src:
        first = collect(src, until=200)
        src.stop()
        assert fw.state == P.DeviceState.IDLE
        held = src.read_chunk(1000, timeout=0)  # what arrived before STOP is still there
        src.start()
        assert fw.state == P.DeviceState.STREAMING
        rest = collect(src, pos=held.stop)
    got = np.concatenate([ch.samples for ch in first.chunks] + [held.samples] + [ch.samples for ch in rest.chunks])
    np.testing.assert_array_equal(got, uv_of(counts))
    assert not first.events and not held.events and not rest.events


def test_float_profile_over_serial_is_dequantized_by_the_descriptor() -> None:
    rng = np.random.default_rng(0)
    uv = (rng.standard_normal((400, 2, 16)) * 80).astype(np.float32)
    fw = ArmbandFirmware(EMG2QWERTY, ArraySource(uv))
    src = SerialSource("fake0", EMG2QWERTY, transport=FakeLink(fw, chunk=1000))
    with src:
        c = collect(src, n=100)
    got = np.concatenate([ch.samples for ch in c.chunks])
    assert got.shape == uv.shape and np.abs(got - uv).max() <= 0.125 + 1e-4  # half the 0.25 uV wire LSB
    assert math.isclose(float(np.abs(got - uv).mean()), 0.0625, rel_tol=0.1)
