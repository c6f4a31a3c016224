"""``emgkey bench`` with torch: PyTorch eager cells next to the exported files, and the teacher baseline.

A tiny random GRU checkpoint is registered as a toy bundle's source (by sha256, as a real export records it),
so the bench adds a PyTorch fp32 eager cell for it; a tiny TDS-Conv checkpoint is the offline teacher.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from test_bench import make_bundle  # noqa: E402

from emgkey import charset  # noqa: E402
from emgkey.benchmarks import bench as B  # noqa: E402
from emgkey.bundle import read_manifest, sha256_file, write_manifest  # noqa: E402
from emgkey.decoding import greedy_decode  # noqa: E402
from emgkey.metrics import EditCounts, edit_counts  # noqa: E402


def _checkpoint(path: Path, name: str, **changes: Any) -> tuple[Path, Any]:
    from emgkey.features import FeatureConfig
    from emgkey.profiles import get_profile
    from emgkey.train.checkpoint import save_checkpoint
    from emgkey.train.models.registry import build_model, default_config

    prof = get_profile("armband8")
    fc = FeatureConfig.for_profile(prof)
    cfg = default_config(name, prof, fc, size="tiny")
    cfg = replace(cfg, **changes)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    save_checkpoint(
        path,
        model=model,
        model_config=cfg.to_dict(),
        feature_config=fc,
        profile=prof,
        train_config={},
        epoch=0,
        best_val_cer=None,
        best_epoch=None,
    )
    return path, model


def _cer_of(model: Any, bundle: Path) -> float:
    from emgkey.export.verify import Reference

    ref = Reference.load(bundle / "reference.npz")
    counts = EditCounts()
    with torch.no_grad():
        for x, y in zip(ref.features, ref.targets, strict=True):
            lp = model(torch.from_numpy(x)).numpy()[:, 0]
            counts = counts + edit_counts(charset.labels_to_str(greedy_decode(lp)), charset.labels_to_str(y.tolist()))
    return counts.cer


@pytest.mark.slow
def test_pytorch_eager_and_teacher_cells(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "gru", oracle=True, windows=1, tflite=False)
    gru_ckpt, gru = _checkpoint(tmp_path / "gru.pt", "gru", chunk_frames=4)
    m = read_manifest(bundle)
    m.model.update(checkpoint="elsewhere/best.pt", checkpoint_sha256=sha256_file(gru_ckpt))
    write_manifest(bundle, m)
    teacher_ckpt, teacher = _checkpoint(tmp_path / "teacher.pt", "tds_conv")

    cfg = B.BenchConfig(
        threads=(1,), precisions=("fp32",), runtimes=("torch", "onnxruntime"), warmup=2, calls=20, repeats=1
    )
    cfg = replace(cfg, decoders=("greedy",))
    models = B.collect_models([str(bundle)], [str(gru_ckpt), str(teacher_ckpt)], out=tmp_path)
    assert [(x.key, x.role) for x in models] == [("gru", "student"), ("teacher", "teacher")]
    assert models[0].checkpoint == str(gru_ckpt) and "given" in models[0].checkpoint_note
    res = B.run(models, cfg, tmp_path / "work")
    cells = {(c["model"], c["runtime"]): c for c in res["cells"]}

    eager, ort = cells[("gru", "torch")], cells[("gru", "onnxruntime")]
    assert eager["status"] == "ok" and eager["torch_imported"] is True and ort["torch_imported"] is False
    # torch itself costs memory the torch-free runtime does not pay
    assert eager["rss_mb"]["peak"] > ort["rss_mb"]["peak"] + 50
    assert eager["artifact_bytes"] == 4 * sum(p.numel() for p in gru.parameters())
    # the eager cell decodes the checkpoint's own output (not the bundle's toy graph)
    assert eager["cer"]["greedy"]["cer"] == pytest.approx(_cer_of(gru, bundle), rel=1e-5)
    ratio = next(r for r in res["ratios"] if r["cell"] == "onnxruntime fp32" and r["versus"] == "torch fp32")
    assert ratio["paired_runs"] == 1 and ratio["speedup_p50"] > 0

    t = cells[("teacher", "torch")]
    assert t["status"] == "ok" and t["unit"] == "window" and t["algorithmic_ms"] > 1000
    row = next(x for x in res["models"] if x["key"] == "teacher")
    assert row["params"] == sum(p.numel() for p in teacher.parameters()) and row["macs_per_s"] > 0
    assert row["data"]["shared_with"] == "gru"
    assert t["cer"]["greedy"]["cer"] == pytest.approx(_cer_of(teacher, bundle), rel=1e-5)
