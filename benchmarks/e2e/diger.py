"""Runs the diger end-to-end pipeline (semid_fast.bench.e2e.diger); `--help` for flags.

The same as `semid-fast bench --e2e --systems diger`.
"""

import sys

from semid_fast.bench.e2e import common, diger

if __name__ == "__main__":
    sys.exit(common.script_main(diger, sys.argv[1:]))
