"""Plain formats: ``.npz`` with arrays x, y, t (int µs), p (optional scalars width, height), and
text lines ``t x y p`` with t in seconds (the RPG / Event Camera Dataset convention; an optional
first line ``width height``; polarity 1/0 or 1/-1; ``#`` comments allowed)."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import numpy as np

from clplat.errors import UserError
from clplat.events.types import Events

TEXT_CHUNK_LINES = 200_000
NPZ_CHUNK = 1 << 20


def npz_chunks(path: Path) -> Iterator[Events]:
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("x", "y", "t", "p") if k not in z.files]
            if missing:
                raise UserError(f"{path}: npz lacks arrays {', '.join(missing)} (needs x, y, t, p)")
            arrays = {k: z[k] for k in ("x", "y", "t", "p")}
            w = int(z["width"]) if "width" in z.files else None
            h = int(z["height"]) if "height" in z.files else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise UserError(f"{path}: unreadable npz file ({err})") from None
    t = arrays["t"]
    if not np.issubdtype(t.dtype, np.integer):
        raise UserError(f"{path}: npz t must be integer microseconds, got dtype {t.dtype}")
    n = len(t)
    if any(len(a) != n for a in arrays.values()):
        raise UserError(f"{path}: npz arrays x, y, t, p have different lengths")
    for k in ("x", "y"):
        if n and not (0 <= int(arrays[k].min()) and int(arrays[k].max()) <= 65535):
            raise UserError(f"{path}: npz {k} coordinates must lie in 0..65535")
    p = (arrays["p"] > 0).astype(np.uint8)
    for i in range(0, max(n, 1), NPZ_CHUNK):
        sl = slice(i, i + NPZ_CHUNK)
        yield Events(arrays["x"][sl], arrays["y"][sl], t[sl], p[sl], w, h)


def _parse_lines(lines: list[str], path: Path, first_line_no: int) -> np.ndarray:
    try:
        data = np.loadtxt(lines, dtype=np.float64, ndmin=2, comments="#", delimiter=None)
    except ValueError as err:
        raise UserError(f"{path}: bad text event line near line {first_line_no} ({err})") from None
    if data.size and data.shape[1] != 4:
        raise UserError(f"{path}: text events need 4 columns 't x y p', got {data.shape[1]} near line {first_line_no}")
    return data.reshape(-1, 4)


def text_chunks(path: Path) -> Iterator[Events]:
    try:
        fh = open(path, encoding="ascii")
    except OSError as err:
        raise UserError(f"{path}: cannot open ({err})") from None
    with fh:
        w = h = None
        line_no = 1
        try:
            first = fh.readline()
            fields = first.split()
            lines: list[str] = []
            if len(fields) == 2:
                try:
                    w, h = int(fields[0]), int(fields[1])
                except ValueError:
                    msg = f"first line {first.strip()!r} is neither 'width height' nor an event"
                    raise UserError(f"{path}: {msg}") from None
                line_no = 2
            elif first:
                lines = [first]
            while True:
                lines += list(islice(fh, TEXT_CHUNK_LINES))
                if not lines:
                    break
                data = _parse_lines(lines, path, line_no)
                line_no += len(lines)
                lines = []
                if not len(data):
                    continue
                if (data[:, 1:3] < 0).any() or (data[:, 1:3] > 65535).any():
                    raise UserError(f"{path}: coordinate outside 0..65535 near line {line_no}")
                t = np.rint(data[:, 0] * 1e6).astype(np.int64)
                yield Events(data[:, 1], data[:, 2], t, data[:, 3] > 0, w, h)
        except UnicodeDecodeError:
            raise UserError(f"{path}: not a text event file (binary content)") from None


def write_text(path: str | Path, ev: Events) -> None:
    """Write ``t x y p`` lines (t in seconds, 6 decimals) with a ``width height`` first line if known."""
    from clplat.io import atomic_write_text

    head = f"{ev.width} {ev.height}\n" if ev.width is not None and ev.height is not None else ""
    rows = zip(ev.t.tolist(), ev.x.tolist(), ev.y.tolist(), ev.p.tolist())
    body = "".join(f"{t / 1e6:.6f} {x} {y} {p}\n" for t, x, y, p in rows)
    atomic_write_text(path, head + body)
