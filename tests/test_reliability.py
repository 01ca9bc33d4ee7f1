"""A study survives a driver killed at several points, failing trials, and optuna-dashboard reading alongside.

Every study here runs `study/run.py` in a subprocess of its own session on tiny phantom
data, so that SIGKILL can take the driver and its Ray processes down together, as a
crash would.
"""

import ipaddress
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pandas as pd
import psutil
import pytest
from optuna.trial import TrialState

from conftest import ROOT, SMALL_SPACE, TINY, free_port, kill_group, run_to_end, start, write_space
from conftest import load_study as load

# Heartbeats every second: a killed driver's trials are recognised after 3 s, not 30.
FAST = ["--num-cpus", "1", "--max-concurrent", "1", "--heartbeat", "1", "--pruner", "none"]

# One cell trains; in the other the learning rate drives the training loss to NaN in epoch 1.
FAULTY_SPACE = '''"""One good cell, one whose learning rate makes the loss non-finite."""
from ray import tune
FIXED = dict(arch="resnet18", weights="none", optimizer="sgd", batch_size=16, schedule="none")
CELLS = [dict(lr=1e-3), dict(lr=1e8)]
PARAM_SPACE = {"lr": tune.choice([1e-3, 1e8]), "momentum": tune.uniform(0.8, 0.95)}
'''


def trials_of(results, name):
    try:
        return load(results, name).trials
    except Exception:  # the file, its tables or the study may not exist yet
        return None


def start_stopping_at(tmp_path, point, args, log):
    """A driver that stops at `point` (tests/stopping_driver.py) and holds there for the kill."""
    marker = tmp_path / "held"
    marker.unlink(missing_ok=True)
    return subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "stopping_driver.py"), point, "hold", str(marker), "--", *args],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    ), marker


def wait_held(proc, marker, timeout=300):
    """Wait for the driver to reach its stopping point (it writes the marker and holds there)."""
    deadline = time.time() + timeout
    while not marker.exists():
        assert proc.poll() is None, f"the driver ended (status {proc.returncode}) before its stopping point"
        assert time.time() < deadline, f"the driver did not reach its stopping point within {timeout} s"
        time.sleep(0.2)


def listening(pgid):
    """The addresses that the processes of this process group listen on."""
    found = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid:
                found += [c.laddr.ip for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN]
        except (psutil.Error, ProcessLookupError):
            pass  # gone meanwhile
    return found


def loopback(address):
    ip = ipaddress.ip_address(address)
    return ip.is_loopback or bool(getattr(ip, "ipv4_mapped", None) and ip.ipv4_mapped.is_loopback)


def cell_of(t):
    return t.params["out_features"], t.user_attrs["phase"]


def count(trials, state):
    return sum(t.state == state for t in trials)


# Kill points (tests/stopping_driver.py): the driver holds there, the test SIGKILLs it and its Ray.
KILL_POINTS = ["opened", "first-running", "next-running", "reporting"]


