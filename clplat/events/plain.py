"""Plain formats: ``.npz`` with arrays x, y, t (int µs), p (optional scalars width, height), and
text lines ``t x y p`` with t in seconds (the RPG / Event Camera Dataset convention; an optional
first line ``width height``; polarity 1/0 or 1/-1; ``#`` comments allowed)."""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import IO

import numpy as np

from clplat.errors import UserError
from clplat.events.types import Events

TEXT_CHUNK_LINES = 1 << 15  # ~6 MB of parser temporaries per chunk (iter_windows memory)
NPZ_CHUNK = 1 << 18


def _npz_member(z: zipfile.ZipFile, name: str, path: Path) -> tuple[IO[bytes], np.dtype, int]:
    """(open stream positioned at the data, dtype, length) of the 1-D array ``name`` in the npz."""
    fh = z.open(f"{name}.npy")
    version = np.lib.format.read_magic(fh)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(fh)
    if len(shape) != 1 or dtype.hasobject:
        raise UserError(f"{path}: npz array {name} must be 1-D numbers, got shape {shape} dtype {dtype}")
    return fh, dtype, shape[0]


def _npz_scalar(z: zipfile.ZipFile, name: str) -> int | None:
    if f"{name}.npy" not in z.namelist():
        return None
    with z.open(f"{name}.npy") as fh:
        return int(np.lib.format.read_array(fh, allow_pickle=False))


def npz_chunks(path: Path, whole: bool = False) -> Iterator[Events]:
    """The npz arrays streamed NPZ_CHUNK events at a time straight from the zip members (stored or
    deflated), so ``iter_windows`` never holds a whole array (``np.load`` would: its mmap_mode does
    not apply inside an npz); ``whole`` reads each array in one piece."""
    try:
        with zipfile.ZipFile(path) as z:
            missing = [k for k in ("x", "y", "t", "p") if f"{k}.npy" not in z.namelist()]
            if missing:
                raise UserError(f"{path}: npz lacks arrays {', '.join(missing)} (needs x, y, t, p)")
            w, h = _npz_scalar(z, "width"), _npz_scalar(z, "height")
            members = {k: _npz_member(z, k, path) for k in ("x", "y", "t", "p")}
            yield from _npz_stream(path, members, w, h, whole)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise UserError(f"{path}: unreadable npz file ({err})") from None


def _read_array(fh: IO[bytes], dtype: np.dtype, count: int, truncated: str) -> np.ndarray:
    """``count`` items from ``fh`` in 256 KiB reads into one array (a single huge ``read`` of a zip
    member joins its pieces into new bytes again and again: ~2x slower for large arrays)."""
    out = np.empty(count, dtype=dtype)
    raw = out.view(np.uint8)
    step = 1 << 18
    for i in range(0, raw.size, step):
        piece = fh.read(min(step, raw.size - i))
        if len(piece) != min(step, raw.size - i):
            raise UserError(truncated)
        raw[i : i + len(piece)] = np.frombuffer(piece, dtype=np.uint8)
    return out


def _npz_stream(path: Path, members: dict, w: int | None, h: int | None, whole: bool) -> Iterator[Events]:
    if not np.issubdtype(members["t"][1], np.integer):
        raise UserError(f"{path}: npz t must be integer microseconds, got dtype {members['t'][1]}")
    n = members["t"][2]
    if any(m[2] != n for m in members.values()):
        raise UserError(f"{path}: npz arrays x, y, t, p have different lengths")
    step = max(n, 1) if whole else NPZ_CHUNK
    for i in range(0, max(n, 1), step):
        k = min(step, n - i)
        arrays = {}
        for name, (fh, dtype, _) in members.items():
            arrays[name] = _read_array(fh, dtype, k, f"{path}: npz array {name} is truncated")
        for name in ("x", "y"):
            a = arrays[name]
            fits = a.dtype.kind in "ub" and a.dtype.itemsize <= 2  # uint8 / uint16 / bool always fit
            if k and not fits and not (0 <= int(a.min()) and int(a.max()) <= 65535):
                raise UserError(f"{path}: npz {name} coordinates must lie in 0..65535")
        pol = arrays["p"]  # 1/0 or 1/-1; uint8 / bool as they are (check_events refuses other values)
        yield Events(arrays["x"], arrays["y"], arrays["t"], pol if pol.dtype.kind in "ub" else pol > 0, w, h)


def _parse_lines(lines: Iterable[str] | Path, path: Path, first_line_no: int) -> np.ndarray:
    """Lines (or the file at ``lines`` from line ``first_line_no`` on) as an [N, 4] float array."""
    try:
        kw = {"skiprows": first_line_no - 1, "encoding": "ascii"} if isinstance(lines, Path) else {}
        data = np.loadtxt(lines, dtype=np.float64, ndmin=2, comments="#", delimiter=None, **kw)
    except ValueError as err:
        raise UserError(f"{path}: bad text event line near line {first_line_no} ({err})") from None
    if data.size and data.shape[1] != 4:
        raise UserError(f"{path}: text events need 4 columns 't x y p', got {data.shape[1]} near line {first_line_no}")
    return data.reshape(-1, 4)


def _text_header(fh: IO[str], path: Path) -> tuple[int | None, int | None, int]:
    """(width, height, line number of the first event); leaves ``fh`` at the first event line."""
    first = fh.readline()
    fields = first.split()
    if len(fields) != 2:
        fh.seek(0)
        return None, None, 1
    try:
        return int(fields[0]), int(fields[1]), 2
    except ValueError:
        msg = f"first line {first.strip()!r} is neither 'width height' nor an event"
        raise UserError(f"{path}: {msg}") from None


def _text_events(data: np.ndarray, path: Path, line_no: int, w: int | None, h: int | None) -> Events:
    if (data[:, 1:3] < 0).any() or (data[:, 1:3] > 65535).any():
        raise UserError(f"{path}: coordinate outside 0..65535 near line {line_no}")
    t = np.rint(data[:, 0] * 1e6).astype(np.int64)
    return Events(data[:, 1], data[:, 2], t, data[:, 3] > 0, w, h)


def text_chunks(path: Path, whole: bool = False) -> Iterator[Events]:
    """TEXT_CHUNK_LINES lines at a time; ``whole``: numpy's parser on the file path in one call
    (its reader on a path is ~1.3x faster than on an open file object, ~1.5x than on lists of
    lines)."""
    path = Path(path)
    try:
        fh = open(path, encoding="ascii")
    except OSError as err:
        raise UserError(f"{path}: cannot open ({err})") from None
    with fh:
        try:
            w, h, line_no = _text_header(fh, path)
            while True:
                lines = path if whole else list(islice(fh, TEXT_CHUNK_LINES))
                if not whole and not lines:
                    break
                data = _parse_lines(lines, path, line_no)
                if len(data):
                    yield _text_events(data, path, line_no, w, h)
                if whole:
                    break
                line_no += len(lines)
        except UnicodeDecodeError:
            raise UserError(f"{path}: not a text event file (binary content)") from None


def write_text(path: str | Path, ev: Events) -> None:
    """Write ``t x y p`` lines (t in seconds, 6 decimals) with a ``width height`` first line if known."""
    from clplat.io import atomic_write_text

    head = f"{ev.width} {ev.height}\n" if ev.width is not None and ev.height is not None else ""
    rows = zip(ev.t.tolist(), ev.x.tolist(), ev.y.tolist(), ev.p.tolist())
    body = "".join(f"{t / 1e6:.6f} {x} {y} {p}\n" for t, x, y, p in rows)
    atomic_write_text(path, head + body)
