"""The armband's firmware, simulated: ADC, packetizer, bounded TX buffer and command state machine.

This is the device side of ``docs/protocol.md``. It does no I/O: a transport
(``emgkey.firmware_sim.link``) hands it the bytes the host wrote
(``receive``), tells it when samples are due (``acquire``), and drains frames
from it (``pop_tx``). Keeping the device logic free of sockets and threads lets
tests drive it step by step and lets the same object run behind a pty or in a
plain loop.

State machine::

    IDLE --CMD_START--> STREAMING --CMD_STOP / end of source--> IDLE

Acquisition is paused while idle, so ``sample_index`` counts samples streamed
since boot (a recording played back), not wall time.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields
from typing import Literal, Protocol

import numpy as np

from emgkey import protocol as P
from emgkey.profiles import DeviceProfile

# Wire scale for float32 (microvolt) profiles: 0.25 uV/count gives +-8.19 mV full scale (sEMG peaks are
# ~1-2 mV; the simulator's highest), and 0.072 uV rms quantisation noise, far below electrode noise (~1-5 uV).
FLOAT_PROFILE_WIRE_SCALE_UV = 0.25

InputUnits = Literal["storage", "uv", "counts"]


class SampleSource(Protocol):
    """Where the firmware's samples come from (pluggable: arrays, generators, a live simulator)."""

    def read(self, n: int) -> np.ndarray:
        """Up to ``n`` samples, (k, n_bands, C) with k <= n; k == 0 means the source has ended."""
        ...


class ArraySource:
    """A whole recording in memory: (T, n_bands, C)."""

    def __init__(self, samples: np.ndarray) -> None:
        assert samples.ndim == 3, f"samples must be (T, n_bands, C), got {samples.shape}"
        self.samples = samples
        self.pos = 0

    def read(self, n: int) -> np.ndarray:
        block = self.samples[self.pos : self.pos + n]
        self.pos += block.shape[0]
        return block


class BlockIteratorSource:
    """Blocks of any length from an iterator (a live generator); re-cut to what the firmware asks for."""

    def __init__(self, blocks: Iterable[np.ndarray]) -> None:
        self._it: Iterator[np.ndarray] = iter(blocks)
        self._pending: list[np.ndarray] = []
        self._pending_n = 0

    def read(self, n: int) -> np.ndarray:
        while self._pending_n < n:
            try:
                block = next(self._it)
            except StopIteration:
                break
            assert block.ndim == 3, f"blocks must be (k, n_bands, C), got {block.shape}"
            self._pending.append(block)
            self._pending_n += block.shape[0]
        if not self._pending:
            return np.zeros((0, 0, 0), dtype=np.float32)
        joined = np.concatenate(self._pending, axis=0) if len(self._pending) > 1 else self._pending[0]
        out, rest = joined[:n], joined[n:]
        self._pending = [rest] if rest.shape[0] else []
        self._pending_n = rest.shape[0]
        return out


class PacedSource:
    """Another source's samples, acquired no faster than ``speed`` x the sample rate.

    For a ``FirmwareRunner`` with ``realtime=False`` (which otherwise packetizes as fast as the host reads):
    a device faster than life but not infinitely fast, so a host reads as it goes, as from a real armband,
    and an accelerated test or soak does not pile the whole recording into the host's buffer at once.
    """

    def __init__(self, inner: SampleSource, sample_rate_hz: float, speed: float) -> None:
        assert sample_rate_hz > 0 and speed > 0, "sample rate and speed must be positive"
        self.inner = inner
        self.rate = sample_rate_hz * speed  # samples per wall-clock second
        self.pos = 0  # samples read so far
        self._t0: float | None = None

    def read(self, n: int) -> np.ndarray:
        if self._t0 is None:
            self._t0 = time.monotonic() - self.pos / self.rate
        wait = self._t0 + (self.pos + n) / self.rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        block = self.inner.read(n)
        self.pos += int(block.shape[0])
        return block

    def pause(self) -> None:
        """The device was off the bus: pacing restarts from the next read (no burst to catch up)."""
        self._t0 = None


