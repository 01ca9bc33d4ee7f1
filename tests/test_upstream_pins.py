"""Upstream pins: the Ray Tune and Optuna behaviour tlstudy relies on beyond their public APIs,
checked by behaviour, in one place. When Ray or Optuna changes one, a test here fails first and
says which internal moved:
- OptunaSearch creates its study in `_setup_study` and keeps `_ot_study` and `_ot_trials`
  (tlstudy.study.search puts the real pruner back there);
- Tune calls the scheduler before the searcher, with the result flattened, and skips the
  searcher's on_trial_result when the scheduler stops a trial (the pruning path);
- TPE reads a study's trials through `_get_trials` (tlstudy.study.design.CellView filters it);
- RDBStorage._get_stale_trial_ids gives the RUNNING trials unbeaten for the grace period
  (tlstudy.study.storage.resolve_abandoned);
- a trial's latest checkpoint is its `checkpoint` when the scheduler hears it completed, and a trial
  whose worker died restarts from it (tlstudy.study.trainable, the kept models).
"""

import math
import warnings
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from ray import tune
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from tlstudy.names import SUMMARY, SUMMARY_PREFIX
from tlstudy.study import design
from tlstudy.study.search import OptunaPruningSearch
from tlstudy.study.storage import ABANDONED, Heartbeats, open_storage, resolve_abandoned, trial_ids

from test_design import DISTS, A, B, trial

LR = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}


def test_optuna_search_makes_its_study_in_setup_study_and_asks_it_per_tune_trial(tmp_path):
    """The Ray internals OptunaPruningSearch uses: OptunaSearch keeps its storage as `_storage`,
    creates its study in `_setup_study` (given a space, or later through set_search_properties, as
    the runner does) with a NopPruner, keeps it as `_ot_study`, and keeps each Tune trial's
    optuna.Trial in `_ot_trials`."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    plain = OptunaSearch(space=LR, metric="val_loss", mode="min", storage=storage, study_name="plain")
    assert isinstance(plain._ot_study, optuna.Study) and isinstance(plain._ot_study.pruner, optuna.pruners.NopPruner)

    pruner = optuna.pruners.ThresholdPruner(upper=1.0)
    late = OptunaPruningSearch(
        space=None, metric="val_loss", mode="min", storage=storage, study_name="late", pruner=pruner
    )
    assert late.set_search_properties(None, None, {"lr": tune.loguniform(1e-4, 1e-1)})
    assert late._ot_study.study_name == "late" and late._ot_study.pruner is pruner
    assert late._storage is storage  # the storage whose lock suggest takes (tlstudy.study.storage.work_lock)

    config = late.suggest("tune-trial-a")
    ot_trial = late._ot_trials["tune-trial-a"]
    assert isinstance(ot_trial, optuna.Trial) and late.optuna_trial("tune-trial-a") is ot_trial
    assert ot_trial.number == 0 and config == {"lr": ot_trial.params["lr"]}


EVENTS = []  # (trial kind, what happened, detail), as the driver's Tune calls them


class RecordingSearch(Searcher):
    """Hands out a trial the scheduler stops at step 2 and one that raises at step 2."""

    def __init__(self):
        super().__init__(metric="loss", mode="min")
        self.todo, self.kind_of = ["stopped", "raises"], {}

    def suggest(self, trial_id):
        if not self.todo:
            return None
        self.kind_of[trial_id] = self.todo.pop(0)
        return {"kind": self.kind_of[trial_id]}

    def on_trial_result(self, trial_id, result):
        EVENTS.append((self.kind_of[trial_id], "searcher.on_trial_result", result["step"]))

    def on_trial_complete(self, trial_id, result=None, error=False):
        EVENTS.append((self.kind_of[trial_id], "searcher.on_trial_complete", error))


class RecordingScheduler(FIFOScheduler):
    def on_trial_result(self, tune_controller, trial, result):
        EVENTS.append((trial.config["kind"], "scheduler.on_trial_result", result["step"]))
        if result["step"] == 1:
            EVENTS.append(
                (
                    trial.config["kind"],
                    "scheduler sees the summary flattened",
                    SUMMARY_PREFIX + "acc" in result and SUMMARY not in result,
                )
            )
        return TrialScheduler.STOP if result["step"] == 2 else TrialScheduler.CONTINUE

    def on_trial_error(self, tune_controller, trial):
        EVENTS.append((trial.config["kind"], "scheduler.on_trial_error", Path(trial.error_file).is_file()))
        super().on_trial_error(tune_controller, trial)


def test_tune_asks_the_scheduler_first_and_skips_the_searcher_on_stop(tmp_path, ray_local):
    """The Tune behaviour OptunaPruningScheduler and OptunaPruningSearch rely on, seen in a real
    run: each result reaches the scheduler first, flattened ("summary/..."); the searcher hears
    it only when the scheduler does not stop the trial; a trial's error reaches the scheduler
    first, with its error file written, then the searcher's on_trial_complete(error=True)."""

    def three_steps(config):  # defined here, so that Ray ships it by value to its workers
        for step in (1, 2, 3):
            if config["kind"] == "raises" and step == 2:
                raise ValueError("a trial's error")
            tune.report({"step": step, "loss": 1 / step, SUMMARY: {"acc": 0.5}})

    EVENTS.clear()
    searcher = RecordingSearch()
    tuner = tune.Tuner(
        three_steps,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=RecordingScheduler(), num_samples=2),
        run_config=tune.RunConfig(
            storage_path=str(tmp_path), verbose=0, failure_config=tune.FailureConfig(max_failures=0)
        ),
    )
    tuner.fit()
    of = lambda kind: [e[1:] for e in EVENTS if e[0] == kind]  # noqa: E731
    assert of("stopped") == [
        ("scheduler.on_trial_result", 1),
        ("scheduler sees the summary flattened", True),
        ("searcher.on_trial_result", 1),
        ("scheduler.on_trial_result", 2),
        ("searcher.on_trial_complete", False),
    ]
    assert of("raises") == [
        ("scheduler.on_trial_result", 1),
        ("scheduler sees the summary flattened", True),
        ("searcher.on_trial_result", 1),
        ("scheduler.on_trial_error", True),
        ("searcher.on_trial_complete", True),
    ]


