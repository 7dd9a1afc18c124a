"""Composition: chains, residual / parallel branches with automatic delay alignment, Delay rings.

Timing algebra (spec §1.4), for ``f`` then ``g``: ``delay = d_f + s_f * d_g``,
``stride = s_f * s_g``, ``receptive_field = rf_f + s_f * (rf_g - 1)``. Branches that meet must
have the same stride; the faster ones get a ``Delay`` ring on their input so that every branch
emits position ``j`` at the same step (``stride * j + max delay``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from clplat.streaming.module import State, StreamModule, new_counter

__all__ = ["Delay", "Parallel", "Residual", "StreamSequential", "chain_timing"]


def chain_timing(modules: Iterable[StreamModule]) -> tuple[int, int, int | None]:
    """``(delay, stride, receptive_field)`` of modules applied in order."""
    delay, stride, rf = 0, 1, 1
    for m in modules:
        delay += stride * m.delay
        m_rf = m.receptive_field
        rf = None if (rf is None or m_rf is None) else rf + stride * (m_rf - 1)
        stride *= m.temporal_stride
    return delay, stride, rf


def _chain_init(modules: Sequence[StreamModule], frame: Tensor) -> tuple[tuple, Tensor]:
    states = []
    for m in modules:
        states.append(m.init_state(frame))
        frame = m.example_output(frame)
    return tuple(states), frame


def _chain_step(modules: Sequence[StreamModule], x: Tensor, states: tuple) -> tuple[Tensor | None, tuple]:
    new = list(states)
    for i, m in enumerate(modules):
        x, new[i] = m._step(x, states[i])
        if x is None:
            break
    return x, tuple(new)


def _chain_forward(modules: Sequence[StreamModule], clip: Tensor) -> Tensor:
    for m in modules:
        clip = m(clip)
    return clip


class Delay(StreamModule):
    """Emits the frame seen ``frames`` steps ago (``None`` during the first ``frames`` steps).

    Offline it is the identity: delaying only aligns a branch with a slower sibling.
    """

    def __init__(self, frames: int) -> None:
        super().__init__()
        if frames < 0:
            raise ValueError(f"frames must be >= 0, got {frames}")
        self.frames = frames

    @property
    def delay(self) -> int:
        return self.frames

    @property
    def receptive_field(self) -> int:
        return self.frames + 1

    def forward(self, clip: Tensor) -> Tensor:
        return clip

    def example_output(self, frame: Tensor) -> Tensor:
        return frame

    def init_state(self, frame: Tensor) -> State:
        if self.frames == 0:
            return ()
        return (frame.new_zeros(frame.shape[0], self.frames, *frame.shape[1:]), new_counter())

    def _step(self, frame: Tensor, state: State) -> tuple[Tensor | None, State]:
        if self.frames == 0:
            return frame, state
        ring, count = state  # (B, frames, ...): batch first, like every other state
        out = ring[:, 0] if int(count) >= self.frames else None
        new = frame.unsqueeze(1)
        ring = new if self.frames == 1 else torch.cat([ring[:, 1:], new], dim=1)
        return out, (ring, count if out is not None else count + 1)

    def extra_repr(self) -> str:
        return f"frames={self.frames}"


class StreamSequential(StreamModule):
    """``nn.Sequential`` of StreamModules; child names are kept so offline checkpoints load."""

    def __init__(self, *modules: StreamModule | OrderedDict[str, StreamModule]) -> None:
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            for name, m in modules[0].items():
                self.add_module(name, m)
        else:
            for i, m in enumerate(modules):
                self.add_module(str(i), m)

    def _mods(self) -> list[StreamModule]:
        return list(self._modules.values())  # type: ignore[arg-type]

    def __getitem__(self, idx: int | str) -> StreamModule:
        return self._modules[idx] if isinstance(idx, str) else self._mods()[idx]  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self._modules)

    @property
    def delay(self) -> int:
        return chain_timing(self._mods())[0]

    @property
    def temporal_stride(self) -> int:
        return chain_timing(self._mods())[1]

    @property
    def receptive_field(self) -> int | None:
        return chain_timing(self._mods())[2]

    def forward(self, clip: Tensor) -> Tensor:
        return _chain_forward(self._mods(), clip)

    def init_state(self, frame: Tensor) -> State:
        return _chain_init(self._mods(), frame)[0]

    def example_output(self, frame: Tensor) -> Tensor:
        for m in self._mods():
            frame = m.example_output(frame)
        return frame

    def _step(self, frame: Tensor, state: State) -> tuple[Tensor | None, State]:
        return _chain_step(self._mods(), frame, state)


def _reduce(kind: str, values: Sequence[Tensor], dim: int) -> Tensor:
    if kind == "sum":
        out = values[0]
        for v in values[1:]:
            out = out + v
        return out
    if kind == "mul":
        out = values[0]
        for v in values[1:]:
            out = out * v
        return out
    if kind == "max":
        return torch.stack(list(values)).amax(0)
    return torch.cat(list(values), dim=dim)


_REDUCTIONS = ("sum", "mul", "max", "concat")


class _Branches(StreamModule):
    """Shared machinery: named chains that see the same input, aligned, reduced, then ``post``."""

    def _setup(
        self,
        paths: Sequence[Sequence[tuple[str, StreamModule]]],
        post: Sequence[tuple[str, StreamModule]],
        reduce: str,
    ) -> None:
        if reduce not in _REDUCTIONS:
            raise ValueError(f"reduce must be one of {_REDUCTIONS}, got {reduce!r}")
        self.reduce = reduce
        self._paths: list[list[str]] = []
        for path in paths:
            names = []
            for name, m in path:
                self.add_module(name, m)
                names.append(name)
            self._paths.append(names)
        self._post = [name for name, _ in post]
        for name, m in post:
            self.add_module(name, m)
        timings = [chain_timing(self._path(i)) for i in range(len(self._paths))]
        strides = {t[1] for t in timings}
        if len(strides) > 1:
            raise ValueError(f"branches must share one temporal stride, got {sorted(strides)}")
        top = max(t[0] for t in timings)
        # Delay rings carry no parameters, so they do not disturb state_dict names.
        self.aligners = nn.ModuleList([Delay(top - t[0]) for t in timings])

    def _path(self, i: int) -> list[StreamModule]:
        return [self._modules[n] for n in self._paths[i]]  # type: ignore[misc]

    def _post_mods(self) -> list[StreamModule]:
        return [self._modules[n] for n in self._post]  # type: ignore[misc]

    def _timing(self) -> tuple[int, int, int | None]:
        first = [self.aligners[0], *self._path(0)]
        d, s, rf = chain_timing([*first, *self._post_mods()])
        rfs = [chain_timing([self.aligners[i], *self._path(i)])[2] for i in range(len(self._paths))]
        if rf is not None and all(r is not None for r in rfs):
            post_rf = chain_timing(self._post_mods())[2]
            rf = max(rfs) + s * (post_rf - 1)  # type: ignore[operator]
        return d, s, rf

    @property
    def delay(self) -> int:
        return self._timing()[0]

    @property
    def temporal_stride(self) -> int:
        return self._timing()[1]

    @property
    def receptive_field(self) -> int | None:
        return self._timing()[2]

    def forward(self, clip: Tensor) -> Tensor:
        outs = [_chain_forward(self._path(i), clip) for i in range(len(self._paths))]
        return _chain_forward(self._post_mods(), _reduce(self.reduce, outs, 1))

    def example_output(self, frame: Tensor) -> Tensor:
        outs = []
        for i in range(len(self._paths)):
            y = frame
            for m in self._path(i):
                y = m.example_output(y)
            outs.append(y)
        y = _reduce(self.reduce, outs, 1)
        for m in self._post_mods():
            y = m.example_output(y)
        return y

    def init_state(self, frame: Tensor) -> State:
        paths, outs = [], []
        for i in range(len(self._paths)):
            states, y = _chain_init([self.aligners[i], *self._path(i)], frame)
            paths.append(states)
            outs.append(y)
        post, _ = _chain_init(self._post_mods(), _reduce(self.reduce, outs, 1))
        return (tuple(paths), post)

    def _step_chains(self) -> tuple[list[list[StreamModule]], list[StreamModule]]:
        """``([aligner, *path] per branch], post)``, rebuilt only when a child is replaced
        (``ModuleList`` indexing alone cost ~10 µs per block per step)."""
        key = tuple(self._modules.values())
        cache = self.__dict__.get("_chain_cache")
        if cache is None or cache[0] != key:
            chains = [[self.aligners[i], *self._path(i)] for i in range(len(self._paths))]
            cache = self.__dict__["_chain_cache"] = (key, chains, self._post_mods())
        return cache[1], cache[2]

    def _step(self, frame: Tensor, state: State) -> tuple[Tensor | None, State]:
        paths, post = state
        chains, post_mods = self._step_chains()
        outs, new_paths = [], []
        for chain, path_state in zip(chains, paths):
            y, s = _chain_step(chain, frame, path_state)
            outs.append(y)
            new_paths.append(s)
        if any(y is None for y in outs):  # aligned branches emit on the same steps
            return None, (tuple(new_paths), post)
        y, post = _chain_step(post_mods, _reduce(self.reduce, outs, 1), post)
        return y, (tuple(new_paths), post)


class Residual(_Branches):
    """``post(reduce(main(x), shortcut(x)))`` with the offline module's child names kept flat.

    ``main`` / ``shortcut`` / ``post`` are ``(name, module)`` chains; an empty shortcut is the
    identity. ``reduce="mul"`` with an identity shortcut is a gate (squeeze-excite).
    """

    def __init__(
        self,
        main: Sequence[tuple[str, StreamModule]],
        shortcut: Sequence[tuple[str, StreamModule]] = (),
        post: Sequence[tuple[str, StreamModule]] = (),
        reduce: str = "sum",
    ) -> None:
        super().__init__()
        self._setup([list(main), list(shortcut)], list(post), reduce)


class Parallel(_Branches):
    """Named branches on one input, delay-aligned, reduced by sum / mul / max / concat (channels)."""

    def __init__(self, branches: OrderedDict[str, StreamModule] | dict[str, StreamModule], reduce: str = "sum") -> None:
        super().__init__()
        self._setup([[(name, m)] for name, m in branches.items()], [], reduce)
