"""Streaming a word-oriented event file (Prophesee EVT2 / EVT3) through its compiled decoder.

Both formats are decoded in chunks of words by a numba pair ``count(words) -> n`` and
``decode(words, state, x, y, t, p)``; the decoder's state array carries across chunks, so a file is
read with bounded memory and the result does not depend on where the chunks fall.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from clplat.events.types import Events


def decode_chunk(count: Callable, decode: Callable, words: np.ndarray,
                 st: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, t, p) of one chunk of words; ``st`` is updated for the next chunk."""
    n = count(words)
    x, y = np.empty(n, np.uint16), np.empty(n, np.uint16)
    t, p = np.empty(n, np.int64), np.empty(n, np.uint8)
    decode(words, st, x, y, t, p)
    return x, y, t, p


def word_chunks(path: Path, offset: int, dtype: str, chunk_words: int, st: np.ndarray,
                decode_words: Callable, width: int | None, height: int | None) -> Iterator[Events]:
    """Events of the body at ``offset``, ``chunk_words`` words at a time (-1: in one piece)."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        while True:
            words = np.fromfile(fh, dtype=dtype, count=chunk_words)
            if not len(words):
                break
            yield Events(*decode_words(words, st), width, height)
