"""Model engines: run a bundle's graph on onnxruntime or LiteRT, with explicit state.

A ``StreamingEngine`` is the sherpa-onnx model contract seen from the device::

    state = engine.init_state()                       # {name: zeros(shape)} from the manifest
    log_probs, state = engine.run(features, state)    # features (m, 1, n_bands, C, n_freq)

``run`` maps the manifest's ``StreamingSignature`` onto the graph: input
``features`` plus one input per state, output ``log_probs`` plus ``<state>_out``
per state, fed back as ``<state>`` on the next call. Emissions come back as
``(m, num_classes)`` (batch of one squeezed). Nothing about the model is
hard-coded: chunk length, state names and shapes all come from the manifest, and
the graph is checked against it when the engine opens.

``open_engine(bundle, format=..., precision=..., threads=...)`` picks the file,
refuses a (file, runtime) pair that ``emgkey verify`` did not pass
(``emgkey.bundle.require_runtime``), and builds the engine. ``emgkey verify``
reuses these classes, so what is verified is what runs.

LiteRT tensor names. A converter may rename graph inputs and outputs
(``serving_default_features:0``, ``args_0``, ``StatefulPartitionedCall:1``...).
``LiteRTStreamingEngine`` maps each manifest tensor to a graph tensor by, in order:
1. exact names (the signature runner's names, then the tensors' own names);
2. names with converter decorations stripped (``serving_default_`` prefix, ``:N``
   suffix, case);
3. shape, when every manifest tensor's shape is unique among the candidates;
4. position: inputs ``[features, *states]`` and outputs ``[log_probs, *states_out]``
   in the manifest's order, which exporters must preserve.
Every match is checked against the manifest's shapes; a graph that cannot be mapped
unambiguously is refused with ``BundleError("signature_mismatch")``.
Quantized (int8/uint8/int16) input and output tensors are (de)quantized here with
the scale and zero point stored in the graph, so callers always see float32.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from emgkey.bundle import Bundle, BundleError, StreamingSignature, TensorSpec, require_runtime
from emgkey.errors import EmgkeyError

State = dict[str, np.ndarray]

ONNXRUNTIME = "onnxruntime"
AI_EDGE_LITERT = "ai-edge-litert"
TFLITE_RUNTIME = "tflite-runtime"


class EngineError(EmgkeyError):
    """A runtime package is missing or a graph failed to run."""


class StreamingEngine(Protocol):
    """``init_state()`` and ``run(features, state) -> (log_probs, new_state)``; see the module docstring."""

    signature: StreamingSignature
    runtime: str

    @property
    def fixed_chunk(self) -> bool:
        """True when every call must carry exactly ``signature.chunk_frames`` frames."""
        ...

    def init_state(self) -> State: ...

    def run(self, features: np.ndarray, state: State) -> tuple[np.ndarray, State]: ...


class OfflineEngine(Protocol):
    """A whole-window graph: ``run(features (T, 1, n_bands, C, n_freq)) -> log_probs (T_out, num_classes)``."""

    runtime: str

    def run(self, features: np.ndarray) -> np.ndarray: ...


def zero_state(signature: StreamingSignature) -> State:
    """Every state tensor at zero: the state before the first chunk (what training starts from)."""
    return {s.name: np.zeros(s.shape, dtype=np.dtype(s.dtype)) for s in signature.states}


def _check_features(features: np.ndarray, sig: StreamingSignature, fixed: bool) -> None:
    want = sig.features.shape
    assert features.ndim == len(want) and features.shape[1:] == tuple(want[1:]), (
        f"features chunk has shape {features.shape}, the bundle expects (m, {', '.join(map(str, want[1:]))})"
    )
    if fixed:
        assert features.shape[0] == sig.chunk_frames, (
            f"this graph takes exactly {sig.chunk_frames} frames per call, got {features.shape[0]}"
        )


def _check_state(state: State, sig: StreamingSignature) -> None:
    for s in sig.states:
        assert s.name in state, f"state {s.name!r} missing (have {sorted(state)})"
        assert state[s.name].shape == tuple(s.shape), (
            f"state {s.name!r} has shape {state[s.name].shape}, the manifest says {s.shape}"
        )


def _shape_ok(actual: Sequence[Any], spec: Sequence[int], *, allow_dynamic: bool = True) -> bool:
    """A graph's declared shape (ints, or None/str/-1 for dynamic dims) against the manifest's."""
    if len(actual) != len(spec):
        return False
    for a, s in zip(actual, spec):
        if isinstance(a, (int, np.integer)) and int(a) >= 0:
            if int(a) != s:
                return False
        elif not allow_dynamic:
            return False
    return True


# ---------------------------------------------------------------------------------------------------------------------
# onnxruntime
# ---------------------------------------------------------------------------------------------------------------------


def _ort_session(path: Path, threads: int) -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise EngineError("onnxruntime is not installed: pip install 'emgkey[device]'") from exc
    assert threads >= 1, "threads must be >= 1"
    opts = ort.SessionOptions()
    # One stream, small graphs: parallelism inside an op is all that helps, and 1 thread
    # by default leaves the other cores to acquisition and decoding on a Pi.
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types; name the file and re-raise typed
        raise EngineError(f"{path}: onnxruntime could not load the model: {exc}") from exc


class OnnxStreamingEngine:
    runtime = ONNXRUNTIME

    def __init__(self, path: str | Path, signature: StreamingSignature, threads: int = 1) -> None:
        self.path = Path(path)
        self.signature = signature
        self.threads = threads
        self.session = _ort_session(self.path, threads)
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        want_in = [signature.features, *signature.states]
        want_out = [
            signature.log_probs,
            *(TensorSpec(n, s.shape, s.dtype) for n, s in zip(signature.state_output_names, signature.states)),
        ]
        for spec, have, kind in [(s, inputs, "input") for s in want_in] + [(s, outputs, "output") for s in want_out]:
            if spec.name not in have:
                raise BundleError(
                    "signature_mismatch",
                    f"{self.path.name}: the manifest names {kind} {spec.name!r}, the graph has {sorted(have)}",
                )
            if not _shape_ok(have[spec.name].shape, spec.shape):
                raise BundleError(
                    "signature_mismatch",
                    f"{self.path.name}: {kind} {spec.name!r} has shape {have[spec.name].shape}, manifest {spec.shape}",
                )
        feat_dim0 = inputs[signature.features.name].shape[0]
        self._fixed = isinstance(feat_dim0, int) and feat_dim0 > 0
        self._out_names = [signature.log_probs.name, *signature.state_output_names]

    @property
    def fixed_chunk(self) -> bool:
        return self._fixed

    def init_state(self) -> State:
        return zero_state(self.signature)

    def run(self, features: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        sig = self.signature
        _check_features(features, sig, self._fixed)
        _check_state(state, sig)
        feeds = {sig.features.name: np.ascontiguousarray(features, dtype=np.float32)}
        feeds.update({s.name: state[s.name] for s in sig.states})
        out = self.session.run(self._out_names, feeds)
        log_probs = np.asarray(out[0]).reshape(features.shape[0], -1)  # (m, 1, K) -> (m, K)
        new_state = {s.name: np.asarray(v) for s, v in zip(sig.states, out[1:])}
        return log_probs, new_state


class OnnxOfflineEngine:
    """A graph with a dynamic time axis run over a whole window: first input -> first output."""

    runtime = ONNXRUNTIME

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        self.path = Path(path)
        self.session = _ort_session(self.path, threads)
        ins = self.session.get_inputs()
        if len(ins) != 1:
            raise BundleError(
                "signature_mismatch", f"{self.path.name}: an offline graph takes one input, has {len(ins)}"
            )
        self._in = ins[0].name
        self._out = self.session.get_outputs()[0].name

    def run(self, features: np.ndarray) -> np.ndarray:
        assert features.ndim == 5, f"expected (T, 1, n_bands, C, n_freq) features, got {features.shape}"
        out = self.session.run([self._out], {self._in: np.ascontiguousarray(features, dtype=np.float32)})[0]
        return np.asarray(out).reshape(out.shape[0], -1)  # (T_out, 1, K) -> (T_out, K)


# ---------------------------------------------------------------------------------------------------------------------
# LiteRT (ai-edge-litert, or tflite-runtime on old devices)
# ---------------------------------------------------------------------------------------------------------------------


def litert_interpreter_class() -> tuple[Any, str]:
    """The LiteRT ``Interpreter`` class and the runtime name a RuntimeCheck uses for it."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, AI_EDGE_LITERT
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter  # old Jetson / Pi OS images

        return Interpreter, TFLITE_RUNTIME
    except ImportError as exc:
        raise EngineError("neither ai-edge-litert nor tflite-runtime is installed: pip install ai-edge-litert") from exc


