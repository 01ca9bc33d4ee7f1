"""Exports read back from the Optuna study, so they always agree with the storage.

- trials.csv: one row per trial: number, state, value, parameters, final metrics;
- epochs.csv: one row per trial and epoch (from the "history" user attribute);
- best_config.json: the best trial's configuration and the `tlstudy trial` command that re-runs it;
- predictions.csv: one row per COMPLETE trial x checkpoint x test image (from each
  trial's predictions artifact);
(splits.csv, every image's id, split and group, is written by the study when it starts:
tlstudy.data.splits.Splits.write_manifest.) The report's tables are tlstudy.analysis.report's.
"""

from __future__ import annotations

import json
import shlex
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from optuna.artifacts import FileSystemArtifactStore, download_artifact, get_all_artifact_meta
from optuna.trial import FrozenTrial, TrialState

from tlstudy.errors import UserError
from tlstudy.names import BASE_CONFIG, CELL, HISTORY, KEPT_MODEL, PHASE, PREDICTION_FIELDS, TEST_BEST_ACC, TRAIN_SEED
from tlstudy.settings import DEFAULTS
from tlstudy.study import keep


def trials_frame(study: Any, fixed: dict | None = None) -> pd.DataFrame:
    """A row per trial: its state and value, design attributes, the settings every trial shared
    (the study's base_config: epochs, frozen_bn, ...; and the space's fixed ones), its parameters
    and its user attributes."""
    shared = {**study.user_attrs.get(BASE_CONFIG, {}), **(fixed or {})}
    models = keep.links(study)
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = {k: v for k, v in t.user_attrs.items() if k != HISTORY}
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                CELL: attrs.pop(CELL, None),
                PHASE: attrs.pop(PHASE, None),
                TRAIN_SEED: attrs.pop(TRAIN_SEED, None),
                "datetime_start": t.datetime_start,
                "datetime_complete": t.datetime_complete,
                **shared,
                **t.params,
                **attrs,
                KEPT_MODEL: models.get(t.number, {}).get("artifact_id"),  # its file in the artifact store
            }
        )
    return pd.DataFrame(rows)


PREDICTION_COLUMNS = ["study", "number", CELL, PHASE, TRAIN_SEED, *PREDICTION_FIELDS]


def predictions_frame(study: Any, artifact_dir: str | Path) -> pd.DataFrame:
    """Every COMPLETE trial's per-image test predictions, read from its CSV artifact."""
    frames = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        p = read_predictions(study, t, artifact_dir)
        if p is not None:
            frames.append(
                p.assign(
                    study=study.study_name,
                    number=t.number,
                    **{k: t.user_attrs.get(k) for k in (CELL, PHASE, TRAIN_SEED)},
                )
            )
    return (
        pd.concat(frames, ignore_index=True)[PREDICTION_COLUMNS] if frames else pd.DataFrame(columns=PREDICTION_COLUMNS)
    )


def read_predictions(study: Any, trial: FrozenTrial, artifact_dir: str | Path) -> pd.DataFrame | None:
    """A stored trial's predictions CSV (tlstudy.study.search.upload_predictions), or None without one."""
    # Private, for want of a public way: a stored (frozen) trial's artifacts are listed only
    # through the storage, which a loaded Study keeps and does not expose.
    metas = [m for m in get_all_artifact_meta(trial, storage=study._storage) if m.mimetype == "text/csv"]
    if not metas:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{trial.number}.csv"
        download_artifact(
            artifact_store=FileSystemArtifactStore(str(artifact_dir)),
            artifact_id=metas[-1].artifact_id,
            file_path=str(path),
        )
        return pd.read_csv(path, dtype={"image_id": str})


def epochs_frame(study: Any) -> pd.DataFrame:
    rows = []
    for t in study.get_trials(deepcopy=False):
        for e in json.loads(t.user_attrs.get(HISTORY, "[]")):
            rows.append({"number": t.number, "state": t.state.name, **e})
    return pd.DataFrame(rows, columns=None if rows else ["number", "state", "epoch"])


