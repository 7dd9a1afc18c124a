"""Event-camera benchmark (issue 12): (a) reading throughput per format against the format
library's own reader on the same file, and the memory of ``iter_windows``; (b) representation build
time per 10 ms bin at 640x480 and 1 M events/s; (c) step latency of the flow nets (see part_c).

    python benchmarks/events.py                       # all parts, 5 M events, 640x480
    python benchmarks/events.py --parts a --events 20000000
    python benchmarks/events.py --smoke               # tiny, seconds: checks the script runs
Prints one JSON object per measurement. Run on a quiet machine; threads pinned by --threads.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from clplat.events import Events, iter_windows, read_events, write_dsec_h5
from clplat.events.plain import write_text
from clplat.events.represent import bilinear_counts, bin_stream, counts, voxel_grid

W, H = 640, 480


def synthetic(n: int, rate_hz: float = 1e6, seed: int = 0) -> Events:
    """``n`` events at ``rate_hz`` (Poisson arrivals) uniformly over a 640x480 sensor."""
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1e6 / rate_hz, n)).astype(np.int64) + 1_000_000
    return Events(rng.integers(0, W, n), rng.integers(0, H, n), t, rng.integers(0, 2, n), W, H)


def best_of(fn: Callable[[], object], repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


# ----------------------------------------------------------------------------- part (a): reading
def _structured(ev: Events) -> np.ndarray:
    arr = np.zeros(len(ev), dtype=[("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "u1")])
    arr["t"], arr["x"], arr["y"], arr["p"] = ev.t, ev.x, ev.y, ev.p
    return arr


def write_all(ev: Events, folder: Path, text: bool) -> dict[str, Path]:
    """The same events in every format, each written by its own library where one writes it."""
    import event_stream
    from expelliarmus import Wizard

    files = {"dsec": folder / "ev.h5", "evt2": folder / "ev2.raw", "evt3": folder / "ev3.raw",
             "dat": folder / "ev.dat", "es": folder / "ev.es", "npz": folder / "ev.npz"}
    write_dsec_h5(files["dsec"], ev)
    arr = _structured(ev)
    for fmt in ("evt2", "evt3", "dat"):
        Wizard(encoding=fmt).save(files[fmt], arr)
    es = np.zeros(len(ev), dtype=event_stream.dvs_dtype)
    es["t"], es["x"], es["y"], es["on"] = ev.t, ev.x, ev.y, ev.p.astype(bool)
    with event_stream.Encoder(str(files["es"]), "dvs", W, H) as enc:
        enc.write(es)
    np.savez(files["npz"], x=ev.x, y=ev.y, t=ev.t, p=ev.p, width=W, height=H)
    try:
        import dv_processing as dv

        files["aedat4"] = folder / "ev.aedat4"
        writer = dv.io.MonoCameraWriter(str(files["aedat4"]), dv.io.MonoCameraWriter.EventOnlyConfig("bench", (W, H)))
        store = dv.EventStore()
        for t, x, y, p in zip(ev.t.tolist(), ev.x.tolist(), ev.y.tolist(), ev.p.tolist()):
            store.push_back(t, x, y, bool(p))
        writer.writeEvents(store)
        del writer
    except ImportError:
        pass
    if text:
        files["text"] = folder / "ev.txt"
        write_text(files["text"], ev)
    return files


def library_reader(fmt: str, path: Path) -> Callable[[], object]:
    """The format library's own whole-file read (what a user would call without clplat)."""
    if fmt == "dsec":
        import h5py
        import hdf5plugin  # noqa: F401

        def read_h5():
            with h5py.File(path, "r") as f:
                g = f["events"]
                return g["x"][:], g["y"][:], g["t"][:].astype(np.int64) + int(f["t_offset"][()]), g["p"][:]

        return read_h5
    if fmt in ("evt2", "evt3", "dat"):
        from expelliarmus import Wizard

        return lambda: Wizard(encoding=fmt, fpath=path).read()
    if fmt == "aedat4":
        import aedat

        return lambda: np.concatenate([p["events"] for p in aedat.Decoder(str(path)) if "events" in p])
    if fmt == "es":
        import event_stream

        return lambda: np.concatenate(list(event_stream.Decoder(str(path))))
    if fmt == "npz":
        return lambda: dict(np.load(path))
    if fmt == "text":
        return lambda: np.loadtxt(path, skiprows=1)
    raise ValueError(fmt)


def window_peak_bytes(path: Path, window_us: int) -> tuple[int, int]:
    """(tracemalloc peak while streaming 10 ms windows, largest window's bytes)."""
    tracemalloc.start()
    largest = 0
    for win in iter_windows(path, window_us):
        largest = max(largest, len(win) * 13)  # x, y u16 + t i64 + p u8
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak, largest


def part_a(args: argparse.Namespace) -> None:
    ev = synthetic(args.events)
    with tempfile.TemporaryDirectory() as tmp:
        files = write_all(ev, Path(tmp), text=args.events <= 2_000_000)
        for fmt, path in files.items():
            ours = best_of(lambda p=path, f=fmt: read_events(p, format=f), args.repeats)
            lib = best_of(library_reader(fmt, path), args.repeats)
            peak, largest = window_peak_bytes(path, 10_000)
            print(json.dumps({"part": "a", "format": fmt, "events": len(ev), "file_mb": path.stat().st_size / 2**20,
                              "ours_mev_s": len(ev) / ours / 1e6, "library_mev_s": len(ev) / lib / 1e6,
                              "ours_over_library_time": ours / lib, "windows_peak_mb": peak / 2**20,
                              "largest_window_mb": largest / 2**20, "whole_file_mb": len(ev) * 13 / 2**20}))


