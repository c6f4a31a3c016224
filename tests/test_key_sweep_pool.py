"""tools/key_sweep_pool.py: decoder settings scored over several trainings' sweeps (hand-made sweep outputs)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("key_sweep_pool", Path(__file__).parents[1] / "tools/key_sweep_pool.py")
assert spec is not None and spec.loader is not None
ksp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ksp)

GRID = ["--lam", "0.5", "1", "--blank-offset", "1", "2"]  # settings (0.5, 1) (0.5, 2) (1, 1) (1, 2)
ARGS = [*GRID, "--shipped", "1", "1", "0.5", "2"]


def test_each_kind_of_profile_gets_its_own_setting(tmp_path, capsys):
    # Base-model profiles are best at (1, 1), fine-tuned ones at (0.5, 1); before 50, so CER 25 = 50 % reduction.
    (tmp_path / "sweep_a.txt").write_text(
        "user 1 finetune (chose finetune): before 50.0, after 30.0 25.0 30.0 40.0 40.0\n"
        "user 2 finetune (chose stats): before 50.0, after 30.0 40.0 40.0 25.0 40.0\n"
        "mean reduction ...\n"
    )
    (tmp_path / "sweep_b.txt").write_text(
        "user 1 finetune (chose finetune): before 50.0, after 40.0 35.0 40.0 45.0 45.0\n"
        "user 1 stats (chose stats): before 50.0, after 30.0 40.0 40.0 20.0 40.0\n"
    )
    ksp.main([str(tmp_path / "sweep_a.txt"), str(tmp_path / "sweep_b.txt"), *ARGS])
    out = capsys.readouterr().out
    assert "3 user-trainings" not in out and "4 user-trainings from 2 sweeps" in out
    # finetune job: (0.5, 1) for fine-tuned profiles, (1, 1) for the one that kept the base model
    assert "base-model profiles (1.0, 1.0), fine-tuned profiles (0.5, 1.0): 43.33 %" in out  # (50 + 30 + 50) / 3
    assert "shipped (1.0, 1.0) / (0.5, 2.0): 36.67 %" in out  # (40 + 50 + 20) / 3
    assert "stats job, 1 users x trainings; as calibrated 40.00 %" in out


def test_a_sweep_with_another_grid_is_refused(tmp_path):
    (tmp_path / "s.txt").write_text("user 1 stats (chose stats): before 50.0, after 30.0 25.0\n")
    with pytest.raises(AssertionError, match="1 settings, the grid has 4"):
        ksp.main([str(tmp_path / "s.txt"), *ARGS])