def best_trial(study: Any) -> FrozenTrial | None:
    """The COMPLETE replicate with the lowest val loss (replicates carry the test figures), or in a
    study without replicates the COMPLETE trial with the lowest val loss; never chosen on test."""
    return keep.best_of(study.get_trials(deepcopy=False))  # the model --keep-models best keeps


# The data settings best_config's command carries, as `tlstudy trial` flags; data_args may hold them.
DATA_FLAGS = ("profile", "data", "image_size", "phantom_sizes", "max_train", "min_val", "skip_bad_images", "data_seed")


def trial_command(config: dict, data_args: dict) -> str:
    """The `tlstudy trial` command that reruns `config` on the data of `data_args`, every setting
    spelled out (the defaults may change; the command must not), quoted for a POSIX shell."""
    flags = []
    for k, v in {**{k: data_args[k] for k in DATA_FLAGS if k in data_args}, **config}.items():
        if v is None:
            continue
        flag = "--" + k.replace("_", "-")
        if k in ("amp", "channels_last") and isinstance(v, bool):
            v = "on" if v else "off"
        if isinstance(v, bool) and k in DEFAULTS:  # --augment / --no-augment
            flags.append(flag if v else "--no-" + flag[2:])
        elif isinstance(v, bool):  # a switch: --skip-bad-images
            flags += [flag] if v else []
        elif isinstance(v, (list, tuple)):
            flags += [flag, ",".join(map(str, v))]
        else:
            flags += [flag, str(v)]
    return "tlstudy trial " + shlex.join(flags)


def best_config(study: Any, space: Any, data_args: dict) -> dict | None:
    """The best trial's full trial configuration and the `tlstudy trial` command that re-runs it.
    data_args: the study's data settings (DATA_FLAGS: data, image_size, phantom_sizes, max_train,
    data_seed, profile, ...); the trial settings are the study's base_config with the trial's params."""
    t = best_trial(study)
    if t is None:
        return None
    config = {**study.user_attrs.get(BASE_CONFIG, {}), **t.params}
    if TRAIN_SEED in t.user_attrs:  # a replicate's seed, or a search trial's 0
        config[TRAIN_SEED] = t.user_attrs[TRAIN_SEED]
    data_args = dict(data_args)
    legacy_seed = config.pop("seed", None)  # studies from before train_seed: one seed for data and training
    if legacy_seed is not None:
        config.setdefault(TRAIN_SEED, legacy_seed)
        data_args.setdefault("data_seed", legacy_seed)
    if data_args.get("max_train") is None:
        data_args["max_train"] = 0  # every image, whatever the trial's profile would take
    config = {k: v for k, v in config.items() if k in DEFAULTS}
    return {
        "space": space.name,
        "study": study.study_name,
        "trial": t.number,
        "best_val_loss": t.value,
        "config": config,
        "data": data_args,
        TEST_BEST_ACC: t.user_attrs.get(TEST_BEST_ACC),
        "command": trial_command(config, data_args),
    }


def write(
    study: Any, space: Any, out_dir: str | Path, data_args: dict, artifact_dir: str | Path | None = None
) -> tuple[pd.DataFrame, dict]:
    """Write trials.csv, epochs.csv, predictions.csv and best_config.json under out_dir; return their paths."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        trials = trials_frame(study, space.fixed)
        paths = {"trials": out / "trials.csv", "epochs": out / "epochs.csv", "best_config": out / "best_config.json"}
        trials.to_csv(paths["trials"], index=False)
        epochs_frame(study).to_csv(paths["epochs"], index=False)
        if artifact_dir is not None:
            paths["predictions"] = out / "predictions.csv"
            predictions_frame(study, artifact_dir).to_csv(paths["predictions"], index=False)
        best = best_config(study, space, data_args)
        paths["best_config"].write_text(json.dumps(best, indent=1, default=str) + "\n")
    except OSError as e:
        raise UserError(f"cannot write the exports to {out}: {e.strerror}") from None
    return trials, paths
