"""The bridge between Ray Tune and an Optuna study: Optuna's pruner decides, Tune stops.

Ray's OptunaSearch (ray 2.60) samples from a persisted Optuna study but cannot prune:
it hard-codes NopPruner; a trial stopped by a Tune scheduler is told COMPLETE; and
the result that made the scheduler stop never reaches the searcher, because
TuneController calls scheduler.on_trial_result first and skips
searcher.on_trial_result on STOP. So:

- `OptunaPruningSearch` puts the study's real pruner back, takes every epoch's val
  loss as an intermediate value itself (`record`, called by the scheduler), stores
  the per-epoch history and the final metrics as user attributes, and tells Optuna
  PRUNED, FAIL or COMPLETE. A COMPLETE trial's value is its lowest val loss: the
  checkpoint its test metrics come from.
- `OptunaPruningScheduler` runs for every result before anything else, records it
  through the searcher and returns STOP when the pruner says so.

- It hands out the trials the study's design still needs (tlstudy.design): each is
  enqueued with its cell's parameters and its `cell`, `phase`, `train_seed` user
  attributes just before Optuna's ask pops it, and its training seed goes into the
  trial's config. When a cell's replicates wait for its search to end, `suggest`
  returns None and Tune asks again later.
- A finished trial's per-image test predictions become an Optuna artifact (CSV).

- It also keeps its trials' heartbeats (SQL storages): Optuna's own heartbeat thread
  only runs inside Study.optimize, and Tune drives the study through ask/tell. A
  driver that dies stops beating, and the next driver fails its trials
  (tlstudy.runner.resolve_abandoned) while leaving those of a live driver alone.

The Ray internals this relies on (`OptunaSearch._setup_study`, `_ot_study`,
`_ot_trials`, the call order) are pinned by tests/test_tune_optuna.py.
"""
import csv
import json
import math
import os
import socket
import tempfile
import threading
import warnings
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import TrialState
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from tlstudy import design, plots

METRIC = "val_loss"
STEP = "epoch"
PREDICTIONS_PREFIX = "predictions_trial"


