"""The simulator presenting itself as an OpenBCI Cyton on a pseudo-terminal, for BrainFlow's real driver.

BrainFlow's Cyton driver (``BoardIds.CYTON_BOARD``) talks to the board through
its USB dongle as a plain 115200-baud serial port. What it does, read from its
``openbci_serial_board.cpp`` / ``cyton.cpp`` (5.x):

1. ``prepare_session``: opens the port, sends ``v`` (soft reset) and reads
   until it sees ``$$$`` (giving up after 5 empty reads of 1 s); sends ``d``
   (channel defaults) and reads the reply until the line goes quiet; a reply
   starting ``Failure`` means "dongle present, board off".
2. ``start_stream``: sends ``b``; a thread reads 33-byte packets: search for
   ``0xA0``, read 32 more bytes, require a footer in ``0xC0..0xC6`` (else log
   and search again), and scale the 8 channels: 24-bit big-endian two's
   complement counts x ``4.5 / (2^23 - 1) / 24 x 1e6`` microvolts (gain 24).
3. ``stop_stream``: joins its thread, then sends ``s``.

Packet::

    0      0xA0
    1      sample counter (u8, wraps)
    2..25  8 channels x 24-bit big-endian signed counts
    26..31 aux: 3 x int16 big-endian accelerometer (0 here: BrainFlow keeps the last non-zero reading)
    32     footer 0xC0 (standard: aux holds the accelerometer)

Which samples: ``CYTON8``, a profile variant of ``armband8`` — the same eight
electrodes on one band (the right arm), simulated natively at the Cyton's
250 Hz with the ADS1299's ~65 Hz digital anti-alias corner, stored as float32
microvolts and quantized here to the Cyton's 24-bit LSB (0.0224 uV). The
simulator runs at the device's own rate (its physiological rate is a multiple
of 250 Hz), so no resampling artefact enters, and a model trained on
``cyton8`` sessions sees exactly what the Cyton sends. (Resampling armband8's
200 Hz to 250 Hz would invent content above armband8's 80 Hz anti-alias
corner that a real Cyton would carry, and the 16-bit armband8 quantization.)

``CytonFirmware`` exposes the same transport-facing methods as
``ArmbandFirmware`` (``receive``, ``acquire``, ``pop_tx``, pacing), so the
existing ``FirmwareRunner`` drives it on a ``PtyLink`` with real-time UART
pacing and the same link faults.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, cast

import numpy as np

from emgkey.firmware_sim.faults import FaultInjector
from emgkey.firmware_sim.firmware import SampleSource
from emgkey.firmware_sim.link import FirmwareRunner, PtyLink
from emgkey.profiles import ARMBAND8, DeviceProfile

CYTON_SAMPLE_RATE_HZ = 250.0
CYTON_CHANNELS = 8
CYTON_GAIN = 24
CYTON_VREF_V = 4.5
CYTON_FULL_SCALE_COUNTS = 2**23 - 1
# Microvolts per count at the default gain, as BrainFlow scales it.
CYTON_SCALE_UV = CYTON_VREF_V / CYTON_FULL_SCALE_COUNTS / CYTON_GAIN * 1e6
CYTON_BAUD = 115_200
PACKET_SIZE = 33
START_BYTE = 0xA0
FOOTER_STANDARD = 0xC0

# The ADS1299's sinc3 decimation filter is -3 dB at 0.262 x the data rate: 65.5 Hz at 250 SPS.
CYTON_ANTI_ALIAS_HZ = 65.0

CYTON8 = dataclasses.replace(
    ARMBAND8,
    name="cyton8",
    sample_rate_hz=CYTON_SAMPLE_RATE_HZ,
    sample_format="float32",
    adc_scale_uv_per_count=1.0,  # stored as float32 microvolts; the wire quantizes to CYTON_SCALE_UV
    adc_bits=24,
    anti_alias_hz=CYTON_ANTI_ALIAS_HZ,
    serial_baud=CYTON_BAUD,
    samples_per_packet=1,
    n_bands=1,
    band_names=("right",),
)

# Replies, as the Cyton's firmware v3 prints them (BrainFlow only looks for the "$$$" terminator).
SOFT_RESET_REPLY = (
    b"OpenBCI V3 8-16 channel\nOn Board ADS1299 Device ID: 0x3E\nLIS3DH Device ID: 0x33\nFirmware: v3.1.2\n$$$"
)
DEFAULTS_REPLY = b"updating channel settings to default$$$"
DEFAULT_SETTINGS_REPLY = b"060110$$$"  # 'D': the default channel settings string
VERSION_REPLY = b"v3.1.2$$$"
SAMPLE_RATE_REPLY = b"Sample rate is 250Hz$$$"
CHANNEL_SET_LEN = 9  # 'x' + channel + 6 settings + 'X'


def quantize_cyton(uv: np.ndarray) -> np.ndarray:
    """Microvolts -> 24-bit ADC counts (int32), rounded and clipped symmetrically to +-(2^23 - 1)."""
    counts = np.rint(np.asarray(uv, dtype=np.float64) / CYTON_SCALE_UV)
    return np.clip(counts, -CYTON_FULL_SCALE_COUNTS, CYTON_FULL_SCALE_COUNTS).astype(np.int32)


def counts_to_uv(counts: np.ndarray) -> np.ndarray:
    """What BrainFlow reports for ``counts``: float64 microvolts."""
    return np.asarray(counts, dtype=np.float64) * CYTON_SCALE_UV


def encode_packets(counts: np.ndarray, first_counter: int = 0) -> bytes:
    """(n, 8) int counts -> n concatenated 33-byte packets with counters from ``first_counter`` (mod 256)."""
    assert counts.ndim == 2 and counts.shape[1] == CYTON_CHANNELS, f"counts must be (n, 8), got {counts.shape}"
    n = counts.shape[0]
    out = np.zeros((n, PACKET_SIZE), dtype=np.uint8)
    out[:, 0] = START_BYTE
    out[:, 1] = (first_counter + np.arange(n)) % 256
    c = counts.astype(np.int64) & 0xFFFFFF  # two's complement in 24 bits
    be = np.stack([(c >> 16) & 0xFF, (c >> 8) & 0xFF, c & 0xFF], axis=-1).astype(np.uint8)  # (n, 8, 3) big-endian
    out[:, 2:26] = be.reshape(n, 24)
    out[:, 32] = FOOTER_STANDARD  # aux bytes 26..31 stay 0 (no accelerometer reading)
    return out.tobytes()


def decode_packets(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Whole aligned packets -> (counters (n,), counts (n, 8)). For tests; BrainFlow is the real reader."""
    assert len(data) % PACKET_SIZE == 0, "data must be whole packets"
    pk = np.frombuffer(data, dtype=np.uint8).reshape(-1, PACKET_SIZE)
    assert (pk[:, 0] == START_BYTE).all(), "bad start byte"
    b = pk[:, 2:26].reshape(-1, CYTON_CHANNELS, 3).astype(np.int32)
    v = (b[..., 0] << 16) | (b[..., 1] << 8) | b[..., 2]
    v = np.where(v & 0x800000, v - (1 << 24), v)
    return pk[:, 1].astype(np.int64), v


