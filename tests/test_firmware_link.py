"""Simulated firmware (ADC, packetizer, TX buffer, commands), fault injection, and the pty link end to end.

The pty tests run the firmware in a thread behind a real pseudo-terminal and read it through pyserial,
exactly as a host reads a USB-serial armband. Sample arrays are synthetic, so these tests do not depend on
the physiology simulator.
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

from emgkey import protocol as P
from emgkey.errors import ConfigError
from emgkey.firmware_sim.faults import (
    BitFlips,
    DroppedBytes,
    DuplicatedBytes,
    FaultInjector,
    FaultSpec,
    GarbageBursts,
)
from emgkey.firmware_sim.firmware import (
    FLOAT_PROFILE_WIRE_SCALE_UV,
    ArmbandFirmware,
    ArraySource,
    BlockIteratorSource,
    FirmwareConfig,
    quantize_uv,
)
from emgkey.firmware_sim.link import FirmwareRunner, PtyLink, SerialHost
from emgkey.profiles import ARMBAND8, EMG2QWERTY, DeviceProfile

REPO = Path(__file__).resolve().parents[1]


def counts_array(profile: DeviceProfile, seconds: float, seed: int = 0) -> np.ndarray:
    """(T, n_bands, C) int16 counts."""
    rng = np.random.default_rng(seed)
    t = round(seconds * profile.sample_rate_hz)
    return rng.integers(-3000, 3000, (t, profile.n_bands, profile.channels_per_band)).astype(np.int16)


def uv_array(profile: DeviceProfile, seconds: float, seed: int = 0, rms: float = 80.0) -> np.ndarray:
    """(T, n_bands, C) float32 microvolts."""
    rng = np.random.default_rng(seed)
    t = round(seconds * profile.sample_rate_hz)
    return (rng.standard_normal((t, profile.n_bands, profile.channels_per_band)) * rms).astype(np.float32)


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def command(fw: ArmbandFirmware, cmd: P.PacketType, seq: int = 0, nonce: int = 0) -> list[P.Packet]:
    """Send one command to the firmware and return every frame it queued, decoded."""
    fw.receive(P.encode_command(cmd, seq, nonce=nonce))
    return drain(fw)


def expect_ack(fw: ArmbandFirmware, cmd: P.PacketType, seq: int) -> P.AckPacket:
    (ack,) = command(fw, cmd, seq)
    assert isinstance(ack, P.AckPacket), f"expected an ACK, got {ack!r}"
    return ack


def drain(fw: ArmbandFirmware) -> list[P.Packet]:
    dec = P.PacketDecoder()
    out: list[P.Packet] = []
    while (f := fw.pop_tx()) is not None:
        out += dec.feed(f.data)
    assert dec.stats.packets_ok == len(out) and dec.pending == 0
    return out


# ---------------------------------------------------------------------------------------------------------------------
# ADC and packetizer


def test_quantize_rounds_and_clips():
    counts, clipped = quantize_uv(np.array([0.0, 0.24, 0.26, -0.26, 1e9, -1e9]), 0.5)
    np.testing.assert_array_equal(counts, [0, 0, 1, -1, 32767, -32767])
    assert counts.dtype == np.int16 and clipped == 2


def test_float_profile_is_quantized_with_the_descriptor_scale():
    uv = uv_array(EMG2QWERTY, 0.05)
    uv[3, 1, 5] = 20_000.0  # beyond +-8.19 mV full scale
    fw = ArmbandFirmware(EMG2QWERTY, ArraySource(uv))
    assert fw.descriptor.scale_uv_per_count == FLOAT_PROFILE_WIRE_SCALE_UV
    command(fw, P.PacketType.CMD_START)
    fw.acquire(100)
    data = [p for p in drain(fw) if isinstance(p, P.DataPacket)]
    got = np.concatenate([p.counts for p in data])
    want, n_clipped = quantize_uv(uv.reshape(len(uv), -1), FLOAT_PROFILE_WIRE_SCALE_UV)
    np.testing.assert_array_equal(got, want)
    assert n_clipped == 1 and fw.stats.clipped_samples == 1
    assert [bool(p.flags & P.DataFlags.CLIPPED) for p in data] == [True] + [False] * (len(data) - 1)
    # The round trip error of unclipped samples is at most half an LSB.
    uv_back = np.concatenate([p.samples_uv() for p in data])
    ok = np.abs(uv.reshape(len(uv), -1)) < 8000
    assert np.max(np.abs(uv_back - uv.reshape(len(uv), -1))[ok]) <= FLOAT_PROFILE_WIRE_SCALE_UV / 2 + 1e-4


def test_int16_counts_pass_through_band_major():
    arr = counts_array(ARMBAND8, 0.2)
    fw = ArmbandFirmware(ARMBAND8, ArraySource(arr))
    command(fw, P.PacketType.CMD_START)
    fw.acquire(10)
    data = [p for p in drain(fw) if isinstance(p, P.DataPacket)]
    assert [p.sample_index for p in data] == [0, 10, 20, 30]
    got = np.concatenate([p.counts for p in data])  # (T, 16): band 0 channels then band 1 channels
    np.testing.assert_array_equal(got, arr.reshape(len(arr), 16))
    assert data[0].descriptor == P.StreamDescriptor(200.0, 2, 8, 0.5)


def test_block_iterator_source_recuts_blocks():
    arr = counts_array(ARMBAND8, 0.3)
    blocks = [arr[:7], arr[7:8], arr[8:33], arr[33:]]
    fw = ArmbandFirmware(ARMBAND8, BlockIteratorSource(iter(blocks)))
    command(fw, P.PacketType.CMD_START)
    fw.acquire(100)
    data = [p for p in drain(fw) if isinstance(p, P.DataPacket)]
    np.testing.assert_array_equal(np.concatenate([p.counts for p in data]), arr.reshape(len(arr), -1))


# ---------------------------------------------------------------------------------------------------------------------
# Commands and state machine


def test_state_machine_and_replies():
    clock = FakeClock()
    fw = ArmbandFirmware(ARMBAND8, ArraySource(counts_array(ARMBAND8, 1.0)), FirmwareConfig(device_id=9), clock=clock)
    (info,) = command(fw, P.PacketType.CMD_INFO)
    assert isinstance(info, P.InfoPacket)
    assert (info.profile_name, info.device_id, info.samples_per_packet, info.serial_baud) == ("armband8", 9, 10, 115200)
    assert info.boot_id == fw.boot_id and info.descriptor == fw.descriptor

    ack = expect_ack(fw, P.PacketType.CMD_STOP, seq=1)
    assert isinstance(ack, P.AckPacket) and ack.status == P.AckStatus.INVALID_STATE and ack.command_seq == 1
    ack = expect_ack(fw, P.PacketType.CMD_START, seq=2)
    assert ack.status == P.AckStatus.OK and ack.state == P.DeviceState.STREAMING and ack.next_sample_index == 0
    ack = expect_ack(fw, P.PacketType.CMD_START, seq=3)
    assert ack.status == P.AckStatus.INVALID_STATE

    clock.t += 0.12  # 24 samples at 200 Hz: two whole packets
    assert fw.packets_due() == 2
    fw.acquire(fw.packets_due())
    fw.receive(P.encode_command(P.PacketType.CMD_PING, 4, nonce=1234))
    fw.receive(P.encode_command(P.PacketType.CMD_STATUS, 5))
    pong, status, *data = drain(fw)  # control replies jump ahead of queued DATA
    assert isinstance(pong, P.PongPacket) and pong.nonce == 1234 and pong.uptime_us == 120_000
    assert isinstance(status, P.StatusPacket) and status.next_sample_index == 20
    assert [type(p) for p in data] == [P.DataPacket, P.DataPacket]

    ack = expect_ack(fw, P.PacketType.CMD_STOP, seq=6)
    assert ack.status == P.AckStatus.OK and ack.state == P.DeviceState.IDLE
    clock.t += 10
    assert fw.packets_due() == 0 and fw.acquire(5) == 0  # paused while idle
    ack = expect_ack(fw, P.PacketType.CMD_START, seq=7)
    assert ack.next_sample_index == 20  # resumes where it stopped


def test_commands_for_other_devices_and_non_commands():
    fw = ArmbandFirmware(ARMBAND8, ArraySource(counts_array(ARMBAND8, 0.1)), FirmwareConfig(device_id=3))
    fw.receive(P.encode_command(P.PacketType.CMD_INFO, 0, device_id=4))
    assert drain(fw) == []
    fw.receive(P.encode_pong(0, 3, 1, 2))  # a device->host type sent to the device
    (ack,) = drain(fw)
    assert isinstance(ack, P.AckPacket)
    assert isinstance(ack, P.AckPacket) and ack.status == P.AckStatus.UNSUPPORTED
    assert fw.stats.refused_commands == 1


def test_end_of_source_sends_short_packet_then_status():
    arr = counts_array(ARMBAND8, 0.125)  # 25 samples: packets of 10, 10, 5
    fw = ArmbandFirmware(ARMBAND8, ArraySource(arr))
    command(fw, P.PacketType.CMD_START)
    assert fw.acquire(10) == 25
    out = drain(fw)
    assert [p.n_samples for p in out if isinstance(p, P.DataPacket)] == [10, 10, 5]
    assert isinstance(out[-1], P.StatusPacket) and out[-1].reason == P.StatusReason.END_OF_SOURCE
    assert out[-1].next_sample_index == 25 and fw.state == P.DeviceState.IDLE
    ack = expect_ack(fw, P.PacketType.CMD_START, seq=9)
    assert ack.status == P.AckStatus.EXHAUSTED


def test_tx_overflow_drops_whole_packets_and_leaves_exact_gaps():
    arr = counts_array(ARMBAND8, 1.0)
    cfg = FirmwareConfig(tx_buffer_bytes=3 * 360)  # room for three DATA packets
    fw = ArmbandFirmware(ARMBAND8, ArraySource(arr), cfg)
    command(fw, P.PacketType.CMD_START)
    fw.acquire(5)  # packets 0..2 fit, 3 and 4 overflow
    first = drain(fw)
    fw.acquire(3)  # 5, 6, 7 fit again
    rest = drain(fw)
    assert fw.stats.overflow_packets == 2 and fw.stats.packets_built == 8
    asm = P.SampleAssembler(expect_index=0)
    items = asm.push_many(first + rest)
    assert [i for i in items if isinstance(i, P.Gap)] == [P.Gap(30, 20)]
    assert asm.stats.device_overflows == 1  # packet 5 carries OVERFLOW_BEFORE
    seqs = [p.seq for p in first + rest if isinstance(p, P.DataPacket)]
    assert seqs == [1, 2, 3, 6, 7, 8]  # seq 0 was the ACK; dropped packets keep their numbers


def test_forced_overflow_hook():
    calls = iter([False, True, False, True, True, False])
    fw = ArmbandFirmware(ARMBAND8, ArraySource(counts_array(ARMBAND8, 1.0)), drop_hook=lambda: next(calls))
    command(fw, P.PacketType.CMD_START)
    fw.acquire(6)
    got = [p.sample_index for p in drain(fw) if isinstance(p, P.DataPacket)]
    assert got == [0, 20, 50] and fw.stats.forced_overflows == 3


def test_clock_drift_changes_pacing_not_descriptor():
    clock = FakeClock()
    fast = ArmbandFirmware(
        ARMBAND8, ArraySource(counts_array(ARMBAND8, 1.0)), FirmwareConfig(clock_ppm=5000), clock=clock
    )
    nominal = ArmbandFirmware(ARMBAND8, ArraySource(counts_array(ARMBAND8, 1.0)), clock=clock)
    for fw in (fast, nominal):
        command(fw, P.PacketType.CMD_START)
    clock.t += 0.998  # nominal: 199.6 samples -> 19 packets; +0.5%: 200.6 samples -> 20 packets
    assert (nominal.packets_due(), fast.packets_due()) == (19, 20)
    assert fast.descriptor.sample_rate_hz == 200.0
    fast.acquire(20)
    # Packet 21 completes at 210 samples / (200 Hz * 1.005) after START.
    assert fast.seconds_until_next_packet() == pytest.approx(210 / 201 - 0.998)


# ---------------------------------------------------------------------------------------------------------------------
# Fault injection


def test_fault_spec_parse():
    spec = FaultSpec.parse(
        "bitflip=1e-4,drop=1e-4,dup=1e-5,burst=0.001,stall=0.01,overflow=0.001,drift_ppm=50,disconnect_at=10", seed=7
    )
    assert (spec.bitflip, spec.drop, spec.dup, spec.burst, spec.stall) == (1e-4, 1e-4, 1e-5, 0.001, 0.01)
    assert (spec.overflow, spec.drift_ppm, spec.disconnect_at, spec.seed) == (0.001, 50.0, 10.0, 7)
    assert FaultSpec.parse(str(spec)) == spec
    assert not FaultSpec.parse("").active and FaultSpec.parse(" seed=3 ").seed == 3
    assert not FaultSpec.parse("seed=3").active and spec.active


@pytest.mark.parametrize("bad", ["bitflips=1e-4", "drop", "drop=x", "drop=2", "burst_max=0", "drift_ppm=1e5"])
def test_fault_spec_rejects_typos_and_nonsense(bad: str):
    with pytest.raises(ConfigError):
        FaultSpec.parse(bad)


def test_faults_are_seeded_and_independent():
    frames = [bytes(range(256)) * 2] * 200
    a = FaultInjector.parse("bitflip=1e-3,drop=1e-3", seed=1).corrupt_stream(frames)
    b = FaultInjector.parse("bitflip=1e-3,drop=1e-3", seed=1).corrupt_stream(frames)
    assert a == b
    # Turning on another fault does not move where the bit flips strike (each fault has its own stream).
    flips_only = FaultInjector(FaultSpec(seed=1), byte_faults=[BitFlips(1e-3)])
    flips_then_dups = FaultInjector(FaultSpec(seed=1), byte_faults=[BitFlips(1e-3), DuplicatedBytes(0.0)])
    assert flips_only.corrupt_stream(frames) == flips_then_dups.corrupt_stream(frames)


def test_fault_rates_and_effects():
    frames = [bytes(1000)] * 100  # 800_000 bits, 100_000 bytes
    inj = FaultInjector(FaultSpec(seed=2), byte_faults=[BitFlips(1e-4)])
    blob, touched = inj.corrupt_stream(frames)
    assert len(blob) == 100_000 and 50 <= inj.stats.bits_flipped <= 110
    assert sum(bin(b).count("1") for b in blob) == inj.stats.bits_flipped
    assert len(touched) == inj.stats.frames_corrupted
    inj = FaultInjector(FaultSpec(seed=2), byte_faults=[DroppedBytes(1e-3), DuplicatedBytes(1e-3)])
    blob, _ = inj.corrupt_stream(frames)
    assert len(blob) == 100_000 - inj.stats.bytes_dropped + inj.stats.bytes_duplicated
    inj = FaultInjector(FaultSpec(seed=2), byte_faults=[GarbageBursts(0.1, max_len=8)])
    blob, _ = inj.corrupt_stream(frames)
    assert len(blob) == 100_000 + inj.stats.burst_bytes and 3 <= inj.stats.bursts <= 20


def test_device_faults():
    inj = FaultInjector.parse("overflow=0.5,stall=0.25,stall_s=0.1,disconnect_at=2,disconnect_s=0.5")
    drops = [inj.drop_packet() for _ in range(1000)]
    stalls = [inj.stall_s() for _ in range(1000)]
    assert 400 < sum(drops) < 600 and inj.stats.forced_overflows == sum(drops)
    assert set(stalls) == {0.0, 0.1} and 180 < stalls.count(0.1) < 320
    assert [inj.link_down(t) for t in (1.99, 2.0, 2.49, 2.5)] == [False, True, True, False]


# ---------------------------------------------------------------------------------------------------------------------
# Through a real pty


@dataclasses.dataclass
class Streamed:
    items: list[P.StreamItem]
    host: P.DecoderStats
    asm: P.AssemblerStats
    firmware: ArmbandFirmware
    runner: FirmwareRunner
    info: P.InfoPacket
    forced_drops: list[int]  # sample_index of packets the overflow fault dropped on the device


def stream_through_pty(
    profile: DeviceProfile,
    samples: np.ndarray,
    faults: FaultInjector | None = None,
    realtime: bool = False,
    config: FirmwareConfig | None = None,
    timeout_s: float = 20.0,
) -> Streamed:
    """Firmware thread on a pty master; this thread is the host: INFO, START, read and assemble to the end."""
    forced_drops: list[int] = []

    def drop_hook() -> bool:
        assert faults is not None
        drop = faults.drop_packet()
        if drop:  # called after the packet's samples were acquired
            forced_drops.append(fw.next_index - profile.samples_per_packet)
        return drop

    fw = ArmbandFirmware(profile, ArraySource(samples), config, drop_hook=drop_hook if faults else None)
    with (
        PtyLink() as link,
        FirmwareRunner(fw, link.master_fd, realtime=realtime, faults=faults, record_damage=True) as runner,
        SerialHost(link.path, profile.serial_baud) as host,
    ):
        info = host.request(P.PacketType.CMD_INFO, timeout_s=0.5, retries=4)
        ack = host.request(P.PacketType.CMD_START, timeout_s=0.5, retries=4)
        assert isinstance(info, P.InfoPacket) and isinstance(ack, P.AckPacket)
        asm = P.SampleAssembler(info.descriptor.n_channels, expect_index=ack.next_sample_index, boot_id=info.boot_id)
        items: list[P.StreamItem] = []
        deadline = time.monotonic() + timeout_s
        last_rx = time.monotonic()
        while time.monotonic() < deadline:
            n_before = host.decoder.stats.bytes_in
            pkts = host.read_packets()
            items += asm.push_many(pkts)
            if host.decoder.stats.bytes_in > n_before:
                last_rx = time.monotonic()
            if any(isinstance(p, P.StatusPacket) and p.reason == P.StatusReason.END_OF_SOURCE for p in pkts):
                break
            # The END_OF_SOURCE STATUS itself may be damaged: then the device's silence ends the stream.
            if runner.done.is_set() and time.monotonic() - last_rx > 0.3:
                break
        else:
            pytest.fail("stream did not finish in time")
        items += asm.push_many(host.decoder.flush())
        items += asm.close(len(samples))
    return Streamed(items, host.decoder.stats, asm.stats, fw, runner, info, forced_drops)


def check_tiling(items: list[P.StreamItem], expected_counts: np.ndarray, scale: float) -> list[P.Gap]:
    """Blocks and gaps tile [0, T) in order; every block equals the source exactly. Returns the gaps."""
    pos = 0
    for it in items:
        assert not isinstance(it, P.StreamRestart)
        assert it.start == pos, f"item at {it.start}, expected {pos}"
        if isinstance(it, P.SampleBlock):
            np.testing.assert_array_equal(it.samples, expected_counts[it.start : it.stop].astype(np.float32) * scale)
        pos = it.stop
    assert pos == len(expected_counts)
    return [it for it in items if isinstance(it, P.Gap)]


@pytest.mark.pty
def test_pty_stream_recovers_exact_samples_armband8():
    arr = counts_array(ARMBAND8, 5.0)
    s = stream_through_pty(ARMBAND8, arr)
    assert check_tiling(s.items, arr.reshape(len(arr), -1), 0.5) == []
    assert s.host.packets_ok == 100 + 3 and s.host.bytes_skipped == 0 and s.host.resyncs == 0
    assert s.asm.samples_out == 1000 and s.info.profile_name == "armband8"


@pytest.mark.pty
def test_pty_stream_recovers_quantized_samples_emg2qwerty():
    uv = uv_array(EMG2QWERTY, 2.0)
    s = stream_through_pty(EMG2QWERTY, uv)
    want, _ = quantize_uv(uv.reshape(len(uv), -1), FLOAT_PROFILE_WIRE_SCALE_UV)
    assert check_tiling(s.items, want, FLOAT_PROFILE_WIRE_SCALE_UV) == []
    assert s.asm.samples_out == 4000 and s.host.crc_errors == 0


@pytest.mark.pty
def test_pty_stream_with_faults_recovers_everything_outside_damaged_packets():
    arr = counts_array(ARMBAND8, 5.0, seed=3)
    spec = "bitflip=3e-5,drop=2e-5,dup=2e-5,burst=0.03,stall=0.02,stall_s=0.005,overflow=0.03"
    faults = FaultInjector.parse(spec + ",disconnect_at=3,disconnect_s=0.5", seed=11)
    s = stream_through_pty(ARMBAND8, arr, faults=faults)
    gaps = check_tiling(s.items, arr.reshape(len(arr), -1), 0.5)
    spp = ARMBAND8.samples_per_packet
    missing = {start for g in gaps for start in range(g.start, g.stop, spp)}
    damaged = set(s.runner.stats.damaged_indices)
    disconnected = set(range(600, 700, spp))  # device time [3.0, 3.5) s at 200 Hz
    dropped = set(s.forced_drops)
    assert len(dropped) == s.firmware.stats.overflow_packets > 0
    # Every packet that is gone was damaged on the wire, dropped by the device, or sent while disconnected;
    # every undamaged packet the device did send arrived.
    assert missing - damaged == dropped | disconnected
    assert s.runner.stats.frames_lost_disconnected == len(disconnected - dropped)
    assert len(missing & damaged) > 0 and s.host.crc_errors + s.host.header_errors > 0
    assert s.asm.samples_missing == len(missing) * spp and s.asm.duplicates == s.asm.late == 0
    assert faults.stats.frames_corrupted >= len(damaged)


@pytest.mark.pty
def test_pty_realtime_pacing_and_uart_overflow():
    """A UART too slow for the stream backs up into the TX buffer, which overflows into exact gaps."""
    slow = dataclasses.replace(ARMBAND8, name="slow", serial_baud=19_200)  # 1920 B/s for a 7200 B/s stream
    arr = counts_array(slow, 1.0)
    t0 = time.monotonic()
    s = stream_through_pty(slow, arr, realtime=True, config=FirmwareConfig(tx_buffer_bytes=1024))
    elapsed = time.monotonic() - t0
    assert elapsed >= 0.95, "paced at the sample rate"
    gaps = check_tiling(s.items, arr.reshape(len(arr), -1), 0.5)
    assert gaps and s.firmware.stats.overflow_packets >= 10
    assert s.asm.samples_missing == s.firmware.stats.overflow_packets * slow.samples_per_packet
    assert s.host.crc_errors == 0 and s.asm.device_overflows >= 1
    # What did get through respects the UART: bytes / (10 bits per byte) within the budget.
    assert s.runner.stats.bytes_written * 10 / elapsed <= slow.serial_baud * 1.1


@pytest.mark.pty
def test_pty_host_reopens_port_mid_stream():
    arr = counts_array(ARMBAND8, 3.0)
    fw = ArmbandFirmware(ARMBAND8, ArraySource(arr), FirmwareConfig())
    items: list[P.StreamItem] = []
    with PtyLink() as link, FirmwareRunner(fw, link.master_fd, realtime=False):
        with SerialHost(link.path) as host:
            ack = host.request(P.PacketType.CMD_START)
            asm = P.SampleAssembler(expect_index=ack.next_sample_index)
            while asm.stats.samples_out < 100:
                items += asm.push_many(host.read_packets())
        with SerialHost(link.path) as host:  # a new process would start with a fresh decoder
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                pkts = host.read_packets()
                items += asm.push_many(pkts)
                if any(isinstance(p, P.StatusPacket) and p.reason == P.StatusReason.END_OF_SOURCE for p in pkts):
                    break
            items += asm.push_many(host.decoder.flush()) + asm.close(len(arr))
    gaps = check_tiling(items, arr.reshape(len(arr), -1), 0.5)
    assert asm.stats.samples_out + asm.stats.samples_missing == len(arr)
    assert all(g.n_missing % ARMBAND8.samples_per_packet == 0 for g in gaps)


# ---------------------------------------------------------------------------------------------------------------------
# emgkey sim stream, with a stand-in for the physiology simulator

FAKE_SIMULATE = """
import sys, types
from dataclasses import dataclass
import numpy as np

