"""Streaming GRU student: the Raspberry Pi model.

SpectrogramNorm -> RotationInvariantMLP -> unidirectional multi-layer GRU -> Linear -> log_softmax.
Fully causal, so any chunking of the input gives the same emissions; the only state
is the GRU hidden vector per layer.

Training uses ``nn.GRU`` (cuDNN). ONNX Runtime / NNCF quantizers leave ONNX ``GRU``
nodes in float, so export swaps in ``ExplicitGRU``: the same equations written as
MatMul/Add/Sigmoid/Tanh, with the same parameter names, so a checkpoint trained with
``rnn_impl="torch"`` loads unchanged into a model built with ``rnn_impl="explicit"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emgkey.train.models.common import FrontEnd, ModelConfig, State, StreamingModel, check_positive
from emgkey.train.models.tcn import CausalBlock, run_cached_blocks


@dataclass(frozen=True)
class GRUConfig(ModelConfig):
    model_name: ClassVar[str] = "gru"

    name: str = "gru"
    mlp_features: tuple[int, ...] = (64,)  # per band
    offsets: tuple[int, ...] = (-1, 0, 1)
    pooling: str = "mean"
    hidden_size: int = 160
    num_layers: int = 2
    dropout: float = 0.1  # between GRU layers and before the classifier
    # LayerNorm (per frame) on the GRU's input and output. ``default_config`` turns it on (the emg2qwerty GRU
    # never left CTC's all-blank plateau without it); False here so that checkpoints from before it load as trained
    layer_norm: bool = False
    # causal dilated conv blocks (the TCN's) between the front end and the GRU: local transient detectors, so
    # the recurrence starts from features that already see a keystroke's ~100 ms burst. () = none
    conv_dilations: tuple[int, ...] = ()
    conv_channels: int = 96
    conv_kernel: int = 3
    rnn_impl: str = "torch"  # "torch" (nn.GRU, training) or "explicit" (ExplicitGRU, quantizable export)
    chunk_frames: int = 8  # frames per forward_chunk in export; any size streams exactly

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("mlp_features", self.mlp_features)
        assert self.hidden_size >= 1 and self.num_layers >= 1, "hidden_size and num_layers must be >= 1"
        assert 0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"
        assert self.rnn_impl in ("torch", "explicit"), f"rnn_impl must be 'torch' or 'explicit', not {self.rnn_impl!r}"
        assert self.chunk_frames >= 1, "chunk_frames must be >= 1"
        assert all(int(d) >= 1 for d in self.conv_dilations), "conv_dilations must be ints >= 1"
        assert self.conv_channels >= 1 and self.conv_kernel >= 1, "conv_channels and conv_kernel must be >= 1"

    @property
    def conv_contexts(self) -> tuple[int, ...]:
        """Past frames each conv block needs (its cache length when streaming)."""
        return tuple((self.conv_kernel - 1) * d for d in self.conv_dilations)


class ExplicitGRU(nn.Module):
    """``nn.GRU`` (time first, unidirectional, with biases) as explicit matrix products.

    Parameters are named exactly as ``nn.GRU``'s (``weight_ih_l0``: (3H, D), gates in
    r, z, n order), so ``ExplicitGRU.load_state_dict(gru.state_dict())`` works both ways.
    The input projection of all time steps is one MatMul; only the recurrent
    product runs step by step (unrolled when traced for a fixed chunk).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers, self.dropout = input_size, hidden_size, num_layers, dropout
        H = hidden_size
        for k in range(num_layers):
            d = input_size if k == 0 else H
            self.register_parameter(f"weight_ih_l{k}", nn.Parameter(torch.empty(3 * H, d)))
            self.register_parameter(f"weight_hh_l{k}", nn.Parameter(torch.empty(3 * H, H)))
            self.register_parameter(f"bias_ih_l{k}", nn.Parameter(torch.empty(3 * H)))
            self.register_parameter(f"bias_hh_l{k}", nn.Parameter(torch.empty(3 * H)))
        bound = 1.0 / math.sqrt(H)  # nn.GRU's initialisation
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    @classmethod
    def from_gru(cls, gru: nn.GRU) -> ExplicitGRU:
        assert not gru.bidirectional and not gru.batch_first and gru.bias, "only time-first unidirectional GRU w/ bias"
        assert getattr(gru, "proj_size", 0) == 0, "projections are not supported"
        out = cls(gru.input_size, gru.hidden_size, gru.num_layers, gru.dropout)
        out.load_state_dict(gru.state_dict())
        return out.to(next(gru.parameters()).device)

    def forward(self, x: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x (T, N, D), h0 (layers, N, H) -> (outputs (T, N, H), h_n (layers, N, H))."""
        T, N, _ = x.shape
        if h0 is None:
            h0 = x.new_zeros(self.num_layers, N, self.hidden_size)
        finals = []
        for k in range(self.num_layers):
            gi = F.linear(x, getattr(self, f"weight_ih_l{k}"), getattr(self, f"bias_ih_l{k}"))  # (T, N, 3H)
            i_r, i_z, i_n = gi.chunk(3, dim=-1)  # 3 x (T, N, H)
            w_hh, b_hh = getattr(self, f"weight_hh_l{k}"), getattr(self, f"bias_hh_l{k}")
            h = h0[k]  # (N, H)
            outs = []
            for t in range(T):
                h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, dim=-1)  # 3 x (N, H)
                r = torch.sigmoid(i_r[t] + h_r)
                z = torch.sigmoid(i_z[t] + h_z)
                n = torch.tanh(i_n[t] + r * h_n)  # the reset gate scales W_hn h + b_hn, as in nn.GRU
                h = n + z * (h - n)  # (1 - z) * n + z * h
                outs.append(h)
            finals.append(h)
            x = torch.stack(outs, dim=0)  # (T, N, H)
            if self.dropout > 0 and self.training and k < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        return x, torch.stack(finals, dim=0)


class GRUModel(StreamingModel):
    def __init__(self, config: GRUConfig) -> None:
        super().__init__()
        self.config = c = config
        self.front = FrontEnd(c.n_bands, c.channels, c.n_freq, c.mlp_features, c.offsets, c.pooling)
        rnn_in = self.front.out_features
        self.conv_proj: nn.Module = nn.Identity()
        self.conv_blocks = nn.ModuleList()
        if c.conv_dilations:
            self.conv_proj = nn.Linear(rnn_in, c.conv_channels)
            self.conv_blocks.extend(CausalBlock(c.conv_channels, c.conv_kernel, d, c.dropout) for d in c.conv_dilations)
            rnn_in = c.conv_channels
        # Registered in data-flow order (transfer's layer groups read it). Per frame, so chunked and
        # whole-sequence runs stay identical.
        self.in_norm: nn.Module = nn.LayerNorm(rnn_in) if c.layer_norm else nn.Identity()
        rnn_cls = nn.GRU if c.rnn_impl == "torch" else ExplicitGRU
        # nn.GRU warns when dropout is set with a single layer; it would be a no-op anyway.
        self.rnn = rnn_cls(rnn_in, c.hidden_size, c.num_layers, dropout=c.dropout * (c.num_layers > 1))
        self.out_norm: nn.Module = nn.LayerNorm(c.hidden_size) if c.layer_norm else nn.Identity()
        self.dropout = nn.Dropout(c.dropout)
        self.classifier = nn.Linear(c.hidden_size, c.num_classes)

    @property
    def chunk_frames(self) -> int:
        return self.config.chunk_frames

    def state_shapes(self, batch_size: int = 1) -> dict[str, tuple[int, ...]]:
        c = self.config
        shapes: dict[str, tuple[int, ...]] = {"h": (c.num_layers, batch_size, c.hidden_size)}
        for i, ctx in enumerate(c.conv_contexts):  # time first, like the TCN's caches
            shapes[f"conv_cache_{i}"] = (ctx, batch_size, c.conv_channels)
        return shapes

    def _run(self, x: Tensor, h0: Tensor | None, caches: list[Tensor]) -> tuple[Tensor, Tensor, list[Tensor]]:
        feats = self.conv_proj(self.front(x))  # (T, N, bands*mlp) or (T, N, conv_channels)
        feats, new_caches = run_cached_blocks(self.conv_blocks, caches, self.config.conv_contexts, feats)
        y, h_n = self.rnn(self.in_norm(feats), h0)  # (T, N, H), (layers, N, H)
        return F.log_softmax(self.classifier(self.dropout(self.out_norm(y))), dim=-1), h_n, new_caches

    def _caches(self, state: State) -> list[Tensor]:
        return [state[f"conv_cache_{i}"] for i in range(len(self.conv_blocks))]

    def forward(self, x: Tensor, input_lengths: Tensor | None = None) -> Tensor:
        # Causal: right padding cannot reach valid frames, so input_lengths is not needed.
        zeros = self.init_state(x.shape[1])
        return self._run(x, zeros["h"], self._caches(zeros))[0]

    def forward_chunk(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        self._check_state(state, x.shape[1])
        log_probs, h, caches = self._run(x, state["h"], self._caches(state))
        return log_probs, {"h": h, **{f"conv_cache_{i}": c for i, c in enumerate(caches)}}

    def with_explicit_gru(self) -> GRUModel:
        """A copy with ``ExplicitGRU`` in place of ``nn.GRU`` (same weights), for export."""
        out = GRUModel(replace(self.config, rnn_impl="explicit")).to(next(self.parameters()).device)
        out.load_state_dict(self.state_dict())
        return out.train(self.training)
