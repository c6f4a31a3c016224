"""TFLite export through ``litert-torch`` at a fixed chunk, fp32 and int8 (``ai-edge-quantizer``).

The streaming graph keeps the StreamingSignature's names: the TFLite signature
``serving_default`` takes ``features`` and each state by name and returns
``log_probs`` and ``<state>_out`` (a keyword-argument wrapper gives
``litert_torch.convert`` the names). Models are prepared as for ONNX
(``onnx_export.prepare_for_export``: recurrent layers as matrix products).

int8 recipes (``ai_edge_quantizer.recipe``):

- ``dynamic_wi8_afp32``: int8 channel-wise weights, float activations quantized at
  run time (integer kernels);
- ``weight_only_wi8_afp32``: int8 weights dequantized to float at load (float kernels);
- ``static_wi8_ai8``: int8 weights and calibrated int8 activations, the graph's
  inputs and outputs int8 as well (``verify``'s runners quantize and dequantize them
  from the tensors' own parameters).

``tflite-runtime`` 2.14 is known to compute dynamic-int8 GRU/LSTM models from
ai-edge-quantizer wrongly (and cannot load PT2E dynamic ones); that is not
assumed here either way: ``emgkey verify`` runs every file on every installed
runtime and records what disagrees as unsupported.

A conversion or quantization that fails raises ``TFLiteExportError`` with the
reason, which the bundle records instead of a file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from emgkey.export.onnx_export import StreamingWrapper, example_inputs, streaming_signature
from emgkey.train.models.common import StreamingModel

log = logging.getLogger(__name__)

RECIPES: tuple[str, ...] = ("dynamic_wi8_afp32", "weight_only_wi8_afp32", "static_wi8_ai8")
SIGNATURE_KEY = "serving_default"

# TFLite builtin ops whose constant operands are weights that must be 8-bit in an int8 file.
_WEIGHT_OPS = {
    "FULLY_CONNECTED",
    "CONV_2D",
    "DEPTHWISE_CONV_2D",
    "BATCH_MATMUL",
    "CONV_3D",
    "TRANSPOSE_CONV",
    "UNIDIRECTIONAL_SEQUENCE_LSTM",
    "UNIDIRECTIONAL_SEQUENCE_RNN",
    "BIDIRECTIONAL_SEQUENCE_LSTM",
    "LSTM",
}


class TFLiteExportError(RuntimeError):
    """litert-torch or ai-edge-quantizer could not produce the file; the message says why."""


def _named_wrapper(model: StreamingModel) -> nn.Module:
    """``forward(features, <state>=...) -> {"log_probs", "<state>_out"}``: names survive conversion."""
    inner = StreamingWrapper(model)
    names = inner.state_names
    for n in names:
        if not n.isidentifier() or n == "features":
            raise TFLiteExportError(f"state name {n!r} cannot be a TFLite signature input")
    args = ", ".join(names)
    outs = ", ".join(f"{n!r}: outs[{i + 1}]" for i, n in enumerate([f"{s}_out" for s in names]))
    src = (
        f"def forward(self, features, {args}):\n"
        f"    outs = self.inner(features, {args})\n"
        f"    return {{'log_probs': outs[0], {outs}}}\n"
    )
    namespace: dict[str, Any] = {}
    exec(compile(src, "<emgkey-tflite-wrapper>", "exec"), namespace)  # a generated signature, nothing else
    cls = type("NamedStreamingWrapper", (nn.Module,), {"forward": namespace["forward"]})
    w = cls()
    w.inner = inner
    return w.eval()


@contextlib.contextmanager
def _quiet() -> Any:
    """litert-torch prints progress to stdout and logs every lowering at INFO on the root logger;
    ai-edge-quantizer draws tqdm bars. Keep all of it out of the CLI's output."""
    buf = io.StringIO()
    root = logging.getLogger()
    level = root.level
    old_tqdm = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    root.setLevel(max(level, logging.WARNING))
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
            yield buf
    finally:
        root.setLevel(level)
        if old_tqdm is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = old_tqdm


