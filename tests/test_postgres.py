"""Studies in PostgreSQL: reopened from another process, and two drivers at once on one study.

Needs a server: TLSTUDY_TEST_POSTGRES=postgresql://USER@127.0.0.1:PORT/DB (`.ci/run` starts
a throwaway one and sets it). Without it these tests skip, saying so.
"""

import functools
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid

import optuna
import pytest
from optuna.trial import TrialState

from test_search import race_for_work
from tlstudy.study.storage import open_storage

from conftest import ROOT, SMALL_SPACE, TINY, kill_group, run_to_end, write_space

URL = os.environ.get("TLSTUDY_TEST_POSTGRES")
pytestmark = pytest.mark.skipif(
    not URL, reason="no PostgreSQL server: set TLSTUDY_TEST_POSTGRES=postgresql://... (.ci/run starts one)"
)
# Two drivers on 2 cores: heartbeats every 2 s, so a busy machine does not pass for a dead driver.
BOTH = ["--num-cpus", "1", "--max-concurrent", "1", "--heartbeat", "2", "--pruner", "none"]


@pytest.fixture
def study_name():
    """A study of its own in the shared database, deleted afterwards."""
    name = f"small-{uuid.uuid4().hex[:8]}"
    yield name
    try:
        optuna.delete_study(study_name=name, storage=store())
    except KeyError:
        pass


def start(tmp_path, name, log, design=("--budget", "2", "--seeds", "1"), url=URL):
    args = [
        "--space",
        "small",
        "--study-name",
        name,
        "--storage",
        url,
        "--results",
        str(tmp_path / "results"),
        *TINY,
        *BOTH,
        *design,
    ]
    return subprocess.Popen(
        [sys.executable, str(ROOT / "study" / "run.py"), *args],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def test_study_in_postgres_reopens_in_another_process_and_keeps_no_trace_of_its_password(tmp_path, study_name):
    """The server trusts local connections, so any password is accepted: one goes in the URL, and
    nothing the study writes (its log, results/, Ray's experiment folder, the study's attributes)
    holds it. Another process then reopens the study and finds every trial as this one left it."""
    secret = "S3cret-" + uuid.uuid4().hex[:6]
    url = URL.replace("://tlstudy@", f"://tlstudy:{secret}@", 1)
    assert secret in url
    write_space(tmp_path, "small", SMALL_SPACE)
    run_to_end(tmp_path, lambda log: start(tmp_path, study_name, log, url=url))
    assert secret not in (tmp_path / "driver.log").read_text()
    files = [p for p in (tmp_path / "results").rglob("*") if p.is_file()]
    assert len(files) > 10 and not [p for p in files if secret.encode() in p.read_bytes()]
    study = optuna.load_study(study_name=study_name, storage=store())
    stored = json.dumps([study.user_attrs, *[t.user_attrs for t in study.trials]], default=str)
    assert secret not in stored and "***@" in study.user_attrs["command"]

    code = textwrap.dedent(f"""
        import json, optuna
        from tlstudy.study.storage import open_storage
        s = optuna.load_study(study_name={study_name!r}, storage=open_storage({URL!r}))
        print(json.dumps({{"states": [t.state.name for t in s.trials], "values": [t.value for t in s.trials],
                          "epochs": [sorted(t.intermediate_values) for t in s.trials], "best": s.best_trial.number}}))
    """)
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert out["states"] == ["COMPLETE"] * 6  # two cells: two search trials and a replicate each
    assert out["epochs"] == [[1, 2, 3]] * 6
    assert out["values"] == [t.value for t in study.trials] and out["best"] == study.best_trial.number


def test_two_drivers_on_one_study_keep_every_trial_of_both(tmp_path, study_name):
    """The second driver starts while the first has a trial RUNNING: it must take it for alive
    (its heartbeats go on) and leave it alone, and both drivers' trials must all be stored."""
    write_space(tmp_path, "small", SMALL_SPACE)
    logs = [open(tmp_path / f"driver{i}.log", "w") for i in (1, 2)]
    # Enough trials (per cell 4 search, 2 replicates) that the second driver, starting later, finds work.
    more = ("--budget", "4", "--seeds", "2")
    procs = [start(tmp_path, study_name, logs[0], more)]
    try:
        deadline = time.time() + 300
        while not any(t.state == TrialState.RUNNING for t in _trials(study_name)):
            assert time.time() < deadline and procs[0].poll() is None, "the first driver never ran a trial"
            time.sleep(0.2)
        procs.append(start(tmp_path, study_name, logs[1], more))
        codes = [p.wait(timeout=600) for p in procs]
    finally:
        for p in procs:
            kill_group(p)
        for f in logs:
            f.close()
    outs = [(tmp_path / f"driver{i}.log").read_text() for i in (1, 2)]
    assert codes == [0, 0], [o[-2000:] for o in outs]
    assert "RUNNING: waiting" in outs[1] and "marked FAIL" not in outs[1]
    trials = optuna.load_study(study_name=study_name, storage=store()).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * len(trials)
    # Both drivers ran trials, and between them the design's twelve, each once: a driver takes only
    # the work the study still lacks when it asks.
    drivers = [t.user_attrs["driver"] for t in trials]
    for proc in procs:
        assert sum(d.endswith(f":{proc.pid}") for d in drivers) > 0
    work = sorted((t.params["out_features"], t.user_attrs["phase"], t.user_attrs["train_seed"]) for t in trials)
    assert work == sorted(
        [(o, "search", 0) for o in (2, 3)] * 4 + [(o, "replicate", s) for o in (2, 3) for s in (1, 2)]
    )


def test_drivers_asking_at_once_take_each_trial_once(tmp_path, study_name):
    """The work lock on PostgreSQL is the server's (an advisory lock for the study)."""
    taken, trials = race_for_work(URL, tmp_path, study_name)
    assert sorted(t.user_attrs["cell"] for t in trials) == ["out_features=2"] * 12 + ["out_features=3"] * 12
    assert sum(taken) == 24 and min(taken) > 0, taken


@functools.cache
def store():
    """One storage for the test process: each RDBStorage holds a pool of connections until it is
    collected, and a poll every 0.2 s that opened its own exhausted the server's 100 connections."""
    return open_storage(URL)


def _trials(name):
    try:
        return optuna.load_study(study_name=name, storage=store()).trials
    except KeyError:  # not created yet
        return []
