"""Run a study on a Ray cluster: python study/submit.py --cluster-address URL --space taskE (as `tlstudy submit`)

A thin wrapper kept for checkouts and old commands: the code lives in the package (tlstudy.cli).
"""

import sys

from tlstudy import cli

if __name__ == "__main__":
    sys.exit(cli.main(["submit", *sys.argv[1:]]))
