"""Browse a study in optuna-dashboard: python study/dashboard.py --space taskE  (the same as `tlstudy dashboard`)

A thin wrapper kept for checkouts and old commands: the code lives in the package (tlstudy.cli).
"""

import sys

from tlstudy import cli

if __name__ == "__main__":
    sys.exit(cli.main(["dashboard", *sys.argv[1:]]))
