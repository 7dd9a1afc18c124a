"""``python -m clplat.streaming.prediction train CONFIG [key=value ...]`` or ``... demo --model PATH``."""

import sys

from clplat.errors import main_guard

USAGE = ("usage: python -m clplat.streaming.prediction train CONFIG.yaml [key.sub=value ...]\n"
         "       python -m clplat.streaming.prediction demo --model MODEL.safetensors [--out predict.mp4]")

argv = sys.argv[1:]
if argv[:1] == ["train"]:
    from clplat.streaming.prediction.run import main
elif argv[:1] == ["demo"]:
    from clplat.streaming.prediction.demo import main
else:
    print(USAGE, file=sys.stderr)
    sys.exit(2)
sys.exit(main_guard(main)(argv[1:]))
