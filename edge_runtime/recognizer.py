"""Streaming recognition: a shared ``Recognizer`` and one ``StreamState`` per stream (sherpa-onnx's loop).

    recognizer = Recognizer.from_bundle(bundle, decoder="greedy")
    stream = recognizer.create_stream()
    while running:
        stream.accept(source.read(n))            # (n, n_bands, C) float32 microvolts
        while stream.ready():
            recognizer.step(stream)              # exactly chunk_frames frames -> model -> decoder
        partial = stream.result()
        if stream.is_endpoint():
            final = stream.finalize()            # decoder finish (LM end of sentence), a final Result
            stream.reset()                       # next segment; model state and features carry on
    stream.input_finished(); drain with ready()/step(); stream.finalize()

What the stream does with samples:

1. Features, incrementally (``emgkey.features.StreamingFeaturizer``: bit-exact with the offline
   features, whatever the block sizes).
2. Frames wait in a bounded ring buffer until a whole chunk (``chunk_frames``, from the manifest) is
   there; the model gets exactly that many frames per call, through the bundle's input normalization
   (``FeatureNormalization``: identity unless the manifest's ``normalization`` says otherwise -- a
   per-user calibration writes it). A decoder with ``observe_features(features, model_map)`` (key
   rescoring) gets each chunk's device features and that map first. Only a segment's last partial chunk (at a
   long gap or when input is finished) is shorter, and is padded by repeating its last frame for graphs
   with a fixed chunk length; the padded frames' emissions are dropped.
3. Emissions go to the decoder with timestamps. Emission ``j`` of a segment describes feature frame
   ``j - output_delay_frames`` (the model's look-ahead, from the manifest); its timestamp is the centre
   of that frame's window on the stream's sample clock: ``(origin + i*hop + n_fft/2) / rate`` seconds,
   where ``origin`` is the absolute index of the segment's first sample. The last ``output_delay_frames``
   frames of a segment only ever serve as look-ahead, exactly as offline.

Gaps (samples the source lost: dropped packets, a reconnect), ``accept_gap(n_missing)``; see ``GapPolicy``:
- a short gap (<= ``max_pad_s``) is zero-filled: the sample clock and frame grid stay aligned, and the
  model sees a brief dip rather than a splice of two unrelated signals;
- a longer gap ends the segment: queued frames are flushed through the model, then the featurizer and
  the model state restart from zero after the gap (as a fresh recording would), time jumps by the gap,
  and ``is_endpoint()`` reports an endpoint so the text so far is finalised.
A source restart (``accept_restart()``: device reboot, new recording) is a long gap that skipped nothing.
All are counted in ``stream.stats``.

Per-stage timing (features, model, decode, and end-to-end from a frame's arrival to its decoding) is kept
in bounded windows for p50/p99 (``stream.stats.latency``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from emgkey import charset
from emgkey.bundle import Bundle, BundleError, Manifest
from emgkey.decoding import CTCGreedyDecoder
from emgkey.edge_runtime.endpoint import EndpointConfig, EndpointDetector
from emgkey.edge_runtime.engines import State, StreamingEngine, open_engine
from emgkey.edge_runtime.validate import check_samples
from emgkey.errors import ConfigError, EmgkeyError
from emgkey.features import FeatureConfig, StreamingFeaturizer


class StreamOverflowError(EmgkeyError):
    """More frames are waiting than the stream holds: the caller is not stepping the recognizer."""


class Decoder(Protocol):
    """An online CTC decoder (``emgkey.decoding.CTCGreedyDecoder``, ``beam.CTCBeamDecoder``)."""

    labels: list[int]
    timestamps: list[float]

    def reset(self) -> None: ...

    def decode(
        self, emissions: np.ndarray, timestamps: np.ndarray | None = None, finish: bool = False
    ) -> list[int]: ...


# ---------------------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------------------


_NORM_VALUES = {"kind", "scale", "offset", "mean", "std"}
# Electrode re-mapping before the affine map (a per-user calibration writes these): a circular shift of each
# band's electrodes (the band sits rotated on this arm) and a light per-band channel-mixing matrix.
_NORM_CHANNELS = {"channel_shift", "channel_mix"}
# Descriptive entries (what the exporter writes today) that change nothing at run time; ``raw_to_uv`` is
# checked against the device profile, because sources scale raw counts to microvolts with the profile.
_NORM_INFO = {"note", "source", "features", "in_graph", "raw_to_uv"}


@dataclass(frozen=True)
class FeatureNormalization:
    """Map on features before the model: electrode re-mapping, then ``x * scale + offset``.

    Manifest forms (``manifest.normalization``, or a per-user calibration profile's)::

        {}                                       identity (also {"kind": "identity"})
        {"kind": "affine", "scale": S, "offset": O}
        {"kind": "standardize", "mean": M, "std": D}      i.e. scale = 1/D, offset = -M/D

    ``S, O, M, D`` are numbers or nested lists broadcastable to ``(n_bands, C, n_freq)`` (e.g. one value
    per channel: shape ``(n_bands, C, 1)``). Any form may add, applied first and in this order:

        "channel_shift": [s_0, ..., s_{n_bands-1}]    y[:, b, c] = x[:, b, (c - s_b) mod C]  (np.roll by s_b)
        "channel_mix": M  (n_bands, C, C)              y[:, b, c] = sum_d M[b, c, d] x[:, b, d]

    Descriptive keys (``note``, ``source``, ``features``, ``in_graph``) are allowed;
    ``raw_to_uv`` must equal the profile's ADC scale. Other keys are errors.
    """

    scale: np.ndarray | None = None
    offset: np.ndarray | None = None
    channel_shift: tuple[int, ...] | None = None  # (n_bands,) electrodes
    channel_mix: np.ndarray | None = None  # (n_bands, C, C)

    @property
    def is_identity(self) -> bool:
        return self.scale is None and self.offset is None and self.channel_shift is None and self.channel_mix is None

    @classmethod
    def from_manifest(
        cls, d: dict[str, Any], frame_shape: tuple[int, ...], adc_scale_uv_per_count: float | None = None
    ) -> FeatureNormalization:
        unknown = set(d) - _NORM_VALUES - _NORM_CHANNELS - _NORM_INFO
        if unknown:
            known = sorted(_NORM_VALUES | _NORM_CHANNELS | _NORM_INFO)
            raise ConfigError(f"unknown normalization keys {sorted(unknown)}; known: {known}")
        if "raw_to_uv" in d and adc_scale_uv_per_count is not None:
            if not np.isclose(float(d["raw_to_uv"]), adc_scale_uv_per_count):
                raise ConfigError(
                    f"the bundle was trained on samples scaled by {d['raw_to_uv']} uV/count, the device profile "
                    f"scales by {adc_scale_uv_per_count}: the model would see mis-scaled EMG"
                )
        kind = d.get("kind", "identity" if not (set(d) & _NORM_VALUES) else None)

        def arr(key: str) -> np.ndarray:
            if key not in d:
                raise ConfigError(f"normalization kind {kind!r} needs {key!r}")
            a = np.asarray(d[key], dtype=np.float32)
            try:
                np.broadcast_to(a, frame_shape)
            except ValueError:
                raise ConfigError(
                    f"normalization {key!r} of shape {a.shape} does not fit frames {frame_shape}"
                ) from None
            return a

        shift, mix = _channel_maps(d, frame_shape)
        if kind == "identity":
            return cls(channel_shift=shift, channel_mix=mix)
        if kind == "affine":
            return cls(scale=arr("scale"), offset=arr("offset"), channel_shift=shift, channel_mix=mix)
        if kind == "standardize":
            mean, std = arr("mean"), arr("std")
            if np.any(std <= 0):
                raise ConfigError("normalization std must be positive")
            return cls(
                scale=(1.0 / std).astype(np.float32),
                offset=(-mean / std).astype(np.float32),
                channel_shift=shift,
                channel_mix=mix,
            )
        raise ConfigError(f"unknown normalization kind {kind!r}: identity, affine or standardize")

    def to_manifest(self) -> dict[str, Any]:
        """The manifest form of this map (``from_manifest`` of it gives the same map)."""
        d: dict[str, Any] = {"kind": "identity"}
        if self.scale is not None or self.offset is not None:
            ones = np.ones((), np.float32)
            d = {
                "kind": "affine",
                "scale": (self.scale if self.scale is not None else ones).tolist(),
                "offset": (self.offset if self.offset is not None else 0 * ones).tolist(),
            }
        if self.channel_shift is not None:
            d["channel_shift"] = [int(s) for s in self.channel_shift]
        if self.channel_mix is not None:
            d["channel_mix"] = self.channel_mix.tolist()
        return d

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """frames (k, n_bands, C, n_freq) -> same shape, float32."""
        if self.channel_shift is not None:
            frames = roll_channels(frames, self.channel_shift)
        if self.channel_mix is not None:
            frames = np.einsum("bcd,kbdf->kbcf", self.channel_mix, frames)  # (k, n_bands, C, n_freq)
        if self.scale is not None:
            frames = frames * self.scale
        if self.offset is not None:
            frames = frames + self.offset
        return frames.astype(np.float32, copy=False)


def roll_channels(frames: np.ndarray, shift: tuple[int, ...] | list[int] | np.ndarray) -> np.ndarray:
    """``np.roll`` of each band's electrodes by its own shift: frames (k, n_bands, C, ...) -> a new array.

    ``y[:, b, c] = x[:, b, (c - shift[b]) mod C]``: electrode ``c`` of the model sees this arm's electrode
    ``c - shift[b]``.
    """
    n_bands, c = frames.shape[1], frames.shape[2]
    assert len(shift) == n_bands, f"one shift per band: {len(shift)} shifts for {n_bands} bands"
    src = (np.arange(c)[None, :] - np.asarray(shift, dtype=np.int64)[:, None]) % c  # (n_bands, C)
    return frames[:, np.arange(n_bands)[:, None], src]  # fancy indexing copies


def _channel_maps(d: dict[str, Any], frame_shape: tuple[int, ...]) -> tuple[tuple[int, ...] | None, np.ndarray | None]:
    """``channel_shift`` and ``channel_mix`` of a normalization dict, checked against ``(n_bands, C, ...)``."""
    n_bands, c = frame_shape[0], frame_shape[1]
    shift = None
    if "channel_shift" in d:
        raw = d["channel_shift"]
        if (
            not isinstance(raw, list | tuple)
            or len(raw) != n_bands
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in raw)
        ):
            raise ConfigError(f"normalization channel_shift must be {n_bands} integers (one per band), got {raw!r}")
        shift = tuple(int(x) for x in raw)
    mix = None
    if "channel_mix" in d:
        mix = np.asarray(d["channel_mix"], dtype=np.float32)
        if mix.shape != (n_bands, c, c) or not np.all(np.isfinite(mix)):
            raise ConfigError(f"normalization channel_mix must be finite, shape ({n_bands}, {c}, {c}); got {mix.shape}")
    return shift, mix


@dataclass(frozen=True)
class GapPolicy:
    max_pad_s: float = 0.25  # zero-fill gaps up to this long; longer gaps restart the segment

    def __post_init__(self) -> None:
        if self.max_pad_s < 0:
            raise ConfigError("max_pad_s must be >= 0")


@dataclass(frozen=True)
class RecognizerConfig:
    gap: GapPolicy = field(default_factory=GapPolicy)
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    max_buffered_s: float = 30.0  # frames waiting for the model; more means nobody is stepping
    latency_window: int = 4096  # samples kept per stage for p50/p99


# ---------------------------------------------------------------------------------------------------------------------
# Results and statistics
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Result:
    labels: list[int]
    timestamps: list[float]  # seconds on the stream's sample clock, one per label
    is_final: bool
    segment: int

    @property
    def raw(self) -> str:
        """The keys as decoded, ⌫ included (what CER is measured on)."""
        return charset.labels_to_str(self.labels)

    @property
    def text(self) -> str:
        """What a reader sees: backspaces applied, shift dropped."""
        return charset.apply_backspaces(self.raw)


@dataclass
class StreamStats:
    samples: int = 0  # real samples accepted
    samples_padded: int = 0  # zeros inserted for short gaps
    samples_skipped: int = 0  # samples lost in long gaps (time skipped)
    gaps_padded: int = 0
    gaps_reset: int = 0
    restarts: int = 0
    frames: int = 0  # feature frames computed
    chunks: int = 0  # model calls
    emissions: int = 0
    segments: int = 0  # completed (finalised) segments
    latency: dict[str, deque[float]] = field(default_factory=dict)  # stage -> recent seconds

    def record(self, stage: str, seconds: float, window: int) -> None:
        d = self.latency.get(stage)
        if d is None:
            d = self.latency[stage] = deque(maxlen=window)
        d.append(seconds)

    def percentiles_ms(self, stage: str, qs: tuple[float, ...] = (50, 99)) -> tuple[float, ...]:
        d = self.latency.get(stage)
        if not d:
            return tuple(float("nan") for _ in qs)
        return tuple(float(x) * 1e3 for x in np.percentile(np.fromiter(d, dtype=np.float64), qs))

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            k: getattr(self, k)
            for k in (
                "samples",
                "samples_padded",
                "samples_skipped",
                "gaps_padded",
                "gaps_reset",
                "restarts",
                "frames",
                "chunks",
                "emissions",
                "segments",
            )
        }
        for stage in sorted(self.latency):
            p50, p99 = self.percentiles_ms(stage)
            out[f"{stage}_ms_p50"], out[f"{stage}_ms_p99"] = p50, p99
        return out


# ---------------------------------------------------------------------------------------------------------------------
# The frame queue
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class _Segment:
    first_frame: int  # queue index of the segment's first frame
    origin_sample: int  # absolute index of its first sample


class _FrameQueue:
    """Fixed-capacity ring of feature frames with monotonically increasing indices (raises on overflow).

    Index ``i`` is the i-th frame ever pushed; segments record the index where they start, so a frame's
    position inside its segment (and hence its timestamp) is ``i - segment.first_frame``.
    """

    def __init__(self, capacity: int, frame_shape: tuple[int, ...]) -> None:
        assert capacity > 0, "queue capacity must be positive"
        self._buf = np.zeros((capacity, *frame_shape), dtype=np.float32)
        self._arrival = np.zeros(capacity, dtype=np.float64)  # wall clock when each frame was computed
        self.head = 0  # next index to pop
        self.tail = 0  # next index to push

    def __len__(self) -> int:
        return self.tail - self.head

    def push(self, frames: np.ndarray, arrival: float) -> None:
        n, cap = len(frames), len(self._buf)
        if len(self) + n > cap:
            raise StreamOverflowError(
                f"{len(self) + n} feature frames waiting, the stream holds {cap}: call recognizer.step() "
                "while stream.ready(), or raise RecognizerConfig.max_buffered_s"
            )
        pos = (self.tail + np.arange(n)) % cap
        self._buf[pos] = frames
        self._arrival[pos] = arrival
        self.tail += n

    def pop(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        assert 0 < n <= len(self), f"cannot pop {n} of {len(self)} frames"
        pos = (self.head + np.arange(n)) % len(self._buf)
        self.head += n
        return self._buf[pos], self._arrival[pos]  # fancy indexing copies


# ---------------------------------------------------------------------------------------------------------------------
# Recognizer and per-stream state
# ---------------------------------------------------------------------------------------------------------------------


def make_decoder_factory(
    decoder: str,
    *,
    lm_path: str | None = None,
    lm_backend: str = "auto",
    beam_size: int | None = None,
    lm_weight: float | None = None,
    insertion_bonus: float | None = None,
    blank: int = charset.BLANK,
    num_classes: int = charset.NUM_CLASSES,
) -> Callable[[], Decoder]:
    """A factory of fresh ``greedy`` or ``beam`` decoders; the LM (read once) is shared by all it makes."""
    if decoder == "greedy":
        if lm_path is not None:
            raise ConfigError("--lm needs --decoder beam (greedy decoding uses no LM)")
        return lambda: CTCGreedyDecoder(blank=blank, num_classes=num_classes)
    if decoder != "beam":
        raise ConfigError(f"unknown decoder {decoder!r}: greedy or beam")
    from emgkey.edge_runtime.beam import BeamConfig, CTCBeamDecoder
    from emgkey.edge_runtime.lm import load_lm

    cfg = BeamConfig(blank=blank, num_classes=num_classes)
    lm = load_lm(lm_path, lm_backend) if lm_path is not None else None
    if lm is None:
        cfg = replace(cfg, lm_weight=0.0, insertion_bonus=0.0)
    overrides = {
        k: v
        for k, v in (("beam_size", beam_size), ("lm_weight", lm_weight), ("insertion_bonus", insertion_bonus))
        if v is not None
    }
    cfg = replace(cfg, **overrides)
    return lambda: CTCBeamDecoder(cfg, lm)


class Recognizer:
    """Shared, read-only after construction: engine, feature config, normalization, decoder factory."""

    def __init__(
        self,
        engine: StreamingEngine,
        featurizer_config: FeatureConfig,
        decoder_factory: Callable[[], Decoder],
        manifest: Manifest,
        config: RecognizerConfig | None = None,
        normalization: dict[str, Any] | None = None,
    ) -> None:
        """``normalization``: replaces the manifest's normalization values (a per-user calibration profile's,
        ``emgkey.edge_runtime.profile_store``); the manifest's descriptive entries (``raw_to_uv``) still apply."""
        self.engine = engine
        self.features = featurizer_config
        self.decoder_factory = decoder_factory
        self.manifest = manifest
        self.config = config or RecognizerConfig()
        sig = manifest.streaming
        self.signature = sig
        if featurizer_config != manifest.features:
            raise ConfigError(
                f"feature config {featurizer_config} differs from the bundle's {manifest.features}: "
                "the model would see features it was not trained on"
            )
        if engine.signature != sig:
            raise BundleError("signature_mismatch", "the engine was opened with a different streaming signature")
        prof = manifest.profile
        self.channel_shape = (prof.n_bands, prof.channels_per_band)
        self.frame_shape = (*self.channel_shape, featurizer_config.n_freq)
        if tuple(sig.features.shape[1:]) != (1, *self.frame_shape):
            raise BundleError(
                "signature_mismatch",
                f"model features {sig.features.shape} do not match profile/features (m, 1, {self.frame_shape})",
            )
        self.num_classes = int(sig.log_probs.shape[-1])
        self.blank = int(manifest.charset.get("blank", charset.BLANK))
        norm = manifest.normalization
        if normalization is not None:
            norm = {**{k: v for k, v in norm.items() if k in _NORM_INFO}, **normalization}
        self.normalization = FeatureNormalization.from_manifest(norm, self.frame_shape, prof.adc_scale_uv_per_count)
        self.sample_rate_hz = featurizer_config.sample_rate_hz
        self.frame_rate_hz = featurizer_config.frame_rate_hz
        self.queue_capacity = max(2 * sig.chunk_frames, int(self.config.max_buffered_s * self.frame_rate_hz))
        self.max_pad_samples = round(self.config.gap.max_pad_s * self.sample_rate_hz)

    @classmethod
    def from_bundle(
        cls,
        bundle: Bundle,
        decoder: str | Callable[[], Decoder] = "greedy",
        *,
        lm: str | None = None,
        format: str = "onnx",
        precision: str = "int8",
        threads: int = 1,
        config: RecognizerConfig | None = None,
        normalization: dict[str, Any] | None = None,
    ) -> Recognizer:
        """``decoder``: ``"greedy"``, ``"beam"`` (with ``lm``, an ARPA path, optional) or a factory;
        ``normalization``: a calibration profile's input map (see ``Recognizer.__init__``)."""
        engine = open_engine(bundle, precision=precision, format=format, threads=threads)
        m = bundle.manifest
        if callable(decoder):
            factory = decoder
        else:
            factory = make_decoder_factory(
                decoder,
                lm_path=lm,
                blank=int(m.charset.get("blank", charset.BLANK)),
                num_classes=int(m.streaming.log_probs.shape[-1]),
            )
        return cls(engine, m.features, factory, m, config, normalization)

    def create_stream(self) -> StreamState:
        return StreamState(self)

    # The one place the model runs.
    def step(self, stream: StreamState) -> None:
        """Consume one chunk of frames (or apply one pending segment break)."""
        assert stream.recognizer is self, "a stream belongs to the recognizer that created it"
        assert stream.ready(), "step() called on a stream that is not ready"
        q = stream._queue
        nxt = stream._next_break()
        if nxt is not None and nxt.first_frame == q.head:
            stream._start_segment(nxt)
            return
        limit = (nxt.first_frame if nxt is not None else q.tail) - q.head
        m = self.signature.chunk_frames
        n = min(m, limit)
        feats, arrival = q.pop(n)  # (n, n_bands, C, n_freq) device features, (n,)
        frames = self.normalization(feats)  # what the model reads
        x = frames[:, None]  # (n, 1, n_bands, C, n_freq)
        if n < m and self.engine.fixed_chunk:
            x = np.concatenate([x, np.repeat(x[-1:], m - n, axis=0)], axis=0)  # (m, 1, ...) last frame repeated
        observe = getattr(stream._decoder, "observe_features", None)
        if observe is not None:  # a decoder that reads the features too (keyproto.KeyRescoringDecoder)
            observe(feats, self.normalization)
        t0 = time.perf_counter()
        log_probs, stream._model_state = self.engine.run(x, stream._model_state)
        t1 = time.perf_counter()
        log_probs = log_probs[:n]  # (n, num_classes)
        seg = stream._segment
        j = stream._seg_emitted + np.arange(n)  # emission indices within the segment
        frame_in_seg = np.maximum(j - self.signature.output_delay_frames, 0)
        centre = seg.origin_sample + frame_in_seg * self.features.hop + self.features.n_fft / 2
        timestamps = centre / self.sample_rate_hz  # (n,) seconds
        stream._decoder.decode(log_probs, timestamps)
        t2 = time.perf_counter()
        stream._endpoint.update(log_probs)
        stream._seg_emitted += n
        stream._emitted_any_since_reset = True
        st, w = stream.stats, self.config.latency_window
        st.chunks += 1
        st.emissions += n
        st.record("model", t1 - t0, w)
        st.record("decode", t2 - t1, w)
        st.record("e2e", t2 - float(arrival[0]), w)  # the chunk's oldest frame: waited for the whole chunk


