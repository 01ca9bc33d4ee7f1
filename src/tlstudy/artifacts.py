"""The files a trial leaves in Optuna's artifact store (RESULTS/artifacts/), beside its study.

- its learning curve (PNG), which optuna-dashboard shows on the trial's page when it is
  started with --artifact-dir (tlstudy dashboard does);
- a COMPLETE trial's per-image test predictions at each checkpoint (CSV), read back into
  predictions.csv by tlstudy.export.

tlstudy.tune_optuna uploads both when a trial finishes.
"""
import csv
import os
import tempfile
from pathlib import Path

import pandas as pd
from optuna.artifacts import FileSystemArtifactStore, download_artifact, get_all_artifact_meta, upload_artifact

from tlstudy import plots

PREDICTIONS_PREFIX = "predictions_trial"
PREDICTION_FIELDS = ["checkpoint", "image_id", "label", "pred", "score"]


def upload_learning_curve(artifact_dir, ot_trial, epochs):
    """The trial's train and val loss per epoch (its epoch records), as a PNG artifact."""
    store = FileSystemArtifactStore(str(artifact_dir))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"learning_curve_trial{ot_trial.number}.png")
        plots.learning_curve(epochs, path, f"trial {ot_trial.number}")
        upload_artifact(artifact_store=store, file_path=path, study_or_trial=ot_trial, mimetype="image/png")


def upload_predictions(artifact_dir, ot_trial, predictions, test_images):
    """Each test image's id, label, predicted output and PNEUMONIA score at every checkpoint, as a
    CSV artifact. predictions: {checkpoint: {"pred": [...], "score": [...]}} in the order of
    test_images, (ids, labels)."""
    ids, labels = test_images
    store = FileSystemArtifactStore(str(artifact_dir))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{PREDICTIONS_PREFIX}{ot_trial.number}.csv")
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(PREDICTION_FIELDS)
            for checkpoint, p in predictions.items():
                w.writerows(zip([checkpoint] * len(ids), ids, labels, p["pred"], p["score"]))
        upload_artifact(artifact_store=store, file_path=path, study_or_trial=ot_trial, mimetype="text/csv")


def read_predictions(study, trial, artifact_dir):
    """A stored trial's predictions CSV as a DataFrame (PREDICTION_FIELDS), or None without one."""
    # Private, for want of a public way: a stored (frozen) trial's artifacts are listed only
    # through the storage, which a loaded Study keeps and does not expose.
    metas = [m for m in get_all_artifact_meta(trial, storage=study._storage) if m.mimetype == "text/csv"]
    if not metas:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{trial.number}.csv"
        download_artifact(artifact_store=FileSystemArtifactStore(str(artifact_dir)), artifact_id=metas[-1].artifact_id,
                          file_path=str(path))
        return pd.read_csv(path, dtype={"image_id": str})