@dataclass(frozen=True)
class FirmwareConfig:
    device_id: int = 1
    firmware_version: tuple[int, int, int] = (1, 0, 0)
    # Device-side TX buffer (UART DMA ring). When the link cannot keep up, whole DATA packets are dropped.
    tx_buffer_bytes: int = 16_384
    # Units of what the source yields: "storage" = the profile's storage (float32 -> uV, int16 -> counts).
    input_units: InputUnits = "storage"
    # uV per wire count; None: the profile's ADC LSB (int16 profiles) or FLOAT_PROFILE_WIRE_SCALE_UV (float ones).
    wire_scale_uv_per_count: float | None = None
    # Crystal error: the device samples at rate * (1 + ppm * 1e-6) while its descriptor says ``rate``.
    clock_ppm: float = 0.0
    boot_id: int | None = None  # None: drawn from ``seed``
    seed: int = 0

    def __post_init__(self) -> None:
        assert 0 <= self.device_id < P.BROADCAST_DEVICE_ID, "device_id must be a u16 other than broadcast"
        assert self.tx_buffer_bytes > 0, "tx_buffer_bytes must be positive"
        assert self.input_units in ("storage", "uv", "counts"), f"unknown input_units {self.input_units!r}"
        assert abs(self.clock_ppm) < 10_000, "clock_ppm beyond 1% is not a crystal error"


@dataclass
class FirmwareStats:
    samples_acquired: int = 0
    packets_built: int = 0  # DATA packets given a sequence number (queued or dropped)
    packets_queued: int = 0
    overflow_packets: int = 0  # DATA packets dropped because the TX buffer was full (or a forced fault)
    forced_overflows: int = 0  # of which injected by a fault hook
    clipped_samples: int = 0  # sample values that hit the int16 rails
    commands: int = 0
    refused_commands: int = 0
    bytes_out: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class TxFrame:
    """One encoded frame leaving the device; ``sample_index`` is set for DATA frames."""

    data: bytes
    seq: int
    ptype: P.PacketType
    sample_index: int | None = None
    n_samples: int = 0


def quantize_uv(uv: np.ndarray, scale_uv_per_count: float) -> tuple[np.ndarray, int]:
    """The ADC step: microvolts -> int16 counts, rounded and clipped symmetrically. Returns (counts, n_clipped)."""
    counts = np.rint(np.asarray(uv, dtype=np.float64) / scale_uv_per_count)
    clipped = int(np.count_nonzero(np.abs(counts) > P.INT16_FULL_SCALE))
    return np.clip(counts, -P.INT16_FULL_SCALE, P.INT16_FULL_SCALE).astype(np.int16), clipped


