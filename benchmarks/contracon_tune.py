"""Model selection for the ConTraCon configs without the test set (issue 9; the release picks each
task's best epoch by *test* accuracy, spec B.4).

Runs an experiment YAML with a validation split carved from the TRAINING data: ``--val-per-class``
training samples of every class (a fixed draw of ``--val-seed``) are held out and become the
evaluation set; the run trains on the rest and never loads the test split's images into the
evaluation. Print TIL / CIL / task-id accuracy on that validation split, per task, and the wall
time. Compare hyperparameters (epochs, lr, model size) with it, then ship the chosen ones in the
YAML, which trains on the whole training split and reports on the test split once.

    python benchmarks/contracon_tune.py experiments/contracon_glyphs.yaml sessions.base.epochs=30
    python benchmarks/contracon_tune.py experiments/contracon_digits.yaml --val-per-class 20 seed=2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np


def carve_validation(data, per_class: int, seed: int):
    """``data`` with ``per_class`` training samples of each class moved to the evaluation split."""
    from clplat.data.base import TensorSplit
    from clplat.errors import UserError

    targets = np.asarray(data.train_targets)
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        if len(idx) <= per_class:
            raise UserError(f"class {c} has {len(idx)} training samples, cannot hold out {per_class}")
        val.extend(rng.choice(idx, per_class, replace=False).tolist())
    val_idx = np.sort(np.asarray(val))
    keep = np.setdiff1d(np.arange(len(targets)), val_idx)
    tr = data.train
    x_tr, y_tr = tr.__getitems__(keep.tolist())
    x_va, y_va = tr.__getitems__(val_idx.tolist())
    mean, std = getattr(tr, "mean", None), getattr(tr, "std", None)
    return replace(data, train=TensorSplit(x_tr, y_tr, mean, std), test=TensorSplit(x_va, y_va, mean, std),
                   train_targets=y_tr.numpy(), test_targets=y_va.numpy())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--val-per-class", type=int, default=10)
    p.add_argument("--val-seed", type=int, default=0)
    p.add_argument("--run-dir", help="keep the run here (default: a temporary directory)")
    a = p.parse_intermixed_args()

    import clplat.engine.sessions as sessions
    from clplat.config import load_config

    build = sessions.build_dataset
    sessions.build_dataset = lambda cfg, seed: carve_validation(build(cfg, seed), a.val_per_class, a.val_seed)
    cfg = load_config(a.config, [*a.overrides, "logging.wandb=disabled", "logging.progress=false"])
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        r = sessions.run_sessions(cfg, Path(a.run_dir or tmp) / "run", resume=False)
    out = {"config": a.config, "overrides": a.overrides, "val_per_class": a.val_per_class,
           "til_acc": r["til_acc"], "cil_acc": r["cil_acc"], "task_id_acc": r["task_id_acc"],
           "til_last": [round(v, 1) for v in r["til_matrix"][-1]],
           "task_id_last": [round(v, 1) for v in r["task_id_matrix"][-1]],
           "params_total": r["params_total"], "wall_s": round(time.perf_counter() - t0, 1),
           "eval_s": r["eval_time_s"]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
