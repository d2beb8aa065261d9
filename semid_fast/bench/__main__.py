"""``python -m semid_fast.bench [flags]``: the same as ``semid-fast bench [flags]``."""

import sys

from . import main

args = sys.argv[1:]
raise SystemExit(main(args if args[:1] == ["bench"] else ["bench", *args]))
