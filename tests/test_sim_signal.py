"""The simulated signal: shapes, determinism, sEMG statistics, and the structure calibration depends on."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import signal

from emgkey.firmware_sim.frontend import DeviceFrontend, FrontendParams
from emgkey.firmware_sim.population import Population, UserParams
from emgkey.firmware_sim.simulate import SimulatedSession, simulate_session, stream_session
from emgkey.firmware_sim.synth import SourceLayout, physio_rate_for
from emgkey.profiles import ARMBAND8, EMG2QWERTY, PROFILES

MINUTES = 0.3  # 18 s: a few prompts, a fraction of a second to simulate


@pytest.fixture(scope="module")
def sims() -> dict[str, SimulatedSession]:
    return {
        name: simulate_session(p, user_id=1, session_idx=0, minutes=MINUTES, seed=7) for name, p in PROFILES.items()
    }


def _masks(sim: SimulatedSession) -> tuple[np.ndarray, np.ndarray]:
    """(typing, rest): inside prompts, and at least 0.5 s away from any prompt."""
    ts = sim.timestamps
    typing = np.zeros(len(ts), dtype=bool)
    rest = np.ones(len(ts), dtype=bool)
    for p in sim.prompts:
        typing |= (ts >= p["start"]) & (ts < p["end"])
        rest &= (ts < p["start"] - 0.5) | (ts >= p["end"] + 0.5)
    return typing, rest


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_shape_dtype_and_finite(sims, name):
    sim, prof = sims[name], PROFILES[name]
    n = round(MINUTES * 60 * prof.sample_rate_hz)
    assert sim.emg.shape == (n, prof.n_bands, prof.channels_per_band)
    assert sim.emg.dtype == (np.float32 if prof.sample_format == "float32" else np.int16)
    assert sim.timestamps.shape == (n,) and sim.timestamps.dtype == np.float64
    assert np.allclose(np.diff(sim.timestamps), 1.0 / prof.sample_rate_hz, rtol=0, atol=1e-6)  # float64 unix time
    uv = sim.emg_uv()
    assert uv.dtype == np.float32 and np.isfinite(uv).all()
    assert sim.session_name == f"sim-u001-s00-{name}" and sim.user == "sim-user-001"
    assert sim.keystrokes and sim.prompts
    assert sim.timestamps[0] <= sim.keystrokes[0]["start"] and sim.keystrokes[-1]["end"] <= sim.timestamps[-1]


def test_armband8_is_int16_within_full_scale(sims):
    sim = sims["armband8"]
    rail = 2 ** (ARMBAND8.adc_bits - 1) - 1
    assert np.abs(sim.emg.astype(np.int32)).max() <= rail
    assert np.array_equal(sim.emg_uv(), sim.emg.astype(np.float32) * np.float32(ARMBAND8.adc_scale_uv_per_count))
    assert np.abs(sim.emg_uv()).max() <= ARMBAND8.full_scale_uv


def test_same_ids_same_bits_and_profiles_share_the_session(sims):
    again = simulate_session(EMG2QWERTY, user_id=1, session_idx=0, minutes=MINUTES, seed=7)
    assert np.array_equal(again.emg, sims["emg2qwerty"].emg)
    assert again.keystrokes == sims["emg2qwerty"].keystrokes
    other = simulate_session(EMG2QWERTY, user_id=1, session_idx=0, minutes=MINUTES, seed=8)
    assert not np.array_equal(other.emg, again.emg)
    # Both devices record the same typing: same keystrokes, prompts and clock.
    a, b = sims["emg2qwerty"], sims["armband8"]
    assert a.keystrokes == b.keystrokes and a.prompts == b.prompts
    assert a.timestamps[0] == b.timestamps[0]


def test_streaming_blocks_equal_the_whole_session(sims):
    stream = stream_session(ARMBAND8, 1, 0, MINUTES, 7)
    assert stream.keystrokes == sims["armband8"].keystrokes
    ts, blocks = zip(*stream.blocks())
    assert len(blocks) > 1
    assert np.array_equal(np.concatenate(blocks), sims["armband8"].emg)
    assert np.array_equal(np.concatenate(ts), sims["armband8"].timestamps)


def test_given_prompts_are_typed_in_order_and_must_be_typeable():
    sim = simulate_session(ARMBAND8, 0, 0, 0.3, 0, prompts=["hello world", "Abc def"])
    texts = [p["payload"]["text"] for p in sim.prompts]
    assert texts[:3] == ["hello world", "Abc def", "hello world"][: len(texts[:3])]
    with pytest.raises(ValueError, match="typeable"):
        simulate_session(ARMBAND8, 0, 0, 0.1, 0, prompts=["\t", ""])


def test_population_is_addressable_by_id():
    a = Population(3).user(5)
    pop = Population(3)
    for u in range(5):
        pop.user(u)
    b = pop.user(5)
    assert np.array_equal(a.band_rotation_deg, b.band_rotation_deg) and a.style == b.style
    assert np.array_equal(a.weights_for_key("f"), b.weights_for_key("f"))
    s_alone = Population(3).user(5).session(2)
    s_after = b.session(0) and b.session(1) and b.session(2)
    assert s_alone.start_unix == s_after.start_unix and s_alone.signal_seed == s_after.signal_seed
    assert Population(3).user(6).band_rotation_deg.tolist() != a.band_rotation_deg.tolist()
    assert a.name == "sim-user-005" and s_alone.session_name("armband8") == "sim-u005-s02-armband8"


def test_spectrum_median_frequency(sims):
    sim = sims["emg2qwerty"]
    typing, _ = _masks(sim)
    x = sim.emg_uv()[typing].reshape(typing.sum(), -1)
    f, p = signal.welch(x, fs=EMG2QWERTY.sample_rate_hz, nperseg=256, axis=0)
    cum = np.cumsum(p.mean(axis=1))
    median = f[np.searchsorted(cum, cum[-1] / 2)]
    assert 80 <= median <= 130, f"median frequency {median} Hz"
    # Most power between 20 and 250 Hz.
    band = (f >= 20) & (f <= 250)
    assert p.mean(axis=1)[band].sum() / p.mean(axis=1).sum() > 0.75


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_typing_raises_rms_above_rest(sims, name):
    sim = sims[name]
    typing, rest = _masks(sim)
    x = sim.emg_uv()
    assert rest.sum() > 0.1 * len(rest), "the session needs rest periods to compare against"
    rms_typing = np.sqrt(np.mean(x[typing] ** 2))
    rms_rest = np.sqrt(np.mean(x[rest] ** 2))
    assert rms_typing > 2.0 * rms_rest, (rms_typing, rms_rest)


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_neighbour_electrodes_correlate_more_than_far_ones(sims, name):
    sim, prof = sims[name], PROFILES[name]
    typing, _ = _masks(sim)
    c = prof.channels_per_band
    for b in range(prof.n_bands):
        cc = np.corrcoef(sim.emg_uv()[typing][:, b, :].T)
        near = np.mean([cc[i, (i + 1) % c] for i in range(c)])
        far = np.mean([cc[i, (i + c // 2) % c] for i in range(c)])
        assert near > far + 0.2, (near, far)


def test_both_devices_see_the_same_muscle_activity(sims):
    """The slow amplitude envelope of the two recordings moves together (same arm, same moment)."""

    def envelope(sim: SimulatedSession) -> np.ndarray:
        fs = sim.profile.sample_rate_hz
        power = (sim.emg_uv().reshape(sim.n_samples, -1) ** 2).mean(axis=1)  # (T,)
        hop = round(0.1 * fs)
        return np.log(power[: len(power) // hop * hop].reshape(-1, hop).mean(axis=1))  # 100 ms frames

    a, b = envelope(sims["emg2qwerty"]), envelope(sims["armband8"])
    assert np.corrcoef(a, b)[0, 1] > 0.7


def _with_rotation(user: UserParams, delta_deg: float) -> UserParams:
    return replace(user, band_rotation_deg=user.band_rotation_deg + delta_deg)


def test_band_rotation_rolls_the_pickup_pattern():
    """Rotating the band by two electrode spacings moves every source two channels along the band."""
    user = Population(0).user(2)
    session = user.session(0)
    params = FrontendParams(electrode_gain_sigma=0.0)  # per-electrode spread does not rotate with the band
    fs = physio_rate_for(EMG2QWERTY)
    spacing = 360.0 / EMG2QWERTY.channels_per_band

    def gains(u: UserParams) -> list[np.ndarray]:
        fe = DeviceFrontend(EMG2QWERTY, u, session, SourceLayout.for_user(u), fs, 60.0, params)
        return [b.gain_matrix for b in fe.bands]

    base, rotated = gains(user), gains(_with_rotation(user, 2 * spacing))
    # Electrode i of the rotated band sits where electrode i + 2 was, on either wrist (the left arm's anatomy
    # is mirrored, the band's own frame is not).
    for b in range(EMG2QWERTY.n_bands):
        np.testing.assert_allclose(rotated[b], np.roll(base[b], -2, axis=0), rtol=1e-4, atol=1e-9)
        assert not np.allclose(rotated[b], base[b], rtol=0.1)


def test_user_rotation_shifts_the_recorded_spatial_pattern():
    """Same person, same session, band worn 3 electrodes round: the RMS map follows the rotation."""

    class Rotated(Population):
        def user(self, user_id: int) -> UserParams:
            return _with_rotation(super().user(user_id), 3 * 360.0 / EMG2QWERTY.channels_per_band)

    a = simulate_session(EMG2QWERTY, 4, 0, 0.3, seed=1)
    b = simulate_session(EMG2QWERTY, 4, 0, 0.3, seed=1, population=Rotated(1))
    assert a.keystrokes == b.keystrokes
    rms_a = np.sqrt((a.emg_uv() ** 2).mean(axis=0))[1]  # (C,) right band
    rms_b = np.sqrt((b.emg_uv() ** 2).mean(axis=0))[1]
    plain = np.corrcoef(rms_a, rms_b)[0, 1]
    realigned = np.corrcoef(rms_a, np.roll(rms_b, 3))[0, 1]
    assert realigned > 0.8 and realigned > plain + 0.2, (plain, realigned)


def test_users_differ_more_than_sessions():
    """Per-user variation (rotation, anatomy, habits) dwarfs re-donning: the basis of 'calibration matters'."""
    pop = Population(11)
    users = [pop.user(u) for u in range(6)]
    rot_between = np.std([u.band_rotation_deg for u in users])
    rot_within = np.std([u.session(s).donning_rotation_deg for u in users for s in range(4)])
    assert rot_between > 3 * rot_within
    w = [u.weights_for_key("f") for u in users]
    w_d = [u.weights_for_key("d") for u in users]
    # A user's keys of one finger share most of their pattern; the same key differs between users.
    same_user_other_finger_key = np.mean([np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(w, w_d)])
    same_finger = np.mean([np.corrcoef(a.ravel(), u.weights_for_key("r").ravel())[0, 1] for a, u in zip(w, users)])
    assert same_finger > same_user_other_finger_key


def test_key_signature_is_the_users_own_and_the_same_in_every_session():
    """Version 3: each user reaches each key their own way (reach phase only), so a user's own data separates
    keys of one finger that other people's data does not; with it off, weights are version 2's."""
    from emgkey.firmware_sim.keyboard import key_geometry
    from emgkey.firmware_sim.physiology import PRESS, REACH, RELEASE
    from emgkey.firmware_sim.population import UserVariability

    on, off = Population(5), Population(5, variability=UserVariability(key_signature=0.0))
    a, a0 = on.user(2), off.user(2)
    for key in ("f", "r", "v"):
        w, w0 = a.weights_for_key(key), a0.weights_for_key(key)
        assert np.array_equal(w[[PRESS, RELEASE]], w0[[PRESS, RELEASE]]), "only the reach phase changes"
        extra = w[REACH] - w0[REACH]
        assert np.all(extra > -1e-12) and 0 < np.sum(extra > 1e-12) < len(extra), "additive, on some muscles only"
        assert np.allclose(extra, a._key_signature[(key, "left")], atol=1e-12)
    # the same person on any day (the population is addressable), another person differently
    assert np.array_equal(Population(5).user(2).weights_for_key("r"), a.weights_for_key("r"))
    sig = [on.user(u)._key_signature[("r", "left")] for u in range(6)]
    assert not any(np.array_equal(sig[0], s) for s in sig[1:])
    # keys of one finger now differ within a user by more than the canonical reach alone makes them differ
    geom_r, geom_f = key_geometry("r"), key_geometry("f")
    assert geom_r.finger == geom_f.finger
    d_on = np.abs(a.weights_for_key("r") - a.weights_for_key("f"))[REACH].sum()
    d_off = np.abs(a0.weights_for_key("r") - a0.weights_for_key("f"))[REACH].sum()
    assert d_on > d_off


@pytest.mark.parametrize("profile_name", ["armband8", "emg2qwerty"])
def test_electrode_rolls_undo_the_worn_rotation_to_within_half_a_spacing(profile_name):
    """The oracle roll (probes only): rolled with ``roll_channels``, each electrode sits where the unrotated band's
    electrode of the same index would, give or take half a spacing, for every user and both arms (the worn angle
    is the front end's: electrode angle + user rotation + donning rotation)."""
    from emgkey.edge_runtime.recognizer import roll_channels
    from emgkey.firmware_sim.physiology import wrap_deg
    from emgkey.profiles import get_profile

    prof = get_profile(profile_name)
    band = np.asarray(prof.electrode_angles_deg, dtype=np.float64)  # (C,)
    spacing = 360.0 / prof.channels_per_band
    pop = Population(0)
    moved = 0
    for uid in range(40):
        user = pop.user(uid)
        worn = band[None, :] + (user.band_rotation_deg + user.session(1).donning_rotation_deg)[:, None]  # (2, C)
        rolls = user.electrode_rolls(1, prof.channels_per_band)
        rolled = roll_channels(worn[None], rolls)[0]  # (2, C)
        assert np.all(np.abs(wrap_deg(rolled - band[None, :])) <= spacing / 2 + 1e-9), (uid, rolls)
        moved += int(np.any(rolls != 0))
    assert moved > 10  # the population's rotations span more than one spacing
