"""--keep-models (tlstudy.study.keep): which trials keep their model, and a superseded model goes."""

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import Trial, create_trial
from optuna_dashboard import get_note as dashboard_note

from tlstudy.names import CHECKPOINT_MODEL_FILE
from tlstudy.study import keep

from conftest import small_model_file

# (cell, phase, val loss, test accuracy): by test, trial 3 would win; by val loss, trial 4 does.
TRIALS = [
    ("a", "search", 0.20, None),
    ("b", "search", 0.10, None),
    ("a", "replicate", 0.30, 0.70),
    ("a", "replicate", 0.50, 0.95),
    ("b", "replicate", 0.25, 0.80),
    ("b", "replicate", 0.40, 0.60),
]


def study_of(rows, storage=None):
    study = optuna.create_study(storage=storage)
    for cell, phase, value, acc in rows:
        attrs = {"cell": cell, "phase": phase, **({"test_best_acc": acc} if acc is not None else {})}
        study.add_trial(
            create_trial(
                value=value, params={"lr": 0.1}, distributions={"lr": FloatDistribution(0, 1)}, user_attrs=attrs
            )
        )
    return study


def note(study, number):
    """The trial's note in optuna-dashboard."""
    return dashboard_note(Trial(study, study.trials[number]._trial_id))


@pytest.mark.parametrize(
    "policy, kept", [("best", {4}), ("cells", {2, 4}), ("all", {0, 1, 2, 3, 4, 5}), ("none", set())]
)
def test_the_policies_keep_the_best_by_val_loss_never_by_test(policy, kept):
    assert keep.wanted(study_of(TRIALS).trials, policy) == kept


def test_without_replicates_the_best_search_trial_is_kept():
    assert keep.wanted(study_of(TRIALS[:2]).trials, "best") == {1}
    assert keep.wanted(study_of(TRIALS[:2]).trials, "cells") == {0, 1}


def test_a_new_best_supersedes_the_kept_model(tmp_path):
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    small_model_file(folder / CHECKPOINT_MODEL_FILE)
    store = tmp_path / "artifacts"
    store.mkdir()
    study = study_of(TRIALS[:3], storage=f"sqlite:///{tmp_path / 'db.sqlite'}")
    keeper = keep.Keeper(study, store, "best")
    first = keeper.trial_done(2, str(folder))  # the only replicate: the best
    assert first and set(keep.links(study)) == {2} and len(list(store.iterdir())) == 1
    study.add_trial(create_trial(value=0.25, user_attrs={"cell": "b", "phase": "replicate"}))  # trial 3
    keeper.trial_done(3, str(folder))
    assert set(keep.links(study)) == {3} and [p.name for p in store.iterdir()] == [keep.links(study)[3]["artifact_id"]]
    # The trials' notes on their dashboard pages say so.
    assert "**Kept model**: `model_trial3.safetensors`" in note(study, 3)
    assert "`model_trial2.safetensors`, was kept, then deleted" in note(study, 2)
    assert keeper.trial_done(0, str(folder)) is None  # a search trial, superseded by replicates: not kept
    assert set(keep.links(study)) == {3}