_DECORATION = re.compile(r"^(serving_default_|default_)|(:\d+)$")


def _plain_name(name: str) -> str:
    return _DECORATION.sub("", _DECORATION.sub("", name)).lower()


@dataclass
class _Port:
    name: str  # graph tensor name (or signature name)
    index: int  # interpreter tensor index
    shape: tuple[int, ...]
    dtype: Any
    scale: float
    zero_point: int


def match_ports(specs: Sequence[TensorSpec], ports: Sequence[_Port], what: str) -> list[_Port]:
    """Assign each manifest tensor a graph tensor (see the module docstring for the rules)."""
    if len(ports) != len(specs):
        raise BundleError("signature_mismatch", f"the manifest lists {len(specs)} {what}s, the graph has {len(ports)}")

    def check(assign: list[_Port]) -> bool:
        return len({p.index for p in assign}) == len(assign) and all(
            _shape_ok(p.shape, s.shape, allow_dynamic=False) for p, s in zip(assign, specs)
        )

    by_name = {p.name: p for p in ports}
    if all(s.name in by_name for s in specs):
        assign = [by_name[s.name] for s in specs]
        if check(assign):
            return assign
    by_plain = {_plain_name(p.name): p for p in ports}
    if len(by_plain) == len(ports) and all(_plain_name(s.name) in by_plain for s in specs):
        assign = [by_plain[_plain_name(s.name)] for s in specs]
        if check(assign):
            return assign
    shapes = [tuple(p.shape) for p in ports]
    if len(set(shapes)) == len(shapes) and len({tuple(s.shape) for s in specs}) == len(specs):
        by_shape = {tuple(p.shape): p for p in ports}
        if all(tuple(s.shape) in by_shape for s in specs):
            assign = [by_shape[tuple(s.shape)] for s in specs]
            if check(assign):
                return assign
    if check(list(ports)):
        return list(ports)
    raise BundleError(
        "signature_mismatch",
        f"cannot map the manifest's {what}s {[(s.name, s.shape) for s in specs]} onto the graph's "
        f"{[(p.name, p.shape) for p in ports]} by name, shape or order",
    )


