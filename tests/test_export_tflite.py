"""TFLite through litert-torch: the streaming signature keeps its names, LiteRT equals torch chunk by
chunk, and int8 files really hold 8-bit weights."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="export needs the training extras (torch)")
pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")
pytest.importorskip("ai_edge_quantizer")

from emgkey.edge_runtime import engines  # noqa: E402
from emgkey.export import onnx_export, tflite_export  # noqa: E402
from emgkey.train.models import build_model, default_config  # noqa: E402

torch.set_num_threads(1)


def tiny(name):
    torch.manual_seed(0)
    model = build_model(default_config(name, "armband8", size="tiny"))
    bn = model.front.norm.batch_norm
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    return onnx_export.prepare_for_export(model.eval())


def torch_stream(model, x):
    sig = onnx_export.streaming_signature(model)
    state = {s.name: torch.zeros(s.shape) for s in sig.states}
    outs = []
    with torch.no_grad():
        for t in range(0, len(x), sig.chunk_frames):
            lp, state = model.forward_chunk(torch.from_numpy(x[t : t + sig.chunk_frames]), state)
            outs.append(lp[:, 0].numpy())
    return np.concatenate(outs)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = {}
    for name in ("gru", "tcn"):
        model = tiny(name)
        path = tmp_path_factory.mktemp(name) / "fp32.tflite"
        tflite_export.convert_streaming(model, path)
        out[name] = (model, path)
    return out


@pytest.mark.parametrize("name", ["gru", "tcn"])
def test_tflite_streams_like_torch_with_named_signature(converted, name):
    model, path = converted[name]
    from ai_edge_litert.interpreter import Interpreter

    sig = onnx_export.streaming_signature(model)
    names = Interpreter(model_path=str(path)).get_signature_list()[tflite_export.SIGNATURE_KEY]
    assert sorted(names["inputs"]) == sorted(["features", *(s.name for s in sig.states)])
    assert sorted(names["outputs"]) == sorted(["log_probs", *sig.state_output_names])
    c = model.config
    x = np.random.default_rng(0).standard_normal((sig.chunk_frames * 5, 1, c.n_bands, c.channels, c.n_freq))
    x = x.astype(np.float32)
    eng = engines.LiteRTStreamingEngine(path, sig)
    np.testing.assert_allclose(engines.run_streaming(eng, x), torch_stream(model, x), atol=5e-5, rtol=0)


def test_tflite_int8_recipes_store_8_bit_weights(converted, tmp_path):
    model, path = converted["gru"]
    sig = onnx_export.streaming_signature(model)
    assert not tflite_export.tflite_int8_report(path)["weights_8bit"]
    rng = np.random.default_rng(1)
    feeds = [
        {"features": rng.standard_normal(sig.features.shape).astype(np.float32)}
        | {s.name: (0.3 * rng.standard_normal(s.shape)).astype(np.float32) for s in sig.states}
        for _ in range(4)
    ]
    for recipe in ("dynamic_wi8_afp32", "weight_only_wi8_afp32", "static_wi8_ai8"):
        out = tmp_path / f"{recipe}.tflite"
        rec = tflite_export.quantize_tflite(path, out, recipe, feeds)
        rep = tflite_export.tflite_int8_report(out)
        assert rep["weights_8bit"], (recipe, rep["float_weights"])
        assert rec["recipe"] == recipe
        eng = engines.LiteRTStreamingEngine(out, sig)  # static: int8 I/O (de)quantized by the engine
        lp, _ = eng.run(feeds[0]["features"], {k: v for k, v in feeds[0].items() if k != "features"})
        assert np.isfinite(lp).all() and lp.shape == (sig.chunk_frames, 99)


def test_conversion_failure_is_reported_not_faked(tmp_path, monkeypatch):
    import litert_torch

    def broken(*a, **k):
        raise RuntimeError("unsupported op aten::foo")

    monkeypatch.setattr(litert_torch, "convert", broken)
    with pytest.raises(tflite_export.TFLiteExportError, match="aten::foo"):
        tflite_export.convert_streaming(tiny("gru"), tmp_path / "x.tflite")
    assert not (tmp_path / "x.tflite").exists()


@pytest.mark.slow
def test_bilstm_converts_and_streams(tmp_path):
    model = tiny("bilstm")
    path = tmp_path / "b.tflite"
    tflite_export.convert_streaming(model, path)
    sig = onnx_export.streaming_signature(model)
    c = model.config
    x = np.random.default_rng(0).standard_normal((sig.chunk_frames * 4, 1, c.n_bands, c.channels, c.n_freq))
    x = x.astype(np.float32)
    got = engines.run_streaming(engines.LiteRTStreamingEngine(path, sig), x)
    np.testing.assert_allclose(got, torch_stream(model, x), atol=5e-5, rtol=0)
