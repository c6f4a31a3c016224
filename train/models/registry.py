"""Models by name: build from a config dict (as stored in checkpoints) and default sizes per profile.

>>> cfg = default_config("gru", "armband8")  # a ModelConfig sized for the device
>>> model = build_model(cfg.to_dict())  # a checkpoint stores the dict and rebuilds from it
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

from emgkey.features import FeatureConfig
from emgkey.profiles import DeviceProfile, get_profile
from emgkey.train.models.bilstm import BiLSTMConfig, BiLSTMModel
from emgkey.train.models.common import CTCModel, ModelConfig
from emgkey.train.models.gru import GRUConfig, GRUModel
from emgkey.train.models.tcn import TCNConfig, TCNModel
from emgkey.train.models.tds_conv import TDSConvConfig, TDSConvModel
from emgkey.train.models.transformer import TransformerConfig, TransformerModel

Size = Literal["default", "small", "tiny"]
SIZES: tuple[str, ...] = ("default", "small", "tiny")

MODELS: dict[str, tuple[type[ModelConfig], type[CTCModel]]] = {
    "gru": (GRUConfig, GRUModel),
    "bilstm": (BiLSTMConfig, BiLSTMModel),
    "tcn": (TCNConfig, TCNModel),
    "tds_conv": (TDSConvConfig, TDSConvModel),
    "transformer": (TransformerConfig, TransformerModel),
}
MODEL_NAMES: tuple[str, ...] = tuple(MODELS)
STREAMING_MODELS: tuple[str, ...] = ("gru", "bilstm", "tcn")


def _lookup(name: str) -> tuple[type[ModelConfig], type[CTCModel]]:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {list(MODELS)}") from None


def config_from_dict(d: Mapping[str, Any]) -> ModelConfig:
    """The right ``ModelConfig`` subclass for ``d["name"]``; unknown keys are an error."""
    if "name" not in d:
        raise ValueError("model config has no 'name'")
    return _lookup(d["name"])[0].from_dict(d)


def build_model(config: Mapping[str, Any] | ModelConfig) -> CTCModel:
    """A fresh (randomly initialised) model from a config dict or ``ModelConfig``."""
    cfg = config if isinstance(config, ModelConfig) else config_from_dict(config)
    cfg_cls, model_cls = _lookup(cfg.name)
    assert isinstance(cfg, cfg_cls), f"{type(cfg).__name__} cannot build {cfg.name!r}"
    return model_cls(cfg)


def _frames(feature_cfg: FeatureConfig, seconds: float) -> int:
    return max(1, round(seconds * feature_cfg.frame_rate_hz))


def default_config(
    name: str,
    profile_name: str | DeviceProfile,
    feature_cfg: FeatureConfig | None = None,
    size: Size = "default",
) -> ModelConfig:
    """A sensible config for ``name`` on a device profile and feature front end.

    Input geometry comes from the profile (bands, electrodes) and the features
    (bins); time spans chosen in seconds (chunks, look-ahead, TDS kernels) are
    converted at the feature frame rate, so armband8's 50 Hz frames get the
    same latency as emg2qwerty's 125 Hz. ``size="tiny"`` gives a few-thousand-
    parameter version for CI; ``size="small"`` gives the teachers (TDS-Conv,
    CNN+Transformer) a ~1M-parameter shape that trains on a 2-core CPU in
    minutes (the defaults, ~5M / ~9M, are 5x slower per step; students have no
    small preset: their default already is the device size).
    """
    cfg_cls, _ = _lookup(name)
    assert size in SIZES, f"size must be one of {SIZES}, not {size!r}"
    profile = get_profile(profile_name) if isinstance(profile_name, str) else profile_name
    feature_cfg = feature_cfg if feature_cfg is not None else FeatureConfig.for_profile(profile)
    geometry = {"n_bands": profile.n_bands, "channels": profile.channels_per_band, "n_freq": feature_cfg.n_freq}
    chunk = _frames(feature_cfg, 0.064)  # 8 frames at 125 Hz, 3 at 50 Hz

    sized: dict[str, Any]
    if name == "gru":
        # LayerNorm around the recurrence: without it the emg2qwerty GRU never left CTC's all-blank plateau
        # (docs/training.md, "The GRU's LayerNorm")
        sized = {"chunk_frames": chunk, "layer_norm": True}
        if size == "tiny":
            sized |= {"mlp_features": (8,), "hidden_size": 24, "num_layers": 2}
    elif name == "tcn":
        sized = {"chunk_frames": chunk}
        if size == "tiny":
            sized |= {"mlp_features": (8,), "hidden_size": 16, "dilations": (1, 2, 4)}
    elif name == "bilstm":
        sized = {"chunk_frames": _frames(feature_cfg, 0.128), "lookahead_frames": _frames(feature_cfg, 0.064)}
        if size == "tiny":
            sized |= {
                "mlp_features": (6,),
                "hidden_size": 6,
                "fc_features": 12,
                "chunk_frames": 5,
                "lookahead_frames": 3,
            }
    elif name == "tds_conv":
        # emg2qwerty's 32-frame kernels are 256 ms; keep the span at other frame rates.
        sized = {"kernel_width": _frames(feature_cfg, 0.256)}
        if size == "small":
            sized |= {"mlp_features": (128,), "block_channels": (16, 16, 16, 16)}
        if size == "tiny":
            sized |= {"mlp_features": (8,), "block_channels": (4, 4), "kernel_width": 4}
    else:  # transformer
        sized = {}
        if size == "small":
            sized |= {"mlp_features": (128,), "d_model": 160, "num_heads": 4, "num_layers": 3, "ff_features": 640}
        if size == "tiny":
            sized |= {"mlp_features": (8,), "d_model": 16, "num_heads": 2, "num_layers": 1, "ff_features": 32}
    return cfg_cls(**geometry, **sized)


def default_configs(profile_name: str, size: Size = "default") -> dict[str, ModelConfig]:
    return {name: default_config(name, profile_name, size=size) for name in MODEL_NAMES}


def replace_config(cfg: ModelConfig, **changes: Any) -> ModelConfig:
    """``dataclasses.replace`` that names the bad key when a change is misspelt."""
    known = {f.name for f in dataclasses.fields(cfg)}
    unknown = set(changes) - known
    if unknown:
        raise ValueError(f"unknown {type(cfg).__name__} fields: {sorted(unknown)}")
    return dataclasses.replace(cfg, **changes)
