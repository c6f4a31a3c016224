"""On-device calibration, strategy 1 (torch-free): input statistics and band rotation for a new user.

A generic model meets a stranger's arm through two cheap-to-fix mismatches:

- **levels**: skin contact, fat and muscle size scale each electrode's signal, which shifts its
  log-power features; the model's ``SpectrogramNorm`` (a BatchNorm inside every exported graph)
  still standardizes with the *training population's* statistics. AdaBN (Li et al. 2016) swaps in
  the new domain's statistics. The graph cannot be changed on the device, so the same effect is
  obtained in front of it: an affine map per electrode (``mode="channel"``, BatchNorm's own
  granularity) or per electrode and frequency bin (``"channel_freq"``) that gives the user's
  calibration features the population's mean and standard deviation. The population's statistics
  are those of the bundle's held-out reference windows (``reference.npz``, the graph's own inputs).
- **rotation**: a band put on turned by ``k`` electrode spacings shows every muscle ``k`` electrodes
  away. Each band's electrodes are rolled by candidate shifts (``-1, 0, +1`` by default, ``+-2``
  for 16-electrode bands), with the AdaBN map re-estimated in the rolled frame.

Candidates are scored through the **deployed model** on fit prompts (at most ``search_seconds`` of them,
spread over the fit part; the statistics use the whole fit part) by the CTC log-likelihood of the
prompts (``calib_ctc``: tolerant of typos, informative even while greedy decoding emits nothing).
Search: all shifts of one band at a time with the others fixed (bands are nearly independent), then
the normalization modes at the best shift: ``1 + n_bands * (S - 1) + (modes - 1)`` passes (7 for two
bands and three shifts). Each prompt is run on its own from the model's zero state, half a second
before it appears: through the bundle's offline graph when it has a dynamic time axis and no
look-ahead (one call per prompt), else through the streaming graph chunk by chunk.

The result is a ``FeatureNormalization`` in manifest form (``channel_shift`` + ``affine``), which
``emgkey run --user`` applies before the model. Whether it is *kept* is decided on the held-out prompts
against the current model (``heldout_score`` and ``Acceptance``), with the deployed (int8) streaming
engine, as the device will run it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emgkey.bundle import Bundle, BundleError
from emgkey.edge_runtime.calib_ctc import greedy_edit_counts, nll_per_char
from emgkey.edge_runtime.calib_data import CalibrationSet, Segment
from emgkey.edge_runtime.engines import (
    StreamingEngine,
    has_offline_graph,
    open_engine,
    open_offline_engine,
    run_streaming,
)
from emgkey.edge_runtime.recognizer import FeatureNormalization, roll_channels
from emgkey.errors import ConfigError

log = logging.getLogger(__name__)

MODES = ("channel", "channel_freq", "none")


# ---------------------------------------------------------------------------------------------------------------------
# Population statistics and the AdaBN map


@dataclass(frozen=True)
class PopulationStats:
    """Feature statistics the model was built for, per electrode and per (electrode, bin): (n_bands, C, 1|F)."""

    channel_mean: np.ndarray
    channel_std: np.ndarray
    bin_mean: np.ndarray
    bin_std: np.ndarray
    frames: int
    source: str

    @classmethod
    def from_features(cls, frames: np.ndarray, source: str) -> PopulationStats:
        """frames (F, n_bands, C, n_freq) of the population (graph inputs)."""
        x = np.asarray(frames, dtype=np.float64)
        assert x.ndim == 4 and len(x) >= 2, f"expected (F >= 2, n_bands, C, n_freq) frames, got {x.shape}"
        return cls(
            channel_mean=x.mean(axis=(0, 3))[..., None],
            channel_std=x.std(axis=(0, 3))[..., None],
            bin_mean=x.mean(axis=0),
            bin_std=x.std(axis=0),
            frames=len(x),
            source=source,
        )

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> PopulationStats | None:
        """From the bundle's verification reference (held-out windows); None when it has none."""
        from emgkey.export.verify import reference_of  # torch-free: the device runs `emgkey verify` too

        try:
            ref, _ = reference_of(bundle)
        except BundleError as exc:
            log.warning("no population statistics (%s): normalization is left as it is", exc)
            return None
        frames = np.concatenate([x[:, 0] for x in ref.features], axis=0)  # (F, n_bands, C, n_freq)
        return cls.from_features(frames, f"{bundle.root.name}/reference.npz ({len(ref.features)} windows)")


