"""The real Ray Tune + Optuna path on the CPU: a tiny phantom set, 16 px, 3 epochs."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from tlstudy import cli, runner, spaces
from tlstudy.errors import UserError

ROOT = Path(__file__).parents[1]
TINY = ["--image-size", "16", "--phantom-sizes", "48,40,40", "--max-train", "48", "--epochs", "3"]


def load(results, name):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{results / 'optuna.db'}")


@pytest.fixture(scope="module")
def taske(tmp_path_factory, ray_local):
    results = tmp_path_factory.mktemp("taskE")
    # --budget 2: two search trials per cell; --seeds 0: no replicates of the cells' best.
    cli.main(["run", "--space", "taskE", "--results", str(results), *TINY, "--pruner", "percentile",
              "--budget", "2", "--seeds", "0", "--seed", "1"])
    return results


def test_every_cell_covered_and_trials_pruned(taske):
    study = load(taske, "taskE")
    space = spaces.load("taskE")
    done = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    for cell in space.cells:
        assert any(all(t.params[k] == v for k, v in cell.items()) for t in done), cell
    assert len(done) == 9 * 2
    pruned = [t for t in done if t.state == TrialState.PRUNED]
    assert pruned, "the percentile pruner pruned nothing"
    for t in done:
        history = json.loads(t.user_attrs["history"])
        # Every reported epoch is an intermediate value, the one that triggered the prune included.
        assert sorted(t.intermediate_values) == [e["epoch"] for e in history]
        assert [t.intermediate_values[e["epoch"]] for e in history] == [e["val_loss"] for e in history]
        if t.state == TrialState.PRUNED:
            assert len(history) < 3 and "test_best_acc" not in t.user_attrs
        else:
            assert len(history) == 3 and t.value == min(e["val_loss"] for e in history)
            assert t.user_attrs["best_val_loss"] == t.value
            assert t.user_attrs["test_best_total"] == 40 and t.user_attrs["weights_source"] == "random-fallback"
    # Each finished trial carries its learning curve as a PNG artifact for optuna-dashboard.
    for t in done:
        meta = optuna.artifacts.get_all_artifact_meta(t, storage=study._storage)
        assert [m.mimetype for m in meta] == ["image/png"]
        assert (taske / "artifacts" / meta[0].artifact_id).stat().st_size > 1000
    # resnet18 has no V2 weights: the space fixes V1 and no trial ever saw anything else.
    trials = pd.read_csv(taske / "taskE" / "trials.csv")
    assert set(trials.weights) == {"IMAGENET1K_V1"} and set(trials.arch) == {"resnet18"}


def test_study_reopens_in_another_process(taske):
    code = textwrap.dedent(f"""
        import json, optuna
        s = optuna.load_study(study_name="taskE", storage="sqlite:///{taske / 'optuna.db'}")
        print(json.dumps({{"n": len(s.trials), "states": sorted(t.state.name for t in s.trials),
                          "best": s.best_trial.number, "value": s.best_value}}))
    """)
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    study = load(taske, "taskE")
    assert out == {"n": len(study.trials), "states": sorted(t.state.name for t in study.trials),
                   "best": study.best_trial.number, "value": study.best_value}


def test_exports_agree_with_storage(taske):
    study = load(taske, "taskE")
    trials = pd.read_csv(taske / "taskE" / "trials.csv").set_index("number")
    epochs = pd.read_csv(taske / "taskE" / "epochs.csv")
    assert sorted(trials.index) == [t.number for t in study.trials]
    for t in study.trials:
        row = trials.loc[t.number]
        assert row.state == t.state.name and row.lr == pytest.approx(t.params["lr"])
        if t.state == TrialState.COMPLETE:
            assert row.value == pytest.approx(t.value) and row.test_best_acc == pytest.approx(t.user_attrs["test_best_acc"])
        mine = epochs[epochs.number == t.number].sort_values("epoch")
        assert mine.val_loss.tolist() == pytest.approx([t.intermediate_values[e] for e in mine.epoch])
    best = json.loads((taske / "taskE" / "best_config.json").read_text())
    assert best["trial"] == study.best_trial.number and best["config"]["lr"] == study.best_trial.params["lr"]
    assert best["command"].startswith("tlstudy trial ")


def test_run_ends_with_the_analysis(taske):
    study = load(taske, "taskE")
    cells = pd.read_csv(taske / "taskE" / "cells.csv")
    assert len(cells) == 9 and cells.n.sum() == len(study.trials)
    best = cells.loc[cells.trial == study.best_trial.number].iloc[0]
    assert best.best_val_loss == pytest.approx(study.best_value)
    report = (taske / "taskE" / "REPORT.md").read_text()
    assert "## Table 8, rebuilt" in report and "## Table 9, rebuilt" in report
    assert "tlstudy run --space taskE" in report


def wait_for(results, name, predicate, timeout=240):
    """Poll the study a subprocess writes until one of its trials satisfies predicate."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (results / "optuna.db").exists():
            try:
                if any(predicate(t) for t in load(results, name).trials):
                    return
            except Exception:  # the study or its tables may not exist yet
                pass
        time.sleep(0.5)
    pytest.fail(f"no trial of {name} got there within {timeout} s")


