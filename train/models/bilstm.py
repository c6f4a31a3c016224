"""Small residual BiLSTM student with bounded look-ahead (latency-controlled BLSTM).

SpectrogramNorm -> RotationInvariantMLP -> Linear -> N x [BiLSTM, dropout, residual, LayerNorm]
-> Linear, ReLU, dropout -> Linear -> log_softmax.  (Residual BiLSTM with LayerNorm and
dropout 0.3, hidden 96: the generalization report, seed 004.)

A plain BiLSTM needs the whole utterance. Here time is cut into blocks of
``chunk_frames``; for each block ("window" = block + ``lookahead_frames`` future frames):
- the forward direction runs over the block from the state the previous block left,
  and continues over the look-ahead frames without keeping that state;
- the backward direction runs over the whole window, reversed, from a zero state;
- only the block's outputs are kept (each layer sees the window, so the total
  look-ahead is ``lookahead_frames`` whatever the depth).

The sequence is delayed by ``L = lookahead_frames``: it is prefixed with ``L`` zero
frames (at the LSTM input), so output ``t`` describes input frame ``t - L`` and
``T`` inputs give ``T`` outputs. Streaming keeps the last ``L`` LSTM-input frames as
the ``lookahead`` state: window = [lookahead buffer, new chunk], block = its first
``m`` frames. Offline and streaming call the same ``_encode`` (offline just batches
many windows), so they agree by construction.

Offline, a final block shorter than ``chunk_frames`` is fine; streaming it is a
final ``forward_chunk`` with fewer frames. The last ``L`` input frames only ever
serve as look-ahead (a stream that ends never gets to emit them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emgkey.train.models.common import FrontEnd, ModelConfig, State, StreamingModel, check_positive


@dataclass(frozen=True)
class BiLSTMConfig(ModelConfig):
    model_name: ClassVar[str] = "bilstm"

    name: str = "bilstm"
    mlp_features: tuple[int, ...] = (96,)  # per band; bands * 96 = 2 * hidden: the first residual needs no projection
    offsets: tuple[int, ...] = (-1, 0, 1)
    pooling: str = "mean"
    hidden_size: int = 96  # per direction
    num_layers: int = 2
    fc_features: int = 192
    # The generalization report used 0.3. On the v3 training benchmark (armband8, 24 epochs) 0.3 kept the model on
    # CTC's blank plateau (held-out 82.6 %, validation 78.6 %) where 0.1 reached 69.7 % / 61.1 % (docs/training.md);
    # a checkpoint stores its own value, so older ones keep theirs. More data may want more: model_overrides.
    dropout: float = 0.1
    chunk_frames: int = 16  # block length: 128 ms at 125 Hz
    lookahead_frames: int = 8  # future frames each block may see: 64 ms at 125 Hz

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("mlp_features", self.mlp_features)
        assert self.hidden_size >= 1 and self.num_layers >= 1 and self.fc_features >= 1, "sizes must be >= 1"
        assert 0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"
        assert self.chunk_frames >= 1, "chunk_frames must be >= 1"
        assert self.lookahead_frames >= 0, "lookahead_frames must be >= 0"


class LCBiLSTMLayer(nn.Module):
    """One latency-controlled BiLSTM layer with residual + LayerNorm, over a batch of windows.

    The layer works on ``blocks`` (T, N, D): all blocks' own frames, in time order, and
    ``looks`` (L, nb*N, D): each block's look-ahead frames (window ``k`` in batch slots
    ``k*N:(k+1)*N``). Keeping them apart is what lets the forward direction run
    straight through the blocks while every window recomputes its own look-ahead.
    """

    def __init__(self, size: int, hidden_size: int, dropout: float) -> None:
        super().__init__()
        self.fwd = nn.LSTM(size, hidden_size)
        self.bwd = nn.LSTM(size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(size)

    def forward(
        self, blocks: Tensor, looks: Tensor, block_len: int, hc: tuple[Tensor, Tensor]
    ) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor]]:
        T, N, D = blocks.shape
        L = looks.shape[0]
        nb = -(-T // block_len)  # ceil: the last block may be short
        starts = list(range(0, T, block_len))

        # Forward direction through the blocks, keeping the state at each block end.
        f_blocks, h_ends, c_ends = [], [], []
        h, c = hc  # (1, N, H) each
        for s in starts:
            y, (h, c) = self.fwd(blocks[s : s + block_len], (h, c))  # (m, N, H)
            f_blocks.append(y)
            h_ends.append(h)
            c_ends.append(c)
        f_block = torch.cat(f_blocks, dim=0)  # (T, N, H)

        if L > 0:
            # ... and on into each window's look-ahead, from that block's end state (not carried further).
            f_look, _ = self.fwd(looks, (torch.cat(h_ends, dim=1), torch.cat(c_ends, dim=1)))  # (L, nb*N, H)
        else:
            f_look = looks.new_zeros(0, nb * N, self.fwd.hidden_size)

        # Backward direction: each window [block, look-ahead] reversed, from zero. Full windows are
        # batched; a short last block is a window of its own length, run separately.
        n_full = T // block_len
        b_parts_block, b_parts_look = [], []
        if n_full > 0:
            full = blocks[: n_full * block_len].reshape(n_full, block_len, N, D).transpose(0, 1)  # (C, nf, N, D)
            win = torch.cat([full.reshape(block_len, n_full * N, D), looks[:, : n_full * N]], dim=0)  # (C+L, nf*N, D)
            b = self.bwd(win.flip(0))[0].flip(0)  # (C+L, nf*N, H)
            H = b.shape[-1]
            b_parts_block.append(b[:block_len].reshape(block_len, n_full, N, H).transpose(0, 1).reshape(-1, N, H))
            b_parts_look.append(b[block_len:])
        if nb > n_full:
            win = torch.cat([blocks[n_full * block_len :], looks[:, n_full * N :]], dim=0)  # (m+L, N, D)
            b = self.bwd(win.flip(0))[0].flip(0)  # (m+L, N, H)
            m = T - n_full * block_len
            b_parts_block.append(b[:m])
            b_parts_look.append(b[m:])
        b_block = torch.cat(b_parts_block, dim=0)  # (T, N, H)
        b_look = torch.cat(b_parts_look, dim=1)  # (L, nb*N, H)

        out_block = self.norm(blocks + self.dropout(torch.cat([f_block, b_block], dim=-1)))  # (T, N, D)
        out_look = self.norm(looks + self.dropout(torch.cat([f_look, b_look], dim=-1)))  # (L, nb*N, D)
        return out_block, out_look, (h, c)


class BiLSTMModel(StreamingModel):
    def __init__(self, config: BiLSTMConfig) -> None:
        super().__init__()
        self.config = c = config
        self.front = FrontEnd(c.n_bands, c.channels, c.n_freq, c.mlp_features, c.offsets, c.pooling)
        size = 2 * c.hidden_size
        # Residuals need the LSTM input to be 2 * hidden wide; skip the projection when it already is.
        self.in_proj = nn.Identity() if self.front.out_features == size else nn.Linear(self.front.out_features, size)
        self.layers = nn.ModuleList(LCBiLSTMLayer(size, c.hidden_size, c.dropout) for _ in range(c.num_layers))
        self.fc = nn.Linear(size, c.fc_features)
        self.dropout = nn.Dropout(c.dropout)
        self.classifier = nn.Linear(c.fc_features, c.num_classes)

    @property
    def chunk_frames(self) -> int:
        return self.config.chunk_frames

    @property
    def lookahead_frames(self) -> int:
        return self.config.lookahead_frames

    def state_shapes(self, batch_size: int = 1) -> dict[str, tuple[int, ...]]:
        c = self.config
        return {
            "h": (c.num_layers, batch_size, c.hidden_size),  # forward-direction LSTM state per layer
            "c": (c.num_layers, batch_size, c.hidden_size),
            "lookahead": (c.lookahead_frames, batch_size, 2 * c.hidden_size),  # last L frames of LSTM input
        }

    def _encode(self, blocks: Tensor, looks: Tensor, h0: Tensor, c0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """blocks (T, N, D), looks (L, nb*N, D), h0/c0 (layers, N, H) -> (log_probs (T, N, K), h_n, c_n)."""
        hs, cs = [], []
        for k, layer in enumerate(self.layers):
            blocks, looks, (h, c) = layer(blocks, looks, self.config.chunk_frames, (h0[k : k + 1], c0[k : k + 1]))
            hs.append(h)
            cs.append(c)
        y = self.dropout(F.relu(self.fc(blocks)))  # (T, N, fc)
        return F.log_softmax(self.classifier(y), dim=-1), torch.cat(hs, dim=0), torch.cat(cs, dim=0)

    @staticmethod
    def _split_windows(seq: Tensor, n_out: int, block_len: int, lookahead: int) -> tuple[Tensor, Tensor]:
        """seq (n_out + L, N, D) -> blocks seq[:n_out], looks (L, nb*N, D) with looks[:, k*N:(k+1)*N] the L
        frames after block k."""
        N, D = seq.shape[1:]
        ends = [min(s + block_len, n_out) for s in range(0, n_out, block_len)]
        if lookahead == 0:
            return seq[:n_out], seq.new_zeros(0, len(ends) * N, D)
        looks = torch.stack([seq[e : e + lookahead] for e in ends], dim=1)  # (L, nb, N, D)
        return seq[:n_out], looks.reshape(lookahead, len(ends) * N, D)

    def forward(self, x: Tensor, input_lengths: Tensor | None = None) -> Tensor:
        # input_lengths is not needed: right padding reaches a sequence's valid outputs only through its
        # last window's look-ahead, where a stream would see the frames that follow (equal-length training
        # windows have none).
        c = self.config
        T, N = x.shape[:2]
        assert T >= 1, "need at least one frame"
        feats = self.in_proj(self.front(x))  # (T, N, D)
        # The L-frame delay: zeros where a stream's look-ahead buffer starts.
        seq = torch.cat([feats.new_zeros(c.lookahead_frames, N, feats.shape[-1]), feats], dim=0)  # (T+L, N, D)
        blocks, looks = self._split_windows(seq, T, c.chunk_frames, c.lookahead_frames)
        h0 = feats.new_zeros(c.num_layers, N, c.hidden_size)
        return self._encode(blocks, looks, h0, h0)[0]  # (T, N, classes)

    def forward_chunk(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        c = self.config
        m, N = x.shape[:2]
        assert 1 <= m <= c.chunk_frames, f"chunks are 1..{c.chunk_frames} frames (offline blocks), got {m}"
        self._check_state(state, N)
        feats = self.in_proj(self.front(x))  # (m, N, D)
        window = torch.cat([state["lookahead"], feats], dim=0)  # (L+m, N, D)
        blocks, looks = window[:m], window[m:]  # (m, N, D), (L, N, D): one window, nb = 1
        log_probs, h, cc = self._encode(blocks, looks, state["h"], state["c"])
        return log_probs, {"h": h, "c": cc, "lookahead": looks}