def test_driver_killed_at_four_points_loses_nothing_and_repeats_nothing(tmp_path):
    write_space(tmp_path, "small", SMALL_SPACE)
    results = tmp_path / "results"
    # Per cell one search trial (the protocol) and one replicate: four trials in two phases.
    args = ["--space", "small", "--results", str(results), *TINY, *FAST, "--budget", "1", "--seeds", "1"]
    finished, killed_running = {}, set()
    for point in KILL_POINTS:
        with open(tmp_path / "driver.log", "a") as log:
            proc, marker = start_stopping_at(tmp_path, point, args, log)
            try:
                wait_held(proc, marker)
                if point != "opened":  # Ray is up: it must listen on loopback only
                    addresses = listening(proc.pid)
                    assert addresses and all(loopback(a) for a in addresses), addresses
            finally:
                kill_group(proc)
        trials = load(results, "small").trials  # as the kill left them
        running = [sorted(t.intermediate_values) for t in trials if t.state == TrialState.RUNNING]
        if point in ("first-running", "next-running"):  # one trial at a time, killed after its epoch 2
            assert running == [[1, 2]], running
        if point == "reporting":
            assert count(trials, TrialState.COMPLETE) == 4 and not running
        finished.update({t.number: t.value for t in trials if t.state == TrialState.COMPLETE})
        killed_running |= {t.number for t in trials if t.state == TrialState.RUNNING}
    assert killed_running, "no kill point caught a trial RUNNING"

    # The same command, once more, to the end.
    run_to_end(tmp_path, lambda log: start(tmp_path, args, log))

    study = load(results, "small")
    by_number = {t.number: t for t in study.trials}
    # Every trial that had finished is still there, as it was.
    for n, value in finished.items():
        assert by_number[n].state == TrialState.COMPLETE and by_number[n].value == value
    # The trials the kills left RUNNING were resolved: FAIL, with the reason.
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for n in killed_running:
        assert by_number[n].state == TrialState.FAIL
        assert "driver that stopped" in by_number[n].user_attrs["fail_reason"]
    # None ran twice: per cell one search trial and one replicate.
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert sorted(cell_of(t) for t in done) == [(2, "replicate"), (2, "search"), (3, "replicate"), (3, "search")]
    # The exports agree with the storage.
    table = pd.read_csv(results / "small" / "trials.csv").set_index("number")
    assert sorted(table.index) == sorted(by_number)
    assert {n: table.loc[n, "state"] for n in by_number} == {n: t.state.name for n, t in by_number.items()}
    epochs = pd.read_csv(results / "small" / "epochs.csv")
    for t in done:
        assert epochs[epochs.number == t.number].epoch.tolist() == [1, 2, 3]


def test_failing_trials_are_contained_and_retried_while_optuna_dashboard_polls(tmp_path):
    """A trial whose loss goes NaN ends FAIL with its reason, is retried --max-retries times,
    and the study goes on; optuna-dashboard polls the SQLite file throughout (issue 545)."""
    write_space(tmp_path, "faulty", FAULTY_SPACE)
    results = tmp_path / "results"
    port = free_port()
    log = open(tmp_path / "driver.log", "w")
    proc = start(
        tmp_path,
        [
            "--space",
            "faulty",
            "--results",
            str(results),
            *TINY,
            *FAST,
            "--max-retries",
            "1",
            "--budget",
            "1",
            "--seeds",
            "1",
            "--allow-failures",
        ],
        log,
    )
    dashboard, polls = None, []
    try:
        while not (trials_of(results, "faulty") if (results / "optuna.db").exists() else None):
            assert proc.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            time.sleep(0.2)  # a trial exists: the study is open for optuna-dashboard to read
        dashboard = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "optuna-dashboard"),
                f"sqlite:///{results / 'optuna.db'}",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        study_id = load(results, "faulty")._study_id
        while proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{study_id}?after=0", timeout=30) as r:
                    polls.append((r.status, len(json.load(r)["trials"])))
            except urllib.error.HTTPError as e:
                polls.append((e.code, e.read().decode()[-300:]))
            except OSError:  # not listening yet
                assert not polls, "optuna-dashboard stopped answering"
            time.sleep(0.1)
        assert proc.returncode == 0
    finally:
        kill_group(proc)
        log.close()
        if dashboard:
            dashboard.terminate()
            dashboard.wait(timeout=30)
    out = (tmp_path / "driver.log").read_text()
    assert "database is locked" not in out and "database is locked" not in dashboard.stderr.read()
    assert len(polls) >= 20 and all(status == 200 for status, _ in polls), polls[-3:]

    trials = load(results, "faulty").trials
    good = [t for t in trials if t.params["lr"] == 1e-3]
    bad = [t for t in trials if t.params["lr"] == 1e8]
    assert [t.state for t in good] == [TrialState.COMPLETE, TrialState.COMPLETE]  # the search trial, a replicate
    assert [t.state for t in bad] == [TrialState.FAIL, TrialState.FAIL]  # the first try and one retry
    for t in bad:
        assert "FloatingPointError: non-finite training loss" in t.user_attrs["fail_reason"]
    assert "retry 1 of 1" in out
    assert "failed trials: 2 (2 in this run)" in out and "2 x FloatingPointError" in out
    # --allow-failures: the cell without replicates is a warning, named, and the run exits 0.
    assert "WARNING: 1 cells ended without 1 COMPLETE replicates" in out and "lr=100000000.0" in out


