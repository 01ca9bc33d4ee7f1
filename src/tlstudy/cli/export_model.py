"""`tlstudy export-model`: a study's kept model (its best, a trial's or a cell's best) copied to a file.

The models are Optuna artifacts of the study (tlstudy.study.keep); the copy is checked as
`tlstudy predict` would read it (tlstudy.training.modelfile). The flags load without torch or Optuna.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from tlstudy.errors import UserError


def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", help="the study's space (its name is the study's, unless --study-name)")
    p.add_argument("--study-name", help="the study's name in the storage (default: the space's name)")
    p.add_argument("--results", default="results", help="the study's results folder (its artifacts/)")
    p.add_argument("--storage", help="the study's storage (default: sqlite:///RESULTS/optuna.db)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--trial", type=int, help="this trial's model (default: the study's best, by val loss)")
    which.add_argument("--cell", help='the best kept model of this cell, e.g. "out_features=2; train_repeat=1,3,1,1"')
    p.add_argument("--out", help="the file to write (default: model_trialN.safetensors here)")


def run(args: argparse.Namespace) -> int:
    from tlstudy.study import storage

    name = args.study_name or (Path(args.space).stem if args.space else None)
    if not name:
        raise UserError("--space or --study-name is required: the study whose model to export")
    url = args.storage or storage.default_url(args.results)
    if not storage.storage_exists(url):
        raise UserError(f"no study storage at {storage.display_url(url)}: run tlstudy run --space {name} first")
    if args.out and not Path(args.out).resolve().parent.is_dir():
        raise UserError(f"cannot write {args.out}: no folder {Path(args.out).parent}")
    import optuna
    from optuna.artifacts import FileSystemArtifactStore, download_artifact

    from tlstudy.names import CELL
    from tlstudy.spaces import Cell
    from tlstudy.study import keep
    from tlstudy.training import modelfile

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=name, storage=storage.open_storage(url))
    except KeyError:
        raise UserError(f"no study {name!r} in {storage.display_url(url)}") from None
    kept = keep.links(study)
    if not kept:
        raise UserError(f"study {name!r} kept no models (tlstudy run --keep-models best|cells|all keeps them)")
    trials = study.get_trials(deepcopy=False)
    if args.trial is not None:
        number, what = args.trial, f"trial {args.trial}"
    elif args.cell:
        label = Cell.parse(args.cell).label()
        best = keep.best_of([t for t in trials if t.user_attrs.get(CELL) == label and t.number in kept])
        if best is None:
            cells = sorted({str(t.user_attrs.get(CELL)) for t in trials if t.number in kept})
            raise UserError(f"no kept model of cell {label!r}; cells with one: {' | '.join(cells)}")
        number, what = best.number, f"cell {label}'s best"
    else:
        best = keep.best_of(trials)
        number, what = (best.number if best else -1), "the study's best"
    if number not in kept:
        raise UserError(
            f"{what} (trial {number}) kept no model; kept: trials {', '.join(map(str, sorted(kept)))} "
            "(--keep-models cells or all keeps more)"
        )
    out = Path(args.out or kept[number]["filename"])
    store = FileSystemArtifactStore(str(Path(args.results) / "artifacts"))
    with tempfile.TemporaryDirectory(dir=out.resolve().parent) as tmp:
        copy = Path(tmp) / out.name
        try:
            download_artifact(artifact_store=store, artifact_id=kept[number]["artifact_id"], file_path=str(copy))
        except Exception as e:  # ArtifactNotFound: the artifacts folder is elsewhere
            raise UserError(f"trial {number}'s model is not in {Path(args.results) / 'artifacts'} ({e})") from None
        header, _ = modelfile.read(copy)  # checked before it replaces anything
        os.replace(copy, out)
    print(
        f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): {what}, trial {number} of {name}, {header['arch']} "
        f"{header.get('cell') or ''}, best val loss {header.get('best_val_loss')}; use it: tlstudy predict {out} IMAGES"
    )
    return 0
