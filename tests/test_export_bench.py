"""The export benchmark takes trained checkpoints from a training benchmark instead of retraining them."""

from __future__ import annotations

from pathlib import Path

import pytest

from emgkey.benchmarks import export_bench


def test_a_reused_run_is_taken_as_is_and_nothing_is_trained(tmp_path, monkeypatch):
    reuse = tmp_path / "tb" / "runs" / "armband8"
    ckpt = reuse / "gru" / "generic" / "best.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"a trained checkpoint")

    def no_training(*args, **kwargs):
        raise AssertionError("a reused model must not be retrained")

    import emgkey.train.loop

    monkeypatch.setattr(emgkey.train.loop, "train", no_training)
    got = export_bench._train(tmp_path / "data", "gru", tmp_path / "out" / "gru", export_bench.SMALL, reuse)
    assert got == ckpt


def test_a_model_missing_from_the_reused_runs_is_trained_with_its_own_size(tmp_path, monkeypatch):
    pytest.importorskip("torch", reason="training needs torch")
    calls: list[tuple[str, str, Path]] = []

    import emgkey.train.loop

    def fake_train(cfg, data, split, out):
        calls.append((cfg.model, cfg.model_size, Path(out)))

    monkeypatch.setattr(emgkey.train.loop, "train", fake_train)
    out = tmp_path / "out" / "teacher"
    got = export_bench._train(tmp_path / "data", "tds_conv", out, export_bench.SMALL, tmp_path / "none", size="small")
    assert got == out / "best.pt"
    assert calls == [("tds_conv", "small", out)]


def test_train_set_overrides_reach_every_training_and_distillation_run():
    scale = export_bench.SMALL | {"train_set": ["optim.align_delay_s=0.06", "data.feature_hop=32"]}
    sets = export_bench._overrides(scale, "gru")
    assert sets[-2:] == ["optim.align_delay_s=0.06", "data.feature_hop=32"]  # after the scale's, so they win
    assert "optim.align_delay_s=0.06" not in export_bench._overrides(export_bench.SMALL, "gru")
