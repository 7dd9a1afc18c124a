"""Stream apps: one file per kind of streaming model that ``python -m clplat.stream`` can play.

An app (a :class:`StreamApp` subclass registered in :data:`STREAM_APPS`) owns everything that
depends on what the model *does*: which model names it ships, which weight files it reads (the
``format`` in their metadata), how it loads and converts its network, what ``--source
synthetic`` means for it, how a frame becomes the network's input, and how an output is scored
and drawn. ``clplat.stream`` owns the rest: the CLI and its common flags, the one error path,
the frame loop over one or many sources (``_runner``), sinks and latency statistics.

Adding a kind of model is one new module in this package::

    @STREAM_APPS.register("my_kind")
    class MyApp(StreamApp):
        shipped = {"my_model": "my_model.safetensors"}   # names under clplat/weights/
        formats = ("clplat.my_format/1",)                 # metadata "format" of its weight files
        def __init__(self, ref, args): ...                # load; set self.stream, self.step_fn
        def open_source(self, spec, seed): ...            # a FrameSource
        def track(self, source): ...                      # a StreamTrack per source

Nothing else changes: ``--model my_model`` or ``--model file.safetensors`` (whose header or JSON
sidecar says ``"format": "clplat.my_format/1"``) finds the app; ``--model my_kind:ARG`` reaches an
app that lists ``my_kind`` in ``schemes`` (e.g. ``torchvision:r2plus1d_18``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from clplat.errors import UserError
from clplat.registry import Registry

__all__ = ["STREAM_APPS", "WEIGHTS_DIR", "ModelRef", "StreamApp", "StreamTrack", "find_app", "read_format",
           "resolve_device"]

WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"
STREAM_APPS: Registry[type[StreamApp]] = Registry("stream app", "clplat.streaming.apps")


@dataclass(frozen=True)
class ModelRef:
    """What ``--model`` named: a shipped name, a weights file, or a ``scheme:arg`` reference."""

    text: str  # as the user wrote it
    path: Path | None = None  # the weights file (shipped or given)
    scheme_arg: str | None = None  # ``arg`` of ``scheme:arg``
    meta: dict[str, Any] | None = None  # the file's clplat metadata, when it has one


class StreamTrack:
    """What an app remembers of one stream (one source): built by :meth:`StreamApp.track`.

    Per frame the runner calls ``input(frame)`` (the network input, ``(1, ...)``),
    steps the whole batch, then ``update(frame, y, step_s)`` with this stream's output row
    (``None`` while the network warms up) to score it, and ``draw(frame)`` for the BGR image
    to show when there is a window or video; ``summary()`` at the end. Its
    frames are counted from its own start: a stream that joins a running batch warms up like
    a stream alone.
    """

    def input(self, frame: Any) -> Tensor:
        raise NotImplementedError

    def update(self, frame: Any, y: Tensor | None, step_s: float) -> None:
        raise NotImplementedError

    def draw(self, frame: Any) -> np.ndarray:
        raise NotImplementedError

    def summary(self) -> dict[str, Any]:
        """App-specific figures for the stats JSON (e.g. accuracy); merged into the stream's."""
        return {}

    def starts_over(self) -> bool:
        """Asked before each frame after the first: whether this stream starts anew here (its
        state is reset to a fresh stream's; e.g. a predictor's next episode). Other streams go on."""
        return False


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but CUDA is not available on this machine")
    return torch.device(name)


