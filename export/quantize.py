"""Post-training int8 quantization of ONNX graphs, measured rather than assumed.

Three methods, each applied to the streaming graph of a student whose RNNs were
rewritten as matrix products (``onnx_export.prepare_for_export``), all with 7-bit weights
(``REDUCE_RANGE``):

- ``ort_static``: ONNX Runtime ``quantize_static``, QDQ format, per-channel int8
  weights, uint8 activations calibrated (min/max) on windows of real training data,
  only around MatMul/Gemm/Conv (quantizing every elementwise op of an unrolled RNN
  made it 6x slower on this machine and no more accurate);
- ``ort_dynamic``: ``quantize_dynamic``, per-channel int8 weights, activations
  quantized at run time (``MatMulInteger``/``ConvInteger``). ORT's dynamic quantizer
  mishandles ``Gemm`` with ``transB`` (it fails, or writes a graph that does not load),
  so ``gemm_to_matmul`` first rewrites every Gemm as MatMul + Add;
- ``nncf``: ``nncf.quantize`` on the ONNX model with the same calibration feeds.

``int8_report`` inspects a quantized file: every MatMul/Gemm/Conv/GRU/LSTM weight
must come from an 8-bit initializer (through a DequantizeLinear, or as the integer
operand of MatMulInteger/ConvInteger/DynamicQuantizeLSTM). A method that leaves
any such weight in float is rejected, whatever its accuracy: that is how ONNX
``GRU``/``LSTM`` nodes silently stay float under static quantization.

Which method ships is decided by ``bundle_writer`` from held-out CER and argmax
agreement with the fp32 graph; every candidate's numbers go to the manifest.
"""

from __future__ import annotations

import collections
import logging
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# Weights are quantized to 7 bits (int8 values of size <= 64) by every method. x86 CPUs without VNNI (AVX2 only:
# AMD Zen 3, Intel before Cascade Lake) multiply uint8 activations by int8 weights with an instruction that adds
# pairs of products in int16 and saturates; full-range weights overflow it. On such a 2-core Zen 3 box no method's
# 8-bit 16-user armband8 TCN stayed within `emgkey verify`'s int8 tolerance of fp32 (max |dlogp| 8.7-13, CER +1.8 to
# +10.4 points on the selection windows); docs/export.md has the measurement with 7 bits. A bundle is quantized once
# and may run on any CPU (on VNNI and ARM, 8 bits would be safe).
REDUCE_RANGE = True
_WEIGHTS = "int8 per-channel" + (", 7-bit range" if REDUCE_RANGE else "")  # the recipes' "weights"

Feed = dict[str, np.ndarray]
METHODS: tuple[str, ...] = ("ort_static", "ort_dynamic", "nncf")

# Nodes whose weight operand must be 8-bit in an int8 artifact, and which input holds it.
_WEIGHT_INPUTS: dict[str, tuple[int, ...]] = {
    "MatMul": (1,),
    "Gemm": (1,),
    "Conv": (1,),
    "ConvTranspose": (1,),
    "MatMulInteger": (1,),
    "ConvInteger": (1,),
    "QLinearMatMul": (3,),
    "QLinearConv": (3,),
    "MatMulIntegerToFloat": (1,),
    "GRU": (1, 2),
    "LSTM": (1, 2),
    "RNN": (1, 2),
    "DynamicQuantizeLSTM": (1, 2),
}
_PASS_THROUGH = {"DequantizeLinear", "Transpose", "Reshape", "Identity", "Squeeze", "Unsqueeze", "Cast"}
_EIGHT_BIT = {"int8", "uint8"}


# ---- graph inspection ---------------------------------------------------------------------------


def _np_dtype(data_type: int) -> str:
    import onnx

    return str(onnx.helper.tensor_dtype_to_np_dtype(data_type))


