"""How many of tlstudy's modules one trial of `tlstudy run` passes through on its way to trials.csv.

    python bench/trial_path.py            # a tiny quick taskE study in a temporary folder

Runs the study in this process with tlstudy.analysis.export.write wrapped: when it is about to
write trials.csv, the tlstudy modules loaded so far are the path (the driver imports whatever a
trial's worker imports to run tlstudy.study.runner.trainable; a worker's lazy imports, such as a
frozen trial's feature cache, are not on taskE's path). Package __init__ files are listed apart:
they hold a docstring and __all__ (tlstudy.cli's also re-exports main). Prints the modules,
their lines (ruff-formatted), and JSON.
"""

import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep Ray on loopback

from tlstudy import cli  # noqa: E402
from tlstudy.analysis import export  # noqa: E402

SEEN = {}


def main():
    write = export.write

    def write_and_look(*args, **kwargs):
        SEEN.update({m: sys.modules[m].__file__ for m in sys.modules if m.startswith("tlstudy")})
        return write(*args, **kwargs)

    export.write = write_and_look
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TLSTUDY_CACHE_DIR"] = str(Path(tmp) / "cache")
        args = ["--image-size", "16", "--phantom-sizes", "48,40,40", "--max-train", "48", "--epochs", "2"]
        cli.main(["run", "--space", "taskE", "--results", tmp, "--budget", "1", "--seeds", "1", *args])
    inits = sorted(m for m, f in SEEN.items() if f.endswith("__init__.py"))
    modules = sorted(m for m, f in SEEN.items() if not f.endswith("__init__.py"))
    lines = {m: sum(1 for _ in open(SEEN[m])) for m in modules}
    print(f"\n{len(modules)} modules on the path to trials.csv (and {len(inits)} package __init__ files):")
    for m in modules:
        print(f"  {m:34} {lines[m]:4} lines")
    print("RESULT " + json.dumps({"modules": modules, "inits": inits, "lines": lines}))


if __name__ == "__main__":
    sys.exit(main())
