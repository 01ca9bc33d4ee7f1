"""What a trial leaves beside its Optuna record: its learning curve and per-image predictions as
artifacts (on its optuna-dashboard page), and its Ray Tune checkpoints, deleted once it has finished.

The searcher (tlstudy.study.search) uploads the artifacts when it tells Optuna how a trial ended;
a kept model is tlstudy.study.keep's.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from optuna.artifacts import FileSystemArtifactStore, upload_artifact

from tlstudy import names


def upload_learning_curve(artifact_dir: str | Path, ot_trial: Any, epochs: list[dict]) -> None:
    """The trial's train and val loss per epoch (its epoch records), as a PNG artifact."""
    from matplotlib.figure import Figure  # no pyplot: the driver draws a figure per trial
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(5, 3.2), dpi=100)
    ax = fig.add_axes((0.14, 0.15, 0.82, 0.75))
    ax.plot([e[names.STEP] for e in epochs], [e["train_loss"] for e in epochs], "o-", label="train loss")
    ax.plot([e[names.STEP] for e in epochs], [e[names.METRIC] for e in epochs], "s-", label="val loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel="cross-entropy")
    ax.set_title(f"trial {ot_trial.number}", fontsize=9)
    ax.legend()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, names.LEARNING_CURVE_FILE.format(number=ot_trial.number))
        fig.savefig(path)
        upload_artifact(
            artifact_store=FileSystemArtifactStore(str(artifact_dir)),
            file_path=path,
            study_or_trial=ot_trial,
            mimetype="image/png",
        )


def upload_predictions(artifact_dir: str | Path, ot_trial: Any, predictions: dict, test_images: tuple) -> None:
    """Each test image's id, label, predicted output and PNEUMONIA score at every checkpoint, as a
    CSV artifact. predictions: {checkpoint: {"pred": [...], "score": [...]}} in the order of
    test_images, (ids, labels)."""
    ids, labels = test_images
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, names.PREDICTIONS_FILE.format(number=ot_trial.number))
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(names.PREDICTION_FIELDS)
            for checkpoint, p in predictions.items():
                w.writerows(zip([checkpoint] * len(ids), ids, labels, p["pred"], p["score"]))
        upload_artifact(
            artifact_store=FileSystemArtifactStore(str(artifact_dir)),
            file_path=path,
            study_or_trial=ot_trial,
            mimetype="text/csv",
        )


def drop_checkpoints(trial_folder: str | Path | None) -> int:
    """Delete the Ray Tune checkpoints of a finished trial (its trial folder's checkpoint_*/), or of
    every trial under an experiment folder; returns how many bytes that freed. A trial's state is
    only good for resuming it, and its model, if kept, is in the artifact store by now."""
    if not trial_folder or not Path(trial_folder).is_dir():
        return 0  # a storage that is no local folder: Tune's own num_to_keep bounds it
    freed = 0
    for folder in Path(trial_folder).glob("**/checkpoint_*"):
        if folder.is_dir():
            freed += sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            shutil.rmtree(folder, ignore_errors=True)
    return freed
