"""Forearm physiology at the wristband: muscles, what each key press asks of them, how electrodes see them.

Three pieces, all simplified on purpose and documented in docs/simulator.md:

1. **Anatomy** (``MUSCLES``): the extrinsic hand and wrist muscles whose
   bellies lie under a band worn on the distal forearm, each at an angle
   around the forearm (0 deg = dorsal midline, positive towards the radial /
   thumb side, right-arm convention; the left arm is the mirror image) and a
   depth below the skin. Finger flexors and extensors have one compartment per
   finger (FDS, FDP, EDC slips), which is what makes fingers separable at all.

2. **Key -> activation** (``canonical_activation``): a key press is a movement
   (``KeyGeometry.movement``), and a movement activates muscles in three
   phases: *reach* (before the press: extensors lift a finger towards upper
   rows, wrist deviators move sideways), *press* (the finger's flexor
   compartments, with co-contraction of its extensor and the wrist
   stabilisers, and spill-over into neighbouring compartments, which are not
   independent), and *release* (the extensor lifts the finger at key-up). Keys
   of one finger therefore share the press pattern and differ in the reach
   part: the structure behind same-finger confusions in real decoders.

3. **Volume conduction** (``pickup_gain``): a source at angle a and depth d
   reaches an electrode at angle e with gain
   ``strength * exp(-d / depth_decay) * exp(-wrap(e - a)^2 / (2 s^2))``, where
   the angular spread ``s`` grows with depth and fat thickness and adds the
   electrode's own width. The exponential depth decay stands for the
   longitudinal bipolar (differential) pickup, which rejects far sources.

Carriers (``carrier_sos``) are band-limited Gaussian noise, the classic
interference-pattern model of surface EMG: a band-pass whose upper corner drops
with depth because tissue low-pass filters motor-unit potentials.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt
from scipy import signal

from emgkey.firmware_sim.keyboard import FINGERS, KeyGeometry

FloatArray = npt.NDArray[np.float64]

# Activation phases, first axis of the (3, M) weight tables.
PHASES: tuple[str, ...] = ("press", "reach", "release")
PRESS, REACH, RELEASE = 0, 1, 2


@dataclass(frozen=True)
class Muscle:
    name: str
    angle_deg: float  # around the forearm, right-arm convention: 0 = dorsal midline, + = radial side
    depth_mm: float  # centre of the active belly below the skin (fat layer of a reference user included)
    width_deg: float  # angular extent of the belly under the band
    strength: float  # relative EMG amplitude at equal activation (belly size at the band; tendons are silent)
    tonic: float  # activation while the hands hover over the keyboard (posture), fraction of a key press


# Approximate cross-section of the distal third of the forearm (assumed from standard anatomy atlases:
# flexor compartments volar and ulnar, FDS superficial to FDP; extensor slips dorsal; EPL/APL radial-dorsal).
MUSCLES: tuple[Muscle, ...] = (
    # Finger flexors, superficial (FDS) and deep (FDP), one compartment per finger: index, middle, ring, little.
    # The four slips of each spread across the volar flexor mass (FCR to FCU, ~105 deg at the band), ~25 deg apart.
    Muscle("FDS2", 150.0, 8.0, 14.0, 1.00, 0.02),
    Muscle("FDS3", 174.0, 7.0, 14.0, 1.00, 0.02),
    Muscle("FDS4", 200.0, 7.5, 12.0, 0.90, 0.02),
    Muscle("FDS5", 224.0, 9.0, 10.0, 0.75, 0.02),
    Muscle("FDP2", 175.0, 14.0, 14.0, 0.95, 0.02),
    Muscle("FDP3", 199.0, 15.0, 14.0, 0.95, 0.02),
    Muscle("FDP4", 219.0, 15.0, 12.0, 0.90, 0.02),
    Muscle("FDP5", 238.0, 15.0, 12.0, 0.85, 0.02),
    Muscle("FPL", 147.0, 14.0, 14.0, 0.90, 0.02),  # thumb flexor (space bar)
    Muscle("FCR", 135.0, 5.0, 12.0, 0.70, 0.03),  # wrist flexor, radial
    Muscle("FCU", 240.0, 6.0, 16.0, 0.80, 0.03),  # wrist flexor, ulnar
    Muscle("PL", 172.0, 4.0, 8.0, 0.40, 0.02),  # palmaris longus (absent in ~15% of people)
    # Finger extensors: EDC slips (index..little), EIP (index), EDM (little).
    Muscle("EDC2", 12.0, 6.0, 10.0, 0.70, 0.05),
    Muscle("EDC3", 2.0, 6.0, 10.0, 0.70, 0.05),
    Muscle("EDC4", -8.0, 6.5, 10.0, 0.65, 0.05),
    Muscle("EDC5", -18.0, 7.0, 10.0, 0.60, 0.05),
    Muscle("EIP", 6.0, 11.0, 10.0, 0.60, 0.03),
    Muscle("EDM", -34.0, 6.0, 10.0, 0.60, 0.04),
    # Wrist extensors hold the hands up over the keys: the largest tonic activity.
    Muscle("ECU", -62.0, 6.0, 14.0, 0.70, 0.07),
    Muscle("ECR", 52.0, 6.0, 18.0, 0.65, 0.08),  # ECRL + ECRB
    # Thumb extensors and abductor (space bar lift).
    Muscle("EPL", 26.0, 10.0, 10.0, 0.60, 0.02),
    Muscle("APL", 80.0, 7.0, 14.0, 0.70, 0.03),
)
# Bumped whenever what the simulator generates for a (seed, user, session) changes; datasets record it, and
# benchmark results from another version are not comparable. 1: until 2026-12-03. 2: finger compartments
# spread over the flexor mass, weaker reach and enslaving, less per-user finger idiosyncrasy. 3 (2026-12-04): each
# user reaches each key their own way (`UserVariability.key_signature`), docs/simulator.md.
SIMULATOR_VERSION = 3

MUSCLE_INDEX: dict[str, int] = {m.name: i for i, m in enumerate(MUSCLES)}
N_MUSCLES = len(MUSCLES)

_FINGER_DIGIT = {"index": 2, "middle": 3, "ring": 4, "pinky": 5}
# Drive of a neighbouring finger's compartments during a press (assumed; FDP compartments share a
# tendon sheet and are less independent than FDS).
ENSLAVING_FDS = 0.1
ENSLAVING_FDP = 0.15


def _m(name: str) -> int:
    return MUSCLE_INDEX[name]


def travel_components(d_row: float, d_lateral: float) -> tuple[float, float, float, float, float]:
    """Movement components of a finger travel in the hand frame: (extend, curl, radial, ulnar, reach)."""
    return (
        max(d_row, 0.0),
        max(-d_row, 0.0),
        max(d_lateral, 0.0),
        max(-d_lateral, 0.0),
        max(math.hypot(d_row, d_lateral) - 1.2, 0.0),
    )


def canonical_activation(geom: KeyGeometry, travel: tuple[float, float] | None = None) -> FloatArray:
    """Activation weights (3 phases x M muscles) for pressing ``geom`` with the canonical anatomy.

    ``travel`` is the finger's (row, lateral) movement to the key in key units;
    by default it starts from the home row, but a finger that just pressed
    another key moves from there (co-articulation: "ed" reaches less than "ad").
    The press and release phases depend on the key alone: how curled or
    stretched the finger is when it presses.

    Units are "fraction of a typical key-press drive"; the press phase of the
    main flexor compartment is 1. Values are assumed (see docs/simulator.md);
    what matters for decoding is their structure: finger identity lives in
    which compartments fire, the key within a finger in the reach phase.
    """
    w = np.zeros((len(PHASES), N_MUSCLES))  # (3, M)
    if travel is None:
        travel = (geom.row_offset, geom.lateral_offset)
    extend, t_curl, radial, ulnar, reach = travel_components(*travel)
    curl = max(-geom.row_offset, 0.0)  # posture at the press: bottom-row keys need a more curled finger
    if geom.finger == "thumb":
        w[PRESS, _m("FPL")] = 0.9
        w[PRESS, _m("APL")] = 0.35
        w[PRESS, _m("FDS2")] = 0.1  # index tends to follow the thumb
        w[PRESS, _m("FCR")] = 0.15
        w[REACH, _m("EPL")] = 0.3  # thumb lifts before tapping
        w[RELEASE, _m("EPL")] = 0.3
        w[RELEASE, _m("APL")] = 0.15
        return w

    d = _FINGER_DIGIT[geom.finger]
    fds, fdp, edc = _m(f"FDS{d}"), _m(f"FDP{d}"), _m(f"EDC{d}")
    # Press: the finger's flexor compartments, co-contraction of its extensor, wrist stabilisers.
    w[PRESS, fds] = 1.0
    w[PRESS, fdp] = 0.55
    w[PRESS, edc] = 0.25
    for name, val in (("FCR", 0.10), ("FCU", 0.10), ("ECR", 0.12), ("ECU", 0.12)):
        w[PRESS, _m(name)] = val
    # Neighbouring compartments are mechanically and neurally coupled ("enslaving"), FDP more than FDS.
    for nd in (d - 1, d + 1):
        if 2 <= nd <= 5:
            w[PRESS, _m(f"FDS{nd}")] += ENSLAVING_FDS
            w[PRESS, _m(f"FDP{nd}")] += ENSLAVING_FDP
    if geom.finger == "pinky":
        w[PRESS, _m("FCU")] += 0.15
    # Bottom row: the finger curls further, mostly the deep flexor.
    w[PRESS, fdp] += 0.45 * curl
    w[PRESS, fds] += 0.15 * curl
    # Reach: extension towards upper rows, flexion towards lower ones, deviation sideways,
    # the wrist moving the hand for long reaches.
    # A row is ~19 mm of finger travel: a small extension or curl next to the press itself, so the reach is
    # weak; sideways travel is mostly the intrinsic hand muscles (not under the band), the wrist deviators
    # only help a little.
    w[REACH, edc] += 0.25 * extend
    w[REACH, fdp] += 0.1 * t_curl
    if geom.finger == "index":
        w[REACH, _m("EIP")] += 0.2 * extend
    if geom.finger == "pinky":
        w[REACH, _m("EDM")] += 0.2 * extend
    w[REACH, _m("ECR")] += 0.05 * extend + 0.12 * radial + 0.08 * reach
    w[REACH, _m("FCR")] += 0.08 * radial + 0.05 * reach
    w[REACH, _m("APL")] += 0.05 * radial
    w[REACH, _m("ECU")] += 0.05 * extend + 0.12 * ulnar + 0.08 * reach
    w[REACH, _m("FCU")] += 0.08 * ulnar + 0.05 * reach
    w[REACH, _m("EDM")] += 0.04 * ulnar
    for dd in range(2, 6):
        w[REACH, _m(f"EDC{dd}")] += 0.06 * reach
    # Release: the extensor lifts the finger off the key.
    w[RELEASE, edc] = 0.35
    if geom.finger == "index":
        w[RELEASE, _m("EIP")] = 0.15
    if geom.finger == "pinky":
        w[RELEASE, _m("EDM")] = 0.15
    return w


def finger_muscles(finger: str) -> tuple[int, ...]:
    """Muscles that belong to one finger (for per-finger idiosyncrasy and reports)."""
    assert finger in FINGERS, f"unknown finger {finger!r}"
    if finger == "thumb":
        return (_m("FPL"), _m("EPL"), _m("APL"))
    d = _FINGER_DIGIT[finger]
    extra = ("EIP",) if finger == "index" else ("EDM",) if finger == "pinky" else ()
    return tuple(_m(n) for n in (f"FDS{d}", f"FDP{d}", f"EDC{d}", *extra))


@dataclass(frozen=True)
class ConductionParams:
    """Volume conductor between muscles and electrodes (values assumed, see docs/simulator.md)."""

    depth_decay_mm: float = 6.0  # amplitude e-folding depth of a longitudinal bipolar pickup
    spread_base_mm: float = 3.0  # lateral spread of a source right under the skin
    spread_per_depth: float = 0.8  # extra spread (mm) per mm of tissue between source and skin
    reference_fat_mm: float = 3.0  # fat thickness already included in ``Muscle.depth_mm``


def wrap_deg(a: npt.ArrayLike) -> FloatArray:
    """Signed angular difference folded into [-180, 180)."""
    return (np.asarray(a, dtype=np.float64) + 180.0) % 360.0 - 180.0


def pickup_gain(
    source_angle_deg: FloatArray,
    source_depth_mm: FloatArray,
    source_strength: FloatArray,
    electrode_angle_deg: FloatArray,
    electrode_width_deg: float,
    radius_mm: float,
    params: ConductionParams,
) -> FloatArray:
    """Gain from each source to each electrode, (C, S).

    Sources and electrodes are given in the same anatomical frame (degrees).
    ``source_depth_mm`` already includes the user's fat layer. The electrode
    width enters as the variance of a uniform average over its arc.
    """
    assert source_angle_deg.shape == source_depth_mm.shape == source_strength.shape, (
        "one angle/depth/strength per source"
    )
    assert radius_mm > 0, "forearm radius must be positive"
    spread_mm = params.spread_base_mm + params.spread_per_depth * source_depth_mm  # (S,)
    spread_deg = np.degrees(spread_mm / radius_mm)  # (S,)
    var = spread_deg**2 + electrode_width_deg**2 / 12.0  # (S,)
    dist = wrap_deg(electrode_angle_deg[:, None] - source_angle_deg[None, :])  # (C, S)
    spatial = np.exp(-(dist**2) / (2.0 * var[None, :]))  # (C, S)
    # Spread conserves energy: a wider footprint is a lower one (1/sqrt of the width, as a 2-D blur would).
    norm = np.sqrt(params.spread_base_mm / spread_mm)  # (S,)
    amp = source_strength * np.exp(-source_depth_mm / params.depth_decay_mm) * norm  # (S,)
    return spatial * amp[None, :]


@dataclass(frozen=True)
class CarrierSpectrum:
    """Power spectrum of motor-unit activity at the skin, in the form of Shwedyk et al. (1977).

    ``P(f) ~ f^2 / (f^2 + f_l^2) * f_h^4 / (f^2 + f_h^2)^2``: a first-order
    high-pass at ``f_l`` times a double pole at ``f_h``. ``f_h`` falls with
    source depth (tissue is a spatial, hence temporal, low-pass filter) and
    scales with conduction velocity. Corner values are assumed, chosen so the
    median frequency after the 40 Hz high-pass of the emg2qwerty bands falls
    in the 80-120 Hz range typical of forearm sEMG.
    """

    low_hz: float = 45.0  # f_l
    high_hz_surface: float = 190.0  # f_h for a source right under the skin
    high_hz_decay_mm: float = 20.0  # f_h falls as exp(-depth / this)


def carrier_high_hz(depth_mm: float, spectrum: CarrierSpectrum, scale: float = 1.0) -> float:
    """Upper spectral corner ``f_h`` of a source at ``depth_mm``; ``scale`` models conduction velocity."""
    return spectrum.high_hz_surface * math.exp(-depth_mm / spectrum.high_hz_decay_mm) * scale


@lru_cache(maxsize=256)
def carrier_sos(low_hz: float, high_hz: float, fs: float) -> npt.NDArray[np.float64]:
    """Digital Shwedyk band-pass (bilinear transform, corners pre-warped) with unit noise gain.

    Normalising the noise gain means a unit-variance white input gives a
    unit-variance carrier, so activation envelopes are in RMS units wherever
    the corners sit.
    """
    assert 0 < low_hz < high_hz < fs / 2, f"carrier corners {low_hz}..{high_hz} Hz must lie below Nyquist {fs / 2}"
    wl, wh = (2 * fs * math.tan(math.pi * f / fs) for f in (low_hz, high_hz))  # pre-warped, rad/s
    z, p, k = signal.bilinear_zpk([0.0], [-wl, -wh, -wh], wh * wh, fs)
    sos = signal.zpk2sos(z, p, k)
    _, h = signal.sosfreqz(sos, worN=8192, fs=fs)
    power = float(np.mean(np.abs(h) ** 2))  # white input of unit variance -> output variance
    sos = sos.copy()
    sos[0, :3] /= math.sqrt(power)
    return sos
