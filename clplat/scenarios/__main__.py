"""``python -m clplat.scenarios describe CONFIG [key=value ...] [--json]``

Prints the stream an experiment config would produce (per-task classes, sample counts, disjoint
versus blurry samples, moved samples; for FSCIL the sessions) without building a model, so a
scenario can be checked before any compute is spent. ``--json`` prints the whole plan instead; for
FSCIL, per session its ``classes``, ``samples`` (training indices) and, for file-backed datasets,
``paths`` (relative to ``data.root``).
"""

from __future__ import annotations

import json
import sys

import numpy as np

from clplat.data.base import ClassificationData
from clplat.errors import main_guard
from clplat.scenarios import StreamPlan, build_scenario

USAGE = "usage: python -m clplat.scenarios describe CONFIG [key=value ...] [--json]"


def describe_plan(plan: StreamPlan, targets: np.ndarray, header: str = "") -> str:
    """Human-readable summary of a plan (the text ``describe`` prints)."""
    t = np.asarray(targets)
    blurry = {c for cls in plan.blurry_classes for c in cls}
    n_dis_cls = sum(len(c) for c in plan.disjoint_classes)
    lines = [header] if header else []
    lines.append(f"{plan.n_tasks} tasks, {plan.total} stream samples, {plan.num_classes} classes "
                 f"({n_dis_cls} disjoint, {len(blurry)} blurry, "
                 f"{plan.num_classes - n_dis_cls - len(blurry)} in no task)")
    lines.append(f"{'task':>4} {'samples':>8} {'classes':>7} {'new':>4} {'disjoint_smp':>12} "
                 f"{'blurry_smp':>10} {'moved_out':>9} {'moved_in':>8} {'end':>8}")
    present, new = plan.task_classes(t), plan.new_classes(t)
    for i, task in enumerate(plan.tasks):
        ys = t[np.asarray(task, dtype=np.int64)]
        n_blur = int(np.isin(ys, list(blurry)).sum()) if blurry else 0
        out = plan.moved_out[i] if i < len(plan.moved_out) else 0
        into = plan.moved_in[i] if i < len(plan.moved_in) else 0
        lines.append(f"{i:>4} {len(task):>8} {len(present[i]):>7} {len(new[i]):>4} {len(task) - n_blur:>12} "
                     f"{n_blur:>10} {out:>9} {into:>8} {plan.task_ends[i]:>8}")
    for i in range(plan.n_tasks):
        own_d = plan.disjoint_classes[i] if i < len(plan.disjoint_classes) else []
        own_b = plan.blurry_classes[i] if i < len(plan.blurry_classes) else []
        lines.append(f"task {i}: disjoint classes {sorted(own_d)}; owns blurry {sorted(own_b)}; "
                     f"present {present[i]}")
    lines.append(f"moved samples: {sum(plan.moved_out)} pooled, {sum(plan.moved_in)} dealt back, "
                 f"{len(plan.dropped)} dropped")
    period = plan.eval_points[0] if plan.eval_points else None
    lines.append(f"anytime eval points: {len(plan.eval_points)}"
                 + (f" (every {period} samples)" if period else ""))
    return "\n".join(lines)


def fscil_sessions_json(plan: StreamPlan, data: ClassificationData) -> list[dict]:
    """Per session: the classes it introduces, its training indices and (file-backed) their paths."""
    paths = getattr(data.train, "paths", None)
    out = []
    for k, (samples, classes) in enumerate(zip(plan.tasks, plan.disjoint_classes)):
        entry: dict = {"session": k, "classes": list(classes), "samples": list(samples)}
        if paths is not None:
            entry["paths"] = [paths[i] for i in samples]
        out.append(entry)
    return out


def describe_fscil(plan: StreamPlan, data: ClassificationData, header: str = "") -> str:
    """Human-readable FSCIL sessions: classes, samples, shots per class, test samples evaluated."""
    t, test = np.asarray(data.train_targets), np.asarray(data.test_targets)
    lines = [header] if header else []
    lines.append(f"{plan.n_tasks} sessions (base + {plan.n_tasks - 1} incremental), {plan.total} training "
                 f"samples, {sum(len(c) for c in plan.disjoint_classes)} of {plan.num_classes} classes used")
    lines.append(f"{'session':>7} {'classes':>7} {'samples':>8} {'shots/class':>11} {'seen':>5} {'test_smp':>8}")
    seen: list[int] = []
    for k, (samples, classes) in enumerate(zip(plan.tasks, plan.disjoint_classes)):
        seen += classes
        counts = np.bincount(t[np.asarray(samples, dtype=np.int64)], minlength=plan.num_classes)[classes]
        shots = f"{counts.min()}" if counts.min() == counts.max() else f"{counts.min()}-{counts.max()}"
        lines.append(f"{k:>7} {len(classes):>7} {len(samples):>8} {shots:>11} {len(seen):>5} "
                     f"{int(np.isin(test, seen).sum()):>8}")
    for k, classes in enumerate(plan.disjoint_classes):
        lines.append(f"session {k}: classes {list(classes)}")
    lines.append("evaluation after session k: test samples of all classes seen so far, unseen logits masked")
    return "\n".join(lines)


def describe(config_path: str, overrides: list[str], as_json: bool = False) -> str:
    from clplat.config import load_config
    from clplat.data import build_dataset

    cfg = load_config(config_path, overrides)
    data = build_dataset(cfg.data, cfg.seed)
    sc = cfg.scenario
    plan = build_scenario(sc, data, cfg.seed, cfg.online.eval_period)
    if as_json:
        if plan.kind == "fscil":
            return json.dumps({"name": cfg.name, "dataset": data.name, "seed": cfg.seed,
                               "sessions": fscil_sessions_json(plan, data)})
        return json.dumps(plan.to_dict())
    settings = ", ".join(f"{k}={v}" for k, v in sc.model_dump().items() if k != "kind")
    header = f"{cfg.name}: {data.name}, seed {cfg.seed}, scenario {sc.kind}({settings})"
    if plan.kind == "fscil":
        return describe_fscil(plan, data, header)
    return describe_plan(plan, np.asarray(data.train_targets), header)


@main_guard
def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[0] != "describe":
        print(USAGE, file=sys.stderr)
        return 2
    as_json = "--json" in args
    rest = [a for a in args[1:] if a != "--json"]
    print(describe(rest[0], rest[1:], as_json=as_json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
