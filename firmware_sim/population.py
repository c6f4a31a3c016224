"""The simulated population: every user and every session is a pure function of (seed, ids).

``Population(seed).user(u)`` draws user ``u``'s body, habits and band
placement; ``.session(s)`` draws what changes each time the bands are put on.
Each draw uses its own ``numpy.random.SeedSequence`` keyed by
``(seed, user, session, purpose)``, so users can be generated in any order, in
parallel, or alone, and adding a parameter to one purpose never shifts another.
Nothing here depends on the device profile: the same user and session produce
the muscle activity that every device then records through its own electrodes.

Variation is split the way calibration needs it to be (values and sources in
docs/simulator.md):

- per user (large): band rotation of several electrode spacings, muscle
  positions, sizes and fat layer, an idiosyncratic muscle mix per finger and
  per key, skin contact quality around the band, typing speed and habits;
- per session (small): re-donning rotation of a fraction of an electrode
  spacing, contact gain drift, occasionally a noisy or lifted electrode,
  motion artifacts, a slightly different typing pace.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np
import numpy.typing as npt

from emgkey.firmware_sim.keyboard import HANDS, KeyGeometry, all_geometries, key_geometry
from emgkey.firmware_sim.physiology import (
    MUSCLE_INDEX,
    MUSCLES,
    N_MUSCLES,
    PHASES,
    PRESS,
    REACH,
    canonical_activation,
)
from emgkey.firmware_sim.typist import TypingStyle

FloatArray = npt.NDArray[np.float64]

N_ARMS = len(HANDS)
# Harmonics of the smooth "contact quality around the band" fields (gain, noise).
CONTACT_HARMONICS = 3
# Sessions of one user are a few days apart; users a week apart (only for plausible timestamps).
_EPOCH_UNIX = 1_640_995_200.0  # 2022-01-01T00:00:00Z
_ARTIFACT_HORIZON_S = 7200.0


def _tag(name: str) -> int:
    """A stable integer for a purpose name (Python's hash() is salted per process)."""
    return zlib.crc32(name.encode("ascii"))


def seeded_rng(seed: int, *key: int | str) -> np.random.Generator:
    """A generator for one purpose of one seed, e.g. ``seeded_rng(seed, "session", user, session)``."""
    spawn_key = tuple(_tag(k) if isinstance(k, str) else int(k) for k in key)
    return np.random.default_rng(np.random.SeedSequence(entropy=int(seed), spawn_key=spawn_key))


def _log_normal(rng: np.random.Generator, sigma: float, size: int | tuple[int, ...] | None = None) -> FloatArray:
    return np.exp(sigma * rng.standard_normal(size))


@dataclass(frozen=True)
class UserVariability:
    """How much users differ from each other (all assumed unless docs/simulator.md says otherwise)."""

    band_rotation_deg: float = 56.25  # uniform +-, = 2.5 electrode spacings of the 16-channel band
    muscle_angle_sd_deg: float = 4.0  # small next to the ~25 deg between finger compartments: their order is anatomy
    muscle_depth_sd_mm: float = 1.5
    muscle_gain_sigma: float = 0.35  # log-normal: muscle size and belly position differ
    muscle_spectral_sigma: float = 0.15  # log-normal: fibre types and conduction velocity differ per muscle
    palmaris_absent_prob: float = 0.15
    finger_mix_sigma: float = 0.2  # log-normal on each muscle's weight, shared by the keys of one finger
    finger_spill: float = 0.05  # extra activation of random other muscles, per finger (idiosyncratic strategy)
    key_mix_sigma: float = 0.15  # log-normal per key on top of the finger's mix
    # A person's own way of reaching each key (wrist vs finger, posture): extra reach-phase drive of random
    # muscles per (user, key), the same in every session; other people reach the key differently.
    key_signature: float = 0.3  # version 3 (0 before)
    key_signature_frac: float = 0.3  # share of the muscles that take part in it
    # Every (key, muscle) gets the population's mean signature instead of a draw: the "average arm" of
    # benchmarks/calibration_bench.py (no signature at all would be nobody's way of typing).
    key_signature_mean_only: bool = False
    amplitude_sigma: float = 0.3  # overall sEMG amplitude (skin, body size)
    contact_gain_sd: float = 0.2  # smooth log-gain field around the band
    contact_noise_sd: float = 0.3  # smooth log-noise field around the band


@dataclass(frozen=True)
class SessionVariability:
    donning_rotation_sd_deg: float = 6.0  # ~0.27 electrode spacing of the 16-channel band
    contact_gain_sd: float = 0.1  # session-to-session change of the contact field
    drift_amplitude: float = 0.06  # slow within-session gain drift (sweat, band settling), fraction
    speed_sigma: float = 0.08  # session typing pace (log-normal factor on the IKI)
    noisy_electrode_prob: float = 0.15  # per band
    lifted_electrode_prob: float = 0.04  # per band
    artifacts_per_min: float = 2.0  # motion artifacts per band (median over sessions)


@dataclass(frozen=True)
class BadContact:
    """An electrode with poor skin contact for part of a session (band frame: angle along the band)."""

    band_angle_deg: float
    kind: str  # "noisy" (noise x severity) or "lifted" (EMG mostly lost, large noise and mains)
    start_frac: float
    end_frac: float
    severity: float

    def __post_init__(self) -> None:
        assert self.kind in ("noisy", "lifted"), f"unknown bad contact kind {self.kind!r}"
        assert 0.0 <= self.start_frac < self.end_frac <= 1.0, "bad contact interval must be inside the session"


@dataclass(frozen=True)
class MotionArtifact:
    """A low-frequency transient from the band shifting on the skin."""

    time_s: float  # seconds from the session start
    band_angle_deg: float  # centre of the disturbed region along the band
    spread_deg: float
    amplitude_uv: float
    freq_hz: float
    duration_s: float


@dataclass(frozen=True)
class ActivationTiming:
    """When muscles fire around a key press (user habits; assumed ranges, see docs)."""

    lead_s: float = 0.05  # EMG onset before key-down (electromechanical delay + travel)
    lead_jitter_s: float = 0.015
    reach_s: float = 0.09  # duration of the reach burst before the press
    hold_level: float = 0.35  # sustained flexor drive while a key is held, fraction of the peak
    shift_hold_level: float = 0.6  # Shift is held against the other hand's key press
    decay_tau_s: float = 0.035  # from the press peak towards the hold level
    off_tau_s: float = 0.03  # after release
    force_sigma: float = 0.25  # keystroke-to-keystroke force variation (log-normal)
    muscle_jitter_sigma: float = 0.2  # per-muscle variation within a keystroke
    fidget_rate_typing_hz: float = 0.4  # finger movements that press no key (hovering, adjusting), per arm
    fidget_rate_rest_hz: float = 0.1
    fidget_level: float = 0.3  # their drive, fraction of a key press


@dataclass(frozen=True, eq=False)
class UserParams:
    """One simulated person. Build with ``Population(seed).user(user_id)``."""

    seed: int
    user_id: int
    style: TypingStyle
    timing: ActivationTiming
    band_rotation_deg: FloatArray  # (2,) per arm, degrees
    radius_mm: float  # forearm radius at the band
    fat_mm: float
    muscle_angle_offset_deg: FloatArray  # (2, M)
    muscle_depth_offset_mm: FloatArray  # (2, M)
    muscle_gain: FloatArray  # (2, M)
    tonic: FloatArray  # (2, M) activation at rest posture
    amplitude_uv: float  # EMG amplitude of unit drive on a superficial source right under an electrode
    spectral_scale: FloatArray  # (2, M) conduction-velocity / fibre-type factor on each muscle's carrier corners
    contact_gain_field: FloatArray  # (2, H, 2) Fourier coefficients of the log-gain around the band
    contact_noise_field: FloatArray  # (2, H, 2) Fourier coefficients of the log-noise around the band
    noise_uv: float  # electrode + amplifier noise, RMS over 0-1 kHz
    mains_hz: float
    mains_uv: float
    variability: UserVariability = field(repr=False)
    session_variability: SessionVariability = field(repr=False)
    _finger_mix: FloatArray = field(repr=False)  # (2 hands x 5 fingers, 3, M) multiplicative
    _finger_spill: FloatArray = field(repr=False)  # (10, M) additive press-phase spill-over
    _key_mix_seed: int = field(repr=False)

    @property
    def name(self) -> str:
        return f"sim-user-{self.user_id:03d}"

    @cached_property
    def _key_mix(self) -> dict[tuple[str, str], FloatArray]:
        """Per-key multiplicative mix (3, M), keyed (key, hand); drawn once for all physical keys."""
        rng = np.random.default_rng(self._key_mix_seed)
        geoms = all_geometries()
        mix = _log_normal(rng, self.variability.key_mix_sigma, (len(geoms), len(PHASES), N_MUSCLES))
        return {(g.key, g.hand): m for g, m in zip(geoms, mix)}

    @cached_property
    def _key_signature(self) -> dict[tuple[str, str], FloatArray]:
        """Per-key additive reach-phase drive (M,), keyed (key, hand); its own stream, so the key mix is unchanged."""
        v = self.variability
        geoms = all_geometries()
        if v.key_signature <= 0 or v.key_signature_mean_only:
            mean = v.key_signature * np.sqrt(2.0 / np.pi) * v.key_signature_frac  # E|N(0, s)| x share
            return {(g.key, g.hand): np.full(N_MUSCLES, max(mean, 0.0)) for g in geoms}
        rng = np.random.default_rng([self._key_mix_seed, 1])
        size = (len(geoms), N_MUSCLES)
        sig = np.abs(rng.normal(0.0, v.key_signature, size)) * (rng.random(size) < v.key_signature_frac)
        return {(g.key, g.hand): m for g, m in zip(geoms, sig)}

    def weights_for(self, geom: KeyGeometry, travel: tuple[float, float] | None = None) -> FloatArray:
        """This user's activation weights (3 phases x M) for one press of ``geom``.

        The canonical pattern (for the finger's ``travel``, default from the
        home row) times a per-finger mix shared by all keys of that finger,
        times a smaller per-key mix, plus the finger's spill-over into muscles
        the canonical pattern leaves silent.
        """
        w = canonical_activation(geom, travel) * self._finger_mix[geom.finger_id] * self._key_mix[(geom.key, geom.hand)]
        w[PRESS] += self._finger_spill[geom.finger_id]
        w[REACH] += self._key_signature[(geom.key, geom.hand)]
        return w

    def weights_for_key(self, key: str) -> FloatArray:
        """Weights (3, M) of a keystroke name from the home row (space with this user's thumb)."""
        return self.weights_for(key_geometry(key, space_hand=self.style.space_hand))

    def session(self, session_idx: int) -> SessionParams:
        return SessionParams.draw(self, session_idx)

    def electrode_rolls(self, session_idx: int, channels_per_band: int) -> npt.NDArray[np.int64]:
        """Per-arm electrode shifts (2,) that undo this user's band rotation in one session (user + donning) to the
        nearest electrode, for ``edge_runtime.recognizer.roll_channels``: an oracle for probes (what a decoder
        that knew the rotation would see), never available to a real device. The residual is under half a spacing.
        """
        worn = self.band_rotation_deg + self.session(session_idx).donning_rotation_deg  # (2,) degrees
        return np.round(worn / (360.0 / channels_per_band)).astype(np.int64)


@dataclass(frozen=True, eq=False)
class SessionParams:
    """One donning of the bands. Build with ``UserParams.session(session_idx)``."""

    user: UserParams
    session_idx: int
    start_unix: float
    style: TypingStyle  # the user's style at this session's pace
    donning_rotation_deg: FloatArray  # (2,) per arm
    contact_gain_field: FloatArray  # (2, H, 2) added to the user's field
    drift_period_s: FloatArray  # (2, H) slow gain drift, per arm and harmonic
    drift_phase: FloatArray  # (2, H)
    drift_coef: FloatArray  # (2, H, 2) spatial pattern of the drift
    bad_contacts: tuple[tuple[BadContact, ...], ...]  # per arm
    artifacts: tuple[tuple[MotionArtifact, ...], ...]  # per arm, time order, over a 2-hour horizon
    artifacts_per_min: float
    mains_phase: float
    prompt_seed: int
    typing_seed: int
    signal_seed: int  # profile-independent muscle activity
    condition: str = "on_keyboard"

    def session_name(self, profile_name: str) -> str:
        return f"sim-u{self.user.user_id:03d}-s{self.session_idx:02d}-{profile_name}"

    @classmethod
    def draw(cls, user: UserParams, session_idx: int) -> SessionParams:
        assert session_idx >= 0, f"session_idx must be >= 0, got {session_idx}"
        v = user.session_variability
        rng = seeded_rng(user.seed, "session", user.user_id, session_idx)
        start = _EPOCH_UNIX + user.user_id * 7 * 86400.0 + session_idx * 2.5 * 86400.0 + rng.uniform(8, 18) * 3600.0
        speed = float(_log_normal(rng, v.speed_sigma))
        style = replace(user.style, iki_median_s=float(np.clip(user.style.iki_median_s * speed, 0.08, 1.5)))
        h = CONTACT_HARMONICS
        bad: list[tuple[BadContact, ...]] = []
        for _ in range(N_ARMS):
            arm_bad = []
            if rng.random() < v.noisy_electrode_prob:
                a = float(rng.uniform(0, 0.5))
                arm_bad.append(
                    BadContact(
                        float(rng.uniform(0, 360)),
                        "noisy",
                        a,
                        float(rng.uniform(a + 0.2, 1.0)),
                        float(rng.uniform(3.0, 8.0)),
                    )
                )
            if rng.random() < v.lifted_electrode_prob:
                a = float(rng.uniform(0, 0.8))
                arm_bad.append(
                    BadContact(
                        float(rng.uniform(0, 360)), "lifted", a, float(min(1.0, a + rng.uniform(0.05, 0.3))), 1.0
                    )
                )
            bad.append(tuple(arm_bad))
        rate = float(v.artifacts_per_min * _log_normal(rng, 0.5))
        artifacts = []
        for _ in range(N_ARMS):
            # Drawn over a long horizon so a session's artifacts do not depend on its length.
            n = int(rng.poisson(rate * _ARTIFACT_HORIZON_S / 60.0))
            arts = tuple(
                MotionArtifact(
                    time_s=float(rng.uniform(0, _ARTIFACT_HORIZON_S)),
                    band_angle_deg=float(rng.uniform(0, 360)),
                    spread_deg=float(rng.uniform(25, 70)),
                    amplitude_uv=float(120.0 * _log_normal(rng, 0.7)),
                    freq_hz=float(rng.uniform(1.0, 20.0)),  # movement artifacts live below ~20 Hz
                    duration_s=float(rng.uniform(0.1, 0.5)),
                )
                for _ in range(n)
            )
            artifacts.append(tuple(sorted(arts, key=lambda a: a.time_s)))
        return cls(
            user=user,
            session_idx=session_idx,
            start_unix=float(round(start, 3)),
            style=style,
            donning_rotation_deg=rng.normal(0.0, v.donning_rotation_sd_deg, N_ARMS),
            contact_gain_field=rng.normal(0.0, v.contact_gain_sd, (N_ARMS, h, 2)) / np.arange(1, h + 1)[None, :, None],
            drift_period_s=rng.uniform(60.0, 400.0, (N_ARMS, h)),
            drift_phase=rng.uniform(0, 2 * np.pi, (N_ARMS, h)),
            drift_coef=rng.normal(0.0, v.drift_amplitude, (N_ARMS, h, 2)),
            bad_contacts=tuple(bad),
            artifacts=tuple(artifacts),
            artifacts_per_min=rate,
            mains_phase=float(rng.uniform(0, 2 * np.pi)),
            prompt_seed=int(rng.integers(2**63)),
            typing_seed=int(rng.integers(2**63)),
            signal_seed=int(rng.integers(2**63)),
        )


class Population:
    """All simulated users of one seed. ``Population(seed).user(7)`` is the same person on every machine."""

    def __init__(
        self,
        seed: int,
        variability: UserVariability | None = None,
        session_variability: SessionVariability | None = None,
    ) -> None:
        self.seed = int(seed)
        self.variability = variability or UserVariability()
        self.session_variability = session_variability or SessionVariability()

    def user(self, user_id: int) -> UserParams:
        assert user_id >= 0, f"user_id must be >= 0, got {user_id}"
        v = self.variability
        rng = seeded_rng(self.seed, "user", user_id)
        m = N_MUSCLES
        style = TypingStyle(
            # Inside-word IKI medians of 150-350 ms span fast to slow touch typists (emg2qwerty users ~ 40-90 wpm).
            iki_median_s=float(rng.uniform(0.15, 0.35)),
            iki_sigma=float(rng.uniform(0.35, 0.55)),
            hold_median_s=float(rng.uniform(0.08, 0.13)),
            hold_sigma=float(rng.uniform(0.18, 0.3)),
            typo_rate=float(rng.uniform(0.01, 0.06)),
            late_notice_prob=float(rng.uniform(0.1, 0.5)),
            word_pause=float(rng.uniform(1.15, 1.6)),
            hesitation_prob=float(rng.uniform(0.01, 0.08)),
            shift_lead_s=float(rng.uniform(0.06, 0.14)),
            shift_lag_s=float(rng.uniform(0.02, 0.08)),
            space_hand="right" if rng.random() < 0.8 else "left",
            prompt_reaction_s=float(rng.uniform(0.7, 1.5)),
            inter_prompt_s=float(rng.uniform(0.8, 2.0)),
        )
        timing = ActivationTiming(
            lead_s=float(rng.uniform(0.03, 0.08)),
            reach_s=float(rng.uniform(0.06, 0.12)),
            hold_level=float(rng.uniform(0.25, 0.45)),
            decay_tau_s=float(rng.uniform(0.025, 0.05)),
            off_tau_s=float(rng.uniform(0.02, 0.04)),
        )
        gain = _log_normal(rng, v.muscle_gain_sigma, (N_ARMS, m))
        if rng.random() < v.palmaris_absent_prob:
            gain[:, MUSCLE_INDEX["PL"]] = 0.0  # usually absent on both sides
        finger_mix = _log_normal(rng, v.finger_mix_sigma, (2 * 5, len(PHASES), m))
        spill = np.abs(rng.normal(0.0, v.finger_spill, (2 * 5, m))) * (rng.random((2 * 5, m)) < 0.3)
        tonic_base = np.array([mu.tonic for mu in MUSCLES])
        h = CONTACT_HARMONICS
        harmonic_decay = np.arange(1, h + 1)[None, :, None]
        return UserParams(
            seed=self.seed,
            user_id=user_id,
            style=style,
            timing=timing,
            band_rotation_deg=rng.uniform(-v.band_rotation_deg, v.band_rotation_deg, N_ARMS),
            radius_mm=float(rng.uniform(24.0, 30.0)),
            fat_mm=float(rng.uniform(1.5, 6.0)),
            muscle_angle_offset_deg=rng.normal(0.0, v.muscle_angle_sd_deg, (N_ARMS, m)),
            muscle_depth_offset_mm=rng.normal(0.0, v.muscle_depth_sd_mm, (N_ARMS, m)),
            muscle_gain=gain,
            tonic=0.5 * tonic_base[None, :] * _log_normal(rng, 0.4) * _log_normal(rng, 0.3, (N_ARMS, m)),
            amplitude_uv=float(900.0 * _log_normal(rng, v.amplitude_sigma)),
            spectral_scale=_log_normal(rng, 0.1) * _log_normal(rng, v.muscle_spectral_sigma, (N_ARMS, m)),
            contact_gain_field=rng.normal(0.0, v.contact_gain_sd, (N_ARMS, h, 2)) / harmonic_decay,
            contact_noise_field=rng.normal(0.0, v.contact_noise_sd, (N_ARMS, h, 2)) / harmonic_decay,
            noise_uv=float(rng.uniform(1.2, 2.5)),
            mains_hz=60.0 if rng.random() < 0.8 else 50.0,
            mains_uv=float(0.6 * _log_normal(rng, 0.6)),
            variability=v,
            session_variability=self.session_variability,
            _finger_mix=finger_mix,
            _finger_spill=spill,
            _key_mix_seed=int(rng.integers(2**63)),
        )

    def users(self, n: int) -> list[UserParams]:
        return [self.user(i) for i in range(n)]


def contact_field(coef: FloatArray, angle_deg: FloatArray) -> FloatArray:
    """Evaluate a smooth periodic field sum_k a_k cos(k t) + b_k sin(k t) at angles, (..., C)."""
    k = np.arange(1, coef.shape[-2] + 1)  # (H,)
    t = np.radians(angle_deg)[..., None] * k  # (C, H)
    return np.cos(t) @ coef[..., 0] + np.sin(t) @ coef[..., 1]  # (C,)
