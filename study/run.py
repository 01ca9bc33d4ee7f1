"""Run (or continue) a study: python study/run.py --space taskE

See `python study/run.py --help` and `--list-spaces`. Rerunning the same command
continues the study in its storage without repeating finished trials.
"""
import os
import sys

# Keep a local Ray on loopback: without this, Ray swaps 127.0.0.1 for the host's
# network address. It must be set before ray is imported, and not when joining a cluster.
if "--address" not in sys.argv and not os.environ.get("RAY_ADDRESS"):
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from tlstudy.errors import run_cli  # noqa: E402
from tlstudy.runner import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_cli(main))
