"""The report from a stored study: python study/analyze.py --space taskE  (the same as `tlstudy analyze`)

A thin wrapper kept for checkouts and old commands: the code lives in the package (tlstudy.cli).
"""

import sys

from tlstudy import cli

if __name__ == "__main__":
    sys.exit(cli.main(["analyze", *sys.argv[1:]]))
