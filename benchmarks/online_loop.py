"""Online-loop throughput: clplat's engine vs a plain PyTorch loop vs Avalanche 0.6 ``OnlineNaive``.

Same model and initial weights, same Si-Blurry stream (the plan from ``clplat.scenarios.build_plan``,
batches cut exactly as clplat's driver cuts them), same optimizer and the same number of optimizer
updates, all measured in one process with the frameworks interleaved and repeated. Finetune (no
memory), so the three do the same work.

* **clplat**: the real engine, ``Experiment.fit`` (one ``Trainer.fit`` over the stream, with its
  progress bar on and W&B off); evaluation at task ends is subtracted with the driver's own
  ``eval_seconds``. No run directory, so no checkpoint files are written.
* **plain**: a hand-written loop over the same batches (index the in-memory tensors, exposure
  re-indexing and logit masking as the finetune strategy does, forward, backward, step).
* **avalanche**: ``OnlineNaive(train_mb_size=stream_batch, train_passes=online_iter)`` over
  ``split_online_stream(..., shuffle=False)`` of one experience per Si-Blurry task, default
  evaluator (its metrics and interactive logger, output sent to /dev/null);
  **avalanche-bare** drops the evaluator's metrics and loggers.
* **lightning-bare** (reference): a minimal ``LightningModule`` with manual optimisation on the
  same batches, no callbacks: the floor of Lightning's own per-step cost.

Timed: from "model and data exist" to "stream consumed" (optimizer, Trainer / strategy
construction and the loop). Not timed: dataset, plan and model construction, evaluation.

Environment: importing Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1``, which makes every
``optimizer.step()`` on a CPU-only machine re-probe NVML. clplat's module drops it during its fit;
lightning-bare applies the same hooks, and the contenders that never import Lightning run without
it. Verdicts against the targets use the min..max ranges of the repeats: "met" / "MISSED" only
when the whole range is on one side of the target, otherwise "inconclusive".

    python benchmarks/online_loop.py                 # both models, 3 repeats
    python benchmarks/online_loop.py --quick         # smoke run (short streams, 1 repeat)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import io
import logging
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from clplat.config import Config, build_config  # noqa: E402
from clplat.engine.experiment import Experiment  # noqa: E402
from clplat.engine.module import ContinualModule  # noqa: E402

FRAMEWORKS = ("clplat", "plain", "avalanche", "avalanche-bare", "lightning-bare")
STANDALONE = ("plain", "avalanche", "avalanche-bare")  # contenders that never import Lightning
TARGETS = {"mlp": {"plain": 2.0, "avalanche": 1.5}, "vit": {"plain": 1.1}}


@dataclass(frozen=True)
class Case:
    """One model on one stream."""

    key: str
    title: str
    overrides: dict[str, Any]
    max_batches: int | None = None  # a prefix of the stream (all frameworks alike)


def cases(quick: bool, vit_patch: int) -> list[Case]:
    base = {"strategy": "finetune", "optim": {"name": "adam", "lr": 1e-3}, "seed": 1,
            "scenario": {"kind": "si_blurry", "n_tasks": 5, "disjoint_pct": 50, "blurry_pct": 10},
            "checkpoint_every": 0, "logging": {"wandb": "disabled", "progress": True}}
    mlp = {**base, "name": "bench_mlp", "data": {"dataset": "digits"},
           "backbone": {"name": "mlp", "kwargs": {"hidden": 256}},
           "online": {"stream_batch": 10, "online_iter": 1, "eval_period": 10**9}}
    vit = {**base, "name": "bench_vit", "data": {"dataset": "digits", "image_size": 32, "channels": 3},
           "backbone": {"name": "vit_tiny_patch16_224", "kwargs": {"patch_size": vit_patch}},
           "online": {"stream_batch": 16, "online_iter": 1, "eval_period": 10**9}}
    return [
        Case("mlp", "MLP 64-256-10, digits 8x8, stream batch 10", mlp, 30 if quick else None),
        Case("vit", f"ViT-Tiny (img 32, patch {vit_patch}, 3 ch), digits 32x32, stream batch 16", vit,
             4 if quick else None),
    ]


@dataclass
class RunResult:
    seconds: float  # training wall time, evaluation excluded
    cpu_seconds: float  # process CPU time over the same span (less sensitive to a shared machine)
    samples: int
    updates: int
    eval_seconds: float = 0.0
    params: list[Tensor] = field(default_factory=list)


@contextlib.contextmanager
def count_steps(opt: torch.optim.Optimizer) -> Iterator[list[int]]:
    """Count real ``optimizer.step()`` calls through torch's step hook."""
    n = [0]
    handle = opt.register_step_post_hook(lambda *_: n.__setitem__(0, n[0] + 1))
    try:
        yield n
    finally:
        handle.remove()


