"""Runs the acerec end-to-end pipeline (e2e_pipelines/acerec.py); `--help` for flags.

The same as `semid-fast bench --e2e --systems acerec` run inside this checkout.
"""

import sys

from e2e_pipelines import common, acerec  # this script's folder is first on sys.path

if __name__ == "__main__":
    sys.exit(common.script_main(acerec, sys.argv[1:]))
