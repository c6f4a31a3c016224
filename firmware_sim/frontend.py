"""A device recording muscle activity: electrodes, skin contact, noise, analogue filters, ADC.

This is the profile-dependent half of the simulator. Everything it needs to
know about the device comes from the ``DeviceProfile``: electrode count,
angles and width, high-pass and anti-alias corners, sample rate, sample format
and ADC scale. The same ``MuscleActivity`` fed to two front ends gives two
recordings of one session, e.g. the 2 x 16-channel 2 kHz research bands and the
2 x 8-channel 200 Hz consumer band, which then really differ in what they can
resolve: fewer, wider electrodes and no power above the anti-alias corner.

Per block, in order (all at the physiological rate until the ADC):
1. volume conduction: sub-sources -> electrodes by one matrix product per band,
   electrodes placed by the band's rotation on this user and this donning;
2. skin contact: a smooth gain field around the band (user + session), slow
   drift, bad contacts (a noisy electrode, or one lifted off the skin);
3. additive: electrode/amplifier noise, mains interference, motion artifacts;
4. the device's high-pass, then (decimating devices) its anti-alias low-pass,
   then sampling every R-th sample;
5. the ADC: float32 microvolts, or int16 counts with clipping at full scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import signal

from emgkey.firmware_sim.keyboard import HANDS
from emgkey.firmware_sim.physiology import ConductionParams, pickup_gain, wrap_deg
from emgkey.firmware_sim.population import (
    BadContact,
    MotionArtifact,
    SessionParams,
    UserParams,
    contact_field,
    seeded_rng,
)
from emgkey.firmware_sim.synth import SourceLayout
from emgkey.profiles import DeviceProfile

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class FrontendParams:
    """Analogue details a DeviceProfile does not state (assumed; see docs/simulator.md)."""

    highpass_order: int = 4  # Butterworth
    anti_alias_order: int = 4  # Butterworth
    electrode_gain_sigma: float = 0.05  # per-electrode manufacturing spread (log-normal)
    electrode_noise_sigma: float = 0.15
    mains_third_harmonic: float = 0.3  # relative to the fundamental
    lifted_emg_gain: float = 0.15  # what is left of the EMG under a lifted electrode
    lifted_noise_factor: float = 12.0
    lifted_mains_factor: float = 150.0
    lifted_wander_uv: float = 400.0  # slow baseline wander of a lifted electrode (before the high-pass)


@dataclass(frozen=True)
class _BandSetup:
    arm: int
    gain_matrix: F32  # (C, S): sub-source (arm-major) -> electrode, contact gain included
    mixing: F32  # (C, 2S): the same for the rows of a MuscleActivity block (other arm's columns are 0)
    noise_uv: F32  # (C,)
    mains_cos: F32  # (C,) mains amplitude, in-phase and quadrature parts per electrode
    mains_sin: F32  # (C,)
    drift_cos: F64  # (H, C) cos(k theta) of each electrode's anatomical angle, for the drift field
    drift_sin: F64  # (H, C)
    bad: tuple[tuple[BadContact, int], ...]  # (contact, electrode index)
    artifacts: tuple[MotionArtifact, ...]
    artifact_spatial: F32  # (A, C)


class DeviceFrontend:
    """Turns sub-source signals (2S, n) at the physiological rate into device samples, block by block."""

    def __init__(
        self,
        profile: DeviceProfile,
        user: UserParams,
        session: SessionParams,
        layout: SourceLayout,
        physio_fs: float,
        duration_s: float,
        params: FrontendParams | None = None,
        conduction: ConductionParams | None = None,
        row_source: npt.NDArray[np.intp] | None = None,
    ) -> None:
        """``row_source`` is ``MuscleActivity.row_source`` (default: arm-major rows)."""
        self.profile = profile
        self.params = p = params or FrontendParams()
        self.conduction = conduction or ConductionParams()
        self.fs = float(physio_fs)
        self.decimation = round(physio_fs / profile.sample_rate_hz)
        assert abs(self.decimation * profile.sample_rate_hz - physio_fs) < 1e-6, (
            f"physiological rate {physio_fs} Hz is not a multiple of {profile.name}'s {profile.sample_rate_hz} Hz"
        )
        if profile.sample_format == "int16":
            assert profile.adc_bits <= 16, f"{profile.name}: {profile.adc_bits}-bit ADC does not fit int16 storage"
        self.duration_s = float(duration_s)
        self.mains_hz = user.mains_hz
        self.mains_phase = session.mains_phase
        self.drift_period = session.drift_period_s  # (2, H)
        self.drift_phase = session.drift_phase  # (2, H)
        self.drift_coef = session.drift_coef  # (2, H, 2)
        # Device-specific draws (electrode spread, mains coupling) have their own stream per profile.
        rng = seeded_rng(user.seed, "electrodes", profile.name, user.user_id, session.session_idx)
        rows = np.arange(2 * layout.n_sources) if row_source is None else np.asarray(row_source)
        self.bands = [
            self._band(b, name, user, session, layout, rows, rng) for b, name in enumerate(profile.band_names)
        ]
        self.n_channels = profile.channels_per_band
        sos = [signal.butter(p.highpass_order, profile.highpass_hz, "highpass", fs=self.fs, output="sos")]
        if profile.anti_alias_hz is not None:
            sos.append(signal.butter(p.anti_alias_order, profile.anti_alias_hz, "lowpass", fs=self.fs, output="sos"))
        self.sos = np.concatenate(sos, axis=0)
        self._zi = np.zeros((self.sos.shape[0], profile.n_bands * profile.channels_per_band, 2))
        self.full_scale_counts = 2 ** (profile.adc_bits - 1) - 1
        identity = tuple(range(profile.channels_per_band))
        self._channel_map = None if profile.channel_map == identity else np.asarray(profile.channel_map)
        self._next_i0: int | None = None

    def _band(
        self,
        b: int,
        band_name: str,
        user: UserParams,
        session: SessionParams,
        layout: SourceLayout,
        rows: npt.NDArray[np.intp],
        rng: np.random.Generator,
    ) -> _BandSetup:
        prof, p = self.profile, self.params
        assert band_name in HANDS, f"{prof.name}: band {band_name!r} must be named after an arm ({HANDS})"
        arm = HANDS.index(band_name)
        band_angle = np.asarray(prof.electrode_angles_deg, dtype=np.float64)  # (C,) along the band
        worn = band_angle + user.band_rotation_deg[arm] + session.donning_rotation_deg[arm]  # (C,)
        # The bands are worn the same way on both wrists, so on the left arm the anatomy runs the other way.
        anat = worn if band_name == "right" else -worn  # (C,) right-arm anatomical convention
        g = pickup_gain(
            layout.angle_deg[arm],
            layout.depth_mm[arm],
            layout.strength[arm],
            anat,
            prof.electrode_width_deg,
            user.radius_mm,
            self.conduction,
        )  # (C, S)
        log_gain = contact_field(user.contact_gain_field[arm], anat) + contact_field(
            session.contact_gain_field[arm], anat
        )
        c = prof.channels_per_band
        contact = np.exp(log_gain + p.electrode_gain_sigma * rng.standard_normal(c))  # (C,)
        gain_matrix = (g * (contact * user.amplitude_uv)[:, None]).astype(np.float32)  # (C, S)
        n_src = layout.n_sources
        mine = rows // n_src == arm  # (2S,) rows that belong to this arm
        mixing = np.zeros((c, 2 * n_src), dtype=np.float32)  # (C, 2S)
        mixing[:, mine] = gain_matrix[:, rows[mine] % n_src]
        log_noise = contact_field(user.contact_noise_field[arm], anat) + p.electrode_noise_sigma * rng.standard_normal(
            c
        )
        noise = user.noise_uv * np.exp(log_noise)  # (C,)
        mains_amp = user.mains_uv * np.exp(0.5 * rng.standard_normal(c))  # (C,) residual after differential rejection
        mains_ph = rng.uniform(0, 2 * np.pi, c)  # (C,)
        k = np.arange(1, session.drift_coef.shape[1] + 1)  # (H,)
        theta = np.radians(anat)[None, :] * k[:, None]  # (H, C)
        bad = tuple(
            (bc, int(np.argmin(np.abs(wrap_deg(band_angle - bc.band_angle_deg))))) for bc in session.bad_contacts[arm]
        )
        arts = tuple(a for a in session.artifacts[arm] if a.time_s < self.duration_s + 1.0)
        if arts:
            centres = np.array([a.band_angle_deg for a in arts])  # (A,)
            spreads = np.array([a.spread_deg for a in arts])  # (A,)
            dist = wrap_deg(band_angle[None, :] - centres[:, None])  # (A, C)
            spatial = (
                np.exp(-(dist**2) / (2 * spreads[:, None] ** 2)) * np.array([a.amplitude_uv for a in arts])[:, None]
            )
        else:
            spatial = np.zeros((0, c))
        return _BandSetup(
            arm=arm,
            gain_matrix=gain_matrix,
            mixing=mixing,
            noise_uv=noise.astype(np.float32),
            mains_cos=(mains_amp * np.cos(mains_ph)).astype(np.float32),
            mains_sin=(mains_amp * np.sin(mains_ph)).astype(np.float32),
            drift_cos=np.cos(theta),
            drift_sin=np.sin(theta),
            bad=bad,
            artifacts=arts,
            artifact_spatial=spatial.astype(np.float32),
        )

    def _drift(self, band: _BandSetup, t: float) -> F64:
        """Multiplicative contact gain drift (C,) at time ``t``: a smooth field whose coefficients wander slowly."""
        arm = band.arm
        wave = np.sin(2 * np.pi * t / self.drift_period[arm] + self.drift_phase[arm])  # (H,)
        coef = self.drift_coef[arm] * wave[:, None]  # (H, 2)
        return np.exp(coef[:, 0] @ band.drift_cos + coef[:, 1] @ band.drift_sin)  # (C,)

    def process(self, sources: F32, i0: int, rng: np.random.Generator) -> npt.NDArray[np.float32 | np.int16]:
        """Device samples (n / R, n_bands, C) in the storage dtype for physiological samples ``[i0, i0 + n)``.

        ``sources`` is (2S, n) from ``MuscleActivity.block``; ``rng`` draws the
        electrode noise; ``i0`` must be a multiple of the decimation factor so
        device samples sit on a fixed grid. Work is channel-major (time last)
        so the filters run along contiguous rows.
        """
        n = sources.shape[-1]
        r = self.decimation
        assert i0 % r == 0 and n % r == 0, f"block [{i0}, {i0 + n}) is not aligned to the decimation factor {r}"
        assert self._next_i0 is None or i0 == self._next_i0, "blocks must be consecutive"
        self._next_i0 = i0 + n
        c = self.n_channels
        tt = (i0 + np.arange(n)) / self.fs  # (n,) seconds from session start
        t0, t1 = float(tt[0]), float(tt[-1])
        ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)[None, :]  # (1, n)
        w = 2 * np.pi * self.mains_hz * tt + self.mains_phase  # (n,)
        m_sin = (np.sin(w) + self.params.mains_third_harmonic * np.sin(3 * w)).astype(np.float32)  # (n,)
        m_cos = (np.cos(w) + self.params.mains_third_harmonic * np.cos(3 * w)).astype(np.float32)  # (n,)
        out = np.empty((len(self.bands) * c, n), dtype=np.float32)  # (bands * C, n)
        for b, band in enumerate(self.bands):
            x = out[b * c : (b + 1) * c]  # (C, n) view
            np.matmul(band.mixing, sources, out=x)  # (C, 2S) @ (2S, n) -> (C, n) microvolts
            d0, d1 = self._drift(band, t0), self._drift(band, t1)
            x *= (d0[:, None] + (d1 - d0)[:, None] * ramp).astype(np.float32)  # (C, n) slow contact drift
            noise = rng.standard_normal((c, n), dtype=np.float32)  # (C, n)
            noise *= band.noise_uv[:, None]
            mains = band.mains_cos[:, None] * m_sin[None, :] + band.mains_sin[:, None] * m_cos[None, :]  # (C, n)
            for bc, e in band.bad:
                self._bad_contact(bc, e, tt, x, noise, mains)
            x += noise
            x += mains
            self._artifacts(band, tt, x)
        y, self._zi = signal.sosfilt(self.sos, out, axis=-1, zi=self._zi)  # (bands * C, n) analogue filters
        y = y[:, ::r].reshape(len(self.bands), c, n // r).transpose(2, 0, 1)  # (n / R, bands, C) sampling
        if self._channel_map is not None:
            y = y[:, :, self._channel_map]  # board channel i carries electrode channel_map[i]
        return self._adc(y)

    def _bad_contact(self, bc: BadContact, e: int, tt: F64, x: F32, noise: F32, mains: F32) -> None:
        """Apply a bad contact to electrode ``e`` of one band's (C, n) arrays, in place."""
        a, b = bc.start_frac * self.duration_s, bc.end_frac * self.duration_s
        on = (tt >= a) & (tt < b)  # (n,)
        if not on.any():
            return
        p = self.params
        if bc.kind == "noisy":
            noise[e, on] *= bc.severity
            return
        x[e, on] *= p.lifted_emg_gain
        noise[e, on] *= p.lifted_noise_factor
        mains[e, on] *= p.lifted_mains_factor
        # A lifted electrode floats: slow wander of the half-cell potential (partly passes the high-pass).
        t = tt[on]
        wander = sum(math.sin(1.7 * k + e) * np.sin(2 * np.pi * f * t + k) for k, f in enumerate((0.7, 1.9, 4.3), 1))
        x[e, on] += (p.lifted_wander_uv * wander).astype(np.float32)

    def _artifacts(self, band: _BandSetup, tt: F64, x: F32) -> None:
        """Add the motion artifacts overlapping this block to one band's (C, n) signal, in place."""
        t0, t1 = float(tt[0]), float(tt[-1])
        for j, art in enumerate(band.artifacts):
            if art.time_s > t1:
                break
            if art.time_s + art.duration_s < t0:
                continue
            tau = tt - art.time_s  # (n,)
            on = (tau >= 0) & (tau < art.duration_s)
            if not on.any():
                continue
            u = tau[on]
            # A windowed low-frequency oscillation: the band rocking on the skin.
            wave = np.sin(2 * np.pi * art.freq_hz * u) * (0.5 - 0.5 * np.cos(2 * np.pi * u / art.duration_s))
            x[:, on] += band.artifact_spatial[j][:, None] * wave.astype(np.float32)[None, :]

    def _adc(self, y: F64) -> npt.NDArray[np.float32 | np.int16]:
        prof = self.profile
        if prof.sample_format == "float32":
            scaled = y if prof.adc_scale_uv_per_count == 1.0 else y / prof.adc_scale_uv_per_count
            return np.asarray(scaled, dtype=np.float32)
        counts = np.rint(y / prof.adc_scale_uv_per_count)  # (n, bands, C)
        np.clip(counts, -self.full_scale_counts, self.full_scale_counts, out=counts)
        return counts.astype(np.int16)