def _ports(details: Sequence[dict[str, Any]], names: Sequence[str] | None = None) -> list[_Port]:
    out = []
    for i, d in enumerate(details):
        scale, zp = d.get("quantization", (0.0, 0))
        out.append(
            _Port(
                name=names[i] if names is not None else str(d["name"]),
                index=int(d["index"]),
                shape=tuple(int(x) for x in d["shape"]),
                dtype=d["dtype"],
                scale=float(scale),
                zero_point=int(zp),
            )
        )
    return out


def _signature_ports(interp: Any) -> tuple[list[_Port], list[_Port]] | None:
    """Inputs/outputs through the model's (single) SignatureDef, in signature order, with its names."""
    try:
        sigs = interp.get_signature_list()
    except (AttributeError, ValueError):
        return None
    if len(sigs) != 1:
        return None
    key = next(iter(sigs))
    runner = interp.get_signature_runner(key)
    ins, outs = runner.get_input_details(), runner.get_output_details()
    in_names, out_names = list(sigs[key]["inputs"]), list(sigs[key]["outputs"])
    return (
        _ports([ins[n] for n in in_names], in_names),
        _ports([outs[n] for n in out_names], out_names),
    )


def _quantize(x: np.ndarray, port: _Port) -> np.ndarray:
    if np.issubdtype(port.dtype, np.floating):
        return np.ascontiguousarray(x, dtype=port.dtype)
    assert port.scale > 0, f"integer tensor {port.name!r} has no quantization scale"
    info = np.iinfo(port.dtype)
    q = np.round(x / port.scale) + port.zero_point
    return np.clip(q, info.min, info.max).astype(port.dtype)


def _dequantize(x: np.ndarray, port: _Port) -> np.ndarray:
    if np.issubdtype(port.dtype, np.floating):
        return np.asarray(x, dtype=np.float32)
    return ((x.astype(np.float32) - port.zero_point) * port.scale).astype(np.float32)


