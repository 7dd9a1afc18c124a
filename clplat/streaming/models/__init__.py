"""Video networks in offline form (plain ``nn.Module``); ``clplat.streaming.convert`` streams them."""

from clplat.streaming.models.lrcn import LRCN, small_frame_cnn
from clplat.streaming.models.x3d import X3DS, x3d_s

__all__ = ["LRCN", "X3DS", "small_frame_cnn", "x3d_s"]
