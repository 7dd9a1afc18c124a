"""``python -m clplat.events simulate VIDEO --out events.h5`` | ``scene --out scene.h5`` | ``info FILE``.

- ``simulate``: a video through the DVS simulator, written in the DSEC layout.
- ``scene``: a synthetic scene (textured planes, exact optical flow), events plus ``/flow``.
- ``info``: format, event count, time span, sensor size of any supported event file.
Bad input ends with one ``error:`` line and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from clplat.errors import UserError, main_guard


def _sim_config(args: argparse.Namespace):
    from clplat.events.simulate import SimConfig

    return SimConfig(threshold_on=args.threshold, threshold_off=args.threshold, threshold_sigma=args.threshold_sigma,
                     refractory_us=args.refractory_us, noise_rate_hz=args.noise_hz)


def _add_sim_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threshold", type=float, default=0.2, help="contrast threshold C (log units), ON and OFF")
    p.add_argument("--threshold-sigma", type=float, default=0.03, help="per-pixel spread of C")
    p.add_argument("--refractory-us", type=int, default=100)
    p.add_argument("--noise-hz", type=float, default=0.0, help="shot-noise events per pixel per second")
    p.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m clplat.events", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("simulate", help="video -> events (DSEC-layout .h5)")
    s.add_argument("video")
    s.add_argument("--out", required=True)
    s.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="resize frames first")
    s.add_argument("--max-frames", type=int)
    _add_sim_args(s)
    c = sub.add_parser("scene", help="synthetic scene with ground-truth flow (DSEC-layout .h5 + /flow)")
    c.add_argument("--out", required=True)
    c.add_argument("--height", type=int, default=260)
    c.add_argument("--width", type=int, default=346)
    c.add_argument("--duration-ms", type=int, default=1000)
    c.add_argument("--objects", type=int, default=4)
    _add_sim_args(c)
    i = sub.add_parser("info", help="summary of an event file")
    i.add_argument("file")
    i.add_argument("--format")
    return ap


@main_guard
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pydantic import ValidationError

    try:
        if args.cmd == "simulate":
            from clplat.events.dsec import write_dsec_h5
            from clplat.events.video import video_to_events

            ev = video_to_events(args.video, _sim_config(args), args.seed, tuple(args.size) if args.size else None,
                                 args.max_frames)
            write_dsec_h5(args.out, ev)
            print(json.dumps({"out": args.out, "events": len(ev), "width": ev.width, "height": ev.height}))
        elif args.cmd == "scene":
            from clplat.events.scenes import SceneConfig, make_scene, write_scene_h5

            cfg = SceneConfig(height=args.height, width=args.width, duration_ms=args.duration_ms,
                              n_objects=args.objects, sim=_sim_config(args))
            scene = make_scene(cfg, args.seed, keep_frames=False)
            write_scene_h5(args.out, scene)
            print(json.dumps({"out": args.out, "events": len(scene.events), "bins": len(scene.flow)}))
        else:
            from clplat.events.readers import file_info

            print(json.dumps(file_info(args.file, args.format)))
    except ValidationError as err:
        first = err.errors()[0]
        raise UserError(f"{'.'.join(str(x) for x in first['loc'])}: {first['msg']}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
