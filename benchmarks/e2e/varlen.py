"""Runs the varlen end-to-end pipeline (e2e_pipelines/varlen.py); `--help` for flags.

The same as `semid-fast bench --e2e --systems varlen` run inside this checkout.
"""

import sys

from e2e_pipelines import common, varlen  # this script's folder is first on sys.path

if __name__ == "__main__":
    sys.exit(common.script_main(varlen, sys.argv[1:]))
