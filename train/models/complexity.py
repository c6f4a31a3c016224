"""Parameter counts and multiply-accumulates (MACs) per second of signal.

MACs are counted with forward hooks on the layers that carry the arithmetic:
Linear, Conv1d/Conv2d, GRU/LSTM (``nn`` and ``ExplicitGRU``) and multi-head attention
(projections plus the two T x S products). Element-wise work (norms, activations,
gates' element-wise products, softmax) is left out, as is customary.

"Per second" is the steady-state cost: MACs for ``T0 + F`` frames minus MACs for
``T0`` frames, where ``F`` is one second of frames and ``T0`` the fewest frames that
give one output (so unpadded convolutions are already "warm"). For every model but
the transformer that is exactly what a stream costs per second; attention grows with
the window, and for it the number is the cost of a one-second window.

    python -m emgkey.train.models.complexity          # table for every model and profile
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from emgkey.features import FeatureConfig
from emgkey.profiles import PROFILES, get_profile
from emgkey.train.models.common import CTCModel
from emgkey.train.models.gru import ExplicitGRU
from emgkey.train.models.registry import MODEL_NAMES, SIZES, Size, build_model, default_config


@dataclass(frozen=True)
class Complexity:
    name: str
    params: int
    macs_per_second: int
    frame_rate_hz: float

    @property
    def macs_per_frame(self) -> float:
        return self.macs_per_second / self.frame_rate_hz


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _rnn_macs(module: Any, x: Tensor, gates: int) -> int:
    """nn.GRU / nn.LSTM / ExplicitGRU: every step multiplies the input and the hidden state by the gate matrices."""
    T, N = x.shape[:2]
    H, D, layers = int(module.hidden_size), int(module.input_size), int(module.num_layers)
    dirs = 2 if getattr(module, "bidirectional", False) else 1
    total = 0
    for layer in range(layers):
        d = D if layer == 0 else H * dirs
        total += dirs * gates * H * (d + H)
    return T * N * total


def _layer_macs(module: nn.Module, inputs: tuple, output: object) -> int:
    if isinstance(module, nn.Linear):
        x = inputs[0]
        return module.in_features * module.out_features * (x.numel() // module.in_features)
    if isinstance(module, nn.Conv1d | nn.Conv2d):
        assert isinstance(output, Tensor)
        return output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
    if isinstance(module, nn.GRU | ExplicitGRU):
        return _rnn_macs(module, inputs[0], gates=3)
    if isinstance(module, nn.LSTM):
        return _rnn_macs(module, inputs[0], gates=4)
    if isinstance(module, nn.MultiheadAttention):
        q, k = inputs[0], inputs[1]  # time first: (T, N, d), (S, N, d)
        T, N, d = q.shape
        S = k.shape[0]
        # q, k, v and output projections, then Q K^T and attention-weighted V.
        return N * (2 * T * d * d + 2 * S * d * d + 2 * T * S * d)
    return 0


def count_macs(model: CTCModel, n_frames: int, batch_size: int = 1) -> int:
    """MACs of one eval-mode ``forward`` on ``n_frames`` random feature frames."""
    c = model.config
    p = next(model.parameters())
    x = torch.randn(n_frames, batch_size, c.n_bands, c.channels, c.n_freq, dtype=p.dtype, device=p.device)
    total = 0

    def hook(module: nn.Module, inputs: tuple, output: object) -> None:
        nonlocal total
        total += _layer_macs(module, inputs, output)

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total


def min_input_frames(model: CTCModel, limit: int = 100_000) -> int:
    """Fewest input frames that give one output frame."""
    for n in range(1, limit):
        if model.output_lengths(n) >= 1:
            return n
    raise ValueError(f"{type(model).__name__} gives no output for up to {limit} frames")


def macs_per_second(model: CTCModel, frame_rate_hz: float) -> int:
    """Steady-state MACs per second of signal at ``frame_rate_hz`` feature frames (see module doc)."""
    t0 = min_input_frames(model)
    one_second = round(frame_rate_hz)
    # Integer frame rates are exact; otherwise scale the measured whole-frame second.
    return round((count_macs(model, t0 + one_second) - count_macs(model, t0)) * frame_rate_hz / one_second)


def measure(model: CTCModel, frame_rate_hz: float) -> Complexity:
    return Complexity(model.config.name, count_params(model), macs_per_second(model, frame_rate_hz), frame_rate_hz)


def report(profiles: Iterable[str] = tuple(PROFILES), names: Iterable[str] = MODEL_NAMES, size: Size = "default"):
    """One row per (profile, model) at the registry's default sizes."""
    rows = []
    for profile_name in profiles:
        feature_cfg = FeatureConfig.for_profile(get_profile(profile_name))
        for name in names:
            model = build_model(default_config(name, profile_name, feature_cfg, size=size))
            rows.append({"profile": profile_name, **asdict(measure(model, feature_cfg.frame_rate_hz))})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Parameters and MACs per second of signal for each model.")
    ap.add_argument("--size", choices=SIZES, default="default")
    ap.add_argument("--profile", action="append", choices=sorted(PROFILES), help="repeatable; default: all")
    args = ap.parse_args(argv)
    print(f"{'profile':<11} {'model':<12} {'params':>10} {'MMAC/s':>9} {'kMAC/frame':>11} {'frames/s':>9}")
    for r in report(args.profile or tuple(PROFILES), size=args.size):
        print(
            f"{r['profile']:<11} {r['name']:<12} {r['params']:>10,} {r['macs_per_second'] / 1e6:>9.1f} "
            f"{r['macs_per_second'] / r['frame_rate_hz'] / 1e3:>11.1f} {r['frame_rate_hz']:>9.1f}"
        )


if __name__ == "__main__":
    main()
