"""One stream's rows of a batched stream state: how a stream joins a running batch exactly.

A batched state (``StreamModule`` contract) holds every stream's data in row ``i`` of each data
leaf (states are batch-first), but its warm-up / stride counters (0-dim int64 host tensors) are
shared by the whole batch. A stream that starts while the batch is past warm-up therefore cannot
simply get fresh rows: the shared counters would make its layers emit (and feed their successors)
before its own warm-up ended, and a strided layer would emit at the batch's phase, not the
stream's. So a joining stream first steps alone, batch 1, from a fresh state; as soon as its
counters equal the batch's (after its warm-up, at the same stride phase) its rows are *spliced*
into the batch's state. From then on its rows step in the batch exactly as they did alone: the
counters fix the control flow and the rows never mix. Networks without counters (recurrent
predictors) splice at once, from the fresh state. The batch's shape never changes, so a compiled
or CUDA-graph step is reused as it is (a CUDA-graph step copies the spliced state into its static
buffers in place).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from clplat.streaming.compiled import _flatten, _is_counter, _unflatten

__all__ = ["counter_key", "splice_rows"]


def counter_key(state: Any) -> tuple:
    """What must match for rows to move between two states: structure and counter values."""
    leaves, struct = _flatten(state)
    return struct, tuple(int(leaf) for leaf in leaves if _is_counter(leaf))


def splice_rows(state: Any, slot: int, rows: Any) -> Any:
    """``state`` with row ``slot`` of every data leaf replaced by ``rows``' (a batch-1 state with
    the same counters). A new tree of new leaves: ``state``'s tensors are not written, so states
    that alias buffers, frames or expanded tensors stay intact."""
    leaves, struct = _flatten(state)
    new_leaves, new_struct = _flatten(rows)
    if struct != new_struct:
        raise ValueError("cannot splice a stream's state into a batch of another structure")
    out: list[Tensor] = []
    for leaf, row in zip(leaves, new_leaves):
        if _is_counter(leaf):
            if int(leaf) != int(row):
                raise ValueError("cannot splice a stream's state into a batch at another step phase")
            out.append(leaf)
            continue
        if row.shape[0] != 1 or leaf.shape[1:] != row.shape[1:] or not 0 <= slot < leaf.shape[0]:
            raise ValueError(f"state leaf of shape {tuple(leaf.shape)} has no row {slot} for a stream's "
                             f"{tuple(row.shape)} (stream states are batch-first)")
        new = leaf.clone()  # keeps the layout (a compiled step then needs no re-layout)
        new[slot].copy_(row[0])
        out.append(new)
    return _unflatten(struct, out)
