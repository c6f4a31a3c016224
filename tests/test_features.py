"""Front-end features: emg2qwerty's definition, and streaming equals offline exactly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emgkey.features import FeatureConfig, StreamingFeaturizer, compute_features, mel_filterbank
from emgkey.profiles import ARMBAND8, EMG2QWERTY


def _signal(t: int, shape=(2, 4), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 30, size=(t, *shape)).astype(np.float32)


def test_frame_count_is_center_false():
    cfg = FeatureConfig()
    assert cfg.n_frames(63) == 0
    assert cfg.n_frames(64) == 1
    assert cfg.n_frames(64 + 15) == 1
    assert cfg.n_frames(64 + 16) == 2
    assert compute_features(_signal(8000), cfg).shape == (1 + (8000 - 64) // 16, 2, 4, 33)


def test_matches_hand_computed_frame():
    cfg = FeatureConfig(n_fft=8, hop=4, sample_rate_hz=100.0)
    x = np.zeros((8, 1), dtype=np.float32)
    x[:, 0] = [1, 2, 3, 4, 5, 6, 7, 8]
    w = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(8) / 8)
    expected = np.log10(np.abs(np.fft.rfft(x[:, 0] * w / np.sqrt((w**2).sum()))) ** 2 + 1e-6)
    np.testing.assert_allclose(compute_features(x, cfg)[0, 0], expected, rtol=1e-6)


def test_matches_torch_stft_reference():
    torch = pytest.importorskip("torch", reason="torch reference needs the training extras")
    cfg = FeatureConfig()
    x = _signal(2000, shape=(3,))
    xt = torch.from_numpy(x.T.astype(np.float64))  # (C, T)
    window = torch.hann_window(64, dtype=torch.float64)
    spec = torch.stft(xt, 64, 16, window=window, center=False, return_complex=True) / window.pow(2).sum().sqrt()
    ref = torch.log10(spec.abs() ** 2 + 1e-6).permute(2, 0, 1).numpy()  # (frames, C, freq)
    np.testing.assert_allclose(compute_features(x, cfg), ref, rtol=1e-5, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(
    chunks=st.lists(st.integers(min_value=0, max_value=300), min_size=1, max_size=30),
    kind=st.sampled_from(["logspec", "logmel"]),
    profile=st.sampled_from([EMG2QWERTY, ARMBAND8]),
)
def test_streaming_equals_offline_for_any_chunking(chunks, kind, profile):
    cfg = FeatureConfig.for_profile(profile, kind=kind)
    x = _signal(sum(chunks), seed=len(chunks))
    stream = StreamingFeaturizer(cfg, channel_shape=x.shape[1:])
    pieces, pos = [], 0
    for n in chunks:
        pieces.append(stream.accept(x[pos : pos + n]))
        pos += n
    streamed = np.concatenate(pieces, axis=0)
    offline = compute_features(x, cfg)
    assert streamed.shape == offline.shape
    assert np.array_equal(streamed, offline), "streaming features must equal offline bit for bit"
    assert stream.frames_emitted == cfg.n_frames(len(x))


def test_streaming_buffer_stays_bounded():
    cfg = FeatureConfig()
    stream = StreamingFeaturizer(cfg, channel_shape=(2, 4))
    for i in range(200):
        stream.accept(_signal(97, seed=i))
        assert len(stream._buf) < cfg.n_fft


def test_wrong_channel_shape_is_rejected():
    stream = StreamingFeaturizer(FeatureConfig(), channel_shape=(2, 16))
    with pytest.raises(ValueError, match="channel shape"):
        stream.accept(np.zeros((10, 2, 8), dtype=np.float32))


def test_mel_filterbank_covers_every_filter():
    for profile in (EMG2QWERTY, ARMBAND8):
        cfg = FeatureConfig.for_profile(profile, kind="logmel")
        fb = mel_filterbank(cfg)
        assert fb.shape == (cfg.n_fft // 2 + 1, cfg.n_mels)
        assert (fb.max(axis=0) > 0).all(), "every mel filter must see at least one bin"


def test_config_round_trip_and_unknown_keys():
    cfg = FeatureConfig.for_profile(ARMBAND8, kind="logmel")
    assert FeatureConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        FeatureConfig.from_dict({**cfg.to_dict(), "n_ftt": 3})
