"""A study driver that stops itself at a named point of its run, whatever the machine's speed.

    python tests/stopping_driver.py POINT ACTION MARKER -- tlstudy-run-flags...

POINT, a point every run of a study reaches:
- opened: the study is open and its data loaded, before Ray Tune starts;
- first-running: the first trial has reported its second epoch (nothing COMPLETE yet);
- next-running: a trial has reported its second epoch while another is COMPLETE;
- first-complete: the searcher has told Optuna of the first COMPLETE trial;
- round-2-complete: ... of the first COMPLETE replicate of --seeds auto's second round;
- reporting: every trial has finished and the driver starts its exports.
- worker-epoch-3: not the driver but a trial's worker, once: it SIGKILLs itself as it starts its
  third epoch on its first attempt (ACTION sigkill; MARKER records its pid), as a node lost mid-trial
  would; Tune restores the trial from its last checkpoint on a new worker, which runs to the end.
ACTION:
- sigint: the driver sends itself SIGINT, as Ctrl-C in its terminal would;
- hold: the driver writes MARKER and waits there, in the middle of its work, for the test to
  SIGKILL it (and its Ray, which shares its session) as a crash would.

The tests used to poll the storage and signal the driver when they saw a state, which raced
the trials: a fast machine finished the whole study first. Here the driver stops itself.
"""

import os
import signal
import sys
import threading
import time
from pathlib import Path

from optuna.trial import TrialState

from tlstudy import cli
from tlstudy.analysis import report
from tlstudy.study import runner, search


def stop_here(action, marker):
    if action == "sigint":
        # To this thread (the main one, where Python's handler raises KeyboardInterrupt), where
        # os.kill's process-wide SIGINT may reach any of Ray's threads first.
        handler = signal.getsignal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)
        # Here only when the signal raised nothing: once in a full-suite run the driver ran on to the
        # end (a SIGINT handler other than Python's, or none?). Say what it was, then stop as Ctrl-C
        # stops a driver whose handler is Python's.
        print(f"stopping_driver: SIGINT raised nothing (handler {handler!r}, thread {threading.current_thread().name})")
        raise KeyboardInterrupt
    Path(marker).write_text(str(os.getpid()))
    while True:  # held until the test kills the driver's process group
        time.sleep(60)


def complete(searcher):
    return searcher._ot_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def install(point, action, marker):
    stop = lambda *args, **kwargs: stop_here(action, marker)  # noqa: E731
    if point == "opened":
        runner.run_trials = stop
    elif point == "reporting":
        report.report_run = stop
    elif point in ("first-running", "next-running"):
        record = search.OptunaPruningSearch.record

        def record_then_stop(self, trial_id, result):
            prune = record(self, trial_id, result)
            if result["epoch"] == 2 and bool(complete(self)) == (point == "next-running"):
                stop()
            return prune

        search.OptunaPruningSearch.record = record_then_stop
    elif point == "first-complete":
        told = search.OptunaPruningSearch.on_trial_complete

        def tell_then_stop(self, trial_id, result=None, error=False):
            told(self, trial_id, result=result, error=error)
            if complete(self):
                stop()

        search.OptunaPruningSearch.on_trial_complete = tell_then_stop
    elif point == "round-2-complete":
        told = search.OptunaPruningSearch.on_trial_complete

        def tell_then_stop_in_round_2(self, trial_id, result=None, error=False):
            told(self, trial_id, result=result, error=error)
            if any(t.user_attrs.get("round") == 2 for t in complete(self)):
                stop()

        search.OptunaPruningSearch.on_trial_complete = tell_then_stop_in_round_2
    elif point == "worker-epoch-3":
        runner.trainable = dying_trainable(marker, runner.trainable)
    else:
        raise SystemExit(f"unknown point {point}")


def dying_trainable(marker, trainable):
    """The trainable, whose worker kills itself at its third epoch unless MARKER says it did already.
    Defined here, in __main__, so that Ray ships it to the worker by value."""

    def trainable_that_dies_once(config, data):
        from tlstudy.training import loop

        if not os.path.exists(marker):
            train_epoch, started = loop.train_epoch, []

            def train_epoch_or_die(*args, **kwargs):
                started.append(1)
                if len(started) == 3:
                    Path(marker).write_text(str(os.getpid()))
                    os.kill(os.getpid(), signal.SIGKILL)
                return train_epoch(*args, **kwargs)

            loop.train_epoch = train_epoch_or_die
        return trainable(config, data)

    return trainable_that_dies_once


if __name__ == "__main__":
    point, action, marker, sep, *flags = sys.argv[1:]
    assert sep == "--", sys.argv
    install(point, action, marker)
    sys.exit(cli.main(["run", *flags]))