class ArmbandFirmware:
    """Device-side protocol engine. Not thread-safe: one transport thread drives it."""

    def __init__(
        self,
        profile: DeviceProfile,
        source: SampleSource,
        config: FirmwareConfig | None = None,
        drop_hook: Callable[[], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.profile = profile
        self.source = source
        self.config = config = config or FirmwareConfig()
        self.stats = FirmwareStats()
        self._drop_hook = drop_hook  # fault injection: True = pretend the TX buffer overflowed for this packet
        self._clock = clock
        self._t_boot = clock()
        rng = np.random.default_rng(config.seed)
        self.boot_id = int(rng.integers(0, 1 << 16)) if config.boot_id is None else config.boot_id
        units = config.input_units
        if units == "storage":
            units = "uv" if profile.sample_format == "float32" else "counts"
        self.input_units: Literal["uv", "counts"] = units
        if config.wire_scale_uv_per_count is not None:
            scale = config.wire_scale_uv_per_count
            assert units == "uv", "a wire scale override needs microvolt input (counts already have a scale)"
        elif profile.sample_format == "float32":
            scale = FLOAT_PROFILE_WIRE_SCALE_UV
        else:
            scale = profile.adc_scale_uv_per_count
        self.descriptor = P.StreamDescriptor.from_profile(profile, scale)
        self.packet_bytes = P.data_packet_size(profile.samples_per_packet, profile.n_channels)
        assert self.packet_bytes - P.FRAME_OVERHEAD <= P.MAX_PAYLOAD, (
            f"{profile.name}: {profile.samples_per_packet} samples x {profile.n_channels} ch exceeds MAX_PAYLOAD"
        )
        assert self.packet_bytes <= config.tx_buffer_bytes, "TX buffer must hold at least one DATA packet"
        self.state = P.DeviceState.IDLE
        self.source_exhausted = False
        self.next_index = 0  # absolute index of the next sample to acquire
        self._seq = 0
        self._overflow_pending = False
        self._decoder = P.PacketDecoder()
        self._control: deque[TxFrame] = deque()  # replies jump the queue (never dropped)
        self._data: deque[TxFrame] = deque()
        self._data_bytes = 0
        self._stream_t0: float | None = None  # clock() at START, for paced acquisition
        self._stream_i0 = 0  # next_index at START

    # --- host -> device ------------------------------------------------------------------------------------------

    @property
    def decoder_stats(self) -> P.DecoderStats:
        """Counters of the device's own command decoder (corrupted commands show up here)."""
        return self._decoder.stats

    def receive(self, data: bytes) -> None:
        """Bytes written by the host; complete commands are handled at once."""
        for pkt in self._decoder.feed(data):
            self.handle(pkt)

    def handle(self, pkt: P.Packet) -> None:
        if pkt.device_id not in (P.BROADCAST_DEVICE_ID, self.config.device_id):
            return  # addressed to another device on a shared bus
        self.stats.commands += 1
        if not isinstance(pkt, P.CommandPacket):
            self._reply_ack(pkt.TYPE, pkt.seq, P.AckStatus.UNSUPPORTED)
            return
        cmd = pkt.command
        if cmd == P.PacketType.CMD_INFO:
            seq = self._next_seq()
            self._queue_control(
                P.PacketType.INFO,
                seq,
                P.encode_info(
                    seq,
                    self.config.device_id,
                    self.profile.name,
                    self.config.firmware_version,
                    self.profile.adc_bits,
                    self.boot_id,
                    self.profile.samples_per_packet,
                    self.profile.serial_baud,
                    self.descriptor,
                ),
            )
        elif cmd == P.PacketType.CMD_START:
            if self.state == P.DeviceState.STREAMING:
                status = P.AckStatus.INVALID_STATE
            elif self.source_exhausted:
                status = P.AckStatus.EXHAUSTED
            else:
                status = P.AckStatus.OK
                self.state = P.DeviceState.STREAMING
                self._stream_t0 = self._clock()
                self._stream_i0 = self.next_index
            self._reply_ack(cmd, pkt.seq, status)
        elif cmd == P.PacketType.CMD_STOP:
            status = P.AckStatus.OK if self.state == P.DeviceState.STREAMING else P.AckStatus.INVALID_STATE
            self.state = P.DeviceState.IDLE
            self._reply_ack(cmd, pkt.seq, status)
        elif cmd == P.PacketType.CMD_PING:
            uptime_us = int((self._clock() - self._t_boot) * 1e6 * (1 + self.config.clock_ppm * 1e-6))
            seq = self._next_seq()
            self._queue_control(P.PacketType.PONG, seq, P.encode_pong(seq, self.config.device_id, pkt.nonce, uptime_us))
        elif cmd == P.PacketType.CMD_STATUS:
            seq, data = self._encode_status(P.StatusReason.REQUESTED)
            self._queue_control(P.PacketType.STATUS, seq, data)
        else:  # pragma: no cover - COMMAND_TYPES is exhaustive above
            self._reply_ack(cmd, pkt.seq, P.AckStatus.UNSUPPORTED)

    # --- acquisition ---------------------------------------------------------------------------------------------

    @property
    def streaming(self) -> bool:
        return self.state == P.DeviceState.STREAMING

    def packets_due(self, now: float | None = None) -> int:
        """Whole packets the (drifting) ADC has filled since START and not yet packetized."""
        if not self.streaming or self._stream_t0 is None:
            return 0
        now = self._clock() if now is None else now
        rate = self.profile.sample_rate_hz * (1 + self.config.clock_ppm * 1e-6)
        filled = int((now - self._stream_t0) * rate) // self.profile.samples_per_packet
        done = (self.next_index - self._stream_i0) // self.profile.samples_per_packet
        return max(0, filled - done)

    def seconds_until_next_packet(self, now: float | None = None) -> float:
        """Wall time until the next packet is due (for a paced transport's sleep)."""
        if not self.streaming or self._stream_t0 is None:
            return float("inf")
        now = self._clock() if now is None else now
        rate = self.profile.sample_rate_hz * (1 + self.config.clock_ppm * 1e-6)
        spp = self.profile.samples_per_packet
        done = (self.next_index - self._stream_i0) // spp
        return max(0.0, self._stream_t0 + (done + 1) * spp / rate - now)

    def acquire(self, n_packets: int = 1) -> int:
        """Acquire and packetize up to ``n_packets`` packets of samples; returns samples acquired.

        A short final packet is sent when the source ends; then the device goes idle and queues an
        END_OF_SOURCE STATUS after the last DATA.
        """
        spp = self.profile.samples_per_packet
        total = 0
        for _ in range(n_packets):
            if not self.streaming:
                break
            block = self.source.read(spp)
            k = int(block.shape[0])
            if k:
                assert block.shape[1:] == (self.profile.n_bands, self.profile.channels_per_band), (
                    f"source block {block.shape} does not match profile {self.profile.name}"
                )
                self._packetize(block)
                total += k
            if k < spp:
                self.source_exhausted = True
                self.state = P.DeviceState.IDLE
                seq, data = self._encode_status(P.StatusReason.END_OF_SOURCE)
                self._queue_data_frame(TxFrame(data, seq, P.PacketType.STATUS), droppable=False)
                break
        return total

    def _to_counts(self, block: np.ndarray) -> tuple[np.ndarray, int]:
        flat = block.reshape(block.shape[0], -1)  # (k, n_bands * C), band-major
        if self.input_units == "uv":
            return quantize_uv(flat, self.descriptor.scale_uv_per_count)
        if flat.dtype == np.int16:
            return flat, 0
        counts = np.rint(flat.astype(np.float64))
        clipped = int(np.count_nonzero(np.abs(counts) > P.INT16_FULL_SCALE))
        return np.clip(counts, -P.INT16_FULL_SCALE, P.INT16_FULL_SCALE).astype(np.int16), clipped

    def _packetize(self, block: np.ndarray) -> None:
        counts, clipped = self._to_counts(block)  # (k, C) int16
        k = counts.shape[0]
        index = self.next_index
        self.next_index += k
        self.stats.samples_acquired += k
        self.stats.clipped_samples += clipped
        self.stats.packets_built += 1
        seq = self._next_seq()
        size = P.data_packet_size(k, self.descriptor.n_channels)
        forced = self._drop_hook is not None and self._drop_hook()
        if forced or self._data_bytes + size > self.config.tx_buffer_bytes:
            # Overflow: drop the whole packet; its seq and samples leave a gap the host can measure exactly.
            self.stats.overflow_packets += 1
            self.stats.forced_overflows += int(forced)
            self._overflow_pending = True
            return
        flags = P.DataFlags.CLIPPED if clipped else 0
        if self._overflow_pending:
            flags |= P.DataFlags.OVERFLOW_BEFORE
            self._overflow_pending = False
        data = P.encode_data(seq, self.config.device_id, index, self.boot_id, self.descriptor, counts, flags)
        self._queue_data_frame(TxFrame(data, seq, P.PacketType.DATA, index, k), droppable=True)

    # --- device -> host ------------------------------------------------------------------------------------------

    @property
    def tx_pending_bytes(self) -> int:
        return self._data_bytes + sum(len(f.data) for f in self._control)

    @property
    def tx_empty(self) -> bool:
        return not self._data and not self._control

    def pop_tx(self) -> TxFrame | None:
        """Next frame for the wire: control replies first, then DATA in order."""
        if self._control:
            f = self._control.popleft()
        elif self._data:
            f = self._data.popleft()
            self._data_bytes -= len(f.data)
        else:
            return None
        self.stats.bytes_out += len(f.data)
        return f

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq = (self._seq + 1) % P.SEQ_MODULO
        return seq

    def _queue_control(self, ptype: P.PacketType, seq: int, data: bytes) -> None:
        self._control.append(TxFrame(data, seq, ptype))

    def _queue_data_frame(self, f: TxFrame, droppable: bool) -> None:
        assert droppable or f.ptype != P.PacketType.DATA, "DATA frames are always droppable"
        self._data.append(f)
        self._data_bytes += len(f.data)
        if f.ptype == P.PacketType.DATA:
            self.stats.packets_queued += 1

    def _reply_ack(self, command: int, command_seq: int, status: P.AckStatus) -> None:
        if status != P.AckStatus.OK:
            self.stats.refused_commands += 1
        seq = self._next_seq()
        data = P.encode_ack(seq, self.config.device_id, command, command_seq, status, self.state, self.next_index)
        self._queue_control(P.PacketType.ACK, seq, data)

    def _encode_status(self, reason: P.StatusReason) -> tuple[int, bytes]:
        seq = self._next_seq()
        return seq, P.encode_status(
            seq,
            self.config.device_id,
            self.state,
            reason,
            self.boot_id,
            self.next_index,
            self.stats.overflow_packets,
            self.stats.clipped_samples,
        )
