"""Optuna pruning inside Ray Tune: Optuna's pruner decides, Tune stops; and what a trial leaves.

Ray's OptunaSearch (ray 2.60) samples from a persisted Optuna study but cannot prune: it
hard-codes NopPruner; a trial stopped by a Tune scheduler is told COMPLETE; and the result that
made the scheduler stop never reaches the searcher, because TuneController calls
scheduler.on_trial_result first and skips searcher.on_trial_result on STOP. So:

- `OptunaPruningSearch` puts the study's real pruner back, takes every epoch's val loss as an
  intermediate value itself (`record`, called by the scheduler), stores the per-epoch history
  and the final metrics as user attributes, and tells Optuna PRUNED, FAIL or COMPLETE. A COMPLETE
  trial's value is its lowest val loss: the checkpoint its test metrics come from.
- `OptunaPruningScheduler` runs for every result before anything else, records it through the
  searcher and returns STOP when the pruner says so.
- The searcher hands out the trials the study's design still needs (tlstudy.study.design): each is
  enqueued with its cell's parameters and its user attributes just before Optuna's ask pops it,
  and its training seed goes into the trial's config; a search trial is told not to score the
  test split. When a cell's replicates wait for its search to end, `suggest` returns None and
  Tune asks again later. Its driver keeps the trial's heartbeat while it runs.
- A finished trial's learning curve (PNG, shown on its optuna-dashboard page) and a COMPLETE
  replicate's per-image test predictions (CSV, read back by tlstudy.analysis.export) become
  Optuna artifacts beside the study.

The Ray internals this relies on (`OptunaSearch._setup_study`, `_ot_study`, `_ot_trials`, the
call order) are pinned, by behaviour, in tests/test_upstream_pins.py.
"""

from __future__ import annotations

import csv
import json
import math
import os
import socket
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from tlstudy.names import (
    DRIVER,
    EPOCH_KEYS,
    FAIL_REASON,
    HISTORY,
    LEARNING_CURVE_FILE,
    METRIC,
    NODE_ID,
    PHASE,
    PREDICTION_FIELDS,
    PREDICTIONS_FILE,
    SEARCH,
    STEP,
    SUMMARY_BEST_VAL_LOSS,
    SUMMARY_PREDICTIONS,
    SUMMARY_PREFIX,
    SUMMARY_TEST_BEST_ACC,
    TRAIN_SEED,
)
from tlstudy.study import design
from tlstudy.study.storage import Heartbeats


