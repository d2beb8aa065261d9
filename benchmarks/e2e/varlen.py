"""Runs the varlen end-to-end pipeline (semid_fast.bench.e2e.varlen); `--help` for flags.

The same as `semid-fast bench --e2e --systems varlen`.
"""

import sys

from semid_fast.bench.e2e import common, varlen

if __name__ == "__main__":
    sys.exit(common.script_main(varlen, sys.argv[1:]))
