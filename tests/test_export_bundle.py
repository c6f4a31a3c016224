"""Bundles end to end on a tiny dataset: manifest, 8-bit files, verification, and refusals.

A runtime that computes wrong numbers (a perturbed model file re-hashed into the manifest, or
an engine that adds noise) is caught by ``emgkey verify``, recorded as unsupported, and
refused by ``require_runtime`` / ``open_engine``.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="export needs the training extras (torch)")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from test_train_common import make_dataset  # noqa: E402

from emgkey import charset  # noqa: E402
from emgkey.bundle import BundleError, load_bundle, require_runtime, sha256_file, write_manifest  # noqa: E402
from emgkey.edge_runtime import engines  # noqa: E402
from emgkey.errors import ConfigError  # noqa: E402
from emgkey.export import bundle_writer, onnx_export, quantize, verify  # noqa: E402
from emgkey.export.bundle_writer import BundleOptions, write_bundle  # noqa: E402
from emgkey.profiles import ARMBAND8  # noqa: E402
from emgkey.train.checkpoint import save_untrained_checkpoint  # noqa: E402

torch.set_num_threads(1)

FAST = dict(
    formats=("onnx",),
    onnx_methods=("ort_static", "ort_dynamic"),
    calibration_windows=4,
    calibration_feeds=16,
    selection_windows=3,
    reference_windows=3,
    window_s=2.0,
)


def make_checkpoint(path, name="gru"):
    def nontrivial_norm(model):
        bn = model.front.norm.batch_norm
        bn.running_mean.normal_(0.0, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        # Like a trained CTC model, mostly blank with confident keys: an untrained model's near-ties between
        # classes flip under any 8-bit rounding (a random LayerNorm GRU: 64-70 errors on 21 characters, int8
        # CER +9.5 points at max |dlogp| 0.04), and the int8 CER criterion would then be judging noise.
        head = getattr(model, "classifier", None)
        if isinstance(head, torch.nn.Linear):
            head.bias.data[charset.BLANK] += 4.0

    return save_untrained_checkpoint(path, name, ARMBAND8, epoch=1, prepare=nontrivial_norm)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root, split = make_dataset(tmp_path_factory.mktemp("a8"), ARMBAND8, seconds=6.0)
    (root / "dataset.json").write_text(json.dumps({"simulated": True, "note": "test data"}))
    return root, split


@pytest.fixture(scope="module")
def bundle(data, tmp_path_factory):
    root, split = data
    base = tmp_path_factory.mktemp("bundle")
    ckpt = make_checkpoint(base / "best.pt")
    out = base / "bundle"
    write_bundle(ckpt, root, split, out, BundleOptions(**FAST))
    return out


@pytest.fixture
def copy(bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(bundle, dst)
    return dst


def test_manifest_describes_a_verified_bundle(bundle):
    b = load_bundle(bundle, expect_profile="armband8")
    m = b.manifest
    kinds = {(f.format, f.precision, f.graph) for f in m.files}
    assert kinds == {("onnx", "fp32", "streaming"), ("onnx", "int8", "streaming"), ("onnx", "fp32", "offline")}
    for f in m.files:
        assert f.sha256 == sha256_file(bundle / f.path) and f.bytes == (bundle / f.path).stat().st_size
        assert f.supported_on("onnxruntime"), f.runtimes
    assert m.accuracy["data"] == "simulated"
    assert {"model_fp32.onnx", "model_int8.onnx"} <= set(m.accuracy["files"])
    assert "int8_cer_minus_fp32" in m.accuracy and "cer" in m.accuracy["torch_fp32"]
    assert m.streaming.state_output_names == ("h_out",)
    assert m.tool["versions"]["onnxruntime"] == ort.__version__
    assert m.model["offline_graph"]["time_axis"] == "dynamic"
    q = m.file(format="onnx", precision="int8").quantization
    assert q["method"] in quantize.METHODS and q["report"]["weights_8bit"]
    assert {c["method"] for c in q["candidates"]} == {"ort_static", "ort_dynamic"}
    assert {p.name for p in bundle.iterdir()} == {f.path for f in m.files} | {"manifest.json", "reference.npz"}
    # No temporary folders left next to the bundle.
    assert [p.name for p in bundle.parent.iterdir() if p.name.startswith(".")] == []


def test_onnx_files_carry_the_manifest_essentials(bundle):
    m = load_bundle(bundle).manifest
    for f in m.files:
        meta = onnx_export.read_metadata(bundle / f.path)
        assert meta["model"]["name"] == "gru" and meta["profile"]["name"] == "armband8"
        assert meta["precision"] == f.precision and meta["graph"] == f.graph
        assert meta["streaming"]["chunk_frames"] == m.streaming.chunk_frames


def test_int8_file_really_stores_8_bit_weights(bundle):
    rep = quantize.int8_report(bundle / "model_int8.onnx")
    assert rep["weights_8bit"] and not rep["float_weights"]
    assert quantize.initializer_bytes(bundle / "model_int8.onnx") < 0.45 * quantize.initializer_bytes(
        bundle / "model_fp32.onnx"
    )


def test_engines_open_verified_files_and_stream(bundle):
    b = load_bundle(bundle)
    eng = engines.open_engine(b, precision="int8", format="onnx")
    ref = verify.Reference.load(bundle / "reference.npz")
    out = engines.run_streaming(eng, ref.features[0])
    assert out.shape == ref.streaming[0].shape
    fp = engines.run_streaming(engines.open_engine(b, precision="fp32"), ref.features[0])
    np.testing.assert_allclose(fp, ref.streaming[0], atol=1e-4, rtol=0)


def test_tampered_file_is_refused_before_it_runs(copy):
    p = copy / "model_int8.onnx"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="hash_mismatch"):
        load_bundle(copy)
    with pytest.raises(BundleError, match="hash_mismatch"):
        verify.verify_bundle(copy)


def test_tampered_reference_is_refused(copy):
    p = copy / "reference.npz"
    p.write_bytes(p.read_bytes() + b"x")
    with pytest.raises(BundleError, match="hash_mismatch"):
        verify.verify_bundle(copy)


def test_perturbed_weights_after_verification_are_caught(copy):
    """Someone swaps in a model with wrong numbers and fixes up the hash: verify still says no."""
    b = load_bundle(copy)
    f = b.manifest.file(format="onnx", precision="fp32")
    path = copy / f.path
    m = onnx.load(str(path))
    from onnx import numpy_helper

    for i, t in enumerate(m.graph.initializer):
        arr = numpy_helper.to_array(t)
        if (arr.ndim == 2 and arr.shape[-1] == 99) or (arr.ndim == 2 and arr.shape[0] == 99):
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr * 1.3 + 0.05, t.name))
    onnx.save(m, str(path))
    f.sha256, f.bytes = sha256_file(path), path.stat().st_size
    write_manifest(copy, b.manifest)
    assert load_bundle(copy).manifest.file(format="onnx", precision="fp32").supported_on("onnxruntime")

    report = verify.verify_bundle(copy)
    bad = [r for r in report["results"] if r["file"] == f.path]
    assert bad and not bad[0]["supported"] and bad[0]["note"]
    f2 = load_bundle(copy).manifest.file(format="onnx", precision="fp32")
    assert not f2.supported_on("onnxruntime")
    with pytest.raises(BundleError, match="runtime_unsupported"):
        require_runtime(f2, "onnxruntime")
    with pytest.raises(BundleError, match="runtime_unsupported"):
        engines.open_engine(load_bundle(copy), precision="fp32", format="onnx")
    # The untouched int8 file stays supported.
    assert load_bundle(copy).manifest.file(format="onnx", precision="int8").supported_on("onnxruntime")


def test_a_runtime_returning_wrong_numbers_is_marked_unsupported(copy, monkeypatch):
    real_run = engines.OnnxStreamingEngine.run

    def noisy(self, features, state):
        lp, st = real_run(self, features, state)
        rng = np.random.default_rng(int(features.sum() * 1000) % 2**32)
        wrong = lp + rng.normal(0, 3.0, lp.shape).astype(np.float32)
        return wrong - np.log(np.exp(wrong).sum(-1, keepdims=True)), st

    monkeypatch.setattr(engines.OnnxStreamingEngine, "run", noisy)
    report = verify.verify_bundle(copy)
    streaming = [r for r in report["results"] if r["graph"] == "streaming"]
    assert streaming and not any(r["supported"] for r in streaming)
    assert all("max |dlogp|" in r["note"] for r in streaming)
    monkeypatch.undo()
    b = load_bundle(copy)
    with pytest.raises(BundleError, match="runtime_unsupported"):
        engines.open_engine(b, precision="int8", format="onnx")
    # The offline graph ran through another engine: still supported.
    assert b.manifest.file(format="onnx", precision="fp32", graph="offline").supported_on("onnxruntime")
    # Verifying again on the honest runtime restores support.
    verify.verify_bundle(copy)
    engines.open_engine(load_bundle(copy), precision="int8", format="onnx")


def test_existing_bundle_needs_force_and_failures_leave_nothing(data, bundle, tmp_path, monkeypatch):
    root, split = data
    ckpt = make_checkpoint(tmp_path / "c.pt")
    with pytest.raises(ConfigError, match="exists"):
        write_bundle(ckpt, root, split, bundle, BundleOptions(**FAST))

    def boom(*a, **k):
        raise RuntimeError("quantizer exploded")

    monkeypatch.setattr(bundle_writer.quantize, "quantize_candidates", boom)
    out = tmp_path / "never"
    with pytest.raises(RuntimeError, match="exploded"):
        write_bundle(ckpt, root, split, out, BundleOptions(**FAST))
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_teacher_checkpoint_is_refused(data, tmp_path):
    root, split = data
    ckpt = make_checkpoint(tmp_path / "t.pt", name="tds_conv")
    with pytest.raises(ConfigError, match="does not stream"):
        write_bundle(ckpt, root, split, tmp_path / "b", BundleOptions(**FAST))


def test_verify_cli(copy, capsys):
    import argparse

    from emgkey.export import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["verify", str(copy), "--runtimes", "onnxruntime"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "model_int8.onnx" in out and "supported" in out


def test_verify_runs_without_torch(copy):
    """On a device there is no torch: verification (and its CLI) must import and run without it."""
    import subprocess
    import sys

    code = (
        "import importlib.abc, sys\n"
        "class NoTorch(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch is blocked')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "import argparse\n"
        "from emgkey.export import cli\n"
        "p = argparse.ArgumentParser(); cli.register(p.add_subparsers(dest='command'))\n"
        f"a = p.parse_args(['verify', {str(copy)!r}])\n"
        "rc = a.func(a)\n"
        "assert 'torch' not in sys.modules\n"
        "sys.exit(rc)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "model_int8.onnx" in res.stdout


@pytest.mark.slow
def test_full_bundle_with_tflite(data, tmp_path):
    """Both formats, every method: the TFLite files are verified on ai-edge-litert as well."""
    pytest.importorskip("litert_torch")
    root, split = data
    ckpt = make_checkpoint(tmp_path / "c.pt")
    opts = {k: v for k, v in FAST.items() if k not in ("formats", "onnx_methods")}
    m = write_bundle(ckpt, root, split, tmp_path / "b", BundleOptions(**opts))
    kinds = {(f["format"], f["precision"]) for f in m["files"]}
    assert {("tflite", "fp32"), ("tflite", "int8"), ("onnx", "int8")} <= kinds
    t8 = next(f for f in m["files"] if f["format"] == "tflite" and f["precision"] == "int8")
    assert t8["quantization"]["report"]["weights_8bit"]
    assert any(r["runtime"] == "ai-edge-litert" for r in t8["runtimes"])
    assert not [p for p in (tmp_path / "b").iterdir() if p.name.startswith("cand_")]


def test_candidate_selection_prefers_fidelity_then_size():
    tol = verify.Tolerances()

    def cand(method, cer, agree, nbytes, ms, fp32=30.0):
        c = {"method": method, "error": "", "report": {"bytes": nbytes}}
        metrics = {"max_abs_logprob_diff": 0.1, "argmax_agreement": agree, "cer_delta": cer - fp32}
        bundle_writer._judge_candidate(c, {"cer": cer, "chunk_ms_median": ms, "_metrics": metrics}, tol)
        return c

    noisy = cand("static", 20.0, 0.5, 100, 0.1)  # "better" CER by disagreeing with fp32: dropped
    a = cand("dynamic", 30.2, 0.99, 300, 0.1)
    b = cand("nncf", 30.0, 0.99, 200, 0.5)  # within 0.25 point of the best: the smaller file wins
    c = cand("weight_only", 30.0, 0.99, 250, 0.05)
    assert not noisy["eligible"] and "tolerance" in noisy["error"]
    assert bundle_writer._pick([noisy, a, b, c]) is b
    assert bundle_writer._pick([noisy]) is None
    # Beating fp32 is noise too: with fp32 at 31.0, everything up to 31.25 ties and size decides.
    a2 = cand("dynamic", 31.2, 0.99, 150, 0.1, fp32=31.0)
    b2 = cand("nncf", 30.0, 0.99, 200, 0.5, fp32=31.0)
    assert bundle_writer._pick([a2, b2], fp32_cer=31.0) is a2
    assert bundle_writer._pick([a2, b2]) is b2


def test_reproduce_measures_the_recorded_test_cer_again_from_the_files(bundle, data, tmp_path):
    from emgkey.export.reproduce import reproduce

    root, split = data
    rows = reproduce(bundle, root, split)
    assert {r["file"] for r in rows} == {"model_fp32.onnx", "model_int8.onnx"}
    assert all(r["match"] for r in rows), rows
    # Other data than the bundle was scored on is refused, not compared.
    other, other_split = make_dataset(tmp_path / "other", ARMBAND8, seconds=3.0)
    with pytest.raises(ConfigError, match="characters"):
        reproduce(bundle, other, other_split)