def adabn_normalization(
    features: np.ndarray,
    shift: Sequence[int],
    mode: str,
    population: PopulationStats | None,
    scale_limits: tuple[float, float] = (0.1, 10.0),
) -> FeatureNormalization:
    """The input map that rolls each band by ``shift`` and gives ``features`` the population's statistics.

    ``mode``: ``"channel"`` (one mean/std per electrode), ``"channel_freq"`` (per electrode and bin) or
    ``"none"`` (the shift alone). Scales are clipped to ``scale_limits`` so a quiet electrode cannot be
    amplified without bound.
    """
    shift = tuple(int(s) for s in shift)
    if mode == "none" or population is None:
        return FeatureNormalization(channel_shift=shift)
    x = roll_channels(np.asarray(features), shift).astype(np.float64)  # (F, n_bands, C, n_freq), model frame
    if mode == "channel":
        mu, sd = x.mean(axis=(0, 3))[..., None], x.std(axis=(0, 3))[..., None]  # (n_bands, C, 1)
        mu_p, sd_p = population.channel_mean, population.channel_std
    elif mode == "channel_freq":
        mu, sd = x.mean(axis=0), x.std(axis=0)  # (n_bands, C, n_freq)
        mu_p, sd_p = population.bin_mean, population.bin_std
    else:
        raise ConfigError(f"unknown normalization mode {mode!r}: {', '.join(MODES)}")
    scale = np.clip(sd_p / np.maximum(sd, 1e-6), *scale_limits)
    offset = mu_p - scale * mu
    return FeatureNormalization(scale=scale.astype(np.float32), offset=offset.astype(np.float32), channel_shift=shift)


# ---------------------------------------------------------------------------------------------------------------------
# Running a model over calibration data


class Scorer:
    """Emissions of one bundle's model over a recording's features under candidate input maps.

    ``use``: ``"offline"`` (the whole-window graph: one call), ``"streaming"`` (the streaming graph chunk
    by chunk, as the device runs it) or ``"auto"`` (offline when the bundle's offline graph has a dynamic
    time axis and the model no look-ahead, else streaming).
    """

    def __init__(
        self,
        bundle: Bundle,
        features: np.ndarray,
        *,
        use: str = "auto",
        precision: str = "int8",
        format: str = "onnx",
        threads: int = 1,
        warmup_s: float = 0.5,
    ) -> None:
        m = bundle.manifest
        self.bundle = bundle
        self.features = features
        self.delay = m.streaming.output_delay_frames
        self.warmup_frames = round(warmup_s * m.features.frame_rate_hz)
        dynamic = (m.model.get("offline_graph") or {}).get("time_axis", "dynamic") == "dynamic"
        if use == "auto":
            use = "offline" if has_offline_graph(bundle) and dynamic and self.delay == 0 else "streaming"
        self.use = use
        self._offline = open_offline_engine(bundle, threads=threads) if use == "offline" else None
        self._streaming: StreamingEngine | None = None
        if use == "streaming":
            self._streaming, self.precision = open_deployed_engine(bundle, precision, format, threads)
        else:
            self.precision = "fp32"

    def emissions(self, norm: FeatureNormalization, segment: Segment) -> np.ndarray:
        """log-probs (frames, num_classes) of one segment's frames.

        The model starts from its zero state ``warmup_frames`` before the segment (a prompt starts with
        the user reading it, at rest, so little state is lost) and runs ``output_delay_frames`` past its end;
        emission ``j`` describes frame ``j - delay``.
        """
        a = max(0, segment.start - self.warmup_frames)
        b = min(len(self.features), segment.stop + self.delay)
        x = norm(self.features[a:b])[:, None]  # (frames, 1, n_bands, C, n_freq)
        if self._offline is not None:
            lp = self._offline.run(x)
        else:
            assert self._streaming is not None
            lp = run_streaming(self._streaming, x)
        first = segment.start - a + self.delay
        return lp[first : first + segment.frames]

    def score(self, norm: FeatureNormalization, segments: Sequence[Segment]) -> dict[str, float]:
        """CTC NLL per key of the segments' prompts and their greedy edit counts (CER against the prompts)."""
        items = [(self.emissions(norm, s), s.targets) for s in segments]
        counts = greedy_edit_counts(items)
        return {"nll": nll_per_char(items), **{k: round(v, 3) for k, v in counts.as_dict().items()}}


