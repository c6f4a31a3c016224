"""Seeded fault injection for the simulated serial link and device.

Spec strings (``emgkey sim stream --faults``) are comma-separated ``key=value`` pairs::

    bitflip=1e-4,drop=1e-4,dup=1e-5,burst=0.001,stall=0.01,overflow=0.001,drift_ppm=50,disconnect_at=10

=============  ==========================================================================  =========
key            meaning                                                                     default
=============  ==========================================================================  =========
bitflip        probability that any one bit on the wire is inverted (bit error rate)      0
drop           probability that a byte is lost                                             0
dup            probability that a byte is received twice                                   0
burst          probability, per frame, of a burst of random garbage bytes inside it        0
burst_max      longest garbage burst, bytes (lengths are uniform in 1..burst_max)          32
stall          probability, per frame, that the writer pauses before sending it            0
stall_s        length of one stall, seconds                                                0.05
overflow       probability, per DATA packet, that the device's TX buffer overflows         0
               (the packet is dropped on the device: a sequence and sample gap)
drift_ppm      device crystal error; the device samples at rate * (1 + ppm / 1e6)          0
disconnect_at  device time (seconds of samples) at which the link goes down                none
disconnect_s   how long it stays down; frames due meanwhile are lost                       1.0
seed           RNG seed (the CLI's --seed when absent)                                     0
=============  ==========================================================================  =========

Unknown keys are an error, not a silent no-op. Each fault has its own RNG stream
(spawned from ``seed``), so enabling one fault does not change where another strikes.
Byte faults are small dataclass callables composed in a chain; a transport applies
``FaultInjector.corrupt`` to each frame it writes, so the frames a fault touched are known.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Protocol

import numpy as np

from emgkey.errors import ConfigError


@dataclass(frozen=True)
class FaultSpec:
    bitflip: float = 0.0
    drop: float = 0.0
    dup: float = 0.0
    burst: float = 0.0
    burst_max: int = 32
    stall: float = 0.0
    stall_s: float = 0.05
    overflow: float = 0.0
    drift_ppm: float = 0.0
    disconnect_at: float | None = None
    disconnect_s: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("bitflip", "drop", "dup", "burst", "stall", "overflow"):
            p = getattr(self, name)
            if not (0.0 <= p <= 1.0):
                raise ConfigError(f"fault {name}={p}: a probability must lie in [0, 1]")
        if self.burst_max < 1:
            raise ConfigError(f"fault burst_max={self.burst_max} must be >= 1")
        if self.stall_s < 0 or self.disconnect_s < 0:
            raise ConfigError("fault durations must be non-negative")
        if abs(self.drift_ppm) >= 10_000:
            raise ConfigError(f"fault drift_ppm={self.drift_ppm}: beyond 1% is not a crystal error")
        if self.disconnect_at is not None and self.disconnect_at < 0:
            raise ConfigError("fault disconnect_at must be non-negative")

    @classmethod
    def parse(cls, spec: str, seed: int = 0) -> FaultSpec:
        """Parse ``"key=value,..."``; an empty string means no faults. ``seed`` applies unless the spec has one."""
        kinds = {f.name: f.type for f in fields(cls)}
        values: dict[str, object] = {"seed": seed}
        for item in (s.strip() for s in spec.split(",")):
            if not item:
                continue
            key, sep, raw = item.partition("=")
            key = key.strip()
            if not sep:
                raise ConfigError(f"fault spec item {item!r} is not key=value")
            if key not in kinds:
                raise ConfigError(f"unknown fault {key!r}; known: {', '.join(sorted(kinds))}")
            try:
                values[key] = int(raw) if key in ("seed", "burst_max") else float(raw)
            except ValueError:
                raise ConfigError(f"fault {key}={raw!r} is not a number") from None
        return cls(**values)  # type: ignore[arg-type]

    def __str__(self) -> str:
        default = FaultSpec()
        items = [
            f"{f.name}={getattr(self, f.name)}"
            for f in fields(self)
            if getattr(self, f.name) != getattr(default, f.name)
        ]
        return ",".join(items) or "none"

    @property
    def active(self) -> bool:
        """True when any fault is switched on (the seed alone does not count)."""
        default = FaultSpec()
        return any(getattr(self, f.name) != getattr(default, f.name) for f in fields(self) if f.name != "seed")


@dataclass
class FaultStats:
    bits_flipped: int = 0
    bytes_dropped: int = 0
    bytes_duplicated: int = 0
    bursts: int = 0
    burst_bytes: int = 0
    frames_corrupted: int = 0  # frames at least one byte fault touched
    stalls: int = 0
    forced_overflows: int = 0
    frames_lost_disconnected: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class ByteFault(Protocol):
    """A byte-stream fault: returns the damaged bytes and records what it did in ``stats``."""

    def __call__(self, data: bytes, rng: np.random.Generator, stats: FaultStats) -> bytes: ...


@dataclass(frozen=True)
class BitFlips:
    rate: float  # per bit

    def __call__(self, data: bytes, rng: np.random.Generator, stats: FaultStats) -> bytes:
        k = int(rng.binomial(8 * len(data), self.rate)) if data else 0
        if not k:
            return data
        bits = np.unique(rng.integers(0, 8 * len(data), k))
        buf = np.frombuffer(data, dtype=np.uint8).copy()
        np.bitwise_xor.at(buf, bits // 8, (1 << (bits % 8)).astype(np.uint8))
        stats.bits_flipped += len(bits)
        return buf.tobytes()


@dataclass(frozen=True)
class DroppedBytes:
    rate: float  # per byte

    def __call__(self, data: bytes, rng: np.random.Generator, stats: FaultStats) -> bytes:
        k = int(rng.binomial(len(data), self.rate)) if data else 0
        if not k:
            return data
        where = np.unique(rng.integers(0, len(data), k))
        stats.bytes_dropped += len(where)
        return np.delete(np.frombuffer(data, dtype=np.uint8), where).tobytes()


@dataclass(frozen=True)
class DuplicatedBytes:
    rate: float  # per byte

    def __call__(self, data: bytes, rng: np.random.Generator, stats: FaultStats) -> bytes:
        k = int(rng.binomial(len(data), self.rate)) if data else 0
        if not k:
            return data
        where = np.unique(rng.integers(0, len(data), k))
        arr = np.frombuffer(data, dtype=np.uint8)
        stats.bytes_duplicated += len(where)
        return np.insert(arr, where, arr[where]).tobytes()


@dataclass(frozen=True)
class GarbageBursts:
    rate: float  # per frame
    max_len: int = 32

    def __post_init__(self) -> None:
        assert self.max_len >= 1, "max_len must be >= 1"

    def __call__(self, data: bytes, rng: np.random.Generator, stats: FaultStats) -> bytes:
        if not self.rate or rng.random() >= self.rate:
            return data
        n = int(rng.integers(1, self.max_len + 1))
        at = int(rng.integers(0, len(data) + 1))
        stats.bursts += 1
        stats.burst_bytes += n
        return data[:at] + rng.integers(0, 256, n, dtype=np.uint8).tobytes() + data[at:]


@dataclass
class FaultInjector:
    """All faults of one spec, each with its own seeded RNG stream."""

    spec: FaultSpec
    byte_faults: Sequence[ByteFault] = ()  # default: built from spec (flips, drops, dups, bursts)
    stats: FaultStats = field(default_factory=FaultStats)

    def __post_init__(self) -> None:
        s = self.spec
        if not self.byte_faults:
            chain: list[ByteFault] = []
            if s.bitflip:
                chain.append(BitFlips(s.bitflip))
            if s.drop:
                chain.append(DroppedBytes(s.drop))
            if s.dup:
                chain.append(DuplicatedBytes(s.dup))
            if s.burst:
                chain.append(GarbageBursts(s.burst, s.burst_max))
            self.byte_faults = tuple(chain)
        seqs = np.random.SeedSequence(s.seed).spawn(len(self.byte_faults) + 2)
        self._byte_rngs = [np.random.default_rng(q) for q in seqs[:-2]]
        self._stall_rng = np.random.default_rng(seqs[-2])
        self._overflow_rng = np.random.default_rng(seqs[-1])

    @classmethod
    def parse(cls, spec: str, seed: int = 0) -> FaultInjector:
        return cls(FaultSpec.parse(spec, seed=seed))

    @property
    def drift_ppm(self) -> float:
        return self.spec.drift_ppm

    def corrupt(self, data: bytes) -> bytes:
        """Apply the byte-fault chain to one frame's bytes."""
        before = (self.stats.bits_flipped, self.stats.bytes_dropped, self.stats.bytes_duplicated, self.stats.bursts)
        for fault, rng in zip(self.byte_faults, self._byte_rngs):
            data = fault(data, rng, self.stats)
        after = (self.stats.bits_flipped, self.stats.bytes_dropped, self.stats.bytes_duplicated, self.stats.bursts)
        self.stats.frames_corrupted += int(after != before)
        return data

    def drop_packet(self) -> bool:
        """Firmware hook: True forces a TX-buffer overflow for this DATA packet."""
        if self.spec.overflow and self._overflow_rng.random() < self.spec.overflow:
            self.stats.forced_overflows += 1
            return True
        return False

    def stall_s(self) -> float:
        """Seconds the writer pauses before the next frame (0.0 almost always)."""
        if self.spec.stall and self._stall_rng.random() < self.spec.stall:
            self.stats.stalls += 1
            return self.spec.stall_s
        return 0.0

    def link_down(self, device_time_s: float) -> bool:
        """True while the link is disconnected, by the device time of the frame's first sample."""
        at = self.spec.disconnect_at
        return at is not None and at <= device_time_s < at + self.spec.disconnect_s

    def corrupt_stream(self, frames: Sequence[bytes]) -> tuple[bytes, list[int]]:
        """Corrupt each frame in turn (no pty): returns the joined bytes and the indices of frames touched."""
        out: list[bytes] = []
        touched: list[int] = []
        for i, f in enumerate(frames):
            g = self.corrupt(f)
            if g != f:
                touched.append(i)
            out.append(g)
        return b"".join(out), touched