class OptunaPruningSearch(OptunaSearch):
    """Ray's OptunaSearch with the study's pruner, its design's trials, and its heartbeats.
    plan: (cells, budget, seeds), what the study needs; test_images: (ids, labels) of the test split,
    in the order of its predictions; progress: called with each finished trial's line fields.

    Ray internals used, as OptunaSearch defines them: `_setup_study` (overridden; it creates
    the study), `_ot_study` (the optuna.Study) and `_ot_trials` (Tune trial id -> optuna.Trial)."""

    def __init__(
        self, *args, storage=None, pruner=None, artifact_dir=None, plan=None, test_images=None, progress=None, **kwargs
    ):
        # Set before OptunaSearch.__init__, which calls _setup_study when given a space. Public
        # names: the private ones are OptunaSearch's (a new one there must not clobber ours).
        self.pruner = pruner or optuna.pruners.NopPruner()
        self.artifact_dir = artifact_dir
        self.plan = plan  # (cells, budget, seeds): what the study needs (tlstudy.design)
        self.test_images = test_images  # (ids, labels) of the test split, in the order of its predictions
        self.progress = progress  # called with each finished trial's line fields
        self.epochs = {}  # trial_id -> per-epoch records
        self.pruned = set()
        self.errors = {}
        self.finished = set()  # trial ids told to Optuna
        self.driver = f"{socket.gethostname()}:{os.getpid()}"
        self.started = time.time() - 1  # Optuna's trial start times may be whole seconds
        self.heartbeats = Heartbeats(storage)
        super().__init__(*args, storage=storage, **kwargs)

    def _setup_study(self, mode):  # Ray internal: OptunaSearch creates the study here, with NopPruner
        super()._setup_study(mode)  # Ray internal (see the class docstring)
        self._ot_study.pruner = self.pruner  # Ray internal: _ot_study

    def __getstate__(self):
        # Tune pickles the searcher into its experiment folder (tuner.pkl, for Tuner.restore, which
        # tlstudy never uses: a study resumes from its Optuna storage). The storage, and the study
        # and trials that hold it, stay out: a storage URL may carry a password.
        state = self.__dict__.copy()
        state.update(_storage=None, _ot_study=None, _ot_trials={}, heartbeats=None)  # Ray internals, see above
        return state

    def save(self, checkpoint_path):
        pass  # no searcher checkpoint: see __getstate__; the Optuna storage is the study's record

    def suggest(self, trial_id):
        study = self._ot_study  # Ray internal: the optuna.Study OptunaSearch asks
        if self.plan is not None:
            cells, budget, seeds = self.plan
            started = {t.number for t in self._ot_trials.values()}  # Ray internal: _ot_trials
            work = design.next_work(study.get_trials(deepcopy=False), cells, budget, seeds, held=started)
            if work == design.WAIT:
                return None
            if work == design.DONE:
                return Searcher.FINISHED
            study.enqueue_trial(work.params, user_attrs=work.user_attrs, skip_if_exists=False)
        with warnings.catch_warnings():  # "Heartbeat of storage is supposed to be used with Study.optimize"
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            config = super().suggest(trial_id)
        ot_trial = self.optuna_trial(trial_id)
        if TRAIN_SEED in ot_trial.user_attrs:
            config[TRAIN_SEED] = ot_trial.user_attrs[TRAIN_SEED]
        # A search trial is chosen on val alone: it never looks at the test split.
        if ot_trial.user_attrs.get(PHASE) == SEARCH:
            config["score_test"] = False
        self.heartbeats.add(study.study_name, ot_trial.number)
        ot_trial.set_user_attr(DRIVER, self.driver)
        return config

    def optuna_trial(self, trial_id):
        """The optuna.Trial OptunaSearch asked for Tune's trial `trial_id`, or None."""
        return self._ot_trials.get(trial_id)  # Ray internal: Tune trial id -> optuna.Trial

    def record(self, trial_id, result):
        """Take one epoch's result; return True when the pruner says to stop the trial."""
        ot_trial = self.optuna_trial(trial_id)
        epoch = {k: result[k] for k in EPOCH_KEYS if k in result}
        self.epochs.setdefault(trial_id, []).append(epoch)
        try:
            if result.get(NODE_ID):
                ot_trial.set_user_attr(NODE_ID, result[NODE_ID])
            ot_trial.report(result[METRIC], result[STEP])
        except UpdateFinishedTrialError:
            return True  # another driver has failed it meanwhile (see on_trial_complete): stop it
        if SUMMARY_BEST_VAL_LOSS in result:  # the last epoch: nothing left to prune
            return False
        if ot_trial.should_prune():
            self.pruned.add(trial_id)
            return True
        return False

    def on_trial_result(self, trial_id, result):
        pass  # the scheduler already passed this result through `record`

    def record_error(self, trial_id, error):
        self.errors[trial_id] = error

    def on_trial_complete(self, trial_id, result=None, error=False):
        ot_trial = self.optuna_trial(trial_id)
        if trial_id in self.finished or ot_trial is None:
            return
        try:
            self.tell(trial_id, ot_trial, result, error)
        except UpdateFinishedTrialError:
            # Its heartbeats lapsed for the grace period (a driver stalled, a database unreachable),
            # and another driver sharing the study failed it as abandoned; its cell runs again there.
            warnings.warn(f"trial {ot_trial.number} was failed by another driver meanwhile")
        self.finished.add(trial_id)
        self.heartbeats.discard(ot_trial.number)

    def tell(self, trial_id, ot_trial, result, error):
        """Tell Optuna how the trial ended (PRUNED; FAIL with its reason; COMPLETE with its lowest val
        loss and its summary as user attributes), with its history and artifacts."""
        epochs = self.epochs.get(trial_id, [])
        ot_trial.set_user_attr(HISTORY, json.dumps(epochs))
        if self.artifact_dir and epochs:
            upload_learning_curve(self.artifact_dir, ot_trial, epochs)
        if trial_id in self.pruned:
            state, value = TrialState.PRUNED, None
        elif error or not result or SUMMARY_BEST_VAL_LOSS not in result:
            # An error, or a trial stopped before its last epoch (Ctrl-C, a stopper): not a result.
            state, value = TrialState.FAIL, None
            reason = self.errors.get(trial_id) or ("error" if error else "stopped before its last epoch")
            ot_trial.set_user_attr(FAIL_REASON, str(reason)[-2000:])
        elif not math.isfinite(result[SUMMARY_BEST_VAL_LOSS]):
            state, value = TrialState.FAIL, None
            ot_trial.set_user_attr(FAIL_REASON, "non-finite val loss in every epoch")
        else:
            state, value = TrialState.COMPLETE, result[SUMMARY_BEST_VAL_LOSS]
            for k, v in result.items():
                if k.startswith(SUMMARY_PREFIX) and k != SUMMARY_PREDICTIONS and _storable(v):
                    ot_trial.set_user_attr(k[len(SUMMARY_PREFIX) :], v)
            if self.artifact_dir and SUMMARY_PREDICTIONS in result:
                upload_predictions(
                    self.artifact_dir, ot_trial, json.loads(result[SUMMARY_PREDICTIONS]), self.test_images
                )
        self._ot_study.tell(ot_trial, value, state=state, skip_if_finished=True)  # Ray internal: _ot_study
        if self.progress:
            self.progress(
                number=ot_trial.number,
                attrs=ot_trial.user_attrs,
                state=state.name,
                value=value,
                epochs=len(epochs),
                test_acc=(result or {}).get(SUMMARY_TEST_BEST_ACC),
                reason=self.errors.get(trial_id),
            )

    def fail_unfinished(self, reason):
        """After Tuner.fit returns (early on Ctrl-C), resolve this driver's trials that never
        completed and stop the heartbeats; return how many there were."""
        unfinished = [t for t in self._ot_trials if t not in self.finished]  # Ray internal: _ot_trials
        for trial_id in unfinished:
            self.errors[trial_id] = reason
            self.on_trial_complete(trial_id, error=True)
        unfinished += self._fail_orphans(reason)
        self.heartbeats.stop()
        return len(unfinished)

    def _fail_orphans(self, reason):
        """Ctrl-C between Optuna's ask and OptunaSearch recording the trial leaves a RUNNING trial
        this searcher never saw: ours too, when no other driver has claimed it."""
        mine = {t.number for t in self._ot_trials.values()}  # Ray internal: _ot_trials
        study = self._ot_study  # Ray internal: _ot_study
        storage = study._storage  # Optuna: a loaded study's storage has no public getter
        failed = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if (
                t.number in mine
                or t.user_attrs.get(DRIVER) not in (None, self.driver)
                or not t.datetime_start
                or t.datetime_start.timestamp() < self.started
            ):
                continue
            trial_id = storage.get_trial_id_from_study_id_trial_number(
                storage.get_study_id_from_name(study.study_name), t.number
            )
            try:
                storage.set_trial_user_attr(trial_id, FAIL_REASON, reason)
                study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
                failed.append(t.number)
            except UpdateFinishedTrialError:
                pass
        return failed


