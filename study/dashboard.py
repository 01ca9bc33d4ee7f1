"""Browse a study in optuna-dashboard: python study/dashboard.py --space taskE

Serves the study's storage on 127.0.0.1 and prints the address to open. The same as
optuna-dashboard's own command, for those who prefer it:
    optuna-dashboard sqlite:///results/optuna.db --artifact-dir results/artifacts --host 127.0.0.1 --port 8080
"""
import argparse
import sys
from pathlib import Path

import optuna
import optuna_dashboard
from optuna.artifacts import FileSystemArtifactStore

from tlstudy.errors import ArgumentParser, UserError, run_cli
from tlstudy.storage import default_url, open_storage


def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", help="the study to point at (default: list every study in the storage)")
    p.add_argument("--study-name", help="default: the space's name")
    p.add_argument("--results", default="results")
    p.add_argument("--storage", help="default sqlite:///RESULTS/optuna.db")
    p.add_argument("--host", default="127.0.0.1", help="keep the default unless you mean to expose the study")
    p.add_argument("--port", type=int, default=8080)
    args = p.parse_args(argv)
    url = args.storage or default_url(args.results)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise UserError(f"no study storage at {url}; run python study/run.py --space NAME first, or pass --storage")
    storage = open_storage(url)
    names = {s.study_name: s._study_id for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    name = args.study_name or (Path(args.space).stem if args.space else None)
    if name and name not in names:
        raise UserError(f"storage {url} holds no study {name!r}; it holds {sorted(names) or 'none'}")
    address = f"http://{args.host}:{args.port}/dashboard/"
    print(f"optuna-dashboard on {url}: open {address + (f'studies/{names[name]}' if name else '')}", flush=True)
    # The learning-curve artifacts that study/run.py uploads live beside the storage.
    artifacts = Path(args.results) / "artifacts"
    store = FileSystemArtifactStore(str(artifacts)) if artifacts.is_dir() else None
    optuna_dashboard.run_server(storage, host=args.host, port=args.port, artifact_store=store)


if __name__ == "__main__":
    sys.exit(run_cli(main))
