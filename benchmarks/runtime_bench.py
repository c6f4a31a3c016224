"""Edge runtime benchmark: compute per chunk, algorithmic latency, memory, streamed vs offline CER.

    python -m emgkey.benchmarks.runtime_bench --bundle BUNDLE --out runs/bench_runtime.json \
        [--format onnx] [--precision int8] [--lm LM.arpa] [--data SESSION.hdf5 ...] [--minutes 1]
    python -m emgkey.benchmarks.runtime_bench --toy --out runs/bench_toy.json     # no bundle needed

What it measures, on one stream at ``--threads`` (1 by default, as on a device):

- ``model_ms``: wall time of one engine call on one chunk, p50/p99;
- ``algorithmic_latency_ms``: how late an emission can be, by construction: the frames a chunk waits
  for (``chunk_frames``), the model's look-ahead (``output_delay_frames``), the feature window
  (``n_fft`` samples), plus the measured p99 of model + decode per chunk;
- ``rss_mb``: resident memory of this process after loading and running (no torch is imported);
- ``cer``: streamed CER (the recognizer fed in uneven sample blocks, greedy and beam+LM) against the
  offline CER of the same bundle (the whole feature sequence through the offline graph if the bundle has
  one, else through the streaming graph in one pass); the two should agree within 0.5 point.

EMG comes from ``--data`` session files (emg2qwerty-format HDF5 with ground truth) or, by default, from
the simulator (``emgkey.firmware_sim``) for the bundle's device profile. With ``--toy``, a tiny
torch-free ONNX bundle is built first (``build_toy_bundle``), which checks the pipeline but not accuracy.

The toy bundles here are also the tests' fixtures: an ONNX graph made with ``onnx.helper`` (and a
TFLite flatbuffer written with LiteRT's schema bindings) computing ``log_softmax`` of a causal
convolution over features, whose state ``h`` holds the last ``K - 1`` frames.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from emgkey import charset
from emgkey.bundle import (
    Bundle,
    Manifest,
    ModelFile,
    RuntimeCheck,
    StreamingSignature,
    TensorSpec,
    load_bundle,
    sha256_file,
    write_manifest,
)
from emgkey.features import FeatureConfig, compute_features
from emgkey.metrics import EditCounts, edit_counts
from emgkey.profiles import DeviceProfile, get_profile

log = logging.getLogger("emgkey.runtime_bench")

# ---------------------------------------------------------------------------------------------------------------------
# Toy bundles (no torch): test fixtures, and a way to run this benchmark before a real export exists
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToyModel:
    """``log_probs[t] = log_softmax(sum_k x[t - (K-1) + k] @ W[k] + b)``; state ``h`` = last K-1 frames."""

    n_bands: int
    channels: int
    n_freq: int
    kernel: int = 2
    num_classes: int = charset.NUM_CLASSES
    seed: int = 0
    weight_scale: float = 0.3

    @property
    def dim(self) -> int:
        return self.n_bands * self.channels * self.n_freq

    def weights(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        w = (rng.standard_normal((self.kernel, self.dim, self.num_classes)) * self.weight_scale).astype(np.float32)
        b = np.zeros(self.num_classes, dtype=np.float32)
        b[charset.BLANK] = 2.0  # mostly blank, as a CTC model is
        return w, b

    def reference(self, features: np.ndarray) -> np.ndarray:
        """numpy forward over a whole sequence from zero state: (T, 1, nb, C, F) -> (T, num_classes)."""
        w, b = self.weights()
        x = features.reshape(len(features), -1).astype(np.float64)
        win = np.concatenate([np.zeros((self.kernel - 1, self.dim)), x], axis=0)
        logits = sum(win[k : k + len(x)] @ w[k] for k in range(self.kernel)) + b
        logits = logits - logits.max(axis=1, keepdims=True)
        return (logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))).astype(np.float32)


def toy_onnx_bytes(model: ToyModel, chunk_frames: int | None = None) -> bytes:
    """The toy as an ONNX graph; ``chunk_frames=None`` gives a dynamic time axis."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w, b = model.weights()
    K, D, V = model.kernel, model.dim, model.num_classes
    T: int | str = chunk_frames if chunk_frames is not None else "time"
    inits = [
        numpy_helper.from_array(np.array([-1, D], dtype=np.int64), "shape_td"),
        numpy_helper.from_array(np.array([K - 1, D], dtype=np.int64), "shape_hd"),
        numpy_helper.from_array(np.array([-1, 1, V], dtype=np.int64), "shape_out"),
        numpy_helper.from_array(np.array([K - 1, 1, D], dtype=np.int64), "shape_h"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "axis0"),
        numpy_helper.from_array(np.array([K - 1], dtype=np.int64), "km1"),
        numpy_helper.from_array(b, "bias"),
    ]
    nodes = [
        helper.make_node("Reshape", ["features", "shape_td"], ["x"]),
        helper.make_node("Reshape", ["h", "shape_hd"], ["hp"]),
        helper.make_node("Concat", ["hp", "x"], ["win"], axis=0),
        helper.make_node("Shape", ["x"], ["tlen"], start=0, end=1),
    ]
    terms = []
    for k in range(K):
        inits.append(numpy_helper.from_array(w[k], f"w{k}"))
        inits.append(numpy_helper.from_array(np.array([k], dtype=np.int64), f"k{k}"))
        nodes += [
            helper.make_node("Add", ["tlen", f"k{k}"], [f"end{k}"]),
            helper.make_node("Slice", ["win", f"k{k}", f"end{k}", "axis0"], [f"xs{k}"]),
            helper.make_node("MatMul", [f"xs{k}", f"w{k}"], [f"z{k}"]),
        ]
        terms.append(f"z{k}")
    nodes.append(helper.make_node("Sum", [*terms, "bias"], ["logits"]))
    nodes += [
        helper.make_node("LogSoftmax", ["logits"], ["lp"], axis=-1),
        helper.make_node("Reshape", ["lp", "shape_out"], ["log_probs"]),
        helper.make_node("Add", ["tlen", "km1"], ["hend"]),
        helper.make_node("Slice", ["win", "tlen", "hend", "axis0"], ["hn"]),
        helper.make_node("Reshape", ["hn", "shape_h"], ["h_out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "toy_stream",
        inputs=[
            helper.make_tensor_value_info(
                "features", TensorProto.FLOAT, [T, 1, model.n_bands, model.channels, model.n_freq]
            ),
            helper.make_tensor_value_info("h", TensorProto.FLOAT, [K - 1, 1, D]),
        ],
        outputs=[
            helper.make_tensor_value_info("log_probs", TensorProto.FLOAT, [T, 1, V]),
            helper.make_tensor_value_info("h_out", TensorProto.FLOAT, [K - 1, 1, D]),
        ],
        initializer=inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="emgkey-toy")
    m.ir_version = 8
    onnx.checker.check_model(m)
    return bytes(m.SerializeToString())


def toy_tflite_bytes(model: ToyModel, chunk_frames: int, mangle_names: bool = True) -> bytes:
    """The toy as a TFLite flatbuffer (static shapes), written with LiteRT's schema bindings.

    ``mangle_names`` names tensors and signature entries the way converters do
    (``serving_default_features:0``, ``args_0``, ``output_1``...), to exercise the engine's mapping.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    w, b = model.weights()
    K, D, V, T = model.kernel, model.dim, model.num_classes, chunk_frames
    tensors: list[Any] = []
    buffers: list[Any] = [s.BufferT()]  # buffer 0: the empty sentinel

    def tensor(
        name: str, shape: Sequence[int], data: np.ndarray | None = None, ttype: int = s.TensorType.FLOAT32
    ) -> int:
        t = s.TensorT()
        t.name, t.shape, t.type = name, list(shape), ttype
        if data is not None:
            buf = s.BufferT()
            buf.data = list(np.ascontiguousarray(data).tobytes())
            buffers.append(buf)
            t.buffer = len(buffers) - 1
        tensors.append(t)
        return len(tensors) - 1

    def i32(name: str, values: Sequence[int]) -> int:
        return tensor(name, [len(values)], np.array(values, dtype=np.int32), s.TensorType.INT32)

    op_codes: list[int] = []
    ops: list[Any] = []

    def op(code: int, inputs: list[int], outputs: list[int], opt_type: int = 0, opt: Any = None) -> None:
        if code not in op_codes:
            op_codes.append(code)
        o = s.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = op_codes.index(code), inputs, outputs
        o.builtinOptionsType, o.builtinOptions = opt_type, opt
        ops.append(o)

    def reshape(src: int, shape: Sequence[int], name: str) -> int:
        dst = tensor(name, shape)
        opt = s.ReshapeOptionsT()
        opt.newShape = list(shape)
        op(s.BuiltinOperator.RESHAPE, [src, i32(name + "/shape", shape)], [dst], s.BuiltinOptions.ReshapeOptions, opt)
        return dst

    def slice_(src: int, begin: Sequence[int], size: Sequence[int], name: str) -> int:
        dst = tensor(name, size)
        op(
            s.BuiltinOperator.SLICE,
            [src, i32(name + "/begin", begin), i32(name + "/size", size)],
            [dst],
            s.BuiltinOptions.SliceOptions,
            s.SliceOptionsT(),
        )
        return dst

    in_names = ("serving_default_features:0", "serving_default_h:0") if mangle_names else ("features", "h")
    out_names = ("StatefulPartitionedCall:0", "StatefulPartitionedCall:1") if mangle_names else ("log_probs", "h_out")
    feat = tensor(in_names[0], [T, 1, model.n_bands, model.channels, model.n_freq])
    h = tensor(in_names[1], [K - 1, 1, D])
    x = reshape(feat, [T, D], "x")
    hp = reshape(h, [K - 1, D], "hp")
    win = tensor("win", [K - 1 + T, D])
    cat = s.ConcatenationOptionsT()
    cat.axis = 0
    op(s.BuiltinOperator.CONCATENATION, [hp, x], [win], s.BuiltinOptions.ConcatenationOptions, cat)
    acc = -1
    for k in range(K):
        xs = slice_(win, [k, 0], [T, D], f"xs{k}")
        z = tensor(f"z{k}", [T, V])
        bias = tensor(f"b{k}", [V], b if k == 0 else np.zeros_like(b))
        weights = tensor(f"w{k}", [V, D], np.ascontiguousarray(w[k].T))  # TFLite FC weights are (out, in)
        op(
            s.BuiltinOperator.FULLY_CONNECTED,
            [xs, weights, bias],
            [z],
            s.BuiltinOptions.FullyConnectedOptions,
            s.FullyConnectedOptionsT(),
        )
        if acc < 0:
            acc = z
        else:
            total = tensor(f"sum{k}", [T, V])
            op(s.BuiltinOperator.ADD, [acc, z], [total], s.BuiltinOptions.AddOptions, s.AddOptionsT())
            acc = total
    lp = tensor("lp", [T, V])
    op(s.BuiltinOperator.LOG_SOFTMAX, [acc], [lp], s.BuiltinOptions.LogSoftmaxOptions, s.LogSoftmaxOptionsT())
    log_probs = reshape(lp, [T, 1, V], out_names[0])
    hn = slice_(win, [T, 0], [K - 1, D], "hn")
    h_out = reshape(hn, [K - 1, 1, D], out_names[1])

    sg = s.SubGraphT()
    sg.tensors, sg.inputs, sg.outputs, sg.operators, sg.name = tensors, [feat, h], [log_probs, h_out], ops, "main"
    sig = s.SignatureDefT()
    sig.signatureKey, sig.subgraphIndex = "serving_default", 0

    def tmap(name: str, idx: int) -> Any:
        m = s.TensorMapT()
        m.name, m.tensorIndex = name, idx
        return m

    sig_in = ("args_0", "args_1") if mangle_names else ("features", "h")
    sig_out = ("output_0", "output_1") if mangle_names else ("log_probs", "h_out")
    sig.inputs = [tmap(sig_in[0], feat), tmap(sig_in[1], h)]
    sig.outputs = [tmap(sig_out[0], log_probs), tmap(sig_out[1], h_out)]
    codes = []
    for c in op_codes:
        oc = s.OperatorCodeT()
        oc.builtinCode = c
        oc.deprecatedBuiltinCode = min(c, 127)
        oc.version = 1
        codes.append(oc)
    model_t = s.ModelT()
    model_t.version, model_t.operatorCodes, model_t.subgraphs = 3, codes, [sg]
    model_t.buffers, model_t.signatureDefs, model_t.description = buffers, [sig], "emgkey toy"
    builder = flatbuffers.Builder(1024)
    builder.Finish(model_t.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def build_toy_bundle(
    out: str | Path,
    profile: DeviceProfile | str = "armband8",
    *,
    chunk_frames: int = 4,
    kernel: int = 2,
    lookahead_frames: int = 0,
    output_delay_frames: int | None = None,
    fixed_chunk: bool = False,
    tflite: bool = False,
    int8: bool = True,
    runtimes_ok: bool = True,
    normalization: dict[str, Any] | None = None,
    seed: int = 0,
    weight_scale: float = 0.3,
) -> Path:
    """Write a toy bundle (manifest + model files, hashed) to ``out`` and return its path.

    Files: ``toy_fp32.onnx`` (streaming; dynamic time axis unless ``fixed_chunk``), ``toy_int8.onnx``
    (weights quantized by onnxruntime's dynamic quantizer, when ``int8``), ``toy_offline_fp32.onnx``
    (the same graph, registered as the offline graph) and, with ``tflite``, ``toy_fp32.tflite``.
    ``runtimes_ok=False`` records every runtime check as failed (for refusal tests).
    """
    prof = get_profile(profile) if isinstance(profile, str) else profile
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    feats = FeatureConfig.for_profile(prof)
    model = ToyModel(
        prof.n_bands, prof.channels_per_band, feats.n_freq, kernel=kernel, seed=seed, weight_scale=weight_scale
    )
    m = chunk_frames
    sig = StreamingSignature(
        chunk_frames=m,
        lookahead_frames=lookahead_frames,
        output_delay_frames=lookahead_frames if output_delay_frames is None else output_delay_frames,
        features=TensorSpec("features", (m, 1, prof.n_bands, prof.channels_per_band, feats.n_freq)),
        states=(TensorSpec("h", (kernel - 1, 1, model.dim)),),
        log_probs=TensorSpec("log_probs", (m, 1, model.num_classes)),
    )
    files: list[ModelFile] = []

    def add(name: str, data: bytes, fmt: str, precision: str, graph: str, runtime: str) -> None:
        path = out / name
        path.write_bytes(data)
        check = RuntimeCheck(
            runtime,
            "toy",
            supported=runtimes_ok,
            max_abs_logprob_diff=0.0,
            argmax_agreement=1.0,
            note="" if runtimes_ok else "toy: marked failed",
        )
        files.append(
            ModelFile(
                path=name,
                sha256=sha256_file(path),
                bytes=path.stat().st_size,
                format=fmt,
                precision=precision,
                graph=graph,
                runtimes=[check],
            )
        )

    fp32 = toy_onnx_bytes(model, m if fixed_chunk else None)
    add("toy_fp32.onnx", fp32, "onnx", "fp32", "streaming", "onnxruntime")
    add("toy_offline_fp32.onnx", _toy_offline_bytes(model), "onnx", "fp32", "offline", "onnxruntime")
    if int8:
        add("toy_int8.onnx", _quantize_onnx(fp32, out), "onnx", "int8", "streaming", "onnxruntime")
    if tflite:
        data = toy_tflite_bytes(model, m)
        add("toy_fp32.tflite", data, "tflite", "fp32", "streaming", "ai-edge-litert")
        files[-1].runtimes.append(RuntimeCheck("tflite-runtime", "toy", supported=runtimes_ok))
    manifest = Manifest(
        model={"name": "toy", "config": {"kernel": kernel, "seed": seed, "weight_scale": weight_scale}},
        profile=prof,
        features=feats,
        streaming=sig,
        files=files,
        charset={"num_classes": charset.NUM_CLASSES, "blank": charset.BLANK},
        normalization=normalization or {},
        accuracy={"data": "none", "note": "toy bundle: random weights"},
        tool={"name": "emgkey.benchmarks.runtime_bench.build_toy_bundle"},
    )
    write_manifest(out, manifest)
    return out


def _toy_offline_bytes(model: ToyModel) -> bytes:
    """The streaming graph with its state pinned to zeros: features -> log_probs over a whole window."""
    import onnx
    from onnx import numpy_helper

    g = onnx.load_from_string(toy_onnx_bytes(model, None))
    h = next(i for i in g.graph.input if i.name == "h")
    g.graph.input.remove(h)
    g.graph.initializer.append(numpy_helper.from_array(np.zeros((model.kernel - 1, 1, model.dim), np.float32), "h"))
    g.graph.output.remove(next(o for o in g.graph.output if o.name == "h_out"))
    onnx.checker.check_model(g)
    return bytes(g.SerializeToString())


def _quantize_onnx(fp32: bytes, tmp_dir: Path) -> bytes:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = tmp_dir / ".toy_q_src.onnx", tmp_dir / ".toy_q_dst.onnx"
    src.write_bytes(fp32)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs advice about real models to the root logger
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
        return dst.read_bytes()
    finally:
        root.setLevel(level)
        src.unlink(missing_ok=True)
        dst.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Recording:
    name: str
    emg: np.ndarray  # (T, n_bands, C) float32 microvolts
    target: str  # keys as typed, ⌫ included (emg2qwerty's CER target)


def _sim_recordings(profile: DeviceProfile, minutes: float, users: int, seed: int) -> list[Recording]:
    from emgkey.firmware_sim.simulate import simulate_session
    from emgkey.labels import LabelData

    out = []
    for user in range(users):
        s = simulate_session(profile, user_id=user, session_idx=0, minutes=minutes, seed=seed)
        target = LabelData.from_keystrokes(s.keystrokes).label_str
        out.append(Recording(f"sim_user{user}", s.emg_uv(), target))
    return out


def _file_recordings(paths: Sequence[str], profile: DeviceProfile) -> list[Recording]:
    from emgkey.session import SessionFile

    out = []
    for p in paths:
        with SessionFile(p) as f:
            if f.profile.name != profile.name:
                raise SystemExit(f"{p} was recorded with {f.profile.name!r}, the bundle is for {profile.name!r}")
            out.append(Recording(Path(p).stem, f.read(), f.ground_truth().label_str))
    return out


def _percentiles_ms(xs: Sequence[float]) -> dict[str, float]:
    if not xs:
        return {"p50": float("nan"), "p99": float("nan"), "mean": float("nan"), "n": 0}
    a = np.asarray(xs, dtype=np.float64) * 1e3
    return {
        "p50": float(np.percentile(a, 50)),
        "p99": float(np.percentile(a, 99)),
        "mean": float(a.mean()),
        "n": len(a),
    }


def _rss_mb() -> dict[str, float]:
    """Current (``/proc/self/statm``) and peak (``getrusage``) resident memory of this process."""
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    current = float("nan")
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        current = pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        pass
    return {"current_mb": current, "peak_mb": peak_kb / 1024.0}


_CHILD = """
import json, sys, time
import numpy as np
from emgkey.bundle import load_bundle
from emgkey.edge_runtime.cli import make_decoder_factory
from emgkey.edge_runtime.engines import open_engine
from emgkey.edge_runtime.recognizer import Recognizer, RecognizerConfig, decode_samples
a = json.loads(sys.argv[1])
def statm():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
def peak():  # VmHWM: ru_maxrss would include the parent's peak, inherited at fork
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")
base = statm()
b = load_bundle(a["bundle"]); m = b.manifest
eng = open_engine(b, precision=a["precision"], format=a["format"], threads=a["threads"])
fac = make_decoder_factory(a["decoder"], lm_path=a["lm"], lm_backend=a["lm_backend"])
rec = Recognizer(eng, m.features, fac, m, RecognizerConfig(max_buffered_s=3600.0))
loaded = statm()
emg = np.load(a["emg"])
t0 = time.perf_counter()
decode_samples(rec, emg, [int(m.profile.samples_per_packet)])
took = time.perf_counter() - t0
print(json.dumps({"python_numpy_mb": base, "loaded_mb": loaded, "after_run_mb": statm(),
                  "peak_mb": peak(),
                  "realtime_factor": took / (len(emg) / m.profile.sample_rate_hz),
                  "torch_imported": "torch" in sys.modules}))
"""


def _runtime_process(args: argparse.Namespace, emg: np.ndarray, decoder: str) -> dict[str, Any]:
    """RSS and speed of a fresh process that holds only what ``emgkey run`` holds: bundle, engine, LM, decoder."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "emg.npy"
        np.save(path, emg)
        spec = {
            "bundle": str(args.bundle),
            "precision": args.precision,
            "format": args.format,
            "threads": args.threads,
            "decoder": decoder,
            "lm": args.lm if decoder == "beam" else None,
            "lm_backend": args.lm_backend,
            "emg": str(path),
        }
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, json.dumps(spec)], capture_output=True, text=True, check=True
        )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _offline_emissions(bundle: Bundle, args: argparse.Namespace, emg: np.ndarray) -> tuple[np.ndarray, str]:
    """Whole-recording emissions: the offline graph if the bundle has one, else the streaming graph chunked."""
    from emgkey.edge_runtime.engines import has_offline_graph, open_engine, open_offline_engine, run_streaming
    from emgkey.edge_runtime.recognizer import FeatureNormalization

    m = bundle.manifest
    feats = compute_features(emg, m.features)  # (F, nb, C, n_freq)
    frame_shape = (m.profile.n_bands, m.profile.channels_per_band, m.features.n_freq)
    norm = FeatureNormalization.from_manifest(m.normalization, frame_shape, m.profile.adc_scale_uv_per_count)
    feats = norm(feats)[:, None]  # (F, 1, nb, C, n_freq)
    same = [f for f in m.files if f.graph == "offline" and (f.format, f.precision) == (args.format, args.precision)]
    if has_offline_graph(bundle) and same and args.format == "onnx":
        engine = open_offline_engine(bundle, precision=args.precision, threads=args.threads)
        return engine.run(feats), f"offline graph ({args.precision})"
    stream_engine = open_engine(bundle, precision=args.precision, format=args.format, threads=args.threads)
    return run_streaming(stream_engine, feats), "streaming graph over offline features"


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    from emgkey.edge_runtime.cli import make_decoder_factory
    from emgkey.edge_runtime.engines import TimedEngine, open_engine
    from emgkey.edge_runtime.recognizer import Recognizer, RecognizerConfig, decode_samples

    rss_start = _rss_mb()
    bundle = load_bundle(args.bundle)
    m = bundle.manifest
    sig, fc = m.streaming, m.features
    engine = open_engine(bundle, precision=args.precision, format=args.format, threads=args.threads)
    rss_loaded = _rss_mb()
    log.info(
        "bundle %s: %s %s on %s, %d thread(s)", args.bundle, args.format, args.precision, engine.runtime, args.threads
    )

    recs = (
        _file_recordings(args.data, m.profile)
        if args.data
        else _sim_recordings(m.profile, args.minutes, args.users, args.seed)
    )
    log.info("%d recording(s), %.1f s of EMG", len(recs), sum(len(r.emg) for r in recs) / fc.sample_rate_hz)

    # 1. Model compute per chunk, on real features, state carried, after a warm-up.
    feats = compute_features(recs[0].emg, fc)[:, None]  # (F, 1, nb, C, n_freq)
    m_frames = sig.chunk_frames
    n_chunks = min(args.chunks, len(feats) // m_frames)
    state = engine.init_state()
    times = []
    for i in range(n_chunks + 20):
        x = feats[(i % max(n_chunks, 1)) * m_frames : (i % max(n_chunks, 1) + 1) * m_frames]
        if len(x) < m_frames:
            x = np.resize(feats[:m_frames], (m_frames, *feats.shape[1:]))
        t0 = time.perf_counter()
        _, state = engine.run(x, state)
        if i >= 20:
            times.append(time.perf_counter() - t0)
    model_ms = _percentiles_ms(times)

    # 2. Streamed vs offline decoding, greedy and beam (+LM), uneven sample blocks as a serial link gives.
    num_classes, blank = int(sig.log_probs.shape[-1]), int(m.charset.get("blank", charset.BLANK))
    decoders: dict[str, Any] = {"greedy": make_decoder_factory("greedy", blank=blank, num_classes=num_classes)}
    beam_name = "beam+lm" if args.lm else "beam"
    decoders[beam_name] = make_decoder_factory(
        "beam",
        lm_path=args.lm,
        lm_backend=args.lm_backend,
        beam_size=args.beam_size,
        blank=blank,
        num_classes=num_classes,
    )
    blocks = [7, 23, 40, 3, 100, 16, 1, 64]
    results: dict[str, Any] = {}
    offline_cache: dict[str, tuple[np.ndarray, str]] = {}
    for name, factory in decoders.items():
        streamed, offline = EditCounts(), EditCounts()
        decode_times: list[float] = []
        e2e: list[float] = []
        for rec in recs:
            timed = TimedEngine(engine, [])
            recognizer = Recognizer(timed, fc, factory, m, RecognizerConfig(max_buffered_s=3600.0))
            em, final = decode_samples(recognizer, rec.emg, blocks)
            streamed = streamed + edit_counts(final.raw, rec.target)
            if rec.name not in offline_cache:
                offline_cache[rec.name] = _offline_emissions(bundle, args, rec.emg)
            off_em, _ = offline_cache[rec.name]
            dec = factory()
            dec.reset()
            t0 = time.perf_counter()
            labels = dec.decode(off_em, finish=True)
            decode_times.append((time.perf_counter() - t0) / max(len(off_em), 1))
            offline = offline + edit_counts(charset.labels_to_str(labels), rec.target)
            n = min(len(em), len(off_em))
            e2e.append(float(np.max(np.abs(em[:n] - off_em[:n]))) if n else 0.0)
        results[name] = {
            "streamed": streamed.as_dict(),
            "offline": offline.as_dict(),
            "cer_gap_points": abs(streamed.cer - offline.cer),
            "decode_ms_per_frame": float(np.mean(decode_times) * 1e3),
            "decode_ms_per_chunk": float(np.mean(decode_times) * 1e3 * m_frames),
            "max_abs_emission_diff_streamed_vs_offline": max(e2e) if e2e else 0.0,
            "offline_emissions": offline_cache[recs[0].name][1],
        }
        log.info(
            "%-8s CER streamed %.2f  offline %.2f  (%s)",
            name,
            streamed.cer,
            offline.cer,
            offline_cache[recs[0].name][1],
        )

    # 2b. Optional grid over the LM weight and insertion bonus, on the offline emissions (streamed == offline).
    tuning = []
    if args.tune and args.lm:
        from emgkey.edge_runtime.lm import load_lm

        lm = load_lm(args.lm, args.lm_backend)
        for w in args.tune_weights:
            for bonus in args.tune_bonuses:
                counts = EditCounts()
                for rec in recs:
                    factory = make_decoder_factory(
                        "beam", lm_path=None, beam_size=args.beam_size, blank=blank, num_classes=num_classes
                    )
                    dec = factory()
                    dec.lm, dec.config = lm, replace(dec.config, lm_weight=w, insertion_bonus=bonus)
                    dec.reset()
                    labels = dec.decode(offline_cache[rec.name][0], finish=True)
                    counts = counts + edit_counts(charset.labels_to_str(labels), rec.target)
                tuning.append({"lm_weight": w, "insertion_bonus": bonus, **counts.as_dict()})
                log.info("tune lm_weight %.2f bonus %.2f: CER %.2f", w, bonus, counts.cer)

    # 3. The runtime alone, in a fresh process (no simulator, no benchmark state): memory and speed.
    process = {name: _runtime_process(args, recs[0].emg, name.split("+")[0]) for name in decoders}

    # 4. Latency by construction (+ measured compute).
    frame_s = fc.hop / fc.sample_rate_hz
    window_s = fc.n_fft / fc.sample_rate_hz
    chunk_wait_s = (m_frames - 1) * frame_s + window_s  # the chunk's oldest sample waits for the chunk to fill
    lookahead_s = sig.output_delay_frames * frame_s
    worst_decode = max(r["decode_ms_per_chunk"] for r in results.values())
    latency = {
        "chunk_wait_ms": chunk_wait_s * 1e3,
        "lookahead_ms": lookahead_s * 1e3,
        "model_p99_ms": model_ms["p99"],
        "decode_per_chunk_ms_worst": worst_decode,
        "algorithmic_latency_ms": (chunk_wait_s + lookahead_s) * 1e3 + model_ms["p99"] + worst_decode,
        "realtime_factor_model": model_ms["mean"] / (m_frames * frame_s * 1e3),
    }
    return {
        "bundle": str(args.bundle),
        "model": m.model.get("name"),
        "profile": m.profile.name,
        "format": args.format,
        "precision": args.precision,
        "runtime": engine.runtime,
        "threads": args.threads,
        "chunk_frames": m_frames,
        "frame_rate_hz": fc.frame_rate_hz,
        "data": [r.name for r in recs] if args.data else f"simulator: {args.users} user(s) x {args.minutes} min",
        "target_chars": sum(len(r.target) for r in recs),
        "model_ms_per_chunk": model_ms,
        "latency": latency,
        "decoding": results,
        "lm_tuning": tuning,
        "runtime_process": process,
        "rss_benchmark_process": {"start": rss_start, "after_load": rss_loaded, "end": _rss_mb()},
        "torch_imported": "torch" in sys.modules,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }


def _summary(r: dict[str, Any]) -> str:
    lat, mm = r["latency"], r["model_ms_per_chunk"]
    lines = [
        f"{r['model']} ({r['profile']}) {r['format']} {r['precision']} on {r['runtime']}, {r['threads']} thread(s)",
        f"model per chunk ({r['chunk_frames']} frames): p50 {mm['p50']:.3f} ms, p99 {mm['p99']:.3f} ms "
        f"(real-time factor {lat['realtime_factor_model']:.4f})",
        f"algorithmic latency {lat['algorithmic_latency_ms']:.1f} ms = chunk wait {lat['chunk_wait_ms']:.1f} + "
        f"look-ahead {lat['lookahead_ms']:.1f} + model p99 {lat['model_p99_ms']:.2f} + decode "
        f"{lat['decode_per_chunk_ms_worst']:.2f}",
    ]
    for name, proc in r["runtime_process"].items():
        lines.append(
            f"runtime process ({name}): RSS {proc['after_run_mb']:.0f} MB (peak {proc['peak_mb']:.0f} MB; python+numpy "
            f"{proc['python_numpy_mb']:.0f} MB), real-time factor {proc['realtime_factor']:.3f}, "
            f"torch imported: {proc['torch_imported']}"
        )
    if r.get("lm_tuning"):
        best = min(r["lm_tuning"], key=lambda t: t["cer"])
        lines.append(
            f"LM grid: best CER {best['cer']:.2f} at lm_weight {best['lm_weight']}, bonus {best['insertion_bonus']}"
        )
    for name, d in r["decoding"].items():
        lines.append(
            f"{name:8s} CER streamed {d['streamed']['cer']:6.2f}  offline {d['offline']['cer']:6.2f}  "
            f"(gap {d['cer_gap_points']:.2f} pt)  decode {d['decode_ms_per_frame']:.3f} ms/frame"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--bundle", help="bundle folder")
    src.add_argument("--toy", action="store_true", help="build and benchmark a toy bundle (pipeline check only)")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--format", choices=("onnx", "tflite"), default="onnx")
    p.add_argument("--precision", choices=("int8", "fp32"), default="int8")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--lm", default=None, help="ARPA LM for the beam decoder (without: beam search alone)")
    p.add_argument("--lm-backend", choices=("auto", "kenlm", "python"), default="auto")
    p.add_argument("--beam-size", type=int, default=None)
    p.add_argument("--data", nargs="*", default=None, help="session HDF5 files (default: simulate)")
    p.add_argument("--minutes", type=float, default=1.0, help="simulated minutes per user")
    p.add_argument("--users", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", default="armband8", help="device profile of the --toy bundle")
    p.add_argument("--chunks", type=int, default=500, help="model calls timed")
    p.add_argument("--tune", action="store_true", help="grid-search --lm weight and insertion bonus (offline)")
    p.add_argument("--tune-weights", type=float, nargs="+", default=[0.4, 0.6, 0.8, 1.0, 1.2])
    p.add_argument("--tune-bonuses", type=float, nargs="+", default=[0.0, 1.0, 2.0, 3.0])
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.toy:
        out_dir = Path(args.out).with_suffix("")
        args.bundle = str(
            build_toy_bundle(out_dir.parent / (out_dir.name + "_toy_bundle"), args.profile, weight_scale=0.05)
        )
    result = run_benchmark(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(_summary(result))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