class OptunaPruningSearch(OptunaSearch):
    def __init__(self, *args, pruner=None, artifact_dir=None, plan=None, test_images=None, progress=None, **kwargs):
        # Set before OptunaSearch.__init__, which calls _setup_study when given a space.
        self._pruner = pruner or optuna.pruners.NopPruner()
        self._artifact_dir = artifact_dir
        self._plan = plan  # (cells, budget, seeds): what the study needs (tlstudy.design)
        self._test_images = test_images  # (ids, labels) of the test split, in the order of its predictions
        self._progress = progress  # called with each finished trial's line fields
        self._epochs = {}  # trial_id -> per-epoch records
        self._pruned = set()
        self._errors = {}
        self._driver = f"{socket.gethostname()}:{os.getpid()}"
        self._beating = None  # the heartbeat thread's stop event, once started
        super().__init__(*args, **kwargs)

    def _setup_study(self, mode):
        super()._setup_study(mode)
        self._ot_study.pruner = self._pruner

    def suggest(self, trial_id):
        if self._plan is not None:
            cells, budget, seeds = self._plan
            work = design.next_work(self._ot_study.get_trials(deepcopy=False), cells, budget, seeds)
            if work == design.WAIT:
                return None
            if work == design.DONE:
                return Searcher.FINISHED
            self._ot_study.enqueue_trial(work.params, user_attrs=work.user_attrs, skip_if_exists=False)
        with warnings.catch_warnings():  # "Heartbeat of storage is supposed to be used with Study.optimize"
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            config = super().suggest(trial_id)
        ot_trial = self._ot_trials[trial_id]
        if "train_seed" in ot_trial.user_attrs:
            config["train_seed"] = ot_trial.user_attrs["train_seed"]
        if is_heartbeat_enabled(self._storage):
            self._storage.record_heartbeat(ot_trial._trial_id)
            if self._beating is None:
                self._beating = threading.Event()
                threading.Thread(target=self._beat, args=(self._beating,), daemon=True).start()
        ot_trial.set_user_attr("driver", self._driver)
        return config

    def _beat(self, stop):
        interval = self._storage.get_heartbeat_interval()
        while not stop.wait(interval):
            for trial_id, ot_trial in list(self._ot_trials.items()):
                if trial_id not in self._completed_trials:
                    try:
                        self._storage.record_heartbeat(ot_trial._trial_id)
                    except Exception as e:  # a busy database: the grace period covers a missed beat
                        warnings.warn(f"heartbeat of trial {ot_trial.number} not recorded: {e}")

    def save(self, checkpoint_path):
        # Tune checkpoints a searcher by pickling its __dict__; a threading.Event cannot be pickled.
        beating, self._beating = self._beating, None
        try:
            super().save(checkpoint_path)
        finally:
            self._beating = beating

    @property
    def started(self):
        """How many trials this searcher has handed out."""
        return len(self._ot_trials)

    def record(self, trial_id, result):
        """Take one epoch's result; return True when the pruner says to stop the trial."""
        ot_trial = self._ot_trials[trial_id]
        epoch = {k: result[k] for k in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_s")
                 if k in result}
        self._epochs.setdefault(trial_id, []).append(epoch)
        try:
            if result.get("node_id"):
                ot_trial.set_user_attr("node_id", result["node_id"])
            ot_trial.report(result[METRIC], result[STEP])
        except UpdateFinishedTrialError:
            return True  # another driver has failed it meanwhile (see on_trial_complete): stop it
        if "summary/test_best_acc" in result:  # the last epoch: nothing left to prune
            return False
        if ot_trial.should_prune():
            self._pruned.add(trial_id)
            return True
        return False

    def on_trial_result(self, trial_id, result):
        pass  # the scheduler already passed this result through `record`

    def record_error(self, trial_id, error):
        self._errors[trial_id] = error

    def on_trial_complete(self, trial_id, result=None, error=False):
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        try:
            self._finish(trial_id, result, error)
        except UpdateFinishedTrialError:
            # Its heartbeats lapsed for the grace period (a driver stalled, a database unreachable),
            # and another driver sharing the study failed it as abandoned; its cell runs again there.
            warnings.warn(f"trial {self._ot_trials[trial_id].number} was failed by another driver meanwhile")
        self._completed_trials.add(trial_id)

    def _finish(self, trial_id, result, error):
        ot_trial = self._ot_trials[trial_id]
        epochs = self._epochs.get(trial_id, [])
        ot_trial.set_user_attr("history", json.dumps(epochs))
        if self._artifact_dir and epochs:
            self._upload_learning_curve(ot_trial, epochs)
        if trial_id in self._pruned:
            state, value = TrialState.PRUNED, None
        elif error or not result or "summary/test_best_acc" not in result:
            # An error, or a trial stopped before its last epoch (Ctrl-C, a stopper): not a result.
            state, value = TrialState.FAIL, None
            reason = self._errors.get(trial_id) or ("error" if error else "stopped before its last epoch")
            ot_trial.set_user_attr("fail_reason", str(reason)[-2000:])
        elif not math.isfinite(result["summary/best_val_loss"]):
            state, value = TrialState.FAIL, None
            ot_trial.set_user_attr("fail_reason", "non-finite val loss in every epoch")
        else:
            state, value = TrialState.COMPLETE, result["summary/best_val_loss"]
            for k, v in result.items():
                if k.startswith("summary/") and k != "summary/predictions" and _storable(v):
                    ot_trial.set_user_attr(k[len("summary/"):], v)
            if self._artifact_dir and "summary/predictions" in result:
                self._upload_predictions(ot_trial, json.loads(result["summary/predictions"]))
        self._ot_study.tell(ot_trial, value, state=state, skip_if_finished=True)
        if self._progress:
            self._progress(number=ot_trial.number, attrs=ot_trial.user_attrs, state=state.name, value=value,
                           epochs=len(epochs), test_acc=(result or {}).get("summary/test_best_acc"),
                           reason=self._errors.get(trial_id))

    def _upload_learning_curve(self, ot_trial, epochs):
        """The trial's learning curve as an Optuna artifact, so optuna-dashboard shows it on the trial's page."""
        store = FileSystemArtifactStore(str(self._artifact_dir))
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, f"learning_curve_trial{ot_trial.number}.png")
            plots.learning_curve(epochs, path, f"trial {ot_trial.number}")
            upload_artifact(artifact_store=store, file_path=path, study_or_trial=ot_trial, mimetype="image/png")

    def _upload_predictions(self, ot_trial, predictions):
        """Each test image's id, label, predicted output and PNEUMONIA score at every checkpoint, as a CSV artifact."""
        ids, labels = self._test_images
        store = FileSystemArtifactStore(str(self._artifact_dir))
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, f"{PREDICTIONS_PREFIX}{ot_trial.number}.csv")
            with open(path, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["checkpoint", "image_id", "label", "pred", "score"])
                for checkpoint, p in predictions.items():
                    w.writerows(zip([checkpoint] * len(ids), ids, labels, p["pred"], p["score"]))
            upload_artifact(artifact_store=store, file_path=path, study_or_trial=ot_trial, mimetype="text/csv")

    def fail_unfinished(self, reason):
        """After Tuner.fit returns (early on Ctrl-C), resolve this driver's trials that never
        completed and stop the heartbeats; return how many there were."""
        unfinished = [t for t in self._ot_trials if t not in self._completed_trials]
        for trial_id in unfinished:
            self._errors[trial_id] = reason
            self.on_trial_complete(trial_id, error=True)
        if self._beating is not None:
            self._beating.set()
        return len(unfinished)


class OptunaPruningScheduler(FIFOScheduler):
    def __init__(self, searcher):
        super().__init__()
        self._searcher = searcher

    def on_trial_result(self, tune_controller, trial, result):
        if self._searcher.record(trial.trial_id, result):
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
        self._searcher.record_error(trial.trial_id, reason)
        super().on_trial_error(tune_controller, trial)


def _storable(v):
    """Optuna user attributes must be JSON; NaN is not."""
    if isinstance(v, float):
        return math.isfinite(v)
    return isinstance(v, (int, str, bool, list)) or v is None
