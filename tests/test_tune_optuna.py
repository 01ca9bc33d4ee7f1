"""Optuna pruning inside Ray Tune (tlstudy.tune_optuna), and the Ray Tune behaviour it relies
on, pinned by behaviour: a Ray upgrade that changes it fails here, loudly, rather than silently
recording pruned trials as COMPLETE."""
import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from ray import tune
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from tlstudy import export
from tlstudy.result_keys import SUMMARY, SUMMARY_PREFIX
from tlstudy.tune_optuna import OptunaPruningScheduler, OptunaPruningSearch

LR = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}


class FakeTrial:
    """Only what the scheduler reads of a Tune Trial: its id."""

    def __init__(self, trial_id):
        self.trial_id = trial_id


def searcher_on(storage, pruner, **kwargs):
    s = OptunaPruningSearch(space=LR, metric="val_loss", mode="min", storage=storage, study_name="pin",
                            sampler=optuna.samplers.RandomSampler(seed=0), pruner=pruner, **kwargs)
    s.set_search_properties("val_loss", "min", {})
    return s


def test_optuna_search_makes_its_study_in_setup_study_and_asks_it_per_tune_trial(tmp_path):
    """The Ray internals OptunaPruningSearch uses: OptunaSearch creates its study in `_setup_study`
    (given a space, or later through set_search_properties, as the runner does) with a NopPruner,
    keeps it as `_ot_study`, and keeps each Tune trial's optuna.Trial in `_ot_trials`."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    plain = OptunaSearch(space=LR, metric="val_loss", mode="min", storage=storage, study_name="plain")
    assert isinstance(plain._ot_study, optuna.Study) and isinstance(plain._ot_study.pruner, optuna.pruners.NopPruner)

    pruner = optuna.pruners.ThresholdPruner(upper=1.0)
    late = OptunaPruningSearch(space=None, metric="val_loss", mode="min", storage=storage, study_name="late",
                               pruner=pruner)
    assert late.set_search_properties(None, None, {"lr": tune.loguniform(1e-4, 1e-1)})
    assert late._ot_study.study_name == "late" and late._ot_study.pruner is pruner

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
            EVENTS.append((trial.config["kind"], "scheduler sees the summary flattened",
                           SUMMARY_PREFIX + "acc" in result and SUMMARY not in result))
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
    tuner = tune.Tuner(three_steps, tune_config=tune.TuneConfig(search_alg=searcher, scheduler=RecordingScheduler(),
                                                                num_samples=2),
                       run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0,
                                                 failure_config=tune.FailureConfig(max_failures=0)))
    tuner.fit()
    of = lambda kind: [e[1:] for e in EVENTS if e[0] == kind]  # noqa: E731
    assert of("stopped") == [("scheduler.on_trial_result", 1), ("scheduler sees the summary flattened", True),
                             ("searcher.on_trial_result", 1), ("scheduler.on_trial_result", 2),
                             ("searcher.on_trial_complete", False)]
    assert of("raises") == [("scheduler.on_trial_result", 1), ("scheduler sees the summary flattened", True),
                            ("searcher.on_trial_result", 1), ("scheduler.on_trial_error", True),
                            ("searcher.on_trial_complete", True)]


def test_pruned_trial_is_recorded_pruned_with_every_epoch(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    searcher = searcher_on(storage, optuna.pruners.ThresholdPruner(upper=1.0))
    scheduler = OptunaPruningScheduler(searcher)
    searcher.suggest("a")
    results = [{"epoch": 1, "val_loss": 0.8, "train_loss": 0.9}, {"epoch": 2, "val_loss": 1.5, "train_loss": 0.7}]
    decisions = [scheduler.on_trial_result(None, FakeTrial("a"), r) for r in results]
    assert decisions == [TrialScheduler.CONTINUE, TrialScheduler.STOP]
    searcher.on_trial_complete("a", result=results[-1])
    t = optuna.load_study(study_name="pin", storage=storage).trials[0]
    assert t.state == TrialState.PRUNED and t.intermediate_values == {1: 0.8, 2: 1.5}


def test_complete_trial_value_is_its_lowest_val_loss_and_its_artifacts_read_back(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    searcher = searcher_on(storage, optuna.pruners.NopPruner(), artifact_dir=tmp_path / "artifacts",
                           test_images=(["test/0", "test/1"], [0, 1]))
    (tmp_path / "artifacts").mkdir()
    scheduler = OptunaPruningScheduler(searcher)
    searcher.suggest("b")
    predictions = {"best_loss": {"pred": [0, 1], "score": [0.2, 0.9]}, "final": {"pred": [1, 1], "score": [0.6, 0.7]}}
    last = {"epoch": 2, "val_loss": 0.6, "train_loss": 0.5, "summary/test_best_acc": 0.75, "summary/wall_s": 3.0,
            "summary/best_val_loss": 0.4, "summary/test_best_auc": float("nan"),
            "summary/predictions": json.dumps(predictions)}
    for r in ({"epoch": 1, "val_loss": 0.4, "train_loss": 0.7}, last):
        assert scheduler.on_trial_result(None, FakeTrial("b"), r) == TrialScheduler.CONTINUE
    searcher.on_trial_complete("b", result=last)
    study = optuna.load_study(study_name="pin", storage=storage)
    t = study.trials[0]
    assert t.state == TrialState.COMPLETE and t.value == pytest.approx(0.4)
    assert t.user_attrs["test_best_acc"] == 0.75 and "test_best_auc" not in t.user_attrs  # NaN is not JSON
    assert "predictions" not in t.user_attrs  # an artifact, not an attribute
    assert [e["epoch"] for e in json.loads(t.user_attrs["history"])] == [1, 2]
    # The predictions artifact, read back through the stored study (tlstudy.artifacts.read_predictions).
    rows = export.predictions_frame(study, tmp_path / "artifacts")
    assert rows[["checkpoint", "image_id", "label", "pred", "score"]].values.tolist() == [
        ["best_loss", "test/0", 0, 0, 0.2], ["best_loss", "test/1", 1, 1, 0.9],
        ["final", "test/0", 0, 1, 0.6], ["final", "test/1", 1, 1, 0.7]]
    assert set(rows.study) == {"pin"} and set(rows.number) == {0}


def test_unfinished_trials_fail_with_a_reason(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    searcher = searcher_on(storage, optuna.pruners.NopPruner())
    searcher.suggest("c")
    searcher.fail_unfinished("interrupted")
    t = optuna.load_study(study_name="pin", storage=storage).trials[0]
    assert t.state == TrialState.FAIL and t.user_attrs["fail_reason"] == "interrupted"
