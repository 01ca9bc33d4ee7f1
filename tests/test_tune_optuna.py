"""Pins the Ray Tune internals tlstudy.tune_optuna relies on, so that a Ray upgrade that breaks
them fails here, loudly, rather than silently recording pruned trials as COMPLETE."""
import inspect

import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.execution.tune_controller import TuneController
from ray.tune.schedulers import TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from tlstudy.tune_optuna import OptunaPruningScheduler, OptunaPruningSearch


class FakeTrial:
    """Only what the scheduler reads of a Tune Trial: its id."""

    def __init__(self, trial_id):
        self.trial_id = trial_id


def searcher_on(storage, pruner):
    s = OptunaPruningSearch(space={"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)},
                            metric="val_loss", mode="min", storage=storage, study_name="pin",
                            sampler=optuna.samplers.RandomSampler(seed=0), pruner=pruner)
    s.set_search_properties("val_loss", "min", {})
    return s


def test_optuna_search_internals_still_exist():
    src = inspect.getsource(OptunaSearch)
    # NopPruner hard-coded in _setup_study, which we override to put the real pruner back.
    assert "def _setup_study" in src and "NopPruner" in inspect.getsource(OptunaSearch._setup_study)
    assert "self._ot_trials" in src and "self._ot_study" in src and "self._completed_trials" in src


def test_controller_asks_the_scheduler_first_and_skips_the_searcher_on_stop():
    src = inspect.getsource(TuneController._process_trial_result)
    sched, search = src.index("_scheduler_alg.on_trial_result"), src.index("_search_alg.on_trial_result")
    assert sched < search
    assert "if decision == TrialScheduler.STOP" in src
    # On an error, the scheduler hears first, with the trial's error already set.
    fail = inspect.getsource(TuneController._process_trial_failure)
    assert fail.index("trial.handle_error") < fail.index("_scheduler_alg.on_trial_error") < \
        fail.index("_search_alg.on_trial_complete")


def test_pruned_trial_is_recorded_pruned_with_every_epoch(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    searcher = searcher_on(storage, optuna.pruners.ThresholdPruner(upper=1.0))
    scheduler = OptunaPruningScheduler(searcher)
    assert searcher._ot_study.pruner is searcher._pruner
    searcher.suggest("a")
    results = [{"epoch": 1, "val_loss": 0.8, "train_loss": 0.9}, {"epoch": 2, "val_loss": 1.5, "train_loss": 0.7}]
    decisions = [scheduler.on_trial_result(None, FakeTrial("a"), r) for r in results]
    assert decisions == [TrialScheduler.CONTINUE, TrialScheduler.STOP]
    searcher.on_trial_complete("a", result=results[-1])
    t = optuna.load_study(study_name="pin", storage=storage).trials[0]
    assert t.state == TrialState.PRUNED and t.intermediate_values == {1: 0.8, 2: 1.5}


def test_complete_trial_value_is_its_lowest_val_loss(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    searcher = searcher_on(storage, optuna.pruners.NopPruner())
    scheduler = OptunaPruningScheduler(searcher)
    searcher.suggest("b")
    last = {"epoch": 2, "val_loss": 0.6, "summary/test_best_acc": 0.75, "summary/wall_s": 3.0, "summary/best_val_loss": 0.4,
            "summary/test_best_auc": float("nan")}
    for r in ({"epoch": 1, "val_loss": 0.4}, last):
        assert scheduler.on_trial_result(None, FakeTrial("b"), r) == TrialScheduler.CONTINUE
    searcher.on_trial_complete("b", result=last)
    t = optuna.load_study(study_name="pin", storage=storage).trials[0]
    assert t.state == TrialState.COMPLETE and t.value == pytest.approx(0.4)
    assert t.user_attrs["test_best_acc"] == 0.75 and "test_best_auc" not in t.user_attrs  # NaN is not JSON


def test_unfinished_trials_fail_with_a_reason(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    searcher = searcher_on(storage, optuna.pruners.NopPruner())
    searcher.suggest("c")
    searcher.fail_unfinished("interrupted")
    t = optuna.load_study(study_name="pin", storage=storage).trials[0]
    assert t.state == TrialState.FAIL and t.user_attrs["fail_reason"] == "interrupted"