def convert_streaming(model: StreamingModel, path: str | Path) -> dict[str, Any]:
    """fp32 TFLite of the streaming graph of a prepared model; returns conversion facts."""
    import litert_torch

    sig = streaming_signature(model)
    ins = example_inputs(sig)
    kwargs = {"features": ins[0], **{s.name: t for s, t in zip(sig.states, ins[1:], strict=True)}}
    wrapper = _named_wrapper(model)
    t0 = time.perf_counter()
    try:
        with _quiet(), torch.no_grad():
            edge = litert_torch.convert(wrapper, sample_kwargs=kwargs)
            edge.export(str(path))
    except Exception as exc:  # the converter raises many types; the bundle records the reason
        raise TFLiteExportError(f"litert-torch conversion failed: {type(exc).__name__}: {exc}"[:600]) from exc
    return {
        "tool": "litert_torch.convert",
        "litert_torch": getattr(litert_torch, "__version__", "?"),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def quantize_tflite(
    fp32_path: str | Path,
    out_path: str | Path,
    recipe_name: str,
    calibration: Sequence[Mapping[str, np.ndarray]] | None = None,
) -> dict[str, Any]:
    """int8 TFLite from an fp32 one with an ai-edge-quantizer recipe; returns the recipe record."""
    from ai_edge_quantizer import quantizer, recipe

    if recipe_name not in RECIPES:
        raise ValueError(f"unknown TFLite recipe {recipe_name!r}; known: {list(RECIPES)}")
    t0 = time.perf_counter()
    try:
        with _quiet():
            qt = quantizer.Quantizer(str(fp32_path), getattr(recipe, recipe_name)())
            calib = None
            if qt.need_calibration:
                if not calibration:
                    raise TFLiteExportError(f"{recipe_name} needs calibration feeds")
                feeds = [{k: np.asarray(v, dtype=np.float32) for k, v in f.items()} for f in calibration]
                calib = qt.calibrate({SIGNATURE_KEY: feeds}, num_threads=max(1, (os.cpu_count() or 1)))
            result = qt.quantize(calib, enable_progress_report=False)
        Path(out_path).write_bytes(bytes(result.quantized_model))
    except TFLiteExportError:
        raise
    except Exception as exc:
        raise TFLiteExportError(f"ai-edge-quantizer {recipe_name} failed: {type(exc).__name__}: {exc}"[:600]) from exc
    import importlib.metadata

    return {
        "tool": "ai_edge_quantizer",
        "version": importlib.metadata.version("ai-edge-quantizer"),
        "recipe": recipe_name,
        "calibration_feeds": len(calibration or []) if recipe_name.startswith("static") else 0,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def tflite_int8_report(path: str | Path) -> dict[str, Any]:
    """Which constant weight operands of FULLY_CONNECTED/CONV/BATCH_MATMUL/LSTM ops are 8-bit."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fb

    model = fb.read_model(Path(path))
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    code_name = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    eight: list[dict[str, Any]] = []
    floats: list[dict[str, Any]] = []

    def op_name(op: Any) -> str:
        code = model.operatorCodes[op.opcodeIndex]
        return op_names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "?")

    def constant(t: Any) -> bool:
        buf = model.buffers[t.buffer]
        return buf.data is not None or getattr(buf, "offset", 0) > 0

    for sg in model.subgraphs:
        # A weight-only model feeds its int8 constants through DEQUANTIZE ops: look through them.
        dequant = {op.outputs[0]: op.inputs[0] for op in sg.operators if op_name(op) == "DEQUANTIZE"}
        for op in sg.operators:
            name = op_name(op)
            if name not in _WEIGHT_OPS:
                continue
            for idx in list(op.inputs)[1:]:
                if idx < 0:
                    continue
                idx = dequant.get(idx, idx)
                t = sg.tensors[idx]
                if not constant(t) or t.shape is None or len(t.shape) < 2:
                    continue
                dtype = code_name.get(t.type, str(t.type)).lower()
                entry = {"op": name, "tensor": t.name.decode(), "elements": int(np.prod(t.shape)), "dtype": dtype}
                (eight if dtype in ("int8", "uint8", "int4") else floats).append(entry)
    return {
        "weights_8bit": bool(eight) and not floats,
        "weight_nodes": len(eight) + len(floats),
        "float_weights": floats,
        "weight_elements_8bit": sum(e["elements"] for e in eight),
        "weight_elements_float": sum(e["elements"] for e in floats),
        "bytes": Path(path).stat().st_size,
    }


def torch_reference(model: StreamingModel, inputs: Sequence[Tensor]) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.numpy() for t in StreamingWrapper(model)(*inputs)]
