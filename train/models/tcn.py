"""Causal TCN student: dilated residual Conv1d blocks, streamed with per-block caches.

SpectrogramNorm -> RotationInvariantMLP -> Linear -> N x CausalBlock -> Linear -> log_softmax.

Each block sees ``(kernel_size - 1) * dilation`` past frames. Offline they are zeros
padded on the left; streaming they come from the block's cache, which starts as
zeros and keeps the block's last inputs. Both paths call the same ``CausalBlock`` on
the same ``[context, new frames]`` tensor, so any chunking reproduces ``forward``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emgkey.train.models.common import FrontEnd, ModelConfig, State, StreamingModel, check_positive


@dataclass(frozen=True)
class TCNConfig(ModelConfig):
    model_name: ClassVar[str] = "tcn"

    name: str = "tcn"
    mlp_features: tuple[int, ...] = (64,)  # per band
    offsets: tuple[int, ...] = (-1, 0, 1)
    pooling: str = "mean"
    hidden_size: int = 96
    kernel_size: int = 3
    dilations: tuple[int, ...] = (1, 2, 4, 8, 16, 1, 2, 4, 8, 16)
    dropout: float = 0.1
    chunk_frames: int = 8  # frames per forward_chunk in export; any size streams exactly

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("mlp_features", self.mlp_features)
        check_positive("dilations", self.dilations)
        assert self.hidden_size >= 1 and self.kernel_size >= 1, "hidden_size and kernel_size must be >= 1"
        assert 0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"
        assert self.chunk_frames >= 1, "chunk_frames must be >= 1"

    @property
    def receptive_field(self) -> int:
        """Input frames one output frame depends on (itself and the past)."""
        return 1 + (self.kernel_size - 1) * sum(self.dilations)


class CausalBlock(nn.Module):
    """x + Dropout(Linear(ReLU(DilatedConv(x)))), then LayerNorm over features.

    Takes ``context + T`` frames, returns the last ``T``: the caller supplies the
    ``context = (k - 1) * d`` frames before them (zeros or a cache).
    LayerNorm (per frame) rather than BatchNorm keeps train and stream statistics identical.
    """

    def __init__(self, channels: int, kernel_size: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.context = (kernel_size - 1) * dilation
        self.conv = nn.Conv1d(channels, channels, kernel_size, dilation=dilation)
        self.pointwise = nn.Linear(channels, channels)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x.permute(1, 2, 0))  # (context+T, N, H) -> (N, H, context+T) -> (N, H, T)
        y = self.pointwise(F.relu(y.permute(2, 0, 1)))  # (T, N, H)
        return self.norm(x[self.context :] + self.dropout(y))  # (T, N, H)


def run_cached_blocks(
    blocks: Iterable[nn.Module], caches: Sequence[Tensor], contexts: Sequence[int], h: Tensor
) -> tuple[Tensor, list[Tensor]]:
    """Causal blocks in turn over ``h`` (T, N, C), each fed its cache of the previous chunk's last inputs first;
    returns the output (T, N, C) and each block's new cache (its last ``context`` inputs; none when 0)."""
    new_caches = []
    for block, cache, ctx in zip(blocks, caches, contexts, strict=True):
        xc = torch.cat([cache, h], dim=0)  # (context+T, N, C)
        new_caches.append(xc[xc.shape[0] - ctx :])
        h = block(xc)  # (T, N, C)
    return h, new_caches


class TCNModel(StreamingModel):
    def __init__(self, config: TCNConfig) -> None:
        super().__init__()
        self.config = c = config
        self.front = FrontEnd(c.n_bands, c.channels, c.n_freq, c.mlp_features, c.offsets, c.pooling)
        self.in_proj = nn.Linear(self.front.out_features, c.hidden_size)
        self.blocks = nn.ModuleList(CausalBlock(c.hidden_size, c.kernel_size, d, c.dropout) for d in c.dilations)
        self.contexts = tuple((c.kernel_size - 1) * d for d in c.dilations)  # past frames each block needs
        self.classifier = nn.Linear(c.hidden_size, c.num_classes)

    @property
    def receptive_field(self) -> int | None:
        return self.config.receptive_field

    @property
    def chunk_frames(self) -> int:
        return self.config.chunk_frames

    def state_shapes(self, batch_size: int = 1) -> dict[str, tuple[int, ...]]:
        # Time first like everything else; a block with no context (kernel 1) still gets a (0, N, H) entry.
        H = self.config.hidden_size
        return {f"conv_cache_{i}": (ctx, batch_size, H) for i, ctx in enumerate(self.contexts)}

    def _run(self, x: Tensor, caches: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        h, new_caches = run_cached_blocks(self.blocks, caches, self.contexts, self.in_proj(self.front(x)))  # (T, N, H)
        return F.log_softmax(self.classifier(h), dim=-1), new_caches  # (T, N, classes)

    def forward(self, x: Tensor, input_lengths: Tensor | None = None) -> Tensor:
        # Causal: right padding cannot reach valid frames, so input_lengths is not needed.
        zeros = self.init_state(x.shape[1])
        return self._run(x, [zeros[f"conv_cache_{i}"] for i in range(len(self.blocks))])[0]

    def forward_chunk(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        self._check_state(state, x.shape[1])
        log_probs, caches = self._run(x, [state[f"conv_cache_{i}"] for i in range(len(self.blocks))])
        return log_probs, {f"conv_cache_{i}": c for i, c in enumerate(caches)}