class CheckpointScheduler(FIFOScheduler):
    """Reads, when Tune says a trial completed, what its latest checkpoint holds."""

    def __init__(self):
        super().__init__()
        self.final = None

    def on_trial_complete(self, tune_controller, trial, result):
        self.final = (Path(trial.checkpoint.path) / "step").read_text()
        super().on_trial_complete(tune_controller, trial, result)


def test_a_restored_trial_gets_its_last_checkpoint_and_the_last_one_is_there_at_completion(tmp_path, ray_local):
    """The Tune behaviour tlstudy.study.trainable and the searcher rely on: a checkpoint reported
    with a result is the trial's `checkpoint` by the time the scheduler hears the trial completed
    (the model file is read there); after its worker died, the trial runs again on a new worker,
    whose tune.get_checkpoint() is the last one reported (FailureConfig); CheckpointConfig's
    num_to_keep=1 leaves one checkpoint folder."""
    import os
    import signal
    import tempfile

    died = tmp_path / "died"

    def three_steps(config):  # defined here, so that Ray ships it by value to its workers
        start = 1
        if (restored := tune.get_checkpoint()) is not None:
            with restored.as_directory() as folder:
                start = int((Path(folder) / "step").read_text()) + 1
        for step in range(start, 4):
            if step == 3 and not died.exists():
                died.write_text(str(start))
                os.kill(os.getpid(), signal.SIGKILL)
            with tempfile.TemporaryDirectory() as folder:
                (Path(folder) / "step").write_text(str(step))
                tune.report(
                    {"step": step, "loss": 1 / step, "start": start}, checkpoint=tune.Checkpoint.from_directory(folder)
                )

    scheduler = CheckpointScheduler()
    tuner = tune.Tuner(
        three_steps,
        tune_config=tune.TuneConfig(scheduler=scheduler, num_samples=1, metric="loss", mode="min"),
        run_config=tune.RunConfig(
            storage_path=str(tmp_path / "ray"),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=1),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )
    [result] = tuner.fit()
    assert died.read_text() == "1" and result.metrics["start"] == 3  # the second worker began at step 3
    assert scheduler.final == "3"
    assert len(list((tmp_path / "ray").glob("**/checkpoint_*"))) == 1


def test_tpe_samples_each_cell_from_its_own_trials():
    """Pins the Optuna behaviour CellView relies on: TPE reads the trials through the study it
    is given (`_get_trials`), so the view's filtering decides what it learns from."""
    rng = np.random.default_rng(0)
    history = []
    for cell, good in ((A, 1e-4), (B, 1e-2)):  # A is best at low lr, B at high lr
        for lr in np.exp(rng.uniform(math.log(1e-4), math.log(1e-2), 20)):
            history.append(trial(cell, "search", TrialState.COMPLETE, abs(math.log(lr / good)), lr=float(lr)))
    study = optuna.create_study(sampler=design.PerCellSampler(seed=0))
    for t in history:
        study.add_trial(t)
    drawn = {A: [], B: []}
    for i in range(16):
        cell = A if i % 2 else B
        study.enqueue_trial({"out_features": int(cell.split("=")[1])}, user_attrs={"cell": cell, "phase": "search"})
        t = study.ask(DISTS)
        drawn[cell].append(math.log10(t.params["lr"]))
        study.tell(t, state=TrialState.FAIL)  # keep the history as it was
    assert np.mean(drawn[A]) < -3.3 and np.mean(drawn[B]) > -2.7, drawn
    # The view shows a cell's search trials only.
    view = design.CellView(study, A)
    assert {t.user_attrs["cell"] for t in view.get_trials(states=(TrialState.COMPLETE,))} == {A}
    assert len(view._get_trials(deepcopy=False, states=(TrialState.COMPLETE,), use_cache=False)) == 20


@pytest.fixture
def quiet():
    with warnings.catch_warnings():  # "Heartbeat of storage is supposed to be used with Study.optimize"
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        yield


def test_abandoned_trials_fail_with_their_reason_and_a_live_drivers_run_on(tmp_path, quiet):
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat=1)  # grace period: 3 s
    study = optuna.create_study(study_name="s", storage=storage)
    live, dead, unbeaten, done = study.ask(), study.ask(), study.ask(), study.ask()
    study.tell(done, 1.0)
    beats = Heartbeats(storage)  # a live driver sharing the study
    beats.add("s", live.number)
    [dead_id] = trial_ids(storage, "s", [dead.number])
    storage.record_heartbeat(dead_id)  # a driver that beat once, then was killed
    # `unbeaten`: a driver killed between asking for the trial and its first heartbeat.
    try:
        assert resolve_abandoned(study, storage) == 2
    finally:
        beats.stop()
    trials = {t.number: t for t in study.get_trials()}
    assert {n: t.state for n, t in trials.items()} == {
        live.number: TrialState.RUNNING,
        dead.number: TrialState.FAIL,
        unbeaten.number: TrialState.FAIL,
        done.number: TrialState.COMPLETE,
    }
    assert {n: t.user_attrs.get("fail_reason") for n, t in trials.items()} == {
        live.number: None,
        dead.number: ABANDONED,
        unbeaten.number: ABANDONED,
        done.number: None,
    }