# ------------------------------------------------------------------- part (b): representations
def part_b(args: argparse.Namespace) -> None:
    rate = 1e6
    ev = synthetic(int(rate * 0.01), rate)  # one 10 ms bin at 1 M ev/s
    rng = np.random.default_rng(1)
    coords = (rng.uniform(0, W - 1, len(ev)).astype(np.float32), rng.uniform(0, H - 1, len(ev)).astype(np.float32))
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        backends = ["reference"] + (["triton"] if dev == "cuda" else [])
        for backend in backends:
            cases = {
                "counts": lambda b=backend, d=dev: counts(ev, H, W, device=d, backend=b),
                "bilinear_counts": lambda b=backend, d=dev: bilinear_counts(ev, H, W, coords=coords, device=d,
                                                                            backend=b),
                "voxel_grid_5": lambda b=backend, d=dev: voxel_grid(ev, 5, H, W, device=d, backend=b),
                "bin_stream_1bin": lambda b=backend, d=dev: bin_stream(ev, 10_000, H, W, device=d, backend=b),
            }
            for name, fn in cases.items():
                def run(fn=fn, dev=dev):
                    fn()
                    if dev == "cuda":
                        torch.cuda.synchronize()

                sec = best_of(run, args.repeats)
                print(json.dumps({"part": "b", "representation": name, "device": dev, "backend": backend,
                                  "events_per_bin": len(ev), "ms_per_bin": sec * 1e3}))


# ---------------------------------------------------------------- part (c): flow-net step latency
def part_c(args: argparse.Namespace) -> None:
    """Part (c), step latency per 10 ms bin and bins/s of the flow nets at 346x260 and 640x480,
    eager and compiled (``clplat.streaming.compile_step``), against recomputing the whole 100 ms
    window (10 bins) from a fresh state for every output. Written by helper E2 (issue 12 point 5).
    The CPU-sized nets are the shipped configs; ``--paper`` adds the paper's width 64."""
    from clplat.streaming import compile_step
    from clplat.streaming.models.evflow_common import EventFlowConfig, build_evflow

    variants = [("evflow_lstm", 4, 2), ("evflow_snn", 16, 2)]  # the shipped sizes
    if args.paper:
        variants += [("evflow_lstm", 64, 1), ("evflow_snn", 64, 1)]
    sizes = [(260, 346), (480, 640)] if not args.smoke else [(48, 64)]
    steps = 5 if args.smoke else 50
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev, (arch, width, ds), (h, w) in ((d, v, s) for d in devices for v in variants for s in sizes):
        torch.manual_seed(0)
        net = build_evflow(EventFlowConfig.model_validate({"arch": arch, "width": width, "downsample": ds}))
        net = net.eval().to(dev)
        bins = (torch.rand(steps + 10, 1, 2, h, w, device=dev) < 0.05).float()  # ~5 % of pixels fire per bin
        sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
        modes = {"eager": net.step}
        if not args.no_compile:
            from clplat.streaming.apps.event_flow import COMPILE_OPTIONS_CPU  # no freezing: see there

            modes["compiled"] = compile_step(net, options=COMPILE_OPTIONS_CPU if dev == "cpu" else None)
        row = {"part": "c", "arch": arch, "width": width, "downsample": ds, "size": f"{w}x{h}", "device": dev,
               "parameters": sum(p.numel() for p in net.parameters())}
        with torch.inference_mode():
            for mode, step in modes.items():
                state = None
                for k in range(10):  # warm-up (compiles the steady phase)
                    _, state = step(bins[k], state)
                sync()
                times = []
                for k in range(10, steps + 10):
                    t0 = time.perf_counter()
                    _, state = step(bins[k], state)
                    sync()
                    times.append(time.perf_counter() - t0)
                ms = 1e3 * float(np.median(times))
                row.update({f"{mode}_ms_per_bin": round(ms, 3), f"{mode}_bins_per_s": round(1e3 / ms, 1)})
            window = bins[:10, 0].movedim(0, 1)[None]  # (1, 2, 10, H, W): the last 100 ms

            def recompute(net=net, window=window, sync=sync):
                net.forward_sequence(window)
                sync()

            ms = 1e3 * best_of(recompute, args.repeats)
            row.update({"window_recompute_ms_per_bin": round(ms, 3), "window_recompute_bins_per_s": round(1e3 / ms, 1),
                        "eager_speedup_vs_window": round(ms / row["eager_ms_per_bin"], 2)})
        print(json.dumps(row))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", default=["a", "b", "c"], choices=["a", "b", "c"])
    ap.add_argument("--events", type=int, default=5_000_000, help="events in the part (a) files")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: only checks that everything runs")
    ap.add_argument("--paper", action="store_true", help="part (c): also the paper-sized flow nets (width 64)")
    ap.add_argument("--no-compile", action="store_true", help="part (c): eager steps only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.smoke:
        args.events, args.repeats = 20_000, 1
    for part in args.parts:
        {"a": part_a, "b": part_b, "c": part_c}[part](args)


if __name__ == "__main__":
    main()
