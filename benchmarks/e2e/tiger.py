"""Runs the tiger end-to-end pipeline (e2e_pipelines/tiger.py); `--help` for flags.

The same as `semid-fast bench --e2e --systems tiger` run inside this checkout.
"""

import sys

from e2e_pipelines import common, tiger  # this script's folder is first on sys.path

if __name__ == "__main__":
    sys.exit(common.script_main(tiger, sys.argv[1:]))