def test_best_config_command_reproduces_the_trial(taske):
    best = json.loads((taske / "taskE" / "best_config.json").read_text())
    out = taske / "rerun.json"
    cmd = best["command"].replace("tlstudy trial", f"{sys.executable} -m tlstudy trial", 1)
    # One thread, as the 1-CPU Ray trial had: the same config must give the same numbers.
    r = subprocess.run(cmd + f" --json {out}", shell=True, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    summary = json.loads(out.read_text())["summary"]
    assert summary["best_val_loss"] == pytest.approx(best["best_val_loss"], rel=1e-5)
    assert summary["test_best_acc"] == best["test_best_acc"]


SMALL_SPACE = """
\"\"\"A two-cell test space: resnet18 from scratch, out_features 2 or 3.\"\"\"
from ray import tune
from tlstudy.spaces import training_space
FIXED = dict(arch="resnet18", weights="none")
CELLS = [dict(out_features=2), dict(out_features=3)]
PARAM_SPACE = {**training_space(), "out_features": tune.choice([2, 3])}
"""


def test_resume_after_interrupt_repeats_no_finished_trial(tmp_path, ray_local):
    space_file = tmp_path / "small.py"
    space_file.write_text(SMALL_SPACE)
    results = tmp_path / "results"
    args = ["--space", str(space_file), "--results", str(results), *TINY, "--budget", "3", "--seeds", "0",
            "--pruner", "none"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "study" / "run.py"), *args, "--num-cpus", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(results, "small", lambda t: t.state == TrialState.COMPLETE)
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        proc.wait(timeout=120)
    finally:
        # Ray's agents outlive a killed driver; they share its new process group.
        _killpg(proc.pid)
    first = {t.number: t for t in load(results, "small").trials}
    finished = {n for n, t in first.items() if t.state == TrialState.COMPLETE}
    assert finished and len(finished) < 6
    # The interrupted driver resolved its own unfinished trials.
    assert not [t for t in first.values() if t.state == TrialState.RUNNING]

    cli.main(["run", *args])
    after = load(results, "small").trials
    for n in finished:  # finished trials are kept as they were
        assert after[n].state == TrialState.COMPLETE and after[n].value == first[n].value
    done = [t for t in after if t.state == TrialState.COMPLETE]
    assert len(done) == 2 * 3  # the two cells' three search trials, each run once
    assert {t.params["out_features"] for t in done} == {2, 3}


def _killpg(pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_space_allowing_resnet18_v2_is_refused(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(SMALL_SPACE.replace('FIXED = dict(arch="resnet18", weights="none")', 'FIXED = dict(arch="resnet18")')
                   .replace('"out_features": tune.choice([2, 3])}',
                            '"out_features": tune.choice([2, 3]), "weights": tune.choice(["IMAGENET1K_V1", "IMAGENET1K_V2"])}'))
    with pytest.raises(UserError, match="resnet18.*IMAGENET1K_V2"):
        spaces.load(bad)


def test_list_spaces_names_every_task():
    r = subprocess.run([sys.executable, str(ROOT / "study" / "run.py"), "--list-spaces"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    names = [line.split()[0] for line in r.stdout.splitlines()]
    assert names == ["taskA", "taskB", "taskC", "taskD", "taskE"]


def test_default_concurrency_is_what_the_cluster_fits():
    assert runner.slots({"CPU": 2.0}, {"cpu": 1, "gpu": 0}) == 2
    assert runner.slots({"CPU": 16.0, "GPU": 1.0}, {"cpu": 1, "gpu": 0.25}) == 4
    assert runner.slots({"CPU": 2.0, "GPU": 1.0}, {"cpu": 1, "gpu": 0.25}) == 2
    assert runner.slots({"CPU": 1.0}, {"cpu": 2, "gpu": 0}) == 1  # Ray queues it; never 0