def int8_report(path: str | Path) -> dict[str, Any]:
    """What a quantized ONNX file really stores.

    ``weights_8bit``: every MatMul/Gemm/Conv/RNN weight comes from an int8/uint8
    initializer. ``float_weights``: those that do not (op, node, elements).
    ``initializer_bytes``: by dtype. ``op_counts``: quantization-relevant nodes.
    """
    import onnx

    m = onnx.load(str(path))
    inits = {t.name: t for t in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    by_dtype: collections.Counter[str] = collections.Counter()
    for t in m.graph.initializer:
        n = int(np.prod(t.dims)) if len(t.dims) else 1
        by_dtype[_np_dtype(t.data_type)] += n * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize

    def source(name: str) -> onnx.TensorProto | None:
        seen = 0
        while name not in inits and seen < 8:
            node = producer.get(name)
            if node is None or node.op_type not in _PASS_THROUGH:
                return None
            name, seen = node.input[0], seen + 1
        return inits.get(name)

    float_w: list[dict[str, Any]] = []
    eight_w: list[dict[str, Any]] = []
    for node in m.graph.node:
        for idx in _WEIGHT_INPUTS.get(node.op_type, ()):
            if idx >= len(node.input) or not node.input[idx]:
                continue
            t = source(node.input[idx])
            if t is None:  # activation x activation (none in these models) or computed weights
                continue
            dtype = _np_dtype(t.data_type)
            entry = {"op": node.op_type, "node": node.name, "elements": int(np.prod(t.dims)), "dtype": dtype}
            (eight_w if dtype in _EIGHT_BIT else float_w).append(entry)
    ops = collections.Counter(n.op_type for n in m.graph.node)
    interesting = set(_WEIGHT_INPUTS) | {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
    return {
        "weights_8bit": bool(eight_w) and not float_w,
        "weight_nodes": len(eight_w) + len(float_w),
        "float_weights": float_w,
        "weight_elements_8bit": sum(e["elements"] for e in eight_w),
        "weight_elements_float": sum(e["elements"] for e in float_w),
        "initializer_bytes": dict(by_dtype),
        "op_counts": {k: v for k, v in sorted(ops.items()) if k in interesting},
        "bytes": Path(path).stat().st_size,
    }


def initializer_bytes(path: str | Path) -> int:
    return int(sum(int8_report(path)["initializer_bytes"].values()))


# ---- graph rewrites -----------------------------------------------------------------------------


def gemm_to_matmul(src: str | Path, dst: str | Path) -> int:
    """Rewrite ``Gemm(A, B, C)`` with a constant ``B`` as ``MatMul(A, B') + C``; returns how many.

    ``B'`` is ``B`` transposed once when ``transB`` is set (shared by every Gemm that
    uses it: the unrolled recurrence reuses one weight per step). Needed by ORT's
    dynamic quantizer, which fails on ``Gemm`` nodes.
    """
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(src))
    inits = {t.name: t for t in m.graph.initializer}
    transposed: dict[str, str] = {}
    new_nodes = []
    count = 0
    for node in m.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        ok = (
            node.op_type == "Gemm"
            and node.input[1] in inits
            and attrs.get("transA", 0) == 0
            and float(attrs.get("alpha", 1.0)) == 1.0
            and float(attrs.get("beta", 1.0)) == 1.0
        )
        if not ok:
            new_nodes.append(node)
            continue
        w = node.input[1]
        if attrs.get("transB", 0):
            if w not in transposed:
                arr = numpy_helper.to_array(inits[w]).T.copy()
                name = f"{w}__T"
                m.graph.initializer.append(numpy_helper.from_array(arr, name))
                transposed[w] = name
            w = transposed[w]
        mm_out = node.output[0] + "__mm" if len(node.input) > 2 and node.input[2] else node.output[0]
        new_nodes.append(onnx.helper.make_node("MatMul", [node.input[0], w], [mm_out], name=node.name + "_MatMul"))
        if mm_out != node.output[0]:
            new_nodes.append(
                onnx.helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]], name=node.name + "_Add")
            )
        count += 1
    del m.graph.node[:]
    m.graph.node.extend(new_nodes)
    # Weights only a transposed copy uses now are dead: drop them.
    used = {i for n in m.graph.node for i in n.input}
    keep = [t for t in m.graph.initializer if t.name in used or t.name in {o.name for o in m.graph.output}]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    onnx.checker.check_model(m)
    onnx.save(m, str(dst))
    return count


def _preprocess(src: Path, dst: Path) -> None:
    """ORT's recommended pre-pass (shape inference), without graph fusions that create Gemms."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(src), str(dst), skip_optimization=True, skip_onnx_shape=False, skip_symbolic_shape=False)


class _Reader:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over a list of feeds."""

    def __init__(self, feeds: Sequence[Feed]) -> None:
        self.feeds = list(feeds)
        self._it = iter(self.feeds)

    def get_next(self) -> Feed | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self.feeds)


# ---- the methods --------------------------------------------------------------------------------


