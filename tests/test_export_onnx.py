"""ONNX export: streaming graphs equal the torch model chunk by chunk, offline graphs equal forward,
and a graph whose time axis was baked in at export is caught."""

from __future__ import annotations

import importlib.util
import random

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="export needs the training extras (torch)")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from emgkey.export import onnx_export  # noqa: E402
from emgkey.train.models import build_model, default_config  # noqa: E402
from emgkey.train.models.common import StreamingModel  # noqa: E402

torch.set_num_threads(1)
STUDENTS = ("gru", "tcn", "bilstm")


def tiny(name: str, profile: str = "armband8", seed: int = 0) -> StreamingModel:
    torch.manual_seed(seed)
    model = build_model(default_config(name, profile, size="tiny"))
    bn = model.front.norm.batch_norm
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def stream_onnx(path, model: StreamingModel, x: np.ndarray) -> np.ndarray:
    """Feed whole chunks of x (T, 1, ...) through the graph, carrying the named states."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    sig = onnx_export.streaming_signature(model)
    state = {s.name: np.zeros(s.shape, np.float32) for s in sig.states}
    outs = []
    m = sig.chunk_frames
    for t in range(0, len(x) - len(x) % m, m):
        res = sess.run(["log_probs", *sig.state_output_names], {"features": x[t : t + m], **state})
        outs.append(res[0][:, 0])
        state = {s.name: v for s, v in zip(sig.states, res[1:])}
    return np.concatenate(outs)


@pytest.mark.parametrize("name", STUDENTS)
def test_streaming_graph_matches_torch_offline(name, tmp_path):
    model = tiny(name)
    prepared = onnx_export.prepare_for_export(model)
    path = tmp_path / f"{name}.onnx"
    sig = onnx_export.export_streaming(prepared, path, meta={"k": "v"})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["features", *(s.name for s in sig.states)]
    assert [o.name for o in sess.get_outputs()] == ["log_probs", *sig.state_output_names]
    assert onnx_export.read_metadata(path) == {"k": "v"}
    c = model.config
    T = sig.chunk_frames * 7
    x = torch.randn(T, 1, c.n_bands, c.channels, c.n_freq, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        offline = model(x)[:, 0].numpy()
    np.testing.assert_allclose(stream_onnx(path, model, x.numpy()), offline, atol=2e-5, rtol=0)


def test_explicit_rnns_equal_the_trained_ones():
    for name in ("gru", "bilstm"):
        model = tiny(name)
        prepared = onnx_export.prepare_for_export(model)
        assert not any(isinstance(m, torch.nn.GRU | torch.nn.LSTM) for m in prepared.modules())
        sig = onnx_export.streaming_signature(model)
        ins = onnx_export.example_inputs(sig)
        with torch.no_grad():
            a = onnx_export.StreamingWrapper(model)(*ins)
            b = onnx_export.StreamingWrapper(prepared)(*ins)
        for u, v in zip(a, b, strict=True):
            torch.testing.assert_close(u, v, atol=1e-5, rtol=0)
        assert any(isinstance(m, torch.nn.GRU | torch.nn.LSTM) for m in model.modules()), "original untouched"


def test_explicit_lstm_from_zero_state_matches_lstm():
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(5, 7)
    ex = onnx_export.ExplicitLSTM.from_lstm(lstm)
    x = torch.randn(6, 2, 5)
    with torch.no_grad():
        y, (h, c) = lstm(x)
        y2, (h2, c2) = ex(x)
        hc = (torch.randn(1, 2, 7), torch.randn(1, 2, 7))
        y3, _ = lstm(x, hc)
        y4, _ = ex(x, hc)
    for a, b in ((y, y2), (h, h2), (c, c2), (y3, y4)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["gru", "tcn"])
def test_offline_graph_has_a_real_dynamic_time_axis(name, tmp_path):
    model = tiny(name)
    path = tmp_path / "offline.onnx"
    info = onnx_export.export_offline_checked(model, path, trace_frames=40, meta={})
    assert info["time_axis"] == "dynamic", info
    c = model.config
    for T in (17, 93):
        x = torch.randn(T, 1, c.n_bands, c.channels, c.n_freq)
        got = ort.InferenceSession(str(path)).run(None, {"features": x.numpy()})[0]
        with torch.no_grad():
            np.testing.assert_allclose(got, model(x).numpy(), atol=2e-5, rtol=0)
    assert onnx_export.read_metadata(path)["offline"]["time_axis"] == "dynamic"


def test_bilstm_offline_graph_is_declared_fixed(tmp_path):
    """Its Python loop over blocks is unrolled at trace time: the check must say so, not pretend."""
    model = tiny("bilstm")
    info = onnx_export.export_offline_checked(model, tmp_path / "b.onnx", trace_frames=30)
    assert info["time_axis"] == "fixed" and info["frames"] == 30
    sess = ort.InferenceSession(str(tmp_path / "b.onnx"))
    assert sess.get_inputs()[0].shape[0] == 30


def test_time_baking_is_detected_for_a_fixed_export(tmp_path):
    model = tiny("gru")
    path = tmp_path / "baked.onnx"
    onnx_export.export_offline(model, path, trace_frames=24, dynamic_time=False)
    info = onnx_export.check_time_axis(path, model, 24)
    assert info["time_axis"] == "fixed"


@pytest.mark.skipif(importlib.util.find_spec("onnxscript") is None, reason="the dynamo exporter needs onnxscript")
def test_dynamo_exporter_bakes_the_gru_time_axis_and_it_is_caught(tmp_path):
    """torch.onnx.export(dynamo=True) declares T dynamic on the input but bakes it into the GRU graph."""
    model = tiny("gru")
    path = tmp_path / "dynamo.onnx"
    onnx_export.export_offline(model, path, trace_frames=24, dynamic_time=True, dynamo=True)
    sess = ort.InferenceSession(str(path))
    assert not isinstance(sess.get_inputs()[0].shape[0], int), "the input claims a dynamic time axis"
    info = onnx_export.check_time_axis(path, model, 24)
    assert info["time_axis"] == "fixed", info
    # The legacy exporter keeps it dynamic for the same model.
    legacy = tmp_path / "legacy.onnx"
    onnx_export.export_offline(model, legacy, trace_frames=24, dynamic_time=True)
    assert onnx_export.check_time_axis(legacy, model, 24)["time_axis"] == "dynamic"


def test_streaming_graph_state_round_trip_random_chunks(tmp_path):
    """Chunks of the fixed size from random states: graph == torch forward_chunk, states included."""
    model = onnx_export.prepare_for_export(tiny("tcn", "emg2qwerty"))
    path = tmp_path / "tcn.onnx"
    sig = onnx_export.export_streaming(model, path)
    sess = ort.InferenceSession(str(path))
    rng = random.Random(0)
    for k in range(3):
        ins = onnx_export.example_inputs(sig, seed=rng.randint(0, 1000))
        with torch.no_grad():
            ref = onnx_export.StreamingWrapper(model)(*ins)
        got = sess.run(None, dict(zip(["features", *(s.name for s in sig.states)], (t.numpy() for t in ins))))
        for a, b in zip(got, ref, strict=True):
            np.testing.assert_allclose(a, b.numpy(), atol=2e-5, rtol=0, err_msg=f"round {k}")
