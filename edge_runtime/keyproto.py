"""Key-prototype rescoring: a per-user second opinion on every character the CTC model emits (numpy only).

A generic CTC model usually *finds* a stranger's keystrokes (where a character is) but often names the wrong
key: on the simulator most of its errors after calibration are substitutions. A minute of prompted typing
holds, for most keys, a few presses of the user's own; their spectra tell this user's keys apart better than
the population's do. This module turns that into a cheap decoding step on top of greedy CTC:

1. **Key vectors** (``KeyFeatureSpec``, ``key_vectors``): around a keystroke's emission frame, the mean of the
   log-spectrogram frames in a few time windows (-200..+40 ms by default) and frequency-bin groups, per
   electrode: (windows x groups x n_bands x C) numbers. A profile reads the device features through its own
   ``input_map`` (strategy 1's rotation and levels, format 3; formats 1-2: the model's input frames).
2. **Prior** (``KeyPrior``, in the bundle, written by ``emgkey export keyprior`` from training users): class
   means of the characters pressed often enough, the shrunk covariance of presses around each training
   session's own class means (``cov``, W) and the covariance of those session means around the population's
   (``between``, B; ``emgkey.lda.within_between``), of vectors taken at the frames where the bundle's own
   model aligns the training transcripts (``ctc_peaks``: Viterbi forced alignment, the same as on the device).
3. **User profile** (``KeyProfile``, ``fit_profile``): the calibration prompts aligned by the deployed model
   (no keylogger: the prompt is the target, and the alignment tolerates the odd typo); each class mean moved
   towards the user's ``n`` presses by the two-covariance MAP rule ``mean + B (B + W / n)^-1 (user_mean -
   mean)`` (format-1 priors, without B: ``(n * user_mean + tau * mean) / (n + tau)``); the vectors are centred
   by the user's mean keystroke vector. On simulated users 2000-2007 (armband8 TCN, strategy 1) the
   two-covariance rule named 65 % of held-out presses right from key vectors alone, tau MAP 56 %.
4. **Rescoring** (``KeyRescoringDecoder``): greedy CTC, but each emitted run's label is re-chosen among the
   prior's classes by ``log p_ctc(k | peak frame) + lam * log p_lda(k | key vector)`` once the frames its
   window needs have arrived (``lookahead_frames`` after the run's peak). Characters outside the prior's
   classes (rare keys, space, backspace...) keep the model's label. The centre of the vectors follows the
   stream: the calibration centre with ``centre_weight`` pseudo-presses, updated with every rescored press.
5. **No-press class and blank offset** (profile format 2): greedy picks labels after taking ``blank_offset``
   nats off the blank, so fainter keystrokes become runs too; the profile's extra class with label blank (the
   mean key vector half-way between the user's aligned calibration presses, ``gap_centres``) competes with
   the keys through the blank's log-prob, and a run it wins is dropped. On users 2000-2007 the two together
   cut deletions more than they added insertions and substitutions (docs/calibration.md).

6. **Keys that learn while the user types** (opt-in: ``adapt=True``, ``emgkey run --learn-keys``; profile format
   3, ``keyadapt``): each press the decoder names with a combined posterior of at least ``adapt_min_posterior``
   adds ``adapt_weight`` presses to that key's sums, and the key's mean and LDA column are re-derived by the
   rule of step 3 (per stream; the file is not changed). Off by default: on simulated users it gained on some
   models and lost on others (docs/calibration.md).

Partial results show the model's own labels for runs still waiting for their look-ahead; ``finish=True`` (the
end of a segment) rescores them with what there is.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from emgkey import charset
from emgkey.atomic import atomic_write_bytes
from emgkey.bundle import Bundle, sha256_file
from emgkey.edge_runtime.keyadapt import KeyAdaptation, generalized_basis
from emgkey.edge_runtime.keyalign import align_sessions, class_means, estimate_roll, inverse, max_roll, roll_index
from emgkey.errors import EmgkeyError
from emgkey.lda import lda_stats, lda_weights, shrunk, within_between

PRIOR_FORMAT = "emgkey-keyprior"
PROFILE_FORMAT = "emgkey-keyprofile"
FORMAT_VERSION = 3  # key profiles; 2 added ``blank_offset`` and the no-press class, 3 ``input_map`` and ``adapt``
_ADAPT_ARRAYS = ("prior_means", "basis", "eig", "sums", "counts")  # KeyAdaptation's arrays, as adapt_<name>
# 2 added ``between`` (a prior without it is written, and read, as version 1); 3: band-aligned
# (``info["band_aligned"]``): its means are in a common electrode frame, which a reader that does not roll a user's
# presses onto them would silently misuse, so such a prior says 3 and older readers refuse it
PRIOR_FORMAT_VERSION = 3


class KeyProtoError(EmgkeyError, ValueError):
    """A key prior or key profile is missing, malformed, or for another model or front end."""


# ---------------------------------------------------------------------------------------------------------------------
# Key vectors


@dataclass(frozen=True)
class KeyFeatureSpec:
    """Which frames and bins make a keystroke's vector (frame offsets scale with the frame rate)."""

    edges_ms: tuple[float, ...] = (-200.0, -140.0, -80.0, -20.0, 40.0)  # window edges around the emission frame
    bin_groups: tuple[tuple[int, int], ...] = ((0, 2), (2, 5), (5, 0))  # [a, b) bins; b == 0: to the last bin

    def __post_init__(self) -> None:
        assert len(self.edges_ms) >= 2 and list(self.edges_ms) == sorted(self.edges_ms), "edges must increase"
        assert self.bin_groups, "at least one bin group"

    def edges(self, frame_rate_hz: float) -> tuple[int, ...]:
        """Window edges in frames (rounded half up): 50 fps -> (-10, -7, -4, -1, 2)."""
        return tuple(math.floor(ms * frame_rate_hz / 1000.0 + 0.5) for ms in self.edges_ms)

    def lookahead(self, frame_rate_hz: float) -> int:
        """Frames after the emission frame that its vector reads."""
        return max(0, self.edges(frame_rate_hz)[-1])

    def groups(self, n_freq: int) -> list[tuple[int, int]]:
        out = [(a, b if b > 0 else n_freq) for a, b in self.bin_groups]
        for a, b in out:
            if not 0 <= a < b <= n_freq:
                raise KeyProtoError(f"bin group [{a}, {b}) does not fit {n_freq} frequency bins")
        return out

    def dim(self, frame_shape: tuple[int, ...]) -> int:
        n_bands, c, _ = frame_shape
        return (len(self.edges_ms) - 1) * len(self.bin_groups) * n_bands * c

    def to_dict(self) -> dict[str, Any]:
        return {"edges_ms": list(self.edges_ms), "bin_groups": [list(g) for g in self.bin_groups]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> KeyFeatureSpec:
        return cls(tuple(float(x) for x in d["edges_ms"]), tuple((int(a), int(b)) for a, b in d["bin_groups"]))


def key_vectors(frames: np.ndarray, centres: np.ndarray, spec: KeyFeatureSpec, frame_rate_hz: float) -> np.ndarray:
    """frames (T, n_bands, C, n_freq), centres (n,) frame indices -> (n, D) float64 key vectors.

    Window ``i`` is frames ``[c + e_i, c + e_{i+1})`` clipped to ``[0, T)`` (at least frame 0); a window with no
    frame left contributes zeros.
    """
    assert frames.ndim == 4, f"frames (T, n_bands, C, n_freq) expected, got {frames.shape}"
    T = len(frames)
    groups = spec.groups(frames.shape[-1])
    g = np.stack([frames[..., a:b].mean(axis=-1) for a, b in groups], axis=1).astype(np.float64)  # (T, G, nb, C)
    cum = np.concatenate([np.zeros((1, *g.shape[1:])), np.cumsum(g, axis=0)])  # (T + 1, G, nb, C)
    centres = np.asarray(centres, dtype=np.int64)
    edges = spec.edges(frame_rate_hz)
    parts = []
    for lo_e, hi_e in itertools.pairwise(edges):
        lo = np.clip(centres + lo_e, 0, T)
        hi = np.clip(np.maximum(centres + hi_e, 1), 0, T)
        n = np.maximum(hi - lo, 0)
        s = cum[np.maximum(hi, lo)] - cum[lo]  # (n, G, nb, C)
        parts.append(s / np.maximum(n, 1)[:, None, None, None])
    return np.concatenate([p.reshape(len(centres), -1) for p in parts], axis=1)  # (n, W * G * nb * C)


# ---------------------------------------------------------------------------------------------------------------------
# Alignment and greedy runs


def ctc_peaks(log_probs: np.ndarray, targets: np.ndarray, blank: int = charset.BLANK) -> np.ndarray:
    """Frame of each target's emission peak on the best (Viterbi) CTC path; -1 where there is no path.

    log_probs (T, C), targets (L,) -> (L,) int64.
    """
    lp = np.asarray(log_probs, dtype=np.float64)
    y = np.asarray(targets, dtype=np.int64)
    T, L = len(lp), len(y)
    if L == 0:
        return np.zeros(0, np.int64)
    S = 2 * L + 1
    z = np.full(S, blank, np.int64)
    z[1::2] = y
    e = lp[:, z]  # (T, S)
    skip = np.zeros(S, bool)
    skip[3::2] = y[1:] != y[:-1]
    neg = -1e30
    a = np.full(S, neg)
    a[0] = e[0, 0]
    a[1] = e[0, 1]
    back = np.zeros((T, S), np.int8)
    pad1, pad2 = np.full(1, neg), np.full(2, neg)
    for t in range(1, T):
        stay = a
        step = np.concatenate([pad1, a[:-1]])
        jump = np.where(skip, np.concatenate([pad2, a[:-2]]), neg)
        stack = np.stack([stay, step, jump])  # (3, S)
        k = np.argmax(stack, axis=0)
        a = stack[k, np.arange(S)] + e[t]
        back[t] = k
    last = S - 1 if L == 0 or a[S - 1] >= a[S - 2] else S - 2
    if a[last] <= neg / 2:
        return np.full(L, -1, np.int64)
    path = np.empty(T, np.int64)
    s = last
    for t in range(T - 1, -1, -1):
        path[t] = s
        s -= int(back[t, s])
    peaks = np.full(L, -1, np.int64)
    for i in range(L):
        fr = np.flatnonzero(path == 2 * i + 1)
        if len(fr):
            peaks[i] = fr[np.argmax(lp[fr, y[i]])]
    return peaks


def greedy_runs(log_probs: np.ndarray, blank: int = charset.BLANK) -> tuple[np.ndarray, np.ndarray]:
    """(peak frames (n,), labels (n,)) of the greedy path's runs of one non-blank label."""
    best = np.asarray(log_probs).argmax(axis=1)
    if len(best) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.concatenate(([True], best[1:] != best[:-1])))
    stops = np.concatenate((starts[1:], [len(best)]))
    peaks, labels = [], []
    for a, b in zip(starts, stops):
        k = int(best[a])
        if k != blank:
            peaks.append(a + int(np.argmax(log_probs[a:b, k])))
            labels.append(k)
    return np.asarray(peaks, np.int64), np.asarray(labels, np.int64)


