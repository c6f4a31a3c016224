"""The simulator as an OpenBCI Cyton on a pty, read by BrainFlow's real Cyton driver and by ``brainflow://``.

The emulator tests need only pyserial. The BrainFlow tests skip, with the reason, when BrainFlow is not
installed or cannot load its native library (``brainflow==5.23.0`` needs ``setuptools<81`` on Python 3.11).
"""

from __future__ import annotations

import sys
import time
import warnings

import numpy as np
import pytest
import serial

from emgkey.edge_runtime.sources import GapEvent, GapReason, MissingDependencyError, SourceError, open_source
from emgkey.firmware_sim.cyton import (
    CYTON8,
    CYTON_SCALE_UV,
    PACKET_SIZE,
    SOFT_RESET_REPLY,
    ArraySamples,
    CytonFirmware,
    EmulatedCyton,
    counts_to_uv,
    decode_packets,
    encode_packets,
    quantize_cyton,
)
from emgkey.firmware_sim.faults import FaultInjector
from emgkey.firmware_sim.simulate import simulate_session


def brainflow_board_shim():
    """``brainflow.board_shim`` with its native library loaded, or skip saying why not."""
    try:
        from brainflow import board_shim

        with warnings.catch_warnings():  # brainflow's loader imports the deprecated pkg_resources
            warnings.simplefilter("ignore", UserWarning)
            board_shim.BoardShim.get_sampling_rate(board_shim.BoardIds.CYTON_BOARD)  # loads the native library
    except ImportError as exc:  # ModuleNotFoundError too: no brainflow, or no pkg_resources (setuptools>=81)
        pytest.skip(f"BrainFlow not usable here ({exc}); install 'brainflow==5.23.0' 'setuptools<81'")
    board_shim.BoardShim.disable_board_logger()
    return board_shim


@pytest.fixture(scope="module")
def cyton_session() -> np.ndarray:
    """(T, 1, 8) float32 microvolts: 3 s of a simulated user on the cyton8 profile."""
    return simulate_session(CYTON8, user_id=1, session_idx=0, minutes=0.05, seed=0).emg


# ---------------------------------------------------------------------------------------------------------------------
# The emulator alone


def test_cyton8_profile_and_scale() -> None:
    assert (CYTON8.n_bands, CYTON8.channels_per_band, CYTON8.sample_rate_hz) == (1, 8, 250.0)
    assert CYTON_SCALE_UV == pytest.approx(0.02235174, rel=1e-6)
    assert CYTON8.anti_alias_hz is not None and CYTON8.anti_alias_hz < 125


def test_packets_round_trip_and_clip() -> None:
    uv = np.array([[0.0, 1.0, -1.0, 0.011, -0.012, 1e9, -1e9, 100.0]] * 300)
    counts = quantize_cyton(uv)
    assert counts[0, 5] == 2**23 - 1 and counts[0, 6] == -(2**23 - 1)  # clipped symmetrically
    data = encode_packets(counts, first_counter=250)
    assert len(data) == 300 * PACKET_SIZE and data[0] == 0xA0 and data[32] == 0xC0
    counters, back = decode_packets(data)
    np.testing.assert_array_equal(back, counts)
    assert counters[:8].tolist() == [250, 251, 252, 253, 254, 255, 0, 1]
    ok = np.abs(uv) < 1e5
    assert np.max(np.abs(counts_to_uv(counts) - uv)[ok]) <= CYTON_SCALE_UV / 2 + 1e-12


def test_firmware_commands() -> None:
    fw = CytonFirmware(ArraySamples(np.zeros((5, 8))))
    fw.receive(b"v")
    assert fw.pop_tx().data.endswith(b"$$$")
    fw.receive(b"dx1060110X?")
    assert fw.pop_tx().data == b"updating channel settings to default$$$"
    assert fw.pop_tx().data == b"Success: Channel set for 1$$$"
    assert fw.pop_tx() is None and fw.stats.unknown_commands == 1
    fw.receive(b"b")
    assert fw.streaming and fw.acquire(3) == 3
    fw.receive(b"v")  # a soft reset while streaming stops it: queued packets are gone, the banner follows
    assert not fw.streaming and fw.pop_tx().data == SOFT_RESET_REPLY and fw.tx_empty
    fw.receive(b"b")
    assert fw.acquire(10) == 2 and fw.source_exhausted and not fw.streaming


@pytest.mark.pty
def test_emulated_cyton_over_pyserial(cyton_session: np.ndarray) -> None:
    """The wire, read by hand: the handshake BrainFlow does, then exact 24-bit packets."""
    with EmulatedCyton(cyton_session, realtime=False) as cy, serial.Serial(cy.path, 115200, timeout=1.0) as ser:
        ser.write(b"v")
        assert ser.read_until(b"$$$").endswith(b"Firmware: v3.1.2\n$$$")
        ser.write(b"d")
        assert ser.read_until(b"$$$") == b"updating channel settings to default$$$"
        ser.write(b"b")
        data = ser.read(len(cyton_session) * PACKET_SIZE)
        ser.write(b"s")
    counters, counts = decode_packets(data)
    np.testing.assert_array_equal(counts, quantize_cyton(cyton_session.reshape(-1, 8)))
    assert counters.tolist() == [i % 256 for i in range(len(cyton_session))]


