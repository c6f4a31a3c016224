"""Lower-channel transfer: a model trained on one device, fine-tuned for another.

The 8-channel report (seed 004) moved an emg2qwerty model to a 2 x 8 channel,
200 Hz armband by fine-tuning with gradual unfreezing and layer-wise learning
rates. Here the input geometry differs (channels per band, frequency bins), so
the input layers cannot be reused: ``from_checkpoint`` rebuilds the model with
the target device's geometry, copies every other weight from the checkpoint,
and leaves the input layers (``SpectrogramNorm`` + per-band MLP, i.e. the
model's ``FrontEnd``) freshly initialised.

Fine-tuning then follows a ``TransferPlan``:

- the new input layers and the output head train from the first epoch (a
  frozen random input layer would feed the pretrained body noise for ever);
- the pretrained body, split into at most ``transfer.body_stages`` stages,
  is unfrozen one stage every ``transfer.unfreeze_every`` epochs, starting
  next to the head and moving towards the input (head first, then deeper
  layers; the report's schedule was head, LSTM, MLP, normalisation);
- each stage's learning rate is ``lr * lr_decay ** depth``, ``depth`` counting
  stages from the head (0), so layers far from the head, which hold the most
  general features, move least; the input layers use ``lr * input_lr_mult``.

Groups are found from the module tree, not hard-coded per model: the input
group is every ``FrontEnd``, the head is the last ``Linear`` onto the classes,
and the body is split at list indices (``blocks.3``, ``encoder.0``) and at the
layers of multi-layer RNNs (``weight_ih_l1``), in registration order.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from emgkey.errors import ConfigError
from emgkey.features import FeatureConfig
from emgkey.profiles import DeviceProfile
from emgkey.train.checkpoint import load_checkpoint
from emgkey.train.config import TransferConfig
from emgkey.train.models.common import FrontEnd
from emgkey.train.models.registry import build_model

log = logging.getLogger(__name__)

_RNN_LAYER = re.compile(r"_l(\d+)(?:_reverse)?$")


@dataclass
class LayerGroup:
    name: str
    kind: str  # "input" | "head" | "body"
    depth: int  # 0 for the head, 1.. for body groups from the head down; -1 for the input layers
    param_names: list[str] = field(default_factory=list)


def _input_prefixes(model: nn.Module) -> list[str]:
    prefixes = [name for name, m in model.named_modules() if isinstance(m, FrontEnd)]
    if not prefixes:
        raise ConfigError(f"{type(model).__name__} has no FrontEnd module; transfer cannot find its input layers")
    return prefixes


def _head_prefix(model: nn.Module) -> str:
    num_classes = model.config.num_classes  # type: ignore[union-attr]
    heads = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if not heads:
        raise ConfigError(f"{type(model).__name__} has no Linear layer onto {num_classes} classes")
    return heads[-1]


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _body_key(name: str) -> str:
    """``blocks.3.conv.weight`` -> ``blocks.3``; ``rnn.weight_hh_l1`` -> ``rnn.l1``; ``in_proj.bias`` -> ``in_proj``."""
    parts = name.split(".")
    for p in parts[1:-1]:
        if p.isdigit():
            return f"{parts[0]}.{p}"
    m = _RNN_LAYER.search(parts[-1])
    if m and len(parts) >= 2:
        return f"{'.'.join(parts[:-1])}.l{m.group(1)}"
    return parts[0] if len(parts) > 1 else name


def layer_groups(model: nn.Module, body_stages: int | None = None) -> list[LayerGroup]:
    """Input group, head group, then body groups from the head towards the input.

    ``body_stages`` merges neighbouring body groups into at most that many
    stages (nearest the head first), so a 12-block TCN unfreezes in as many
    steps, and with as few distinct learning rates, as a 2-layer GRU.
    """
    inputs = _input_prefixes(model)
    head = _head_prefix(model)
    group_in = LayerGroup("input", "input", -1)
    group_head = LayerGroup(head, "head", 0)
    body: dict[str, LayerGroup] = {}  # insertion order = registration order (input side first)
    for name, _ in model.named_parameters():
        if any(_under(name, p) for p in inputs):
            group_in.param_names.append(name)
        elif _under(name, head):
            group_head.param_names.append(name)
        else:
            key = _body_key(name)
            body.setdefault(key, LayerGroup(key, "body", 0)).param_names.append(name)
    # A normalisation layer between two layers (the GRU's in_norm / out_norm, the transformer's norm_in /
    # norm_out) is not a stage of its own: it trains with the layer it feeds (the head, for the last one).
    flow = list(body.values())  # registration order = data flow, input side first
    kept: list[LayerGroup] = []
    carry: list[str] = []
    for g in flow:
        if _norm_only(model, g.param_names):
            carry += g.param_names
            continue
        g.param_names[:0] = carry
        carry = []
        kept.append(g)
    group_head.param_names[:0] = carry
    ordered = kept[::-1]  # nearest the head first
    if body_stages is not None and len(ordered) > body_stages:
        merged = []
        for chunk in _split_even(ordered, body_stages):
            merged.append(
                LayerGroup("+".join(g.name for g in chunk), "body", 0, [n for g in chunk for n in g.param_names])
            )
        ordered = merged
    for depth, g in enumerate(ordered, start=1):
        g.depth = depth
    return [group_in, group_head, *ordered]


def _norm_only(model: nn.Module, param_names: list[str]) -> bool:
    norms = (nn.LayerNorm, nn.modules.batchnorm._BatchNorm)
    return all(isinstance(model.get_submodule(n.rpartition(".")[0]), norms) for n in param_names)


def _split_even(items: list[LayerGroup], n: int) -> list[list[LayerGroup]]:
    """``n`` contiguous chunks whose sizes differ by at most one (larger ones first)."""
    size, extra = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        stop = start + size + (i < extra)
        out.append(items[start:stop])
        start = stop
    return out


@dataclass
class TransferPlan:
    """Which groups train at which epoch, and at what learning rate."""

    model: nn.Module
    cfg: TransferConfig
    groups: list[LayerGroup]
    # Same device as the checkpoint: the input layers are pretrained too, and come last.
    input_pretrained: bool = False

    def __post_init__(self) -> None:
        if self.input_pretrained:
            self.groups[0].depth = self.n_body + 1

    @property
    def n_body(self) -> int:
        return sum(g.kind == "body" for g in self.groups)

    @property
    def n_stages(self) -> int:
        """Groups unfrozen after the first epoch (body stages, plus pretrained input layers)."""
        return self.n_body + int(self.input_pretrained)

    def _scheduled(self, group: LayerGroup) -> bool:
        return group.kind == "body" or (group.kind == "input" and self.input_pretrained)

    def lr_of(self, group: LayerGroup, lr: float) -> float:
        if group.kind == "input" and not self.input_pretrained:
            return lr * self.cfg.input_lr_mult
        return lr * self.cfg.lr_decay**group.depth

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimizer groups (all parameters, frozen or not: freezing is ``requires_grad``)."""
        params = dict(self.model.named_parameters())
        return [
            {"params": [params[n] for n in g.param_names], "lr": self.lr_of(g, lr), "name": g.name}
            for g in self.groups
            if g.param_names
        ]

    def unfrozen_depth(self, epoch: int) -> int:
        """Stages trainable at ``epoch`` besides the head (counted from the head)."""
        if self.cfg.unfreeze_every == 0:
            return self.n_stages
        return min(self.n_stages, epoch // self.cfg.unfreeze_every)

    def trainable(self, epoch: int) -> list[str]:
        depth = self.unfrozen_depth(epoch)
        return [g.name for g in self.groups if not self._scheduled(g) or g.depth <= depth]

    def apply(self, epoch: int) -> list[str]:
        """Set ``requires_grad`` for ``epoch``; returns the trainable group names."""
        names = set(self.trainable(epoch))
        params = dict(self.model.named_parameters())
        for g in self.groups:
            for n in g.param_names:
                params[n].requires_grad_(g.name in names)
        return [g.name for g in self.groups if g.name in names]

    def describe(self, lr: float) -> str:
        rows = []
        for g in self.groups:
            n = sum(dict(self.model.named_parameters())[p].numel() for p in g.param_names)
            when = g.depth * self.cfg.unfreeze_every if self._scheduled(g) else 0
            rows.append(f"{g.name:<36} {g.kind:<6} {n:>9} params  lr {self.lr_of(g, lr):.2e}  from epoch {when}")
        return "\n".join(rows)


def plan_for(model: nn.Module, cfg: TransferConfig, input_pretrained: bool = False) -> TransferPlan:
    return TransferPlan(model, cfg, layer_groups(model, cfg.body_stages), input_pretrained)


def adapt_model_config(
    model_config: dict[str, Any], profile: DeviceProfile, feature_cfg: FeatureConfig, overrides: dict[str, Any]
) -> dict[str, Any]:
    """The source architecture with the target device's input geometry (and any overrides)."""
    d = dict(model_config)
    d.update(overrides)
    d.update({"n_bands": profile.n_bands, "channels": profile.channels_per_band, "n_freq": feature_cfg.n_freq})
    return d


def transplant(
    source_state: dict[str, torch.Tensor], model: nn.Module, strict_body: bool = True, keep_input: bool = False
) -> list[str]:
    """Copy ``source_state`` into ``model``, except the input layers unless ``keep_input``; returns what was not."""
    inputs = [] if keep_input else _input_prefixes(model)
    target = model.state_dict()
    missing, copied, fresh = [], {}, []
    for name, t in target.items():
        if any(_under(name, p) for p in inputs):
            fresh.append(name)
            continue
        src = source_state.get(name)
        if src is None or src.shape != t.shape:
            missing.append(f"{name} {tuple(t.shape)} (checkpoint: {None if src is None else tuple(src.shape)})")
            fresh.append(name)
            continue
        copied[name] = src
    if missing and strict_body:
        raise ConfigError("transfer: these layers do not match the checkpoint: " + "; ".join(missing))
    model.load_state_dict({**target, **copied})
    log.info("transfer: copied %d tensors, %d left freshly initialised", len(copied), len(fresh))
    return fresh


def from_checkpoint(
    cfg: TransferConfig, profile: DeviceProfile, feature_cfg: FeatureConfig, overrides: dict[str, Any] | None = None
) -> tuple[nn.Module, dict[str, Any], TransferPlan]:
    """(model for ``profile`` with pretrained body, its config dict, its fine-tuning plan).

    When the checkpoint was trained on the same device and front end, nothing
    is rebuilt: the pretrained input layers are kept and unfrozen last, which
    makes this the personalisation path (generic model -> one user's split).
    """
    assert cfg.init_from, "transfer.init_from names the pretrained checkpoint"
    ckpt = load_checkpoint(cfg.init_from)
    src_profile = ckpt["profile"]["name"]
    model_cfg = adapt_model_config(ckpt["model_config"], profile, feature_cfg, overrides or {})
    model = build_model(model_cfg)
    # Same input geometry and front end (e.g. a generic model personalised on one user's sessions):
    # keep the pretrained input layers too, and unfreeze them last.
    same_input = ckpt["feature_config"] == feature_cfg.to_dict() and all(
        ckpt["model_config"].get(k) == model_cfg[k] for k in ("n_bands", "channels", "n_freq")
    )
    transplant(ckpt["model_state"], model, cfg.strict_body, keep_input=same_input)
    plan = plan_for(model, cfg, input_pretrained=same_input)
    log.info(
        "transfer %s (%s, %s) -> %s:\n%s",
        cfg.init_from,
        model_cfg["name"],
        src_profile,
        profile.name,
        plan.describe(1.0),
    )
    return model, model_cfg, plan
