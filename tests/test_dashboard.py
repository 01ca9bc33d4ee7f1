"""study/dashboard.py serves the real optuna-dashboard on loopback over a study's storage."""
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna

ROOT = Path(__file__).parents[1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_serves_the_study(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    study = optuna.create_study(study_name="taskE", storage=f"sqlite:///{results / 'optuna.db'}")
    study.optimize(lambda t: t.suggest_float("lr", 1e-4, 1e-1, log=True), n_trials=3)
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "study" / "dashboard.py"), "--space", "taskE",
                             "--results", str(results), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/dashboard/studies/" in line
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    studies = json.load(r)["study_summaries"]
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None, proc.stderr.read()
                time.sleep(0.5)
        assert [s["study_name"] for s in studies] == ["taskE"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_dashboard_without_a_study_is_a_one_line_error(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "study" / "dashboard.py"), "--results", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "run python study/run.py" in r.stderr
    assert list(tmp_path.iterdir()) == []  # nothing created
