"""The feature front end: one numpy implementation for training and the device.

``LogSpectrogram`` reproduces emg2qwerty's transform (torchaudio
``Spectrogram(n_fft=64, hop_length=16, normalized=True, center=False)`` on each
channel, then ``log10(power + 1e-6)``): periodic Hann window, window-energy
normalisation, no centre padding. ``center=False`` is what makes the offline
feature equal to what a stream sees: frame ``k`` covers samples
``[k*hop, k*hop + n_fft)`` and needs nothing from the future.

The log-mel variant (``kind="logmel"``) applies a triangular mel filterbank to
the same power spectrum; a student report found mel features helped.

Training computes features with this module in its data pipeline and the edge
runtime computes them with ``StreamingFeaturizer``; both call the same
``_logspec_frames`` on the same frames, so they agree bit for bit
(``tests/test_features.py`` checks arbitrary chunkings).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from emgkey.profiles import DeviceProfile

FeatureKind = Literal["logspec", "logmel"]


@dataclass(frozen=True)
class FeatureConfig:
    kind: FeatureKind = "logspec"
    n_fft: int = 64
    hop: int = 16
    n_mels: int = 0  # only for kind="logmel"
    sample_rate_hz: float = 2000.0
    fmin_hz: float = 0.0
    fmax_hz: float | None = None  # None: Nyquist
    eps: float = 1e-6

    def __post_init__(self) -> None:
        assert self.kind in ("logspec", "logmel"), f"unknown feature kind {self.kind!r}"
        assert self.n_fft >= 2 and self.hop >= 1, "n_fft >= 2 and hop >= 1"
        assert self.hop <= self.n_fft, "hop larger than the window would skip samples"
        if self.kind == "logmel":
            assert 0 < self.n_mels <= self.n_fft // 2 + 1, "logmel needs 0 < n_mels <= n_fft//2 + 1"

    @property
    def n_freq(self) -> int:
        """Feature bins per channel."""
        return self.n_mels if self.kind == "logmel" else self.n_fft // 2 + 1

    @property
    def frame_rate_hz(self) -> float:
        return self.sample_rate_hz / self.hop

    def n_frames(self, n_samples: int) -> int:
        """Frames produced from ``n_samples`` samples (center=False)."""
        return 0 if n_samples < self.n_fft else 1 + (n_samples - self.n_fft) // self.hop

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureConfig:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown FeatureConfig fields: {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def for_profile(cls, profile: DeviceProfile, kind: FeatureKind = "logspec") -> FeatureConfig:
        """Defaults per device: emg2qwerty's 64/16 at 2 kHz (32 ms windows, 125 Hz frames).

        At 200 Hz the same 32 ms would be ~6 samples, too few for a spectrum: 16-sample
        windows (80 ms) with a 4-sample hop (50 Hz frames, 5 frames per key even at 10 keys/s,
        room enough for CTC's blanks). Measured on 36 min of simulated armband8 typing (GRU,
        batch 8, alignment warm-up, one core): validation CER 66 % after 1000 steps at 50 Hz vs
        78 % at 100 Hz (2-sample hop), with each step about half the compute, and half the
        device's per-second compute too.
        """
        if profile.sample_rate_hz >= 1000:
            n_fft, hop, n_mels = 64, 16, 24
        else:
            n_fft, hop, n_mels = 16, 4, 8
        return cls(
            kind=kind,
            n_fft=n_fft,
            hop=hop,
            n_mels=n_mels if kind == "logmel" else 0,
            sample_rate_hz=profile.sample_rate_hz,
        )


@dataclass
class _Tables:
    window: np.ndarray  # (n_fft,) float64, already divided by sqrt(sum(w^2))
    mel: np.ndarray | None  # (n_freq_bins, n_mels) float64


_TABLES: dict[FeatureConfig, _Tables] = {}


def _tables(cfg: FeatureConfig) -> _Tables:
    t = _TABLES.get(cfg)
    if t is None:
        n = np.arange(cfg.n_fft)
        window = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / cfg.n_fft)  # periodic Hann, as torch.hann_window
        window = window / np.sqrt(np.sum(window**2))  # torchaudio normalized=True ("window")
        mel = mel_filterbank(cfg) if cfg.kind == "logmel" else None
        t = _Tables(window=window, mel=mel)
        _TABLES[cfg] = t
    return t


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + f / 700.0)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(cfg: FeatureConfig) -> np.ndarray:
    """Triangular HTK-mel filters, (n_fft//2 + 1, n_mels), unnormalised peaks of 1."""
    n_bins = cfg.n_fft // 2 + 1
    fmax = cfg.fmax_hz if cfg.fmax_hz is not None else cfg.sample_rate_hz / 2
    bin_hz = np.linspace(0.0, cfg.sample_rate_hz / 2, n_bins)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(np.array(cfg.fmin_hz)), _hz_to_mel(np.array(fmax)), cfg.n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # (n_mels, 1)
    up = (bin_hz[None, :] - lower) / np.maximum(centre - lower, 1e-9)
    down = (upper - bin_hz[None, :]) / np.maximum(upper - centre, 1e-9)
    fb = np.clip(np.minimum(up, down), 0.0, None)  # (n_mels, n_bins)
    # Narrow low filters can fall between bins at small n_fft: give each at least its nearest bin.
    for m in range(cfg.n_mels):
        if fb[m].max() == 0.0:
            fb[m, int(np.argmin(np.abs(bin_hz - centre[m, 0])))] = 1.0
    return fb.T.astype(np.float64)


def _logspec_frames(frames: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """frames (F, ..., n_fft) float -> features (F, ..., n_freq) float32."""
    t = _tables(cfg)
    spec = np.fft.rfft(frames.astype(np.float64) * t.window, axis=-1)  # (F, ..., n_fft//2+1)
    power = spec.real**2 + spec.imag**2
    if t.mel is not None:
        power = power @ t.mel  # (F, ..., n_mels)
    return np.log10(power + cfg.eps).astype(np.float32)


def _frame(x: np.ndarray, cfg: FeatureConfig, n_frames: int) -> np.ndarray:
    """x (T, ...) -> frames (n_frames, ..., n_fft) as a strided view (no copy)."""
    view = np.lib.stride_tricks.sliding_window_view(x, cfg.n_fft, axis=0)  # (T-n_fft+1, ..., n_fft)
    return view[: (n_frames - 1) * cfg.hop + 1 : cfg.hop]


def compute_features(emg: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Offline features of a whole signal.

    emg: (T, n_bands, C) float microvolts -> (n_frames(T), n_bands, C, n_freq) float32.
    """
    assert emg.ndim >= 2, f"expected (T, ...) samples, got shape {emg.shape}"
    n = cfg.n_frames(emg.shape[0])
    if n == 0:
        return np.zeros((0, *emg.shape[1:], cfg.n_freq), dtype=np.float32)
    return _logspec_frames(_frame(emg, cfg, n), cfg)


@dataclass
class StreamingFeaturizer:
    """Incremental features: ``accept(chunk)`` returns the frames that became complete.

    Keeps only the last ``n_fft - hop`` (or fewer) samples between calls, so memory
    is bounded whatever the chunk sizes. Concatenating every output equals
    ``compute_features`` of the concatenated input exactly.
    """

    cfg: FeatureConfig
    channel_shape: tuple[int, ...]
    _buf: np.ndarray = field(init=False, repr=False)
    frames_emitted: int = field(init=False, default=0)
    samples_seen: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._buf = np.zeros((0, *self.channel_shape), dtype=np.float64)
        self.frames_emitted = 0
        self.samples_seen = 0

    def accept(self, chunk: np.ndarray) -> np.ndarray:
        """chunk (n, *channel_shape) -> (k, *channel_shape, n_freq) float32, k >= 0."""
        if chunk.shape[1:] != self.channel_shape:
            raise ValueError(f"chunk has channel shape {chunk.shape[1:]}, featurizer expects {self.channel_shape}")
        self.samples_seen += chunk.shape[0]
        buf = np.concatenate([self._buf, chunk.astype(np.float64)], axis=0) if len(self._buf) else chunk
        n = self.cfg.n_frames(buf.shape[0])
        if n == 0:
            self._buf = np.asarray(buf, dtype=np.float64)
            return np.zeros((0, *self.channel_shape, self.cfg.n_freq), dtype=np.float32)
        out = _logspec_frames(_frame(buf, self.cfg, n), self.cfg)
        self._buf = np.array(buf[n * self.cfg.hop :], dtype=np.float64)  # copy: don't pin the caller's array
        self.frames_emitted += n
        return out
