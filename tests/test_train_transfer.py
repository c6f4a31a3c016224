"""Lower-channel transfer: input layers rebuilt for the new device, body copied, gradual unfreezing."""

from __future__ import annotations

import json

import pytest
import torch
from test_train_common import make_dataset

from emgkey.errors import ConfigError
from emgkey.features import FeatureConfig
from emgkey.profiles import ARMBAND8, EMG2QWERTY
from emgkey.train.checkpoint import load_checkpoint, load_model, save_checkpoint
from emgkey.train.config import TrainConfig, TransferConfig, load_config
from emgkey.train.loop import train
from emgkey.train.models.registry import MODEL_NAMES, build_model, default_config
from emgkey.train.transfer import from_checkpoint, layer_groups, plan_for

E2Q_FEATS = FeatureConfig.for_profile(EMG2QWERTY)
A8_FEATS = FeatureConfig.for_profile(ARMBAND8)


def _pretrained(path, name="gru"):
    """A checkpoint of a (randomly initialised) tiny model for the emg2qwerty device."""
    torch.manual_seed(0)
    cfg = default_config(name, "emg2qwerty", E2Q_FEATS, size="tiny").to_dict()
    model = build_model(cfg)
    save_checkpoint(
        path,
        model=model,
        model_config=cfg,
        feature_config=E2Q_FEATS,
        profile=EMG2QWERTY,
        train_config=TrainConfig(model=name, model_size="tiny").to_dict(),
        epoch=1,
        best_val_cer=50.0,
        best_epoch=0,
    )
    return path, model


def test_input_layers_are_rebuilt_and_the_body_is_copied(tmp_path):
    path, source = _pretrained(tmp_path / "e2q.pt")
    model, model_cfg, _ = from_checkpoint(TransferConfig(init_from=str(path)), ARMBAND8, A8_FEATS)
    assert (model_cfg["channels"], model_cfg["n_freq"]) == (8, A8_FEATS.n_freq)
    assert model.front.norm.batch_norm.num_features == 2 * 8
    assert model.front.mlp.mlps[0][0].in_features == 8 * A8_FEATS.n_freq
    src, dst = source.state_dict(), model.state_dict()
    for name, t in dst.items():
        if name.startswith("front."):
            assert (
                src[name].shape != t.shape or not torch.equal(src[name], t) or "num_batches" in name or t.numel() == 0
            )
        else:
            torch.testing.assert_close(t, src[name], rtol=0, atol=0, msg=name)
    x = torch.randn(30, 2, 2, 8, A8_FEATS.n_freq)  # armband8 features (T, N, bands, C, freq)
    assert tuple(model(x).shape) == (30, 2, 99)


def test_gradual_unfreezing_and_layerwise_rates(tmp_path):
    path, _ = _pretrained(tmp_path / "e2q.pt")
    cfg = TransferConfig(init_from=str(path), unfreeze_every=2, lr_decay=0.5, input_lr_mult=2.0)
    model, _, plan = from_checkpoint(cfg, ARMBAND8, A8_FEATS)
    names = [g.name for g in plan.groups]
    assert names == ["input", "classifier", "rnn.l1", "rnn.l0"]  # body listed from the head down
    rates = {g["name"]: g["lr"] for g in plan.param_groups(1e-3)}
    assert rates == pytest.approx({"input": 2e-3, "classifier": 1e-3, "rnn.l1": 5e-4, "rnn.l0": 2.5e-4})

    def trainable():
        return {
            n.split(".")[0] + ("." + n.split("_")[-1] if n.startswith("rnn") else "")
            for n, p in model.named_parameters()
            if p.requires_grad
        }

    schedule = {}
    for epoch in range(6):
        plan.apply(epoch)
        schedule[epoch] = trainable()
    # new input layers + head first; each LayerNorm trains with the layer it feeds (out_norm: the head)
    assert schedule[0] == schedule[1] == {"front", "out_norm", "classifier"}
    assert schedule[2] == schedule[3] == {"front", "out_norm", "classifier", "rnn.l1"}
    assert schedule[4] == schedule[5] == {"front", "out_norm", "classifier", "rnn.l1", "in_norm", "rnn.l0"}
    everything = plan_for(model, TransferConfig(init_from=str(path), unfreeze_every=0))
    everything.apply(0)
    assert all(p.requires_grad for p in model.parameters())


