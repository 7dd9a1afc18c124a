"""The results tables of docs/results.md, from runs: every method x seed on a Si-Blurry stream.

    python benchmarks/run_results.py --table headline [--seeds 1 2 3 4 5] [--only mvp er ...] [--jobs 2]
    python benchmarks/run_results.py --table digits ...
    python benchmarks/run_results.py --table fscil ...

``fscil``: few-shot class-incremental learning in the sessions regime on glyph classes 100-199
(60 base classes + 8 sessions of 5-way 5-shot, ``experiments/fscil_coact.yaml`` /
``fscil_simplecil.yaml``): CoACT, its ablations, LoRA-finetune, finetune and SimpleCIL, with
per-session accuracy, base / novel accuracy and their harmonic mean; no probe.

A run that fails is reported and leaves its cell short (the table says which cells have fewer seeds
than asked). ``--no-run`` tabulates only the finished runs; ``--seed-major`` orders the jobs seed by seed.

``headline``: glyph classes 100-199 (``experiments/si_blurry_mvp.yaml`` and its siblings, one YAML
per method). ``digits``: the same method configs with the data, scenario and online sections of
``experiments/si_blurry_mvp_digits.yaml`` swapped in and replay memories of 50 (5 per class, as
ER-500 holds on CIFAR-100; 1 % of 1,437 samples would be 14). Every run is
``python -m clplat.run <config>`` with ``threads: 1``, ``--jobs`` processes at a time; a finished
run (``results.json``) is reused. After each run a probe loads its final checkpoint and measures
the head's accuracy next to a class-mean classifier on the features the head reads. The script
then rewrites the table's block in docs/results.md: mean +- std, paired per-seed differences
(same seed = same stream), head vs features, the stream (samples and updates per task), per seed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXP = ROOT / "experiments"
RUNS = ROOT / "runs" / "results"
DOC = ROOT / "docs" / "results.md"
DIGITS_BASE = EXP / "si_blurry_mvp_digits.yaml"
DIGITS_MEMORY = 50
METRICS = ("A_auc", "A_avg", "A_last", "F_last")

# label -> (config file under experiments/, overrides, row title)
METHODS: dict[str, tuple[str, list[str], str]] = {
    "finetune": ("si_blurry_finetune.yaml", [], "Finetune (head only, CutMix)"),
    "er": ("si_blurry_er_vit.yaml", [], "ER (head only, CutMix, memory {mem})"),
    "l2p": ("si_blurry_l2p.yaml", [], "L2P (CutMix)"),
    "dualprompt": ("si_blurry_dualprompt.yaml", [], "DualPrompt (CutMix)"),
    "mvp": ("si_blurry_mvp.yaml", [], "**MVP**"),
    "mvp_r": ("si_blurry_mvp_r.yaml", [], "**MVP-R** (memory {mem})"),
    "mvp_no_mask": ("si_blurry_mvp.yaml", ["mvp.use_mask=false"], "MVP − instance mask"),
    "mvp_no_cvpt": ("si_blurry_mvp.yaml", ["mvp.use_cvpt=false"], "MVP − L_CVPT (pull loss, no count penalty)"),
    "mvp_no_afs": ("si_blurry_mvp.yaml", ["mvp.use_afs=false"], "MVP − AFS"),
    "mvp_no_gsf": ("si_blurry_mvp.yaml", ["mvp.use_gsf=false"], "MVP − GSF"),
}
# digits only: three Avalanche 0.6 strategies (issue 15) on the same frozen ViT + linear head as ER,
# ER-ACE with the same 50-sample memory as ER and MVP-R
AVALANCHE_METHODS: dict[str, tuple[str, list[str], str]] = {
    "av_ewc": ("si_blurry_er_vit.yaml", ["strategy=avalanche", "avalanche.name=EWC"],
               "Avalanche EWC (head only, λ 100, online)"),
    "av_lwf": ("si_blurry_er_vit.yaml", ["strategy=avalanche", "avalanche.name=LwF"],
               "Avalanche LwF (head only, α 1, T 2)"),
    "av_er_ace": ("si_blurry_er_vit.yaml", ["strategy=avalanche", "avalanche.name=ER_ACE",
                                            f"avalanche.kwargs={{mem_size: {DIGITS_MEMORY}, batch_size_mem: 16}}"],
                  f"Avalanche ER-ACE (head only, memory {DIGITS_MEMORY})"),
}
# FSCIL (``--table fscil``): every method on the same glyph FSCIL sessions (same seed = same sessions)
FSCIL_COACT = "fscil_coact.yaml"
FSCIL_METHODS: dict[str, tuple[str, list[str], str]] = {
    "simplecil": ("fscil_simplecil.yaml", [], "SimpleCIL (frozen, cosine prototypes)"),
    "coact": (FSCIL_COACT, [], "**CoACT** (cosine head, prototype refresh)"),
    "lora_finetune": (FSCIL_COACT, ["strategy=lora_finetune", "sessions.incremental.epochs=0"],
                      "LoRA-finetune (CE in session 0, prototypes after)"),
    "finetune": (FSCIL_COACT, ["strategy=finetune"], "Finetune (whole ViT + linear head, CE every session)"),
    "coact_no_contrastive": (FSCIL_COACT, ["coact.use_contrastive=false"], "CoACT − contrastive loss"),
    "coact_no_controlled_ft": (FSCIL_COACT, ["coact.controlled_ft=false"], "CoACT − controlled fine-tuning"),
    "coact_no_inc_tuning": (FSCIL_COACT, ["coact.incremental_tuning=false", "sessions.incremental.epochs=0"],
                            "CoACT − incremental tuning"),
    "coact_release_head": (FSCIL_COACT, ["coact.classifier=dot", "coact.prototype_refresh=false"],
                           "CoACT, release head (dot product, no refresh)"),
}
FSCIL_METRICS = ("a_avg", "a_last", "pd", "base", "novel", "hm")
FSCIL_NAMES = {"a_avg": "A_avg", "a_last": "A_last", "pd": "PD", "base": "base (last)",
               "novel": "novel (last)", "hm": "HM (last)"}
FSCIL_PAIRS = [(m, "simplecil") for m in FSCIL_METHODS if m != "simplecil"]
# CoACT against its own ablations and LoRA-finetune, on the headline metrics only
FSCIL_PAIRS_COACT = [("coact", "lora_finetune")] + [(m, "coact") for m in FSCIL_METHODS if m.startswith("coact_")]


def fscil_value(run: dict, metric: str) -> float:
    """One FSCIL metric of a results.json, in % (base / novel / hm: the last session's)."""
    if metric in ("base", "novel", "hm"):
        return float(run[f"{metric}_acc" if metric != "hm" else "hm"][-1])
    return float(run[metric])


# headline only: DualPrompt without CutMix (the release trains DualPrompt with it and MVP without;
# this row separates that difference from the methods')
HEADLINE_METHODS = {
    "dualprompt_nocutmix": ("si_blurry_dualprompt.yaml", ["augment.cutmix_prob=0"], "DualPrompt (no CutMix)"),
    "finetune_nocutmix": ("si_blurry_finetune.yaml", ["augment.cutmix_prob=0"], "Finetune (head only, no CutMix)"),
}


def _methods(table: str) -> dict[str, tuple[str, list[str], str]]:
    if table == "fscil":
        return FSCIL_METHODS
    if table == "digits":
        return {**METHODS, **AVALANCHE_METHODS}
    out: dict[str, tuple[str, list[str], str]] = {}
    for name, spec in METHODS.items():  # the headline's extra row right after DualPrompt's
        out[name] = spec
        if name == "dualprompt":
            out.update(HEADLINE_METHODS)
    return out


# (method, reference): the difference method − reference is taken seed by seed
PAIRS = [("mvp", "finetune"), ("mvp", "l2p"), ("mvp", "dualprompt"), ("mvp", "dualprompt_nocutmix"),
         ("dualprompt_nocutmix", "dualprompt"), ("finetune_nocutmix", "finetune"),
         ("dualprompt_nocutmix", "finetune_nocutmix"), ("mvp", "finetune_nocutmix"), ("mvp_r", "er"),
         ("av_er_ace", "er"),
         ("av_ewc", "finetune"), ("av_lwf", "finetune"),
         ("mvp_no_mask", "mvp"), ("mvp_no_cvpt", "mvp"), ("mvp_no_afs", "mvp"), ("mvp_no_gsf", "mvp")]


def _memory(raw: dict) -> int | None:
    section = raw.get(raw.get("strategy", ""), {}) or {}
    return section.get("memory_size") or None


def method_config(table: str, method: str, seed: int) -> dict:
    """The method's experiment YAML (plus overrides); for ``digits`` on the digits stream."""
    from clplat.config import apply_overrides

    file, overrides, _ = _methods(table)[method]
    raw = apply_overrides(yaml.safe_load((EXP / file).read_text()), list(overrides))
    if table == "digits":
        digits = yaml.safe_load(DIGITS_BASE.read_text())
        for key in ("data", "scenario", "online"):
            raw[key] = digits[key]
        raw["augment"] = {**raw.get("augment", {}), "random_crop_pad": digits["augment"]["random_crop_pad"]}
        if _memory(raw):
            raw[raw["strategy"]]["memory_size"] = DIGITS_MEMORY
    raw.update(name=f"{method}_s{seed}", seed=seed, threads=1, checkpoint_every=0)
    raw["logging"] = {"wandb": "disabled", "progress": False, "runs_dir": str(RUNS / table)}
    return raw


def run_one(table: str, method: str, seed: int) -> dict:
    """Run (or reuse) one experiment and its probe; returns results.json plus ``probe``."""
    run_dir = RUNS / table / f"{method}_s{seed}"
    done = run_dir / "results.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    if not done.is_file():
        if run_dir.is_dir():  # a killed run's leftovers: clplat.run would pick a suffixed name
            shutil.rmtree(run_dir)
        cfg_path = RUNS / table / "configs" / f"{method}_s{seed}.yaml"
        cfg_path.parent.mkdir(parents=True, exist_ok=True)
        cfg_path.write_text(yaml.safe_dump(method_config(table, method, seed), sort_keys=False))
        t = time.time()
        proc = subprocess.run([sys.executable, "-m", "clplat.run", str(cfg_path)], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0 or not done.is_file():
            raise RuntimeError(f"{table} {method} seed {seed} failed:\n{proc.stderr[-2000:]}")
        print(f"{table} {method:>12} seed {seed}: {time.time() - t:.0f}s", flush=True)
    if table == "fscil":  # sessions regime: no head-vs-features probe
        return {**json.loads(done.read_text()), "config": yaml.safe_load((run_dir / "config.yaml").read_text())}
    probe_file = run_dir / "probe.json"
    if not probe_file.is_file():
        proc = subprocess.run([sys.executable, __file__, "--probe", str(run_dir)], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"probe of {run_dir} failed:\n{proc.stderr[-2000:]}")
    results = json.loads(done.read_text())
    results["probe"] = json.loads(probe_file.read_text())
    results["config"] = yaml.safe_load((run_dir / "config.yaml").read_text())
    return results


# --- the head-vs-features probe ----------------------------------------------------------------
def probe(run_dir: Path, per_class: int = 50) -> dict:
    """Final model of a finished run: accuracy of its head (as evaluated, exposed classes) and of a
    nearest-class-mean classifier (cosine) on the features the head reads, class means from the
    first ``per_class`` training samples of each exposed class (un-augmented). A gap means the
    features still separate the classes the head has forgotten."""
    import torch

    from clplat.config import build_config
    from clplat.engine.checkpoint import load_checkpoint
    from clplat.engine.evaluation import evaluate, fetch
    from clplat.engine.experiment import CHECKPOINT, Experiment

    torch.set_num_threads(1)
    cfg = build_config(yaml.safe_load((run_dir / "config.yaml").read_text()))
    exp = Experiment(cfg)
    exp.load_state_dict(load_checkpoint(run_dir / CHECKPOINT))
    strategy, ctx = exp.strategy.eval(), exp.module.context()
    ctx.training = False
    head = evaluate(strategy, exp.data.test, exp.data.test_targets, ctx, num_classes=exp.data.num_classes,
                    batch_size=256, device=torch.device("cpu"), samples_seen=0, task_id=0, kind="task_end")
    exposed = np.asarray(ctx.exposed_classes)

    @torch.no_grad()
    def feats(split, idx: np.ndarray) -> torch.Tensor:
        out = [strategy.head_features(fetch(split, idx[s:s + 256].tolist())[0], ctx) for s in range(0, len(idx), 256)]
        return torch.nn.functional.normalize(torch.cat(out), dim=1)

    tr_t, te_t = np.asarray(exp.data.train_targets), np.asarray(exp.data.test_targets)
    tr_idx = np.concatenate([np.flatnonzero(tr_t == c)[:per_class] for c in exposed])
    te_idx = np.flatnonzero(np.isin(te_t, exposed))
    f_tr, f_te = feats(exp.data.train, tr_idx), feats(exp.data.test, te_idx)
    means = torch.stack([f_tr[torch.from_numpy(tr_t[tr_idx] == c)].mean(0) for c in exposed])
    pred = exposed[(f_te @ torch.nn.functional.normalize(means, dim=1).t()).argmax(1).numpy()]
    return {"head_acc": head.accuracy, "ncm_acc": float((pred == te_t[te_idx]).mean()),
            "n_classes": int(len(exposed)), "per_class": per_class}


# --- tables ------------------------------------------------------------------------------------
def _pct(runs: list[dict], key) -> np.ndarray:
    return 100 * np.array([key(r) for r in runs], dtype=float)


def _ms(v: np.ndarray) -> str:
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f}" if len(v) > 1 else f"{v.mean():.2f} (1 seed)"


def _title(method: str, runs: list[dict]) -> str:
    mem = _memory(runs[0]["config"]) if runs else None
    return {**METHODS, **AVALANCHE_METHODS, **HEADLINE_METHODS}[method][2].format(mem=mem)


def summary_table(results: dict[str, list[dict]]) -> str:
    lines = ["| method | " + " | ".join(f"{m} (%)" for m in METRICS) + " | head acc. (%) | class-mean acc. (%) |",
             "|---|" + "---:|" * (len(METRICS) + 2)]
    for method, runs in results.items():
        cells = [_ms(_pct(runs, lambda r, m=m: r["metrics"][m] if r["metrics"][m] is not None else math.nan))
                 for m in METRICS]
        cells += [_ms(_pct(runs, lambda r: r["probe"]["head_acc"])), _ms(_pct(runs, lambda r: r["probe"]["ncm_acc"]))]
        lines.append(f"| {_title(method, runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_diff(a: dict[int, float], b: dict[int, float]) -> tuple[np.ndarray, str]:
    """Differences a − b on the seeds both have, and the 95 % t-interval of their mean."""
    from scipy import stats

    d = np.array([a[s] - b[s] for s in sorted(set(a) & set(b))], dtype=float)
    if len(d) > 1:
        half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
        return d, f"[{d.mean() - half:+.2f}, {d.mean() + half:+.2f}]"
    return d, "n/a (1 seed)" if len(d) == 1 else "n/a (no seed)"


def paired_table(results: dict[str, list[dict]], pairs=None, metrics=("A_auc", "A_last"), value=None) -> str:
    """Per-seed differences; 95 % t-interval of their mean, and on how many seeds it was > 0.
    ``value(run, metric)`` in % (default: the online ``metrics`` x 100)."""
    value = value or (lambda r, m: 100 * r["metrics"][m])
    lines = ["| difference (same seeds) | metric | mean ± sd (points) | 95 % CI | > 0 on |",
             "|---|---|---:|---:|---:|"]
    for a, b in PAIRS if pairs is None else pairs:
        if not results.get(a) or not results.get(b):
            continue
        for m in metrics:
            d, ci = paired_diff({r["seed"]: value(r, m) for r in results[a]},
                                {r["seed"]: value(r, m) for r in results[b]})
            if len(d) == 0:
                continue
            lines.append(f"| {a} − {b} | {FSCIL_NAMES.get(m, m)} | {_ms(d)} | {ci} | {int((d > 0).sum())}/{len(d)} |")
    if len(lines) == 2:
        lines.append("| (no pair with both methods run) | | | | |")
    return "\n".join(lines)


def stream_table(runs: list[dict]) -> str:
    """Samples and optimizer updates per task, per seed (the stream depends only on the seed)."""
    lines = ["| seed | samples per task | updates per task | updates | anytime points |",
             "|---:|---|---|---:|---:|"]
    for r in sorted(runs, key=lambda r: r["seed"]):
        online = r["config"]["online"]
        ends = [0, *r["task_ends"]]
        sizes = [b - a for a, b in zip(ends, ends[1:])]
        ups = [math.ceil(n / online["stream_batch"]) * online["online_iter"] for n in sizes]
        points = sum(e["kind"] == "anytime" for e in r["evals"])
        lines.append(f"| {r['seed']} | {' / '.join(map(str, sizes))} | {' / '.join(map(str, ups))} | "
                     f"{sum(ups)} | {points} |")
    return "\n".join(lines)


def per_seed_table(results: dict[str, list[dict]]) -> str:
    lines = ["| method | seed | A_auc | A_last | F_last | head acc. | class-mean acc. | wall (s) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for method, runs in results.items():
        for r in sorted(runs, key=lambda r: r["seed"]):
            m, p = r["metrics"], r["probe"]
            f_last = f"{100 * m['F_last']:.2f}" if m["F_last"] is not None else "–"
            lines.append(f"| {method} | {r['seed']} | {100 * m['A_auc']:.2f} | {100 * m['A_last']:.2f} | {f_last} | "
                         f"{100 * p['head_acc']:.2f} | {100 * p['ncm_acc']:.2f} | {r.get('wall_time_s', 0):.0f} |")
    return "\n".join(lines)


def render(table: str, results: dict[str, list[dict]], seeds: list[int]) -> str:
    any_runs = next(iter(results.values()))
    return "\n\n".join([
        f"Seeds {', '.join(map(str, seeds))}; mean ± sample std (ddof 1), in %. *head acc.* is the final "
        "head's accuracy on the test set (= A_last); *class-mean acc.* classifies the same test images "
        "by the nearest class mean (cosine) of the features the head reads.",
        summary_table(results),
        "Paired differences (method − reference on the same seed, i.e. the same stream), in points:",
        paired_table(results),
        "The stream (identical for every method at a given seed):",
        stream_table(any_runs),
        "Per seed:",
        per_seed_table(results),
    ])


# --- FSCIL tables (sessions regime) -----------------------------------------------------------
def fscil_summary(results: dict[str, list[dict]], seeds: list[int]) -> str:
    lines = ["| method | seeds | " + " | ".join(f"{FSCIL_NAMES[m]} (%)" for m in FSCIL_METRICS) + " |",
             "|---|---:|" + "---:|" * len(FSCIL_METRICS)]
    for method, runs in results.items():
        if not runs:
            continue
        n = f"{len(runs)}" if len(runs) == len(seeds) else f"**{len(runs)} of {len(seeds)}**"
        cells = [_ms(np.array([fscil_value(r, m) for r in runs])) for m in FSCIL_METRICS]
        lines.append(f"| {FSCIL_METHODS[method][2]} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fscil_sessions_table(results: dict[str, list[dict]]) -> str:
    """Mean accuracy on all seen classes after each session, over the seeds each method has."""
    n = max(len(r["session_acc"]) for runs in results.values() for r in runs)
    lines = ["| method | " + " | ".join(f"s{k}" for k in range(n)) + " |", "|---|" + "---:|" * n]
    for method, runs in results.items():
        if runs:
            acc = np.mean([r["session_acc"] for r in runs], axis=0)
            lines.append(f"| {method} | " + " | ".join(f"{a:.2f}" for a in acc) + " |")
    return "\n".join(lines)


def fscil_per_seed(results: dict[str, list[dict]]) -> str:
    lines = ["| method | seed | " + " | ".join(FSCIL_NAMES[m] for m in FSCIL_METRICS)
             + " | accuracy per session | wall (s), loaded machine |",
             "|---|---:|" + "---:|" * len(FSCIL_METRICS) + "---|---:|"]
    for method, runs in results.items():
        for r in sorted(runs, key=lambda r: r["seed"]):
            cells = " | ".join(f"{fscil_value(r, m):.2f}" for m in FSCIL_METRICS)
            per = " / ".join(f"{a:.1f}" for a in r["session_acc"])
            lines.append(f"| {method} | {r['seed']} | {cells} | {per} | {r.get('wall_time_s', 0):.0f} |")
    return "\n".join(lines)


def fscil_same_sessions(results: dict[str, list[dict]]) -> str:
    """Checks that every method at a seed saw the same session classes and sample counts."""
    by_seed: dict[int, set] = {}
    for runs in results.values():
        for r in runs:
            by_seed.setdefault(r["seed"], set()).add(json.dumps([r["session_classes"], r["session_samples"]]))
    bad = sorted(s for s, v in by_seed.items() if len(v) > 1)
    if bad:
        return f"**Warning: the session classes or sizes differ between methods on seeds {bad}.**"
    return ("Every method saw the same session classes and sample counts at each seed "
            f"(checked from results.json on seeds {sorted(by_seed)}).")


def render_fscil(results: dict[str, list[dict]], seeds: list[int], missing: list[str]) -> str:
    short = [f"{m} ({len(r)} of {len(seeds)} seeds)" for m, r in results.items() if len(r) < len(seeds)]
    status = ("All cells have every seed." if not short else
              "**Incomplete: fewer seeds than asked for** " + "; ".join(short) + ". Not run or not finished: "
              + (", ".join(missing) if missing else "none") + ".")
    return "\n\n".join([
        f"Seeds {', '.join(map(str, seeds))}; mean ± sample std (ddof 1), in %. A_avg: mean over the 9 "
        "sessions of the accuracy on all seen classes; PD = session 0 − last; base / novel / HM: the last "
        "session's accuracy on the 60 base classes, on the 40 novel classes, and their harmonic mean. "
        + status,
        fscil_summary(results, seeds),
        "Paired differences (method − reference on the same seed, i.e. the same sessions), in points:",
        paired_table(results, FSCIL_PAIRS, FSCIL_METRICS, fscil_value),
        "CoACT against LoRA-finetune and each ablation against CoACT (same seeds), in points:",
        paired_table(results, FSCIL_PAIRS_COACT, ("a_avg", "a_last", "hm"), fscil_value),
        "Mean accuracy on all seen classes after each session (%):",
        fscil_sessions_table(results),
        fscil_same_sessions(results),
        "Per seed (wall times from a loaded shared 2-core machine: not valid as timings):",
        fscil_per_seed(results),
    ])


def write_block(table: str, text: str) -> None:
    begin, end = f"<!-- results:{table} (benchmarks/run_results.py) -->", f"<!-- /results:{table} -->"
    body = DOC.read_text() if DOC.exists() else ""
    block = f"{begin}\n{text}\n{end}"
    if begin in body and end in body:
        a, _, rest = body.partition(begin)
        _, _, b = rest.partition(end)
        body = a + block + b
    else:
        body = body.rstrip("\n") + "\n\n" + block + "\n"
    from clplat.io import atomic_write_text

    atomic_write_text(DOC, body)


def _finished(table: str, method: str, seed: int) -> dict | None:
    """A finished run's results (``--no-run``), or None."""
    run_dir = RUNS / table / f"{method}_s{seed}"
    if not (run_dir / "results.json").is_file() or (table != "fscil" and not (run_dir / "probe.json").is_file()):
        return None
    return run_one(table, method, seed)


def _attempt(table: str, method: str, seed: int, run: bool) -> dict | None:
    """Run (or reuse) one job; a failure is reported and leaves its cell short, not the table."""
    try:
        return run_one(table, method, seed) if run else _finished(table, method, seed)
    except RuntimeError as exc:
        print(f"FAILED: {exc}", file=sys.stderr, flush=True)
        return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--table", choices=["headline", "digits", "fscil"], default="headline")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--only", nargs="+", choices=sorted(set(METHODS) | set(AVALANCHE_METHODS) | set(FSCIL_METHODS)
                                                     | set(HEADLINE_METHODS)),
                   help="methods, in this order (default: all of the table's)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--seed-major", action="store_true", help="run seed 1 of every method first, then seed 2, ...")
    p.add_argument("--no-run", action="store_true", help="tables from the finished runs only; start nothing")
    p.add_argument("--print-only", action="store_true", help="print the tables, do not write docs")
    p.add_argument("--probe", metavar="RUN_DIR", help=argparse.SUPPRESS)  # internal: one probe
    args = p.parse_args()
    if args.probe:
        run_dir = Path(args.probe)
        out = probe(run_dir)
        from clplat.io import atomic_write_text

        atomic_write_text(run_dir / "probe.json", json.dumps(out, indent=1))
        return
    methods = args.only or list(_methods(args.table))
    unknown = [m for m in methods if m not in _methods(args.table)]
    if unknown:
        p.error(f"not a method of --table {args.table}: {', '.join(unknown)}")
    jobs = ([(m, s) for s in args.seeds for m in methods] if args.seed_major
            else [(m, s) for m in methods for s in args.seeds])
    with ThreadPoolExecutor(args.jobs) as pool:
        done = list(pool.map(lambda ms: _attempt(args.table, *ms, run=not args.no_run), jobs))
    results: dict[str, list[dict]] = {m: [] for m in methods}
    missing = []
    for (m, s), r in zip(jobs, done):
        if r is None:
            missing.append(f"{m} seed {s}")
        else:
            results[m].append(r)
    if not any(results.values()):
        sys.exit("no finished run to tabulate")
    if args.table == "fscil":
        text = render_fscil(results, args.seeds, missing)
    else:
        if missing:
            print("missing: " + ", ".join(missing), file=sys.stderr)
        text = render(args.table, {m: r for m, r in results.items() if r}, args.seeds)
    print(text)
    if not args.print_only:
        write_block(args.table, text)


if __name__ == "__main__":
    main()
