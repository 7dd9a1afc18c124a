"""``python -m clplat.streaming.evflow train CONFIG.yaml [key.sub=value ...]``."""

import sys

from clplat.errors import main_guard

USAGE = "usage: python -m clplat.streaming.evflow train CONFIG.yaml [key.sub=value ...]"

argv = sys.argv[1:]
if argv[:1] != ["train"]:
    print(USAGE, file=sys.stderr)
    sys.exit(2)
from clplat.streaming.evflow.run import main  # noqa: E402

sys.exit(main_guard(main)(argv[1:]))
