"""Runs the rpg end-to-end pipeline (semid_fast.bench.e2e.rpg); `--help` for flags.

The same as `semid-fast bench --e2e --systems rpg`.
"""

import sys

from semid_fast.bench.e2e import common, rpg

if __name__ == "__main__":
    sys.exit(common.script_main(rpg, sys.argv[1:]))
