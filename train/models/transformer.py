"""CNN + Transformer teacher (seed report 003: 8 heads, 4 layers, 384 wide, LayerNorms
between transformer layers and between the conv and attention encoders).

SpectrogramNorm -> RotationInvariantMLP -> conv front end (unpadded Conv1d + GELU + LayerNorm
per layer; strides > 1 downsample time) -> LayerNorm -> positions -> N x pre-norm
Transformer block -> LayerNorm -> Linear -> log_softmax.

Bidirectional and offline: it is a teacher. Pass ``input_lengths`` to ``forward`` for
right-padded batches so attention ignores the padding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emgkey.train.models.common import CTCModel, FrontEnd, Lengths, ModelConfig, check_positive, valid_conv_lengths


@dataclass(frozen=True)
class TransformerConfig(ModelConfig):
    model_name: ClassVar[str] = "transformer"

    name: str = "transformer"
    mlp_features: tuple[int, ...] = (384,)  # per band
    offsets: tuple[int, ...] = (-1, 0, 1)
    pooling: str = "mean"
    conv_kernels: tuple[int, ...] = (3, 3)
    conv_strides: tuple[int, ...] = (1, 2)  # total stride 2: 62.5 Hz emissions at 125 Hz frames
    d_model: int = 384
    num_heads: int = 8
    num_layers: int = 4
    ff_features: int = 1536
    dropout: float = 0.1
    positions: str = "sinusoidal"  # or "learned" (then sequences are limited to max_positions outputs)
    max_positions: int = 4096

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("mlp_features", self.mlp_features)
        check_positive("conv_kernels", self.conv_kernels)
        check_positive("conv_strides", self.conv_strides)
        assert len(self.conv_kernels) == len(self.conv_strides), "one stride per conv kernel"
        assert self.d_model % self.num_heads == 0, "d_model must be a multiple of num_heads"
        assert self.num_layers >= 1 and self.ff_features >= 1, "num_layers and ff_features must be >= 1"
        assert 0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"
        assert self.positions in ("sinusoidal", "learned"), f"unknown positions {self.positions!r}"
        assert self.max_positions >= 1, "max_positions must be >= 1"

    @property
    def stride(self) -> int:
        return math.prod(self.conv_strides)


class ConvFrontEnd(nn.Module):
    """Unpadded, possibly strided Conv1d layers over time: (T, N, D_in) -> (T', N, d_model)."""

    def __init__(self, in_features: int, d_model: int, kernels: tuple[int, ...], strides: tuple[int, ...]) -> None:
        super().__init__()
        self.kernels, self.strides = kernels, strides
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        for i, (k, s) in enumerate(zip(kernels, strides, strict=True)):
            self.convs.append(nn.Conv1d(in_features if i == 0 else d_model, d_model, k, stride=s))
            self.norms.append(nn.LayerNorm(d_model))

    def output_lengths(self, lengths: Lengths) -> Lengths:
        for k, s in zip(self.kernels, self.strides, strict=True):
            lengths = valid_conv_lengths(lengths, k, s)
        return lengths

    def forward(self, x: Tensor) -> Tensor:
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = norm(F.gelu(conv(x.permute(1, 2, 0)).permute(2, 0, 1)))  # (T, N, C) -> (N, C, T) -> (T', N, d)
        return x


def sinusoidal_positions(n: int, d: int, device: torch.device | None = None) -> Tensor:
    """(n, 1, d) fixed encodings (Vaswani et al.), computed for any length."""
    pos = torch.arange(n, dtype=torch.float32, device=device)[:, None]  # (n, 1)
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / d))
    pe = torch.zeros(n, d, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: d // 2])
    return pe[:, None, :]


class TransformerBlock(nn.Module):
    """Pre-norm block: x + Attn(LN(x)), then x + FF(LN(x)). (T, N, d) -> (T, N, d)."""

    def __init__(self, d_model: int, num_heads: int, ff_features: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout)  # time first
        self.norm2 = nn.LayerNorm(d_model)
        self.ff1 = nn.Linear(d_model, ff_features)
        self.ff2 = nn.Linear(ff_features, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, pad_mask: Tensor | None) -> Tensor:
        h = self.norm1(x)
        x = x + self.dropout(self.attn(h, h, h, key_padding_mask=pad_mask, need_weights=False)[0])
        return x + self.dropout(self.ff2(self.dropout(F.gelu(self.ff1(self.norm2(x))))))


class TransformerModel(CTCModel):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = c = config
        self.front = FrontEnd(c.n_bands, c.channels, c.n_freq, c.mlp_features, c.offsets, c.pooling)
        self.conv = ConvFrontEnd(self.front.out_features, c.d_model, c.conv_kernels, c.conv_strides)
        self.pos = nn.Parameter(torch.zeros(c.max_positions, 1, c.d_model)) if c.positions == "learned" else None
        if self.pos is not None:
            nn.init.normal_(self.pos, std=0.02)
        self.norm_in = nn.LayerNorm(c.d_model)  # between the conv and attention encoders (keeps training stable)
        self.dropout = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(c.d_model, c.num_heads, c.ff_features, c.dropout) for _ in range(c.num_layers)
        )
        self.norm_out = nn.LayerNorm(c.d_model)
        self.classifier = nn.Linear(c.d_model, c.num_classes)

    @property
    def stride(self) -> int:
        return self.config.stride

    def output_lengths(self, input_lengths: Lengths) -> Lengths:
        return self.conv.output_lengths(input_lengths)

    def forward(self, x: Tensor, input_lengths: Tensor | None = None) -> Tensor:
        T_out = self.output_lengths(x.shape[0])
        assert T_out >= 1, f"{x.shape[0]} frames are too few for the conv front end"
        h = self.norm_in(self.conv(self.front(x)))  # (T_out, N, d)
        if self.pos is None:
            h = h + sinusoidal_positions(T_out, self.config.d_model, h.device).to(h.dtype)
        else:
            assert T_out <= self.pos.shape[0], f"{T_out} outputs exceed max_positions={self.pos.shape[0]}"
            h = h + self.pos[:T_out]
        h = self.dropout(h)
        pad_mask = None
        if input_lengths is not None:
            out_lengths = self.output_lengths(input_lengths.to(h.device))  # (N,)
            pad_mask = torch.arange(T_out, device=h.device)[None, :] >= out_lengths[:, None]  # (N, T_out) True = pad
        for block in self.blocks:
            h = block(h, pad_mask)
        return F.log_softmax(self.classifier(self.norm_out(h)), dim=-1)  # (T_out, N, classes)
