"""Training configs: YAML round trips, shipped files load, typos are errors."""

from __future__ import annotations

import pytest

from emgkey.errors import ConfigError
from emgkey.train.config import CONFIG_DIR, TrainConfig, load_config, resolve_config_path


def test_defaults_round_trip_through_yaml(tmp_path):
    cfg = TrainConfig()
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert TrainConfig.from_yaml(path) == cfg
    assert TrainConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()


@pytest.mark.parametrize(
    "bad",
    [
        {"epochz": 3},
        {"optim": {"lrr": 1e-3}},
        {"data": {"window": 4.0}},
        {"augment": {"specaugmnet": False}},
        {"transfer": {"init": "x.pt"}},
    ],
)
def test_unknown_keys_are_rejected(bad):
    with pytest.raises(ConfigError, match="unknown config keys"):
        TrainConfig.from_dict(bad)


def test_invalid_values_are_config_errors():
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        TrainConfig.from_dict({"optim": {"lr": -1.0}})
    with pytest.raises(ConfigError, match="scheduler"):
        TrainConfig.from_dict({"optim": {"scheduler": "step"}})
    with pytest.raises(ConfigError, match="must be a mapping"):
        TrainConfig.from_dict({"data": 3})


def test_set_overrides_parse_yaml_values_and_reject_typos():
    cfg = TrainConfig().with_overrides(
        ["optim.lr=3e-4", "data.padding_s=[0.5, 0.1]", "data.test_window_s=null", "model=tcn", "augment.noise=true"]
    )
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.data.padding_s == (0.5, 0.1)
    assert cfg.data.test_window_s is None
    assert cfg.model == "tcn" and cfg.augment.noise is True
    with pytest.raises(ConfigError, match="unknown key 'lrr'"):
        TrainConfig().with_overrides(["optim.lrr=1"])
    with pytest.raises(ConfigError, match="not a config section"):
        TrainConfig().with_overrides(["optimizer.lr=1"])
    with pytest.raises(ConfigError, match="key=value"):
        TrainConfig().with_overrides(["optim.lr"])
    # model_overrides is free-form here; the model registry checks it against ModelConfig.
    assert TrainConfig().with_overrides(["model_overrides.hidden_size=32"]).model_overrides == {"hidden_size": 32}


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.epochs >= 1
    assert resolve_config_path(path.stem) == path


def test_missing_config_names_the_shipped_ones():
    with pytest.raises(ConfigError, match="tiny"):
        resolve_config_path("no-such-config")


def test_feature_hop_overrides_the_profiles_front_end_and_refuses_skipping_samples():
    import pytest

    from emgkey.errors import ConfigError
    from emgkey.features import FeatureConfig
    from emgkey.profiles import get_profile
    from emgkey.train.config import load_config
    from emgkey.train.loop import feature_config_for

    e2q = get_profile("emg2qwerty")
    assert feature_config_for(load_config("tiny").data, e2q) == FeatureConfig.for_profile(e2q)
    fc = feature_config_for(load_config("tiny", ["data.feature_hop=32"]).data, e2q)
    assert (fc.n_fft, fc.hop, fc.frame_rate_hz) == (64, 32, 62.5)
    with pytest.raises(ConfigError, match="n_fft=64"):
        feature_config_for(load_config("tiny", ["data.feature_hop=65"]).data, e2q)
