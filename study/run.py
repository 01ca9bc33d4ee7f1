"""Run (or continue) a study: python study/run.py --space taskE  (the same as `tlstudy run`)

A thin wrapper kept for checkouts and old commands: the code lives in the package (tlstudy.cli).
"""

import sys

from tlstudy import cli

if __name__ == "__main__":
    sys.exit(cli.main(["run", *sys.argv[1:]]))
