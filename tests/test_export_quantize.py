"""int8 means 8-bit weights in the file: every student's quantized graph is inspected, not trusted."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="export needs the training extras (torch)")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from emgkey.export import onnx_export, quantize  # noqa: E402
from emgkey.train.models import build_model, default_config  # noqa: E402
from emgkey.train.models.registry import replace_config  # noqa: E402

torch.set_num_threads(1)

# Small but not tiny: big enough that weights, not graph bookkeeping, dominate the file.
SIZES = {
    "gru": {"hidden_size": 48, "mlp_features": (16,)},
    "tcn": {"hidden_size": 48, "mlp_features": (16,), "dilations": (1, 2, 4)},
    "bilstm": {"hidden_size": 24, "mlp_features": (24,), "fc_features": 48, "chunk_frames": 4, "lookahead_frames": 2},
}


def exported(name, tmp_path, explicit=True):
    torch.manual_seed(0)
    cfg = replace_config(default_config(name, "armband8", size="tiny"), **SIZES[name])
    model = onnx_export.prepare_for_export(build_model(cfg).eval(), explicit_rnn=explicit)
    path = tmp_path / f"{name}_fp32.onnx"
    sig = onnx_export.export_streaming(model, path)
    rng = np.random.default_rng(0)
    feeds = [
        {"features": rng.standard_normal(sig.features.shape).astype(np.float32)}
        | {s.name: (0.3 * rng.standard_normal(s.shape)).astype(np.float32) for s in sig.states}
        for _ in range(8)
    ]
    return path, feeds


def fp32_weight_bytes(path) -> int:
    r = quantize.int8_report(path)
    return 4 * r["weight_elements_float"]


@pytest.mark.parametrize("name", ["gru", "tcn", "bilstm"])
def test_static_int8_stores_every_weight_in_8_bits(name, tmp_path):
    fp32, feeds = exported(name, tmp_path)
    out = tmp_path / "int8.onnx"
    recipe = quantize.quantize_onnx(fp32, out, "ort_static", feeds)
    rep = quantize.int8_report(out)
    assert rep["weights_8bit"], rep["float_weights"]
    assert rep["float_weights"] == []
    m = onnx.load(str(out))
    dtypes = {onnx.helper.tensor_dtype_to_np_dtype(t.data_type) for t in m.graph.initializer if len(t.dims) >= 2}
    assert np.dtype("int8") in dtypes
    # Every 2-D+ float initializer left is not a weight of a MatMul/Gemm/Conv (LayerNorm etc. are 1-D).
    assert rep["weight_elements_8bit"] == quantize.int8_report(fp32)["weight_elements_float"]
    # The weights take a quarter of their fp32 bytes; the file about a third at this small size.
    assert rep["initializer_bytes"].get("int8", 0) <= 0.26 * fp32_weight_bytes(fp32) + 1024
    assert quantize.initializer_bytes(out) < 0.4 * quantize.initializer_bytes(fp32)
    # The file carries the unrolled graph too (what bundle_writer measures at full size: ~0.3).
    assert out.stat().st_size < 0.65 * fp32.stat().st_size
    assert recipe["method"] == "ort_static"
    sess = ort.InferenceSession(str(out))
    ref = ort.InferenceSession(str(fp32))
    a, b = sess.run(None, feeds[0])[0], ref.run(None, feeds[0])[0]
    assert np.isfinite(a).all() and np.abs(a - b).max() < 1.0


def test_onnx_gru_node_stays_float_under_static_quantization(tmp_path):
    """The known trap, measured: an ONNX GRU node keeps float weights; the report rejects it."""
    fp32, feeds = exported("gru", tmp_path, explicit=False)
    assert "GRU" in quantize.int8_report(fp32)["op_counts"]
    recs = quantize.quantize_candidates(fp32, tmp_path / "q", feeds, methods=["ort_static"])
    assert recs[0]["path"] is None and "float" in recs[0]["error"]
    assert any(w["op"] == "GRU" for w in recs[0]["report"]["float_weights"])


def test_dynamic_quantization_of_lstm_makes_dynamic_quantize_lstm(tmp_path):
    fp32, _ = exported("bilstm", tmp_path, explicit=False)
    out = tmp_path / "dyn.onnx"
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32), str(out), per_channel=False, weight_type=QuantType.QUInt8)
    assert "DynamicQuantizeLSTM" in quantize.int8_report(out)["op_counts"]


@pytest.mark.parametrize("name", ["gru", "bilstm"])
def test_dynamic_int8_after_gemm_rewrite(name, tmp_path):
    fp32, feeds = exported(name, tmp_path)
    out = tmp_path / "dyn.onnx"
    quantize.quantize_onnx(fp32, out, "ort_dynamic")
    rep = quantize.int8_report(out)
    assert rep["weights_8bit"], rep["float_weights"]
    assert "MatMulInteger" in rep["op_counts"] and "Gemm" not in rep["op_counts"]
    got = ort.InferenceSession(str(out)).run(None, feeds[1])[0]
    ref = ort.InferenceSession(str(fp32)).run(None, feeds[1])[0]
    assert np.abs(got - ref).max() < 1.0


def test_gemm_to_matmul_is_exact(tmp_path):
    fp32, feeds = exported("gru", tmp_path)
    out = tmp_path / "mm.onnx"
    n = quantize.gemm_to_matmul(fp32, out)
    assert n > 0
    for f in feeds[:2]:
        a = ort.InferenceSession(str(fp32)).run(None, f)
        b = ort.InferenceSession(str(out)).run(None, f)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_allclose(x, y, atol=1e-5, rtol=0)


def test_report_flags_a_float_weight(tmp_path):
    fp32, _ = exported("tcn", tmp_path)
    rep = quantize.int8_report(fp32)
    assert not rep["weights_8bit"] and rep["weight_elements_8bit"] == 0
    assert {w["op"] for w in rep["float_weights"]} >= {"Conv", "MatMul"}


@pytest.mark.parametrize("method", ["ort_static", "ort_dynamic"])
def test_int8_weights_use_7_bits_so_avx2_kernels_do_not_saturate(method, tmp_path):
    """quantize.REDUCE_RANGE: every int8 weight is at most 64 in size (x86 without VNNI sums pairs of uint8 x int8
    products in int16: 2 x 255 x 64 = 32640 fits, 2 x 255 x 127 does not), and the recipe says so."""
    fp32, feeds = exported("tcn", tmp_path)
    out = tmp_path / f"{method}.onnx"
    recipe = quantize.quantize_onnx(fp32, out, method, feeds if method == "ort_static" else None)
    assert "7-bit" in recipe["weights"]
    weights = [
        onnx.numpy_helper.to_array(t)
        for t in onnx.load(str(out)).graph.initializer
        if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2
    ]
    assert weights, "no int8 weight initializers found"
    assert all(int(np.abs(w.astype(np.int32)).max()) <= 64 for w in weights)
    assert max(int(np.abs(w).max()) for w in weights) >= 32  # the range is used, not collapsed
