"""Heartbeats (tlstudy.study.storage): without heartbeats (a journal file) a new driver fails every
trial left RUNNING, with its reason. With them, see tests/test_upstream_pins.py, which pins the
Optuna internal it relies on."""

import optuna
from optuna.trial import TrialState

from tlstudy.study.storage import ABANDONED, open_storage, resolve_abandoned


def test_without_heartbeats_every_running_trial_is_abandoned(tmp_path):
    storage = open_storage(str(tmp_path / "journal.log"))  # a journal file: no heartbeats
    study = optuna.create_study(study_name="j", storage=storage)
    running, done = study.ask(), study.ask()
    study.tell(done, 1.0)
    assert resolve_abandoned(study, storage) == 1
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[0].user_attrs["fail_reason"] == ABANDONED and running.number == 0
