"""Data-parallel training: two gloo processes on CPU through the same CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_train_common import make_dataset

from emgkey.profiles import ARMBAND8
from emgkey.train.checkpoint import load_checkpoint
from emgkey.train.loop import evaluate_checkpoint


def test_two_processes_train_and_reduce_exactly(tmp_path):
    root, split = make_dataset(tmp_path / "a8", ARMBAND8, seconds=8.0)
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "emgkey.cli", "train", "--nproc", "2", "--config", "tiny",
        "--data", str(root), "--split", str(split), "--out", str(out), "--device", "cpu",
        "--set", "eval_test=false", "--set", "data.max_train_windows=8",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)  # printed once, by rank 0
    assert summary["world_size"] == 2
    rows = json.loads((out / "metrics.json").read_text())["epochs"]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert rows[0]["train_windows"] == 8  # 4 per rank, none dropped or repeated
    # The CER reduced over two ranks equals one process evaluating the same model on the same windows.
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["train_config"]["data"]["max_eval_windows"] is None
    single = evaluate_checkpoint(out / "last.pt", root, split, subset="val", window_s=4.0, device_name="cpu")
    assert single["windows"] == rows[-1]["val_windows"]
    for k in ("cer", "ins", "del", "sub"):
        assert single[k] == pytest.approx(rows[-1][f"val_{k}"]), k
    assert single["loss"] == pytest.approx(rows[-1]["val_loss"], rel=1e-4)