def test_same_device_keeps_the_input_layers_and_unfreezes_them_last(tmp_path):
    path, source = _pretrained(tmp_path / "e2q.pt")
    cfg = TransferConfig(init_from=str(path), unfreeze_every=1, lr_decay=0.5)
    model, _, plan = from_checkpoint(cfg, EMG2QWERTY, E2Q_FEATS)  # e.g. personalising a generic model
    for name, t in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], t, rtol=0, atol=0, msg=name)
    assert plan.input_pretrained and plan.groups[0].depth == 3  # after rnn.l1 (1) and rnn.l0 (2)
    assert plan.trainable(0) == ["classifier"]
    assert plan.trainable(2) == ["classifier", "rnn.l1", "rnn.l0"]
    assert plan.trainable(3) == ["input", "classifier", "rnn.l1", "rnn.l0"]
    assert {g["name"]: g["lr"] for g in plan.param_groups(1.0)}["input"] == pytest.approx(0.125)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_splits_into_groups(name):
    model = build_model(default_config(name, "armband8", A8_FEATS, size="tiny"))
    groups = layer_groups(model)
    assert groups[0].kind == "input" and groups[0].param_names
    assert groups[1].kind == "head" and groups[1].name == "classifier"
    assert any(g.kind == "body" for g in groups)
    listed = [n for g in groups for n in g.param_names]
    assert sorted(listed) == sorted(n for n, _ in model.named_parameters())  # a partition
    assert all(n.startswith("front.") for n in groups[0].param_names)


def test_mismatched_body_is_an_error(tmp_path):
    path, _ = _pretrained(tmp_path / "e2q.pt")
    with pytest.raises(ConfigError, match="do not match"):
        from_checkpoint(TransferConfig(init_from=str(path)), ARMBAND8, A8_FEATS, {"hidden_size": 7})


def test_transfer_run_end_to_end(tmp_path):
    path, _ = _pretrained(tmp_path / "e2q.pt")
    root, split = make_dataset(tmp_path / "a8", ARMBAND8, seconds=8.0)
    cfg = load_config(
        "transfer8",
        [
            f"transfer.init_from={path}",
            "epochs=3",
            "device=cpu",
            "transfer.unfreeze_every=1",
            "data.max_train_windows=4",
            "data.max_eval_windows=2",
            "eval_test=false",
        ],
    )
    out = tmp_path / "run"
    train(cfg, root, split, out)
    rows = json.loads((out / "metrics.json").read_text())["epochs"]
    counts = [r["trainable_params"] for r in rows]
    assert counts[0] < counts[1] < counts[2]  # one more layer group each epoch
    _, meta = load_model(out / "best.pt")
    assert meta["profile"]["name"] == "armband8" and meta["model_config"]["channels"] == 8
    assert load_checkpoint(out / "last.pt")["train_config"]["transfer"]["init_from"] == str(path)


def test_fine_tuning_on_the_same_device_keeps_the_checkpoints_feature_hop(tmp_path):
    from dataclasses import replace

    feats = replace(E2Q_FEATS, hop=32)
    torch.manual_seed(0)
    cfg = default_config("gru", "emg2qwerty", feats, size="tiny").to_dict()
    path = save_checkpoint(
        tmp_path / "e2q_hop32.pt",
        model=build_model(cfg),
        model_config=cfg,
        feature_config=feats,
        profile=EMG2QWERTY,
        train_config=TrainConfig(model="gru", model_size="tiny").to_dict(),
        epoch=1,
        best_val_cer=50.0,
        best_epoch=0,
    )
    root, split = make_dataset(tmp_path / "e2q", EMG2QWERTY, seconds=6.0)
    sets = [f"transfer.init_from={path}", "epochs=1", "device=cpu", "data.max_train_windows=2", "eval_test=false"]
    out = tmp_path / "run"
    train(load_config("tiny", [*sets, "data.max_eval_windows=1"]), root, split, out)
    assert load_checkpoint(out / "last.pt")["feature_config"]["hop"] == 32
