"""End to end on a tiny dataset: checkpoints, metrics, rebuild from a checkpoint, exact resume, CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_train_common import make_dataset

from emgkey.cli import main as emgkey_main
from emgkey.errors import ConfigError
from emgkey.features import FeatureConfig
from emgkey.profiles import EMG2QWERTY, DeviceProfile
from emgkey.train.checkpoint import load_checkpoint, load_model
from emgkey.train.config import OptimConfig, load_config
from emgkey.train.loop import make_optimizer, make_scheduler, train, val_fields

TINY = ["epochs=2", "device=cpu", "data.max_train_windows=4", "data.max_eval_windows=2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("e2q"), EMG2QWERTY, seconds=8.0)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    root, split = data
    out = tmp_path_factory.mktemp("run")
    summary = train(load_config("tiny", TINY), root, split, out)
    return out, summary


def test_a_run_writes_checkpoints_and_metrics(run):
    out, summary = run
    for name in ("best.pt", "last.pt", "metrics.csv", "metrics.json", "results.json", "config.yaml"):
        assert (out / name).is_file(), name
    doc = json.loads((out / "metrics.json").read_text())
    assert [r["epoch"] for r in doc["epochs"]] == [0, 1]
    row = doc["epochs"][-1]
    for key in ("train_loss", "val_loss", "val_cer", "val_ins", "val_del", "val_sub", "lr", "epoch_time_s"):
        assert math.isfinite(row[key]), key
    assert row["val_cer"] == pytest.approx(row["val_ins"] + row["val_del"] + row["val_sub"])
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"epoch", "train_loss", "val_cer", "val_ins", "val_del", "val_sub", "wall_time_s"} <= set(header)
    assert summary["best_epoch"] in (0, 1) and "test" in summary and summary["test"]["windows"] == 2
    assert json.loads((out / "results.json").read_text())["test"]["cer"] == pytest.approx(summary["test"]["cer"])


def test_checkpoint_describes_itself_and_rebuilds_the_same_model(run):
    out, _ = run
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["charset"]["num_classes"] == 99 and ckpt["charset"]["blank"] == 98
    assert DeviceProfile.from_dict(ckpt["profile"]) == EMG2QWERTY
    fcfg = FeatureConfig.from_dict(ckpt["feature_config"])
    assert fcfg == FeatureConfig.for_profile(EMG2QWERTY)
    assert ckpt["model_config"]["name"] == "gru" and ckpt["train_config"]["model_size"] == "tiny"
    assert "optimizer" in ckpt and "scheduler" in ckpt
    model, meta = load_model(out / "last.pt")
    assert "model_state" not in meta and meta["epoch"] == 2
    again, _ = load_model(out / "last.pt")
    x = torch.randn(40, 2, 2, 16, fcfg.n_freq)  # (T, N, bands, C, freq)
    with torch.no_grad():
        y = model(x)
        torch.testing.assert_close(again(x), y)
    assert tuple(y.shape) == (40, 2, 99)
    torch.testing.assert_close(y.exp().sum(-1), torch.ones(40, 2))


def test_resume_refuses_a_changed_config_and_a_run_needs_resume(data, run):
    root, split = data
    out, _ = run
    cfg = load_config("tiny", TINY)
    with pytest.raises(ConfigError, match="differs"):
        train(cfg.with_overrides(["optim.lr=1e-2"]), root, split, out, resume=True)
    with pytest.raises(ConfigError, match="--resume"):
        train(cfg, root, split, out)


def test_resume_from_an_interrupted_run_matches_an_uninterrupted_one(data, tmp_path, monkeypatch):
    root, split = data
    cfg = load_config("tiny", [*TINY, "epochs=3", "eval_test=false"])
    straight = tmp_path / "straight"
    train(cfg, root, split, straight)

    import emgkey.train.loop as loop

    real = loop.train_one_epoch

    def crash_on_epoch_1(*args, **kwargs):
        if args[7] == 1:  # train_one_epoch(model, loader, optimizer, scheduler, cfg, device, info, epoch, ...)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    interrupted = tmp_path / "interrupted"
    monkeypatch.setattr(loop, "train_one_epoch", crash_on_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, root, split, interrupted)
    assert load_checkpoint(interrupted / "last.pt")["epoch"] == 1
    monkeypatch.setattr(loop, "train_one_epoch", real)
    train(None, root, split, interrupted, resume=True)

    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(interrupted / "last.pt")
    assert a["epoch"] == b["epoch"] == 3
    for k in a["model_state"]:
        torch.testing.assert_close(a["model_state"][k], b["model_state"][k], rtol=0, atol=0, msg=k)
    ra = json.loads((straight / "metrics.json").read_text())["epochs"]
    rb = json.loads((interrupted / "metrics.json").read_text())["epochs"]
    assert [r["epoch"] for r in rb] == [0, 1, 2]
    for x, y in zip(ra, rb):
        assert x["train_loss"] == y["train_loss"] and x["val_cer"] == y["val_cer"]


def test_time_budget_stops_after_the_epoch_that_spends_it(data, tmp_path):
    root, split = data
    cfg = load_config("tiny", [*TINY, "epochs=4", "time_budget_s=1e-6"])
    summary = train(cfg, root, split, tmp_path / "run")
    rows = json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"]
    assert [r["epoch"] for r in rows] == [0], "one epoch spends a 1 us budget; no second epoch starts"
    assert summary["stopped_by_time_budget"] == {"epochs_run": 1, "time_budget_s": 1e-6}
    assert summary["epochs_planned"] == 4 and "test" in summary, "best.pt is still tested"
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["stopped_by_time_budget"]["epochs_run"] == 1
    # a budget the run does not reach changes nothing
    untouched = train(load_config("tiny", [*TINY, "time_budget_s=3600"]), root, split, tmp_path / "run2")
    assert "stopped_by_time_budget" not in untouched
    with pytest.raises((AssertionError, ConfigError)):
        load_config("tiny", ["time_budget_s=0"])


def test_schedulers():
    model = torch.nn.Linear(2, 2)
    opt = make_optimizer([{"params": list(model.parameters()), "lr": 1e-3}], OptimConfig())
    sched = make_scheduler(opt, OptimConfig(), steps_per_epoch=10, epochs=10)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert max(lrs) == pytest.approx(1e-3, rel=1e-3) and lrs.index(max(lrs)) in (29, 30)  # pct_start 0.3
    assert lrs[0] == pytest.approx(1e-3 / 25) and lrs[-1] < 1e-5
    cos_cfg = OptimConfig(scheduler="cosine", warmup_epochs=2, min_lr=1e-5)
    opt = make_optimizer([{"params": list(model.parameters()), "lr": 1e-3}], cos_cfg)
    sched = make_scheduler(opt, cos_cfg, steps_per_epoch=10, epochs=10)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert (
        lrs[0] == pytest.approx(1e-3 / 20)
        and lrs[19] == pytest.approx(1e-3)
        and lrs[-1] == pytest.approx(1e-5, rel=0.1)
    )


def test_cli_train_and_eval(data, tmp_path, capsys):
    root, split = data
    out = tmp_path / "cli_run"
    args = ["train", "--config", "tiny", "--data", str(root), "--split", str(split), "--out", str(out)]
    sets = ["--set", "epochs=1", "--set", "data.max_train_windows=4", "--set", "eval_test=false"]
    assert emgkey_main([*args, *sets, "--device", "cpu"]) == 0
    assert (out / "best.pt").is_file()
    capsys.readouterr()
    rc = emgkey_main(["eval", "--checkpoint", str(out / "best.pt"), "--data", str(root), "--split", str(split)])
    assert rc == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert {"cer", "ins", "del", "sub", "target_len"} <= set(result) and result["subset"] == "test"
    assert "CER" in captured.err
    assert json.loads((out / "eval_test.json").read_text())["cer"] == result["cer"]
    # a typo on the command line is an error, not a silent default
    assert emgkey_main([*args[:-1], str(tmp_path / "x"), "--set", "optim.lrr=1"]) == 2
    # the same run folder without --resume is refused
    assert emgkey_main([*args, *sets]) == 2


def test_print_config(capsys):
    assert (
        emgkey_main(
            [
                "train",
                "--config",
                "tiny",
                "--model",
                "tcn",
                "--data",
                "x",
                "--split",
                "y",
                "--out",
                "z",
                "--print-config",
            ]
        )
        == 0
    )
    assert "model: tcn" in capsys.readouterr().out


def test_epoch_rows_take_only_scalars_from_evaluate():
    val = {"cer": 50.0, "loss": 1.5, "example": {"prediction": "a", "target": "b"}, "substitutions": [["b", "a", 1]]}
    assert val_fields(val) == {"val_cer": 50.0, "val_loss": 1.5}