def quantize_onnx(
    fp32_path: str | Path, out_path: str | Path, method: str, calibration: Sequence[Feed] | None = None
) -> dict[str, Any]:
    """Quantize ``fp32_path`` with ``method`` into ``out_path``; returns the recipe that was applied.

    Raises whatever the quantizer raises; ``quantize_candidates`` turns that into a record.
    """
    if method not in METHODS:
        raise ValueError(f"unknown quantization method {method!r}; known: {list(METHODS)}")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="emgkey-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        if method == "ort_static":
            from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

            assert calibration, "static quantization needs calibration feeds"
            _preprocess(fp32_path, pre)
            quantize_static(
                str(pre),
                str(out_path),
                _Reader(calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul", "Gemm", "Conv"],
                calibrate_method=CalibrationMethod.MinMax,
                reduce_range=REDUCE_RANGE,
                # An unrolled RNN reuses each bias at every step with a different input scale: int32
                # biases would be stored once per step. Float biases are stored once.
                extra_options={"QuantizeBias": False},
            )
            recipe: dict[str, Any] = {
                "tool": "onnxruntime.quantization.quantize_static",
                "format": "QDQ",
                "weights": _WEIGHTS,
                "activations": "uint8 per-tensor, min/max calibrated",
                "ops": ["MatMul", "Gemm", "Conv"],
                "bias": "float (shared by the unrolled steps)",
                "calibration_feeds": len(calibration),
            }
        elif method == "ort_dynamic":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            mm = Path(tmp) / "matmul.onnx"
            n = gemm_to_matmul(fp32_path, mm)
            _preprocess(mm, pre)
            quantize_dynamic(
                str(pre), str(out_path), per_channel=True, weight_type=QuantType.QInt8, reduce_range=REDUCE_RANGE
            )
            recipe = {
                "tool": "onnxruntime.quantization.quantize_dynamic",
                "weights": _WEIGHTS,
                "activations": "uint8 quantized at run time",
                "gemm_rewritten_as_matmul": n,
            }
        else:  # nncf
            import nncf
            import onnx

            assert calibration, "NNCF quantization needs calibration feeds"
            model = onnx.load(str(fp32_path))
            from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

            # NNCF's "overflow fix" is the same 7-bit weight range; its default applies it to the first layer only
            overflow = OverflowFix.ENABLE if REDUCE_RANGE else OverflowFix.FIRST_LAYER
            q = nncf.quantize(
                model,
                nncf.Dataset(list(calibration)),
                subset_size=len(calibration),
                advanced_parameters=AdvancedQuantizationParameters(overflow_fix=overflow),
            )
            onnx.save(q, str(out_path))
            recipe = {
                "tool": "nncf.quantize (ONNX backend)",
                "preset": "performance (symmetric int8)",
                "weights": _WEIGHTS,
                "activations": "int8/uint8 calibrated",
                "calibration_feeds": len(calibration),
            }
    from emgkey.export.onnx_export import compact_names

    compact_names(out_path)  # quantizers name every Q/DQ tensor after its long source name
    recipe["method"] = method
    recipe["seconds"] = round(time.perf_counter() - t0, 2)
    return recipe


def quantize_candidates(
    fp32_path: str | Path,
    out_dir: str | Path,
    calibration: Sequence[Feed],
    methods: Iterable[str] = METHODS,
    stem: str = "model",
) -> list[dict[str, Any]]:
    """Try each method; returns one record per method: ``{"method", "path" | None, "recipe", "report", "error"}``.

    A method that fails or leaves a weight in float gets ``path: None`` and says why.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for method in methods:
        path = out_dir / f"{stem}_{method}.onnx"
        rec: dict[str, Any] = {"method": method, "path": None, "recipe": {}, "report": {}, "error": ""}
        try:
            rec["recipe"] = quantize_onnx(fp32_path, path, method, calibration)
            rec["report"] = int8_report(path)
            import onnxruntime as ort

            ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # it must load
        except Exception as exc:  # quantizers raise anything; the record says what
            rec["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            log.warning("int8 %s of %s failed: %s", method, Path(fp32_path).name, rec["error"])
            path.unlink(missing_ok=True)
            records.append(rec)
            continue
        if not rec["report"]["weights_8bit"]:
            floats = [f"{w['op']}:{w['node']}" for w in rec["report"]["float_weights"]][:5]
            rec["error"] = f"weights left in float: {floats}"
            path.unlink(missing_ok=True)
        else:
            rec["path"] = str(path)
        records.append(rec)
    return records


def copy_with_metadata(src: str | Path, dst: str | Path, meta: Mapping[str, Any] | None) -> None:
    shutil.copyfile(src, dst)
    if meta is not None:
        from emgkey.export.onnx_export import set_metadata

        set_metadata(dst, meta)