class OptunaPruningScheduler(FIFOScheduler):
    def __init__(self, searcher):
        super().__init__()
        self.searcher = searcher

    def on_trial_result(self, tune_controller, trial, result):
        if self.searcher.record(trial.trial_id, result):
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def on_trial_error(self, tune_controller, trial):
        # Called before the searcher hears of the failure, with the trial's error file written
        # locally (trial.get_error() reads the synced copy, which may not be there yet).
        try:
            reason = Path(trial.error_file).read_text().strip()
        except (OSError, TypeError):
            err = trial.get_error()
            reason = f"{type(err).__name__}: {err}" if err else "error (no error file)"
        self.searcher.record_error(trial.trial_id, reason)
        super().on_trial_error(tune_controller, trial)


def _storable(v):
    """Optuna user attributes must be JSON; NaN is not."""
    if isinstance(v, float):
        return math.isfinite(v)
    return isinstance(v, (int, str, bool, list)) or v is None


# ---------------------------------------------------------------- the artifacts a trial leaves


def upload_learning_curve(artifact_dir: str | Path, ot_trial: Any, epochs: list[dict]) -> None:
    """The trial's train and val loss per epoch (its epoch records), as a PNG artifact."""
    from matplotlib.figure import Figure  # no pyplot: the driver draws a figure per trial
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(5, 3.2), dpi=100)
    ax = fig.add_axes((0.14, 0.15, 0.82, 0.75))
    ax.plot([e[STEP] for e in epochs], [e["train_loss"] for e in epochs], "o-", label="train loss")
    ax.plot([e[STEP] for e in epochs], [e[METRIC] for e in epochs], "s-", label="val loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel="cross-entropy")
    ax.set_title(f"trial {ot_trial.number}", fontsize=9)
    ax.legend()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, LEARNING_CURVE_FILE.format(number=ot_trial.number))
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
        path = os.path.join(tmp, PREDICTIONS_FILE.format(number=ot_trial.number))
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(PREDICTION_FIELDS)
            for checkpoint, p in predictions.items():
                w.writerows(zip([checkpoint] * len(ids), ids, labels, p["pred"], p["score"]))
        upload_artifact(
            artifact_store=FileSystemArtifactStore(str(artifact_dir)),
            file_path=path,
            study_or_trial=ot_trial,
            mimetype="text/csv",
        )
