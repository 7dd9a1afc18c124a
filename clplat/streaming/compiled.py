"""A compiled ``step``: each recurring phase of a stream recorded once and compiled (Inductor).

Why: at batch 1 an eager step is mostly per-op cost (X3D-S: ~115 convs and hundreds of small
tensor ops a frame, each dispatched from Python). A step is a pure function of
``(frame, state)`` whose only Python branches read the 0-dim int64 counters in the state (warm-up,
temporal stride). Past warm-up those counters repeat with the stride's period (``tick``), so a
steady stream runs through a handful of *phases*, and within a phase the step is one fixed graph of
tensor ops. ``CompiledStep`` records that graph with ``make_fx`` (counters as constants, data
leaves as inputs), hands it to a ``torch.compile`` backend (Inductor: fused C++ loops on CPU,
Triton on CUDA) and replays it whenever the phase comes back. Warm-up phases, which never recur,
run eagerly.

Contract:
- outputs equal the eager step's (checked on the frame that triggers each compilation; a compiler
  that disagrees beyond ``atol`` raises instead of streaming wrong numbers);
- the weights are a snapshot taken at compile time (Inductor folds them): after changing them,
  call ``reset()``;
- states stay interchangeable with the eager ``step``'s (same tree, shapes and values).
"""

from __future__ import annotations

import logging
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import torch
from torch import Tensor
from torch.fx.experimental.proxy_tensor import make_fx

from clplat.kernels import tracing
from clplat.streaming.module import State, StreamModule

__all__ = ["CompiledStep", "compile_step"]

# Inductor settings for CPU inference: weights folded into the graph (freezing lets it pre-pack
# the GEMM weights) and a C++ wrapper instead of a Python one around the kernels. Steps with a
# transposed conv compile without freezing (a torch bug: ``_has_transposed_conv``).
CPU_OPTIONS: dict[str, Any] = {"freezing": True, "cpp_wrapper": True}


def _is_counter(leaf: Any) -> bool:
    return isinstance(leaf, Tensor) and leaf.dim() == 0 and leaf.dtype == torch.int64 and leaf.device.type == "cpu"


def _flatten(state: State) -> tuple[list[Tensor], Any]:
    """Leaves of a state (nested tuples of tensors) and its structure: the same nesting with
    leaf indices in place of tensors (hashable, and cheaper than a pytree spec on ~200 nodes)."""
    leaves: list[Tensor] = []

    def walk(node: Any) -> Any:
        if type(node) is tuple:
            return tuple([walk(n) for n in node])
        if not isinstance(node, Tensor):
            raise TypeError(f"a stream state holds tensors in nested tuples, found {type(node).__name__}")
        leaves.append(node)
        return len(leaves) - 1

    return leaves, walk(state)


def _unflatten(struct: Any, leaves: list[Any]) -> State:
    if type(struct) is int:
        return leaves[struct]
    return tuple([_unflatten(s, leaves) for s in struct])


def _builder(struct: Any, template: list[Any], slots: dict[int, int]) -> Callable[[list[Tensor]], State]:
    """A function ``new_data -> state`` for one phase's output structure. Subtrees without data
    leaves (counters, the many ``()`` of stateless layers) are built once and shared: the state of
    a steady X3D-S has ~630 nodes of which ~170 change per frame."""

    def make(node: Any) -> tuple[Callable[[list[Tensor]], Any] | None, Any]:
        if type(node) is int:
            return (itemgetter(slots[node]), None) if node in slots else (None, template[node])
        parts = [make(child) for child in node]
        if all(fn is None for fn, _ in parts):
            return None, tuple(value for _, value in parts)

        def build(data: list[Tensor]) -> tuple:
            return tuple([value if fn is None else fn(data) for fn, value in parts])

        return build, None

    fn, value = make(struct)
    return fn if fn is not None else (lambda data: value)


def _relayout(t: Tensor, strides: tuple[int, ...]) -> Tensor:
    """``t``'s values in a new tensor with exactly ``strides`` (a normal, non-inference tensor)."""
    return torch.empty_strided(t.shape, strides, dtype=t.dtype, device=t.device).copy_(t)


def _signature(leaves: list[Tensor], struct: Any) -> tuple[tuple, list[Tensor]]:
    """What fixes a phase's graph (structure, counter values, data shapes) and the data leaves."""
    counters, data = [], []
    for leaf in leaves:
        if _is_counter(leaf):
            counters.append(int(leaf))
        else:
            data.append(leaf)
    return (struct, tuple(counters), tuple((d.shape, d.dtype) for d in data)), data


class _CompileError(RuntimeError):
    pass


@dataclass(eq=False)
class _Phase:
    fn: Callable[..., Any]
    frame_sig: tuple
    emits: bool
    in_strides: list[tuple[int, ...]]  # frame first, then the state's data leaves
    build_state: Callable[[list[Tensor]], State]  # the next state from the graph's new data leaves
    next_sig: tuple
    successor: _Phase | None = None  # the phase that followed last time (skips the key lookup)


