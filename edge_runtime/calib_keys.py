"""Calibration step 3 (torch-free): the user's key prototypes, on top of whichever strategy won.

With a key prior in the bundle (``emgkey export keyprior``), the calibration prompts are force-aligned by the
chosen model (its bundle and input map, the deployed streaming engine), the key vectors at the aligned frames
(read through strategy 1's input map, also when strategy 2 won: its adapter is trained for the CTC model, and
on users 2000-2007 key vectors through it named keys worse) move the prior's class means towards the user
(``keyproto.fit_profile``), and the result is tried on the
held-out prompts: greedy CER with and without rescoring, on the same emissions. Rescoring is *enabled* in the
profile unless it adds more than one error on the held-out prompts (``keys_help``), judged on the emissions of a
model the held-out slice did not tune (``gate_model``: strategy 1's, when strategy 2 early-stopped on that slice
and its greedy score there is optimistic; users 2000-2007 and 1000-1007: the only users whose keys the gate
turned off were fine-tuned ones, and on the evaluation data the keys would have helped each). The stored ``keys.npz`` is
then refitted on every prompt (fit and held-out): the decision is made on unseen prompts, the final means use
the whole minute.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from emgkey import charset
from emgkey.bundle import Bundle
from emgkey.decoding import greedy_decode
from emgkey.edge_runtime.calib_data import CalibrationSet, Segment
from emgkey.edge_runtime.calibrate import Deployed, Scorer
from emgkey.edge_runtime.keyproto import (
    KeyFitConfig,
    KeyPrior,
    KeyProfile,
    KeyProtoError,
    ctc_peaks,
    fit_profile,
    gap_centres,
    key_vectors,
    rescore_offline,
)
from emgkey.metrics import EditCounts, edit_counts


@dataclass
class KeyCalibration:
    profile: KeyProfile  # fitted on every prompt
    enabled: bool
    heldout: dict[str, float]  # {"cer_without", "cer_with", "keys"}: the chosen model's held-out prompts
    seconds: float
    gate: dict[str, float] | None = None  # the same on the gate model's emissions, when it is another model

    def manifest_entry(self, path: str, sha256: str) -> dict[str, Any]:
        entry = {
            "path": path,
            "sha256": sha256,
            "enabled": self.enabled,
            "heldout": self.heldout,
            "seconds": round(self.seconds, 3),
            "presses": self.profile.info.get("presses"),
            "classes_seen": self.profile.info.get("classes_seen"),
        }
        if self.gate is not None:
            entry["gate"] = self.gate
        return entry


Emitted = Sequence[tuple[Segment, np.ndarray]]  # each prompt with its log-probs: emission j is frame start + j


def _emitted(scorer: Scorer, norm: Any, segments: Sequence[Segment]) -> list[tuple[Segment, np.ndarray]]:
    return [(seg, scorer.emissions(norm, seg)) for seg in segments]


def _aligned(
    items: Emitted, frames: np.ndarray, prior: KeyPrior, min_gap: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Key vectors (n, D) and labels (n,) at the aligned presses, and (m, D) half-way between them."""
    d = prior.means.shape[1]
    xs, ys, gs = [np.zeros((0, d))], [np.zeros(0, np.int64)], [np.zeros((0, d))]
    for seg, lp in items:
        peaks = ctc_peaks(lp, seg.targets)
        ok = peaks >= 0
        if ok.any():
            at = peaks[ok] + seg.start
            xs.append(key_vectors(frames, at, prior.spec, prior.frame_rate_hz))
            ys.append(seg.targets[ok])
            gs.append(key_vectors(frames, gap_centres(at, min_gap), prior.spec, prior.frame_rate_hz))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(gs)


def _heldout(items: Emitted, frames: np.ndarray, profile: KeyProfile) -> dict[str, Any]:
    without, with_ = EditCounts(), EditCounts()
    lookback = max(0, -profile.spec.edges(profile.frame_rate_hz)[0])
    lookahead = profile.spec.lookahead(profile.frame_rate_hz)
    for seg, lp in items:
        a = max(0, seg.start - lookback)
        b = min(len(frames), seg.stop + lookahead)
        target = charset.labels_to_str([int(t) for t in seg.targets])
        without = without + edit_counts(charset.labels_to_str(greedy_decode(lp)), target)
        # emission j describes frame seg.start + j = observed frame j + (seg.start - a): a "delay" of a - seg.start
        labels = rescore_offline(lp, frames[a:b], profile, delay=a - seg.start)
        with_ = with_ + edit_counts(charset.labels_to_str(labels), target)
    return {
        "cer_without": round(without.cer, 3),
        "cer_with": round(with_.cer, 3),
        "keys": without.target_len,
        "errors_without": without.errors,
        "errors_with": with_.errors,
    }


