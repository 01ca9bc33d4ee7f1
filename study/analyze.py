"""Rebuild the report's tables, statistics, claims and plots from a stored study.

    python study/analyze.py --space taskE

Reads the Optuna study (no Ray needed) and writes results/<space>/REPORT.md with
cells.csv, architectures.csv, claims.csv, report_vs_study.csv, importances.csv,
tableN.csv and three PNG plots. study/run.py runs it at its end.
"""
import sys

import optuna

from tlstudy import analysis, spaces
from tlstudy.errors import ArgumentParser, UserError, run_cli
from tlstudy.storage import default_url, open_storage, storage_exists


def main(argv=None):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    p = ArgumentParser(prog="study/analyze.py", description=__doc__.splitlines()[0])
    p.add_argument("--space", required=True, help="a name in search_spaces/ (taskA..taskE) or a space file")
    p.add_argument("--results", default="results", help="the study's results folder; writes RESULTS/<space>/")
    p.add_argument("--storage", help="the study's storage (default sqlite:///RESULTS/optuna.db)")
    p.add_argument("--study-name", help="default: the space's name")
    args = p.parse_args(argv)
    space = spaces.load(args.space)
    url = args.storage or default_url(args.results)
    if not storage_exists(url):
        raise UserError(f"no study storage at {url}: run python study/run.py --space {space.name} first")
    storage = open_storage(url)
    names = space.compare or (args.study_name or space.name,)
    stored = set(optuna.get_all_study_names(storage))
    missing = [n for n in names if n not in stored]
    if missing:
        raise UserError(f"no study {', '.join(map(repr, missing))} in {url} (it has: {', '.join(sorted(stored)) or 'none'}); "
                        f"run python study/run.py --space {space.name} first")
    studies = [optuna.load_study(study_name=n, storage=storage) for n in names]
    out_dir = f"{args.results}/{args.study_name or space.name}"
    paths = analysis.analyze(studies, space, out_dir)
    print(paths.pop("table"))
    print(f"report: {paths['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