class CompiledStep:
    """``step(frame, state) -> (output | None, state)`` like ``module.step``, compiled per phase.

    ``backend`` / ``options`` go to ``torch.compile``'s backend (default: Inductor with
    ``CPU_OPTIONS`` on CPU frames). A phase is compiled when it comes back within
    ``max_period`` calls (default: the network's temporal stride, the longest cycle a steady
    stream has), so warm-up phases, which recur only with the next stream, never pay for a
    compilation. Streams interleaved through one object in different phases need a larger
    ``max_period``. At most ``max_phases`` compiled phases are kept.
    """

    def __init__(
        self,
        module: StreamModule,
        backend: str = "inductor",
        options: dict[str, Any] | None = None,
        max_phases: int = 64,
        max_period: int | None = None,
        atol: float = 1e-4,
    ) -> None:
        if module.training:
            raise ValueError("compile_step needs a module in eval mode (call .eval() first)")
        self.module = module
        self.backend = backend
        self.options = options
        self.max_phases = max_phases
        # A steady phase comes back within the network's temporal stride (every layer's counter
        # cycle divides it); a warm-up phase only with the next stream, so it stays eager.
        self.max_period = max_period if max_period is not None else max(1, module.temporal_stride)
        self.atol = atol
        self.compilations = 0  # phases compiled so far
        self.eager_steps = 0  # steps that ran eagerly (warm-up, first sight of a phase, failures)
        self.reset()

    def reset(self) -> None:
        """Forget every compiled phase (after the module's weights changed)."""
        self._phases: OrderedDict[tuple, _Phase] = OrderedDict()
        self._seen: OrderedDict[tuple, int] = OrderedDict()  # phase key -> call that last saw it
        self._calls = 0
        self._uncompilable: set[tuple] = set()
        # The state this object returned last, with what replay already knows about it, so the
        # usual streaming loop (feed back the state you were given) skips flattening it.
        self._last: tuple[State, _Phase, list[Tensor]] | None = None

    def __call__(self, frame: Tensor, state: State = None) -> tuple[Tensor | None, State]:
        return self.step(frame, state)

    def step(self, frame: Tensor, state: State = None) -> tuple[Tensor | None, State]:
        self._calls += 1
        frame_sig = (frame.shape, frame.dtype, frame.device)
        last, self._last = self._last, None
        if last is not None and state is last[0]:
            prev, data = last[1], last[2]
            nxt = prev.successor
            if nxt is not None and nxt.frame_sig == frame_sig:
                return self._replay(nxt, frame, data)
            key = (prev.next_sig, frame_sig)
            phase = self._phases.get(key)
            if phase is not None:
                prev.successor = phase
                return self._replay(phase, frame, data)
        if state is None:
            state = self.module.init_state(frame)
        leaves, struct = _flatten(state)
        sig, data = _signature(leaves, struct)
        key = (sig, frame_sig)
        phase = self._phases.get(key)
        if phase is not None:
            return self._replay(phase, frame, data)
        last_seen = self._seen.pop(key, None)
        if last_seen is None or self._calls - last_seen > self.max_period:
            # First sight, or a warm-up phase coming back with the next stream: eager.
            self._seen[key] = self._calls
            if len(self._seen) > 4 * self.max_phases:
                self._seen.popitem(last=False)
            return self._eager(frame, state)
        if key in self._uncompilable:
            return self._eager(frame, state)
        try:
            phase, result = self._capture(frame, leaves, struct, frame_sig)
        except _CompileError as err:  # e.g. no C++ compiler: keep streaming, eagerly, and say so once
            self._uncompilable.add(key)
            warnings.warn(f"compile_step: a phase could not be compiled, it runs eagerly ({err})", stacklevel=2)
            return self._eager(frame, state)
        self._phases[key] = phase
        if len(self._phases) > self.max_phases:
            self._phases.popitem(last=False)
        return result

    def _eager(self, frame: Tensor, state: State) -> tuple[Tensor | None, State]:
        self.eager_steps += 1
        return self.module.step(frame, state)

    # ------------------------------------------------------------------ replay / capture
    def _replay(self, phase: _Phase, frame: Tensor, data: list[Tensor]) -> tuple[Tensor | None, State]:
        # The graph was compiled for the recorded memory layouts; anything else is re-laid out.
        strides = phase.in_strides
        args = [frame if frame.stride() == strides[0] else _relayout(frame, strides[0])]
        for d, st in zip(data, strides[1:]):
            args.append(d if d.stride() == st else _relayout(d, st))
        outs = list(phase.fn(*args))
        out = outs.pop(0) if phase.emits else None
        return out, self._emit_state(phase, outs)

    def _emit_state(self, phase: _Phase, new_data: list[Tensor]) -> State:
        state = phase.build_state(new_data)
        self._last = (state, phase, new_data)
        return state

    def _capture(
        self, frame: Tensor, leaves: list[Tensor], struct: Any, frame_sig: tuple
    ) -> tuple[_Phase, tuple[Tensor | None, State]]:
        is_counter = [_is_counter(leaf) for leaf in leaves]
        record: dict[str, Any] = {}

        def one_step(frame: Tensor, *data: Tensor) -> tuple[Tensor, ...]:
            it = iter(data)
            state = _unflatten(struct, [leaf if c else next(it) for leaf, c in zip(leaves, is_counter)])
            out, new_state = self.module.step(frame, state)
            new_leaves, out_struct = _flatten(new_state)
            new_is_counter = [_is_counter(leaf) for leaf in new_leaves]
            new_data = [leaf for leaf, c in zip(new_leaves, new_is_counter) if not c]
            record.update(emits=out is not None, leaves=new_leaves, struct=out_struct, is_counter=new_is_counter)
            # Hand each new state leaf back in its input's layout, so the next call's inputs
            # match what the graph was compiled for (no re-layout per frame).
            same = out_struct == struct and new_is_counter == is_counter
            fixed = []
            for i, leaf in enumerate(new_data):
                if same and leaf is not data[i] and leaf.shape == data[i].shape and leaf.stride() != data[i].stride():
                    leaf = _relayout(leaf, data[i].stride())
                fixed.append(leaf)
            return ((out,) if out is not None else ()) + tuple(fixed)

        data = [leaf for leaf, c in zip(leaves, is_counter) if not c]
        with torch.inference_mode(False), torch.no_grad():
            example = [_relayout(t, t.stride()) for t in (frame, *data)]
            with tracing():
                graph = make_fx(one_step)(*example)
                expected = one_step(*example)
            try:
                fn = self._compile(graph, example)
                got = fn(*example)
            except Exception as err:  # the compiler's failure, not the model's
                raise _CompileError(f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200]}") from err
        expected, got = list(expected), list(got)
        if len(got) != len(expected) or any(
            g.shape != e.shape or not torch.allclose(g, e, rtol=0, atol=self.atol) for g, e in zip(got, expected)
        ):
            worst = max((float((g - e).abs().max()) for g, e in zip(got, expected) if g.shape == e.shape), default=-1.0)
            raise RuntimeError(
                f"compiled step disagrees with the eager step (max |diff| {worst:.3g} > atol {self.atol}); "
                f"use the eager module.step or another backend"
            )
        self.compilations += 1
        # what the next state looks like, from the eager run (the traced counters are proxies)
        new_leaves, new_struct, new_is_counter = record["leaves"], record["struct"], record["is_counter"]
        slots = {leaf: n for n, leaf in enumerate(i for i, c in enumerate(new_is_counter) if not c)}
        template = [leaf if c else None for leaf, c in zip(new_leaves, new_is_counter)]
        phase = _Phase(
            fn=fn,
            frame_sig=frame_sig,
            in_strides=[t.stride() for t in (frame, *data)],
            emits=record["emits"],
            build_state=_builder(new_struct, template, slots),
            next_sig=_signature(new_leaves, new_struct)[0],
        )
        out = got.pop(0) if phase.emits else None
        return phase, (out, self._emit_state(phase, got))

    def _compile(self, graph: torch.fx.GraphModule, example: list[Tensor]) -> Callable[..., Any]:
        options = self.options
        if options is None and self.backend == "inductor" and example[0].device.type == "cpu":
            options = CPU_OPTIONS
        if options and options.get("freezing") and _has_transposed_conv(graph):
            options = {**options, "freezing": False}
        if self.backend == "inductor":
            # Inductor straight on the recorded graph: no dynamo frame, so no guard evaluation
            # per call and no recompiles for inference tensors; the phase key and the stride
            # check in ``_replay`` are the guards.
            from torch._inductor.compile_fx import compile_fx

            # its "No CUDA runtime is found" notice on CPU-only machines says nothing useful here
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

            for node in graph.graph.nodes:  # make_fx's per-value fake modes; Inductor re-derives them
                node.meta.pop("val", None)
                node.meta.pop("tensor_meta", None)
            return compile_fx(graph, example, config_patches=dict(options or {}))
        return torch.compile(graph, backend=self.backend, options=options, dynamic=False, fullgraph=True)


def _has_transposed_conv(graph: torch.fx.GraphModule) -> bool:
    """Whether the recorded step has a transposed convolution: Inductor's ``freezing`` then stays off.

    Why: freezing's binary folding (torch 2.14, ``torch/_inductor/fx_passes/binary_folding.py``)
    folds a per-channel multiply after a convolution (an eval BatchNorm) into the conv's weight
    along dim 0, which for a transposed conv is C_in, not C_out. Its broadcast check passes only
    when C_in == C_out (evflow_lstm's first decoder block: 64 -> 64), and the compiled step is
    then wrong (~1 px of flow); ``benchmarks/freezing_convT_bn.py`` reproduces it in plain torch.
    """
    conv = torch.ops.aten.convolution.default
    return any(n.op == "call_function" and n.target is conv and bool(n.args[6]) for n in graph.graph.nodes)


def compile_step(module: StreamModule, **kwargs: Any) -> CompiledStep:
    """``CompiledStep(module, **kwargs)``: a drop-in for ``module.step`` that compiles steady phases."""
    return CompiledStep(module, **kwargs)
