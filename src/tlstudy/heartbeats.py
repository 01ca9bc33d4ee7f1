"""Heartbeats: how drivers sharing a study tell a dead driver's trials from a live one's.

A driver records a heartbeat for each trial it runs, every `--heartbeat` seconds (SQL
storages: tlstudy.storage.open_storage gives them an interval and a grace period of
three beats). Optuna's own heartbeat thread runs only inside Study.optimize, and Ray
Tune drives the study through ask and tell, so the searcher (tlstudy.tune_optuna)
keeps them itself, with `Heartbeats`.

A driver that starts resolves what earlier drivers left RUNNING (`resolve_abandoned`):
with heartbeats, the trials nobody beats through the grace period, so the trials of
another live driver on the same study are left alone; without them (a journal file),
every RUNNING trial, so one driver at a time. Each is marked FAIL with its fail_reason
ABANDONED, and its cell runs again.
"""
import threading
import time
import warnings

from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from tlstudy.result_keys import FAIL_REASON

ABANDONED = "left RUNNING by a driver that stopped"


def interval(storage):
    """Seconds between heartbeats, or None for a storage without them (a journal file, --heartbeat 0)."""
    get = getattr(storage, "get_heartbeat_interval", None)  # RDBStorage has it, a JournalStorage not
    return get() if get else None


def trial_ids(storage, study_name, numbers):
    """The storage's ids of the study's trials `numbers`."""
    study_id = storage.get_study_id_from_name(study_name)
    return [storage.get_trial_id_from_study_id_trial_number(study_id, n) for n in numbers]


class Heartbeats:
    """Beats for the trials this driver runs, in a daemon thread, every `interval(storage)`
    seconds; nothing at all for a storage without heartbeats."""

    def __init__(self, storage):
        self.storage = storage
        self.interval = interval(storage)
        self.beating = {}  # trial number -> trial id, of the trials to beat
        self.stop_event = None  # the thread's, once it runs

    def add(self, study_name, number):
        """Beat trial `number` now, and every interval until `discard(number)`."""
        if not self.interval:
            return
        [trial_id] = trial_ids(self.storage, study_name, [number])
        self.storage.record_heartbeat(trial_id)
        self.beating[number] = trial_id
        if self.stop_event is None:
            self.stop_event = threading.Event()
            threading.Thread(target=self.beat_until, args=(self.stop_event,), daemon=True).start()

    def discard(self, number):
        self.beating.pop(number, None)

    def stop(self):
        if self.stop_event is not None:
            self.stop_event.set()

    def beat_until(self, stop):
        """The thread's loop: beat every trial in `beating`, every interval, until `stop` is set."""
        while not stop.wait(self.interval):
            for number, trial_id in list(self.beating.items()):
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception as e:  # a busy database: the grace period covers a missed beat
                    warnings.warn(f"heartbeat of trial {number} not recorded: {e}")

    def __getstate__(self):
        # Tune checkpoints its searcher by pickling it, this included; a threading.Event cannot be
        # pickled. A searcher restored from it starts a thread of its own at its first trial.
        return {**self.__dict__, "stop_event": None}


def resolve_abandoned(study, storage):
    """Mark FAIL the trials a crashed or killed driver left RUNNING: they will never report
    again. Returns how many were failed."""
    running = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    stale = trial_ids(storage, study.study_name, running)
    if stale and interval(storage):
        # A driver killed between asking for a trial and its first heartbeat left a trial that
        # would never turn stale: beat each once, then see which their driver keeps beating.
        for trial_id in stale:
            storage.record_heartbeat(trial_id)
        print(f"{len(stale)} trials RUNNING: waiting up to {storage.grace_period} s for their driver's heartbeat",
              flush=True)
        deadline = time.time() + storage.grace_period + 2  # the database clock counts whole seconds
        while time.time() < deadline and any(storage.get_trial(i).state == TrialState.RUNNING for i in stale):
            time.sleep(1)
        # Private, for want of a public way: Optuna's public optuna.storages.fail_stale_trials fails
        # these trials first and calls back after, and a finished trial's user attributes are
        # read-only (UpdateFinishedTrialError), so its fail_reason could not be recorded. Pinned
        # by tests/test_heartbeats.py.
        stale = storage._get_stale_trial_ids(storage.get_study_id_from_name(study.study_name))
    failed = 0
    for trial_id in stale:
        try:
            storage.set_trial_user_attr(trial_id, FAIL_REASON, ABANDONED)
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
            failed += 1
        except UpdateFinishedTrialError:
            pass  # its driver, or another one, resolved it meanwhile
    return failed
