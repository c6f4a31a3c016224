"""Pieces every CTC model shares: config base, front end, and the streaming contract.

Every model takes features shaped ``(T, N, n_bands, C, n_freq)`` (``emgkey.features``
output, batched time first) and returns CTC log-probabilities ``(T_out, N, num_classes)``.
``T_out`` comes from ``output_lengths``, which each model derives from its own
layers (valid convolutions, strides), so the trainer never guesses it.

Streaming students also implement ``StreamingModel``: ``init_state`` /
``forward_chunk(chunk, state) -> (log_probs, next_state)``, with every cache an
explicit tensor in a flat ``dict[str, Tensor]`` so an exported graph can carry
them as named inputs and ``*_out`` outputs (the sherpa-onnx convention).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from emgkey.charset import NUM_CLASSES

Lengths = TypeVar("Lengths", int, Tensor)
State = dict[str, Tensor]
_Config = TypeVar("_Config", bound="ModelConfig")


# ---------------------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    """Input geometry and vocabulary; subclasses add the architecture.

    ``name`` selects the model in ``registry.build_model``; each subclass fixes it
    through ``model_name`` so a config can never describe the wrong model.
    """

    model_name: ClassVar[str] = ""

    name: str = ""
    n_bands: int = 2
    channels: int = 16  # electrodes per band
    n_freq: int = 33  # feature bins per electrode (FeatureConfig.n_freq)
    num_classes: int = NUM_CLASSES

    def __post_init__(self) -> None:
        assert self.name == self.model_name, (
            f"{type(self).__name__} has name {self.name!r}, expected {self.model_name!r}"
        )
        assert self.n_bands >= 1 and self.channels >= 1 and self.n_freq >= 1, "n_bands, channels, n_freq must be >= 1"
        assert self.num_classes >= 2, "CTC needs at least one label and the blank"

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-ready: tuples become lists."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls: type[_Config], d: Mapping[str, Any]) -> _Config:
        """Inverse of ``to_dict``; an unknown key is an error, not a silent no-op."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}; known: {sorted(known)}")
        # Every sequence field is a tuple (hashable, immutable); YAML/JSON hand back lists.
        kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kwargs)


def check_positive(name: str, values: Sequence[int]) -> None:
    assert len(values) > 0 and all(int(v) >= 1 for v in values), f"{name} must be a non-empty list of ints >= 1"


# ---------------------------------------------------------------------------------------------------------------------
# Length arithmetic
# ---------------------------------------------------------------------------------------------------------------------


def valid_conv_lengths(lengths: Lengths, kernel: int, stride: int = 1) -> Lengths:
    """Output length of an unpadded convolution; 0 when the input is shorter than the kernel."""
    out = (lengths - kernel) // stride + 1
    if isinstance(out, Tensor):
        return out.clamp(min=0)
    return max(0, out)


# ---------------------------------------------------------------------------------------------------------------------
# Front end (emg2qwerty's SpectrogramNorm + MultiBandRotationInvariantMLP)
# ---------------------------------------------------------------------------------------------------------------------


class SpectrogramNorm(nn.Module):
    """BatchNorm per electrode: one statistic per (band, channel) over (N, freq, T).

    In eval mode it is a fixed per-frame affine map, so it streams with no state.
    """

    def __init__(self, n_bands: int, channels: int) -> None:
        super().__init__()
        self.n_bands, self.channels = n_bands, channels
        self.batch_norm = nn.BatchNorm2d(n_bands * channels)

    def forward(self, x: Tensor) -> Tensor:
        T, N, B, C, F = x.shape  # (T, N, bands, C, freq)
        assert (B, C) == (self.n_bands, self.channels), f"expected {self.n_bands} bands x {self.channels} channels"
        y = x.permute(1, 2, 3, 4, 0).reshape(N, B * C, F, T)  # (N, bands*C, freq, T): BatchNorm2d's (N, C, H, W)
        y = self.batch_norm(y)
        return y.reshape(N, B, C, F, T).permute(4, 0, 1, 2, 3)  # (T, N, bands, C, freq)


