"""Runs the rpg end-to-end pipeline (e2e_pipelines/rpg.py); `--help` for flags.

The same as `semid-fast bench --e2e --systems rpg` run inside this checkout.
"""

import sys

from e2e_pipelines import common, rpg  # this script's folder is first on sys.path

if __name__ == "__main__":
    sys.exit(common.script_main(rpg, sys.argv[1:]))
