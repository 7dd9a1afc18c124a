"""``python -m clplat.pfnr decode RUN_DIR --session K --out video.mp4``: the reconstruction of
session K from the run's checkpoint (``.npy`` keeps the exact float decode). Prints the SHA-256 of
the float decode, which equals ``results.json["decode_sha256"][K]`` of the run."""

from __future__ import annotations

import argparse
import os
import sys

from clplat.errors import main_guard


@main_guard
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clplat.pfnr", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("decode", help="decode one session's video from a run's checkpoint")
    d.add_argument("run_dir")
    d.add_argument("--session", type=int, required=True)
    d.add_argument("--out", required=True, help=".mp4/.avi/.mkv/.mov, .npy (exact floats) or a folder (PNGs)")
    d.add_argument("--fps", type=float, default=25.0)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    from clplat.pfnr.decode import decode_session, write_decode
    from clplat.pfnr.experiment import digest

    video = decode_session(args.run_dir, args.session)
    path = write_decode(video, args.out, args.fps)
    t, _, h, w = video.shape
    print(f"wrote {path}: session {args.session}, {t} frames {h}x{w}, sha256 {digest(video)}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