class StreamState:
    """Everything that belongs to one stream: featurizer buffer, frame queue, model state, decoder."""

    def __init__(self, recognizer: Recognizer) -> None:
        self.recognizer = recognizer
        r = recognizer
        self.stats = StreamStats()
        self._featurizer = StreamingFeaturizer(r.features, r.channel_shape)
        self._queue = _FrameQueue(r.queue_capacity, r.frame_shape)
        self._decoder = r.decoder_factory()
        self._decoder.reset()
        self._endpoint = EndpointDetector(r.config.endpoint, r.frame_rate_hz, r.blank)
        self._model_state: State = r.engine.init_state()
        self._segment = _Segment(first_frame=0, origin_sample=0)
        self._breaks: deque[_Segment] = deque()  # segments queued behind frames still waiting
        self._seg_emitted = 0
        self._sample_clock = 0  # absolute index of the next sample (real, padded or skipped)
        self._finished = False
        self._segment_no = 0
        self._emitted_any_since_reset = False

    # -- input ------------------------------------------------------------------------------------------------------

    def accept(self, samples: np.ndarray) -> None:
        """samples (n, n_bands, C) float microvolts, n >= 0."""
        assert not self._finished, "accept() after input_finished()"
        r = self.recognizer
        # Wrong layout or NaN/inf: a clear error (ChannelCountError / InvalidSampleError), never into the model.
        check_samples("stream.accept", samples, *r.channel_shape, first_index=self._sample_clock)
        if len(samples) == 0:
            return
        t0 = time.perf_counter()
        feats = self._featurizer.accept(samples)  # (k, n_bands, C, n_freq); normalized by step()
        t1 = time.perf_counter()
        self._sample_clock += len(samples)
        self.stats.samples += len(samples)
        if len(feats):
            self._queue.push(feats, t1)
            self.stats.frames += len(feats)
            self.stats.record("features", t1 - t0, r.config.latency_window)

    def accept_gap(self, n_missing: int) -> None:
        """The source lost ``n_missing`` samples here (see ``GapPolicy`` in the module docstring)."""
        assert n_missing >= 0, "a gap has a non-negative length"
        if n_missing == 0:
            return
        r = self.recognizer
        if n_missing <= r.max_pad_samples:
            before = self.stats.samples
            self.accept(np.zeros((n_missing, *r.channel_shape), dtype=np.float32))
            self.stats.samples = before  # zeros are not real samples
            self.stats.samples_padded += n_missing
            self.stats.gaps_padded += 1
            return
        self._sample_clock += n_missing
        self.stats.samples_skipped += n_missing
        self.stats.gaps_reset += 1
        self._break()

    def accept_restart(self) -> None:
        """The source restarted (device reboot, new recording): nothing before joins what follows."""
        self.stats.restarts += 1
        self._break()

    def _break(self) -> None:
        """End the segment here: features restart now, the model once the frames before are through."""
        self._featurizer.reset()  # drop the partial window: it would splice signal from both sides
        self._breaks.append(_Segment(first_frame=self._queue.tail, origin_sample=self._sample_clock))

    def input_finished(self) -> None:
        """No more samples: the last partial chunk becomes ready."""
        self._finished = True

    # -- state the loop reads -------------------------------------------------------------------------------------

    def _next_break(self) -> _Segment | None:
        return self._breaks[0] if self._breaks else None

    def ready(self) -> bool:
        q = self._queue
        nxt = self._next_break()
        if nxt is not None:
            return True  # frames before it get flushed (a partial chunk), or the break itself applies
        return len(q) >= self.recognizer.signature.chunk_frames or (self._finished and len(q) > 0)

    def _start_segment(self, seg: _Segment) -> None:
        """A long gap's break reached the model: restart the model state; the decoder's text so far is final."""
        self._breaks.popleft()
        self._segment = seg
        self._seg_emitted = 0
        self._model_state = self.recognizer.engine.init_state()
        if self._emitted_any_since_reset:
            self._endpoint.forced = True

    def result(self) -> Result:
        """The segment's text so far (partial: a beam decoder may still revise it)."""
        return Result(list(self._decoder.labels), list(self._decoder.timestamps), False, self._segment_no)

    def is_endpoint(self) -> bool:
        return self._endpoint.is_endpoint()

    def finalize(self) -> Result:
        """Finish the decoder on what it has seen (e.g. the LM's end of sentence) and return the final result."""
        empty = np.zeros((0, self.recognizer.num_classes), dtype=np.float32)
        t0 = time.perf_counter()
        self._decoder.decode(empty, np.zeros(0), finish=True)
        self.stats.record("decode", time.perf_counter() - t0, self.recognizer.config.latency_window)
        return Result(list(self._decoder.labels), list(self._decoder.timestamps), True, self._segment_no)

    def reset(self) -> None:
        """Start the next text segment. Features and model state carry on: the signal is continuous."""
        self._decoder.reset()
        self._endpoint.reset()
        self._segment_no += 1
        self.stats.segments += 1
        self._emitted_any_since_reset = False

    @property
    def sample_clock(self) -> int:
        """Absolute index of the next sample (real + zero-filled + skipped)."""
        return self._sample_clock

    @property
    def time_s(self) -> float:
        return self._sample_clock / self.recognizer.sample_rate_hz

    @property
    def buffered_frames(self) -> int:
        return len(self._queue)


