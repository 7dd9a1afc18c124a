"""``python -m clplat.streaming.prediction train CONFIG [key=value ...]``."""

import sys

from clplat.errors import main_guard
from clplat.streaming.prediction.run import main

argv = sys.argv[1:]
if not argv or argv[0] != "train":
    print("usage: python -m clplat.streaming.prediction train CONFIG.yaml [key.sub=value ...]", file=sys.stderr)
    sys.exit(2)
sys.exit(main_guard(main)(argv[1:]))
