"""Key-prototype rescoring (``edge_runtime.keyproto``): vectors, alignment, prior/profile files, the decoder.

Hand-made cases where the answer is known, properties (streaming == offline, ``lam = 0`` is plain greedy),
and the files' refusals (corrupt, hash mismatch, wrong frames).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emgkey import charset
from emgkey.decoding import greedy_decode
from emgkey.edge_runtime.keyproto import (
    KeyFeatureSpec,
    KeyFitConfig,
    KeyPrior,
    KeyProfile,
    KeyProtoError,
    KeyRescoringDecoder,
    ctc_peaks,
    fit_profile,
    gap_centres,
    greedy_runs,
    key_vectors,
    rescore_offline,
)
from emgkey.lda import within_between

BLANK = charset.BLANK
C = charset.NUM_CLASSES
SHAPE = (1, 2, 6)  # (n_bands, C, n_freq): small frames
FPS = 50.0
A, B = charset.str_to_labels("ab")


def _peaky(T: int, spikes: dict[int, int], rng: np.random.Generator | None = None) -> np.ndarray:
    """log-probs (T, C): blank everywhere except label ``k`` at frame ``t`` for ``spikes = {t: k}``."""
    x = np.full((T, C), -8.0)
    x[:, BLANK] = 0.0
    for t, k in spikes.items():
        x[t, BLANK] = -8.0
        x[t, k] = 0.0
    if rng is not None:
        x = x + 0.1 * rng.standard_normal(x.shape)
    return x - np.logaddexp.reduce(x, axis=1, keepdims=True)


def test_spec_edges_scale_with_the_frame_rate() -> None:
    spec = KeyFeatureSpec()
    assert spec.edges(50.0) == (-10, -7, -4, -1, 2)
    assert spec.edges(125.0) == (-25, -17, -10, -2, 5)
    assert spec.lookahead(50.0) == 2
    assert spec.dim((2, 8, 9)) == 4 * 3 * 2 * 8
    with pytest.raises(KeyProtoError, match="does not fit"):
        spec.groups(4)  # bins 5.. do not exist


def test_key_vectors_by_hand() -> None:
    spec = KeyFeatureSpec(edges_ms=(-40.0, 0.0, 40.0), bin_groups=((0, 3), (3, 0)))  # frames -2..-1, 0..1 at 50 fps
    T = 10
    frames = np.zeros((T, *SHAPE), np.float32)
    frames[:, 0, 0, :3] = np.arange(T)[:, None]  # electrode 0, low bins: the frame index
    frames[:, 0, 1, 3:] = 7.0  # electrode 1, high bins: constant
    v = key_vectors(frames, np.array([5, 0, 9]), spec, FPS)
    assert v.shape == (3, 2 * 2 * 2)  # windows x groups x (1 x 2 electrodes)
    # layout: window, group, band, electrode
    np.testing.assert_allclose(v[0], [3.5, 0, 0, 7, 5.5, 0, 0, 7])
    # at frame 0 the window before is clipped to frame 0 itself; at frame 9 the one after holds frame 9 only
    np.testing.assert_allclose(v[1], [0, 0, 0, 7, 0.5, 0, 0, 7])
    # a window entirely past the end contributes zeros
    late = KeyFeatureSpec(edges_ms=(40.0, 80.0), bin_groups=((0, 3),))
    np.testing.assert_allclose(key_vectors(frames, np.array([9]), late, FPS), [[0, 0]])
    np.testing.assert_allclose(v[2], [7.5, 0, 0, 7, 9, 0, 0, 7])


def test_ctc_peaks_find_hand_placed_spikes() -> None:
    lp = _peaky(30, {4: A, 9: B, 15: B, 22: A}, np.random.default_rng(0))
    np.testing.assert_array_equal(ctc_peaks(lp, np.array([A, B, B, A])), [4, 9, 15, 22])
    # no path: a repeated label needs a blank between, 3 frames cannot hold "aa" + ... of 4 labels
    assert (ctc_peaks(lp[:3], np.array([A, A, B, B])) == -1).all()
    assert len(ctc_peaks(lp, np.zeros(0, np.int64))) == 0


def test_greedy_runs_take_each_runs_peak() -> None:
    lp = _peaky(12, {2: A, 3: A, 7: B})
    lp[3, A] = -0.5  # frame 3 less sure than frame 2 (-0.03)
    peaks, labels = greedy_runs(lp)
    np.testing.assert_array_equal(labels, [A, B])
    np.testing.assert_array_equal(peaks, [2, 7])


def _profile(
    lam: float = 1.0, seed: int = 0, classes: tuple[int, ...] = (A, B), blank_offset: float = 0.0
) -> KeyProfile:
    rng = np.random.default_rng(seed)
    spec = KeyFeatureSpec()
    d = spec.dim(SHAPE)
    w = rng.standard_normal((d, len(classes)))
    b = rng.standard_normal(len(classes))
    return KeyProfile(np.array(classes), w, b, np.zeros(d), spec, FPS, SHAPE, lam, blank_offset=blank_offset)


def _streamed(
    prof: KeyProfile, lp: np.ndarray, frames: np.ndarray, chunks: list[int], adapt: bool = False
) -> list[int]:
    """The decoder fed frames and emissions in chunks of the given sizes (cycled), then finished."""
    dec = KeyRescoringDecoder(prof, adapt=adapt)
    t, i = 0, 0
    while t < len(lp):
        n = chunks[i % len(chunks)]
        dec.observe_frames(frames[t : t + n])
        dec.decode(lp[t : t + n])
        t, i = t + n, i + 1
    return dec.decode(np.zeros((0, C)), finish=True)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), chunks=st.lists(st.integers(1, 9), min_size=1, max_size=6))
def test_streaming_equals_offline_and_lam_zero_is_greedy(seed: int, chunks: list[int]) -> None:
    rng = np.random.default_rng(seed)
    T = 60
    spikes = {int(t): int(rng.choice([A, B, 5, 9])) for t in rng.choice(np.arange(2, T - 2), 8, replace=False)}
    lp = _peaky(T, spikes, rng)
    frames = rng.standard_normal((T, *SHAPE)).astype(np.float32)
    prof = _profile(seed=seed)
    offline = rescore_offline(lp, frames, prof)
    assert _streamed(prof, lp, frames, chunks) == offline
    assert len(offline) == len(greedy_decode(lp))
    assert rescore_offline(lp, frames, _profile(lam=0.0, seed=seed)) == greedy_decode(lp)
    # with a no-press class and a blank offset, streaming still equals offline
    noisy = _profile(seed=seed, classes=(A, B, BLANK), blank_offset=float(rng.uniform(0, 3)))
    assert _streamed(noisy, lp, frames, chunks) == rescore_offline(lp, frames, noisy)


def test_blank_offset_finds_faint_keystrokes_and_the_no_press_class_drops_runs() -> None:
    T = 30
    lp = _peaky(T, {20: B})
    lp[14, A], lp[14, BLANK] = -1.2, -0.4  # a faint "a": blank wins by 0.8 nats
    frames = np.zeros((T, *SHAPE), np.float32)
    frames[18:22] = 3.0  # only the "b" at frame 20 has a keystroke's spectrum
    spec = KeyFeatureSpec()
    d = spec.dim(SHAPE)
    press = key_vectors(frames, np.array([20]), spec, FPS)[0]
    # weights: classes a and b score a vector like the pressed one, the no-press class (blank) an empty one
    w = np.stack([press, press, -press], axis=1)
    prof = KeyProfile(np.array([A, B, BLANK]), w, np.zeros(3), np.zeros(d), spec, FPS, SHAPE, lam=1.0)
    assert rescore_offline(lp, frames, prof) == [B]  # offset 0: the faint run never forms
    prof.blank_offset = 1.0  # now it does, but its frames are empty: the no-press class wins and drops it
    dec = KeyRescoringDecoder(prof)
    dec.observe_frames(frames)
    assert dec.decode(lp, finish=True) == [B]
    assert dec._centre_n == prof.centre_weight + 1  # the dropped run did not move the centre
    frames[12:16] = 3.0  # the faint one is a keystroke after all
    assert rescore_offline(lp, frames, prof) == [A, B]


def test_key_vectors_read_the_profiles_own_input_map_else_the_models() -> None:
    """Format 3: the decoder maps the device features itself (strategy 1's map), not through the model's."""
    from emgkey.edge_runtime.recognizer import FeatureNormalization

    rng = np.random.default_rng(3)
    T = 50
    lp = _peaky(T, {int(t): int(rng.choice([A, B])) for t in (8, 17, 26, 35, 44)}, rng)
    feats = rng.standard_normal((T, *SHAPE)).astype(np.float32)
    key_map = {"kind": "affine", "scale": 2.0, "offset": [[[0.5], [-1.0]]], "channel_shift": [1]}
    model_map = FeatureNormalization(scale=np.float32(0.25) * np.ones(SHAPE, np.float32))
    mapped = FeatureNormalization.from_manifest(key_map, SHAPE)(feats)
    prof = _profile(seed=5, lam=3.0)
    own = KeyProfile(**{**prof.__dict__, "input_map": key_map})
    outs = {}
    for name, p in (("own", own), ("model", prof)):
        dec = KeyRescoringDecoder(p)
        for t in range(0, T, 7):
            dec.observe_features(feats[t : t + 7], model_map)
            dec.decode(lp[t : t + 7])
        outs[name] = dec.decode(np.zeros((0, C)), finish=True)
    assert outs["own"] == rescore_offline(lp, mapped, own)
    assert outs["model"] == rescore_offline(lp, model_map(feats), prof)
    assert outs["own"] != outs["model"]  # the map matters: the same weights name other keys


def test_gap_centres_are_half_way_between_presses_far_enough_apart() -> None:
    np.testing.assert_array_equal(gap_centres(np.array([10, 30, 32, 50]), 4), [20, 41])
    assert len(gap_centres(np.array([5]), 4)) == 0


def test_strong_key_evidence_overrides_a_narrow_model_choice() -> None:
    spec = KeyFeatureSpec()
    d = spec.dim(SHAPE)
    T = 30
    lp = _peaky(T, {15: A})
    lp[15, B] = lp[15, A] - 1.0  # the model prefers a by one nat
    frames = np.zeros((T, *SHAPE), np.float32)
    frames[10:17] = 1.0  # around the spike: what this user's "b" looks like
    pattern = key_vectors(frames, np.array([15]), spec, FPS)[0]
    means = np.stack([-pattern, pattern])  # class a: the opposite, class b: the pattern
    prior = KeyPrior(np.array([A, B]), means, np.eye(d), np.array([30, 30]), spec, FPS, SHAPE)
    x = np.stack([pattern, -pattern] * 15)
    prof = fit_profile(prior, x, np.array([B, A] * 15), KeyFitConfig(tau=2.0, min_presses=20))
    assert rescore_offline(lp, frames, prof) == [B]
    prof.lam = 0.0
    assert rescore_offline(lp, frames, prof) == [A]
    # a label outside the profile's classes keeps the model's choice
    lp2 = _peaky(T, {15: 5})
    assert rescore_offline(lp2, frames, _profile(lam=10.0)) == [5]


def test_fit_profile_is_map_towards_the_user() -> None:
    spec = KeyFeatureSpec()
    d = spec.dim(SHAPE)
    prior = KeyPrior(np.array([A, B]), np.zeros((2, d)), np.eye(d), np.array([20, 20]), spec, FPS, SHAPE)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((24, d))
    y = np.array([A] * 6 + [B] * 18)
    prof = fit_profile(prior, x, y, KeyFitConfig(tau=2.0, min_presses=20))
    xc = x - x.mean(axis=0)
    means = np.stack([6 * xc[:6].mean(0) / 8, 18 * xc[6:].mean(0) / 20])
    np.testing.assert_allclose(prof.weights, means.T)  # identity covariance: weights are the means
    np.testing.assert_allclose(prof.centre, x.mean(axis=0))
    with pytest.raises(KeyProtoError, match="needs 20"):
        fit_profile(prior, x[:10], y[:10], KeyFitConfig(min_presses=20))


def test_keys_for_a_fine_tuned_model_get_their_own_weight_and_blank_offset() -> None:
    spec = KeyFeatureSpec()
    d = spec.dim(SHAPE)
    prior = KeyPrior(np.array([A, B]), np.zeros((2, d)), np.eye(d), np.array([20, 20]), spec, FPS, SHAPE)
    rng = np.random.default_rng(2)
    x, y, gaps = rng.standard_normal((24, d)), np.array([A, B] * 12), rng.standard_normal((30, d))
    cfg = KeyFitConfig(lam=0.75, blank_offset=1.0, lam_finetuned=0.3, blank_offset_finetuned=2.5, min_presses=20)
    for strategy in ("stats", "keys"):
        assert cfg.for_strategy(strategy) is cfg
    ft = fit_profile(prior, x, y, cfg.for_strategy("finetune"), gaps)
    base = fit_profile(prior, x, y, cfg.for_strategy("stats"), gaps)
    assert (ft.lam, ft.blank_offset) == (0.3, 2.5) and (base.lam, base.blank_offset) == (0.75, 1.0)
    np.testing.assert_array_equal(ft.weights, base.weights)  # only the decoder's settings differ
    assert fit_profile(prior, x, y, cfg.for_strategy("finetune")).blank_offset == 0.0  # no no-press class


def test_prior_fit_keeps_frequent_classes_and_needs_two() -> None:
    spec = KeyFeatureSpec()
    d = spec.dim(SHAPE)
    rng = np.random.default_rng(2)
    x = [rng.standard_normal((50, d)), rng.standard_normal((40, d))]
    y = [np.array([A] * 25 + [B] * 20 + [5] * 5), np.array([A] * 20 + [B] * 20)]
    prior = KeyPrior.fit(x, y, spec, FPS, SHAPE, min_count=20)
    np.testing.assert_array_equal(prior.classes, [A, B])  # class 5 has 5 presses
    np.testing.assert_array_equal(prior.counts, [45, 40])
    with pytest.raises(KeyProtoError, match="too little data"):
        KeyPrior.fit(x, y, spec, FPS, SHAPE, min_count=100)


def test_within_between_recovers_how_users_differ() -> None:
    """Hand-made: 40 users whose class means are shifted along axis 0 only, noise 0.1 in every direction."""
    rng = np.random.default_rng(3)
    d, k, users, n = 4, 2, 40, 30
    means = np.array([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]])
    xs, ys, gs = [], [], []
    for u in range(users):
        shift = np.zeros((k, d))
        shift[:, 0] = rng.standard_normal(k)  # this user's class means stray along axis 0, sd 1
        y = np.repeat(np.arange(k), n)
        xs.append(means[y] + shift[y] + 0.1 * rng.standard_normal((k * n, d)))
        ys.append(y)
        gs.append(np.full(k * n, u))
    x, y, g = np.concatenate(xs), np.concatenate(ys), np.concatenate(gs)
    within, between = within_between(x, y, g, means)
    np.testing.assert_allclose(within, 0.01 * np.eye(d), atol=3e-3)
    assert between is not None
    assert 0.5 < between[0, 0] < 1.6 and np.all(np.abs(between[1:, 1:]) < 1e-3)
    assert np.all(np.linalg.eigvalsh(between) > 0), "positive definite after clipping"
    assert within_between(x, y, g, means, min_group=n + 1)[1] is None  # no cell with enough presses


def test_two_covariance_map_moves_means_only_where_users_differ() -> None:
    spec = KeyFeatureSpec()
    d = spec.dim(SHAPE)
    between = np.diag([1.0] + [1e-9] * (d - 1))  # users differ along axis 0 only
    prior = KeyPrior(
        np.array([A, B]), np.zeros((2, d)), 0.5 * np.eye(d), np.array([20, 20]), spec, FPS, SHAPE, between=between
    )
    x = np.zeros((24, d))
    x[:12] = 1.0  # class a presses: +1 on every axis
    x[12:] = -1.0
    y = np.array([A] * 12 + [B] * 12)
    prof = fit_profile(prior, x, y, KeyFitConfig(min_presses=20))
    assert prof.info["adaptation"] == "two-covariance"
    mean_a = prof.weights[:, 0] * 0.5  # weights = cov^-1 means, cov = 0.5 I
    np.testing.assert_allclose(mean_a[0], 12 / (12 + 0.5), rtol=1e-6)  # B / (B + W / n) of the way
    np.testing.assert_allclose(mean_a[1:], 0.0, atol=1e-6)  # no user ever differs there: stays at the prior
    # a format-1 prior (no between): tau MAP, the same on every axis
    old = KeyPrior(np.array([A, B]), np.zeros((2, d)), 0.5 * np.eye(d), np.array([20, 20]), spec, FPS, SHAPE)
    prof1 = fit_profile(old, x, y, KeyFitConfig(tau=2.0, min_presses=20))
    assert prof1.info["adaptation"] == "tau"
    np.testing.assert_allclose(prof1.weights[:, 0] * 0.5, 12 / 14)


def test_prior_fit_estimates_between_from_sessions(tmp_path: Path) -> None:
    spec = KeyFeatureSpec()
    d = spec.dim(SHAPE)
    rng = np.random.default_rng(4)
    x = [rng.standard_normal((60, d)) for _ in range(3)]
    y = [np.array([A] * 30 + [B] * 30)] * 3
    prior = KeyPrior.fit(x, y, spec, FPS, SHAPE, min_count=20)
    assert prior.between is not None and prior.between.shape == (d, d)
    back = KeyPrior.load(prior.save(tmp_path / "p.npz"))
    np.testing.assert_array_equal(back.between, prior.between)
    assert back.header()["format_version"] == 2


def test_files_round_trip_and_refuse_damage(tmp_path: Path) -> None:
    spec = KeyFeatureSpec()
    d = spec.dim(SHAPE)
    prior = KeyPrior(np.array([A, B]), np.ones((2, d)), 2 * np.eye(d), np.array([20, 21]), spec, FPS, SHAPE, {"x": 1})
    p = prior.save(tmp_path / "prior.npz")
    back = KeyPrior.load(p)
    np.testing.assert_array_equal(back.cov, prior.cov)
    assert back.between is None and back.header()["format_version"] == 1  # a format-1 prior stays one
    assert back.spec == spec and back.frame_shape == SHAPE and back.info == {"x": 1}
    prof = _profile(lam=0.7)
    q = KeyProfile.load(prof.save(tmp_path / "keys.npz"))
    np.testing.assert_array_equal(q.weights, prof.weights)
    assert q.lam == 0.7 and q.blank_offset == 0.0
    prof.blank_offset = 1.25
    assert KeyProfile.load(prof.save(tmp_path / "keys2.npz")).blank_offset == 1.25
    import json as _json

    with np.load(tmp_path / "keys2.npz") as z:  # no input map: written as version 2, which older emgkeys read
        assert _json.loads(str(z["header"]))["format_version"] == 2
    prof.input_map = {"kind": "affine", "scale": 2.0, "offset": 0.0, "channel_shift": [1]}
    q3 = KeyProfile.load(prof.save(tmp_path / "keys3.npz"))
    assert q3.input_map == prof.input_map and q.input_map is None
    with np.load(tmp_path / "keys3.npz") as z:  # an older emgkey refuses it rather than read the wrong frames
        assert _json.loads(str(z["header"]))["format_version"] == 3
    with pytest.raises(KeyProtoError, match="not a emgkey-keyprior"):
        KeyPrior.load(tmp_path / "keys.npz")  # a profile is not a prior
    (tmp_path / "bad.npz").write_bytes(p.read_bytes()[:100])
    with pytest.raises(KeyProtoError, match="not a readable"):
        KeyPrior.load(tmp_path / "bad.npz")
    with pytest.raises(KeyProtoError, match="does not exist"):
        KeyProfile.load(tmp_path / "none.npz")
    with pytest.raises(KeyProtoError, match="reads"):
        prof.check_frames((2, 8, 9), FPS)


def test_export_keyprior_adds_a_hash_checked_prior_and_keeps_the_model_fingerprint(tmp_path: Path) -> None:
    pytest.importorskip("onnx", reason="toy bundles are built with onnx.helper")
    pytest.importorskip("onnxruntime")
    from test_train_common import make_dataset

    from emgkey.benchmarks.toy_bundle import build_toy_bundle
    from emgkey.bundle import load_bundle, read_manifest
    from emgkey.cli import main
    from emgkey.edge_runtime.keyproto import bundle_key_prior
    from emgkey.edge_runtime.profile_store import model_fingerprint
    from emgkey.profiles import ARMBAND8

    root, split = make_dataset(tmp_path / "data", ARMBAND8, seconds=20.0, users=3, sessions=2)
    bundle = build_toy_bundle(tmp_path / "bundle", "armband8", int8=False)
    before = model_fingerprint(read_manifest(bundle))
    assert bundle_key_prior(load_bundle(bundle)) is None
    argv = ["export", "keyprior", str(bundle), "--data", str(root), "--split", str(split), "--sessions", "4"]
    assert main([*argv, "--min-count", "1000"]) == 2  # too little data: a clear error, the bundle as it was
    assert "key_prior" not in read_manifest(bundle).model and not (bundle / "keyprior.npz").exists()
    assert main([*argv, "--min-count", "1"]) == 0
    m = read_manifest(bundle)
    assert m.model["key_prior"]["sha256"] and model_fingerprint(m) == before

    from emgkey.export.key_prior import fit_key_prior

    prior = fit_key_prior(load_bundle(bundle), root, split, sessions=4, min_count=1)  # deterministic
    got = bundle_key_prior(load_bundle(bundle))
    assert got is not None
    np.testing.assert_array_equal(got.means, prior.means)
    assert len(got.info["sessions"]) == 2  # the split's training sessions (one per training user)
    # bands aligned by default (keyalign); --no-align-bands writes the plain pooled prior
    assert got.info["band_aligned"] is True and len(got.info["band_rolls"]) == 2
    plain = fit_key_prior(load_bundle(bundle), root, split, sessions=4, min_count=1, align_bands=False)
    assert "band_aligned" not in plain.info
    assert main([*argv, "--min-count", "1", "--no-align-bands"]) == 0
    assert "band_aligned" not in bundle_key_prior(load_bundle(bundle)).info
    data = bytearray((bundle / "keyprior.npz").read_bytes())
    data[-30] ^= 0xFF
    (bundle / "keyprior.npz").write_bytes(bytes(data))
    with pytest.raises(KeyProtoError, match="sha256"):
        bundle_key_prior(load_bundle(bundle))


def test_keys_are_enabled_unless_they_add_more_than_one_heldout_error() -> None:
    from emgkey.edge_runtime.calib_keys import keys_help

    assert keys_help({"errors_without": 10, "errors_with": 6})
    assert keys_help({"errors_without": 10, "errors_with": 11})  # one error on ~25 keys is noise
    assert not keys_help({"errors_without": 10, "errors_with": 12})


# ---------------------------------------------------------------------------------------------------------------------
# Keys that keep learning while the user types (keyadapt)


def _spd(rng: np.random.Generator, d: int, scale: float = 1.0) -> np.ndarray:
    a = rng.standard_normal((d, d))
    return scale * (a @ a.T / d + 0.5 * np.eye(d))


def test_generalized_basis_whitens_within_and_diagonalizes_between() -> None:
    from emgkey.edge_runtime.keyadapt import generalized_basis

    rng = np.random.default_rng(0)
    w, b = _spd(rng, 7), _spd(rng, 7, 3.0)
    v, eig = generalized_basis(b, w)
    np.testing.assert_allclose(v.T @ w @ v, np.eye(7), atol=1e-9)
    np.testing.assert_allclose(v.T @ b @ v, np.diag(eig), atol=1e-9)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 40))
def test_adaptation_recomputes_what_fit_profile_computed(seed: int, n: int) -> None:
    """The decoder's per-class update is the fitting rule itself: same means, same LDA columns."""
    from emgkey.edge_runtime.keyproto import _map_mean
    from emgkey.lda import lda_weights

    rng = np.random.default_rng(seed)
    spec = KeyFeatureSpec()
    d = spec.dim(SHAPE)
    means = rng.standard_normal((2, d))
    prior = KeyPrior(np.array([A, B]), means, _spd(rng, d), np.array([30, 30]), spec, FPS, SHAPE, {}, _spd(rng, d, 2.0))
    x = rng.standard_normal((2 * n, d)) + 0.5
    y = np.array([A, B] * n)
    prof = fit_profile(prior, x, y, KeyFitConfig(min_presses=1))
    a = prof.adapt
    assert a is not None and list(a.counts) == [n, n]
    xc = x - x.mean(axis=0)
    for i, c in enumerate((A, B)):
        m = a.mean(i, a.sums[i], a.counts[i])
        np.testing.assert_allclose(m, _map_mean(prior, means[i], xc[y == c].mean(axis=0), n, 2.0), atol=1e-8)
        w, bias = a.column(m)
        w_ref, b_ref = lda_weights(m[None], prior.cov)
        np.testing.assert_allclose(w, w_ref[:, 0], rtol=1e-7, atol=1e-8)
        assert bias == pytest.approx(float(b_ref[0]), rel=1e-7, abs=1e-8)
        np.testing.assert_allclose(prof.weights[:, i], w, rtol=1e-7, atol=1e-8)
        assert bias == pytest.approx(prof.bias[i], rel=1e-7, abs=1e-8)
    # a format-1 prior (no between) or adapt_weight 0: no adaptation
    assert fit_profile(KeyPrior(prior.classes, means, prior.cov, prior.counts, spec, FPS, SHAPE), x, y,
                       KeyFitConfig(min_presses=1)).adapt is None  # fmt: skip
    assert fit_profile(prior, x, y, KeyFitConfig(min_presses=1, adapt_weight=0.0)).adapt is None


def _learning_case() -> tuple[KeyProfile, np.ndarray, np.ndarray]:
    """Class a's prior sits at +1, b's at -1; this user's "a" looks like -0.5: nearer b. Eight presses the model
    is sure are "a", then one it cannot tell from "b"."""
    from emgkey.edge_runtime.keyadapt import KeyAdaptation, generalized_basis
    from emgkey.lda import lda_weights

    spec = KeyFeatureSpec()
    d = spec.dim(SHAPE)
    ones = np.ones(d)
    means = np.stack([ones, -ones])
    cov, between = np.eye(d), 10.0 * np.eye(d)
    w, b = lda_weights(means, cov)
    basis, eig = generalized_basis(between, cov)
    adapt = KeyAdaptation(means, basis, eig, np.zeros((2, d)), np.zeros(2), weight=1.0, min_posterior=0.7)
    prof = KeyProfile(np.array([A, B]), w, b, np.zeros(d), spec, FPS, SHAPE, lam=1.0, centre_weight=1e9, adapt=adapt)
    presses = [20 + 16 * i for i in range(9)]
    T = presses[-1] + 10
    lp = _peaky(T, {t: A for t in presses})
    lp[presses[:-1], B] = -60.0  # sure: "a"
    lp[presses[-1], A] = lp[presses[-1], B] = np.log(0.45)  # unsure
    lp[presses[-1], BLANK] = np.log(0.1)
    frames = np.zeros((T, *SHAPE), np.float32)
    for t in presses:
        frames[t - 12 : t + 4] = -0.5
    return prof, lp, frames


def test_keys_learn_a_users_key_from_the_presses_they_name() -> None:
    prof, lp, frames = _learning_case()
    assert rescore_offline(lp, frames, prof) == [A] * 8 + [B]  # as calibrated (the default): the prior's "b"
    dec = KeyRescoringDecoder(prof, adapt=True)
    dec.observe_frames(frames)
    assert dec.decode(lp, finish=True) == [A] * 9  # eight sure presses taught it this user's "a"
    assert dec.adapted == 9  # the ninth too: with the user's "a" learnt, the decoder is sure of it
    assert prof.adapt is not None and not prof.adapt.counts.any()  # the profile itself is not changed
    np.testing.assert_array_equal(prof.weights, KeyRescoringDecoder(prof).profile.weights)
    # a press counts `weight` presses: 0 is a profile that does not learn
    prof.adapt.weight = 0.0
    assert rescore_offline(lp, frames, prof, adapt=True) == [A] * 8 + [B]


def test_only_sure_presses_teach() -> None:
    prof, lp, frames = _learning_case()
    t = [20 + 16 * i for i in range(8)]  # the sure presses (_learning_case), now only fairly sure: 0.6 / 0.4
    lp[t, A], lp[t, B] = np.log(0.6), np.log(0.4)
    frames[:] = np.where(frames < 0, 0.05, 0.0)  # and look a little like the prior's "a": the key model agrees
    dec = KeyRescoringDecoder(prof, adapt=True)
    dec.observe_frames(frames)
    dec.decode(lp, finish=True)
    assert dec.adapted > 0  # the key model's agreement makes them sure
    prof.adapt.min_posterior = 1.0  # a bar no press reaches
    dec = KeyRescoringDecoder(prof, adapt=True)
    dec.observe_frames(frames)
    dec.decode(lp, finish=True)
    assert dec.adapted == 0


@settings(max_examples=15, deadline=None)
@given(chunks=st.lists(st.integers(1, 9), min_size=1, max_size=6))
def test_learning_keys_stream_equals_offline(chunks: list[int]) -> None:
    prof, lp, frames = _learning_case()
    assert _streamed(prof, lp, frames, chunks, adapt=True) == rescore_offline(lp, frames, prof, adapt=True) == [A] * 9


def test_learning_state_round_trips_in_the_profile_file(tmp_path: Path) -> None:
    prof, lp, frames = _learning_case()
    prof.input_map = {"kind": "identity"}
    back = KeyProfile.load(prof.save(tmp_path / "keys.npz"))
    assert back.adapt is not None and back.adapt.min_posterior == 0.7 and back.adapt.weight == 1.0
    np.testing.assert_array_equal(back.adapt.basis, prof.adapt.basis)
    assert rescore_offline(lp, frames, back, adapt=True) == [A] * 9
