"""The analysis on studies built with the Optuna API, with per-image predictions as artifacts:
every figure is known in advance."""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from tlstudy import spaces
from tlstudy.analysis import claims as tlclaims
from tlstudy.analysis import reference, report
from tlstudy.spaces import Cell

ROOT = Path(__file__).parents[1]
EPOCHS = 30
N_TEST = 200
LABELS = np.array([0] * 75 + [1] * 125)  # the phantom's test proportions, 234/624 NORMAL
SAME, TILED = ("1,3,1,1", "1,3,1,1"), ("1,3,3,1", "1,3,1,1")
CHOICES = {
    "out_features": [2, 6, 10],
    "train_repeat": ["1,3,1,1", "1,3,3,1"],
    "eval_repeat": ["1,3,1,1", "1,3,3,1"],
    "arch": ["resnext50_32x4d", "resnet101"],
    "weights": ["IMAGENET1K_V1", "IMAGENET1K_V2"],
}


def history(best_epoch, best_loss, n=EPOCHS, final_train_loss=0.01):
    """n epochs whose val loss is lowest (best_loss) at best_epoch."""
    return [
        dict(
            epoch=e,
            train_loss=final_train_loss + (n - e) * 0.01,
            train_acc=1.0 - (n - e) * 0.001,
            val_loss=best_loss if e == best_epoch else best_loss + 0.001 * abs(e - best_epoch) + 0.0005,
            val_acc=0.99 if e == best_epoch else 0.95,
            lr=1e-3,
            epoch_s=2.0,
        )
        for e in range(1, n + 1)
    ]


def add(
    study,
    artifacts,
    params,
    state,
    hist,
    phase="search",
    seed=0,
    correct=None,
    protocol=False,
    weights_source="random-fallback",
):
    """A trial; a COMPLETE one gets test counts and a predictions artifact whose first `correct`
    images (in a fixed shuffled order) are right."""
    cell = Cell.of({k: v for k, v in params.items() if k in CHOICES}).label()
    dists = {
        k: CategoricalDistribution(CHOICES[k]) if k in CHOICES else FloatDistribution(1e-5, 1.0, log=True)
        for k in params
    }
    attrs = {
        "history": json.dumps(hist),
        "device": "cpu",
        "weights_source": weights_source,
        "cell": cell,
        "phase": phase,
        "train_seed": seed,
        "protocol": protocol,
    }
    value = None
    if state == TrialState.COMPLETE:
        value = min(h["val_loss"] for h in hist)
        attrs.update(
            test_best_acc=correct / N_TEST,
            test_best_correct=correct,
            test_best_total=N_TEST,
            wall_s=300.0,
            best_val_loss=value,
            test_best_balanced_acc=correct / N_TEST,
        )
    # As the study does: enqueued with the cell's values and attributes, asked, reported, told.
    study.enqueue_trial(params, user_attrs=attrs)
    trial = study.ask(dists)
    for h in hist:
        trial.report(h["val_loss"], h["epoch"])
    if state == TrialState.COMPLETE:
        right = np.zeros(N_TEST, bool)
        right[np.random.default_rng(seed).permutation(N_TEST)[:correct]] = True
        pred = np.where(right, LABELS, 1 - LABELS)
        frame = pd.DataFrame(
            {
                "checkpoint": "best_loss",
                "image_id": [f"test/{i}" for i in range(N_TEST)],
                "label": LABELS,
                "pred": pred,
                "score": pred * 0.9,
            }
        )
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "p.csv"
            frame.to_csv(path, index=False)
            upload_artifact(
                artifact_store=FileSystemArtifactStore(str(artifacts)),
                file_path=str(path),
                study_or_trial=trial,
                mimetype="text/csv",
            )
    study.tell(trial, value, state=state)


def new_study(storage, name, source="phantom (synthetic, seed 0)"):
    study = optuna.create_study(study_name=name, storage=storage)
    study.set_user_attr("space", name)
    study.set_user_attr("base_config", {"epochs": EPOCHS})
    study.set_user_attr("budget", {"budget": 2, "seeds": 3, "pruner": "median"})
    study.set_user_attr(
        "data",
        {
            "data_source": source,
            "data_fingerprint": "f",
            "image_size": 32,
            "n_train": 100,
            "n_val": 20,
            "n_test": N_TEST,
        },
    )
    return study


def e_params(out, repeats, lr=1e-3):
    return {"out_features": out, "train_repeat": repeats[0], "eval_repeat": repeats[1], "lr": lr}


@pytest.fixture
def results(tmp_path):
    (tmp_path / "artifacts").mkdir()
    return tmp_path


@pytest.fixture
def storage(results):
    return f"sqlite:///{results / 'optuna.db'}"


