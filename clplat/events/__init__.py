"""Event cameras: files in every common format -> :class:`Events` (µs, absolute, p 1 = ON), tensor
representations (``represent``), a video-to-events simulator (``simulate``) and synthetic scenes
with ground-truth optical flow (``scenes``). See docs/events.md."""

from clplat.events.dsec import write_dsec_h5
from clplat.events.readers import FORMATS, detect_format, file_info, iter_windows, read_events
from clplat.events.types import Events, check_events, concat_events, empty_events

__all__ = [
    "FORMATS",
    "Events",
    "check_events",
    "concat_events",
    "detect_format",
    "empty_events",
    "file_info",
    "iter_windows",
    "read_events",
    "write_dsec_h5",
]
