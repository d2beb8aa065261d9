"""Runs the diger end-to-end pipeline (e2e_pipelines/diger.py); `--help` for flags.

The same as `semid-fast bench --e2e --systems diger` run inside this checkout.
"""

import sys

from e2e_pipelines import common, diger  # this script's folder is first on sys.path

if __name__ == "__main__":
    sys.exit(common.script_main(diger, sys.argv[1:]))
