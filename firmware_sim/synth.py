"""Muscle activity over time, before any electrode sees it: the profile-independent half of the simulator.

Each muscle is split into a few sub-sources across its belly (independent
motor-unit pools, so that neighbouring electrodes are correlated but not
copies of each other). A sub-source's signal is

    carrier(t) * activation(t)

- ``carrier``: unit-variance white noise through the Shwedyk surface-EMG
  spectrum (``physiology.carrier_sos``), whose upper corner depends on depth,
  the user and the muscle: the interference-pattern model of surface EMG;
- ``activation``: the muscle's drive, the sum over key presses of the three
  phase kernels (reach, press, release) weighted by the user's key pattern,
  plus tonic posture activity that rises while a prompt is being typed.

Everything runs block by block at the physiological rate (2 kHz: the highest
rate a shipped device samples; sEMG has little power above 500 Hz). Random
draws happen once per fixed-size block, in order, so the output does not
depend on how a caller consumes it, and both device profiles see the very same
muscle activity for the same user and session.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import signal

from emgkey.firmware_sim.keyboard import HANDS, all_geometries
from emgkey.firmware_sim.physiology import (
    MUSCLES,
    N_MUSCLES,
    PRESS,
    REACH,
    RELEASE,
    CarrierSpectrum,
    carrier_high_hz,
    carrier_sos,
)
from emgkey.firmware_sim.population import SessionParams, UserParams, seeded_rng
from emgkey.firmware_sim.typist import TypingTimeline
from emgkey.profiles import DeviceProfile

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

PHYSIO_RATE_HZ = 2000.0  # muscle activity is simulated at (an integer multiple of the device rate near) this rate
BLOCK_S = 1.0  # random draws happen per block of this length: part of what a seed means, do not change lightly
SUBSOURCES_PER_MUSCLE = 2
POSTURE_TYPING = 1.5  # tonic activity while typing a prompt, relative to resting between prompts
POSTURE_RAMP_S = 0.3
SWAY_DEPTH = 0.25  # slow fluctuation of tonic activity (postural sway), fraction
RELEASE_WINDOW_S = (-0.02, 0.06)  # extensor burst around key-up, relative to release
CARRIER_CLASS_HZ = 30.0  # sub-sources whose upper corners round to the same 30 Hz share one filter call


def physio_rate_for(profile: DeviceProfile) -> float:
    """The smallest integer multiple of the device rate that is at least ``PHYSIO_RATE_HZ``."""
    fs = profile.sample_rate_hz
    return fs * max(1, math.ceil(PHYSIO_RATE_HZ / fs - 1e-9))


@dataclass(frozen=True, eq=False)
class SourceLayout:
    """Sub-sources of both arms for one user: what muscle, where, how strong (anatomical frame)."""

    muscle: npt.NDArray[np.intp]  # (S,) muscle index of each sub-source (same for both arms)
    angle_deg: F64  # (2, S) right-arm convention, the user's anatomy
    depth_mm: F64  # (2, S) including the user's fat layer
    strength: F64  # (2, S) relative amplitude (muscle strength x user's muscle gain / sqrt(K))

    @property
    def n_sources(self) -> int:
        return int(self.muscle.shape[0])

    @classmethod
    def for_user(cls, user: UserParams, fat_reference_mm: float = 3.0) -> SourceLayout:
        k = SUBSOURCES_PER_MUSCLE
        muscle = np.repeat(np.arange(N_MUSCLES), k)  # (S,)
        # Spread the K pools evenly across the belly's angular width.
        frac = (np.arange(k) + 0.5) / k - 0.5  # (K,)
        width = np.array([m.width_deg for m in MUSCLES])  # (M,)
        offset = (width[:, None] * frac[None, :]).reshape(-1)  # (S,)
        base_angle = np.array([m.angle_deg for m in MUSCLES])[muscle]  # (S,)
        base_depth = np.array([m.depth_mm for m in MUSCLES])[muscle]  # (S,)
        base_strength = np.array([m.strength for m in MUSCLES])[muscle]  # (S,)
        angle = base_angle[None, :] + offset[None, :] + user.muscle_angle_offset_deg[:, muscle]  # (2, S)
        depth = base_depth[None, :] + user.muscle_depth_offset_mm[:, muscle] + (user.fat_mm - fat_reference_mm)
        depth = np.maximum(depth, 2.0)  # (2, S) nothing sits above the skin
        strength = base_strength[None, :] * user.muscle_gain[:, muscle] / math.sqrt(k)  # (2, S)
        return cls(muscle=muscle, angle_deg=angle, depth_mm=depth, strength=strength)


@dataclass(frozen=True, eq=False)
class ActivationEvents:
    """Key presses as activation events, in support-start order (times in seconds from session start)."""

    arm: npt.NDArray[np.intp]  # (E,)
    press: F64  # (E,)
    release: F64  # (E,)
    lead: F64  # (E,) onset of the press burst before key-down
    hold_level: F64  # (E,)
    weights: F64  # (E, 3, M) phase x muscle drive of this keystroke (force jitter included)
    start: F64  # (E,) support start (reach onset)
    end: F64  # (E,) support end (release decay finished)
    reach_s: float
    decay_tau_s: float
    off_tau_s: float

    @classmethod
    def from_timeline(cls, timeline: TypingTimeline, user: UserParams, rng: np.random.Generator) -> ActivationEvents:
        """One event per key press, plus fidgets: finger movements that press no key."""
        t = user.timing
        arm = [HANDS.index(e.geometry.hand) for e in timeline.events]
        press = [e.press for e in timeline.events]
        release = [e.release for e in timeline.events]
        hold = [t.shift_hold_level if e.key == "Key.shift" else t.hold_level for e in timeline.events]
        base = [user.weights_for(e.geometry, travel) for e, travel in zip(timeline.events, _travels(timeline))]
        f_arm, f_press, f_release, f_weights = _fidgets(timeline, user, rng)
        n = len(press) + len(f_press)
        arm_a = np.array(arm + f_arm, dtype=np.intp)  # (E,)
        press_a = np.array(press + f_press, dtype=np.float64)  # (E,)
        release_a = np.array(release + f_release, dtype=np.float64)  # (E,)
        hold_a = np.array(hold + [t.hold_level] * len(f_press), dtype=np.float64)  # (E,)
        base_a = np.array(base + f_weights, dtype=np.float64).reshape(n, 3, N_MUSCLES)  # (E, 3, M)
        lead = np.clip(t.lead_s + t.lead_jitter_s * rng.standard_normal(n), 0.015, None)  # (E,)
        force = np.exp(t.force_sigma * rng.standard_normal((n, 1, 1)))  # (E, 1, 1) one force per keystroke
        jitter = np.exp(t.muscle_jitter_sigma * rng.standard_normal((n, 1, N_MUSCLES)))  # (E, 1, M)
        weights = base_a * force * jitter  # (E, 3, M)
        start = press_a - lead - t.reach_s  # (E,)
        end = release_a + max(6.0 * t.off_tau_s, RELEASE_WINDOW_S[1])  # (E,)
        order = np.argsort(start, kind="stable")
        return cls(
            arm=arm_a[order],
            press=press_a[order],
            release=release_a[order],
            lead=lead[order],
            hold_level=hold_a[order],
            weights=weights[order],
            start=start[order],
            end=end[order],
            reach_s=t.reach_s,
            decay_tau_s=t.decay_tau_s,
            off_tau_s=t.off_tau_s,
        )

    @property
    def max_support_s(self) -> float:
        return float(np.max(self.end - self.start)) if len(self.start) else 0.0

    def kernels(self, e: int, t0: float, n: int, fs: float) -> F64:
        """Phase kernels of event ``e`` on the grid ``t0 + j / fs``, j < n: (n, 3) in ``PHASES`` order."""
        p, r, lead, h = self.press[e], self.release[e], self.lead[e], self.hold_level[e]
        k = np.zeros((n, 3))  # (n, 3)

        def span(a: float, b: float) -> tuple[int, npt.NDArray[np.float64]]:
            """First index and times of the grid points in [a, b)."""
            i = min(max(math.ceil((a - t0) * fs), 0), n)
            j = min(max(math.ceil((b - t0) * fs), 0), n)
            return i, t0 + np.arange(i, max(i, j)) / fs

        # Press: raised-cosine rise over the lead, decay towards the hold level, exponential off after release.
        i, t = span(p - lead, p)
        k[i : i + len(t), PRESS] = 0.5 - 0.5 * np.cos(np.pi * (t - (p - lead)) / lead)
        i, t = span(p, r)
        k[i : i + len(t), PRESS] = h + (1.0 - h) * np.exp(-(t - p) / self.decay_tau_s)
        i, t = span(r, t0 + n / fs)
        v_r = h + (1.0 - h) * math.exp(-(r - p) / self.decay_tau_s)
        k[i : i + len(t), PRESS] = v_r * np.exp(-(t - r) / self.off_tau_s)
        # Reach: a Hann bump from reach onset until shortly before the press burst peaks.
        a, b = p - lead - self.reach_s, p - 0.3 * lead
        i, t = span(a, b)
        k[i : i + len(t), REACH] = 0.5 - 0.5 * np.cos(2.0 * np.pi * (t - a) / (b - a))
        # Release: a Hann bump around key-up (the extensor lifts the finger).
        a, b = r + RELEASE_WINDOW_S[0], r + RELEASE_WINDOW_S[1]
        i, t = span(a, b)
        k[i : i + len(t), RELEASE] = 0.5 - 0.5 * np.cos(2.0 * np.pi * (t - a) / (b - a))
        return k


class MuscleActivity:
    """Streams sub-source signals (2S rows, n samples) float32 for one session, block after block.

    ``block(i0, n)`` must be called with consecutive ranges (``i0`` is the
    physiological sample index; negative indices are pre-roll before the
    session starts, which lets filters settle).
    """

    def __init__(
        self,
        user: UserParams,
        session: SessionParams,
        timeline: TypingTimeline,
        fs: float,
        spectrum: CarrierSpectrum | None = None,
    ) -> None:
        self.fs = float(fs)
        self.layout = SourceLayout.for_user(user)
        self.spectrum = spectrum or CarrierSpectrum()
        ev_rng = seeded_rng(user.seed, "activation", user.user_id, session.session_idx)
        self.events = ActivationEvents.from_timeline(timeline, user, ev_rng)
        self._max_support = self.events.max_support_s
        self._carrier_rng = np.random.default_rng(session.signal_seed)
        self._tonic = user.tonic  # (2, M)
        sway_rng = seeded_rng(user.seed, "sway", user.user_id, session.session_idx)
        self._sway_period = sway_rng.uniform(4.0, 20.0, (len(HANDS), N_MUSCLES))
        self._sway_phase = sway_rng.uniform(0.0, 2 * np.pi, (len(HANDS), N_MUSCLES))
        self._posture_t, self._posture_v = _posture_breakpoints(timeline)
        self._groups = self._carrier_groups(user.spectral_scale[:, self.layout.muscle].reshape(-1))
        self._zi = [np.zeros((sos.shape[0], hi - lo, 2), dtype=np.float32) for lo, hi, sos in self._groups]
        self._next_i0: int | None = None

    def _carrier_groups(self, spectral_scale: F64) -> list[tuple[int, int, F32]]:
        """Carrier filters: sub-sources sorted by filter class, one sosfilt call per contiguous class.

        Sets ``row_source`` (arm-major source index of each carrier row) and
        ``_row_muscle`` (row of the (2M, n) envelope each carrier row takes).
        The filters take uniform [0, 1) noise: the sqrt(12) that makes it unit
        variance is folded into their gain, and its 0.5 mean is removed by the
        carrier high-pass (zero gain at DC; the pre-roll absorbs the transient).
        """
        s = self.layout.n_sources
        depth = self.layout.depth_mm.reshape(-1)  # (2S,) arm-major, like spectral_scale
        high = np.array([carrier_high_hz(d, self.spectrum, float(k)) for d, k in zip(depth, spectral_scale)])
        high = np.clip(np.round(high / CARRIER_CLASS_HZ) * CARRIER_CLASS_HZ, self.spectrum.low_hz + 10, 0.4 * self.fs)
        order = np.argsort(high, kind="stable")  # (2S,) carrier row -> arm-major source index
        self.row_source = order
        self._row_muscle = (order // s) * N_MUSCLES + self.layout.muscle[order % s]  # (2S,)
        groups = []
        sorted_high = high[order]
        for h in np.unique(sorted_high):
            idx = np.flatnonzero(sorted_high == h)
            sos = carrier_sos(self.spectrum.low_hz, float(h), self.fs).copy()
            sos[0, :3] *= math.sqrt(12.0)  # uniform [0, 1) noise has variance 1/12
            groups.append((int(idx[0]), int(idx[-1]) + 1, sos.astype(np.float32)))
        return groups

    def envelopes(self, i0: int, n: int) -> F32:
        """Muscle drive (2, M, n) float32 for physiological samples ``[i0, i0 + n)`` (deterministic, stateless)."""
        tt = (i0 + np.arange(n)) / self.fs  # (n,) seconds from session start
        t0, t1 = float(tt[0]), float(tt[-1])
        # Tonic posture activity: higher while typing a prompt, with a slow sway (interpolated across the block).
        posture = np.interp(tt, self._posture_t, self._posture_v).astype(np.float32)  # (n,)
        s0, s1 = (
            self._tonic * (1.0 + SWAY_DEPTH * np.sin(2 * np.pi * t / self._sway_period + self._sway_phase))
            for t in (t0, t1)
        )
        ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)  # (n,)
        env = s0.reshape(-1, 1).astype(np.float32) + (s1 - s0).reshape(-1, 1).astype(np.float32) * ramp  # (2M, n)
        env *= posture
        env = env.reshape(2, N_MUSCLES, n)  # (2, M, n)
        ev = self.events
        lo = int(np.searchsorted(ev.start, t0 - self._max_support, side="left"))
        hi = int(np.searchsorted(ev.start, t1, side="right"))
        for e in range(lo, hi):
            if ev.end[e] <= t0:
                continue
            a = max(0, math.floor((ev.start[e] - t0) * self.fs))
            b = min(n, math.ceil((ev.end[e] - t0) * self.fs) + 1)
            if b <= a:
                continue
            k = ev.kernels(e, float(tt[a]), b - a, self.fs)  # (m, 3)
            env[ev.arm[e], :, a:b] += ev.weights[e].T @ k.T  # (M, 3) @ (3, m) -> (M, m)
        return env

    def block(self, i0: int, n: int) -> F32:
        """Carrier rows x activation, (2S, n) float32, for physiological samples ``[i0, i0 + n)``.

        Rows are in ``row_source`` order (grouped by carrier filter), not
        arm-major: a consumer mixes them with columns permuted the same way,
        which saves reordering 2S x n samples every block.
        """
        assert n > 0, "empty block"
        assert self._next_i0 is None or i0 == self._next_i0, (
            f"blocks must be consecutive: got {i0}, not {self._next_i0}"
        )
        self._next_i0 = i0 + n
        s = self.layout.n_sources
        # Uniform white noise: after the band-pass (tens of samples of memory) it is Gaussian to the eye and to
        # any statistic here, and it is 4x cheaper to draw than Gaussian noise.
        white = self._carrier_rng.random((2 * s, n), dtype=np.float32)  # (2S, n)
        carrier = np.empty((2 * s, n), dtype=np.float32)  # (2S, n) in row_source order
        for g, (lo, hi, sos) in enumerate(self._groups):
            carrier[lo:hi], self._zi[g] = signal.sosfilt(sos, white[lo:hi], axis=-1, zi=self._zi[g])
        env = self.envelopes(i0, n).reshape(2 * N_MUSCLES, n)  # (2M, n)
        carrier *= env[self._row_muscle]  # (2S, n)
        return carrier


def _travels(timeline: TypingTimeline, memory_s: float = 1.0) -> list[tuple[float, float] | None]:
    """Each press's finger travel: from the finger's previous key if it pressed one recently, else from home."""
    last: dict[int, tuple[float, float, float]] = {}  # finger id -> (release time, row, lateral)
    out: list[tuple[float, float] | None] = []
    for e in timeline.events:
        g = e.geometry
        prev = last.get(g.finger_id)
        if prev is not None and e.press - prev[0] < memory_s:
            out.append((g.row_offset - prev[1], g.lateral_offset - prev[2]))
        else:
            out.append(None)
        last[g.finger_id] = (e.release, g.row_offset, g.lateral_offset)
    return out


def _fidgets(
    timeline: TypingTimeline, user: UserParams, rng: np.random.Generator
) -> tuple[list[int], list[float], list[float], list[F64]]:
    """Poisson finger movements that press no key: (arm, "press", "release", weights (3, M)) lists.

    They make activity without a label, as hovering and adjusting fingers do,
    so a decoder cannot treat every burst as a key. More frequent while typing.
    """
    t = user.timing
    geoms = all_geometries()
    arms: list[int] = []
    presses: list[float] = []
    releases: list[float] = []
    weights: list[F64] = []
    spans = [(p.start, p.end) for p in timeline.prompts]
    for arm, hand in enumerate(HANDS):
        own = [g for g in geoms if g.hand == hand]
        tt = 0.0
        max_rate = max(t.fidget_rate_typing_hz, t.fidget_rate_rest_hz)
        while max_rate > 0:
            # Thinning: candidates at the larger rate, kept with the ratio of the rate in force at that time.
            tt += float(rng.exponential(1.0 / max_rate))
            if tt >= timeline.duration_s:
                break
            typing = any(a <= tt < b for a, b in spans)
            rate = t.fidget_rate_typing_hz if typing else t.fidget_rate_rest_hz
            keep = rng.random() < rate / max_rate
            g = own[int(rng.integers(len(own)))]
            level = t.fidget_level * float(np.exp(0.4 * rng.standard_normal()))
            hold = float(rng.uniform(0.04, 0.15))
            if keep:
                arms.append(arm)
                presses.append(tt)
                releases.append(tt + hold)
                weights.append(user.weights_for(g) * level)
    return arms, presses, releases, weights


def _posture_breakpoints(timeline: TypingTimeline) -> tuple[F64, F64]:
    """Piecewise-linear posture level: 1 at rest, ``POSTURE_TYPING`` from prompt start to end (ramped)."""
    ts: list[float] = [-1e9]
    vs: list[float] = [1.0]
    for p in timeline.prompts:
        up = max(p.start, ts[-1])
        down = max(p.end, up + POSTURE_RAMP_S)
        ts += [up, up + POSTURE_RAMP_S, down, down + POSTURE_RAMP_S]
        vs += [1.0, POSTURE_TYPING, POSTURE_TYPING, 1.0]
    ts.append(1e9)
    vs.append(1.0)
    t = np.maximum.accumulate(np.array(ts))  # (P,) non-decreasing for np.interp
    return t, np.array(vs)