@dataclass(frozen=True)
class CytonFrame:
    """Bytes leaving the board; ``sample_index`` is set for sample packets (link faults use it)."""

    data: bytes
    sample_index: int | None = None


@dataclass
class CytonStats:
    samples_sent: int = 0
    commands: int = 0
    unknown_commands: int = 0
    soft_resets: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class ArraySamples:
    """A (T, 8) or (T, 1, 8) microvolt array as a ``SampleSource``."""

    def __init__(self, uv: np.ndarray) -> None:
        uv = np.asarray(uv)
        if uv.ndim == 2:
            uv = uv[:, None, :]
        assert uv.ndim == 3 and uv.shape[1:] == (1, CYTON_CHANNELS), f"samples must be (T, [1,] 8), got {uv.shape}"
        self.samples = uv
        self.pos = 0

    def read(self, n: int) -> np.ndarray:
        block = self.samples[self.pos : self.pos + n]
        self.pos += block.shape[0]
        return block


class CytonFirmware:
    """Device-side logic of the emulated Cyton. No I/O: ``FirmwareRunner`` drives it (one packet per sample)."""

    def __init__(
        self,
        source: SampleSource,
        profile: DeviceProfile = CYTON8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert (profile.n_bands * profile.channels_per_band, profile.sample_rate_hz) == (
            CYTON_CHANNELS,
            CYTON_SAMPLE_RATE_HZ,
        ), f"a Cyton streams 8 channels at 250 Hz; profile {profile.name} does not"
        self.profile = profile
        self.source = source
        self.stats = CytonStats()
        self._clock = clock
        self.streaming = False
        self.source_exhausted = False
        self.next_index = 0  # absolute index of the next sample (also drives the packet counter)
        self._cmd = bytearray()  # a multi-byte command ('x...X') being received
        self._tx: deque[CytonFrame] = deque()
        self._t0: float | None = None
        self._i0 = 0

    # --- host -> board -----------------------------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        for byte in data:
            self._byte(bytes([byte]))

    def _reply(self, text: bytes) -> None:
        if not self.streaming:  # text while streaming would land between packets: the real board stays quiet too
            self._tx.append(CytonFrame(text))

    def _byte(self, b: bytes) -> None:
        if self._cmd:  # inside 'x' C P P P P P P 'X'
            self._cmd += b
            if len(self._cmd) == CHANNEL_SET_LEN:
                ok = self._cmd[-1:] == b"X" and self._cmd[1:2] in b"12345678"
                ch = self._cmd[1:2].decode("ascii", "replace")
                self._reply(b"Success: Channel set for %s$$$" % ch.encode() if ok else b"Failure: too few chars$$$")
                self._cmd.clear()
            return
        self.stats.commands += 1
        if b == b"v":
            self.stats.soft_resets += 1
            self.streaming = False
            self._tx.clear()
            self._reply(SOFT_RESET_REPLY)
        elif b == b"d":
            self._reply(DEFAULTS_REPLY)
        elif b == b"D":
            self._reply(DEFAULT_SETTINGS_REPLY)
        elif b == b"V":
            self._reply(VERSION_REPLY)
        elif b == b"~":
            self._reply(SAMPLE_RATE_REPLY)
        elif b == b"x":
            self._cmd += b
        elif b == b"b":
            if not self.streaming and not self.source_exhausted:
                self.streaming = True
                self._t0 = self._clock()
                self._i0 = self.next_index
        elif b == b"s":
            self.streaming = False
        elif b in b"12345678!@#$%^&*":
            pass  # channel off / on: acknowledged silently, as the firmware does
        else:
            self.stats.unknown_commands += 1

    # --- acquisition (the ArmbandFirmware interface FirmwareRunner uses) ---------------------------------------------

    def packets_due(self, now: float | None = None) -> int:
        if not self.streaming or self._t0 is None:
            return 0
        now = self._clock() if now is None else now
        return max(0, int((now - self._t0) * self.profile.sample_rate_hz) - (self.next_index - self._i0))

    def seconds_until_next_packet(self, now: float | None = None) -> float:
        if not self.streaming or self._t0 is None:
            return float("inf")
        now = self._clock() if now is None else now
        done = self.next_index - self._i0
        return max(0.0, self._t0 + (done + 1) / self.profile.sample_rate_hz - now)

    def acquire(self, n_packets: int = 1) -> int:
        """Sample and packetize up to ``n_packets`` samples; at the end of the source the board goes quiet."""
        if not self.streaming or n_packets <= 0:
            return 0
        block = self.source.read(n_packets)
        k = int(block.shape[0])
        if k:
            counts = quantize_cyton(block.reshape(k, -1))  # (k, 8)
            data = encode_packets(counts, self.next_index)
            for i in range(k):
                self._tx.append(CytonFrame(data[i * PACKET_SIZE : (i + 1) * PACKET_SIZE], self.next_index + i))
            self.next_index += k
            self.stats.samples_sent += k
        if k < n_packets:
            self.source_exhausted = True
            self.streaming = False
        return k

    @property
    def tx_empty(self) -> bool:
        return not self._tx

    def pop_tx(self) -> CytonFrame | None:
        return self._tx.popleft() if self._tx else None


class EmulatedCyton:
    """A ``CytonFirmware`` on a pty, driven by ``FirmwareRunner``: open it, hand ``path`` to BrainFlow.

    with EmulatedCyton(uv) as cyton:          # uv: (T, 8) or (T, 1, 8) microvolts
        params.serial_port = cyton.path
    """

    def __init__(
        self,
        samples: np.ndarray | SampleSource,
        *,
        realtime: bool = True,
        faults: FaultInjector | None = None,
        symlink: str | None = None,
    ) -> None:
        source = ArraySamples(samples) if isinstance(samples, np.ndarray) else samples
        self.firmware = CytonFirmware(source)
        self.link = PtyLink(symlink)
        self.realtime = realtime
        self.faults = faults
        self.runner: FirmwareRunner | None = None

    @property
    def path(self) -> str:
        return str(self.link.symlink) if self.link.symlink is not None else self.link.path

    def open(self) -> EmulatedCyton:
        self.link.open()
        # FirmwareRunner drives anything with ArmbandFirmware's transport-facing methods; CytonFirmware has them.
        fw = cast(Any, self.firmware)
        self.runner = FirmwareRunner(fw, self.link.master_fd, realtime=self.realtime, faults=self.faults).start()
        return self

    def close(self) -> None:
        try:
            if self.runner is not None:
                self.runner.stop()
        finally:
            self.runner = None
            self.link.close()

    def __enter__(self) -> EmulatedCyton:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "CYTON8",
    "CYTON_SAMPLE_RATE_HZ",
    "CYTON_SCALE_UV",
    "PACKET_SIZE",
    "ArraySamples",
    "CytonFirmware",
    "CytonFrame",
    "EmulatedCyton",
    "counts_to_uv",
    "decode_packets",
    "encode_packets",
    "quantize_cyton",
]
