"""Band alignment of key vectors (``edge_runtime.keyalign``) and its use by the key prior and profiles.

Hand-made rolls that must be found, and the property that makes it safe: a profile fitted on a user whose bands
are rolled scores that user's (rolled) keystrokes exactly as the profile of the unrolled user scores theirs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emgkey import charset
from emgkey.edge_runtime import keyproto
from emgkey.edge_runtime.keyalign import align_sessions, estimate_roll, inverse, max_roll, roll_index
from emgkey.edge_runtime.keyproto import KeyFeatureSpec, KeyFitConfig, KeyPrior, KeyProtoError, fit_profile

SHAPE = (2, 8, 6)  # (n_bands, C, n_freq): two 8-electrode bands
SPEC = KeyFeatureSpec()
D = SPEC.dim(SHAPE)  # 4 windows x 3 bin groups x 2 bands x 8 electrodes
FPS = 50.0
LETTERS = np.array(charset.str_to_labels("etaoinsrhl"))


def _rolled(x: np.ndarray, shifts: tuple[int, int]) -> np.ndarray:
    """x (n, D) with band b's electrodes rolled by shifts[b], written out with np.roll (the definition)."""
    v = x.reshape(len(x), -1, SHAPE[0], SHAPE[1])
    return np.stack([np.roll(v[:, :, b], shifts[b], axis=-1) for b in range(SHAPE[0])], axis=2).reshape(len(x), -1)


def test_roll_index_is_np_roll_per_band_and_inverts() -> None:
    x = np.random.default_rng(0).standard_normal((3, D))
    perm = roll_index([1, -3], SHAPE, D)
    np.testing.assert_array_equal(x[:, perm], _rolled(x, (1, -3)))
    np.testing.assert_array_equal(x[:, perm][:, inverse(perm)], x)
    np.testing.assert_array_equal(roll_index([0, 0], SHAPE, D), np.arange(D))
    assert max_roll(SHAPE) == 2 and max_roll((2, 16, 33)) == 4 and max_roll((1, 2, 6)) == 1
    with pytest.raises(AssertionError, match="one shift per band"):
        roll_index([1], SHAPE, D)


@pytest.mark.parametrize("shifts", [(0, 0), (1, -1), (-2, 2), (2, 0)])
def test_estimate_roll_finds_a_hand_made_rotation(shifts: tuple[int, int]) -> None:
    ref = np.random.default_rng(1).standard_normal((10, D))
    worn = _rolled(ref, (-shifts[0], -shifts[1]))  # a band turned the other way
    np.testing.assert_array_equal(estimate_roll(worn, ref, np.ones(10), SHAPE, 2), shifts)
    # classes the user has no presses of (weight 0) do not vote, whatever their rows hold
    junk = worn.copy()
    junk[5:] = 100 * np.random.default_rng(2).standard_normal((5, D))
    w = np.r_[np.ones(5), np.zeros(5)]
    np.testing.assert_array_equal(estimate_roll(junk, ref, w, SHAPE, 2), shifts)
    # a search limited to 1 cannot report 2
    assert np.all(np.abs(estimate_roll(worn, ref, np.ones(10), SHAPE, 1)) <= 1)


def _sessions(rng: np.random.Generator, shifts: list[tuple[int, int]], noise: float = 0.5):
    means = rng.standard_normal((len(LETTERS), D))
    xs, ys = [], []
    for s in shifts:
        y = np.repeat(LETTERS, 6)
        idx = {int(c): i for i, c in enumerate(LETTERS)}
        x = means[[idx[int(c)] for c in y]] + noise * rng.standard_normal((len(y), D))
        xs.append(_rolled(x, (-s[0], -s[1])))  # worn turned by s: rolling by +s undoes it
        ys.append(y)
    return means, xs, ys


def test_align_sessions_recovers_rolls_up_to_the_median() -> None:
    rng = np.random.default_rng(3)
    true = [(0, 0), (1, -1), (-1, 0), (0, 1), (1, 1), (0, -1), (-1, 1)]
    _, xs, ys = _sessions(rng, true)
    est = align_sessions(xs, ys, LETTERS, SHAPE, 2)
    rel = est - np.asarray(true)
    assert (rel == rel[0]).all(), f"rolls {est.tolist()} are not the true ones {true} up to a constant"
    assert (np.median(est, axis=0) == 0).all()


