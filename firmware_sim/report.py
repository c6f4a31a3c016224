"""Realism report of SIMULATED data: does the simulator look like sEMG typing, and is it hard the right way?

``emgkey sim report --profile P --users N --minutes M --seed S --out DIR``
simulates ``N`` users x ``SESSIONS_PER_USER`` sessions and writes
``DIR/report.md``, ``DIR/report.json`` and PNG figures with:

- RMS amplitude at rest (between prompts) vs while typing a prompt;
- power spectrum and median frequency while typing;
- correlation between electrodes as a function of their distance on the band;
- inter-key interval and hold-time distributions;
- which keys look most alike across electrodes (per-key average activation
  patterns, correlated), and how many of the most alike pairs share a finger;
- a decodability proxy: a shrinkage-LDA key classifier on per-keystroke
  log band-power features, trained on the same user's other session (personalized)
  vs on all other users (generic). It is not a decoder; it checks the
  structure downstream CTC benchmarks rely on (personalized >> generic,
  both far above chance).

Every figure title and table says the data is simulated.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import signal

from emgkey import __version__
from emgkey.atomic import atomic_write_text
from emgkey.firmware_sim.keyboard import SHIFT, base_key, char_to_key, is_typeable, key_geometry
from emgkey.firmware_sim.physiology import SIMULATOR_VERSION
from emgkey.firmware_sim.simulate import SimulatedSession, simulate_session
from emgkey.lda import lda_stats, lda_weights
from emgkey.profiles import DeviceProfile, get_profile

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]

SIMULATED = "SIMULATED DATA"
SESSIONS_PER_USER = 2  # the personalized proxy trains on one session and tests on the other
# Per-keystroke feature windows, seconds relative to key-down: activation starts ~30-80 ms before the press.
FEATURE_EDGES_S: tuple[float, ...] = (-0.15, -0.1, -0.05, 0.0, 0.05, 0.1)
FEATURE_BAND_EDGES_HZ: tuple[float, ...] = (20.0, 60.0, 150.0, 400.0)  # kept up to 0.45 x the sample rate
PATTERN_WINDOW_S = (-0.05, 0.1)  # the spatial pattern compared between keys
MIN_KEY_COUNT = 4  # a key needs this many presses (per user) to have a pattern / a class
TOP_PAIRS = 10
LDA_SHRINKAGE = 0.3


@dataclass
class KeystrokeFeatures:
    """Per-keystroke features of one session: log mean-square per (window, channel)."""

    user: str
    session: str
    keys: list[str]  # keystroke names (Shift excluded)
    features: F64  # (K, W, B, n_bands * C) log band power, session-centred per (window, band, channel)
    pattern: F64  # (K, n_bands * C) log mean-square in PATTERN_WINDOW_S, session-centred


def _typing_mask(sim: SimulatedSession) -> npt.NDArray[np.bool_]:
    ts = sim.timestamps
    mask = np.zeros(len(ts), dtype=bool)  # (T,)
    for p in sim.prompts:
        a, b = np.searchsorted(ts, [p["start"], p["end"]])
        mask[a:b] = True
    return mask


def _rest_mask(sim: SimulatedSession, margin_s: float = 0.5) -> npt.NDArray[np.bool_]:
    """Samples well away from any prompt (hands resting), so activation tails do not count as rest."""
    ts = sim.timestamps
    mask = np.ones(len(ts), dtype=bool)  # (T,)
    for p in sim.prompts:
        a, b = np.searchsorted(ts, [p["start"] - margin_s, p["end"] + margin_s])
        mask[a:b] = False
    return mask


def feature_bands(fs: float) -> list[tuple[float, float]]:
    """Frequency bands a device with sample rate ``fs`` can see, from ``FEATURE_BAND_EDGES_HZ``."""
    edges = FEATURE_BAND_EDGES_HZ
    bands = [(lo, min(hi, 0.45 * fs)) for lo, hi in itertools.pairwise(edges)]
    return [(lo, hi) for lo, hi in bands if hi - lo >= 15.0]


def keystroke_features(sim: SimulatedSession) -> KeystrokeFeatures:
    """Log band-power features around every non-Shift key press (window sums from cumulative sums).

    Features are per (window, band, channel), like a coarse log-spectrogram:
    what downstream models see, at the resolution each device allows.
    """
    x = sim.emg_uv().reshape(sim.n_samples, -1).astype(np.float64)  # (T, D)
    fs = sim.profile.sample_rate_hz
    bands = feature_bands(fs)
    sq = [signal.sosfiltfilt(signal.butter(4, b, "bandpass", fs=fs, output="sos"), x, axis=0) ** 2 for b in bands]
    csum = np.concatenate(
        [np.zeros((1, len(bands), x.shape[1])), np.cumsum(np.stack(sq, axis=1), axis=0)]
    )  # (T+1, B, D)
    broad = np.concatenate([np.zeros((1, x.shape[1])), np.cumsum(x * x, axis=0)])  # (T + 1, D)
    edges = np.round(np.asarray(FEATURE_EDGES_S) * fs).astype(int)  # (W + 1,)
    pw = np.round(np.asarray(PATTERN_WINDOW_S) * fs).astype(int)  # (2,)
    lo_pad, hi_pad = min(edges[0], pw[0]), max(edges[-1], pw[1])
    keys, feats, pats = [], [], []
    t0 = sim.timestamps[0]
    for k in sim.keystrokes:
        if k["key"] == SHIFT:
            continue
        i = round((k["start"] - t0) * fs)
        if i + lo_pad < 0 or i + hi_pad > sim.n_samples:
            continue
        c = csum[i + edges]  # (W + 1, B, D)
        feats.append(np.log((c[1:] - c[:-1]) / np.diff(edges)[:, None, None] + 1e-3))  # (W, B, D)
        pc = broad[i + pw]  # (2, D)
        pats.append(np.log((pc[1] - pc[0]) / (pw[1] - pw[0]) + 1e-3))  # (D,)
        keys.append(k["key"])
    f = np.asarray(feats)  # (K, W, B, D)
    p = np.asarray(pats)  # (K, D)
    # Session centring removes per-channel contact gain: what a per-session normalisation does downstream.
    if len(keys):
        f -= f.mean(axis=0, keepdims=True)
        p -= p.mean(axis=0, keepdims=True)
    return KeystrokeFeatures(sim.user, sim.session_name, keys, f, p)


# ---- signal statistics -------------------------------------------------------------------------


def signal_stats(sim: SimulatedSession) -> dict[str, Any]:
    """Amplitude, spectrum and spatial correlation of one session."""
    x = sim.emg_uv()  # (T, n_bands, C)
    prof = sim.profile
    fs = prof.sample_rate_hz
    typing, rest = _typing_mask(sim), _rest_mask(sim)
    flat = x.reshape(len(x), -1)  # (T, D)
    rms_typing = float(np.sqrt(np.mean(flat[typing] ** 2))) if typing.any() else math.nan
    rms_rest = float(np.sqrt(np.mean(flat[rest] ** 2))) if rest.any() else math.nan
    nperseg = int(2 ** round(math.log2(fs * 0.128)))  # 128 ms segments at any rate
    f, pxx = signal.welch(flat[typing], fs=fs, nperseg=nperseg, axis=0)  # (F,), (F, D)
    psd = pxx.mean(axis=1)  # (F,)
    cum = np.cumsum(psd)
    median_hz = float(f[np.searchsorted(cum, cum[-1] / 2)])
    c = prof.channels_per_band
    corr_by_dist = np.zeros(c // 2 + 1)  # (C/2 + 1,)
    for b in range(prof.n_bands):
        cc = np.corrcoef(x[typing][:, b, :].T)  # (C, C)
        for d in range(c // 2 + 1):
            corr_by_dist[d] += np.mean([cc[i, (i + d) % c] for i in range(c)]) / prof.n_bands
    return {
        "rms_rest_uv": rms_rest,
        "rms_typing_uv": rms_typing,
        "typing_over_rest": rms_typing / rms_rest,
        "median_frequency_hz": median_hz,
        "psd_freq_hz": f.tolist(),
        "psd_uv2_per_hz": psd.tolist(),
        "corr_by_electrode_distance": corr_by_dist.tolist(),
        "full_scale_fraction": _full_scale_fraction(sim),
    }


def _full_scale_fraction(sim: SimulatedSession) -> float:
    """Fraction of samples at the ADC rails (0 for float devices)."""
    prof = sim.profile
    if prof.sample_format != "int16":
        return 0.0
    rail = 2 ** (prof.adc_bits - 1) - 1
    return float(np.mean(np.abs(sim.emg.astype(np.int32)) >= rail))


def timing_stats(sim: SimulatedSession) -> dict[str, Any]:
    """Inter-key intervals (consecutive non-Shift presses inside a prompt) and hold times."""
    iki: list[float] = []
    hold: list[float] = []
    for p in sim.prompts:
        ks = [k for k in sim.keystrokes if p["start"] <= k["start"] <= p["end"] and k["key"] != SHIFT]
        iki += np.diff([k["start"] for k in ks]).tolist()
        hold += [k["end"] - k["start"] for k in ks]
    return {"iki_s": iki, "hold_s": hold}


# ---- key similarity and decodability -------------------------------------------------------------


def _finger_of(key: str) -> tuple[str, str]:
    g = key_geometry(key)
    return g.hand, g.finger


def key_similarity(features: Sequence[KeystrokeFeatures], top: int = TOP_PAIRS) -> dict[str, Any]:
    """Which keys have the most alike spatial patterns, averaged over users.

    Per user: the mean pattern of each key pressed at least ``MIN_KEY_COUNT``
    times, centred across keys (so the shared "typing" part drops out);
    correlation between keys' patterns; Fisher-z averaged over users for
    keys seen by at least half of them. Pairs of the same physical key
    (``a``/``A``) are skipped.
    """
    by_user: dict[str, dict[str, list[F64]]] = {}
    for kf in features:
        d = by_user.setdefault(kf.user, {})
        for key, pat in zip(kf.keys, kf.pattern):
            d.setdefault(key, []).append(pat)
    z_sum: dict[tuple[str, str], float] = {}
    z_n: dict[tuple[str, str], int] = {}
    for pats in by_user.values():
        keys = sorted(k for k, v in pats.items() if len(v) >= MIN_KEY_COUNT)
        if len(keys) < 3:
            continue
        means = np.stack([np.mean(pats[k], axis=0) for k in keys])  # (K, D)
        means -= means.mean(axis=0, keepdims=True)
        cc = np.corrcoef(means)  # (K, K)
        for i in range(len(keys)):
            for j in range(i + 1, len(keys)):
                if base_key(keys[i]) == base_key(keys[j]):
                    continue
                pair = (keys[i], keys[j])
                z_sum[pair] = z_sum.get(pair, 0.0) + float(np.arctanh(np.clip(cc[i, j], -0.999, 0.999)))
                z_n[pair] = z_n.get(pair, 0) + 1
    need = max(1, len(by_user) // 2)
    pairs = [(p, math.tanh(z_sum[p] / z_n[p])) for p in z_sum if z_n[p] >= need]
    pairs.sort(key=lambda pc: -pc[1])
    same = [_finger_of(a) == _finger_of(b) for (a, b), _ in pairs]
    top_pairs = [
        {
            "keys": [a, b],
            "corr": c,
            "same_finger": _finger_of(a) == _finger_of(b),
            "fingers": [_finger_of(a), _finger_of(b)],
        }
        for (a, b), c in pairs[:top]
    ]
    return {
        "top_pairs": top_pairs,
        "top_same_finger_fraction": float(np.mean(same[:top])) if pairs else math.nan,
        "all_pairs_same_finger_fraction": float(np.mean(same)) if pairs else math.nan,
        "n_pairs": len(pairs),
    }


def _lda_fit(x: F64, y: npt.NDArray[np.int_], n_classes: int, shrinkage: float) -> tuple[F64, F64]:
    """Shrinkage LDA with equal priors: returns (weights (D, K), biases (K,))."""
    return lda_weights(*lda_stats(x, y, n_classes, shrinkage))


def _stack(kfs: Sequence[KeystrokeFeatures], index: dict[str, int]) -> tuple[F64, npt.NDArray[np.int_]]:
    """Flattened features and class ids of the presses of keys in ``index``."""
    xs, ys = [], []
    for kf in kfs:
        for key, f in zip(kf.keys, kf.features):
            if key in index:
                xs.append(f.reshape(-1))
                ys.append(index[key])
    return np.asarray(xs), np.asarray(ys, dtype=int)


def key_id_proxy(features: Sequence[KeystrokeFeatures]) -> dict[str, Any]:
    """Key identification accuracy: personalized (own other session) vs generic (other users), per test user.

    For each user, the classes are the keys pressed at least ``MIN_KEY_COUNT``
    times in their training session; the test set is their last session's
    presses of those keys. Generic models see every session of every other user.
    """
    users = sorted({kf.user for kf in features})
    per_user = []
    confusions: list[tuple[str, str, int]] = []  # the generic classifier's errors between letters (true, predicted, 1)
    for u in users:
        own = [kf for kf in features if kf.user == u]
        if len(own) < 2:
            continue
        train_own, test = own[:-1], own[-1]
        keys_train = [k for kf in train_own for k in kf.keys]
        classes = sorted(k for k in set(keys_train) if keys_train.count(k) >= MIN_KEY_COUNT)
        if len(classes) < 2:
            continue
        index = {k: i for i, k in enumerate(classes)}
        x_test, y_test = _stack([test], index)
        x_own, y_own = _stack(train_own, index)
        x_gen, y_gen = _stack([kf for kf in features if kf.user != u], index)
        if len(y_test) == 0 or any(np.sum(y_gen == k) == 0 for k in range(len(classes))):
            continue
        acc = {}
        for name, (xt, yt) in (("personalized", (x_own, y_own)), ("generic", (x_gen, y_gen))):
            w, b = _lda_fit(xt, yt, len(classes), LDA_SHRINKAGE)
            pred = np.argmax(x_test @ w + b, axis=1)
            acc[name] = float(np.mean(pred == y_test))
            if name == "generic":
                letters = [base_key(c) if len(base_key(c)) == 1 and base_key(c).isalpha() else None for c in classes]
                confusions += [(letters[t], letters[q], 1) for t, q in zip(y_test, pred) if letters[t] and letters[q]]
        counts = np.bincount(y_test, minlength=len(classes))
        per_user.append(
            {
                "user": u,
                "n_classes": len(classes),
                "n_test": len(y_test),
                "chance": float(counts.max() / counts.sum()),
                **acc,
            }
        )
    summary = {
        k: float(np.mean([p[k] for p in per_user])) if per_user else math.nan
        for k in ("personalized", "generic", "chance")
    }
    return {"per_user": per_user, "mean": summary, "generic_confusions": confusion_summary(confusions)}


def _finger(ch: str) -> str | None:
    """ "hand finger" of the key that types character ``ch``; None for what no key types."""
    if not is_typeable(ch):
        return None
    g = key_geometry(char_to_key(ch))
    return f"{g.hand} {g.finger}"


def _hand(ch: str) -> str | None:
    f = _finger(ch)
    return f.split()[0] if f else None


def confusion_summary(substitutions: Sequence[Sequence[Any]], top: int = TOP_PAIRS) -> dict[str, Any]:
    """Top unordered confused key pairs (case folded, space and non-keys left out) and how many share a finger.

    ``substitutions``: (true character, predicted character, count). Used for the CTC models' substitutions
    (``benchmarks/train_bench.py``) and for the generic key-id proxy's errors. The real-data fact this
    checks: decoders mostly confuse keys typed by the same finger.
    """
    pairs: dict[tuple[str, str], int] = {}
    for a, b, n in substitutions:
        a, b = str(a).lower(), str(b).lower()
        if a == b or " " in (a, b) or _finger(a) is None or _finger(b) is None:
            continue
        key = (min(a, b), max(a, b))
        pairs[key] = pairs.get(key, 0) + int(n)
    ranked = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
    rows = [
        {
            "keys": k,
            "count": n,
            "fingers": [_finger(k[0]), _finger(k[1])],
            "same_finger": _finger(k[0]) == _finger(k[1]),
        }
        for k, n in ranked[:top]
    ]
    letters = "abcdefghijklmnopqrstuvwxyz"
    all_pairs = [(a, b) for i, a in enumerate(letters) for b in letters[i + 1 :]]
    chance = sum(_finger(a) == _finger(b) for a, b in all_pairs) / len(all_pairs)
    top_keys = [k for k, _ in ranked[:top]]
    frac = sum(_finger(a) == _finger(b) for a, b in top_keys) / len(top_keys) if top_keys else float("nan")
    hand = sum(_hand(a) == _hand(b) for a, b in top_keys) / len(top_keys) if top_keys else float("nan")
    chance_hand = sum(_hand(a) == _hand(b) for a, b in all_pairs) / len(all_pairs)
    total = sum(pairs.values())
    return {
        "top": rows,
        "same_finger_fraction": frac,
        "chance_fraction_letters": chance,
        "same_hand_fraction": hand,
        "chance_same_hand_letters": chance_hand,
        "errors_same_finger_fraction": (
            sum(n for (a, b), n in pairs.items() if _finger(a) == _finger(b)) / total if total else float("nan")
        ),
        "n_errors": int(total),
    }


# ---- the report ----------------------------------------------------------------------------------


@dataclass
class ReportConfig:
    profile: DeviceProfile
    users: int = 4
    minutes: float = 1.0
    seed: int = 0
    sessions_per_user: int = SESSIONS_PER_USER

    def __post_init__(self) -> None:
        assert self.users >= 1, "need at least one user"
        assert self.minutes > 0, "minutes must be positive"
        assert self.sessions_per_user >= 1, "need at least one session per user"


def build_report(cfg: ReportConfig) -> dict[str, Any]:
    """Simulate and analyse; returns the JSON-able report (arrays as lists)."""
    sessions: list[dict[str, Any]] = []
    features: list[KeystrokeFeatures] = []
    iki: list[float] = []
    hold: list[float] = []
    psd_f: list[float] = []
    psds = []
    corr = []
    for u in range(cfg.users):
        for s in range(cfg.sessions_per_user):
            sim = simulate_session(cfg.profile, u, s, cfg.minutes, cfg.seed)
            st = signal_stats(sim)
            tm = timing_stats(sim)
            iki += tm["iki_s"]
            hold += tm["hold_s"]
            psd_f = st.pop("psd_freq_hz")
            psds.append(st.pop("psd_uv2_per_hz"))
            corr.append(st["corr_by_electrode_distance"])
            sessions.append({"session": sim.session_name, "user": sim.user, "n_keystrokes": len(sim.keystrokes), **st})
            features.append(keystroke_features(sim))
            log.info("simulated %s", sim.session_name)

    def summary(key: str) -> dict[str, float]:
        v = np.array([s[key] for s in sessions], dtype=float)
        return {"mean": float(np.nanmean(v)), "min": float(np.nanmin(v)), "max": float(np.nanmax(v))}

    iki_a, hold_a = np.asarray(iki), np.asarray(hold)
    return {
        "title": f"emgkey simulator realism report ({SIMULATED})",
        "simulated": True,
        "emgkey_version": __version__,
        "simulator_version": SIMULATOR_VERSION,
        "profile": cfg.profile.to_dict(),
        "config": {
            "users": cfg.users,
            "sessions_per_user": cfg.sessions_per_user,
            "minutes": cfg.minutes,
            "seed": cfg.seed,
        },
        "amplitude": {k: summary(k) for k in ("rms_rest_uv", "rms_typing_uv", "typing_over_rest")},
        "median_frequency_hz": summary("median_frequency_hz"),
        "full_scale_fraction": summary("full_scale_fraction"),
        "corr_by_electrode_distance": np.mean(corr, axis=0).tolist(),
        "psd": {"freq_hz": psd_f, "uv2_per_hz": np.mean(psds, axis=0).tolist()},
        "timing": {
            "iki_median_s": float(np.median(iki_a)),
            "iki_iqr_s": [float(np.percentile(iki_a, 25)), float(np.percentile(iki_a, 75))],
            "hold_median_s": float(np.median(hold_a)),
            "hold_iqr_s": [float(np.percentile(hold_a, 25)), float(np.percentile(hold_a, 75))],
            "overlap_fraction": float(np.mean(iki_a < np.median(hold_a))),
            "iki_s": iki_a.tolist(),
            "hold_s": hold_a.tolist(),
        },
        "key_similarity": key_similarity(features),
        "key_id_proxy": key_id_proxy(features),
        "sessions": sessions,
    }


def _plots(report: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = report["profile"]["name"]
    paths = []

    def save(fig: Any, stem: str) -> None:
        path = out / f"{stem}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

    fig, ax = plt.subplots(figsize=(6, 4))
    f, p = np.asarray(report["psd"]["freq_hz"]), np.asarray(report["psd"]["uv2_per_hz"])
    ax.semilogy(f[1:], p[1:])
    ax.axvline(report["median_frequency_hz"]["mean"], ls="--", c="k", label="median frequency")
    ax.set(xlabel="Hz", ylabel="µV²/Hz", title=f"{SIMULATED}: PSD while typing ({name})")
    ax.legend()
    save(fig, "psd")

    fig, ax = plt.subplots(figsize=(6, 4))
    c = report["corr_by_electrode_distance"]
    ax.plot(range(len(c)), c, "o-")
    ax.set(
        xlabel="electrode distance on the band (electrodes)",
        ylabel="mean correlation",
        title=f"{SIMULATED}: spatial correlation ({name})",
    )
    save(fig, "spatial_correlation")

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    axes[0].hist(np.asarray(report["timing"]["iki_s"]) * 1e3, bins=np.arange(0, 1500, 25))
    axes[0].set(xlabel="inter-key interval (ms)", ylabel="count", title=f"{SIMULATED}: IKI")
    axes[1].hist(np.asarray(report["timing"]["hold_s"]) * 1e3, bins=np.arange(0, 300, 5))
    axes[1].set(xlabel="hold time (ms)", title=f"{SIMULATED}: hold time")
    save(fig, "timing")

    fig, ax = plt.subplots(figsize=(6, 4))
    rest = [s["rms_rest_uv"] for s in report["sessions"]]
    typ = [s["rms_typing_uv"] for s in report["sessions"]]
    ax.boxplot([rest, typ], tick_labels=["rest", "typing"])
    ax.set(ylabel="RMS (µV)", title=f"{SIMULATED}: amplitude per session ({name})")
    save(fig, "amplitude")
    return paths


def _markdown(report: dict[str, Any], figures: Sequence[Path]) -> str:
    amp, tm, ks, kp = report["amplitude"], report["timing"], report["key_similarity"], report["key_id_proxy"]
    cfg = report["config"]
    lines = [
        f"# {report['title']}",
        "",
        f"**{SIMULATED}** from `emgkey sim` (emgkey {report['emgkey_version']}, simulator version "
        f"{report.get('simulator_version', 1)}), "
        f"profile `{report['profile']['name']}`, "
        f"{cfg['users']} users x {cfg['sessions_per_user']} sessions x {cfg['minutes']} min, seed {cfg['seed']}. "
        "Nothing here was recorded from a person.",
        "",
        f"## Amplitude and spectrum ({SIMULATED})",
        "",
        "| statistic | mean | min | max |",
        "|---|---|---|---|",
    ]
    for key, label in (
        ("rms_rest_uv", "RMS at rest (µV)"),
        ("rms_typing_uv", "RMS while typing (µV)"),
        ("typing_over_rest", "typing / rest"),
    ):
        a = amp[key]
        lines.append(f"| {label} | {a['mean']:.2f} | {a['min']:.2f} | {a['max']:.2f} |")
    mf = report["median_frequency_hz"]
    lines.append(f"| median frequency (Hz) | {mf['mean']:.1f} | {mf['min']:.1f} | {mf['max']:.1f} |")
    fs = report["full_scale_fraction"]
    lines.append(f"| fraction of samples at ADC full scale | {fs['mean']:.2e} | {fs['min']:.2e} | {fs['max']:.2e} |")
    corr = report["corr_by_electrode_distance"]
    lines += [
        "",
        f"## Spatial correlation while typing ({SIMULATED})",
        "",
        "| electrode distance | " + " | ".join(str(d) for d in range(len(corr))) + " |",
        "|---|" + "---|" * len(corr),
        "| mean correlation | " + " | ".join(f"{c:.2f}" for c in corr) + " |",
        "",
        f"## Typing timing ({SIMULATED})",
        "",
        f"- inter-key interval: median {tm['iki_median_s'] * 1e3:.0f} ms, IQR "
        f"{tm['iki_iqr_s'][0] * 1e3:.0f}-{tm['iki_iqr_s'][1] * 1e3:.0f} ms ({len(tm['iki_s'])} intervals)",
        f"- hold time: median {tm['hold_median_s'] * 1e3:.0f} ms, IQR "
        f"{tm['hold_iqr_s'][0] * 1e3:.0f}-{tm['hold_iqr_s'][1] * 1e3:.0f} ms",
        f"- intervals shorter than the median hold (key overlap): {tm['overlap_fraction']:.1%}",
        "",
        f"## Most alike keys across electrodes ({SIMULATED})",
        "",
        f"Top {len(ks['top_pairs'])} of {ks['n_pairs']} key pairs by correlation of per-key activation patterns: "
        f"**{ks['top_same_finger_fraction']:.0%} same finger** (vs {ks['all_pairs_same_finger_fraction']:.0%} "
        "of all pairs).",
        "",
        "| keys | correlation | same finger | fingers |",
        "|---|---|---|---|",
    ]
    for p in ks["top_pairs"]:
        fingers = " / ".join(f"{h} {f}" for h, f in p["fingers"])
        lines.append(
            f"| `{p['keys'][0]}` `{p['keys'][1]}` | {p['corr']:.2f} | "
            f"{'yes' if p['same_finger'] else 'no'} | {fingers} |"
        )
    m = kp["mean"]
    lines += [
        "",
        f"## Decodability proxy ({SIMULATED})",
        "",
        "Shrinkage-LDA key classifier on per-keystroke log band-power features (windows "
        f"{', '.join(f'{e * 1e3:+.0f}' for e in FEATURE_EDGES_S)} ms around key-down; bands "
        f"{', '.join(f'{lo:.0f}-{hi:.0f}' for lo, hi in feature_bands(report['profile']['sample_rate_hz']))} Hz, "
        "what the device's sample rate allows). Personalized: trained on the user's other session(s); generic: "
        "trained on all other users. Key timing is given, so this is not a decoder, only a structure check.",
        "",
        "| user | classes | test presses | chance | personalized | generic |",
        "|---|---|---|---|---|---|",
    ]
    for p in kp["per_user"]:
        lines.append(
            f"| {p['user']} | {p['n_classes']} | {p['n_test']} | {p['chance']:.2f} | {p['personalized']:.2f} | "
            f"{p['generic']:.2f} |"
        )
    lines.append(f"| **mean** | | | {m['chance']:.2f} | {m['personalized']:.2f} | {m['generic']:.2f} |")
    gc = kp.get("generic_confusions")
    if gc and gc["top"]:
        pairs = ", ".join(
            f"{p['keys'][0]}/{p['keys'][1]} x{p['count']}{'*' if p['same_finger'] else ''}" for p in gc["top"]
        )
        lines += [
            "",
            f"Letter pairs the generic classifier confuses most (* same finger): {pairs}. "
            f"**{gc['same_finger_fraction']:.0%} of the top {len(gc['top'])} same finger**, "
            f"{gc['same_hand_fraction']:.0%} same hand; {gc['errors_same_finger_fraction']:.0%} of all "
            f"{gc['n_errors']} letter confusions same finger.",
        ]
    lines += ["", f"## Figures ({SIMULATED})", ""]
    lines += [f"![{p.stem}]({p.name})" for p in figures]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write report.json, the PNGs and report.md into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = _plots(report, out)
    paths = [atomic_write_text(out / "report.json", json.dumps(report, indent=1) + "\n")]
    paths.append(atomic_write_text(out / "report.md", _markdown(report, figures)))
    return paths + figures


def run_report_cli(args: argparse.Namespace) -> int:
    cfg = ReportConfig(profile=get_profile(args.profile), users=args.users, minutes=args.minutes, seed=args.seed)
    report = build_report(cfg)
    paths = write_report(report, args.out)
    kp, ks = report["key_id_proxy"]["mean"], report["key_similarity"]
    print(f"{SIMULATED} realism report for {cfg.profile.name}: {paths[1]}")
    print(
        f"  RMS rest {report['amplitude']['rms_rest_uv']['mean']:.1f} µV, typing "
        f"{report['amplitude']['rms_typing_uv']['mean']:.1f} µV; median frequency "
        f"{report['median_frequency_hz']['mean']:.0f} Hz; top key pairs same finger "
        f"{ks['top_same_finger_fraction']:.0%}; key id personalized {kp['personalized']:.2f} vs generic "
        f"{kp['generic']:.2f} (chance {kp['chance']:.2f})"
    )
    return 0