def open_deployed_engine(
    bundle: Bundle, precision: str = "int8", format: str = "onnx", threads: int = 1
) -> tuple[StreamingEngine, str]:
    """The streaming engine a device would run: that precision, else fp32 when the bundle has no such file or
    its file failed verification on this runtime (an int8 file outside the int8 tolerances)."""
    try:
        return open_engine(bundle, precision=precision, format=format, threads=threads), precision
    except BundleError as exc:
        if precision == "fp32" or exc.code not in ("no_such_file", "runtime_unsupported"):
            raise
        log.info("%s: no usable %s %s file (%s); using fp32", bundle.root, format, precision, exc.code)
        return open_engine(bundle, precision="fp32", format=format, threads=threads), "fp32"


# ---------------------------------------------------------------------------------------------------------------------
# Strategy 1


@dataclass(frozen=True)
class StatsConfig:
    shifts: tuple[int, ...] | None = None  # None: (-1, 0, 1) for bands of <= 8 electrodes, (-2, ..., 2) above
    modes: tuple[str, ...] = MODES  # the first is used while searching shifts
    search_seconds: float | None = 30.0  # fit prompts (spread over the fit part) that score the candidates
    scale_limits: tuple[float, float] = (0.1, 10.0)
    engine: str = "auto"  # Scorer(use=...)

    def __post_init__(self) -> None:
        for m in self.modes:
            if m not in MODES:
                raise ConfigError(f"unknown normalization mode {m!r}: {', '.join(MODES)}")
        assert self.modes, "at least one normalization mode"
        if self.shifts is not None and 0 not in self.shifts:
            raise ConfigError("the shifts tried must include 0 (the band as trained)")

    def shifts_for(self, channels: int) -> tuple[int, ...]:
        if self.shifts is not None:
            return tuple(sorted(set(self.shifts)))
        return (-1, 0, 1) if channels <= 8 else (-2, -1, 0, 1, 2)


@dataclass
class StatsResult:
    normalization: FeatureNormalization
    shift: tuple[int, ...]
    mode: str
    fit: dict[str, float]  # score on the fit segments
    trials: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    population: str | None = None
    engine: str = ""
    search_prompts: int = 0

    def describe(self) -> dict[str, Any]:
        return {
            "strategy": "stats",
            "shift": list(self.shift),
            "mode": self.mode,
            "fit": self.fit,
            "trials": self.trials,
            "seconds": round(self.seconds, 3),
            "population_statistics": self.population,
            "search_prompts": self.search_prompts,
            "scoring_engine": self.engine,
        }


def estimate_stats(
    bundle: Bundle,
    cal: CalibrationSet,
    config: StatsConfig | None = None,
    population: PopulationStats | None = None,
    *,
    threads: int = 1,
) -> StatsResult:
    """Strategy 1: the (shift, normalization) with the best CTC likelihood of the fit prompts.

    ``population``: the target statistics (default: the bundle's reference windows); without any, only
    the band rotation is estimated.
    """
    cfg = config or StatsConfig()
    t0 = time.perf_counter()
    if population is None:
        population = PopulationStats.from_bundle(bundle)
    modes = cfg.modes if population is not None else ("none",)
    n_bands, channels = cal.features.shape[1], cal.features.shape[2]
    shifts = cfg.shifts_for(channels)
    fit_feats = cal.features[: cal.fit_stop]  # statistics come from the fit part only
    scorer = Scorer(bundle, cal.features, use=cfg.engine, threads=threads)
    search = _spread(cal.fit, cfg.search_seconds * cal.feature_config.frame_rate_hz if cfg.search_seconds else None)
    trials: list[dict[str, Any]] = []
    scored: dict[tuple[tuple[int, ...], str], dict[str, float]] = {}

    def trial(shift: tuple[int, ...], mode: str) -> float:
        key = (shift, mode)
        if key not in scored:
            norm = adabn_normalization(fit_feats, shift, mode, population, cfg.scale_limits)
            scored[key] = scorer.score(norm, search)
            trials.append({"shift": list(shift), "mode": mode, "nll": round(scored[key]["nll"], 5)})
        return scored[key]["nll"]

    best_shift = (0,) * n_bands
    mode = modes[0]
    best = trial(best_shift, mode)
    for band in range(n_bands):  # coordinate search: one band's shifts with the others fixed
        for s in shifts:
            cand = tuple(s if b == band else best_shift[b] for b in range(n_bands))
            nll = trial(cand, mode)
            if nll < best:
                best, best_shift = nll, cand
    best_mode = mode
    for m in modes[1:]:
        nll = trial(best_shift, m)
        if nll < best:
            best, best_mode = nll, m
    norm = adabn_normalization(fit_feats, best_shift, best_mode, population, cfg.scale_limits)
    return StatsResult(
        normalization=norm,
        shift=best_shift,
        mode=best_mode,
        fit=scored[(best_shift, best_mode)],
        trials=trials,
        seconds=time.perf_counter() - t0,
        population=population.source if population is not None else None,
        engine=f"{scorer.use} ({scorer.precision})",
        search_prompts=len(search),
    )


