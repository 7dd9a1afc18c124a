"""``compiled``: numba's ``njit`` with the on-disk cache when numba can place one.

numba caches next to the source (``__pycache__``), else in the user's cache directory, else where
``NUMBA_CACHE_DIR`` says; when none is writable (a read-only install with a read-only home)
``cache=True`` raises at decoration time, so the function is then compiled once per process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from numba import njit

F = TypeVar("F", bound=Callable)


def compiled(fn: F) -> F:
    try:
        return njit(cache=True, nogil=True)(fn)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return njit(nogil=True)(fn)
