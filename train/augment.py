"""Training augmentations as small numpy callables (no torch), composed per split.

Two stages, either side of ``emgkey.features.compute_features``:

- raw EMG, ``(T, n_bands, C)`` float32 microvolts: ``RandomBandRotation``,
  ``BandTemporalJitter``, ``AmplitudeScale``, ``GaussianNoise``;
- features, ``(T, n_bands, C, n_freq)`` float32: ``SpecAugment``, ``TimeWarp``.

Every transform is a ``@dataclass`` that validates its parameters in
``__post_init__`` and does the work in ``__call__(x, rng)``. The random
generator is passed in rather than global so a data loader can seed each
window from ``(seed, epoch, index)``: a resumed run, or one with a different
number of workers, sees exactly the same augmented windows. Labels never pass
through a transform: none of them moves a keystroke out of its window (jitter
shifts one band by far less than the window padding, time warping rescales
the whole window), so the targets stay valid as they are.

``build_raw_pipeline`` / ``build_feature_pipeline`` turn an ``AugmentConfig``
(seconds and fractions) into transforms (samples, frames and bins) for one
device and split; validation and test get the identity.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from emgkey.features import FeatureConfig
from emgkey.profiles import DeviceProfile
from emgkey.train.config import AugmentConfig

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _log_uniform(rng: np.random.Generator, lo: float, hi: float, size: int | None = None) -> np.ndarray | float:
    if lo == hi:
        return np.full(size, lo) if size is not None else lo
    return np.exp(rng.uniform(np.log(lo), np.log(hi), size=size))


# ---- raw EMG (T, n_bands, C) -------------------------------------------------------------------


@dataclass
class RandomBandRotation:
    """Roll each band's electrodes by an offset drawn from ``offsets`` (independently per band).

    The electrodes sit on a ring, so a band donned a little rotated is a
    circular shift of the channel axis (emg2qwerty's ``RandomBandRotation``).
    """

    offsets: Sequence[int] = (-1, 0, 1)

    def __post_init__(self) -> None:
        self.offsets = tuple(int(o) for o in self.offsets)
        assert len(self.offsets) >= 1, "RandomBandRotation needs at least one offset"

    def __call__(self, emg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """emg (T, n_bands, C) -> (T, n_bands, C)."""
        assert emg.ndim == 3, f"expected (T, n_bands, C), got {emg.shape}"
        shifts = rng.choice(self.offsets, size=emg.shape[1])  # (n_bands,)
        if not shifts.any():
            return emg
        return np.stack([np.roll(emg[:, b], int(s), axis=-1) for b, s in enumerate(shifts)], axis=1)


@dataclass
class BandTemporalJitter:
    """Shift the second band against the first by up to ``max_offset`` samples.

    The two bands are separate devices whose clocks are aligned only so well
    (emg2qwerty's ``TemporalAlignmentJitter``). Like emg2qwerty, the window
    is cropped by ``|offset|`` samples rather than wrapped around, so no
    discontinuity is invented; the crop comes out of the padding.
    """

    max_offset: int = 120

    def __post_init__(self) -> None:
        assert self.max_offset >= 0, "BandTemporalJitter.max_offset must be >= 0"

    def __call__(self, emg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """emg (T, n_bands, C) -> (T - |offset|, n_bands, C)."""
        assert emg.ndim == 3 and emg.shape[1] >= 2, f"expected (T, n_bands >= 2, C), got {emg.shape}"
        offset = int(rng.integers(-self.max_offset, self.max_offset + 1)) if self.max_offset else 0
        offset = int(np.clip(offset, -(emg.shape[0] - 1), emg.shape[0] - 1))
        if offset == 0:
            return emg
        k, t = abs(offset), emg.shape[0]
        if offset > 0:  # the other bands lag the first by k samples
            out = emg[k:].copy()  # (T - k, n_bands, C)
            out[:, 1:] = emg[: t - k, 1:]
        else:  # the other bands lead the first by k samples
            out = emg[: t - k].copy()  # (T - k, n_bands, C)
            out[:, 1:] = emg[k:, 1:]
        return out


@dataclass
class AmplitudeScale:
    """Multiply each band by a log-uniform factor in ``[lo, hi]`` (skin contact, gain spread)."""

    scale_range: tuple[float, float] = (0.8, 1.25)

    def __post_init__(self) -> None:
        lo, hi = self.scale_range
        assert 0 < lo <= hi, f"AmplitudeScale.scale_range must satisfy 0 < lo <= hi, got {self.scale_range}"

    def __call__(self, emg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """emg (T, n_bands, C) -> (T, n_bands, C)."""
        lo, hi = self.scale_range
        if lo == hi == 1.0:
            return emg
        scale = np.asarray(_log_uniform(rng, lo, hi, size=emg.shape[1]), dtype=np.float32)  # (n_bands,)
        return emg * scale[None, :, None]


@dataclass
class GaussianNoise:
    """Add white noise of ``std_uv`` microvolts (amplifier and electrode noise)."""

    std_uv: float = 2.0

    def __post_init__(self) -> None:
        assert self.std_uv >= 0, "GaussianNoise.std_uv must be >= 0"

    def __call__(self, emg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """emg (T, ...) -> (T, ...)."""
        if self.std_uv == 0:
            return emg
        return emg + rng.normal(0.0, self.std_uv, size=emg.shape).astype(emg.dtype)


# ---- features (T, n_bands, C, n_freq) ----------------------------------------------------------


@dataclass
class SpecAugment:
    """Time and frequency masks, drawn independently per band (emg2qwerty's ``iid_masks``).

    Mask widths are uniform in ``[0, max)`` and starts uniform over the valid
    range, as torchaudio's ``TimeMasking`` / ``FrequencyMasking``. Masked cells
    take each channel's mean log power over the window instead of torchaudio's
    0: the features are not normalised yet, and 0 would be a loud artefact.
    """

    n_time_masks: int = 3
    time_mask_max: int = 25  # frames
    n_freq_masks: int = 2
    freq_mask_max: int = 4  # bins

    def __post_init__(self) -> None:
        assert self.n_time_masks >= 0 and self.n_freq_masks >= 0, "SpecAugment mask counts must be >= 0"
        assert self.time_mask_max >= 0 and self.freq_mask_max >= 0, "SpecAugment mask widths must be >= 0"

    def __call__(self, feats: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """feats (T, n_bands, C, n_freq) -> (T, n_bands, C, n_freq)."""
        assert feats.ndim == 4, f"expected (T, n_bands, C, n_freq), got {feats.shape}"
        t, n_bands, _, n_freq = feats.shape
        time_on = self.n_time_masks > 0 and self.time_mask_max > 0 and t > 0
        freq_on = self.n_freq_masks > 0 and self.freq_mask_max > 0
        if not (time_on or freq_on):
            return feats
        mask = np.zeros((t, n_bands, 1, n_freq), dtype=bool)  # shared by a band's channels
        for b in range(n_bands):
            for _ in range(self.n_time_masks if time_on else 0):
                a, w = self._span(rng, self.time_mask_max, t)
                mask[a : a + w, b] = True
            for _ in range(self.n_freq_masks if freq_on else 0):
                a, w = self._span(rng, self.freq_mask_max, n_freq)
                mask[:, b, :, a : a + w] = True
        if not mask.any():
            return feats
        fill = feats.mean(axis=0, keepdims=True)  # (1, n_bands, C, n_freq)
        return np.where(mask, fill, feats).astype(feats.dtype, copy=False)

    @staticmethod
    def _span(rng: np.random.Generator, max_width: int, size: int) -> tuple[int, int]:
        width = int(rng.integers(0, min(max_width, size) + 1)) if size else 0
        start = int(rng.integers(0, size - width + 1))
        return start, width


@dataclass
class TimeWarp:
    """Resample the feature sequence along time by a log-uniform factor; labels unchanged.

    A factor above 1 stretches the window (slower typing), below 1 compresses
    it. Linear interpolation between frames; the first and last frames stay
    where they are, so the window's key presses keep their order and stay
    inside it. The model's output length follows from the new input length.
    """

    warp_range: tuple[float, float] = (0.8, 1.25)

    def __post_init__(self) -> None:
        lo, hi = self.warp_range
        assert 0 < lo <= hi, f"TimeWarp.warp_range must satisfy 0 < lo <= hi, got {self.warp_range}"

    def __call__(self, feats: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """feats (T, ...) -> (round(T * factor), ...)."""
        lo, hi = self.warp_range
        t = feats.shape[0]
        if (lo == hi == 1.0) or t < 2:
            return feats
        factor = float(_log_uniform(rng, lo, hi))
        t_new = max(2, round(t * factor))
        if t_new == t:
            return feats
        pos = np.linspace(0.0, t - 1, t_new)  # (T',) source positions
        i0 = np.floor(pos).astype(np.int64)
        i1 = np.minimum(i0 + 1, t - 1)
        w = (pos - i0).astype(np.float32).reshape(-1, *([1] * (feats.ndim - 1)))  # (T', 1, ...)
        return (feats[i0] * (1.0 - w) + feats[i1] * w).astype(feats.dtype, copy=False)


# ---- composition ---------------------------------------------------------------------------------


@dataclass
class Compose:
    """Apply transforms in order; empty is the identity (the validation/test pipeline)."""

    transforms: list[Transform] = field(default_factory=list)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for t in self.transforms:
            x = t(x, rng)
        return x

    def __len__(self) -> int:
        return len(self.transforms)


def build_raw_pipeline(cfg: AugmentConfig, profile: DeviceProfile, train: bool) -> Compose:
    """Raw-EMG augmentations for one device; identity unless ``train``."""
    if not train:
        return Compose()
    ts: list[Transform] = []
    if cfg.band_rotation:
        ts.append(RandomBandRotation(cfg.band_rotation_offsets))
    if cfg.band_jitter and profile.n_bands >= 2:
        ts.append(BandTemporalJitter(round(cfg.band_jitter_max_s * profile.sample_rate_hz)))
    if cfg.amplitude_scale:
        ts.append(AmplitudeScale(cfg.amplitude_scale_range))
    if cfg.noise:
        ts.append(GaussianNoise(cfg.noise_std_uv))
    return Compose(ts)


def build_feature_pipeline(cfg: AugmentConfig, feature_cfg: FeatureConfig, train: bool) -> Compose:
    """Feature augmentations for one front end; identity unless ``train``."""
    if not train:
        return Compose()
    ts: list[Transform] = []
    if cfg.specaugment:
        ts.append(
            SpecAugment(
                n_time_masks=cfg.n_time_masks,
                time_mask_max=round(cfg.time_mask_max_s * feature_cfg.frame_rate_hz),
                n_freq_masks=cfg.n_freq_masks,
                freq_mask_max=round(cfg.freq_mask_max_frac * feature_cfg.n_freq),
            )
        )
    if cfg.time_warp:
        ts.append(TimeWarp(cfg.time_warp_range))
    return Compose(ts)
