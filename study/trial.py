"""Run ONE trial of the study, without Ray: python study/trial.py --epochs 3  (the same as `tlstudy trial`)

A thin wrapper kept for checkouts and old commands: the code lives in the package (tlstudy.cli).
"""

import sys

from tlstudy import cli

if __name__ == "__main__":
    sys.exit(cli.main(["trial", *sys.argv[1:]]))
