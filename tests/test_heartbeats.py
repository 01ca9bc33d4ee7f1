"""Heartbeats (tlstudy.heartbeats): a new driver fails the trials a dead driver left RUNNING, with
their reason, and leaves those of a live driver alone. This also pins, by behaviour, the Optuna
internal it relies on (RDBStorage._get_stale_trial_ids: the RUNNING trials unbeaten for the
grace period)."""
import pickle
import warnings

import optuna
import pytest
from optuna.trial import TrialState

from tlstudy.heartbeats import ABANDONED, Heartbeats, resolve_abandoned, trial_ids
from tlstudy.storage import open_storage


@pytest.fixture(autouse=True)
def quiet():
    with warnings.catch_warnings():  # "Heartbeat of storage is supposed to be used with Study.optimize"
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        yield


def test_abandoned_trials_fail_with_their_reason_and_a_live_drivers_run_on(tmp_path):
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
    assert {n: t.state for n, t in trials.items()} == {live.number: TrialState.RUNNING, dead.number: TrialState.FAIL,
                                                       unbeaten.number: TrialState.FAIL,
                                                       done.number: TrialState.COMPLETE}
    assert {n: t.user_attrs.get("fail_reason") for n, t in trials.items()} == {
        live.number: None, dead.number: ABANDONED, unbeaten.number: ABANDONED, done.number: None}


def test_without_heartbeats_every_running_trial_is_abandoned(tmp_path):
    storage = open_storage(str(tmp_path / "journal.log"))  # a journal file: no heartbeats
    study = optuna.create_study(study_name="j", storage=storage)
    running, done = study.ask(), study.ask()
    study.tell(done, 1.0)
    assert resolve_abandoned(study, storage) == 1
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[0].user_attrs["fail_reason"] == ABANDONED and running.number == 0


def test_heartbeats_survive_tunes_checkpoint_of_the_searcher(tmp_path):
    """Tune pickles its searcher, heartbeats included, while they beat; the copy beats nothing yet."""
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat=1)
    study = optuna.create_study(study_name="s", storage=storage)
    beats = Heartbeats(storage)
    beats.add("s", study.ask().number)
    try:
        copy = pickle.loads(pickle.dumps(beats))
    finally:
        beats.stop()
    assert copy.stop_event is None and copy.beating == beats.beating and copy.interval == 1
    assert Heartbeats(open_storage(str(tmp_path / "journal.log"))).interval is None
