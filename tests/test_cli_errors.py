"""User mistakes end study/run.py with one line on stderr and exit 2, and leave stored studies as they were."""
import hashlib
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

ROOT = Path(__file__).parents[1]


def run(*args, cwd=None):
    return subprocess.run([sys.executable, str(ROOT / "study" / "run.py"), *args], capture_output=True, text=True,
                          timeout=180, cwd=cwd)


def one_line_error(r, needle):
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr, r.stderr


@pytest.fixture
def stored(tmp_path):
    """A results folder holding a study 'taskE' built from another space."""
    results = tmp_path / "results"
    results.mkdir()
    study = optuna.create_study(study_name="taskE", storage=f"sqlite:///{results / 'optuna.db'}")
    study.set_user_attr("space_fingerprint", "something-else")
    study.enqueue_trial({"lr": 0.01})
    return results


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("args, needle", [
    (["--space", "taskZ"], "unknown space 'taskZ'"),
    (["--space", "nowhere/space.py"], "does not exist"),
    (["--space", "{syntax}"], "syntax error"),
    (["--space", "{empty}"], "defines no PARAM_SPACE"),
    (["--space", "taskE", "--data", "/no/such/folder"], "does not exist"),
    (["--space", "taskE", "--storage", "postgresql://tl:tl@127.0.0.1:1/tl"], "cannot open storage"),
    (["--space", "taskE", "--storage", "nosuchdb://x"], "cannot open storage"),
    (["--space", "taskE", "--results", "{file}/sub"], "results folder"),
    (["--space", "taskE"], "different space"),
    (["--space", "taskE", "--phantom-sizes", "1,2"], "three positive integers"),
])
def test_bad_input(tmp_path, stored, args, needle):
    (tmp_path / "syntax.py").write_text("PARAM_SPACE = {\n")
    (tmp_path / "empty.py").write_text('"""nothing here"""\n')
    (tmp_path / "file").write_text("a file, not a folder")
    args = [a.format(syntax=tmp_path / "syntax.py", empty=tmp_path / "empty.py", file=tmp_path / "file") for a in args]
    if "--results" not in args:
        args += ["--results", str(stored)]
    before = digest(stored / "optuna.db")
    one_line_error(run(*args), needle)
    assert digest(stored / "optuna.db") == before
    assert [p.name for p in stored.iterdir()] == ["optuna.db"]


def test_new_study_name_keeps_the_other(stored):
    # --study-name sidesteps the clash; a refused run must not have touched the stored one.
    study = optuna.load_study(study_name="taskE", storage=f"sqlite:///{stored / 'optuna.db'}")
    assert study.user_attrs["space_fingerprint"] == "something-else" and len(study.trials) == 1
