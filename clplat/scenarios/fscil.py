"""Few-shot class-incremental learning (FSCIL, the TOPIC/CEC protocol): a base session with all
training samples of B classes, then S sessions of N-way K-shot.

Two ways to pick the sessions, both pure functions of their inputs:

- :func:`fscil_sessions` draws them from one private CPU ``torch.Generator(seed)``, in this order:
  ``randperm(C)`` for the class order (only with ``class_order="seeded"``; ``"contiguous"`` keeps
  label order, as the standard benchmarks do), then, for each incremental session in order and each
  of its classes in order, ``randperm(n_c)`` over that class's training indices (dataset order);
  the first K entries are its shots.
- :func:`read_index_files` reads the standard CEC/TOPIC ``session_<k>.txt`` files. A line is an
  integer index into the training split (CIFAR-100, pickle ``train`` order) or an image path whose
  last two components (class folder / file name) name one training sample, wherever the data lives.

``scenario.kind: fscil`` wraps both: ``StreamPlan.tasks[t]`` is session t's training indices and
``disjoint_classes[t]`` the classes it introduces. Evaluation after session t uses the test samples
of every class seen so far, with the logits of unseen classes masked (the engine's job).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field

from clplat.errors import UserError
from clplat.scenarios.plan import SCENARIOS, ScenarioConfig, StreamPlan, class_order_of, int_targets

ClassOrder = Literal["seeded", "contiguous"]


def fscil_classes(num_classes: int, base_classes: int, ways: int, n_sessions: int, seed: int,
                  class_order: ClassOrder = "seeded") -> list[list[int]]:
    """Classes of each session: ``B`` base classes, then ``n_sessions`` groups of ``ways``."""
    _check_counts(num_classes, base_classes, ways, n_sessions)
    return _session_classes(num_classes, base_classes, ways, n_sessions, class_order,
                            torch.Generator().manual_seed(int(seed)))


def fscil_sessions(targets: Sequence[int] | np.ndarray, base_classes: int, ways: int, shots: int,
                   n_sessions: int, seed: int, *, class_order: ClassOrder = "seeded",
                   num_classes: int | None = None) -> list[list[int]]:
    """Training indices per session: session 0 holds every sample of the base classes (dataset
    order); session s >= 1 holds ``shots`` seeded samples of each of its ``ways`` classes (class by
    class, in draw order). ``num_classes`` defaults to ``max(targets) + 1``."""
    t = _targets(targets)
    n_cls = int(t.max()) + 1 if num_classes is None and t.size else int(num_classes or 0)
    if shots < 1:
        raise UserError(f"scenario.shots must be >= 1, got {shots}")
    _check_counts(n_cls, base_classes, ways, n_sessions)
    if t.size and t.max() >= n_cls:
        raise UserError(f"scenario: targets must lie in [0, {n_cls}), got max {t.max()}")
    g = torch.Generator().manual_seed(int(seed))
    classes = _session_classes(n_cls, base_classes, ways, n_sessions, class_order, g)
    sessions = [np.flatnonzero(np.isin(t, classes[0])).tolist()]
    for s, cls in enumerate(classes[1:], start=1):
        picked: list[int] = []
        for c in cls:
            idx = np.flatnonzero(t == c)
            if len(idx) < shots:
                raise UserError(f"scenario: session {s} needs {shots} shots of class {c}, but it has only "
                                f"{len(idx)} training samples (lower scenario.shots)")
            picked.extend(idx[torch.randperm(len(idx), generator=g)[:shots].numpy()].tolist())
        sessions.append(picked)
    return sessions


def read_index_files(index_dir: str | Path, dataset: Any, n_files: int | None = None) -> list[list[int]]:
    """Training indices per session from ``session_1.txt``, ``session_2.txt``, ... in ``index_dir``.

    ``dataset`` is the training split: it has ``targets`` and, when file-backed, ``paths`` (relative
    to ``data.root``) and optionally ``match_keys`` (``class/file`` per sample, for layouts whose
    files do not sit in class folders). ``n_files`` = how many sessions to read (all consecutive
    files when None). Any unreadable or unmatched line is a UserError naming file and line.
    """
    folder = Path(index_dir).expanduser()
    if not folder.is_dir():
        raise UserError(f"scenario.index_dir {folder} is not a folder (expected session_1.txt, session_2.txt, ...)")
    n_samples = len(_targets(dataset.targets))
    lookup: dict[str, int] | None = None
    sessions: list[list[int]] = []
    k = 1
    while n_files is None or k <= n_files:
        path = folder / f"session_{k}.txt"
        if not path.is_file():
            if n_files is None and k > 1:
                break
            raise UserError(f"FSCIL index file {path} not found"
                            + (f" (the scenario has {n_files} sessions)" if n_files else ""))
        lines = _read_lines(path)
        if lookup is None and any(not _is_int(line) for _, line in lines):
            lookup = _path_lookup(dataset)  # empty when the dataset has no files: every path line fails
        sessions.append([_resolve(path, no, line, n_samples, lookup) for no, line in lines])
        k += 1
    return sessions


def check_index_sessions(sessions: list[list[int]], targets: np.ndarray, index_dir: str | Path) -> None:
    """The read sessions must form an FSCIL split: each sample once, each class in one session."""
    owner: dict[int, int] = {}
    seen: set[int] = set()
    for s, idx in enumerate(sessions):
        if not idx:
            raise UserError(f"FSCIL index file {Path(index_dir) / f'session_{s + 1}.txt'} lists no sample")
        for i in idx:
            if i in seen:
                raise UserError(f"FSCIL index files in {index_dir}: training sample {i} is listed twice")
            seen.add(i)
        for c in np.unique(targets[np.asarray(idx, dtype=np.int64)]).tolist():
            if owner.setdefault(c, s) != s:
                raise UserError(f"FSCIL index files in {index_dir}: class {c} appears in sessions "
                                f"{owner[c] + 1} and {s + 1} (session files must not share classes)")


def session_classes_of(sessions: list[list[int]], targets: np.ndarray) -> list[list[int]]:
    """Classes each session introduces, in order of first appearance within the session."""
    out: list[list[int]] = []
    for idx in sessions:
        ys = targets[np.asarray(idx, dtype=np.int64)]
        _, first = np.unique(ys, return_index=True)
        out.append([int(ys[i]) for i in np.sort(first)])
    return out


def path_key(path: str) -> str:
    """``class_folder/file_name``: the last two components of a path (either slash)."""
    parts = PurePosixPath(path.replace("\\", "/")).parts
    return "/".join(parts[-2:])


def _targets(targets: Sequence[int] | np.ndarray) -> np.ndarray:
    t = int_targets(targets)
    if t.size and t.min() < 0:
        raise UserError(f"scenario: targets must be >= 0, got {t.min()}")
    return t


def _check_counts(num_classes: int, base_classes: int, ways: int, n_sessions: int) -> None:
    for name, v, low in (("base_classes", base_classes, 1), ("ways", ways, 1), ("n_sessions", n_sessions, 0)):
        if v < low:
            raise UserError(f"scenario.{name} must be >= {low}, got {v}")
    need = base_classes + ways * n_sessions
    if need > num_classes:
        raise UserError(f"scenario: base_classes + ways x n_sessions = {base_classes} + {ways} x {n_sessions} "
                        f"= {need} is larger than the dataset's {num_classes} classes")


def _session_classes(num_classes: int, base: int, ways: int, n_sessions: int, class_order: str,
                     g: torch.Generator) -> list[list[int]]:
    order = class_order_of(num_classes, class_order, g)
    return [order[:base]] + [order[base + s * ways:base + (s + 1) * ways] for s in range(n_sessions)]


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, stripped text) of every non-blank line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read FSCIL index file {path}: {err}") from None
    return [(no, s) for no, raw in enumerate(text.splitlines(), start=1) if (s := raw.strip())]


def _is_int(text: str) -> bool:
    return text.isdigit()


def _path_lookup(dataset: Any) -> dict[str, int]:
    """``class/file`` -> training index; a key two samples share maps to -1 (ambiguous)."""
    paths = getattr(dataset, "paths", None)
    if paths is None:
        return {}
    keys = [path_key(str(p)) for p in paths]
    extra = getattr(dataset, "match_keys", None)
    table: dict[str, int] = {}
    for per_sample in (keys, extra or []):
        for i, key in enumerate(per_sample):
            prev = table.get(key)
            table[key] = i if prev is None or prev == i else -1
    return table


def _resolve(path: Path, no: int, line: str, n_samples: int, lookup: dict[str, int] | None) -> int:
    if _is_int(line):
        i = int(line)
        if i >= n_samples:
            raise UserError(f"{path} line {no}: sample index {i} is outside the training set "
                            f"(0..{n_samples - 1})")
        return i
    key = path_key(line)
    i = (lookup or {}).get(key)
    if not lookup:
        raise UserError(f"{path} line {no}: '{line}' is not a sample index, and this dataset has no image "
                        "files to match a path against (CIFAR-100 index files use integer indices)")
    if i is None:
        raise UserError(f"{path} line {no}: '{line}' matches no training sample (looked for '{key}')")
    if i < 0:
        raise UserError(f"{path} line {no}: '{line}' matches several training samples ('{key}')")
    return i


# --- registration: ``scenario.kind: fscil`` ------------------------------------------------------
class FSCILConfig(ScenarioConfig):
    regimes: ClassVar[tuple[str, ...]] = ("sessions",)  # a handful of shots is trained for epochs
    base_classes: int = Field(60, ge=1, description="B: classes of the base session (all their samples)")
    ways: int = Field(5, ge=1, description="N: new classes per incremental session")
    shots: int = Field(5, ge=1, description="K: training samples per new class")
    n_sessions: int = Field(8, ge=0, description="S: incremental sessions after the base session")
    class_order: ClassOrder = Field("contiguous", description="label order (the benchmarks) or seeded")
    index_dir: str | None = Field(None, description="folder of CEC/TOPIC session_<k>.txt files")
    seed: int | None = Field(None, description="class order / shot draw seed; null = the run seed")


@SCENARIOS.register("fscil", config=FSCILConfig)
def build_fscil(cfg: FSCILConfig, data, seed: int, eval_period: int) -> StreamPlan:
    """Sessions drawn with the seed, or read from ``index_dir`` and checked against the config."""
    t = np.asarray(data.train_targets, dtype=np.int64)
    n_cls = data.num_classes
    if cfg.index_dir is None:
        s = seed if cfg.seed is None else cfg.seed
        sessions = fscil_sessions(t, cfg.base_classes, cfg.ways, cfg.shots, cfg.n_sessions, s,
                                  class_order=cfg.class_order, num_classes=n_cls)
        classes = fscil_classes(n_cls, cfg.base_classes, cfg.ways, cfg.n_sessions, s, cfg.class_order)
    else:
        _check_counts(n_cls, cfg.base_classes, cfg.ways, cfg.n_sessions)
        split = data.train if hasattr(data.train, "targets") else _Labels(t)
        sessions = read_index_files(cfg.index_dir, split, n_files=cfg.n_sessions + 1)
        check_index_sessions(sessions, t, cfg.index_dir)
        classes = session_classes_of(sessions, t)
        _check_shape(sessions, classes, t, cfg)
    zeros = [0] * len(sessions)
    return StreamPlan(tasks=sessions, num_classes=n_cls, eval_points=[], kind="fscil",
                      disjoint_classes=classes, blurry_classes=[[] for _ in sessions],
                      moved_out=zeros, moved_in=list(zeros))


class _Labels:
    """A training split reduced to its labels (plans built from targets alone)."""

    def __init__(self, targets: np.ndarray) -> None:
        self.targets = targets


def _check_shape(sessions: list[list[int]], classes: list[list[int]], t: np.ndarray, cfg: FSCILConfig) -> None:
    """Index files must describe the configured protocol: B base classes, N-way K-shot after."""
    folder = Path(cfg.index_dir or ".")
    for s, (idx, cls) in enumerate(zip(sessions, classes)):
        name = folder / f"session_{s + 1}.txt"
        want = cfg.base_classes if s == 0 else cfg.ways
        if len(cls) != want:
            key = "base_classes" if s == 0 else "ways"
            raise UserError(f"FSCIL index file {name} has {len(cls)} classes, but scenario.{key} is {want}")
        if s == 0:
            continue
        counts = np.bincount(t[np.asarray(idx, dtype=np.int64)], minlength=int(t.max()) + 1)[cls]
        if (counts != cfg.shots).any():
            bad = cls[int(np.flatnonzero(counts != cfg.shots)[0])]
            raise UserError(f"FSCIL index file {name} lists {int(counts[cls.index(bad)])} samples of class "
                            f"{bad}, but scenario.shots is {cfg.shots}")
