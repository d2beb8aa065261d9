"""Runs the acerec end-to-end pipeline (semid_fast.bench.e2e.acerec); `--help` for flags.

The same as `semid-fast bench --e2e --systems acerec`.
"""

import sys

from semid_fast.bench.e2e import common, acerec

if __name__ == "__main__":
    sys.exit(common.script_main(acerec, sys.argv[1:]))
