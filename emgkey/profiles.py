"""Device profiles: what an armband is, as data (BrainFlow's "boards are data").

A profile says how many bands and electrodes a device has, where the electrodes
sit, how fast and in what format it samples, and how its serial link is set
up. Nothing else in emgkey hard-codes these numbers: the simulator, the session
files, the serial protocol and the edge runtime all read them from here (or
from the artifact that recorded them).

Two profiles ship:
- ``emg2qwerty``: Meta's research bands, 2 x 16 differential channels at 2 kHz,
  stored as float32 microvolts (the published dataset's format).
- ``armband8``: a consumer-class band, 2 x 8 channels at 200 Hz, 16-bit ADC
  counts (``adc_scale_uv_per_count`` microvolts per count), with an analogue
  anti-alias filter at 80 Hz. It sees the same muscles through fewer, coarser
  electrodes and loses everything above 100 Hz, where much sEMG power lives.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

SampleFormat = Literal["float32", "int16"]


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    channels_per_band: int
    sample_rate_hz: float
    sample_format: SampleFormat
    # Microvolts per stored unit: 1.0 for float32 microvolts, the ADC LSB for int16 counts.
    adc_scale_uv_per_count: float
    adc_bits: int
    # Electrode centres around the forearm, degrees, channel order (0 = dorsal midline).
    electrode_angles_deg: tuple[float, ...]
    # Angular width of one electrode's pickup (wider electrodes average more sources).
    electrode_width_deg: float
    # Analogue front end: high-pass corner and (for decimating devices) anti-alias corner.
    highpass_hz: float
    anti_alias_hz: float | None
    serial_baud: int
    samples_per_packet: int
    n_bands: int = 2
    band_names: tuple[str, ...] = ("left", "right")
    # Board channel index -> electrode index, per band (identity unless the board wires otherwise).
    channel_map: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        assert self.channels_per_band > 0, "channels_per_band must be positive"
        assert self.sample_rate_hz > 0, "sample_rate_hz must be positive"
        assert self.sample_format in ("float32", "int16"), f"unknown sample_format {self.sample_format!r}"
        assert len(self.electrode_angles_deg) == self.channels_per_band, (
            f"{self.name}: {len(self.electrode_angles_deg)} electrode angles for {self.channels_per_band} channels"
        )
        assert len(self.band_names) == self.n_bands, "one name per band"
        if self.anti_alias_hz is not None:
            assert self.anti_alias_hz < self.sample_rate_hz / 2, "anti-alias corner must be below Nyquist"
        if not self.channel_map:
            object.__setattr__(self, "channel_map", tuple(range(self.channels_per_band)))
        assert sorted(self.channel_map) == list(range(self.channels_per_band)), "channel_map must be a permutation"

    @property
    def n_channels(self) -> int:
        """All channels of all bands."""
        return self.n_bands * self.channels_per_band

    @property
    def full_scale_uv(self) -> float:
        """Largest magnitude the device can represent, in microvolts."""
        if self.sample_format == "float32":
            return math.inf
        return (2 ** (self.adc_bits - 1) - 1) * self.adc_scale_uv_per_count

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DeviceProfile:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown DeviceProfile fields: {sorted(unknown)}")
        kw: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kw)


def _ring(n: int) -> tuple[float, ...]:
    return tuple(360.0 * i / n for i in range(n))


EMG2QWERTY = DeviceProfile(
    name="emg2qwerty",
    channels_per_band=16,
    sample_rate_hz=2000.0,
    sample_format="float32",
    adc_scale_uv_per_count=1.0,
    adc_bits=24,
    electrode_angles_deg=_ring(16),
    electrode_width_deg=12.0,
    highpass_hz=40.0,  # emg2qwerty ships high-pass filtered signals; the simulator uses this corner
    anti_alias_hz=None,
    serial_baud=3_000_000,  # 2 x 16 ch x 2 kHz x 2 B = 128 kB/s before framing
    samples_per_packet=20,  # 10 ms per packet
)

ARMBAND8 = DeviceProfile(
    name="armband8",
    channels_per_band=8,
    sample_rate_hz=200.0,
    sample_format="int16",
    adc_scale_uv_per_count=0.5,  # +-16.4 mV full scale at 16 bits
    adc_bits=16,
    electrode_angles_deg=_ring(8),
    electrode_width_deg=22.0,
    highpass_hz=10.0,
    anti_alias_hz=80.0,
    serial_baud=115_200,  # 2 x 8 ch x 200 Hz x 2 B = 6.4 kB/s before framing
    samples_per_packet=10,  # 50 ms per packet
)

PROFILES: dict[str, DeviceProfile] = {p.name: p for p in (EMG2QWERTY, ARMBAND8)}


def get_profile(name: str) -> DeviceProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown device profile {name!r}; known: {sorted(PROFILES)}") from None