class RotationInvariantMLP(nn.Module):
    """One MLP per band, applied to the electrode ring rotated by each offset, pooled over offsets.

    A band put on a little rotated shifts every electrode by a position; pooling the
    MLP over rolled copies (-1, 0, +1 by default) makes the feature tolerant to that.

    (T, N, bands, C, freq) -> (T, N, bands, mlp_features[-1])
    """

    def __init__(
        self,
        n_bands: int,
        channels: int,
        n_freq: int,
        mlp_features: Sequence[int],
        offsets: Sequence[int] = (-1, 0, 1),
        pooling: str = "mean",
    ) -> None:
        super().__init__()
        check_positive("mlp_features", mlp_features)
        assert pooling in ("mean", "max"), f"unsupported pooling {pooling!r}"
        self.n_bands, self.channels = n_bands, channels
        self.offsets = tuple(int(o) for o in offsets) or (0,)
        self.pooling = pooling
        self.out_features = int(mlp_features[-1])
        self.mlps = nn.ModuleList(self._mlp(channels * n_freq, mlp_features) for _ in range(n_bands))

    @staticmethod
    def _mlp(in_features: int, features: Sequence[int]) -> nn.Sequential:
        layers: list[nn.Module] = []
        for out in features:
            layers += [nn.Linear(in_features, int(out)), nn.ReLU()]
            in_features = int(out)
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        assert x.shape[2] == self.n_bands, f"expected {self.n_bands} bands, got {x.shape[2]}"
        outs = []
        for band, mlp in enumerate(self.mlps):
            xb = x[:, :, band]  # (T, N, C, freq)
            rolled = torch.stack([xb.roll(o, dims=2) for o in self.offsets], dim=2)  # (T, N, R, C, freq)
            h = mlp(rolled.flatten(start_dim=3))  # (T, N, R, H)
            outs.append(h.mean(dim=2) if self.pooling == "mean" else h.amax(dim=2))  # (T, N, H)
        return torch.stack(outs, dim=2)  # (T, N, bands, H)


class FrontEnd(nn.Module):
    """SpectrogramNorm -> RotationInvariantMLP -> flatten bands: (T, N, bands, C, freq) -> (T, N, bands*H)."""

    def __init__(
        self,
        n_bands: int,
        channels: int,
        n_freq: int,
        mlp_features: Sequence[int],
        offsets: Sequence[int] = (-1, 0, 1),
        pooling: str = "mean",
    ) -> None:
        super().__init__()
        self.shape = (n_bands, channels, n_freq)
        self.norm = SpectrogramNorm(n_bands, channels)
        self.mlp = RotationInvariantMLP(n_bands, channels, n_freq, mlp_features, offsets, pooling)
        self.out_features = n_bands * self.mlp.out_features

    def forward(self, x: Tensor) -> Tensor:
        assert x.ndim == 5 and tuple(x.shape[2:]) == self.shape, (
            f"expected features (T, N, {', '.join(map(str, self.shape))}), got {tuple(x.shape)}"
        )
        return self.mlp(self.norm(x)).flatten(start_dim=2)  # (T, N, bands*H)


# ---------------------------------------------------------------------------------------------------------------------
# Model contracts
# ---------------------------------------------------------------------------------------------------------------------


class CTCModel(nn.Module):
    """Base of every model: features (T, N, bands, C, freq) -> log-probs (T_out, N, num_classes).

    ``stride``: input frames per output frame. ``receptive_field``: input frames one
    output frame depends on (``None``: unbounded, as for recurrent or attention models).
    """

    config: ModelConfig

    @property
    def stride(self) -> int:
        return 1

    @property
    def receptive_field(self) -> int | None:
        return None

    def output_lengths(self, input_lengths: Lengths) -> Lengths:
        """Valid output frames for inputs of these lengths (int or (N,) tensor)."""
        return input_lengths

    def forward(self, x: Tensor, input_lengths: Tensor | None = None) -> Tensor:
        """``input_lengths`` (N,) lets a model ignore right padding where it could leak (attention)."""
        raise NotImplementedError


class StreamingModel(CTCModel, ABC):
    """A model that also runs chunk by chunk with explicit state.

    Contract (checked by tests/test_models_streaming.py): in eval mode, ``forward`` on
    a whole sequence equals concatenating ``forward_chunk`` outputs over consecutive
    chunks of ``chunk_frames`` frames (the last may be shorter; causal models accept
    any chunk size). ``forward_chunk`` is pure: it never writes into ``state``.

    Output frame ``t`` describes input frame ``t - lookahead_frames``: a model that
    peeks ``lookahead_frames`` ahead emits that much later.
    """

    @property
    @abstractmethod
    def chunk_frames(self) -> int: ...

    @property
    def lookahead_frames(self) -> int:
        return 0

    @abstractmethod
    def state_shapes(self, batch_size: int = 1) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every state tensor, in the order an exported graph lists them."""

    def init_state(self, batch_size: int = 1) -> State:
        """The state before the first chunk: all zeros, on the model's device."""
        p = next(self.parameters())
        return {k: torch.zeros(s, dtype=p.dtype, device=p.device) for k, s in self.state_shapes(batch_size).items()}

    @abstractmethod
    def forward_chunk(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """x (m, N, bands, C, freq) -> (log_probs (m, N, num_classes), next state)."""

    def _check_state(self, state: State, batch_size: int) -> None:
        expected = self.state_shapes(batch_size)
        assert set(state) == set(expected), f"state keys {sorted(state)} != {sorted(expected)}"
        for k, s in expected.items():
            assert tuple(state[k].shape) == s, f"state {k!r} has shape {tuple(state[k].shape)}, expected {s}"