def test_an_aligned_prior_is_sharper_and_says_so(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    true = [(0, 0), (1, -1), (-1, 0), (0, 1), (1, 1), (0, -1)]
    _, xs, ys = _sessions(rng, true)
    plain = KeyPrior.fit(xs, ys, SPEC, FPS, SHAPE, min_count=10)
    aligned = KeyPrior.fit(xs, ys, SPEC, FPS, SHAPE, min_count=10, align_bands=True)
    assert "band_aligned" not in plain.info and aligned.info["band_aligned"] is True
    assert len(aligned.info["band_rolls"]) == len(true)
    assert plain.between is not None and aligned.between is not None
    assert np.trace(aligned.between) < 0.2 * np.trace(plain.between), "the users' rotations made most of B"
    back = KeyPrior.load(aligned.save(tmp_path / "p.npz"))
    assert back.info["band_aligned"] is True
    assert back.header()["format_version"] == 3 and plain.header()["format_version"] == 2


@pytest.mark.parametrize("align", [False, True])
def test_a_session_without_presses_changes_nothing(align: bool) -> None:
    """An empty session (a recording the model aligned no press in) is dropped with its labels, not beside them."""
    rng = np.random.default_rng(6)
    _, xs, ys = _sessions(rng, [(0, 0), (1, -1), (-1, 0), (0, 1)])
    empty_x, empty_y = np.zeros((0, D)), np.zeros(0, dtype=np.int64)
    ref = KeyPrior.fit(xs, ys, SPEC, FPS, SHAPE, min_count=10, align_bands=align)
    got = KeyPrior.fit([empty_x, *xs], [empty_y, *ys], SPEC, FPS, SHAPE, min_count=10, align_bands=align)
    np.testing.assert_array_equal(got.classes, ref.classes)
    np.testing.assert_allclose(got.means, ref.means)
    np.testing.assert_allclose(got.cov, ref.cov)


def test_a_reader_that_does_not_align_refuses_an_aligned_prior(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An emgkey that reads priors up to version 2 would fit a user's unrolled presses against rolled means."""
    rng = np.random.default_rng(5)
    _, xs, ys = _sessions(rng, [(0, 0), (1, -1), (-1, 0), (0, 1)])
    aligned = KeyPrior.fit(xs, ys, SPEC, FPS, SHAPE, min_count=10, align_bands=True).save(tmp_path / "a.npz")
    plain = KeyPrior.fit(xs, ys, SPEC, FPS, SHAPE, min_count=10).save(tmp_path / "p.npz")
    monkeypatch.setattr(keyproto, "PRIOR_FORMAT_VERSION", 2)
    assert KeyPrior.load(plain).between is not None  # version 2: still read
    with pytest.raises(KeyProtoError, match="version"):
        KeyPrior.load(aligned)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), s0=st.integers(-2, 2), s1=st.integers(-2, 2))
def test_a_rolled_users_profile_scores_like_the_unrolled_users(seed: int, s0: int, s1: int) -> None:
    """Equivariance: rolling a user's bands (calibration and typing alike) changes no score."""
    rng = np.random.default_rng(seed)
    _, xs, ys = _sessions(rng, [(0, 0), (1, 0), (0, -1), (-1, 1)])
    prior = KeyPrior.fit(xs, ys, SPEC, FPS, SHAPE, min_count=10, align_bands=True)
    idx = {int(c): i for i, c in enumerate(LETTERS)}
    y = np.repeat(LETTERS, 3)
    # the prior's frame: a user whose presses look like the prior means
    user = prior.means[[list(prior.classes).index(c) for c in y]] + 0.3 * rng.standard_normal((len(y), D))
    gaps = 0.3 * rng.standard_normal((25, D))
    test = prior.means[[idx[int(c)] for c in LETTERS]] + 0.3 * rng.standard_normal((len(LETTERS), D))
    cfg = KeyFitConfig(min_presses=1)
    p0 = fit_profile(prior, user, y, cfg, gaps)
    shifts = (s0, s1)
    p1 = fit_profile(prior, _rolled(user, shifts), y, cfg, _rolled(gaps, shifts))
    assert p1.info["band_roll"] == [-s0, -s1] and p0.info["band_roll"] == [0, 0]

    def scores(p, x):
        return (x - p.centre) @ p.weights + p.bias

    np.testing.assert_allclose(scores(p1, _rolled(test, shifts)), scores(p0, test), rtol=1e-9, atol=1e-9)
    # the learning state lives in the user's frame too: the same class means come out of it
    a0, a1 = p0.adapt, p1.adapt
    assert a0 is not None and a1 is not None
    for i in range(len(prior.classes)):
        m0 = a0.mean(i, a0.sums[i], a0.counts[i])
        m1 = a1.mean(i, a1.sums[i], a1.counts[i])
        np.testing.assert_allclose(m1, _rolled(m0[None], shifts)[0], rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(a1.column(m1)[0], _rolled(a0.column(m0)[0][None], shifts)[0], atol=1e-8)
