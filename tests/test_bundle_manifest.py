"""The bundle contract: a manifest a device can trust, and clear refusals when it can't."""

from __future__ import annotations

import json

import pytest

from emgkey.bundle import (
    BundleError,
    Manifest,
    ModelFile,
    RuntimeCheck,
    StreamingSignature,
    TensorSpec,
    load_bundle,
    read_manifest,
    require_runtime,
    sha256_file,
    write_manifest,
)
from emgkey.features import FeatureConfig
from emgkey.profiles import ARMBAND8


def _bundle(tmp_path, supported=True):
    model = tmp_path / "model_int8.onnx"
    model.write_bytes(b"not really onnx, but hashed all the same")
    sig = StreamingSignature(
        chunk_frames=8,
        lookahead_frames=0,
        output_delay_frames=0,
        features=TensorSpec("features", (8, 1, 2, 8, 9)),
        states=(TensorSpec("h", (2, 1, 160)),),
        log_probs=TensorSpec("log_probs", (8, 1, 99)),
    )
    f = ModelFile(
        path=model.name,
        sha256=sha256_file(model),
        bytes=model.stat().st_size,
        format="onnx",
        precision="int8",
        graph="streaming",
        runtimes=[RuntimeCheck("onnxruntime", "1.0", supported=supported, note="" if supported else "argmax 0.4")],
    )
    m = Manifest(
        model={"name": "gru", "config": {}},
        profile=ARMBAND8,
        features=FeatureConfig.for_profile(ARMBAND8),
        streaming=sig,
        files=[f],
        charset={"num_classes": 99, "blank": 98},
        accuracy={"data": "simulated"},
    )
    write_manifest(tmp_path, m)
    return tmp_path, model


def test_round_trip(tmp_path):
    root, _ = _bundle(tmp_path)
    b = load_bundle(root, expect_profile="armband8")
    assert b.manifest.streaming.state_output_names == ("h_out",)
    assert b.manifest.file(format="onnx", precision="int8").supported_on("onnxruntime")
    assert read_manifest(root).to_dict() == b.manifest.to_dict()


def test_tampered_model_is_refused(tmp_path):
    root, model = _bundle(tmp_path)
    data = bytearray(model.read_bytes())
    data[3] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="hash_mismatch"):
        load_bundle(root)


def test_missing_file_and_missing_manifest(tmp_path):
    root, model = _bundle(tmp_path)
    model.unlink()
    with pytest.raises(BundleError, match="missing_file"):
        load_bundle(root)
    with pytest.raises(BundleError, match="no_manifest"):
        load_bundle(tmp_path / "nowhere")


def test_schema_version_and_malformed(tmp_path):
    root, _ = _bundle(tmp_path)
    path = root / "manifest.json"
    d = json.loads(path.read_text())
    path.write_text(json.dumps({**d, "schema_version": 99}))
    with pytest.raises(BundleError, match="schema_version"):
        load_bundle(root)
    del d["streaming"]
    path.write_text(json.dumps(d))
    with pytest.raises(BundleError, match="malformed"):
        load_bundle(root)
    path.write_text("{ not json")
    with pytest.raises(BundleError, match="malformed"):
        load_bundle(root)


def test_profile_mismatch(tmp_path):
    root, _ = _bundle(tmp_path)
    with pytest.raises(BundleError, match="profile_mismatch"):
        load_bundle(root, expect_profile="emg2qwerty")


def test_unverified_runtime_is_refused(tmp_path):
    root, _ = _bundle(tmp_path, supported=False)
    f = load_bundle(root).manifest.file(format="onnx", precision="int8")
    with pytest.raises(BundleError, match="runtime_unsupported"):
        require_runtime(f, "onnxruntime")
    with pytest.raises(BundleError, match="no_such_file"):
        load_bundle(root).manifest.file(format="tflite", precision="int8")
