"""The real Ray Tune + Optuna path on the CPU: a tiny phantom set, 16 px, 3 epochs."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from tlstudy import cli, spaces
from tlstudy.analysis import claims as tlclaims
from tlstudy.errors import UserError
from tlstudy.settings import PROTOCOL
from tlstudy.study import keep
from tlstudy.training import modelfile

from conftest import ROOT, SMALL_SPACE, TINY, XRAYS
from conftest import load_study as load


def taske_args(results):
    """The taskE study of the `taske` fixture, as its command line (a rerun must match it)."""
    return ["run", "--space", "taskE", "--results", str(results), *TINY, "--pruner", "percentile"] + [
        "--budget", "2", "--seeds", "2", "--seed", "1"
    ]  # fmt: skip


@pytest.fixture(scope="module")
def taske(tmp_path_factory, ray_local):
    results = tmp_path_factory.mktemp("taskE")
    # --budget 2: two search trials per cell (the protocol, then one of TPE); --seeds 2: two
    # replicates of each cell's best. A percentile pruner at the 75th percentile prunes readily.
    code = cli.main(taske_args(results) + ["--allow-failures"])
    assert code == 0
    return results


def test_every_cell_gets_its_budget_then_replicates_that_differ_only_in_their_seed(taske):
    study = load(taske, "taskE")
    space = spaces.load("taskE")
    done = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(done) == 9 * (2 + 2)
    fixed = set(space.cells[0].as_dict())
    protocols = []
    for cell in (c.as_dict() for c in space.cells):
        mine = [t for t in done if all(t.params[k] == v for k, v in cell.items())]
        search = [t for t in mine if t.user_attrs["phase"] == "search"]
        reps = [t for t in mine if t.user_attrs["phase"] == "replicate"]
        assert len(search) == 2 and len(reps) == 2, cell
        assert {t.user_attrs["cell"] for t in mine} == {"; ".join(f"{k}={v}" for k, v in cell.items())}
        protocol = [t for t in search if t.user_attrs["protocol"]]
        assert len(protocol) == 1 and protocol[0].state == TrialState.COMPLETE
        protocols.append({k: v for k, v in protocol[0].params.items() if k not in fixed})
        # Replicates: the cell's best search trial by val loss, again, with training seeds 1 and 2.
        best = min((t for t in search if t.state == TrialState.COMPLETE), key=lambda t: t.value)
        assert all(t.state == TrialState.COMPLETE and t.params == best.params for t in reps)
        assert sorted(t.user_attrs["train_seed"] for t in reps) == [1, 2]
        assert {t.user_attrs["train_seed"] for t in search} == {0}
        assert len({t.value for t in reps}) == 2  # another seed, another model
    # Every cell's protocol trial ran the same hyperparameters: the tutorial's.
    assert (
        all(p == protocols[0] for p in protocols)
        and protocols[0] == {k: v for k, v in PROTOCOL.items() if k in protocols[0]}
        and len(protocols[0]) == len(PROTOCOL)
    )
    pruned = [t for t in done if t.state == TrialState.PRUNED]
    assert pruned, "the percentile pruner pruned nothing"
    assert all(t.user_attrs["phase"] == "search" and not t.user_attrs["protocol"] for t in pruned)
    for t in done:
        history = json.loads(t.user_attrs["history"])
        # Every reported epoch is an intermediate value, the one that triggered the prune included.
        assert sorted(t.intermediate_values) == [e["epoch"] for e in history]
        assert [t.intermediate_values[e["epoch"]] for e in history] == [e["val_loss"] for e in history]
        if t.state == TrialState.PRUNED:
            assert len(history) < 3 and "test_best_acc" not in t.user_attrs
        else:
            assert len(history) == 3 and t.value == min(e["val_loss"] for e in history)
            assert t.user_attrs["best_val_loss"] == t.value and t.user_attrs["weights_source"] == "random-fallback"
            # Search trials are chosen on val alone and never score the test split; replicates do.
            scored = t.user_attrs["phase"] == "replicate"
            assert t.user_attrs.get("test_best_total") == (40 if scored else None)
    # Each finished trial carries its learning curve as a PNG artifact for optuna-dashboard, and a
    # COMPLETE replicate its per-image test predictions as a CSV artifact.
    for t in done:
        meta = optuna.artifacts.get_all_artifact_meta(t, storage=study._storage)
        scored = t.state == TrialState.COMPLETE and t.user_attrs["phase"] == "replicate"
        expected = ["image/png", "text/csv"] if scored else ["image/png"]
        assert sorted(m.mimetype for m in meta) == expected
        assert all((taske / "artifacts" / m.artifact_id).stat().st_size > 500 for m in meta)
    # resnet18 has no V2 weights: the space fixes V1 and no trial ever saw anything else.
    trials = pd.read_csv(taske / "taskE" / "trials.csv")
    assert set(trials.weights) == {"IMAGENET1K_V1"} and set(trials.arch) == {"resnet18"}


def test_the_study_keeps_its_best_model_and_no_checkpoint(taske, tmp_path, capsys):
    study = load(taske, "taskE")
    kept = keep.links(study)
    best = json.loads((taske / "taskE" / "best_config.json").read_text())
    assert list(kept) == [best["trial"]]  # --keep-models best: the best replicate by val loss, alone
    model = taske / "artifacts" / kept[best["trial"]]["artifact_id"]
    header = modelfile.read(model)[0]
    assert (header["study"], header["trial"], header["phase"]) == ("taskE", best["trial"], "replicate")
    assert header["image_size"] == 16 and header["best_val_loss"] == best["best_val_loss"]
    assert header["eval_repeat"] == best["config"]["eval_repeat"] and header["arch"] == "resnet18"
    assert not list((taske / "ray").glob("**/checkpoint_*"))  # every trial's checkpoints went with it
    trials = pd.read_csv(taske / "taskE" / "trials.csv")
    assert trials.kept_model.dropna().tolist() == [model.name]
    report = (taske / "taskE" / "REPORT.md").read_text()
    assert "## Kept models" in report and f"tlstudy predict {model}" in report
    assert "![Grad-CAM of the best model on test images](cam_panel.png)" in report
    assert (taske / "taskE" / "cam_panel.png").stat().st_size > 5000

    out = tmp_path / "best.safetensors"
    assert cli.main(["export-model", "--space", "taskE", "--results", str(taske), "--out", str(out)]) == 0
    assert out.read_bytes() == model.read_bytes()
    capsys.readouterr()
    other = next(t.number for t in study.trials if t.number != best["trial"])
    with pytest.raises(SystemExit) as e:
        cli.main(["export-model", "--space", "taskE", "--results", str(taske), "--trial", str(other)])
    assert e.value.code == 2 and f"trial {other}) kept no model" in capsys.readouterr().err
    # --cell: that cell's best kept model; a cell without one is named with those that have one.
    cell = header["cell"]
    by_cell = tmp_path / "cell.safetensors"
    assert (
        cli.main(["export-model", "--space", "taskE", "--results", str(taske), "--cell", cell, "--out", str(by_cell)])
        == 0
    )
    assert by_cell.read_bytes() == model.read_bytes()
    elsewhere = next(str(t.user_attrs["cell"]) for t in study.trials if t.user_attrs["cell"] != cell)
    with pytest.raises(SystemExit) as e:
        cli.main(["export-model", "--space", "taskE", "--results", str(taske), "--cell", elsewhere])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "no kept model of cell" in err and cell in err and err.count("\n") == 1
    # The kept model on the 16 real X-rays: a row per image (it was trained on 16 px phantoms).
    assert cli.main(["predict", str(out), str(XRAYS), "--out", str(tmp_path / "p.csv")]) == 0
    assert len(pd.read_csv(tmp_path / "p.csv")) == 16


def test_study_reopens_in_another_process(taske):
    code = textwrap.dedent(f"""
        import json, optuna
        s = optuna.load_study(study_name="taskE", storage="sqlite:///{taske / "optuna.db"}")
        print(json.dumps({{"n": len(s.trials), "states": sorted(t.state.name for t in s.trials),
                          "best": s.best_trial.number, "value": s.best_value}}))
    """)
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    study = load(taske, "taskE")
    assert out == {
        "n": len(study.trials),
        "states": sorted(t.state.name for t in study.trials),
        "best": study.best_trial.number,
        "value": study.best_value,
    }


def test_exports_agree_with_storage(taske):
    study = load(taske, "taskE")
    trials = pd.read_csv(taske / "taskE" / "trials.csv").set_index("number")
    epochs = pd.read_csv(taske / "taskE" / "epochs.csv")
    assert sorted(trials.index) == [t.number for t in study.trials]
    for t in study.trials:
        row = trials.loc[t.number]
        assert row.state == t.state.name and row.lr == pytest.approx(t.params["lr"])
        if t.state == TrialState.COMPLETE:
            assert row.value == pytest.approx(t.value)
            assert row.test_best_acc == pytest.approx(t.user_attrs.get("test_best_acc", float("nan")), nan_ok=True)
        mine = epochs[epochs.number == t.number].sort_values("epoch")
        assert mine.val_loss.tolist() == pytest.approx([t.intermediate_values[e] for e in mine.epoch])
    best = json.loads((taske / "taskE" / "best_config.json").read_text())
    replicates = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.user_attrs["phase"] == "replicate"]
    chosen = min(replicates, key=lambda t: t.value)  # the best replicate by val loss: it has test figures
    assert best["trial"] == chosen.number and best["config"]["lr"] == chosen.params["lr"]
    assert best["test_best_acc"] == chosen.user_attrs["test_best_acc"]
    assert best["command"].startswith("tlstudy trial ")


def test_predictions_hold_every_complete_replicate_checkpoint_and_test_image(taske):
    study = load(taske, "taskE")
    preds = pd.read_csv(taske / "taskE" / "predictions.csv", dtype={"image_id": str})
    complete = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.user_attrs["phase"] == "replicate"]
    assert len(preds) == len(complete) * 3 * 40
    assert set(preds.checkpoint) == {"best_loss", "best_acc", "final"}
    assert set(preds.image_id) == {f"test/{i}" for i in range(40)}
    for t in complete:
        mine = preds[preds.number == t.number]
        for checkpoint, tag in (("best_loss", "best"), ("best_acc", "bestacc"), ("final", "final")):
            p = mine[mine.checkpoint == checkpoint]
            assert (p.pred == p.label).mean() == pytest.approx(t.user_attrs[f"test_{tag}_acc"])
        assert set(mine.phase) == {t.user_attrs["phase"]} and set(mine.train_seed) == {t.user_attrs["train_seed"]}
    splits = pd.read_csv(taske / "taskE" / "splits.csv")
    data = study.user_attrs["data"]
    assert dict(splits.split.value_counts()) == {"train": data["n_train"], "val": data["n_val"], "test": 40}
    assert (splits.group == splits.id).all() and "per image" in splits.grouping.iloc[0]


def test_run_ends_with_the_analysis(taske):
    study = load(taske, "taskE")
    cells = pd.read_csv(taske / "taskE" / "cells.csv")
    assert len(cells) == 9 and (cells.replicates == 2).all() and (cells.search_trials == 2).all()
    reps = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.user_attrs["phase"] == "replicate"]
    assert cells.test_best_acc_mean.mean() == pytest.approx(sum(t.user_attrs["test_best_acc"] for t in reps) / 18)
    report = (taske / "taskE" / "REPORT.md").read_text()
    assert "## Table 8, rebuilt" in report and "## Table 9, rebuilt" in report
    assert "tlstudy run --space taskE" in report and "## Show your work" in report
    assert (taske / "taskE" / "show_your_work.png").stat().st_size > 1000
    work = pd.read_csv(taske / "taskE" / "show_your_work.csv")
    assert len(work) == 9 and list(work.columns) == ["cell", "k=1", "k=2"]
    claims = pd.read_csv(taske / "taskE" / "claims.csv")
    assert list(claims.columns) == tlclaims.COLUMNS
    by = claims.set_index("claim")
    # No ImageNet weights here (and phantom data): claims about transfer are void, saying why.
    assert by.loc["3a", "verdict"] == "void" and by.loc["3a", "reason"] == "study taskB not run"
    # Claims 5 and 6 are about taskE alone: two replicates per cell give them a paired interval.
    # At 16 px many tiny models predict one class: a claim whose cell keeps fewer than 2 converged
    # seeds is void, and says so; the others get their interval.
    for c in ("5a", "5b", "6"):
        if by.loc[c, "verdict"] == "void":
            assert "fewer than 2 converged seeds" in by.loc[c, "reason"], by.loc[c].to_dict()
            continue
        assert by.loc[c, "verdict"] in ("supported", "contradicted", "inconclusive"), by.loc[c].to_dict()
        assert by.loc[c, "low"] <= by.loc[c, "estimate"] <= by.loc[c, "high"]


@pytest.mark.parametrize(
    "change, what",
    [(["--image-size", "20"], "image_size"), (["--epochs", "2"], "epochs"), (["--data", "{xrays}"], "data")],
)
def test_a_rerun_with_other_data_or_settings_is_refused_and_nothing_changes(taske, xray_folder, capsys, change, what):
    db = taske / "optuna.db"
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    args = taske_args(taske)
    for i in range(0, len(change), 2):
        at = args.index(change[i]) if change[i] in args else None
        value = change[i + 1].format(xrays=xray_folder)
        if at is None:
            args += [change[i], value]
        else:
            args[at + 1] = value
    with pytest.raises(SystemExit) as e:
        cli.main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "different space or settings" in err[0] and what in err[0], err
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


def test_a_refused_rerun_answers_before_torch_or_ray_load(taske):
    """The settings are resolved and compared with the stored study (its space's summary, kept with
    the space file's hash) before the heavy imports: the refusal needs neither torch nor Ray."""
    argv = taske_args(taske) + ["--image-size", "48"]
    code = textwrap.dedent(f"""
        import sys
        from tlstudy import cli
        try:
            cli.main({argv!r})
        except SystemExit as e:
            print("exit", e.code)
        print(sorted(m for m in ("torch", "torchvision", "ray", "ray.tune") if m in sys.modules))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["exit", "2", "[]"], r.stdout + r.stderr
    assert "different space or settings" in r.stderr and "image_size: 16 -> 48" in r.stderr


def test_best_config_command_reproduces_the_trial(taske):
    best = json.loads((taske / "taskE" / "best_config.json").read_text())
    out = taske / "rerun.json"
    cmd = best["command"].replace("tlstudy trial", f"{sys.executable} -m tlstudy trial", 1)
    # One thread, as the 1-CPU Ray trial had: the same config must give the same numbers.
    r = subprocess.run(
        cmd + f" --json {out}",
        shell=True,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads(out.read_text())["summary"]
    assert summary["best_val_loss"] == pytest.approx(best["best_val_loss"], rel=1e-5)
    assert summary["test_best_acc"] == best["test_best_acc"]


def test_space_allowing_resnet18_v2_is_refused(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        SMALL_SPACE.replace('FIXED = dict(arch="resnet18", weights="none")', 'FIXED = dict(arch="resnet18")').replace(
            '"out_features": tune.choice([2, 3])}',
            '"out_features": tune.choice([2, 3]), "weights": tune.choice(["IMAGENET1K_V1", "IMAGENET1K_V2"])}',
        )
    )
    with pytest.raises(UserError, match="resnet18.*IMAGENET1K_V2"):
        spaces.load(bad)


def test_list_spaces_names_every_task():
    r = subprocess.run(
        [sys.executable, str(ROOT / "study" / "run.py"), "--list-spaces"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0
    names = [line.split()[0] for line in r.stdout.splitlines()]
    assert names == ["taskA", "taskB", "taskC", "taskD", "taskE"]