# ---------------------------------------------------------------------------------------------------------------------
# Prior (in the bundle) and user profile (in the calibration profile)


def _save_npz(path: Path, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
    buf = io.BytesIO()
    np.savez(buf, header=np.asarray(json.dumps(header, sort_keys=True)), **arrays)  # type: ignore[arg-type]
    atomic_write_bytes(path, buf.getvalue())
    return path


def _load_npz(path: Path, fmt: str, version: int = FORMAT_VERSION) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(str(z["header"]))
            arrays = {k: np.asarray(z[k]) for k in z.files if k != "header"}
    except FileNotFoundError as exc:
        raise KeyProtoError(f"{path} does not exist") from exc
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise KeyProtoError(f"{path} is not a readable {fmt} file: {exc!r}") from exc
    if header.get("format") != fmt or int(header.get("format_version", 0)) > version:
        raise KeyProtoError(f"{path}: not a {fmt} file of a version this emgkey reads ({header.get('format')!r})")
    return header, arrays


def _load_fields(
    cls: Any,
    path: Path,
    fmt: str,
    arrays: tuple[tuple[str, Any], ...],
    floats: tuple[str, ...],
    *,
    optional: tuple[tuple[str, Any], ...] = (),
    optional_floats: tuple[str, ...] = (),
    optional_header: tuple[str, ...] = (),
    version: int = FORMAT_VERSION,
    collect: tuple[str, Any] | None = None,
) -> Any:
    """``cls(*arrays, spec, frame_rate_hz, frame_shape, *floats, info, **optional)`` from a ``_save_npz`` file;
    ``collect = (name, ctor)``: the optional values named ``<name>_*`` become ``name=ctor(**those)``."""
    h, a = _load_npz(path, fmt, version)
    try:
        head = [a[name].astype(dtype) for name, dtype in arrays]
        extra: dict[str, Any] = {name: a[name].astype(dtype) for name, dtype in optional if name in a}
        extra.update({name: float(h[name]) for name in optional_floats if name in h})
        extra.update({name: h[name] for name in optional_header if h.get(name) is not None})
        if collect is not None:
            group, ctor = collect
            parts = {k[len(group) + 1 :]: extra.pop(k) for k in list(extra) if k.startswith(group + "_")}
            if parts:
                extra[group] = ctor(**parts)
        frames = [
            KeyFeatureSpec.from_dict(h["spec"]),
            float(h["frame_rate_hz"]),
            tuple(int(x) for x in h["frame_shape"]),
        ]
        return cls(*head, *frames, *(float(h[k]) for k in floats), dict(h.get("info", {})), **extra)
    except (KeyError, TypeError, ValueError, AssertionError) as exc:
        raise KeyProtoError(f"{path} is malformed: {exc!r}") from exc


@dataclass
class KeyPrior:
    """The population's key classes: means (K, D) and a shared shrunk covariance (D, D) of centred key vectors."""

    classes: np.ndarray  # (K,) charset labels
    means: np.ndarray  # (K, D)
    cov: np.ndarray  # (D, D)
    counts: np.ndarray  # (K,) training presses per class
    spec: KeyFeatureSpec
    frame_rate_hz: float
    frame_shape: tuple[int, int, int]  # (n_bands, C, n_freq) of the frames the vectors come from
    info: dict[str, Any] = field(default_factory=dict)
    # (D, D) how far one user's class means stray from ``means`` (format 2); None: a format-1 prior, whose
    # ``cov`` pools the users' differences into the noise and whose users' means move by ``tau`` MAP instead
    between: np.ndarray | None = None

    def __post_init__(self) -> None:
        k, d = self.means.shape
        assert self.classes.shape == (k,) and self.counts.shape == (k,), "one class label and count per mean"
        assert self.cov.shape == (d, d), f"covariance {self.cov.shape} does not match {d}-dim means"
        assert self.between is None or self.between.shape == (d, d), f"between {self.between.shape} is not {d}x{d}"
        assert d == self.spec.dim(self.frame_shape), f"{d}-dim means, the spec makes {self.spec.dim(self.frame_shape)}"

    @classmethod
    def fit(
        cls,
        vectors: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        spec: KeyFeatureSpec,
        frame_rate_hz: float,
        frame_shape: tuple[int, int, int],
        *,
        shrinkage: float = 0.3,
        min_count: int = 20,
        info: dict[str, Any] | None = None,
        align_bands: bool = False,
    ) -> KeyPrior:
        """One (n_i, D) array of key vectors and (n_i,) labels per session; each session centred on its own mean.

        ``cov`` is the (shrunk) covariance around each *session's* class means and ``between`` the spread of
        those means (``emgkey.lda.within_between``): a user's calibration presses then move the class means
        along the directions users actually differ in (``fit_profile``). ``align_bands``: roll each session's
        bands onto a common electrode frame first (``keyalign``; ``info["band_aligned"]``, and a user's presses
        are then rolled onto the prior's means before they move them).
        """
        assert len(vectors) == len(labels) and vectors, "one label array per vector array, at least one session"
        kept = [(v, np.asarray(lab)) for v, lab in zip(vectors, labels) if len(v)]  # sessions with presses
        vectors = [v - v.mean(axis=0) for v, _ in kept]
        labels = [lab for _, lab in kept]
        y = np.concatenate(labels)
        classes, counts = np.unique(y, return_counts=True)
        keep = counts >= min_count
        classes, counts = classes[keep], counts[keep]
        if len(classes) < 2:
            raise KeyProtoError(f"only {len(classes)} characters have {min_count}+ aligned presses: too little data")
        extra: dict[str, Any] = {}
        if align_bands:
            rolls = align_sessions(vectors, labels, classes, frame_shape, max_roll(frame_shape))
            vectors = [v[:, roll_index(r, frame_shape, v.shape[1])] for v, r in zip(vectors, rolls)]
            extra = {"band_aligned": True, "band_rolls": rolls.tolist()}
        x = np.concatenate(vectors)  # (N, D)
        session = np.concatenate([np.full(len(v), i) for i, v in enumerate(vectors)])
        index = {int(c): i for i, c in enumerate(classes)}
        sel = np.isin(y, classes)
        yi = np.array([index[int(c)] for c in y[sel]])
        means, pooled = lda_stats(x[sel], yi, len(classes), shrinkage)
        within, between = within_between(x[sel], yi, session[sel], means)
        cov = pooled if between is None else shrunk(within, shrinkage)
        meta = {"shrinkage": shrinkage, "min_count": min_count, "presses": int(sel.sum()), **extra, **(info or {})}
        return cls(
            classes.astype(np.int64),
            means,
            cov,
            counts.astype(np.int64),
            spec,
            frame_rate_hz,
            frame_shape,
            meta,
            between,
        )

    def format_version(self) -> int:
        """The lowest version that describes this prior (an emgkey that reads it decodes it the same way)."""
        if self.info.get("band_aligned"):
            return 3
        return 2 if self.between is not None else 1

    def header(self) -> dict[str, Any]:
        return {
            "format": PRIOR_FORMAT,
            "format_version": self.format_version(),
            "spec": self.spec.to_dict(),
            "frame_rate_hz": self.frame_rate_hz,
            "frame_shape": list(self.frame_shape),
            "info": self.info,
        }

    def save(self, path: str | Path) -> Path:
        arrays = {"classes": self.classes, "means": self.means, "cov": self.cov, "counts": self.counts}
        if self.between is not None:
            arrays["between"] = self.between
        return _save_npz(Path(path), self.header(), arrays)

    @classmethod
    def load(cls, path: str | Path) -> KeyPrior:
        arrays = (("classes", np.int64), ("means", np.float64), ("cov", np.float64), ("counts", np.int64))
        return _load_fields(
            cls, Path(path), PRIOR_FORMAT, arrays, (), optional=(("between", np.float64),), version=PRIOR_FORMAT_VERSION
        )


def bundle_key_prior(bundle: Bundle) -> KeyPrior | None:
    """The bundle's key prior (``manifest.model.key_prior``), hash-checked; None when the bundle has none."""
    entry = bundle.manifest.model.get("key_prior")
    if not entry:
        return None
    path = bundle.root / str(entry["path"])
    if not path.is_file():
        raise KeyProtoError(f"{path} is named in the manifest but missing: re-copy the bundle")
    if sha256_file(path) != entry.get("sha256"):
        raise KeyProtoError(f"{path}: sha256 does not match the manifest's; the file was modified or corrupted")
    prior = KeyPrior.load(path)
    prof = bundle.manifest.profile
    frame_shape = (prof.n_bands, prof.channels_per_band, bundle.manifest.features.n_freq)
    if tuple(prior.frame_shape) != frame_shape:
        raise KeyProtoError(f"{path} is for frames {prior.frame_shape}, the bundle's model reads {frame_shape}")
    return prior


@dataclass
class KeyProfile:
    """One user's key classes, ready to score: LDA weights (D, K), biases (K,), the user's centre (D,)."""

    classes: np.ndarray  # (K,)
    weights: np.ndarray  # (D, K)
    bias: np.ndarray  # (K,)
    centre: np.ndarray  # (D,)
    spec: KeyFeatureSpec
    frame_rate_hz: float
    frame_shape: tuple[int, int, int]
    lam: float = 1.0  # weight of the key model's log-posterior against the CTC model's
    centre_weight: float = 20.0  # pseudo-presses behind the calibration centre when the stream updates it
    info: dict[str, Any] = field(default_factory=dict)
    # nats taken off the blank before greedy picks a frame's label: more (and fainter) keystrokes become runs,
    # which the key model then names, or drops when its no-press class (label = blank) wins
    blank_offset: float = 0.0
    # the input map (manifest form, ``recognizer.FeatureNormalization``) the key vectors read the device features
    # through (format 3): strategy 1's, also under a fine-tuned model, whose adapter is trained for the CTC model,
    # not to put the user's keystrokes where the prior's are. None (formats 1-2): the model's own input frames.
    input_map: dict[str, Any] | None = None
    # what the decoder needs to keep moving the class means with the presses it names (format 3, ``keyadapt``)
    adapt: KeyAdaptation | None = None

    def __post_init__(self) -> None:
        d, k = self.weights.shape
        assert self.classes.shape == (k,) and self.bias.shape == (k,), "one class label and bias per column"
        assert self.centre.shape == (d,), f"centre {self.centre.shape} does not match {d}-dim weights"

    def check_frames(self, frame_shape: tuple[int, ...], frame_rate_hz: float) -> None:
        if tuple(frame_shape) != tuple(self.frame_shape) or abs(frame_rate_hz - self.frame_rate_hz) > 1e-6:
            raise KeyProtoError(
                f"key profile is for frames {self.frame_shape} at {self.frame_rate_hz} fps, "
                f"the model reads {tuple(frame_shape)} at {frame_rate_hz} fps"
            )

    def save(self, path: str | Path) -> Path:
        header = {
            "format": PROFILE_FORMAT,
            "format_version": FORMAT_VERSION,
            "spec": self.spec.to_dict(),
            "frame_rate_hz": self.frame_rate_hz,
            "frame_shape": list(self.frame_shape),
            "lam": self.lam,
            "centre_weight": self.centre_weight,
            "blank_offset": self.blank_offset,
            "info": self.info,
        }
        arrays = {"classes": self.classes, "weights": self.weights, "bias": self.bias, "centre": self.centre}
        if self.input_map is not None:
            header["input_map"] = self.input_map
        a = self.adapt
        if a is not None:
            header["adapt_weight"], header["adapt_min_posterior"] = a.weight, a.min_posterior
            arrays.update({f"adapt_{n}": getattr(a, n) for n in _ADAPT_ARRAYS})
        if self.input_map is None and a is None:
            header["format_version"] = 2  # an emgkey that reads version 2 decodes it the same way
        return _save_npz(Path(path), header, arrays)

    @classmethod
    def load(cls, path: str | Path) -> KeyProfile:
        arrays = (("classes", np.int64), ("weights", np.float64), ("bias", np.float64), ("centre", np.float64))
        adapt = tuple((f"adapt_{n}", np.float64) for n in _ADAPT_ARRAYS)
        return _load_fields(
            cls,
            Path(path),
            PROFILE_FORMAT,
            arrays,
            ("lam", "centre_weight"),
            optional=adapt,
            optional_floats=("blank_offset", "adapt_weight", "adapt_min_posterior"),
            optional_header=("input_map",),
            collect=("adapt", KeyAdaptation),
        )


@dataclass(frozen=True)
class KeyFitConfig:
    tau: float = 2.0  # pseudo-presses of the prior mean behind each user class mean (format-1 priors)
    lam: float = 0.75  # chosen on simulated users 2000-2007 (docs/calibration.md), not on the reported ones
    centre_weight: float = 20.0
    # aligned presses a calibration needs before a key profile is worth fitting: 8 lets a 15 s session (two
    # phrases) start one (users 2000-2007, 15 s, keys learning in use: 20 -> 8 took the reduction from -1..5 %
    # to 10-13 %; users 1000-1007 with static keys: -0.5..8.3 % -> 0.7..15.4 %); 60 s hold 100+
    min_presses: int = 8
    # a "no press" class (label = blank) from the key vectors half-way between aligned presses, and a lower
    # blank threshold for the runs it then vets; values chosen on simulated users 2000-2007 (docs/calibration.md)
    blank_offset: float = 1.0
    no_press_bias: float = 1.0  # nats added to the no-press class's score
    min_gaps: int = 20  # gaps needed for the no-press class (fewer: no class, and no blank offset)
    min_gap_ms: float = 80.0  # presses closer than this leave no gap example between them
    # learning while the user types, when a decoder is asked to (``keyadapt``; two-covariance priors only): a
    # decoded press whose combined posterior is at least ``adapt_min_posterior`` counts ``adapt_weight`` presses
    # of its key (0: no learning state in the profile)
    # (0.5, 0.9): users 2000-2007, offline over GRU, BiLSTM and TCN profiles: (1, 0.7) gained more with the TCN
    # and the BiLSTM but cost the GRU 0.5-1.5 CER points; (0.5, 0.9) gained with every model but one strategy
    adapt_weight: float = 0.5
    adapt_min_posterior: float = 0.9
    # a fine-tuned model (strategy 2) already names this user's keys better than the generic one: its profiles
    # let more runs past the blank (chosen on users 2000-2007, docs/calibration.md). lam 0.5 with the pooled
    # prior; 0.75 since the band-aligned prior (best fine-tuned lam for all 8 students / trainings swept)
    lam_finetuned: float = 0.75
    blank_offset_finetuned: float = 2.0

    def for_strategy(self, strategy: str) -> KeyFitConfig:
        """The settings for keys that rescore the model of ``strategy`` (finetune: the ``*_finetuned`` ones)."""
        if strategy != "finetune":
            return self
        return replace(self, lam=self.lam_finetuned, blank_offset=self.blank_offset_finetuned)


def _map_mean(prior: KeyPrior, mean: np.ndarray, user_mean: np.ndarray, n: int, tau: float) -> np.ndarray:
    """A class mean moved towards the user's mean of ``n`` presses.

    With the prior's ``between`` (B) and ``cov`` (W): the posterior mean of a Gaussian user offset,
    ``mean + B (B + W / n)^-1 (user_mean - mean)``: few presses move it only along directions in which users
    differ, many presses all the way. A format-1 prior: ``(n * user_mean + tau * mean) / (n + tau)``.
    """
    if prior.between is None:
        return (n * user_mean + tau * mean) / (n + tau)
    gain_t = np.linalg.solve(prior.between + prior.cov / n, prior.between)  # (B + W/n)^-1 B = gain^T (symmetric)
    return mean + gain_t.T @ (user_mean - mean)


def fit_profile(
    prior: KeyPrior,
    vectors: np.ndarray,
    labels: np.ndarray,
    cfg: KeyFitConfig,
    gaps: np.ndarray | None = None,
    input_map: dict[str, Any] | None = None,
) -> KeyProfile:
    """A user's profile from their aligned calibration presses: vectors (n, D), labels (n,); ``gaps`` (m, D):
    key vectors half-way between presses (``gap_centres``), the no-press class when there are ``min_gaps``;
    ``input_map``: the map the vectors were read through (manifest form; None: the model's input frames)."""
    assert vectors.ndim == 2 and vectors.shape[1] == prior.means.shape[1], (
        f"({len(vectors)}, {prior.means.shape[1]}) key vectors expected, got {vectors.shape}"
    )
    if len(vectors) < cfg.min_presses:
        raise KeyProtoError(f"{len(vectors)} aligned presses, a key profile needs {cfg.min_presses}")
    centre = vectors.mean(axis=0)
    x = vectors - centre
    gz = None if gaps is None else gaps - centre  # (m, D) centred like the presses
    perm = None
    if prior.info.get("band_aligned"):  # fit in the prior's electrode frame, map the result back (keyalign)
        um, un = class_means(x, labels, prior.classes)
        roll = estimate_roll(um, prior.means, un, prior.frame_shape, max_roll(prior.frame_shape))
        perm = roll_index(roll, prior.frame_shape, x.shape[1])
        x = x[:, perm]
        gz = None if gz is None else gz[:, perm]
    means = prior.means.copy()
    used = {}
    for i, c in enumerate(prior.classes):
        sel = labels == c
        n = int(sel.sum())
        if n:
            means[i] = _map_mean(prior, means[i], x[sel].mean(axis=0), n, cfg.tau)
            used[charset.labels_to_str([int(c)])] = n
    classes = prior.classes.copy()
    no_press = gz is not None and len(gz) >= cfg.min_gaps
    if no_press:
        assert gz is not None
        means = np.vstack([means, gz.mean(axis=0)])  # the user's own: there are plenty
        classes = np.append(classes, charset.BLANK)
    w, b = lda_weights(means, prior.cov)
    if no_press:
        b[-1] += cfg.no_press_bias
    adapt = None
    prior_means = prior.means
    if prior.between is not None and cfg.adapt_weight > 0:
        basis, eig = generalized_basis(prior.between, prior.cov)
        sums = np.stack([x[labels == c].sum(axis=0) for c in prior.classes])  # (K0, D)
        counts = np.array([float((labels == c).sum()) for c in prior.classes])
        if perm is not None:  # back to the user's frame: coordinate perm[j] of theirs is j of the prior's
            inv = inverse(perm)
            prior_means, basis, sums = prior_means[:, inv], basis[inv], sums[:, inv]
        adapt = KeyAdaptation(prior_means, basis, eig, sums, counts, cfg.adapt_weight, cfg.adapt_min_posterior)
    if perm is not None:
        w = w[inverse(perm)]  # z_user @ w[inv] == z_user[perm] @ w
    info: dict[str, Any] = {"presses": len(vectors), "classes_seen": len(used), "classes": len(prior.classes)}
    if perm is not None:
        info["band_roll"] = roll.tolist()
    info["tau"] = cfg.tau
    info["adaptation"] = "tau" if prior.between is None else "two-covariance"
    info["no_press_gaps"] = 0 if gaps is None else len(gaps)
    return KeyProfile(
        classes,
        w,
        b,
        centre,
        prior.spec,
        prior.frame_rate_hz,
        prior.frame_shape,
        cfg.lam,
        cfg.centre_weight,
        info,
        cfg.blank_offset if no_press else 0.0,
        input_map,
        adapt,
    )


def gap_centres(peaks: np.ndarray, min_gap: int) -> np.ndarray:
    """Frames half-way between consecutive aligned presses at least ``min_gap`` frames apart: no-press examples."""
    p = np.sort(np.asarray(peaks, dtype=np.int64))
    far = (p[1:] - p[:-1]) >= min_gap
    return ((p[1:] + p[:-1]) // 2)[far]


# ---------------------------------------------------------------------------------------------------------------------
# The decoder


@dataclass
class _Run:
    label: int
    start: int  # emission index of the run's first frame
    peak: int
    peak_score: float
    timestamp: float
    row: np.ndarray | None = None  # log-probs at the peak


class KeyRescoringDecoder:
    """Greedy CTC whose emitted labels are re-chosen with a ``KeyProfile`` (see the module docstring).

    The recognizer calls ``observe_features(features, model_map)`` with a chunk's device features and the
    model's input map, then ``decode(log_probs, timestamps)`` with that chunk's emissions; emission ``e``
    describes frame ``e - delay`` (the model's output delay). The key vectors read the features through the
    profile's ``input_map`` (format 3), else through the model's. ``observe_frames`` takes frames already
    mapped (offline). Frames are kept only as long as a pending run needs them.
    """

    def __init__(
        self,
        profile: KeyProfile,
        *,
        delay: int = 0,
        blank: int = charset.BLANK,
        num_classes: int = charset.NUM_CLASSES,
        adapt: bool = False,
    ) -> None:
        """``adapt``: let the profile's class means learn from the presses this stream names (when the profile
        carries a ``KeyAdaptation``); False (the default): the profile as calibrated."""
        self.profile = profile
        self.delay = delay
        self.blank = blank
        self.num_classes = num_classes
        self.lookahead = profile.spec.lookahead(profile.frame_rate_hz)
        self.lookback = max(0, -profile.spec.edges(profile.frame_rate_hz)[0])
        self._index = {int(c): i for i, c in enumerate(profile.classes)}
        self._input_map: Any = None
        if profile.input_map is not None:
            from emgkey.edge_runtime.recognizer import FeatureNormalization

            self._input_map = FeatureNormalization.from_manifest(profile.input_map, profile.frame_shape)
        self._frames: list[np.ndarray] = []  # chunks of frames, oldest first
        self._frames_first = 0  # absolute index of self._frames[0][0]
        self._frames_seen = 0
        self._emitted = 0  # absolute emission index of the next emission
        self._centre_sum = profile.centre * profile.centre_weight
        self._centre_n = profile.centre_weight
        # this stream's copy of the key model: adaptation changes the columns of the keys it learns
        self._weights, self._bias = profile.weights.copy(), profile.bias.copy()
        a = profile.adapt
        self._adapt = a.copy() if adapt and a is not None and a.weight > 0 else None
        self.adapted = 0  # presses learnt from so far
        self.reset()

    def reset(self) -> None:
        """A new text segment: labels restart; frames, emission clock and the running centre carry on."""
        self._final: list[int] = []
        self._final_ts: list[float] = []
        self._pending: list[_Run] = []
        self._run: _Run | None = None
        self.labels: list[int] = []
        self.timestamps: list[float] = []

    def observe_features(self, features: np.ndarray, model_map: Callable[[np.ndarray], np.ndarray]) -> None:
        """features (n, n_bands, C, n_freq): the device features of the frames going into the model, in order;
        ``model_map``: the model's input map (what a profile without its own ``input_map`` reads through)."""
        self.observe_frames((self._input_map if self._input_map is not None else model_map)(features))

    def observe_frames(self, frames: np.ndarray) -> None:
        """frames (n, n_bands, C, n_freq): the frames key vectors are read from, in order (already mapped)."""
        if len(frames):
            self._frames.append(np.asarray(frames, dtype=np.float32))
            self._frames_seen += len(frames)

    def decode(self, emissions: np.ndarray, timestamps: np.ndarray | None = None, finish: bool = False) -> list[int]:
        assert emissions.ndim == 2 and emissions.shape[1] == self.num_classes, (
            f"expected (T, {self.num_classes}) emissions, got {emissions.shape}"
        )
        if timestamps is None:
            timestamps = np.arange(self._emitted, self._emitted + len(emissions), dtype=np.float64)
        if self.profile.blank_offset:
            shifted = np.array(emissions, dtype=np.float64)
            shifted[:, self.blank] -= self.profile.blank_offset
            best = shifted.argmax(axis=1)
        else:
            best = emissions.argmax(axis=1)
        for j, k in enumerate(best):
            e = self._emitted + j
            k = int(k)
            run = self._run
            if run is not None and k == run.label:
                score = float(emissions[j, k])
                if score > run.peak_score:
                    run.peak, run.peak_score, run.row = e, score, emissions[j].astype(np.float64)
                continue
            if run is not None:
                self._pending.append(run)
                self._run = None
            if k != self.blank:
                self._run = _Run(k, e, e, float(emissions[j, k]), float(timestamps[j]), emissions[j].astype(np.float64))
        self._emitted += len(emissions)
        if finish and self._run is not None:
            self._pending.append(self._run)
            self._run = None
        self._resolve(finish)
        self.labels = self._final + [r.label for r in self._pending] + ([self._run.label] if self._run else [])
        self.timestamps = (
            self._final_ts + [r.timestamp for r in self._pending] + ([self._run.timestamp] if self._run else [])
        )
        return self.labels

    def _frame_window(self) -> tuple[np.ndarray, int]:
        if len(self._frames) > 1:
            self._frames = [np.concatenate(self._frames)]
        if not self._frames:
            return np.zeros((0, *self.profile.frame_shape), np.float32), self._frames_first
        return self._frames[0], self._frames_first

    def _resolve(self, finish: bool) -> None:
        ready = [r for r in self._pending if finish or r.peak - self.delay + self.lookahead <= self._frames_seen]
        if ready:
            frames, first = self._frame_window()
            for r in ready:
                label = self._rescore(r, frames, first)
                if label != self.blank:  # the no-press class won: the run was not a keystroke
                    self._final.append(label)
                    self._final_ts.append(r.timestamp)
            self._pending = self._pending[len(ready) :]
        # keep only the frames a future run can still read
        oldest = min([r.start for r in self._pending] + ([self._run.start] if self._run else []) + [self._emitted])
        keep_from = max(0, oldest - self.delay - self.lookback)
        if keep_from > self._frames_first and self._frames:
            frames, first = self._frame_window()
            cut = min(keep_from - first, len(frames))
            self._frames = [frames[cut:]]
            self._frames_first = first + cut

    def _rescore(self, run: _Run, frames: np.ndarray, first: int) -> int:
        i = self._index.get(run.label)
        if i is None or run.row is None or len(frames) == 0:
            return run.label
        p = self.profile
        centre_frame = run.peak - self.delay - first
        x = key_vectors(frames, np.array([centre_frame]), p.spec, p.frame_rate_hz)[0]  # (D,)
        self._centre_sum = self._centre_sum + x
        self._centre_n += 1.0
        z = x - self._centre_sum / self._centre_n  # (D,) centred
        s = z @ self._weights + self._bias
        lp_key = s - np.logaddexp.reduce(s)  # (K,) the key model's log-posterior
        score = run.row[p.classes] + p.lam * lp_key  # the no-press class (label blank) reads the blank's log-prob
        j = int(np.argmax(score))
        label = int(p.classes[j])
        if label == self.blank:  # not a keystroke: the centre stays the mean of keystrokes
            self._centre_sum = self._centre_sum - x
            self._centre_n -= 1.0
        elif self._adapt is not None and j < len(self._adapt.counts):
            self._learn(j, z, float(np.exp(score[j] - np.logaddexp.reduce(score))))
        return label

    def _learn(self, j: int, z: np.ndarray, posterior: float) -> None:
        """One more press of prior class ``j`` (centred vector ``z``) if the decoder was sure enough of it."""
        a = self._adapt
        assert a is not None
        if posterior < a.min_posterior:
            return
        a.sums[j] += a.weight * z
        a.counts[j] += a.weight
        self._weights[:, j], self._bias[j] = a.column(a.mean(j, a.sums[j], a.counts[j]))
        self.adapted += 1

    @property
    def text(self) -> str:
        return charset.labels_to_str(self.labels)


def key_decoder_factory(profile: KeyProfile, manifest: Any, adapt: bool = False) -> Callable[[], KeyRescoringDecoder]:
    """Fresh rescoring decoders for a bundle's streaming model (its output delay, classes, blank); ``adapt``:
    keys learn while the user types (when the profile allows it; opt-in)."""
    prof = manifest.profile
    frame_shape = (prof.n_bands, prof.channels_per_band, manifest.features.n_freq)
    profile.check_frames(frame_shape, manifest.features.frame_rate_hz)
    delay = int(manifest.streaming.output_delay_frames)
    blank = int(manifest.charset.get("blank", charset.BLANK))
    num_classes = int(manifest.streaming.log_probs.shape[-1])
    return lambda: KeyRescoringDecoder(profile, delay=delay, blank=blank, num_classes=num_classes, adapt=adapt)


def rescore_offline(
    log_probs: np.ndarray, frames: np.ndarray, profile: KeyProfile, delay: int = 0, adapt: bool = False
) -> list[int]:
    """The decoder over a whole segment: log_probs (T, classes), frames (T', n_bands, C, n_freq), T' >= T - delay."""
    dec = KeyRescoringDecoder(profile, delay=delay, num_classes=log_probs.shape[1], adapt=adapt)
    dec.observe_frames(frames)
    return list(dec.decode(log_probs, finish=True))
