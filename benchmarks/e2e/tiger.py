"""Runs the tiger end-to-end pipeline (semid_fast.bench.e2e.tiger); `--help` for flags.

The same as `semid-fast bench --e2e --systems tiger`.
"""

import sys

from semid_fast.bench.e2e import common, tiger

if __name__ == "__main__":
    sys.exit(common.script_main(tiger, sys.argv[1:]))
