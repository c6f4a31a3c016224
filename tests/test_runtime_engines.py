"""Engines: bundle graphs on onnxruntime / LiteRT with explicit state, and the bundle's refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnx", reason="test bundles are built with onnx.helper")
pytest.importorskip("onnxruntime", reason="the ONNX engine needs onnxruntime")

from emgkey.benchmarks.toy_bundle import ToyModel, build_toy_bundle
from emgkey.bundle import BundleError, StreamingSignature, TensorSpec, load_bundle
from emgkey.edge_runtime.engines import (
    LiteRTStreamingEngine,
    OnnxStreamingEngine,
    _dequantize,
    _Port,
    _quantize,
    has_offline_graph,
    match_ports,
    open_engine,
    open_offline_engine,
    run_streaming,
)


def _toy(bundle) -> ToyModel:
    m = bundle.manifest
    cfg = m.model["config"]
    return ToyModel(
        m.profile.n_bands,
        m.profile.channels_per_band,
        m.features.n_freq,
        kernel=cfg["kernel"],
        seed=cfg["seed"],
        weight_scale=cfg["weight_scale"],
    )


def _features(bundle, T: int, seed: int = 0) -> np.ndarray:
    shape = bundle.manifest.streaming.features.shape[1:]
    return np.random.default_rng(seed).normal(2.0, 1.0, size=(T, *shape)).astype(np.float32)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return load_bundle(build_toy_bundle(tmp_path_factory.mktemp("toy"), kernel=3, chunk_frames=4))


def test_onnx_engine_matches_the_reference_and_carries_state(toy):
    engine = open_engine(toy, precision="fp32", format="onnx")
    assert isinstance(engine, OnnxStreamingEngine) and not engine.fixed_chunk
    x = _features(toy, 23)
    ref = _toy(toy).reference(x)
    np.testing.assert_allclose(run_streaming(engine, x), ref, atol=1e-4)
    # Any chunking gives the same emissions: the state carries the last K-1 frames across calls.
    state = engine.init_state()
    outs = []
    for lo, hi in [(0, 1), (1, 4), (4, 6), (6, 13), (13, 23)]:
        lp, state = engine.run(x[lo:hi], state)
        assert lp.shape == (hi - lo, 99)
        outs.append(lp)
    np.testing.assert_allclose(np.concatenate(outs), ref, atol=1e-4)
    np.testing.assert_array_equal(state["h"][:, 0].reshape(2, -1), x[-2:].reshape(2, -1))


def test_run_is_pure(toy):
    engine = open_engine(toy, precision="fp32")
    x = _features(toy, 4)
    state = {
        k: np.random.default_rng(1).normal(size=v.shape).astype(np.float32) for k, v in engine.init_state().items()
    }
    before = {k: v.copy() for k, v in state.items()}
    a, _ = engine.run(x, state)
    b, _ = engine.run(x, state)
    np.testing.assert_array_equal(a, b)
    for k in state:
        np.testing.assert_array_equal(state[k], before[k])
    assert all(np.all(v == 0) for v in engine.init_state().values())


def test_int8_file_is_close_to_fp32(toy):
    x = _features(toy, 16)
    fp32 = run_streaming(open_engine(toy, precision="fp32"), x)
    int8 = run_streaming(open_engine(toy, precision="int8"), x)
    assert np.mean(fp32.argmax(1) == int8.argmax(1)) >= 0.8
    assert np.max(np.abs(np.exp(fp32) - np.exp(int8))) < 0.5


def test_offline_graph_equals_streaming(toy):
    assert has_offline_graph(toy)
    x = _features(toy, 30)
    offline = open_offline_engine(toy).run(x[:, :])
    np.testing.assert_allclose(offline, run_streaming(open_engine(toy, precision="fp32"), x), atol=1e-4)


def test_fixed_chunk_graph_pads_the_last_chunk(tmp_path):
    b = load_bundle(build_toy_bundle(tmp_path, chunk_frames=5, fixed_chunk=True, int8=False))
    engine = open_engine(b, precision="fp32")
    assert engine.fixed_chunk
    x = _features(b, 13)
    np.testing.assert_allclose(run_streaming(engine, x), _toy(b).reference(x), atol=1e-4)
    with pytest.raises(AssertionError, match="exactly 5 frames"):
        engine.run(x[:3], engine.init_state())


def test_tampered_file_and_unverified_runtime_are_refused(tmp_path):
    root = build_toy_bundle(tmp_path / "a", int8=False)
    path = root / "toy_fp32.onnx"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="hash_mismatch"):
        load_bundle(root)
    bad = load_bundle(build_toy_bundle(tmp_path / "b", int8=False, runtimes_ok=False))
    with pytest.raises(BundleError, match="runtime_unsupported"):
        open_engine(bad, precision="fp32")
    # `emgkey verify` runs files before they are verified.
    assert open_engine(bad, precision="fp32", check_runtime=False).runtime == "onnxruntime"
    with pytest.raises(BundleError, match="no_such_file"):
        open_engine(bad, precision="int8")


def test_graph_that_does_not_match_the_manifest_is_refused(tmp_path):
    root = build_toy_bundle(tmp_path, int8=False)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["streaming"]["states"][0]["name"] = "cache"
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"signature_mismatch.*'cache'"):
        open_engine(load_bundle(root), precision="fp32")
    manifest["streaming"]["states"][0]["name"] = "h"
    manifest["streaming"]["states"][0]["shape"][0] = 7
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="signature_mismatch"):
        open_engine(load_bundle(root), precision="fp32")


def _port(name: str, index: int, shape: tuple[int, ...]) -> _Port:
    return _Port(name, index, shape, np.float32, 0.0, 0)


def test_port_matching_rules():
    specs = [TensorSpec("features", (4, 1, 2, 8, 9)), TensorSpec("h", (1, 1, 144))]
    exact = [_port("h", 1, (1, 1, 144)), _port("features", 0, (4, 1, 2, 8, 9))]
    assert [p.index for p in match_ports(specs, exact, "input")] == [0, 1]
    mangled = [_port("serving_default_h:0", 5, (1, 1, 144)), _port("serving_default_features:0", 3, (4, 1, 2, 8, 9))]
    assert [p.index for p in match_ports(specs, mangled, "input")] == [3, 5]
    by_shape = [_port("args_1", 9, (1, 1, 144)), _port("args_0", 8, (4, 1, 2, 8, 9))]
    assert [p.index for p in match_ports(specs, by_shape, "input")] == [8, 9]
    # Same shapes for two states: only the manifest's order can decide.
    specs2 = [TensorSpec("a", (2, 3)), TensorSpec("b", (2, 3))]
    ordered = [_port("x0", 1, (2, 3)), _port("x1", 2, (2, 3))]
    assert [p.index for p in match_ports(specs2, ordered, "input")] == [1, 2]
    with pytest.raises(BundleError, match="signature_mismatch"):
        match_ports(specs, [_port("a", 0, (4, 1, 2, 8, 9)), _port("b", 1, (1, 1, 145))], "input")
    with pytest.raises(BundleError, match="lists 2 inputs"):
        match_ports(specs, [_port("a", 0, (4, 1, 2, 8, 9))], "input")


def test_quantized_ports_round_trip():
    port = _Port("q", 0, (3,), np.int8, 0.05, -3)
    x = np.array([-1.0, 0.0, 2.5], dtype=np.float32)
    q = _quantize(x, port)
    assert q.dtype == np.int8
    np.testing.assert_allclose(_dequantize(q, port), x, atol=0.025)
    assert _quantize(np.array([100.0]), port)[0] == 127  # saturates


@pytest.mark.parametrize("mangle", [True, False])
def test_litert_engine_maps_converted_names(tmp_path, mangle):
    pytest.importorskip("flatbuffers", reason="the toy .tflite is written with flatbuffers")
    try:
        from ai_edge_litert import schema_py_generated  # noqa: F401
    except ImportError:
        pytest.skip("ai-edge-litert (LiteRT) is not installed")
    from emgkey.benchmarks.toy_bundle import toy_tflite_bytes

    root = build_toy_bundle(tmp_path, chunk_frames=4, kernel=2, tflite=True, int8=False)
    b = load_bundle(root)
    if not mangle:
        (root / "toy_fp32.tflite").write_bytes(toy_tflite_bytes(_toy(b), 4, mangle_names=False))
        b = load_bundle(root, verify_hashes=False)
    engine = open_engine(b, precision="fp32", format="tflite")
    assert isinstance(engine, LiteRTStreamingEngine) and engine.fixed_chunk
    assert engine.runtime in ("ai-edge-litert", "tflite-runtime")
    x = _features(b, 10)
    ref = _toy(b).reference(x)
    np.testing.assert_allclose(run_streaming(engine, x), ref, atol=1e-4)
    onnx_out = run_streaming(open_engine(b, precision="fp32", format="onnx"), x)
    np.testing.assert_allclose(run_streaming(engine, x), onnx_out, atol=1e-4)


def test_signature_dataclass_round_trips_through_the_bundle(toy):
    sig = toy.manifest.streaming
    assert StreamingSignature.from_dict(sig.to_dict()) == sig
    assert sig.state_output_names == ("h_out",)


def test_deployed_engine_falls_back_to_fp32_when_int8_failed_verification(tmp_path):
    from emgkey.edge_runtime.calibrate import open_deployed_engine

    root = build_toy_bundle(tmp_path, int8=True)
    manifest = json.loads((root / "manifest.json").read_text())
    for f in manifest["files"]:
        if f["precision"] == "int8":
            for r in f["runtimes"]:
                r["supported"], r["note"] = False, "CER +1.56 points > 1"
    (root / "manifest.json").write_text(json.dumps(manifest))
    b = load_bundle(root)
    with pytest.raises(BundleError, match="runtime_unsupported"):
        open_engine(b, precision="int8")  # `emgkey run` refuses it ...
    engine, precision = open_deployed_engine(b, "int8")  # ... so calibration compares what a device can run
    assert precision == "fp32" and engine.runtime == "onnxruntime"
    bad = load_bundle(build_toy_bundle(tmp_path / "b", int8=False, runtimes_ok=False))
    with pytest.raises(BundleError, match="runtime_unsupported"):
        open_deployed_engine(bad, "int8")  # no verified file at all: refused, not hidden