class StreamApp:
    """Base of the apps; see the module docstring. ``step_fn(x, state) -> (y | None, state)``
    steps a batch ``x`` of frames, one row per stream (rows are independent)."""

    shipped: ClassVar[dict[str, str]] = {}
    formats: ClassVar[tuple[str, ...]] = ()
    schemes: ClassVar[tuple[str, ...]] = ()
    can_compile: ClassVar[bool] = True  # --compile / --cuda-graph make sense for this network
    synthetic_frames: ClassVar[int | None] = 300  # default --max-frames on the synthetic source

    def __init__(self, ref: ModelRef, args: argparse.Namespace) -> None:
        self.ref = ref
        self.args = args
        self.device = resolve_device(args.device)
        self.stream: torch.nn.Module | None = None
        self.step_fn: Callable[..., tuple[Any, Any]] | None = None
        self.compiled: Any = None  # a CompiledStep when --compile (its compilations are timed apart)

    # ----- hooks an app may extend ---------------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Flags only this kind of model has (added to the common ones when it is chosen)."""

    def open_source(self, spec: str, seed: int) -> Any:
        from clplat.streaming.sources import open_source

        return open_source(spec, seed=seed)

    def track(self, source: Any) -> StreamTrack:
        raise NotImplementedError

    def max_frames(self, spec: str, given: int | None) -> int | None:
        """The frame limit: ``--max-frames``, else ``synthetic_frames`` on the synthetic source."""
        return given if given is not None or spec != "synthetic" else self.synthetic_frames

    def describe(self) -> dict[str, Any]:
        """Fields of the summary that name the model (``model``, ``arch``, ``delay``)."""
        return {"model": str(self.ref.path or self.ref.text), "arch": None,
                "delay": int(getattr(self.stream, "delay", 0))}

    def lines(self, stream_summary: dict[str, Any]) -> list[str]:
        """Extra lines the CLI prints for one stream's summary (its track's figures)."""
        return []

    # ----- shared machinery ----------------------------------------------------------------------
    def one_off_count(self) -> int:
        """Phases compiled / graphs captured so far: a step that changes it is timed apart."""
        if self.compiled is not None:
            return int(self.compiled.compilations)
        return int(getattr(self.step_fn, "captures", 0))

    def one_off_summary(self, seconds: float) -> dict[str, Any]:
        """How the step was prepared (``compiled`` / ``cuda_graph`` in the stats JSON)."""
        if self.compiled is not None:
            return {"compiled": {"phases": self.compiled.compilations, "compile_s": round(seconds, 2)}}
        if hasattr(self.step_fn, "captures"):
            g = self.step_fn
            return {"cuda_graph": {"graphs": g.captures, "eager_steps": g.eager_steps,  # type: ignore[union-attr]
                                   "capture_s": round(seconds, 2), "dtype": str(g.dtype).removeprefix("torch.")}}  # type: ignore[union-attr]
        return {}

    def make_step(self, stream: torch.nn.Module) -> None:
        """``stream`` on the device, stepped eagerly, compiled (``--compile``) or through CUDA
        graphs (``--cuda-graph``, with ``--device cuda``)."""
        args = self.args
        cuda_graph = getattr(args, "cuda_graph", False)
        if (args.compile or cuda_graph) and not self.can_compile:
            flag = "--cuda-graph" if cuda_graph else "--compile"
            raise UserError(f"{flag} is not available for {type(self).__name__} models ({self.ref.text})")
        if cuda_graph and self.device.type != "cuda":
            raise UserError("--cuda-graph needs --device cuda")
        bf16 = getattr(args, "bf16", False)
        if bf16 and not cuda_graph:
            raise UserError("--bf16 needs --cuda-graph (the bf16 copy of the network runs in the CUDA graphs)")
        self.stream = stream.eval().to(self.device)
        if cuda_graph:
            from clplat.streaming.cuda_graph import cuda_graph_step

            self.step_fn = cuda_graph_step(self.stream, compile=args.compile,
                                           dtype=torch.bfloat16 if bf16 else None)
            return
        if args.compile:
            from clplat.streaming import compile_step

            self.compiled = compile_step(self.stream)
        self.step_fn = self.compiled if self.compiled is not None else self.stream.step


# ----- --model -> app ------------------------------------------------------------------------------
def read_format(path: Path) -> dict[str, Any] | None:
    """The clplat metadata of a weights file: the safetensors header's ``clplat`` entry, else the
    JSON beside the file (``x.json`` for ``x.safetensors`` / ``x.pth``); None when it has none."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                raw = (f.metadata() or {}).get("clplat")
        except Exception as err:  # safetensors raises several types for a damaged header
            raise UserError(f"cannot read model '{path}': not a valid safetensors file ({err})") from None
        if raw is not None:
            try:
                meta = json.loads(raw)
            except json.JSONDecodeError as err:
                raise UserError(f"model '{path}': its clplat metadata is not valid JSON ({err})") from None
            return meta if isinstance(meta, dict) else None
    side = path.with_suffix(".json")
    if side.is_file():
        try:
            meta = json.loads(side.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise UserError(f"model metadata '{side}' is not valid JSON ({err})") from None
        return meta if isinstance(meta, dict) else None
    return None


def _apps() -> list[type[StreamApp]]:
    return [STREAM_APPS.get(n) for n in STREAM_APPS.names()]


DEFAULT_APP = "classify"  # reads files with no clplat metadata (and reports them)


def find_app(model: str) -> tuple[type[StreamApp], ModelRef]:
    """The app that plays ``--model``: a ``scheme:arg``, a shipped name, or a weights file (by the
    ``format`` in its metadata). Unknown names and missing files are one ``UserError`` line."""
    apps = _apps()
    scheme, sep, rest = model.partition(":")
    if sep:
        for app in apps:
            if scheme in app.schemes:
                return app, ModelRef(model, scheme_arg=rest)
    for app in apps:
        if model in app.shipped:
            path = WEIGHTS_DIR / app.shipped[model]
            if not path.is_file():
                raise UserError(f"shipped model '{model}' is missing from {WEIGHTS_DIR} (reinstall clplat)")
            return app, ModelRef(model, path=path, meta=read_format(path))
    path = Path(model)
    if path.is_file():
        meta = read_format(path)
        fmt = meta.get("format") if meta else None
        if fmt is None:
            return STREAM_APPS.get(DEFAULT_APP), ModelRef(model, path=path, meta=meta)
        for app in apps:
            if fmt in app.formats:
                return app, ModelRef(model, path=path, meta=meta)
        known = sorted(f for app in apps for f in app.formats)
        raise UserError(f"model '{path}' has format {fmt!r}, which no stream app plays (known: {', '.join(known)})")
    if path.suffix:
        raise UserError(f"model file not found: {path}")
    names = sorted(n for app in apps for n in app.shipped)
    schemes = sorted(f"{s}:NAME" for app in apps for s in app.schemes)
    raise UserError(f"unknown model '{model}' (shipped: {', '.join(names)}; or a weights file"
                    + (f"; or {', '.join(schemes)})" if schemes else ")"))