def cell(study, artifacts, out, repeats, search_losses, rep_correct, best_epoch=22):
    """A cell: its protocol trial, a second search trial (pruned when its loss is None), then replicates."""
    add(
        study,
        artifacts,
        e_params(out, repeats),
        TrialState.COMPLETE,
        history(best_epoch, search_losses[0]),
        correct=150,
        protocol=True,
    )
    if search_losses[1] is None:
        add(study, artifacts, e_params(out, repeats, 2e-3), TrialState.PRUNED, history(2, 0.9, n=3))
    else:
        add(
            study,
            artifacts,
            e_params(out, repeats, 2e-3),
            TrialState.COMPLETE,
            history(17, search_losses[1]),
            correct=190,
        )
    best_lr = 1e-3 if search_losses[1] is None or search_losses[0] < search_losses[1] else 2e-3
    for seed, correct in enumerate(rep_correct, 1):
        add(
            study,
            artifacts,
            e_params(out, repeats, best_lr),
            TrialState.COMPLETE,
            history(best_epoch, 0.02),
            phase="replicate",
            seed=seed,
            correct=correct,
        )


@pytest.fixture
def taske(storage, results):
    s = new_study(storage, "taskE")
    a = results / "artifacts"
    cell(s, a, 2, SAME, (0.0108, None), (140, 144, 142))
    cell(s, a, 6, SAME, (0.05, 0.03), (141, 139, 143))  # the second search trial wins: lr 2e-3
    cell(s, a, 10, SAME, (0.04, 0.06), (143, 140, 141))
    cell(s, a, 2, TILED, (0.0201, None), (190, 188, 192), best_epoch=26)  # far better on test
    return s


def analyze(study, results, space="taskE"):
    return report.write_report(study if isinstance(study, list) else [study], spaces.load(space), results / space)


def test_cells_come_from_the_replicates(taske, results):
    paths = analyze(taske, results)
    cells = pd.read_csv(paths["cells"], dtype={"train_repeat": str, "eval_repeat": str}).set_index(
        ["out_features", "train_repeat"]
    )
    two, six = cells.loc[(2, "1,3,1,1")], cells.loc[(6, "1,3,1,1")]
    assert (two.search_trials, two.search_complete, two.search_pruned, two.replicates) == (2, 1, 1, 3)
    assert two.seeds == "1,2,3" and two.chosen_trial == 0 and bool(two.chosen_protocol)
    assert six.chosen_trial == 6 and not bool(six.chosen_protocol)  # the lower search val loss
    # Replicate means and sds, never a search trial's test figure (150 and 190 of 200).
    assert two.test_best_acc_mean == pytest.approx(142 / N_TEST)
    assert two.test_best_acc_sd == pytest.approx(np.std([0.70, 0.72, 0.71], ddof=1))
    assert two.test_interval == "seeds x images" and two.test_low < two.test_acc < two.test_high
    assert two.test_acc == pytest.approx(142 / N_TEST)
    assert (two.best_epoch, two.epochs) == (22, 30) and two.best_val_loss_mean == pytest.approx(0.02)
    md = paths["cells_md"].read_text()
    assert "Epoch 22/30 (0.02)" in md and "71.00% [" in md and "3 (1,2,3)" in md and "#0 (protocol)" in md


def test_show_your_work_is_each_cells_expected_best_search_loss(taske, results):
    paths = analyze(taske, results)
    work = pd.read_csv(paths["show_your_work"]).set_index("cell")
    six = work.loc["out_features=6; train_repeat=1,3,1,1; eval_repeat=1,3,1,1"]
    # Two search trials, 0.05 and 0.03: one draw averages them; two draws find 0.03 three times in four.
    assert six["k=1"] == pytest.approx(0.04) and six["k=2"] == pytest.approx(0.75 * 0.03 + 0.25 * 0.05)
    two = work.loc["out_features=2; train_repeat=1,3,1,1; eval_repeat=1,3,1,1"]
    assert two["k=1"] == pytest.approx((0.0108 + 0.9) / 2)  # a pruned trial counts with its best loss
    assert paths["expected_best"].stat().st_size > 5000


def test_report_page_tables_and_claims(taske, results):
    paths = analyze(taske, results)
    report = paths["report"].read_text()
    for needed in (
        "synthetic phantom",
        "## What this design can and cannot show",
        "## Table 1",
        "## Table 8, rebuilt",
        "## Table 9, rebuilt",
        "## Show your work",
        "The report beside this study",
        "## The report's claims, tested",
        "learning_curves.png",
        "show_your_work.png",
    ):
        assert needed in report, needed
    t9 = pd.read_csv(paths["table9"])
    assert list(t9["Best Val Loss (epoch)"].fillna("")) == ["Epoch 22/30 (0.02)", "", "Epoch 26/30 (0.02)"]
    side = pd.read_csv(paths["report_vs_study"])
    assert list(side.source[:2]) == ["report (one run)", "this study (replicates)"]
    claims = pd.read_csv(paths["claims"]).set_index("claim")
    assert list(claims.columns) == [c for c in tlclaims.COLUMNS if c != "claim"]
    # Train-only tiling: 95 % against 71 %, on the same images, three seeds each.
    assert claims.verdict["6"] == "supported" and claims.estimate["6"] == pytest.approx(0.24)
    assert claims.low["6"] > 0 and claims.p_holm["6"] < 0.05
    # out_features 6 against 2: 70.5 % against 71 %, equivalent within ±15 points? Not at ±2 with 3 seeds.
    assert claims.verdict["5a"] in ("supported", "inconclusive") and claims.margin["5a"] == 0.02
    assert claims.verdict["2a"] == "void" and "study taskA not run" in claims.reason["2a"]
    assert "plain words" not in report and "This study cannot say: study taskA not run" in report


