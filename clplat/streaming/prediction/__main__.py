"""``python -m clplat.streaming.prediction train CONFIG [key=value ...]``."""

import sys

from clplat.errors import main_guard
from clplat.streaming.prediction.run import main

sys.exit(main_guard(main)(sys.argv[1:]))
