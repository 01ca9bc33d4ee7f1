"""Optuna pruning inside Ray Tune: Optuna's pruner decides, Tune stops; and what a trial leaves.

Ray's OptunaSearch (ray 2.60) samples from a persisted Optuna study but cannot prune: it hard-codes
NopPruner, a trial a scheduler stops is told COMPLETE, and TuneController skips the searcher's
on_trial_result when the scheduler stops a trial. So `OptunaPruningSearch` puts the study's pruner
back, takes every epoch's val loss as an intermediate value itself (`record`, which the scheduler
calls), and tells Optuna PRUNED, FAIL or COMPLETE (value: the lowest val loss), with the history and
results as user attributes; `OptunaPruningScheduler` sees every result first and STOPs a trial when
the pruner says so (or when the trial reports its own error). The searcher hands out the trials the
design needs (tlstudy.study.design): each enqueued with its cell's values and attributes just before
Optuna's ask pops it; a search trial is told not to score the test split. A trial Tune restores after
its worker died continues after its last checkpoint's epoch: an epoch reported again replaces its
record and is not told to Optuna twice. Once told, a finished trial leaves its learning curve (PNG,
on its optuna-dashboard page), a replicate its per-image predictions (CSV; tlstudy.study.artifacts),
a COMPLETE trial its model if --keep-models wants it (tlstudy.study.keep); its Ray Tune checkpoints
are deleted. The Ray internals relied on
(`_setup_study`, `_ot_study`, `_ot_trials`, the call order) are pinned in tests/test_upstream_pins.py.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from tlstudy import names
from tlstudy.study import design
from tlstudy.study.artifacts import drop_checkpoints, upload_learning_curve, upload_predictions
from tlstudy.study.storage import Heartbeats, work_lock


class OptunaPruningSearch(OptunaSearch):
    """Ray's OptunaSearch with the study's pruner, its design's trials, and its heartbeats. plan:
    (cells, budget, seeds); test_images: (ids, labels) of the test split, in its predictions' order;
    progress: called with each finished trial's line fields."""

    # fmt: off
    def __init__(self, *args: Any, storage: Any = None, url: str = "", pruner: Any = None,
                 artifact_dir: Path | None = None, plan: tuple | None = None, test_images: tuple | None = None,
                 progress: Any = None, keeper: Any = None, **kwargs: Any):
        # fmt: on
        # Set before OptunaSearch.__init__ (which calls _setup_study), with names OptunaSearch lacks.
        self.pruner = pruner or optuna.pruners.NopPruner()
        self.artifact_dir, self.plan, self.test_images, self.progress = artifact_dir, plan, test_images, progress
        self.keeper = keeper  # tlstudy.study.keep.Keeper, or None
        self.url = url  # the storage's URL: which lock `work_lock` takes
        self.epochs: dict[str, list[dict]] = {}  # trial id -> its per-epoch records
        self.tune_trials: dict[str, Any] = {}  # trial id -> Tune's Trial (set by the scheduler)
        self.pruned: set[str] = set()
        self.errors: dict[str, str] = {}
        self.finished: set[str] = set()  # trial ids told to Optuna
        self.driver = f"{socket.gethostname()}:{os.getpid()}"
        self.started = time.time() - 1  # Optuna's trial start times may be whole seconds
        self.heartbeats = Heartbeats(storage)
        # OptunaSearch takes the storage among its keywords (its stub says otherwise).
        super().__init__(*args, storage=storage, **kwargs)  # type: ignore[misc]

    @property
    def study(self) -> Any:
        """The optuna.Study this searcher asks (Ray internal: `_ot_study`, set by `_setup_study`)."""
        return self._ot_study

    def _setup_study(self, mode: Any) -> None:  # Ray internal: OptunaSearch creates the study here, with NopPruner
        super()._setup_study(mode)  # Ray internal (see the class docstring)
        self.study.pruner = self.pruner

    def __getstate__(self) -> dict:
        # Tune pickles the searcher (tuner.pkl, for Tuner.restore; a study resumes from its Optuna
        # storage instead): the storage and what holds it stay out, a storage URL may hold a password.
        state = self.__dict__.copy()
        state.update(_storage=None, _ot_study=None, _ot_trials={}, heartbeats=None, keeper=None, tune_trials={}, url="")
        return state

    def save(self, checkpoint_path: str) -> None:
        pass  # no searcher checkpoint: see __getstate__; the Optuna storage is the study's record

    def suggest(self, trial_id: str) -> Any:  # a config, None (ask later) or Searcher.FINISHED
        # Another driver sharing the study must not read what it lacks between our read and our ask.
        with work_lock(self.url, self._storage, self.study.study_name):  # Ray internal: _storage
            config = self._take_work(trial_id)
        if config is None or config == Searcher.FINISHED:
            return config
        study = self.study
        ot_trial = self.optuna_trial(trial_id)
        if names.TRAIN_SEED in ot_trial.user_attrs:
            config[names.TRAIN_SEED] = ot_trial.user_attrs[names.TRAIN_SEED]
        # A search trial is chosen on val alone: it never looks at the test split.
        if ot_trial.user_attrs.get(names.PHASE) == names.SEARCH:
            config["score_test"] = False
        self.heartbeats.add(study.study_name, ot_trial.number)
        ot_trial.set_user_attr(names.DRIVER, self.driver)
        return config

    def _take_work(self, trial_id: str) -> Any:
        """Enqueue the trial the design needs next and let OptunaSearch ask for it (it pops it)."""
        study = self.study
        if self.plan is not None:
            cells, budget, seeds, *looks = self.plan  # looks: --seeds auto's seed counts per round
            started = {t.number for t in self._ot_trials.values()}  # Ray internal: _ot_trials
            work = design.next_work(
                study.get_trials(deepcopy=False), cells, budget, seeds, held=started, looks=looks[0] if looks else ()
            )
            if work == design.WAIT:
                return None
            if work == design.DONE:
                return Searcher.FINISHED
            assert isinstance(work, design.Work)
            study.enqueue_trial(work.params, user_attrs=work.user_attrs, skip_if_exists=False)
        with warnings.catch_warnings():  # "Heartbeat of storage is supposed to be used with Study.optimize"
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            return super().suggest(trial_id)

    def optuna_trial(self, trial_id: str) -> Any:
        """The optuna.Trial OptunaSearch asked for Tune's trial `trial_id`, or None."""
        return self._ot_trials.get(trial_id)  # Ray internal: Tune trial id -> optuna.Trial

    def record(self, trial_id: str, result: dict) -> bool:
        """Take one epoch's result; return True when the pruner says to stop the trial."""
        ot_trial = self.optuna_trial(trial_id)
        epoch = {k: result[k] for k in names.EPOCH_KEYS if k in result}
        history = self.epochs.setdefault(trial_id, [])
        again = any(e[names.STEP] >= epoch[names.STEP] for e in history)  # restored from an older checkpoint
        history[:] = [e for e in history if e[names.STEP] < epoch[names.STEP]] + [epoch]
        try:
            if result.get(names.NODE_ID):
                ot_trial.set_user_attr(names.NODE_ID, result[names.NODE_ID])
            if not again:
                ot_trial.report(result[names.METRIC], result[names.STEP])
        except UpdateFinishedTrialError:
            return True  # another driver has failed it meanwhile (see on_trial_complete): stop it
        if names.SUMMARY_BEST_VAL_LOSS in result:  # the last epoch: nothing left to prune
            return False
        if ot_trial.should_prune():
            self.pruned.add(trial_id)
            return True
        return False

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass  # the scheduler already passed this result through `record`

    def record_error(self, trial_id: str, error: str) -> None:
        self.errors[trial_id] = error

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
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
        tune_trial = self.tune_trials.pop(trial_id, None)
        drop_checkpoints(getattr(tune_trial, "path", None))

    def tell(self, trial_id: str, ot_trial: Any, result: dict | None, error: bool) -> None:
        """Tell Optuna how the trial ended (PRUNED; FAIL with its reason; COMPLETE with its lowest val
        loss and its summary as user attributes), with its history and artifacts."""
        epochs = self.epochs.get(trial_id, [])
        ot_trial.set_user_attr(names.HISTORY, json.dumps(epochs))
        if self.artifact_dir and epochs:
            upload_learning_curve(self.artifact_dir, ot_trial, epochs)
        if trial_id in self.pruned:
            state, value = TrialState.PRUNED, None
        elif error or not result or names.SUMMARY_BEST_VAL_LOSS not in result:
            # An error, or a trial stopped before its last epoch (Ctrl-C, a stopper): not a result.
            state, value = TrialState.FAIL, None
            reason = self.errors.get(trial_id) or ("error" if error else "stopped before its last epoch")
            ot_trial.set_user_attr(names.FAIL_REASON, str(reason)[-2000:])
        elif not math.isfinite(result[names.SUMMARY_BEST_VAL_LOSS]):
            state, value = TrialState.FAIL, None
            ot_trial.set_user_attr(names.FAIL_REASON, "non-finite val loss in every epoch")
        else:
            state, value = TrialState.COMPLETE, result[names.SUMMARY_BEST_VAL_LOSS]
            for k, v in result.items():
                if k.startswith(names.SUMMARY_PREFIX) and k != names.SUMMARY_PREDICTIONS and _storable(v):
                    ot_trial.set_user_attr(k[len(names.SUMMARY_PREFIX) :], v)
            if self.artifact_dir and self.test_images and names.SUMMARY_PREDICTIONS in result:
                upload_predictions(
                    self.artifact_dir, ot_trial, json.loads(result[names.SUMMARY_PREDICTIONS]), self.test_images
                )
        self.study.tell(ot_trial, value, state=state, skip_if_finished=True)
        kept = None
        if self.keeper and state == TrialState.COMPLETE:
            kept = self.keeper.trial_done(ot_trial.number, self.model_folder(trial_id))
        if self.progress:
            self.progress(
                number=ot_trial.number,
                attrs=ot_trial.user_attrs,
                state=state.name,
                value=value,
                epochs=len(epochs),
                test_acc=(result or {}).get(names.SUMMARY_TEST_BEST_ACC),
                reason=self.errors.get(trial_id),
                kept=kept,
            )

    def model_folder(self, trial_id: str) -> str | None:
        """The local folder of a finished trial's last checkpoint (its model file), or None."""
        checkpoint = getattr(self.tune_trials.get(trial_id), "checkpoint", None)
        return checkpoint.path if checkpoint is not None and Path(checkpoint.path).is_dir() else None

    def fail_unfinished(self, reason: str) -> int:
        """After Tuner.fit returns (early on Ctrl-C), resolve this driver's trials that never
        completed and stop the heartbeats; return how many there were."""
        unfinished = [t for t in self._ot_trials if t not in self.finished]  # Ray internal: _ot_trials
        for trial_id in unfinished:
            self.errors[trial_id] = reason
            self.on_trial_complete(trial_id, error=True)
        unfinished += self._fail_orphans(reason)
        self.heartbeats.stop()
        return len(unfinished)

    def _fail_orphans(self, reason: str) -> list[int]:
        """Ctrl-C between Optuna's ask and OptunaSearch recording the trial leaves a RUNNING trial
        this searcher never saw: ours too, when no other driver has claimed it."""
        mine = {t.number for t in self._ot_trials.values()}  # Ray internal: _ot_trials
        study = self.study
        storage = study._storage  # Optuna: a loaded study's storage has no public getter
        failed = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if (
                t.number in mine
                or t.user_attrs.get(names.DRIVER) not in (None, self.driver)
                or not t.datetime_start
                or t.datetime_start.timestamp() < self.started
            ):
                continue
            trial_id = storage.get_trial_id_from_study_id_trial_number(
                storage.get_study_id_from_name(study.study_name), t.number
            )
            try:
                storage.set_trial_user_attr(trial_id, names.FAIL_REASON, reason)
                study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
                failed.append(t.number)
            except UpdateFinishedTrialError:
                pass
        return failed


class OptunaPruningScheduler(FIFOScheduler):
    def __init__(self, searcher: OptunaPruningSearch) -> None:
        super().__init__()
        self.searcher = searcher

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self.searcher.tune_trials[trial.trial_id] = trial  # its checkpoints, for the searcher
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if names.TRIAL_ERROR in result:  # the trial's own exception (tlstudy.study.trainable)
            self.searcher.record_error(trial.trial_id, result[names.TRIAL_ERROR])
            return TrialScheduler.STOP
        if self.searcher.record(trial.trial_id, result):
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        # Called before the searcher hears of the failure, with the trial's error file written
        # locally (trial.get_error() reads the synced copy, which may not be there yet).
        try:
            reason = Path(trial.error_file).read_text().strip()
        except (OSError, TypeError):
            err = trial.get_error()
            reason = f"{type(err).__name__}: {err}" if err else "error (no error file)"
        self.searcher.record_error(trial.trial_id, reason)
        super().on_trial_error(tune_controller, trial)


def _storable(v: Any) -> bool:
    """Optuna user attributes must be JSON; NaN is not."""
    if isinstance(v, float):
        return math.isfinite(v)
    return isinstance(v, (int, str, bool, list)) or v is None
