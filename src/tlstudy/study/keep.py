"""Which trials keep their model, and the model files as artifacts on their trials' dashboard pages.

A COMPLETE trial's last Ray Tune checkpoint holds its model file (tlstudy.training.modelfile: the
best-val-loss weights, which its test_best_* figures come from). `--keep-models` says which trials
keep theirs (`wanted`): `best`, the study's best model by val loss (never test: the COMPLETE
replicate with the lowest val loss, or without replicates the COMPLETE trial with the lowest);
`cells`, each cell's best the same way (the study's best among them); `all`; `none`. The driver
decides as each trial finishes (`Keeper.trial_done`): a model the policy wants is copied into the
artifact store with the study and trial added to its header, and the model of a trial it superseded
(the study's or its cell's best until then) is deleted, so a study holds one model (`best`) or one
per cell (`cells`) at any time. Models kept by an earlier run under another policy stay.

The link: Optuna records a trial's artifacts in the trial's own system attributes, which are
read-only once the trial has finished, so a superseded model could never be unlinked there.
optuna-dashboard also lists, on a trial's page, the artifacts recorded in the study's system
attributes under `dashboard:artifacts:<trial id>:<artifact id>` (and unlinks one by setting it to
null, as its own delete button does): the models are recorded there (the real optuna-dashboard
lists and serves one in tests/test_dashboard.py). A kept model's trial also gets a note, at the top of
its page: the model file, its cell and phase; a superseded one's note says its model went.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import FrozenTrial, TrialState

from tlstudy import names
from tlstudy.training import modelfile

POLICIES = ("best", "cells", "all", "none")
LINK_PREFIX = "dashboard:artifacts:"  # optuna-dashboard's study-level record of a trial's artifacts
MIMETYPE = "application/octet-stream"


def best_of(trials: Sequence[FrozenTrial]) -> FrozenTrial | None:
    """The COMPLETE replicate with the lowest val loss, or without replicates the COMPLETE trial with
    the lowest: the study's best (tlstudy.analysis.export's best_config too); never chosen on test."""
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    done = [t for t in done if t.user_attrs.get(names.PHASE) == names.REPLICATE] or done
    return min(done, key=lambda t: t.value or 0.0) if done else None  # a COMPLETE trial has its value


def wanted(trials: Sequence[FrozenTrial], policy: str) -> set[int]:
    """The numbers of the trials whose model `policy` keeps, among `trials` as they stand."""
    if policy == "none":
        return set()
    if policy == "all":
        return {t.number for t in trials if t.state == TrialState.COMPLETE}
    best = best_of(trials)
    keep = {best.number} if best else set()
    if policy == "cells":
        for cell in {t.user_attrs.get(names.CELL) for t in trials}:
            mine = best_of([t for t in trials if t.user_attrs.get(names.CELL) == cell])
            keep |= {mine.number} if mine else set()
    return keep


def links(study: Any) -> dict[int, dict]:
    """{trial number: artifact meta (artifact_id, filename, ...)} of the study's kept models."""
    storage = study._storage  # Optuna: a loaded study's storage has no public getter
    attrs = storage.get_study_system_attrs(study._study_id)  # Optuna: nor its id
    by_id = {t._trial_id: t.number for t in study.get_trials(deepcopy=False)}  # Optuna: a FrozenTrial's id
    out = {}
    for key, value in attrs.items():
        if key.startswith(LINK_PREFIX) and value:
            meta = json.loads(value)
            if meta and meta["filename"].endswith(".safetensors"):
                out[by_id[int(key[len(LINK_PREFIX) :].split(":")[0])]] = meta
    return out


class Keeper:
    """The driver's side of --keep-models: link the models the policy wants, unlink those it superseded."""

    def __init__(self, study: Any, artifact_dir: str | Path, policy: str) -> None:
        self.study, self.policy = study, policy
        self.store = FileSystemArtifactStore(str(artifact_dir))
        self.artifact_dir = Path(artifact_dir)
        self.wanted = wanted(study.get_trials(deepcopy=False), policy)

    def trial_done(self, number: int, model_folder: str | None) -> str | None:
        """After trial `number` was told to Optuna: keep its model (the file in `model_folder`, its
        last checkpoint) if the policy wants it, unlink what it superseded; returns the kept file's path."""
        if self.policy == "none":
            return None
        trials = self.study.get_trials(deepcopy=False)
        now = wanted(trials, self.policy)
        kept = None
        if number in now and model_folder and (Path(model_folder) / names.CHECKPOINT_MODEL_FILE).is_file():
            trial = next(t for t in trials if t.number == number)
            kept = self.link(trial, Path(model_folder) / names.CHECKPOINT_MODEL_FILE)
        for n in (self.wanted - now) & set(links(self.study)):
            self.unlink(n)
        self.wanted = now
        return kept

    def link(self, trial: FrozenTrial, src: Path) -> str:
        artifact_id = str(uuid.uuid4())
        filename = names.MODEL_FILE.format(number=trial.number)
        attrs = trial.user_attrs
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / filename
            header = modelfile.rewrite(
                src,
                path,
                study=self.study.study_name,
                trial=trial.number,
                cell=attrs.get(names.CELL),
                phase=attrs.get(names.PHASE),
            )
            with open(path, "rb") as f:
                self.store.write(artifact_id, f)
        meta = {"artifact_id": artifact_id, "filename": filename, "mimetype": MIMETYPE, "encoding": None}
        self.study._storage.set_study_system_attr(
            self.study._study_id, self.key(trial.number, artifact_id), json.dumps(meta)
        )
        loss = header.get("best_val_loss")
        loss = f"{loss:.4g}" if isinstance(loss, (int, float)) else loss
        seed = f", training seed {attrs.get(names.TRAIN_SEED)}" if attrs.get(names.PHASE) == names.REPLICATE else ""
        self.note(
            trial.number,
            f"**Kept model**: `{filename}`, among the artifacts below\n\n"
            f"**Cell**: {attrs.get(names.CELL)}\n\n"
            f"**Phase**: {attrs.get(names.PHASE)}{seed}\n\n"
            f"The weights of epoch {header.get('best_epoch')}, its lowest val loss ({loss}); a copy: "
            f"`tlstudy export-model --trial {trial.number}`",
        )
        return str(self.artifact_dir / artifact_id)

    def unlink(self, number: int) -> None:
        meta = links(self.study)[number]
        self.store.remove(meta["artifact_id"])
        self.study._storage.set_study_system_attr(
            self.study._study_id, self.key(number, meta["artifact_id"]), json.dumps(None)
        )
        self.note(
            number,
            f"Its model, `{meta['filename']}`, was kept, then deleted when a better trial finished"
            f" (`--keep-models {self.policy}`).",
        )

    def note(self, number: int, body: str) -> None:
        """The trial's note in optuna-dashboard, at the top of its page (Markdown; the study's system
        attributes hold it, so a finished trial's note can change)."""
        from optuna_dashboard import save_note

        trial_id = self.study._storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number)
        save_note(optuna.trial.Trial(self.study, trial_id), body)

    def key(self, number: int, artifact_id: str) -> str:
        storage = self.study._storage
        trial_id = storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number)
        return f"{LINK_PREFIX}{trial_id}:{artifact_id}"
