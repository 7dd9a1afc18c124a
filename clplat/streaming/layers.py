"""All streaming layers in one namespace; each lives in a small file of its own kind."""

from clplat.streaming.containers import Delay, Parallel, Residual, StreamSequential
from clplat.streaming.conv import ContinualConv3d
from clplat.streaming.module import FrameLocal
from clplat.streaming.pool import TemporalPool3d, WindowAvgPool
from clplat.streaming.recurrent import StreamLSTM

__all__ = [
    "ContinualConv3d",
    "Delay",
    "FrameLocal",
    "Parallel",
    "Residual",
    "StreamLSTM",
    "StreamSequential",
    "TemporalPool3d",
    "WindowAvgPool",
]
