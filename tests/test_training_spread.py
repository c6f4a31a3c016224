"""tools/training_spread.py: per-user reductions across benchmark runs of several trainings (hand-made runs)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("training_spread", Path(__file__).parents[1] / "tools/training_spread.py")
assert spec is not None and spec.loader is not None
ts = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ts)


def bench(tmp: Path, name: str, before: dict[int, float], after: dict[str, dict[int, float]]) -> Path:
    rows = []
    for strategy, per_user in after.items():
        for user, cer in per_user.items():
            row = {"strategy": strategy, "user": user, "seconds": 60.0, "after": {"cer": cer, "precision": "int8"}}
            if strategy == "stats":  # the benchmark records the generic CER on one strategy's row per user
                row["before"] = {"cer": before[user]}
            rows.append(row)
    rows.append({"strategy": "stats", "user": 9, "seconds": 60.0, "error": "too_little_data"})  # a failed user
    d = {"settings": {"students": [{"name": f"tcn ({name})", "best_val_cer": 44.0}]}, "rows": rows}
    out = tmp / name
    out.mkdir()
    (out / "calibration_bench.json").write_text(json.dumps(d))
    return out


def test_reductions_per_user_and_over_trainings(tmp_path, capsys):
    a = bench(tmp_path, "s0", {1: 50.0, 2: 80.0}, {"stats": {1: 30.0, 2: 40.0}, "finetune": {1: 25.0, 2: 48.0}})
    b = bench(tmp_path, "s1", {1: 60.0, 2: 40.0}, {"stats": {1: 30.0, 2: 40.0}, "finetune": {1: 30.0, 2: 20.0}})
    d = ts.load(a)
    red = ts.per_user(d, 60.0)
    assert red["stats"] == {1: pytest.approx(0.4), 2: pytest.approx(0.5)}
    assert red["finetune"] == {1: pytest.approx(0.5), 2: pytest.approx(0.4)}  # before taken from the stats row
    ts.main([str(a), str(b), "--target", "0.45"])
    out = capsys.readouterr().out
    assert "| stats, 60 s | finetune, 60 s |" in out  # cheapest first
    assert "| tcn (s0) (`s0`) | 44.00 | 65.0 | 45.0 % (2 users, int8) | 45.0 % (2 users, int8) |" in out
    # s1: stats (0.5 + 0) / 2 = 25 %, finetune (0.5 + 0.5) / 2 = 50 %
    assert "35.0 ± 14.1 (25.0-45.0) %, 1 of 2 at target" in out
    assert "47.5 ± 3.5 (45.0-50.0) %, 2 of 2 at target" in out
    assert "- stats: 1: 45.0 ± 7.1, 2: 25.0 ± 35.4; sd between users 14.1" in out
