"""Continual-inference streaming runtime: every module has ``forward(clip)`` and ``step(frame, state)``.

Entry points: ``convert(offline_module) -> StreamModule`` and the offline networks ``X3DS``,
``LRCN`` and torchvision's video ResNets (``clplat.streaming.models``). See docs/streaming.md.
"""

from clplat.streaming.compiled import CompiledStep, compile_step
from clplat.streaming.containers import Delay, Parallel, Residual, StreamSequential, chain_timing
from clplat.streaming.conv import ContinualConv3d
from clplat.streaming.convert import ConvertOptions, convert, register_converter
from clplat.streaming.convlstm import ConvLSTM
from clplat.streaming.models import LRCN, X3DS, x3d_s
from clplat.streaming.module import FrameLocal, State, StreamModule
from clplat.streaming.pool import TemporalPool3d, WindowAvgPool
from clplat.streaming.recurrent import StreamLSTM, lstm_cell_step
from clplat.streaming.ssm import ConvS5

__all__ = [
    "LRCN",
    "X3DS",
    "CompiledStep",
    "ContinualConv3d",
    "ConvLSTM",
    "ConvS5",
    "ConvertOptions",
    "Delay",
    "FrameLocal",
    "Parallel",
    "Residual",
    "State",
    "StreamLSTM",
    "StreamModule",
    "StreamSequential",
    "TemporalPool3d",
    "WindowAvgPool",
    "chain_timing",
    "compile_step",
    "convert",
    "lstm_cell_step",
    "register_converter",
    "x3d_s",
]
