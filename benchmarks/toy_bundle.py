"""Torch-free toy bundles: test fixtures, and a way to run the runtime benchmark before a real export exists.

Two toy models, both ``log_softmax`` of a causal convolution over feature frames whose state ``h`` holds the
last ``K - 1`` frames, written as an ONNX graph with ``onnx.helper`` (and as a TFLite flatbuffer with LiteRT's
schema bindings):

- ``ToyModel``: random weights (``seed``, ``weight_scale``), mostly blank: checks plumbing, never accuracy;
- ``KeyedToyModel``: an *oracle* for ``keyed_emg`` signals, where key ``k`` is a loud burst on one electrode
  (slot ``k`` = band ``k // C``, channel ``k % C``). It emits key ``k`` while that slot's mean log power is above
  a threshold, so on a clean keyed stream it decodes the keys typed (CER near 0). Reliability tests need a
  model whose output is *right* on clean input, so that damage from faults shows up as CER.

``build_toy_bundle`` writes either as a bundle with a manifest (``emgkey.bundle``), hashed, with the runtime
checks a real export would record.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emgkey import charset
from emgkey.bundle import Manifest, ModelFile, RuntimeCheck, StreamingSignature, TensorSpec, sha256_file, write_manifest
from emgkey.features import FeatureConfig
from emgkey.profiles import DeviceProfile, get_profile


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


# Keys of the keyed toy, one per electrode slot (band-major): common letters first.
KEYED_KEYS = "etaoinsrhldcumfpgwybvkxjqz,.'-?/"


@dataclass(frozen=True)
class KeyedToyModel(ToyModel):
    """An oracle for ``keyed_emg``: key ``keys[s]`` while slot ``s``'s mean log10 power exceeds ``threshold``.

    ``logit[keys[s]] = gain * (mean over the last ``kernel`` frames and all bins of x[s] - threshold)``, blank's
    logit is 0, every other class ``-30``: a peaky CTC model, as a trained one is. Averaging 3 frames keeps the
    output from flickering (a double key) where a burst enters or leaves the window.
    """

    kernel: int = 3
    keys: str = KEYED_KEYS
    threshold: float = 2.7  # mean log10 power: rest (5 uV rms) ~1.1, a burst (150 uV rms) ~4.3
    gain: float = 4.0

    def __post_init__(self) -> None:
        slots = self.n_bands * self.channels
        assert len(self.keys) >= slots, f"{slots} electrode slots need {slots} keys, got {len(self.keys)}"
        assert self.kernel >= 1, "kernel >= 1"

    def label_of_slot(self, slot: int) -> int:
        return charset.str_to_labels(self.keys[slot])[0]

    def weights(self) -> tuple[np.ndarray, np.ndarray]:
        w = np.zeros((self.kernel, self.dim, self.num_classes), dtype=np.float32)
        b = np.full(self.num_classes, -30.0, dtype=np.float32)
        b[charset.BLANK] = 0.0
        for slot in range(self.n_bands * self.channels):
            label = self.label_of_slot(slot)
            rows = slice(slot * self.n_freq, (slot + 1) * self.n_freq)
            w[:, rows, label] = self.gain / (self.n_freq * self.kernel)  # the mean over the last `kernel` frames
            b[label] = -self.gain * self.threshold
        return w, b


@dataclass
class KeyedRecording:
    """A keyed test signal: ``emg`` (T, n_bands, C) float32 microvolts and the bursts typed into it."""

    emg: np.ndarray
    keys: list[tuple[str, int, int]]  # (key, first sample, end sample) per burst, in order
    sample_rate_hz: float

    @property
    def target(self) -> str:
        return "".join(k for k, _, _ in self.keys)

    def counts(self, scale_uv_per_count: float) -> np.ndarray:
        """The signal as int16 ADC counts (what an int16 device sends)."""
        return np.clip(np.rint(self.emg / scale_uv_per_count), -32767, 32767).astype(np.int16)


def keyed_emg(
    profile: DeviceProfile | str,
    seconds: float,
    *,
    keys: str = KEYED_KEYS,
    seed: int = 0,
    rest_uv: float = 5.0,
    burst_uv: float = 150.0,
    burst_s: float = 0.12,
    interval_s: tuple[float, float] = (0.3, 0.6),
    lead_s: float = 0.5,
) -> KeyedRecording:
    """Gaussian rest noise (``rest_uv`` rms) with a ``burst_uv`` rms burst on slot ``s`` for each key ``keys[s]``.

    Keys are drawn at random from the slots, one every ``interval_s`` (uniform) after a ``lead_s`` rest; the
    recording is ``seconds`` long. ``KeyedToyModel`` decodes it.
    """
    prof = get_profile(profile) if isinstance(profile, str) else profile
    rate = prof.sample_rate_hz
    nb, C = prof.n_bands, prof.channels_per_band
    T = round(seconds * rate)
    rng = np.random.default_rng(seed)
    emg = (rng.standard_normal((T, nb, C)) * rest_uv).astype(np.float32)  # (T, nb, C)
    n_burst = max(1, round(burst_s * rate))
    typed: list[tuple[str, int, int]] = []
    t = int(lead_s * rate)
    while t + n_burst < T - int(lead_s * rate):
        slot = int(rng.integers(nb * C))
        band, ch = divmod(slot, C)
        emg[t : t + n_burst, band, ch] = rng.standard_normal(n_burst) * burst_uv
        typed.append((keys[slot], t, t + n_burst))
        t += n_burst + int(rng.uniform(*interval_s) * rate)
    return KeyedRecording(emg, typed, rate)


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


def toy_model_of(manifest: Manifest) -> ToyModel:
    """The toy model a toy bundle's manifest describes (for references in tests)."""
    c = manifest.model["config"]
    p, nf = manifest.profile, manifest.features.n_freq
    if c.get("kind") == "keyed":
        return KeyedToyModel(
            p.n_bands,
            p.channels_per_band,
            nf,
            kernel=c["kernel"],
            keys=c["keys"],
            threshold=c["threshold"],
            gain=c["gain"],
        )
    return ToyModel(
        p.n_bands, p.channels_per_band, nf, kernel=c["kernel"], seed=c["seed"], weight_scale=c["weight_scale"]
    )


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
    model: ToyModel | None = None,
) -> Path:
    """Write a toy bundle (manifest + model files, hashed) to ``out`` and return its path.

    Files: ``toy_fp32.onnx`` (streaming; dynamic time axis unless ``fixed_chunk``), ``toy_int8.onnx``
    (weights quantized to 7 bits by onnxruntime's dynamic quantizer, when ``int8``), ``toy_offline_fp32.onnx``
    (the same graph, registered as the offline graph) and, with ``tflite``, ``toy_fp32.tflite``.
    ``runtimes_ok=False`` records every runtime check as failed (for refusal tests). ``model`` overrides the
    random ``ToyModel(kernel, seed, weight_scale)``, e.g. a ``KeyedToyModel`` (its shape must fit the profile).
    """
    prof = get_profile(profile) if isinstance(profile, str) else profile
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    feats = FeatureConfig.for_profile(prof)
    if model is None:
        model = ToyModel(
            prof.n_bands, prof.channels_per_band, feats.n_freq, kernel=kernel, seed=seed, weight_scale=weight_scale
        )
    assert (model.n_bands, model.channels, model.n_freq) == (prof.n_bands, prof.channels_per_band, feats.n_freq), (
        f"toy model {model} does not fit profile {prof.name} with {feats.n_freq} frequency bins"
    )
    kernel = model.kernel
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
    config: dict[str, Any] = {"kernel": kernel, "seed": model.seed, "weight_scale": model.weight_scale}
    if isinstance(model, KeyedToyModel):
        config.update(kind="keyed", keys=model.keys, threshold=model.threshold, gain=model.gain)
    manifest = Manifest(
        model={"name": "toy", "config": config},
        profile=prof,
        features=feats,
        streaming=sig,
        files=files,
        charset={"num_classes": charset.NUM_CLASSES, "blank": charset.BLANK},
        normalization=normalization or {},
        accuracy={"data": "none", "note": "toy bundle: " + ("keyed oracle" if "kind" in config else "random weights")},
        tool={"name": "emgkey.benchmarks.toy_bundle.build_toy_bundle"},
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
        # 7-bit weights, as export.quantize.REDUCE_RANGE (x86 without VNNI saturates with 8: this toy's int8 logits
        # were 3.4 off there and failed `emgkey verify`; 0.02 with 7)
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, reduce_range=True)
        return dst.read_bytes()
    finally:
        root.setLevel(level)
        src.unlink(missing_ok=True)
        dst.unlink(missing_ok=True)
