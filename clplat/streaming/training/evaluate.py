"""Scoring a converted (streaming) model the way the demo runs it: one ``step`` per frame."""

from __future__ import annotations

from collections import deque

import torch
from torch import Tensor, nn

from clplat.streaming.sources import FrameSource, FrameSpec


def logits_of(output: Tensor) -> Tensor:
    """A streaming output for one frame position -> ``(B, num_classes)``."""
    return output.reshape(output.shape[0], -1)


@torch.inference_mode()
def check_stream_equivalence(model: nn.Module, stream: nn.Module, clip: Tensor) -> float:
    """Max |stepped - offline| over the per-frame logits of ``clip`` (fresh state)."""
    offline = model.forward_frames(clip)  # (B, K, T)
    outs, state = [], None
    for t in range(clip.shape[2]):
        y, state = stream.step(clip[:, :, t], state)
        if y is not None:
            outs.append(logits_of(y))
    stepped = torch.stack(outs, dim=2)
    n = stepped.shape[2]
    return float((stepped - offline[..., :n]).abs().max())


@torch.inference_mode()
def stream_accuracy(stream: nn.Module, spec: FrameSpec, source: FrameSource, frames: int,
                    settle: int = 0) -> dict[str, float | int]:
    """Step ``stream`` over ``frames`` labelled frames; score each emitted prediction.

    A prediction emitted ``delay`` steps after its frame is scored against that frame's label.
    ``settled_acc`` leaves out the first ``settle`` frames after each cut between videos.
    """
    delay = int(getattr(stream, "delay", 0))
    pending: deque[tuple[int, int]] = deque()  # (label, frames since cut) awaiting their output
    state, since_cut, seen = None, 0, 0
    hits = scored = settled_hits = settled = 0
    for frame in source:
        if seen >= frames:
            break
        seen += 1
        since_cut = 0 if frame.segment_start else since_cut + 1
        pending.append((int(frame.label), since_cut))  # type: ignore[arg-type]
        y, state = stream.step(spec.to_tensor(frame.image), state)
        if y is None:
            continue
        label, age = pending.popleft()  # outputs come in frame order, ``delay`` frames late
        ok = int(logits_of(y).argmax(1)[0]) == label
        hits, scored = hits + ok, scored + 1
        if age >= settle:
            settled_hits, settled = settled_hits + ok, settled + 1
    return {"frames": seen, "scored": scored, "frame_acc": round(hits / max(scored, 1), 4),
            "settled_acc": round(settled_hits / max(settled, 1), 4), "settle_frames": settle,
            "delay": delay}