def _spread(segments: Sequence[Segment], max_frames: float | None) -> list[Segment]:
    """Segments spread evenly over ``segments`` (in order) holding about ``max_frames`` frames in all."""
    total = sum(s.frames for s in segments)
    if max_frames is None or total <= max_frames:
        return list(segments)
    k = max(1, round(len(segments) * max_frames / total))
    picks = np.unique(np.linspace(0, len(segments) - 1, k).round().astype(int))
    return [segments[i] for i in picks]


# ---------------------------------------------------------------------------------------------------------------------
# Held-out comparison: does the calibration beat the current model?


@dataclass(frozen=True)
class Deployed:
    """What ``emgkey run`` would execute: a bundle plus the input map in front of it."""

    bundle: Bundle
    normalization: dict[str, Any] | None  # manifest form; None: the bundle's own
    label: str

    def input_map(self) -> FeatureNormalization:
        m = self.bundle.manifest
        prof = m.profile
        frame_shape = (prof.n_bands, prof.channels_per_band, m.features.n_freq)
        norm = m.normalization if self.normalization is None else self.normalization
        return FeatureNormalization.from_manifest(norm, frame_shape)


def heldout_score(
    model: Deployed, cal: CalibrationSet, *, precision: str = "int8", format: str = "onnx", threads: int = 1
) -> dict[str, float]:
    """CTC NLL per key and greedy CER of the held-out prompts through the deployed streaming engine."""
    scorer = Scorer(model.bundle, cal.features, use="streaming", precision=precision, format=format, threads=threads)
    out = scorer.score(model.input_map(), cal.heldout)
    out["precision"] = scorer.precision  # type: ignore[assignment]
    return out


@dataclass(frozen=True)
class Acceptance:
    """A calibration replaces the current model only if, on the held-out slice, its CTC NLL per key is lower by
    at least ``min_nll_gain`` (relative) and its greedy CER is not higher by more than ``max_cer_rise`` points;
    or, when key rescoring is part of it (which changes the text, not the NLL), if its CER with keys is lower
    by at least ``min_cer_gain`` points and its NLL is not higher by more than ``min_nll_gain``.

    ``new["cer"]`` / ``current["cer"]`` are what each would decode (with its key rescoring where it has one).
    """

    min_nll_gain: float = 0.005
    max_cer_rise: float = 0.5
    min_cer_gain: float = 1.0

    def judge(self, new: dict[str, float], current: dict[str, float], keys: bool = False) -> tuple[bool, str]:
        gain = (current["nll"] - new["nll"]) / max(abs(current["nll"]), 1e-9)
        rise = new["cer"] - current["cer"]
        facts = (
            f"held-out NLL/key {current['nll']:.3f} -> {new['nll']:.3f} ({100 * gain:+.1f}%), "
            f"CER {current['cer']:.1f} -> {new['cer']:.1f}{' with key rescoring' if keys else ''}"
        )
        if not np.isfinite(new["nll"]):
            return False, f"{facts}: the calibrated model cannot explain the held-out prompts"
        if keys and -rise >= self.min_cer_gain and gain >= -self.min_nll_gain:
            return True, facts
        if gain < self.min_nll_gain:
            return False, f"{facts}: not better than the current model"
        if rise > self.max_cer_rise:
            return False, f"{facts}: CER rose by {rise:.1f} points"
        return True, facts