def decode_samples(
    recognizer: Recognizer, samples: np.ndarray, block_sizes: list[int] | None = None
) -> tuple[np.ndarray, Result]:
    """Run a whole recording through a fresh stream (in blocks); returns (all emissions, final result).

    Endpointing is not applied: one segment, as offline decoding sees it. For tests and benchmarks.
    """
    emissions: list[np.ndarray] = []
    stream = recognizer.create_stream()
    inner = stream._decoder
    stream._decoder = _Tap(inner, emissions)
    sizes = block_sizes or [len(samples)]
    t = 0
    i = 0
    while t < len(samples):
        n = sizes[i % len(sizes)]
        i += 1
        stream.accept(samples[t : t + n])
        t += n
        while stream.ready():
            recognizer.step(stream)
    stream.input_finished()
    while stream.ready():
        recognizer.step(stream)
    final = stream.finalize()
    all_em = np.concatenate(emissions) if emissions else np.zeros((0, recognizer.num_classes), np.float32)
    return all_em, final


class _Tap:
    """A decoder wrapper that keeps a copy of every emission it is given."""

    labels: list[int]
    timestamps: list[float]

    def __init__(self, inner: Decoder, sink: list[np.ndarray]) -> None:
        self.inner = inner
        self.sink = sink

    def __getattr__(self, name: str) -> Any:  # labels, timestamps, text...: the inner decoder's
        return getattr(self.inner, name)

    def reset(self) -> None:
        self.inner.reset()

    def decode(self, emissions: np.ndarray, timestamps: np.ndarray | None = None, finish: bool = False) -> list[int]:
        if len(emissions):
            self.sink.append(np.array(emissions))
        return self.inner.decode(emissions, timestamps, finish)
