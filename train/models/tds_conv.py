"""TDS-Conv CTC teacher: emg2qwerty's baseline architecture (~5.3M parameters).

SpectrogramNorm -> per-band RotationInvariantMLP (mlp_features, offsets -1/0/1, mean pooling)
-> flatten bands -> TDS encoder -> Linear -> log_softmax, following emg2qwerty's
``TDSConvCTCModule`` (after Hannun et al., 2019, "Sequence-to-Sequence Speech
Recognition with Time-Depth Separable Convolutions").

The TDS encoder alternates two residual blocks per entry of ``block_channels``:
- a temporal convolution block: the feature vector is viewed as ``channels x width``,
  a ``(1, kernel_width)`` 2D convolution mixes channels over time (shared across width),
  ReLU, residual, LayerNorm over all features;
- a fully connected block: Linear, ReLU, Linear, residual, LayerNorm.
The convolutions are unpadded, so every conv block drops ``kernel_width - 1`` frames:
``T_out = T - len(block_channels) * (kernel_width - 1)``. Offline only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from emgkey.train.models.common import CTCModel, FrontEnd, Lengths, ModelConfig, check_positive, valid_conv_lengths


@dataclass(frozen=True)
class TDSConvConfig(ModelConfig):
    model_name: ClassVar[str] = "tds_conv"

    name: str = "tds_conv"
    mlp_features: tuple[int, ...] = (384,)  # per band
    offsets: tuple[int, ...] = (-1, 0, 1)
    pooling: str = "mean"
    block_channels: tuple[int, ...] = (24, 24, 24, 24)
    kernel_width: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("mlp_features", self.mlp_features)
        check_positive("block_channels", self.block_channels)
        assert self.kernel_width >= 1, "kernel_width must be >= 1"
        for ch in self.block_channels:
            assert self.num_features % ch == 0, f"block channels {ch} must divide num_features {self.num_features}"

    @property
    def num_features(self) -> int:
        return self.n_bands * self.mlp_features[-1]

    @property
    def receptive_field(self) -> int:
        return 1 + len(self.block_channels) * (self.kernel_width - 1)


class TDSConv2dBlock(nn.Module):
    """(T, N, channels*width) -> (T - kernel_width + 1, N, channels*width)."""

    def __init__(self, channels: int, width: int, kernel_width: int) -> None:
        super().__init__()
        self.channels, self.width = channels, width
        self.conv2d = nn.Conv2d(channels, channels, kernel_size=(1, kernel_width))
        self.layer_norm = nn.LayerNorm(channels * width)

    def forward(self, x: Tensor) -> Tensor:
        T, N, D = x.shape
        y = x.permute(1, 2, 0).reshape(N, self.channels, self.width, T)  # (N, channels, width, T)
        y = F.relu(self.conv2d(y))  # (N, channels, width, T')
        y = y.reshape(N, D, -1).permute(2, 0, 1)  # (T', N, D)
        # The residual takes the last T' inputs: output t' sits at the end of its window.
        return self.layer_norm(y + x[T - y.shape[0] :])


class TDSFullyConnectedBlock(nn.Module):
    """(T, N, D) -> (T, N, D)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(num_features, num_features)
        self.fc2 = nn.Linear(num_features, num_features)
        self.layer_norm = nn.LayerNorm(num_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer_norm(x + self.fc2(F.relu(self.fc1(x))))


class TDSConvModel(CTCModel):
    def __init__(self, config: TDSConvConfig) -> None:
        super().__init__()
        self.config = c = config
        self.front = FrontEnd(c.n_bands, c.channels, c.n_freq, c.mlp_features, c.offsets, c.pooling)
        D = c.num_features
        blocks: list[nn.Module] = []
        for ch in c.block_channels:
            blocks += [TDSConv2dBlock(ch, D // ch, c.kernel_width), TDSFullyConnectedBlock(D)]
        self.encoder = nn.Sequential(*blocks)
        self.classifier = nn.Linear(D, c.num_classes)

    @property
    def receptive_field(self) -> int | None:
        return self.config.receptive_field

    def output_lengths(self, input_lengths: Lengths) -> Lengths:
        out = input_lengths
        for _ in self.config.block_channels:
            out = valid_conv_lengths(out, self.config.kernel_width)
        return out

    def forward(self, x: Tensor, input_lengths: Tensor | None = None) -> Tensor:
        assert x.shape[0] >= self.config.receptive_field, (
            f"TDS-Conv needs at least {self.config.receptive_field} frames, got {x.shape[0]}"
        )
        y = self.encoder(self.front(x))  # (T_out, N, D)
        return F.log_softmax(self.classifier(y), dim=-1)  # (T_out, N, classes)