@dataclass
class SimulatedSession:
    emg: np.ndarray

def simulate_session(profile, user_id, session_idx, minutes, seed):
    t = round(minutes * 60 * profile.sample_rate_hz)
    rng = np.random.default_rng(seed)
    shape = (t, profile.n_bands, profile.channels_per_band)
    return SimulatedSession(rng.integers(-3000, 3000, shape).astype(np.int16))

mod = types.ModuleType("emgkey.firmware_sim.simulate")
mod.SimulatedSession = SimulatedSession
mod.simulate_session = simulate_session
sys.modules["emgkey.firmware_sim.simulate"] = mod
"""


def _install_fake_simulator(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    monkeypatch.delitem(sys.modules, "emgkey.firmware_sim.simulate", raising=False)  # restored after the test
    exec(FAKE_SIMULATE, {})
    return sys.modules["emgkey.firmware_sim.simulate"]


@pytest.mark.pty
def test_sim_stream_cli_streams_a_session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    from emgkey.cli import main

    mod = _install_fake_simulator(monkeypatch)
    expect = mod.simulate_session(ARMBAND8, 0, 0, 0.05, 4).emg  # 600 samples
    link_file = tmp_path / "armband.link"
    result: dict[str, object] = {}

    def host() -> None:
        deadline = time.monotonic() + 10
        while not link_file.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        with SerialHost(link_file.read_text().strip()) as h:
            ack = h.request(P.PacketType.CMD_START)
            asm = P.SampleAssembler(expect_index=ack.next_sample_index)
            items: list[P.StreamItem] = []
            while time.monotonic() < deadline:
                pkts = h.read_packets()
                items += asm.push_many(pkts)
                if any(isinstance(p, P.StatusPacket) and p.reason == P.StatusReason.END_OF_SOURCE for p in pkts):
                    break
            result["items"] = items

    t = threading.Thread(target=host)
    t.start()
    argv = ["sim", "stream", "--profile", "armband8", "--minutes", "0.05", "--seed", "4", "--no-realtime"]
    rc = main([*argv, "--link-file", str(link_file)])
    t.join(5)
    assert rc == 0 and not t.is_alive()
    assert capsys.readouterr().out.strip().startswith("/dev/")
    assert check_tiling(result["items"], expect.reshape(len(expect), -1), 0.5) == []  # type: ignore[arg-type]
    assert not link_file.exists()


def test_sim_stream_cli_rejects_unknown_fault(monkeypatch: pytest.MonkeyPatch):
    from emgkey.cli import main

    _install_fake_simulator(monkeypatch)
    assert main(["sim", "stream", "--faults", "bitflop=1e-3", "--minutes", "0.01"]) == 2


@pytest.mark.pty
def test_sim_stream_cli_shuts_down_cleanly_on_sigterm(tmp_path: Path):
    link_file = tmp_path / "link"
    code = FAKE_SIMULATE + (
        "from emgkey.cli import main\n"
        f"sys.exit(main(['sim', 'stream', '--minutes', '1', '--link-file', {str(link_file)!r}]))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not link_file.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert link_file.exists(), "no link file"
        path = link_file.read_text().strip()
        with SerialHost(path) as host:
            host.request(P.PacketType.CMD_START)  # realtime streaming of a 1-minute session
            time.sleep(0.3)
            assert any(isinstance(p, P.DataPacket) for p in host.read_packets() + host.read_packets())
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(10)
        assert rc == 0
        assert proc.stdout is not None and proc.stdout.read().decode().strip() == path
        assert not link_file.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
