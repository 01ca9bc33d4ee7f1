"""tlstudy dashboard (study/dashboard.py) serves the real optuna-dashboard on loopback over a study's storage."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import optuna
import pytest
from optuna.artifacts import get_all_artifact_meta
from optuna.trial import TrialState

from tlstudy.names import CHECKPOINT_MODEL_FILE
from tlstudy.study import keep
from tlstudy.study.artifacts import upload_learning_curve
from tlstudy.training import modelfile

from conftest import ROOT, free_port, small_model_file

# Val-loss curves, one per trial: the third runs far above the others and the median pruner stops it.
CURVES = [[1.0, 0.8, 0.6], [0.9, 0.7, 0.5], [2.0, 1.9, 1.8], [0.7, 0.5, 0.4], [3.0, 2.9, 2.8]]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished study as study/run.py leaves it: per-epoch intermediate values, PRUNED trials,
    user attributes, a learning-curve PNG artifact per trial (as tlstudy.study.search uploads it)."""
    results = tmp_path_factory.mktemp("results")
    storage = optuna.storages.RDBStorage(f"sqlite:///{results / 'optuna.db'}")
    (results / "artifacts").mkdir()
    study = optuna.create_study(
        study_name="taskE", storage=storage, pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    )

    def objective(trial):
        trial.suggest_float("lr", 1e-4, 1e-2, log=True)
        curve = CURVES[trial.number]
        history = []
        try:
            for epoch, val_loss in enumerate(curve, start=1):
                history.append({"epoch": epoch, "train_loss": val_loss * 0.9, "val_loss": val_loss})
                trial.report(val_loss, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned()
            trial.set_user_attr("test_best_acc", 0.75)
            return min(curve)
        finally:
            trial.set_user_attr("history", json.dumps(history))
            trial.set_user_attr("node_id", "a" * 56)
            upload_learning_curve(results / "artifacts", trial, history)

    study.optimize(objective, n_trials=len(CURVES))
    assert {t.state for t in study.trials} == {TrialState.COMPLETE, TrialState.PRUNED}
    # The best trial keeps its model, as the study's driver keeps it (tlstudy.study.keep).
    checkpoint = results / "checkpoint"
    checkpoint.mkdir()
    small_model_file(checkpoint / CHECKPOINT_MODEL_FILE)
    assert keep.Keeper(study, results / "artifacts", "best").trial_done(study.best_trial.number, str(checkpoint))
    return results, study


def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return r.read()


def test_dashboard_serves_the_study(finished):
    results, study = finished
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "study" / "dashboard.py"),
            "--space",
            "taskE",
            "--results",
            str(results),
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/dashboard/studies/" in line
        deadline = time.time() + 60
        while True:
            try:
                studies = json.loads(get(port, "/api/studies"))["study_summaries"]
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None, proc.stderr.read()
                time.sleep(0.5)
        assert [s["study_name"] for s in studies] == ["taskE"]
        study_id = studies[0]["study_id"]
        assert line.strip().endswith(f"/dashboard/studies/{study_id}")

        served = {t["number"]: t for t in json.loads(get(port, f"/api/studies/{study_id}"))["trials"]}
        kept = keep.links(study)
        assert sorted(served) == [t.number for t in study.trials]
        for t in study.trials:
            s = served[t.number]
            assert s["state"] == t.state.name.capitalize()  # Complete, Pruned
            assert [(v["step"], v["value"]) for v in s["intermediate_values"]] == sorted(t.intermediate_values.items())
            attrs = {a["key"]: a["value"] for a in s["user_attrs"]}
            assert json.loads(attrs["history"]) == json.loads(t.user_attrs["history"])
            assert attrs["node_id"] == t.user_attrs["node_id"]
            # The learning curve: listed on the trial, and served byte for byte from the artifact store;
            # on the best trial also its model file, which reads back as the model it is.
            [meta] = get_all_artifact_meta(t, storage=study._storage)
            listed = {a["artifact_id"]: a for a in s["artifacts"]}
            model = kept.get(t.number)
            assert set(listed) == {meta.artifact_id, *([model["artifact_id"]] if model else [])}
            assert listed[meta.artifact_id]["mimetype"] == "image/png"
            png = get(port, f"/artifacts/{study_id}/{s['trial_id']}/{meta.artifact_id}")
            assert png[:8] == b"\x89PNG\r\n\x1a\n" and png == (results / "artifacts" / meta.artifact_id).read_bytes()
            if model:
                assert listed[model["artifact_id"]]["filename"] == f"model_trial{t.number}.safetensors"
                body = get(port, f"/artifacts/{study_id}/{s['trial_id']}/{model['artifact_id']}")
                (results / "served.safetensors").write_bytes(body)
                header = modelfile.read(results / "served.safetensors")[0]
                assert header["study"] == "taskE" and header["trial"] == t.number
                # Its note, at the top of its page, names the file, its cell and its phase.
                assert f"`model_trial{t.number}.safetensors`" in s["note"]["body"]
                assert "**Cell**: " in s["note"]["body"] and "**Phase**: " in s["note"]["body"]
            else:
                assert s["note"]["body"] == ""
        assert list(kept) == [study.best_trial.number]
        assert {s["state"] for s in served.values()} == {"Complete", "Pruned"}
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    with pytest.raises(OSError):  # stopped: nothing answers on the port any more
        get(port, "/api/studies")


def test_dashboard_without_a_study_is_a_one_line_error(tmp_path):
    r = subprocess.run(
        [sys.executable, str(ROOT / "study" / "dashboard.py"), "--results", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "run tlstudy run" in r.stderr
    assert list(tmp_path.iterdir()) == []  # nothing created
