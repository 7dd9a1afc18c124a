"""``scenario.kind: video_sessions``: one session per video of ``dataset: videos``, in list order.

Session v trains on every frame of video v (the sessions regime shuffles them per epoch); its
"classes" are the video's global frame ids, so exposure indices equal global frame ids.
"""

from __future__ import annotations

from typing import ClassVar

from clplat.errors import UserError
from clplat.scenarios.plan import SCENARIOS, ScenarioConfig, StreamPlan


class VideoSessionsConfig(ScenarioConfig):
    regimes: ClassVar[tuple[str, ...]] = ("sessions",)  # one many-epoch session per video

    kind: str = "video_sessions"


@SCENARIOS.register("video_sessions", config=VideoSessionsConfig)
def build_video_sessions(cfg: VideoSessionsConfig, data, seed: int, eval_period: int) -> StreamPlan:
    offsets = getattr(data, "offsets", None)
    if offsets is None:
        raise UserError("scenario.kind video_sessions needs data.dataset: videos")
    tasks = [list(range(offsets[v], offsets[v + 1])) for v in range(len(offsets) - 1)]
    return StreamPlan(tasks=tasks, num_classes=data.num_classes, eval_points=[], kind="video_sessions",
                      disjoint_classes=[list(t) for t in tasks], blurry_classes=[[] for _ in tasks],
                      moved_out=[0] * len(tasks), moved_in=[0] * len(tasks))