def test_missing_brainflow_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "brainflow", None)  # import brainflow -> ImportError
    src = open_source("brainflow://cyton?serial_port=/dev/ttyUSB0")
    with pytest.raises(MissingDependencyError, match=r"brainflow==5.23.0.*setuptools<81"):
        src.start()


# ---------------------------------------------------------------------------------------------------------------------
# BrainFlow's real driver


def wait_for(board, n: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while board.get_board_data_count() < n:
        assert time.monotonic() < deadline, f"BrainFlow got {board.get_board_data_count()} of {n} samples"
        time.sleep(0.02)


@pytest.mark.pty
def test_brainflow_cyton_driver_reads_the_emulator_exactly(cyton_session: np.ndarray) -> None:
    bs = brainflow_board_shim()
    cyton = bs.BoardIds.CYTON_BOARD
    n = len(cyton_session)
    with EmulatedCyton(cyton_session, realtime=False) as cy:
        params = bs.BrainFlowInputParams()
        params.serial_port = cy.path
        board = bs.BoardShim(cyton, params)
        board.prepare_session()
        try:
            board.start_stream()
            wait_for(board, n)
            board.stop_stream()
            data = board.get_board_data()
        finally:
            board.release_session()
        assert cy.firmware.stats.soft_resets == 1 and cy.firmware.stats.unknown_commands == 0
    descr = bs.BoardShim.get_board_descr(cyton)
    got = data[descr["eeg_channels"]].T  # (n, 8) float64 microvolts, as BrainFlow scales them
    want_counts = quantize_cyton(cyton_session.reshape(n, 8))
    np.testing.assert_allclose(got, counts_to_uv(want_counts), rtol=1e-12, atol=0)  # bit-exact up to FP order
    assert np.max(np.abs(got - cyton_session.reshape(n, 8))) <= CYTON_SCALE_UV / 2 + 1e-9  # 24-bit quantization
    assert data[descr["package_num_channel"]].tolist() == [i % 256 for i in range(n)]


@pytest.mark.pty
def test_brainflow_source_reads_the_emulated_cyton(cyton_session: np.ndarray) -> None:
    brainflow_board_shim()
    n = len(cyton_session)
    want = counts_to_uv(quantize_cyton(cyton_session.reshape(n, 1, 8))).astype(np.float32)
    with EmulatedCyton(cyton_session, realtime=False) as cy:
        src = open_source(f"brainflow://cyton?serial_port={cy.path}", profile=CYTON8)
        with src:
            assert src.profile is CYTON8 and src.frame_shape == (1, 8) and src.sample_rate_hz == 250.0
            got, events = read_n(src, n)
    assert events == []
    np.testing.assert_array_equal(got, want)
    assert src.stats.samples_read == n and src.stats.dropped_packets == 0


@pytest.mark.pty
def test_brainflow_source_turns_counter_jumps_into_gaps(cyton_session: np.ndarray) -> None:
    brainflow_board_shim()
    n = len(cyton_session)
    faults = FaultInjector.parse("disconnect_at=1.0,disconnect_s=0.4")  # samples [250, 350) never leave the board
    with EmulatedCyton(cyton_session, realtime=False, faults=faults) as cy:
        with open_source(f"brainflow://cyton?serial_port={cy.path}") as src:
            assert src.profile.name == "brainflow-cyton"  # derived from BrainFlow's descriptor
            got, events = read_n(src, n)
    assert events == [GapEvent(250, 100, GapReason.COUNTER)]
    want = counts_to_uv(quantize_cyton(cyton_session.reshape(n, 1, 8))).astype(np.float32)
    np.testing.assert_array_equal(got, np.concatenate([want[:250], want[350:]]))
    assert src.stats.dropped_packets == 100 and src.stats.samples_missing == 100


def read_n(src, n: int, timeout_s: float = 15.0) -> tuple[np.ndarray, list]:
    """Read until stream index ``n``: (samples, events)."""
    parts, events, pos = [], [], 0
    deadline = time.monotonic() + timeout_s
    while pos < n:
        assert time.monotonic() < deadline, f"stopped at {pos} of {n}"
        chunk = src.read_chunk(100, timeout=0.5)
        for ev in chunk.events:
            events.append(ev)
            pos = ev.stop
        assert chunk.start == pos
        parts.append(chunk.samples)
        pos = chunk.stop
    return np.concatenate(parts), events


def test_brainflow_synthetic_board_and_profile_check() -> None:
    brainflow_board_shim()
    with open_source("brainflow://synthetic?bands=2") as src:
        assert src.frame_shape == (2, 8) and src.sample_rate_hz == 250.0
        x = src.read(50, timeout=5.0)
        assert x.shape[0] > 0 and x.dtype == np.float32 and np.isfinite(x).all()
    with pytest.raises(SourceError, match="profile armband8 needs 2x8 at 200 Hz") as info:
        open_source("brainflow://SYNTHETIC_BOARD", profile="armband8").start()
    assert info.value.code == "profile"
    with pytest.raises(Exception, match="unknown BrainFlow board 'cytonn'"):
        open_source("brainflow://cytonn?serial_port=/dev/null").start()