def test_a_wider_margin_accepts_equivalence(taske, results):
    paths = report.write_report([taske], spaces.load("taskE"), results / "wide", margin=0.1)
    claims = pd.read_csv(paths["claims"]).set_index("claim")
    assert claims.verdict["5a"] == "supported" and claims.margin["5a"] == 0.1


def test_architecture_table_counts_resnext_and_resnet101():
    t = reference.architecture_table(pd.DataFrame({"arch": ["resnext50_32x4d", "resnet101"]}), 224).set_index("arch")
    assert t.loc["resnext50_32x4d", "blocks per stage"] == "3=>4=>6=>3"
    assert t.loc["resnet101", "blocks per stage"] == "3=>4=>23=>3"
    assert (t["convs per block"] == 3).all() and (t.stages == 4).all()
    # torchvision's published figures: 4.23 and 7.80 GMACs at 224 px, 2 FLOPs each.
    assert t.loc["resnext50_32x4d", "GFLOPs at 224 px"] == pytest.approx(2 * 4.23, rel=0.01)
    assert t.loc["resnet101", "GFLOPs at 224 px"] == pytest.approx(2 * 7.80, rel=0.01)


def b_and_c(storage, results, source, weights_source):
    b, c = new_study(storage, "taskB", source), new_study(storage, "taskC", source)
    # Seeds within a point of each other: at 3 seeds the seed term has 2 df, and with Holm over
    # the four transfer claims the critical t is about 9, so 11 points need a tight spread.
    for study, correct in ((b, (150, 151, 149)), (c, (171, 172, 173))):
        for arch in ("resnext50_32x4d", "resnet101"):
            for w in ("IMAGENET1K_V1", "IMAGENET1K_V2"):
                params = {"arch": arch, "weights": w}
                add(
                    study,
                    results / "artifacts",
                    params,
                    TrialState.COMPLETE,
                    history(10, 0.05),
                    correct=150,
                    protocol=True,
                    weights_source=weights_source,
                )
                for seed, n in enumerate(correct, 1):
                    add(
                        study,
                        results / "artifacts",
                        params,
                        TrialState.COMPLETE,
                        history(10, 0.05),
                        phase="replicate",
                        seed=seed,
                        correct=n,
                        weights_source=weights_source,
                    )
    return b, c


def test_taskd_pairs_b_and_c_on_real_data_with_real_weights(storage, results):
    b, c = b_and_c(storage, results, "/data/chest_xray", "IMAGENET1K_V1")
    paths = analyze([b, c], results, "taskD")
    t6 = pd.read_csv(paths["table6"])
    assert list(t6.cell) == [
        "arch=resnext50_32x4d; weights=IMAGENET1K_V1; task=taskB",
        "arch=resnext50_32x4d; weights=IMAGENET1K_V1; task=taskC",
    ]
    assert [v.split(" ")[0] for v in t6["Test acc"]] == ["75.00%", "86.00%"]
    assert "table7" in paths and "table3" not in paths
    claims = pd.read_csv(paths["claims"]).set_index("claim")
    assert (claims.verdict[["4a", "4b", "4c", "4d"]] == "supported").all()  # C beats B by 11 points
    assert claims.verdict["3a"] == "inconclusive"  # V1 and V2 are equal here
    assert claims.verdict["2a"] == "void"  # no taskA in the storage


@pytest.mark.parametrize(
    "source, weights_source, why",
    [("phantom (synthetic, seed 0)", "IMAGENET1K_V1", "phantom"), ("/data/chest_xray", "random-fallback", "random")],
)
def test_transfer_claims_are_void_on_the_phantom_or_without_weights(storage, results, source, weights_source, why):
    b, c = b_and_c(storage, results, source, weights_source)
    claims = pd.read_csv(analyze([b, c], results, "taskD")["claims"]).set_index("claim")
    assert (claims.verdict[["4a", "4b", "3a"]] == "void").all() and why in claims.reason["4a"]


def test_analyze_cli_reads_a_stored_study(taske, storage, results):
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "study" / "analyze.py"),
            "--space",
            "taskE",
            "--results",
            str(results),
            "--storage",
            storage,
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "Epoch 22/30 (0.02)" in out.stdout
    assert (results / "taskE" / "REPORT.md").is_file()


def test_a_study_whose_only_trial_failed_still_gets_a_report(storage, results):
    s = new_study(storage, "taskE")
    add(s, results / "artifacts", e_params(2, SAME), TrialState.FAIL, [])
    paths = analyze(s, results)
    cells = pd.read_csv(paths["cells"])
    assert (cells.search_trials[0], cells.failed[0], cells.replicates[0]) == (1, 1, 0)
    assert "0 | 0/0, none" in paths["table"]