class LiteRTStreamingEngine:
    """A .tflite streaming graph on LiteRT. ``interpreter``: an explicit ``(Interpreter class, runtime name)``
    (``emgkey verify`` checks each installed LiteRT in turn); default ``litert_interpreter_class()``."""

    def __init__(
        self,
        path: str | Path,
        signature: StreamingSignature,
        threads: int = 1,
        *,
        interpreter: tuple[Any, str] | None = None,
    ) -> None:
        interpreter_cls, self.runtime = interpreter if interpreter is not None else litert_interpreter_class()
        self.path = Path(path)
        self.signature = signature
        try:
            self.interp = interpreter_cls(model_path=str(self.path), num_threads=threads)
            self.interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise EngineError(f"{self.path}: LiteRT could not load the model: {exc}") from exc
        in_specs = [signature.features, *signature.states]
        out_specs = [
            signature.log_probs,
            *(TensorSpec(n, s.shape, s.dtype) for n, s in zip(signature.state_output_names, signature.states)),
        ]
        candidates: list[tuple[list[_Port], list[_Port]]] = []
        sig_ports = _signature_ports(self.interp)
        if sig_ports is not None:
            candidates.append(sig_ports)
        candidates.append((_ports(self.interp.get_input_details()), _ports(self.interp.get_output_details())))
        last: BundleError | None = None
        for ins, outs in candidates:
            try:
                self._in = match_ports(in_specs, ins, "input")
                self._out = match_ports(out_specs, outs, "output")
                break
            except BundleError as exc:
                last = exc
        else:
            assert last is not None
            raise BundleError(last.code, f"{self.path.name}: {last}")

    @property
    def fixed_chunk(self) -> bool:
        return True  # LiteRT graphs are converted with static shapes

    def init_state(self) -> State:
        return zero_state(self.signature)

    def run(self, features: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        sig = self.signature
        _check_features(features, sig, True)
        _check_state(state, sig)
        values = [features, *(state[s.name] for s in sig.states)]
        for port, v in zip(self._in, values):
            self.interp.set_tensor(port.index, _quantize(v, port))
        self.interp.invoke()
        outs = [_dequantize(self.interp.get_tensor(p.index), p) for p in self._out]  # get_tensor copies
        log_probs = outs[0].reshape(features.shape[0], -1)
        return log_probs, {s.name: v for s, v in zip(sig.states, outs[1:])}


# ---------------------------------------------------------------------------------------------------------------------
# Opening an engine from a bundle
# ---------------------------------------------------------------------------------------------------------------------


def runtime_for(format: str) -> str:
    """The runtime name a RuntimeCheck must carry for this format on this install."""
    if format == "onnx":
        return ONNXRUNTIME
    if format == "tflite":
        return litert_interpreter_class()[1]
    raise BundleError("no_such_file", f"unknown model format {format!r} (onnx or tflite)")


def open_engine(
    bundle: Bundle,
    precision: str = "int8",
    format: str = "onnx",
    threads: int = 1,
    *,
    check_runtime: bool = True,
) -> StreamingEngine:
    """The streaming engine for one of the bundle's files, refused unless verified on this runtime.

    ``check_runtime=False`` is for ``emgkey verify`` itself, which runs files before they are verified.
    """
    f = bundle.manifest.file(format=format, precision=precision, graph="streaming")
    runtime = runtime_for(format)
    if check_runtime:
        require_runtime(f, runtime)
    sig = bundle.manifest.streaming
    if format == "onnx":
        return OnnxStreamingEngine(bundle.path_of(f), sig, threads)
    return LiteRTStreamingEngine(bundle.path_of(f), sig, threads)


def open_offline_engine(
    bundle: Bundle, precision: str = "fp32", format: str = "onnx", threads: int = 1, *, check_runtime: bool = True
) -> OfflineEngine:
    """The bundle's whole-window graph (``graph == "offline"``); ONNX only (LiteRT shapes are static)."""
    f = bundle.manifest.file(format=format, precision=precision, graph="offline")
    if format != "onnx":
        raise BundleError("no_such_file", "offline graphs are run with onnxruntime only")
    if check_runtime:
        require_runtime(f, ONNXRUNTIME)
    return OnnxOfflineEngine(bundle.path_of(f), threads)


def has_offline_graph(bundle: Bundle) -> bool:
    return any(f.graph == "offline" for f in bundle.manifest.files)


def run_streaming(engine: StreamingEngine, features: np.ndarray, state: State | None = None) -> np.ndarray:
    """A streaming graph over a whole feature sequence, chunk by chunk (the reference for a stream).

    features (T, 1, n_bands, C, n_freq) -> log_probs (T, num_classes). A fixed-chunk graph gets its last
    partial chunk padded by repeating the last frame; only the T real frames' emissions are returned
    (for a causal graph they do not depend on the padding).
    """
    m = engine.signature.chunk_frames
    state = engine.init_state() if state is None else state
    outs = []
    for t in range(0, len(features), m):
        chunk = features[t : t + m]
        n = len(chunk)
        if engine.fixed_chunk and n < m:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], m - n, axis=0)], axis=0)
        lp, state = engine.run(chunk, state)
        outs.append(lp[:n])
    if not outs:
        return np.zeros((0, engine.signature.log_probs.shape[-1]), dtype=np.float32)
    return np.concatenate(outs, axis=0)


@dataclass
class TimedEngine:
    """Wraps an engine and records the wall time of each ``run`` (seconds), for benchmarks."""

    engine: StreamingEngine
    times: list[float]

    @property
    def signature(self) -> StreamingSignature:
        return self.engine.signature

    @property
    def runtime(self) -> str:
        return self.engine.runtime

    @property
    def fixed_chunk(self) -> bool:
        return self.engine.fixed_chunk

    def init_state(self) -> State:
        return self.engine.init_state()

    def run(self, features: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        t0 = time.perf_counter()
        out = self.engine.run(features, state)
        self.times.append(time.perf_counter() - t0)
        return out