class _TTY(io.TextIOBase):
    """stderr that claims to be a terminal, so tqdm's ``disable=None`` keeps the bar on when the
    benchmark's output is redirected (the bar is still written to the real stderr)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def isatty(self) -> bool:
        return True

    def write(self, s: str) -> int:
        return self.stream.write(s)

    def flush(self) -> None:
        self.stream.flush()


NVML_ENV = "PYTORCH_NVML_BASED_CUDA_CHECK"


@contextlib.contextmanager
def without_lightning_env() -> Iterator[None]:
    """Importing Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` process-wide; with it, every
    ``optimizer.step()`` on a CPU-only machine re-probes NVML (a failed ``dlopen``, tens of us).
    The plain loop and Avalanche never import Lightning, so they run without it, as they would alone."""
    old = os.environ.pop(NVML_ENV, None)
    try:
        yield
    finally:
        if old is not None:
            os.environ[NVML_ENV] = old


class Timer:
    def __enter__(self) -> Timer:
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.w0
        self.cpu = time.process_time() - self.c0


# --- setup (not timed) --------------------------------------------------------------------------
@dataclass
class Setup:
    cfg: Config
    template: Experiment  # never trained: its initial weights are the reference
    init_state: dict[str, Tensor]
    batches: list[list[int]]
    x: Tensor
    y: Tensor
    num_classes: int

    @property
    def samples(self) -> int:
        return sum(len(b) for b in self.batches)


def make_setup(case: Case) -> Setup:
    cfg = build_config(copy.deepcopy(case.overrides))
    exp = Experiment(cfg, run_dir=None)
    if case.max_batches is not None:
        exp.batches = exp.batches[: case.max_batches]
    train = exp.data.train
    return Setup(cfg, exp, copy.deepcopy(exp.strategy.state_dict()), [b.indices for b in exp.batches],
                 train.x, train.y, exp.data.num_classes)


def fresh_model(s: Setup) -> nn.Sequential:
    """``backbone -> head`` with the template's initial weights (the finetune strategy's logits)."""
    strat = copy.deepcopy(s.template.strategy)
    strat.load_state_dict(s.init_state)
    return nn.Sequential(strat.backbone, strat.head)


def make_optimizer(params: list[nn.Parameter], cfg: Config) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


# --- the contenders ------------------------------------------------------------------------------
def run_clplat(s: Setup) -> RunResult:
    exp = Experiment(s.cfg, run_dir=None)  # dataset, plan, model: setup, not timed
    exp.batches = exp.batches[: len(s.batches)]
    exp.strategy.load_state_dict(s.init_state)
    old_err = sys.stderr
    sys.stderr = _TTY(old_err)  # keep the progress bar on even when stderr is redirected
    try:
        with count_steps(exp.module.make_optimizer()) as n, Timer() as t:
            exp.fit()
    finally:
        sys.stderr = old_err
    assert exp.driver is not None
    ev = exp.driver.eval_seconds
    return RunResult(t.wall - ev, t.cpu - ev, exp.cursor.samples_seen, n[0], ev,
                     [p.detach().clone() for p in exp.strategy.parameters()])


def run_plain(s: Setup) -> RunResult:
    model = fresh_model(s)
    online_iter = s.cfg.online.online_iter
    x_all, y_all, c = s.x, s.y, s.num_classes
    with Timer() as t:
        opt = make_optimizer(list(model.parameters()), s.cfg)
        with count_steps(opt) as n:
            model.train()
            seen = [-1] * c  # exposure order, as the finetune strategy's head uses it
            label_index = torch.full((c,), -1, dtype=torch.long)
            mask = torch.full((c,), float("-inf"))
            n_exposed = samples = 0
            for idx in s.batches:
                if not idx:
                    continue
                index = torch.as_tensor(idx, dtype=torch.long)
                x, y_orig = x_all[index], y_all[index]
                grew = False
                for k in y_orig.tolist():
                    if seen[k] < 0:
                        seen[k] = n_exposed
                        label_index[k] = n_exposed
                        n_exposed += 1
                        grew = True
                if grew:
                    mask[:n_exposed] = 0.0
                y = label_index[y_orig]
                for _ in range(online_iter):
                    logits = model(x)
                    if n_exposed < c:
                        logits = logits + mask
                    loss = F.cross_entropy(logits, y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                samples += len(idx)
    return RunResult(t.wall, t.cpu, samples, n[0], params=[p.detach().clone() for p in model.parameters()])


def _avalanche_stream(s: Setup) -> list[Any]:
    """One Avalanche experience per Si-Blurry task, samples in plan order (setup, not timed)."""
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.utils import as_classification_dataset

    class TaskData(torch.utils.data.Dataset):
        def __init__(self, x: Tensor, y: Tensor) -> None:
            self.x, self.y, self.targets = x, y, y.tolist()

        def __len__(self) -> int:
            return len(self.targets)

        def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
            return self.x[i], self.y[i]

    # regroup the (possibly truncated) batches by task, keeping their order
    per_task: list[list[int]] = []
    for b, sb in zip(s.batches, s.template.batches):
        while len(per_task) <= sb.task_id:
            per_task.append([])
        per_task[sb.task_id].extend(b)
    datasets = []
    for idx in per_task:
        if idx:
            index = torch.as_tensor(idx, dtype=torch.long)
            datasets.append(as_classification_dataset(TaskData(s.x[index], s.y[index])))
    return list(benchmark_from_datasets(train=datasets).train_stream)


def run_avalanche(s: Setup, bare: bool) -> RunResult:
    from avalanche.benchmarks.scenarios import split_online_stream
    from avalanche.training import OnlineNaive
    from avalanche.training.plugins import EvaluationPlugin

    stream = _avalanche_stream(s)
    model = fresh_model(s)
    sb = s.cfg.online.stream_batch
    sink = open(os.devnull, "w")  # noqa: SIM115 - closed below
    try:
        with contextlib.redirect_stdout(sink), Timer() as t:
            opt = make_optimizer(list(model.parameters()), s.cfg)
            with count_steps(opt) as n:
                evaluator = EvaluationPlugin(loggers=[]) if bare else None
                kwargs = {"evaluator": evaluator} if evaluator is not None else {}
                strategy = OnlineNaive(model=model, optimizer=opt, criterion=nn.CrossEntropyLoss(),
                                       train_mb_size=sb, train_passes=s.cfg.online.online_iter,
                                       eval_mb_size=256, device="cpu", **kwargs)
                samples = 0
                for experience in stream:
                    for sub in split_online_stream([experience], experience_size=sb, shuffle=False):
                        strategy.train(sub)
                        samples += len(sub.dataset)
    finally:
        sink.close()
    return RunResult(t.wall, t.cpu, samples, n[0], params=[p.detach().clone() for p in model.parameters()])


def run_lightning_bare(s: Setup) -> RunResult:
    import lightning as L
    from torch.utils.data import DataLoader

    model = fresh_model(s)
    online_iter = s.cfg.online.online_iter
    cfg = s.cfg

    class Bare(L.LightningModule):
        # the same environment fix clplat's module applies to itself during a fit (drop
        # PYTORCH_NVML_BASED_CUDA_CHECK on CPU-only machines): the reference must not pay a cost
        # clplat does not pay
        _NVML_ENV = ContinualModule._NVML_ENV
        on_fit_start = ContinualModule.on_fit_start
        on_fit_end = ContinualModule.on_fit_end

        def __init__(self) -> None:
            super().__init__()
            self.net = model
            self.automatic_optimization = False

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return make_optimizer(list(self.net.parameters()), cfg)

        def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
            x, y = batch
            opt = self.optimizers()
            for _ in range(online_iter):
                loss = F.cross_entropy(self.net(x), y)
                opt.zero_grad(set_to_none=True)
                self.manual_backward(loss)
                opt.step()

    ds = s.template.data.train
    counter: list[int] = [0]

    class Count(L.Callback):
        def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            opt = trainer.optimizers[0]
            opt.register_step_post_hook(lambda *_: counter.__setitem__(0, counter[0] + 1))

    with Timer() as t:
        module = Bare()
        trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, num_sanity_val_steps=0, callbacks=[Count()])
        loader = DataLoader(ds, batch_sampler=[b for b in s.batches if b], collate_fn=lambda b: b,
                            num_workers=0)
        trainer.fit(module, loader)
    return RunResult(t.wall, t.cpu, s.samples, counter[0], params=[p.detach().clone() for p in model.parameters()])


RUNNERS: dict[str, Callable[[Setup], RunResult]] = {
    "clplat": run_clplat,
    "plain": run_plain,
    "avalanche": lambda s: run_avalanche(s, bare=False),
    "avalanche-bare": lambda s: run_avalanche(s, bare=True),
    "lightning-bare": run_lightning_bare,
}


# --- report --------------------------------------------------------------------------------------
def median(xs: list[float]) -> float:
    return statistics.median(xs)


def verdict(worst: float, best: float, limit: float, repeats: int) -> str:
    """A ratio target ``ratio <= limit`` judged on the repeat ranges, not the medians: "met" when
    even the worst pairing of repeats (slowest of ours against fastest of theirs) meets it,
    "MISSED" when even the best pairing misses it, "inconclusive" when the ranges straddle the
    limit (or there is a single repeat, so no range)."""
    if repeats < 2:
        return "inconclusive (1 repeat: no range)"
    if worst <= limit:
        return "met"
    if best > limit:
        return "MISSED"
    return "inconclusive (ranges overlap the target)"


def report(case: Case, s: Setup, results: dict[str, list[RunResult]],
           first: dict[str, list[RunResult]]) -> dict[str, Any]:
    """Print the table and ratios; "steady" is (full - first batch) samples over the same difference
    in time, which cancels one-time costs (Trainer / strategy construction) for every framework."""
    n_rep = len(next(iter(results.values())))
    print(f"\n## {case.title}")
    print(f"stream: {s.samples} samples in {sum(1 for b in s.batches if b)} batches, "
          f"online_iter {s.cfg.online.online_iter}, {s.cfg.optim.name} lr {s.cfg.optim.lr}, "
          f"torch threads {torch.get_num_threads()}, repeats {n_rep} (medians)")
    hdr = (f"{'framework':<16}{'samples/s':>11}{'time s':>9}{'min..max':>13}{'cpu s':>8}"
           f"{'1st batch s':>13}{'steady samples/s':>18}{'updates':>9}")
    print(hdr)
    print("-" * len(hdr))
    med: dict[str, float] = {}
    cpu: dict[str, float] = {}
    steady: dict[str, float] = {}
    for fw, rs in results.items():
        secs = [r.seconds for r in rs]
        med[fw] = median(secs)
        cpu[fw] = median([r.cpu_seconds for r in rs])
        t1 = median([r.seconds for r in first[fw]])
        steady[fw] = (rs[0].samples - first[fw][0].samples) / max(med[fw] - t1, 1e-9)
        extra = f"   (eval excluded: {median([r.eval_seconds for r in rs]):.2f} s)" if fw == "clplat" else ""
        print(f"{fw:<16}{rs[0].samples / med[fw]:>11,.0f}{med[fw]:>9.3f}"
              f"{f'{min(secs):.2f}..{max(secs):.2f}':>13}{cpu[fw]:>8.2f}{t1:>13.3f}{steady[fw]:>18,.0f}"
              f"{rs[0].updates:>9}{extra}")
    updates = {fw: rs[0].updates for fw, rs in results.items()}
    same_updates = len(set(updates.values())) == 1
    print(f"optimizer updates equal across frameworks: {same_updates} {updates if not same_updates else ''}")
    out: dict[str, Any] = {"median_s": med, "cpu_s": cpu, "steady": steady, "updates": updates}
    if "clplat" in results and "plain" in results:
        diff = max(float((a - b).abs().max()) for a, b in zip(results["clplat"][0].params,
                                                                results["plain"][0].params))
        print(f"final weights clplat vs plain: max |diff| = {diff:.2e}")
        out["weight_diff"] = diff
    if "clplat" in med:
        print("ratios (clplat time / other time, whole run; < 1 means clplat is faster):")
        for fw in med:
            if fw == "clplat":
                continue
            r_all, r_steady = med["clplat"] / med[fw], steady[fw] / steady["clplat"]
            line = f"  vs {fw:<15} time x{r_all:.2f}  (cpu x{cpu['clplat'] / cpu[fw]:.2f}, steady x{r_steady:.2f})"
            target = TARGETS[case.key]
            ours, theirs = [r.seconds for r in results["clplat"]], [r.seconds for r in results[fw]]
            if fw == "plain" and "plain" in target:  # clplat time / plain time <= target
                v = verdict(max(ours) / min(theirs), min(ours) / max(theirs), target["plain"], len(ours))
                line += f"   target <= {target['plain']}x: {v}"
            if fw.startswith("avalanche") and "avalanche" in target:  # their/our time >= target, negated
                v = verdict(-min(theirs) / max(ours), -max(theirs) / min(ours), -target["avalanche"], len(ours))
                line += f"   clplat throughput x{1 / r_all:.2f}, target >= {target['avalanche']}x: {v}"
            print(line)
    return out


def run_one(fw: str, s: Setup) -> RunResult:
    env = without_lightning_env() if fw in STANDALONE else contextlib.nullcontext()
    with env, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Avalanche's OnlineNaive deprecation notice
        return RUNNERS[fw](s)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: short stream prefixes, 1 repeat")
    p.add_argument("--repeats", type=int, default=None, help="interleaved repetitions (default 3; quick 1)")
    p.add_argument("--models", default="mlp,vit", help="comma list of: mlp, vit")
    p.add_argument("--frameworks", default=None,
                   help=f"comma list of: {', '.join(FRAMEWORKS)} (default: all for mlp; "
                        "clplat, plain, avalanche for vit)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads for all (default 1: stable on a shared 2-core machine)")
    p.add_argument("--vit-patch", type=int, default=8, help="ViT patch size on 32x32 inputs (4 = 64 tokens)")
    args = p.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    chosen = [f for f in (args.frameworks or "").split(",") if f]
    for f in chosen:
        if f not in RUNNERS:
            p.error(f"unknown framework {f!r}")
    models = [m for m in args.models.split(",") if m]
    import avalanche  # noqa: F401 - import cost (~5 s) outside every timing

    print(f"torch {torch.__version__}, cpu threads {args.threads}, os.cpu_count {os.cpu_count()}")
    for case in cases(args.quick, args.vit_patch):
        if case.key not in models:
            continue
        frameworks = chosen or (list(FRAMEWORKS) if case.key == "mlp" else ["clplat", "plain", "avalanche"])
        s = make_setup(case)
        s1 = dataclasses.replace(s, batches=s.batches[:1])
        results: dict[str, list[RunResult]] = {f: [] for f in frameworks}
        first: dict[str, list[RunResult]] = {f: [] for f in frameworks}
        for r in range(repeats):
            order = frameworks[r % len(frameworks):] + frameworks[: r % len(frameworks)]  # rotate
            for fw in order:
                first[fw].append(run_one(fw, s1))
                res = run_one(fw, s)
                results[fw].append(res)
                print(f"[{case.key} repeat {r + 1}/{repeats}] {fw:<15} {res.seconds:7.3f} s "
                      f"({res.samples / res.seconds:,.0f} samples/s)", file=sys.stderr, flush=True)
        report(case, s, results, first)
    return 0


if __name__ == "__main__":
    sys.exit(main())
