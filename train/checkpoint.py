"""Self-describing checkpoints (nanoGPT style): the file alone rebuilds the model.

A checkpoint is a ``torch.save``'d dict of plain types and tensors, loadable
with ``weights_only=True`` (no pickled classes, so loading a file cannot run
code). It carries:

- ``model_config``: the ``ModelConfig`` dict ``emgkey.train.models.registry.build_model`` takes;
- ``feature_config``, ``profile``: the front end and the device the model expects;
- ``train_config``: the ``TrainConfig`` dict of the run (to resume or re-evaluate);
- ``charset``: class count, blank id and the key string, to catch a label-set mismatch;
- ``epoch`` (epochs completed), ``best_val_cer``, ``best_epoch``, ``metrics`` (the last epoch's row);
- ``model_state``; and for resuming, ``optimizer``, ``scheduler``, ``torch_rng``;
- ``emgkey_version``, ``torch_version``, ``created_unix``.

Writes are atomic (``emgkey.atomic.atomic_path``): a crash mid-save leaves the
previous ``last.pt`` intact.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emgkey import __version__, charset
from emgkey.atomic import atomic_path
from emgkey.errors import ConfigError
from emgkey.features import FeatureConfig
from emgkey.profiles import DeviceProfile

FORMAT = "emgkey-checkpoint"
FORMAT_VERSION = 1

# What load_model hands back as metadata: everything but the tensors-heavy state.
_STATE_KEYS = ("model_state", "optimizer", "scheduler", "torch_rng")


def charset_info() -> dict[str, Any]:
    return {"num_classes": charset.NUM_CLASSES, "blank": charset.BLANK, "keys": charset.charset_summary()}


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DistributedDataParallel (or similar ``.module``) wrapper."""
    return getattr(model, "module", model)


def save_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    model_config: dict[str, Any],
    feature_config: FeatureConfig,
    profile: DeviceProfile,
    train_config: dict[str, Any],
    epoch: int,
    best_val_cer: float | None,
    best_epoch: int | None,
    metrics: dict[str, Any] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically; ``epoch`` is the number of epochs completed."""
    ckpt: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": dict(model_config),
        "feature_config": feature_config.to_dict(),
        "profile": profile.to_dict(),
        "train_config": train_config,
        "charset": charset_info(),
        "epoch": int(epoch),
        "best_val_cer": None if best_val_cer is None else float(best_val_cer),
        "best_epoch": best_epoch,
        "metrics": dict(metrics or {}),
        "model_state": {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()},
        "emgkey_version": __version__,
        "torch_version": str(torch.__version__),
        "created_unix": time.time(),
        "extra": dict(extra or {}),
    }
    if optimizer is not None:
        ckpt["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        ckpt["scheduler"] = scheduler.state_dict()
    ckpt["torch_rng"] = torch.get_rng_state()
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(ckpt, tmp)
    return Path(path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint dict, checked for format and label set."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ConfigError(f"{path}: not an emgkey checkpoint")
    if ckpt["format_version"] > FORMAT_VERSION:
        raise ConfigError(f"{path}: checkpoint format {ckpt['format_version']} is newer than this emgkey reads")
    cs = ckpt["charset"]
    mine = charset_info()
    if cs["num_classes"] != mine["num_classes"] or cs["blank"] != mine["blank"] or cs["keys"] != mine["keys"]:
        raise ConfigError(f"{path}: trained for another label set ({cs['num_classes']} classes, blank {cs['blank']})")
    return ckpt


def checkpoint_meta(ckpt: dict[str, Any]) -> dict[str, Any]:
    """Everything in a checkpoint but the state tensors."""
    return {k: v for k, v in ckpt.items() if k not in _STATE_KEYS}


def build_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild the model from its stored config and load its weights (eval mode)."""
    from emgkey.train.models.registry import build_model

    model = build_model(ckpt["model_config"])
    model.load_state_dict(ckpt["model_state"])
    return model.eval()


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """``(model in eval mode, metadata)`` from a checkpoint file alone.

    The metadata's ``feature_config`` and ``profile`` dicts rebuild the front
    end (``FeatureConfig.from_dict``) and device (``DeviceProfile.from_dict``)
    the model was trained for.
    """
    ckpt = load_checkpoint(path, map_location)
    return build_from_checkpoint(ckpt), checkpoint_meta(ckpt)


def save_untrained_checkpoint(
    path: str | Path,
    name: str,
    profile: DeviceProfile,
    size: str = "tiny",
    seed: int = 0,
    epoch: int = 0,
    prepare: Callable[[nn.Module], None] | None = None,
) -> Path:
    """A random-weight checkpoint of registry model ``name`` for ``profile``'s front end (fixtures, benchmarks).

    ``prepare`` may change the model before it is saved (e.g. non-trivial BatchNorm statistics).
    """
    from emgkey.train.config import load_config
    from emgkey.train.models.registry import build_model, default_config

    torch.manual_seed(seed)
    feature_cfg = FeatureConfig.for_profile(profile)
    cfg = load_config("tiny", [f"model={name}", "data.test_window_s=2.0", "data.val_window_s=2.0"])
    model_cfg = default_config(name, profile, feature_cfg, size=size).to_dict()  # type: ignore[arg-type]
    model = build_model(model_cfg)
    if prepare is not None:
        prepare(model)
    return save_checkpoint(
        path,
        model=model,
        model_config=model_cfg,
        feature_config=feature_cfg,
        profile=profile,
        train_config=cfg.to_dict(),
        epoch=epoch,
        best_val_cer=None,
        best_epoch=0,
    )
