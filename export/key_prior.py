"""``emgkey export keyprior``: the population's key classes, added to a bundle for key-prototype rescoring.

The bundle's own model (fp32, the same ``Scorer`` calibration uses; torch is not needed) force-aligns the
transcripts of training sessions; the key vectors at the aligned frames (``edge_runtime.keyproto``) give the
class means and shared covariance that a user's calibration later moves towards the user. The prior is written
as ``keyprior.npz`` and named, with its sha256, in the manifest's ``model.key_prior``; the manifest is rewritten
last and atomically, so a bundle is either without a prior or with a complete one. The model files do not
change, so the model fingerprint and the users' calibration profiles stay valid.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from emgkey.bundle import Bundle, load_bundle, sha256_file, write_manifest
from emgkey.edge_runtime.calib_data import Segment
from emgkey.edge_runtime.calibrate import Deployed, Scorer
from emgkey.edge_runtime.keyproto import KeyFeatureSpec, KeyPrior, KeyProtoError, ctc_peaks, key_vectors
from emgkey.features import compute_features
from emgkey.labels import LabelData
from emgkey.session import SessionFile
from emgkey.splits import load_split, session_path

log = logging.getLogger(__name__)

PRIOR_NAME = "keyprior.npz"


def fit_key_prior(
    bundle: Bundle,
    data_root: str | Path,
    split_file: str | Path,
    *,
    sessions: int = 16,
    shrinkage: float = 0.3,
    min_count: int = 20,
    spec: KeyFeatureSpec | None = None,
    threads: int = 1,
    align_bands: bool = True,
) -> KeyPrior:
    """Up to ``sessions`` training sessions of the split, spread evenly over its list; ``align_bands``: roll the
    sessions' bands onto one electrode frame first (``edge_runtime.keyalign``; on simulated users it took 0.5-5.8
    points more of the generic CER away, every student and strategy, docs/calibration.md)."""
    from tqdm import tqdm

    m = bundle.manifest
    spec = spec or KeyFeatureSpec()
    prof = m.profile
    frame_shape = (prof.n_bands, prof.channels_per_band, m.features.n_freq)
    refs = list(load_split(split_file)["train"])
    if not refs:
        raise KeyProtoError(f"{split_file} lists no training sessions")
    step = max(1, len(refs) // sessions)
    refs = refs[::step][:sessions]
    norm = Deployed(bundle, None, "base").input_map()
    xs, ys, names = [], [], []
    skipped = 0
    for ref in tqdm(refs, desc="key prior (align training sessions)", unit="session"):
        with SessionFile(session_path(data_root, ref)) as sf:
            if sf.profile.name != prof.name:
                raise KeyProtoError(f"{ref.session} is a {sf.profile.name} session, the bundle is for {prof.name}")
            emg = sf.read()
            labels = LabelData.from_keystrokes(sf.keystrokes)
        feats = compute_features(emg, m.features)  # (T, n_bands, C, n_freq)
        targets = labels.labels.astype(np.int64)
        seg = Segment(labels.label_str, 0, len(feats), targets)
        lp = Scorer(bundle, feats, use="auto", precision="fp32", threads=threads).emissions(norm, seg)
        peaks = ctc_peaks(lp, targets)
        ok = peaks >= 0
        if not ok.any():
            skipped += 1
            continue
        xs.append(key_vectors(norm(feats), peaks[ok], spec, m.features.frame_rate_hz))
        ys.append(targets[ok])
        names.append(ref.session)
    if not xs:
        raise KeyProtoError("no training session could be aligned by the bundle's model")
    info = {"sessions": names, "unaligned_sessions": skipped, "split": str(split_file), "data": str(data_root)}
    return KeyPrior.fit(
        xs,
        ys,
        spec,
        m.features.frame_rate_hz,
        frame_shape,
        shrinkage=shrinkage,
        min_count=min_count,
        info=info,
        align_bands=align_bands,
    )


def add_key_prior(bundle_dir: str | Path, prior: KeyPrior) -> dict[str, Any]:
    """Write ``keyprior.npz`` into the bundle and name it in the manifest (atomically, manifest last)."""
    bundle = load_bundle(bundle_dir)
    m = bundle.manifest
    prof = m.profile
    frame_shape = (prof.n_bands, prof.channels_per_band, m.features.n_freq)
    if tuple(prior.frame_shape) != frame_shape or abs(prior.frame_rate_hz - m.features.frame_rate_hz) > 1e-6:
        raise KeyProtoError(f"the prior is for frames {prior.frame_shape}, the bundle's model reads {frame_shape}")
    path = prior.save(bundle.root / PRIOR_NAME)
    entry = {
        "path": PRIOR_NAME,
        "sha256": sha256_file(path),
        "classes": len(prior.classes),
        "dim": int(prior.means.shape[1]),
        "presses": prior.info.get("presses"),
        "sessions": len(prior.info.get("sessions", [])),
        "written_unix": round(time.time(), 1),
    }
    m.model["key_prior"] = entry
    write_manifest(bundle.root, m)
    log.info("key prior (%d classes, %d-dim) added to %s", entry["classes"], entry["dim"], bundle.root)
    return entry
