"""optuna-dashboard on a study's storage: `tlstudy dashboard` (and study/dashboard.py).

Serves the storage and the learning-curve artifacts the study uploaded (RESULTS/artifacts/)
on 127.0.0.1 unless told otherwise, and prints the address of the study's page. The
arguments are parsed and checked in tlstudy.cli (a missing file storage is refused there,
before anything could create it).
"""

from pathlib import Path

import optuna
import optuna_dashboard
from optuna.artifacts import FileSystemArtifactStore

from tlstudy.errors import UserError
from tlstudy.study.storage import display_url, open_storage


def serve(url: str, study_name: str | None, results: str, host: str, port: int) -> int:
    """Serve `url` until interrupted, pointing at `study_name` (None: every study in it)."""
    storage = open_storage(url)
    names = optuna.get_all_study_names(storage)
    name = study_name
    if name and name not in names:
        raise UserError(f"storage {display_url(url)} holds no study {name!r}; it holds {sorted(names) or 'none'}")
    address = f"http://{host}:{port}/dashboard/"
    page = f"studies/{storage.get_study_id_from_name(name)}" if name else ""  # optuna-dashboard's page of the study
    print(f"optuna-dashboard on {display_url(url)}: open {address + page}", flush=True)
    artifacts = Path(results) / "artifacts"
    store = FileSystemArtifactStore(str(artifacts)) if artifacts.is_dir() else None
    optuna_dashboard.run_server(storage, host=host, port=port, artifact_store=store)
    return 0
