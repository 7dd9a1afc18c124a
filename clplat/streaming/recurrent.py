"""Recurrent layers for streams: the LSTM, whose state is just ``(h, c)``.

Layout follows the streaming convention: offline input ``(B, F, T)`` -> output ``(B, H, T)``;
a step takes ``(B, F)`` and returns ``(B, H)``. Delay 0, unbounded receptive field.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from clplat.streaming.module import State, StreamModule

__all__ = ["StreamLSTM", "lstm_cell_step"]


def lstm_cell_step(
    x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None
) -> tuple[Tensor, Tensor]:
    """One LSTM cell update (PyTorch gate order i, f, g, o); the reference for a fused kernel."""
    gates = x @ w_ih.t() + h @ w_hh.t()
    if b_ih is not None:
        gates = gates + b_ih + b_hh
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


class StreamLSTM(StreamModule, nn.LSTM):
    """``nn.LSTM`` (same parameters and names) with time on dim 2 and a per-frame step.

    Unidirectional only (a stream cannot look ahead), no ``proj_size``. The step runs the stacked
    layers with ``lstm_cell_step``; inter-layer dropout follows ``nn.LSTM`` (training only).
    """

    @classmethod
    def from_lstm(cls, lstm: nn.LSTM) -> StreamLSTM:
        if lstm.bidirectional:
            raise NotImplementedError("a bidirectional LSTM looks ahead and cannot be streamed")
        if lstm.proj_size:
            raise NotImplementedError("proj_size is not supported")
        new = cls(
            lstm.input_size,
            lstm.hidden_size,
            lstm.num_layers,
            lstm.bias,
            lstm.batch_first,
            lstm.dropout,
            device=lstm.weight_ih_l0.device,
            dtype=lstm.weight_ih_l0.dtype,
        )
        new.load_state_dict(lstm.state_dict())
        return new

    @property
    def receptive_field(self) -> int | None:
        return None

    def forward(self, clip: Tensor) -> Tensor:  # type: ignore[override]
        seq = clip.transpose(1, 2) if self.batch_first else clip.permute(2, 0, 1)
        out, _ = nn.LSTM.forward(self, seq)
        return out.transpose(1, 2) if self.batch_first else out.permute(1, 2, 0)

    def init_state(self, frame: Tensor) -> State:
        shape = (self.num_layers, frame.shape[0], self.hidden_size)
        return (frame.new_zeros(shape), frame.new_zeros(shape))

    def example_output(self, frame: Tensor) -> Tensor:
        return frame.new_zeros(frame.shape[0], self.hidden_size)

    def _step(self, frame: Tensor, state: State) -> tuple[Tensor | None, State]:
        h0, c0 = state
        x, hs, cs = frame, [], []
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout and self.training:
                x = nn.functional.dropout(x, self.dropout, True)
            b_ih = getattr(self, f"bias_ih_l{layer}") if self.bias else None
            b_hh = getattr(self, f"bias_hh_l{layer}") if self.bias else None
            h, c = lstm_cell_step(
                x,
                h0[layer],
                c0[layer],
                getattr(self, f"weight_ih_l{layer}"),
                getattr(self, f"weight_hh_l{layer}"),
                b_ih,
                b_hh,
            )
            hs.append(h)
            cs.append(c)
            x = h
        return x, (torch.stack(hs), torch.stack(cs))
