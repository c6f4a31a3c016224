"""Calibration strategy 2 (torch): the adapter is the runtime's own input map, training improves the held-out
loss, and a model whose layers were trained comes back as a verified bundle with int8 from the user's windows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="strategy 2 needs the training extras (torch)")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from test_train_common import make_dataset  # noqa: E402

from emgkey import charset  # noqa: E402
from emgkey.bundle import load_bundle  # noqa: E402
from emgkey.edge_runtime.calib_data import PromptChoice  # noqa: E402
from emgkey.edge_runtime.calib_record import simulated_recording  # noqa: E402
from emgkey.edge_runtime.calib_run import CalibrationOptions, calibrate_recording  # noqa: E402
from emgkey.edge_runtime.profile_store import ProfileStore, open_for_run  # noqa: E402
from emgkey.edge_runtime.recognizer import FeatureNormalization  # noqa: E402
from emgkey.profiles import ARMBAND8  # noqa: E402
from emgkey.train.checkpoint import save_untrained_checkpoint  # noqa: E402
from emgkey.train.finetune_calib import FinetuneConfig, InputAdapter  # noqa: E402

torch.set_num_threads(1)


def test_the_adapter_computes_the_runtime_input_map() -> None:
    rng = np.random.default_rng(0)
    init = FeatureNormalization(
        scale=rng.uniform(0.5, 2, (2, 8, 9)).astype(np.float32),
        offset=rng.normal(size=(2, 8, 1)).astype(np.float32),
        channel_shift=(1, -2),
    )
    adapter = InputAdapter(init, 2, 8, 9)
    with torch.no_grad():
        adapter.mix.add_(torch.from_numpy(rng.normal(0, 0.1, (2, 8, 8)).astype(np.float32)))
    x = rng.normal(size=(7, 3, 2, 8, 9)).astype(np.float32)  # (T, N, bands, C, freq)
    got = adapter(torch.from_numpy(x)).detach().numpy()
    norm = FeatureNormalization.from_manifest(json.loads(json.dumps(adapter.to_manifest())), (2, 8, 9))
    for n in range(3):
        np.testing.assert_allclose(got[:, n], norm(x[:, n]), rtol=1e-5, atol=1e-5)
    # Freshly made from strategy 1's map (identity mixing), it *is* that map.
    fresh = InputAdapter(init, 2, 8, 9)(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(fresh[:, 0], init(x[:, 0]), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def real_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny GRU (random weights, blank-biased) exported as a verified ONNX bundle; its checkpoint."""
    from emgkey.export.bundle_writer import BundleOptions, write_bundle

    base = tmp_path_factory.mktemp("real")
    root, split = make_dataset(base / "data", ARMBAND8, seconds=6.0)

    def mostly_blank(model: torch.nn.Module) -> None:
        # Like a trained CTC model: blank unless a key is clear. A random LayerNorm GRU has no such habit, and
        # 9 steps on its fit prompts only memorised them (held-out loss 81.6 -> 83.9).
        model.classifier.bias.data[charset.BLANK] += 4.0

    ckpt = save_untrained_checkpoint(base / "best.pt", "gru", ARMBAND8, epoch=1, prepare=mostly_blank)
    opts = BundleOptions(
        formats=("onnx",),
        onnx_methods=("ort_dynamic",),
        calibration_windows=2,
        calibration_feeds=8,
        selection_windows=2,
        reference_windows=2,
        window_s=2.0,
        max_test_windows=2,
        test_window_s=2.0,
    )
    write_bundle(ckpt, root, split, base / "bundle", opts)
    return base / "bundle", ckpt


@pytest.mark.slow
def test_fit_batches_take_fresh_specaugment_masks_and_keep_lengths_and_targets() -> None:
    from emgkey.edge_runtime.calib_data import Segment
    from emgkey.features import FeatureConfig
    from emgkey.train.augment import build_feature_pipeline
    from emgkey.train.config import AugmentConfig
    from emgkey.train.finetune_calib import _batch

    rng = np.random.default_rng(0)
    feats = rng.standard_normal((300, 2, 4, 5)).astype(np.float32)  # (F, n_bands, C, n_freq)
    segs = [Segment("ab", 0, 120, np.array([1, 2])), Segment("c", 150, 300, np.array([3]))]
    plain = _batch(feats, segs)
    aug = build_feature_pipeline(AugmentConfig(), FeatureConfig.for_profile(ARMBAND8), train=True)
    a, b = _batch(feats, segs, aug, np.random.default_rng(1)), _batch(feats, segs, aug, np.random.default_rng(2))
    for x in (a, b):
        assert all(torch.equal(p, q) for p, q in zip(plain[1:], x[1:])), "lengths and targets are the prompts'"
        assert x[0].shape == plain[0].shape and not torch.equal(x[0], plain[0])
    assert not torch.equal(a[0], b[0]), "each step draws its own masks"
    off = build_feature_pipeline(AugmentConfig(specaugment=False), FeatureConfig.for_profile(ARMBAND8), train=True)
    assert torch.equal(_batch(feats, segs, off, np.random.default_rng(1))[0], plain[0])


def test_finetune_trains_the_last_layers_and_re_exports_a_verified_bundle(real_bundle: tuple[Path, Path]) -> None:
    bundle_dir, ckpt = real_bundle
    bundle = load_bundle(bundle_dir)
    prompts = PromptChoice().choose(12, salt="henry")
    rec = simulated_recording(ARMBAND8, 69, 40.0, prompts)
    cfg = FinetuneConfig(max_steps=9, eval_every=1, unfreeze_every=3, patience=9, time_budget_s=60.0)
    out = calibrate_recording(
        bundle, "henry", rec, CalibrationOptions(strategy="finetune", checkpoint=str(ckpt), finetune=cfg)
    )
    prof = out.profile
    info = prof.metrics["candidates"]["finetune"]["info"]
    assert info["stages"] == ["adapter", "classifier", "rnn.l1"]
    assert info["heldout_loss_best"] < info["heldout_loss_start"]  # the calibration user's prompts are learnt
    assert "stats" in prof.metrics["candidates"]  # strategy 1 ran first and was compared
    if prof.strategy == "finetune" and info["stage_at_best"] > 0:
        own = load_bundle(prof.bundle_dir(bundle_dir))  # hashes checked
        kinds = {(f.format, f.precision) for f in own.manifest.files}
        assert ("onnx", "fp32") in kinds
        for f in own.manifest.files:
            assert f.supported_on("onnxruntime"), f.runtimes
        q = [f for f in own.manifest.files if f.precision == "int8"]
        assert not q or q[0].quantization["calibration"] == "the user's calibration windows"
        assert own.manifest.streaming == bundle.manifest.streaming
        if out.activated:
            run_bundle, active = open_for_run(bundle, "henry")
            assert run_bundle.root == own.root and active is not None and "channel_mix" in active.normalization
    else:
        pytest.skip(f"strategy 2 did not train a model layer here ({prof.strategy}, stage {info['stage_at_best']})")
    assert (ProfileStore(bundle_dir, "henry").active_id() == prof.id) == out.activated
