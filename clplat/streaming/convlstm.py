"""ConvLSTM (Shi et al., NeurIPS 2015): an LSTM whose gates are spatial convolutions.

The baseline for ConvS5 and the recurrent cell of the event-flow networks; one module for both.
Offline ``(B, C_in, T, H, W) -> (B, hidden, T, H, W)``; a step takes ``(B, C_in, H, W)`` and
returns ``(B, hidden, H, W)`` with the state ``(h, c)``, each ``(B, hidden, H, W)``. Gates in
PyTorch's LSTM order (input, forget, cell, output), "same" padding, no peepholes::

    i, f, g, o = split(W_x ⊛ x_t + b + W_h ⊛ h_{t-1})
    c_t = σ(f)·c_{t-1} + σ(i)·tanh(g),   h_t = σ(o)·tanh(c_t)

``forward`` convolves every input frame at once (one batched conv) and then loops over time for
the recurrent conv, which is inherently sequential; ``step`` does both convs per frame.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clplat.kernels._backend import is_tracing
from clplat.streaming.module import State, StreamModule

__all__ = ["ConvLSTM", "conv_lstm_gates"]


def conv_lstm_gates(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """The pointwise half of a ConvLSTM step: pre-activations ``(B, 4H, ...)`` and ``c`` -> ``(h, c)``."""
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


class ConvLSTM(StreamModule):
    """One ConvLSTM layer; delay 0, unbounded memory. The forget-gate bias starts at 1."""

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int = 3, check_inputs: bool = True) -> None:
        super().__init__()
        if in_channels < 1 or hidden_channels < 1:
            raise ValueError(f"channels must be >= 1, got {in_channels}, {hidden_channels}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (a 'same' conv), got {kernel_size}")
        self.in_channels, self.hidden_channels, self.kernel_size = in_channels, hidden_channels, kernel_size
        self.check_inputs = check_inputs
        pad = kernel_size // 2
        self.input_conv = nn.Conv2d(in_channels, 4 * hidden_channels, kernel_size, padding=pad)
        self.hidden_conv = nn.Conv2d(hidden_channels, 4 * hidden_channels, kernel_size, padding=pad, bias=False)
        with torch.no_grad():
            self.input_conv.bias.zero_()
            self.input_conv.bias[hidden_channels : 2 * hidden_channels] = 1.0

    @property
    def receptive_field(self) -> int | None:
        return None

    def _check_frame(self, frame: Tensor, what: str, dims: int) -> None:
        if frame.dim() != dims or frame.shape[1] != self.in_channels:
            want = "(B, C, T, H, W)" if dims == 5 else "(B, C, H, W)"
            raise ValueError(
                f"ConvLSTM expects a {what} {want} with C={self.in_channels}, got shape {tuple(frame.shape)}"
            )
        if self.check_inputs and not is_tracing() and not bool(torch.isfinite(frame).all()):
            raise ValueError(f"ConvLSTM got non-finite values (nan/inf) in its input {what}")

    def _check_state(self, state: State, frame: Tensor) -> tuple[Tensor, Tensor]:
        want = (frame.shape[0], self.hidden_channels, *frame.shape[-2:])
        ok = isinstance(state, tuple) and len(state) == 2 and all(isinstance(t, Tensor) for t in state)
        if not ok or any(tuple(t.shape) != want for t in state):
            got = [tuple(t.shape) for t in state] if ok else type(state).__name__
            raise ValueError(
                f"ConvLSTM state does not fit this layer and frame: expected (h, c), each {want}, got {got}"
            )
        return state[0], state[1]

    def init_state(self, frame: Tensor) -> State:
        shape = (frame.shape[0], self.hidden_channels, *frame.shape[-2:])
        return (frame.new_zeros(shape), frame.new_zeros(shape))

    def example_output(self, frame: Tensor) -> Tensor:
        return frame.new_zeros(frame.shape[0], self.hidden_channels, *frame.shape[-2:])

    def forward(self, clip: Tensor, state: State = None) -> Tensor:  # type: ignore[override]
        return self.forward_sequence(clip, state)[0]

    def forward_sequence(self, clip: Tensor, state: State = None) -> tuple[Tensor, State]:
        """``(outputs (B, hidden, T, H, W), final (h, c))`` from an initial state (``None``: zeros)."""
        self._check_frame(clip, "clip", 5)
        b, _, t, h, w = clip.shape
        hid, c = self.init_state(clip[:, :, 0]) if state is None else self._check_state(state, clip[:, :, 0])
        frames = clip.movedim(2, 1).reshape(b * t, self.in_channels, h, w)
        x_gates = self.input_conv(frames).view(b, t, 4 * self.hidden_channels, h, w)
        outs = []
        # unbind, not x_gates[:, k]: the backward of each indexing op zero-fills a clip-sized gradient
        # (T^2 work over the loop; 13x slower training at T = 256)
        for x_k in x_gates.unbind(1):
            hid, c = conv_lstm_gates(x_k + self.hidden_conv(hid), c)
            outs.append(hid)
        return torch.stack(outs, dim=2), (hid, c)

    def _step(self, frame: Tensor, state: State) -> tuple[Tensor | None, State]:
        self._check_frame(frame, "frame", 4)
        hid, c = self._check_state(state, frame)
        gates = self.input_conv(frame) + F.conv2d(hid, self.hidden_conv.weight, padding=self.kernel_size // 2)
        hid, c = conv_lstm_gates(gates, c)
        return hid, (hid, c)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, hidden_channels={self.hidden_channels}, kernel_size={self.kernel_size}"