def _key_map(own: Bundle, model_map: Any, key_normalization: dict[str, Any] | None) -> Any:
    """The input map key vectors read the features through: ``key_normalization``'s, else the model's."""
    return model_map if key_normalization is None else Deployed(own, key_normalization, "key map").input_map()


def keys_help(heldout: dict[str, Any]) -> bool:
    """Enable rescoring unless it adds more than one error on the held-out prompts: 20-50 keys there, so one
    error is 2-5 CER points of noise (users 2000-2007: the stricter "no rise at all" turned off keys that
    helped on the evaluation data)."""
    return int(heldout["errors_with"]) <= int(heldout["errors_without"]) + 1


def heldout_cer_with_keys(
    own: Bundle,
    normalization: dict[str, Any] | None,
    cal: CalibrationSet,
    profile: KeyProfile,
    *,
    precision: str = "int8",
    format: str = "onnx",
    threads: int = 1,
) -> float:
    """Greedy CER with key rescoring on the held-out prompts, through the deployed streaming engine."""
    norm = Deployed(own, normalization, "keys").input_map()
    key_map = _key_map(own, norm, profile.input_map)
    scorer = Scorer(own, cal.features, use="streaming", precision=precision, format=format, threads=threads)
    return float(_heldout(_emitted(scorer, norm, cal.heldout), key_map(cal.features), profile)["cer_with"])


def calibrate_keys(
    own: Bundle,
    normalization: dict[str, Any] | None,
    cal: CalibrationSet,
    prior: KeyPrior,
    cfg: KeyFitConfig | None = None,
    *,
    precision: str = "int8",
    format: str = "onnx",
    threads: int = 1,
    key_normalization: dict[str, Any] | None = None,
    gate_model: tuple[Bundle, dict[str, Any] | None] | None = None,
) -> KeyCalibration:
    """``own``/``normalization``: the model the profile will run (the chosen strategy's); ``key_normalization``:
    the input map the key vectors read the features through (manifest form; None: ``normalization``);
    ``gate_model``: (bundle, input map) whose held-out emissions decide ``enabled`` (None: the chosen model)."""
    cfg = cfg or KeyFitConfig()
    t0 = time.perf_counter()
    model = Deployed(own, normalization, "chosen")
    norm = model.input_map()
    key_map = _key_map(own, norm, key_normalization)
    key_map_manifest = key_map.to_manifest()
    m = own.manifest
    frame_shape = (m.profile.n_bands, m.profile.channels_per_band, m.features.n_freq)
    if tuple(prior.frame_shape) != frame_shape:
        raise KeyProtoError(f"the key prior is for frames {prior.frame_shape}, the model reads {frame_shape}")
    frames = key_map(cal.features)  # (F, n_bands, C, n_freq): what the key vectors read
    scorer = Scorer(own, cal.features, use="streaming", precision=precision, format=format, threads=threads)
    fit, held = _emitted(scorer, norm, cal.fit), _emitted(scorer, norm, cal.heldout)  # each prompt runs once
    min_gap = max(1, round(cfg.min_gap_ms * prior.frame_rate_hz / 1000.0))
    x_fit, y_fit, g_fit = _aligned(fit, frames, prior, min_gap)
    trial = fit_profile(prior, x_fit, y_fit, cfg, g_fit, key_map_manifest)
    heldout = _heldout(held, frames, trial)
    gate = None
    if gate_model is not None:
        g_bundle, g_norm = gate_model
        g_map = Deployed(g_bundle, g_norm, "gate").input_map()
        g_scorer = Scorer(g_bundle, cal.features, use="streaming", precision=precision, format=format, threads=threads)
        gate = _heldout(_emitted(g_scorer, g_map, cal.heldout), frames, trial)
    x_ho, y_ho, g_ho = _aligned(held, frames, prior, min_gap)
    final = fit_profile(
        prior,
        np.concatenate([x_fit, x_ho]),
        np.concatenate([y_fit, y_ho]),
        cfg,
        np.concatenate([g_fit, g_ho]),
        key_map_manifest,
    )
    enabled = keys_help(heldout if gate is None else gate)
    return KeyCalibration(final, enabled, heldout, time.perf_counter() - t0, gate)
