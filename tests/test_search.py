"""Optuna pruning inside Ray Tune (tlstudy.study.search): what the searcher tells Optuna of a
pruned, a COMPLETE and an unfinished trial, and the artifacts it leaves. The Ray Tune behaviour
it relies on is pinned in tests/test_upstream_pins.py."""

import json
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.schedulers import TrialScheduler

from tlstudy.analysis import export
from tlstudy.study.search import OptunaPruningScheduler, OptunaPruningSearch
from tlstudy.study.storage import open_storage

LR = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}


class FakeTrial:
    """Only what the scheduler reads of a Tune Trial: its id."""

    def __init__(self, trial_id):
        self.trial_id = trial_id


def searcher_on(storage, pruner, **kwargs):
    s = OptunaPruningSearch(
        space=LR,
        metric="val_loss",
        mode="min",
        storage=storage,
        study_name="pin",
        sampler=optuna.samplers.RandomSampler(seed=0),
        pruner=pruner,
        **kwargs,
    )
    s.set_search_properties("val_loss", "min", {})
    return s


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
    searcher = searcher_on(
        storage,
        optuna.pruners.NopPruner(),
        artifact_dir=tmp_path / "artifacts",
        test_images=(["test/0", "test/1"], [0, 1]),
    )
    (tmp_path / "artifacts").mkdir()
    scheduler = OptunaPruningScheduler(searcher)
    searcher.suggest("b")
    predictions = {"best_loss": {"pred": [0, 1], "score": [0.2, 0.9]}, "final": {"pred": [1, 1], "score": [0.6, 0.7]}}
    last = {
        "epoch": 2,
        "val_loss": 0.6,
        "train_loss": 0.5,
        "summary/test_best_acc": 0.75,
        "summary/wall_s": 3.0,
        "summary/best_val_loss": 0.4,
        "summary/test_best_auc": float("nan"),
        "summary/predictions": json.dumps(predictions),
    }
    for r in ({"epoch": 1, "val_loss": 0.4, "train_loss": 0.7}, last):
        assert scheduler.on_trial_result(None, FakeTrial("b"), r) == TrialScheduler.CONTINUE
    searcher.on_trial_complete("b", result=last)
    study = optuna.load_study(study_name="pin", storage=storage)
    t = study.trials[0]
    assert t.state == TrialState.COMPLETE and t.value == pytest.approx(0.4)
    assert t.user_attrs["test_best_acc"] == 0.75 and "test_best_auc" not in t.user_attrs  # NaN is not JSON
    assert "predictions" not in t.user_attrs  # an artifact, not an attribute
    assert [e["epoch"] for e in json.loads(t.user_attrs["history"])] == [1, 2]
    # The predictions artifact, read back through the stored study (tlstudy.analysis.export.read_predictions).
    rows = export.predictions_frame(study, tmp_path / "artifacts")
    assert rows[["checkpoint", "image_id", "label", "pred", "score"]].values.tolist() == [
        ["best_loss", "test/0", 0, 0, 0.2],
        ["best_loss", "test/1", 1, 1, 0.9],
        ["final", "test/0", 0, 1, 0.6],
        ["final", "test/1", 1, 1, 0.7],
    ]
    assert set(rows.study) == {"pin"} and set(rows.number) == {0}


def test_unfinished_trials_fail_with_a_reason(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    searcher = searcher_on(storage, optuna.pruners.NopPruner())
    searcher.suggest("c")
    searcher.fail_unfinished("interrupted")
    t = optuna.load_study(study_name="pin", storage=storage).trials[0]
    assert t.state == TrialState.FAIL and t.user_attrs["fail_reason"] == "interrupted"


RACE = """
import os, sys, time
from pathlib import Path
import optuna
from tlstudy.spaces import Cell
from tlstudy.study.search import OptunaPruningSearch
from tlstudy.study.storage import open_storage

url, go, name = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
optuna.logging.set_verbosity(optuna.logging.WARNING)
cells = [Cell.of({"out_features": o}) for o in (2, 3)]
s = OptunaPruningSearch(space={"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)},
                        metric="val_loss", mode="min", storage=open_storage(url), url=url, study_name=name,
                        sampler=optuna.samplers.RandomSampler(), plan=(cells, 12, 1))
s.set_search_properties("val_loss", "min", {})
Path(f"{go}.{os.getpid()}").touch()  # ready
while not go.exists():
    time.sleep(0.01)
n = 0
while s.suggest(f"t{n}") is not None:  # None: every search trial is taken, the replicates wait
    n += 1
    time.sleep(0.005)  # a driver does other work between asks: the other one gets the lock
print(n)
"""


def race_for_work(url, tmp_path, name="shared"):
    """Two drivers' searchers on one study ask for work at the same moment, until every search trial
    is taken: the trials they took, and the trials stored."""
    import subprocess
    import sys

    go = tmp_path / "go"
    optuna.create_study(study_name=name, storage=open_storage(url))
    procs = [subprocess.Popen([sys.executable, "-c", RACE, url, str(go), name], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    deadline = time.time() + 120
    while not all(Path(f"{go}.{p.pid}").exists() for p in procs):  # both have made their searcher
        assert time.time() < deadline and all(p.poll() is None for p in procs), "a driver did not start"
        time.sleep(0.05)
    go.touch()
    taken = [int(p.communicate(timeout=300)[0]) for p in procs]
    return taken, optuna.load_study(study_name=name, storage=open_storage(url)).trials


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_drivers_sharing_a_study_take_each_trial_of_the_design_once(tmp_path, kind):
    """Each driver reads what the study lacks, enqueues it and asks for it under the study's work
    lock, so no cell gets a search trial more than its budget. Without the lock both read the same
    gap and both fill it: with the lock taken out, 4 of 6 runs here (3 storages, twice) failed."""
    url = f"sqlite:///{tmp_path / 's.db'}" if kind == "sqlite" else f"journal:{tmp_path / 's.log'}"
    taken, trials = race_for_work(url, tmp_path)
    assert sorted(t.user_attrs["cell"] for t in trials) == ["out_features=2"] * 12 + ["out_features=3"] * 12
    assert sum(taken) == 24 and min(taken) > 0, taken  # both drivers took work, and together all of it