def _open_at(url, barrier, queue):
    from tlstudy.study.storage import open_storage

    barrier.wait()
    try:
        open_storage(url)
        queue.put("ok")
    except BaseException as e:  # report, do not hang the parent
        queue.put(repr(e))


def test_processes_opening_a_new_sqlite_storage_at_once_all_succeed(tmp_path):
    """Optuna creates its tables and stamps their version on first open; a driver and
    optuna-dashboard (or a test polling) opening a new file at once raced there."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    outcomes = []
    for round_ in range(6):
        barrier, queue = ctx.Barrier(3), ctx.Queue()
        url = f"sqlite:///{tmp_path / f'race{round_}.db'}"
        procs = [ctx.Process(target=_open_at, args=(url, barrier, queue)) for _ in range(3)]
        for p in procs:
            p.start()
        outcomes += [queue.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        assert optuna.get_all_study_summaries(url) == []
    assert outcomes == ["ok"] * 18, [o for o in outcomes if o != "ok"]


ONE_TRIAL = SMALL_SPACE.replace(
    "CELLS = [dict(out_features=2), dict(out_features=3)]", "CELLS = [dict(out_features=2)]"
)


@pytest.mark.slow
def test_a_trial_whose_worker_dies_in_epoch_3_continues_there_with_the_same_val_losses(tmp_path):
    """The trial's worker SIGKILLs itself as its third epoch starts (tests/stopping_driver.py, first
    attempt only): Tune restores it from its epoch-2 checkpoint on a new worker, Optuna hears each
    epoch once, and the val losses are bit for bit those of the same trial run uninterrupted."""
    import torch

    from tlstudy.settings import TrialConfig
    from tlstudy.training import loop

    from conftest import load_data

    write_space(tmp_path, "one", ONE_TRIAL)
    results, marker = tmp_path / "results", tmp_path / "died"
    tiny = [*TINY[:-1], "5"]  # 5 epochs (StepLR drops after 3: the schedule's state is resumed too)
    args = ["--space", "one", "--results", str(results), *tiny, *FAST, "--budget", "1", "--seeds", "0"]
    driver = [sys.executable, str(ROOT / "tests" / "stopping_driver.py"), "worker-epoch-3", "sigkill", str(marker)]
    run_to_end(
        tmp_path,
        lambda log: subprocess.Popen(
            [*driver, "--", *args], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        ),
    )
    out = (tmp_path / "driver.log").read_text()
    assert marker.exists(), out[-3000:]  # the worker did die
    assert "#0: its worker died after epoch 2; Tune restarts it from its last checkpoint (retry 1 of 1" in out
    [t] = load(results, "one").trials
    assert t.state == TrialState.COMPLETE, t.user_attrs.get("fail_reason")
    assert t.user_attrs["resumed_at"] == [3]  # not 1: the new worker started from epoch 2's state
    history = json.loads(t.user_attrs["history"])
    assert [e["epoch"] for e in history] == sorted(t.intermediate_values) == [1, 2, 3, 4, 5]

    # The same trial uninterrupted, in this process, on one thread as the 1-CPU trial ran.
    config = TrialConfig(**{**load(results, "one").user_attrs["base_config"], **t.params, "train_seed": 0})
    data = load_data("phantom", 16, phantom_sizes=(48, 40, 40), max_train=48)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        uninterrupted = [rec["val_loss"] for rec in loop.fit(config, data)]
    finally:
        torch.set_num_threads(threads)
    assert [e["val_loss"] for e in history] == uninterrupted
    assert [t.intermediate_values[e] for e in range(1, 6)] == uninterrupted
    # Its checkpoints went with it; the study's best model stays, as a model file.
    assert not list((results / "ray").glob("**/checkpoint_*"))
    assert len(list((results / "artifacts").iterdir())) == 2  # its learning curve and its model
