"""Distillation: explicit frame alignment between teacher and student grids, the KL term, a short run."""

from __future__ import annotations

import json
import math

import pytest

from emgkey.errors import ConfigError

torch = pytest.importorskip("torch", reason="distillation needs the training extras (torch)")
from test_train_common import make_dataset  # noqa: E402

from emgkey.export.distill import (  # noqa: E402
    DistillConfig,
    TeacherAlignment,
    align_teacher,
    distill,
    kd_loss,
    teacher_alignment,
)
from emgkey.features import FeatureConfig  # noqa: E402
from emgkey.profiles import ARMBAND8  # noqa: E402
from emgkey.train.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from emgkey.train.config import load_config  # noqa: E402
from emgkey.train.models import build_model, default_config  # noqa: E402

torch.set_num_threads(1)


def test_tds_alignment_skips_the_frames_valid_convolutions_drop():
    tds = build_model(default_config("tds_conv", "armband8", size="tiny"))
    a = teacher_alignment(tds)
    rf = tds.config.receptive_field
    assert a == TeacherAlignment(offset=rf - 1, stride=1)
    T, N = 20, 2
    t_lp = torch.arange(T - rf + 1, dtype=torch.float32)[:, None, None].expand(-1, N, 3)  # value = teacher index
    aligned, mask = align_teacher(t_lp, torch.tensor([T - rf + 1, T - rf - 1]), T, torch.tensor([T, T - 2]), a)
    # Student frame t is anchored at teacher output t - (rf - 1): the first rf - 1 frames have no teacher.
    assert not mask[: rf - 1].any() and mask[rf - 1 :, 0].all()
    assert torch.equal(aligned[rf - 1 :, 0, 0], torch.arange(T - rf + 1, dtype=torch.float32))
    assert mask[:, 1].sum() == T - rf - 1  # the shorter item: its own teacher length counts


def test_transformer_alignment_is_half_rate():
    tr = build_model(default_config("transformer", "armband8", size="tiny"))
    a = teacher_alignment(tr)
    assert a.stride == 2 and a.offset == 4  # kernels (3, 3), strides (1, 2): RF 5
    T = 21
    T_out = int(tr.output_lengths(T))
    t_lp = torch.arange(T_out, dtype=torch.float32)[:, None, None].expand(-1, 1, 2)
    aligned, mask = align_teacher(t_lp, torch.tensor([T_out]), T, torch.tensor([T]), a)
    idx = aligned[mask[:, 0], 0, 0].long().tolist()
    assert idx[:4] == [0, 0, 1, 1] and idx[-1] == T_out - 1  # each teacher frame serves two student frames
    assert mask[:4, 0].sum() == 0


def test_student_lookahead_shifts_the_alignment():
    a = TeacherAlignment(offset=0, stride=1)
    t_lp = torch.arange(10, dtype=torch.float32)[:, None, None]
    aligned, mask = align_teacher(t_lp, torch.tensor([10]), 10, torch.tensor([10]), a, student_lookahead=3)
    assert not mask[:3].any() and aligned[3, 0, 0] == 0 and aligned[9, 0, 0] == 6


def test_kd_loss_is_zero_for_equal_posteriors_and_positive_otherwise():
    lp = torch.log_softmax(torch.randn(5, 2, 99), -1)
    mask = torch.ones(5, 2, dtype=torch.bool)
    assert kd_loss(lp, lp, mask, 2.0).abs() < 1e-5
    other = torch.log_softmax(torch.randn(5, 2, 99), -1)
    assert kd_loss(lp, other, mask, 2.0) > 0
    assert kd_loss(lp, other, torch.zeros_like(mask), 2.0) == 0


def test_a_short_distillation_run(tmp_path):
    root, split = make_dataset(tmp_path / "data", ARMBAND8, seconds=6.0)
    feature_cfg = FeatureConfig.for_profile(ARMBAND8)
    torch.manual_seed(0)
    tcfg = default_config("tds_conv", ARMBAND8, feature_cfg, size="tiny").to_dict()
    teacher = build_model(tcfg)
    cfg = load_config("tiny", ["model=gru", "epochs=1", "max_steps_per_epoch=2", "data.max_eval_windows=2"])
    save_checkpoint(
        tmp_path / "teacher.pt",
        model=teacher,
        model_config=tcfg,
        feature_config=feature_cfg,
        profile=ARMBAND8,
        train_config=load_config("tiny", ["model=tds_conv"]).to_dict(),
        epoch=1,
        best_val_cer=None,
        best_epoch=0,
    )
    summary = distill(tmp_path / "teacher.pt", cfg, root, split, tmp_path / "run", DistillConfig(alpha=0.7))
    row = summary["epochs"][0]
    assert math.isfinite(row["train_loss"]) and row["train_kd"] >= 0
    ck = load_checkpoint(tmp_path / "run" / "best.pt")
    assert ck["model_config"]["name"] == "gru"
    assert ck["extra"]["distillation"]["teacher_model"] == "tds_conv"
    assert ck["extra"]["distillation"]["alpha"] == 0.7
    assert json.loads((tmp_path / "run" / "results.json").read_text())["distillation"]["alignment"]["offset"] > 0
    # A student asked to use another feature hop than its teacher's is refused, not silently given the teacher's.
    bad = load_config("tiny", ["model=gru", "epochs=1", "data.feature_hop=8"])
    with pytest.raises(ConfigError, match="feature_hop"):
        distill(tmp_path / "teacher.pt", bad, root, split, tmp_path / "run2", DistillConfig())
