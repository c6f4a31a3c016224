"""Augmentations: shapes, identity when off, what each one does, determinism given the generator."""

from __future__ import annotations

import numpy as np
import pytest

from emgkey.features import FeatureConfig
from emgkey.profiles import ARMBAND8, EMG2QWERTY
from emgkey.train.augment import (
    AmplitudeScale,
    BandTemporalJitter,
    Compose,
    GaussianNoise,
    RandomBandRotation,
    SpecAugment,
    TimeWarp,
    build_feature_pipeline,
    build_raw_pipeline,
)
from emgkey.train.config import AugmentConfig


def _emg(t=400, bands=2, c=8, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 20, size=(t, bands, c)).astype(np.float32)


def _feats(t=60, bands=2, c=8, f=9, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(2, 1, size=(t, bands, c, f)).astype(np.float32)


def _rng(seed=1) -> np.random.Generator:
    return np.random.default_rng(seed)


OFF = [
    (RandomBandRotation((0,)), _emg),
    (BandTemporalJitter(0), _emg),
    (AmplitudeScale((1.0, 1.0)), _emg),
    (GaussianNoise(0.0), _emg),
    (SpecAugment(n_time_masks=0, n_freq_masks=0), _feats),
    (SpecAugment(time_mask_max=0, freq_mask_max=0), _feats),
    (TimeWarp((1.0, 1.0)), _feats),
]


@pytest.mark.parametrize(("transform", "make"), OFF, ids=lambda x: type(x).__name__ if not callable(x) else "")
def test_identity_when_off(transform, make):
    x = make()
    np.testing.assert_array_equal(transform(x, _rng()), x)


ON = [
    (RandomBandRotation((-1, 0, 1)), _emg),
    (BandTemporalJitter(20), _emg),
    (AmplitudeScale((0.5, 2.0)), _emg),
    (GaussianNoise(3.0), _emg),
    (SpecAugment(3, 10, 2, 3), _feats),
    (TimeWarp((0.7, 1.4)), _feats),
]


@pytest.mark.parametrize(("transform", "make"), ON)
def test_deterministic_given_the_generator_and_keeps_dtype(transform, make):
    x = make()
    a, b = transform(x, _rng(5)), transform(x, _rng(5))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.shape[1:] == x.shape[1:]


def test_band_rotation_rolls_each_band_by_an_allowed_offset():
    x = _emg(c=8)
    for seed in range(10):
        y = RandomBandRotation((-1, 0, 1))(x, _rng(seed))
        assert y.shape == x.shape
        for b in range(2):
            assert any(np.array_equal(y[:, b], np.roll(x[:, b], s, axis=-1)) for s in (-1, 0, 1))


def test_band_jitter_shifts_the_second_band_and_crops():
    x = _emg(t=300)
    seen = set()
    for seed in range(20):
        y = BandTemporalJitter(10)(x, _rng(seed))
        k = x.shape[0] - y.shape[0]
        assert 0 <= k <= 10
        # one of the two alignments: band 1 lags or leads band 0 by k samples
        lag = np.array_equal(y[:, 0], x[k:, 0]) and np.array_equal(y[:, 1], x[: x.shape[0] - k, 1])
        lead = np.array_equal(y[:, 0], x[: x.shape[0] - k, 0]) and np.array_equal(y[:, 1], x[k:, 1])
        assert lag or lead
        seen.add(k)
    assert len(seen) > 3


def test_amplitude_scale_is_one_factor_per_band():
    x = _emg()
    y = AmplitudeScale((0.5, 2.0))(x, _rng())
    ratio = y / x  # (T, bands, C)
    for b in range(2):
        assert np.allclose(ratio[:, b], ratio[0, b, 0], rtol=1e-5)
        assert 0.5 <= ratio[0, b, 0] <= 2.0


def test_gaussian_noise_has_the_asked_spread():
    x = np.zeros((20000, 2, 4), dtype=np.float32)
    y = GaussianNoise(3.0)(x, _rng())
    assert abs(float(y.std()) - 3.0) < 0.1


def test_specaugment_masks_with_the_channel_mean_per_band():
    x = _feats(t=100)
    y = SpecAugment(n_time_masks=2, time_mask_max=20, n_freq_masks=1, freq_mask_max=3)(x, _rng(3))
    assert y.shape == x.shape
    changed = y != x  # (T, bands, C, F)
    assert changed.any()
    mean = x.mean(axis=0, keepdims=True)
    np.testing.assert_allclose(y[changed], np.broadcast_to(mean, x.shape)[changed], rtol=1e-6)
    # masks are shared by the channels of a band (rows change together)
    for b in range(2):
        assert (changed[:, b] == changed[:, b, :1]).all()


def test_time_warp_changes_length_and_keeps_endpoints():
    x = _feats(t=100)
    lengths = set()
    for seed in range(10):
        y = TimeWarp((0.8, 1.25))(x, _rng(seed))
        assert 80 <= y.shape[0] <= 125 and y.shape[1:] == x.shape[1:]
        np.testing.assert_allclose(y[0], x[0])
        np.testing.assert_allclose(y[-1], x[-1], rtol=1e-5)
        lengths.add(y.shape[0])
    assert len(lengths) > 3


def test_transforms_validate_their_parameters():
    with pytest.raises(AssertionError):
        RandomBandRotation(())
    with pytest.raises(AssertionError):
        BandTemporalJitter(-1)
    with pytest.raises(AssertionError):
        AmplitudeScale((2.0, 1.0))
    with pytest.raises(AssertionError):
        GaussianNoise(-1.0)
    with pytest.raises(AssertionError):
        SpecAugment(n_time_masks=-1)
    with pytest.raises(AssertionError):
        TimeWarp((0.0, 1.0))


@pytest.mark.parametrize("profile", [EMG2QWERTY, ARMBAND8], ids=lambda p: p.name)
def test_pipelines_follow_the_switches_and_the_device(profile):
    fcfg = FeatureConfig.for_profile(profile)
    everything = AugmentConfig(amplitude_scale=True, noise=True, time_warp=True)
    raw = build_raw_pipeline(everything, profile, train=True)
    feat = build_feature_pipeline(everything, fcfg, train=True)
    assert [type(t).__name__ for t in raw.transforms] == [
        "RandomBandRotation",
        "BandTemporalJitter",
        "AmplitudeScale",
        "GaussianNoise",
    ]
    assert [type(t).__name__ for t in feat.transforms] == ["SpecAugment", "TimeWarp"]
    # device-free units converted for this device: 0.06 s of jitter, 0.2 s time masks
    assert raw.transforms[1].max_offset == round(0.06 * profile.sample_rate_hz)
    assert feat.transforms[0].time_mask_max == round(0.2 * fcfg.frame_rate_hz)
    # validation and test: identity whatever the config says
    assert len(build_raw_pipeline(everything, profile, train=False)) == 0
    assert len(build_feature_pipeline(everything, fcfg, train=False)) == 0
    nothing = AugmentConfig(band_rotation=False, band_jitter=False, specaugment=False)
    assert (
        len(build_raw_pipeline(nothing, profile, True)) == 0 and len(build_feature_pipeline(nothing, fcfg, True)) == 0
    )
    x = _emg()
    np.testing.assert_array_equal(Compose()(x, _rng()), x)
