"""The analysis on studies built with the Optuna API: every figure is known in advance."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from tlstudy import analysis, spaces

ROOT = Path(__file__).parents[1]
EPOCHS = 30
SAME, TILED = ("1,3,1,1", "1,3,1,1"), ("1,3,3,1", "1,3,1,1")


def history(best_epoch, best_loss, n=EPOCHS, final_train_loss=0.01, best_train_acc=1.0):
    """n epochs whose val loss is lowest (best_loss) at best_epoch."""
    out = []
    for e in range(1, n + 1):
        out.append(dict(epoch=e, train_loss=final_train_loss + (n - e) * 0.01, train_acc=best_train_acc - (n - e) * 0.001,
                        val_loss=best_loss if e == best_epoch else best_loss + 0.001 * abs(e - best_epoch) + 0.0005,
                        val_acc=0.99 if e == best_epoch else 0.95, lr=1e-3, epoch_s=2.0))
    return out


CHOICES = {"out_features": [2, 6, 10], "train_repeat": ["1,3,1,1", "1,3,3,1"], "eval_repeat": ["1,3,1,1", "1,3,3,1"],
           "arch": ["resnext50_32x4d", "resnet101"], "weights": ["IMAGENET1K_V1", "IMAGENET1K_V2"]}


def add(study, params, state, hist, correct=None, total=624, wall_s=300.0):
    dists = {k: CategoricalDistribution(CHOICES[k]) if k in CHOICES else FloatDistribution(1e-5, 1.0, log=True)
             for k in params}
    attrs = {"history": json.dumps(hist), "device": "cpu", "weights_source": "file"}
    value = None
    if state == TrialState.COMPLETE:
        value = min(h["val_loss"] for h in hist)
        attrs.update(test_best_acc=correct / total, test_best_correct=correct, test_best_total=total, wall_s=wall_s,
                     best_val_loss=value)
    study.add_trial(create_trial(state=state, value=value, params=params, distributions=dists, user_attrs=attrs,
                                 intermediate_values={h["epoch"]: h["val_loss"] for h in hist}))


def new_study(storage, name, epochs=EPOCHS):
    study = optuna.create_study(study_name=name, storage=storage)
    study.set_user_attr("space", name)
    study.set_user_attr("base_config", {"epochs": epochs, "seed": 0})
    study.set_user_attr("data", {"data_source": "phantom (synthetic, seed 0)", "image_size": 32,
                                 "n_train": 100, "n_val": 20, "n_test": 624})
    return study


def e_params(out, repeats, lr=1e-3):
    return {"out_features": out, "train_repeat": repeats[0], "eval_repeat": repeats[1], "lr": lr}


@pytest.fixture
def storage(tmp_path):
    return f"sqlite:///{tmp_path / 'optuna.db'}"


@pytest.fixture
def taske(storage):
    s = new_study(storage, "taskE")
    # out_features 2, no tiling: two completed trials; #0 has the lower val loss.
    add(s, e_params(2, SAME, 1e-3), TrialState.COMPLETE, history(22, 0.0108, final_train_loss=0.0218), correct=468)
    add(s, e_params(2, SAME, 2e-3), TrialState.COMPLETE, history(17, 0.0362), correct=499)
    # out_features 6: a pruned trial with a lower val loss than the completed one, and a failed one.
    add(s, e_params(6, SAME, 1e-3), TrialState.PRUNED, history(3, 0.005, n=4))
    add(s, e_params(6, SAME, 2e-3), TrialState.COMPLETE, history(8, 0.03), correct=470)
    add(s, e_params(6, SAME, 3e-3), TrialState.FAIL, history(1, 0.5, n=1))
    # out_features 10: only pruned trials.
    add(s, e_params(10, SAME, 1e-3), TrialState.PRUNED, history(2, 0.2, n=3))
    add(s, e_params(10, SAME, 2e-3), TrialState.PRUNED, history(2, 0.1, n=2))
    # train-only tiling, far better on test than no tiling.
    add(s, e_params(2, TILED), TrialState.COMPLETE, history(26, 0.0201), correct=600)
    return s


def rows_by_out(cells, repeats=SAME):
    c = cells[(cells.train_repeat == repeats[0]) & (cells.eval_repeat == repeats[1])]
    return {int(r.out_features): r for _, r in c.iterrows()}


def test_cells_of_a_known_study(taske, tmp_path):
    paths = analysis.analyze([taske], spaces.load("taskE"), tmp_path / "out")
    cells = pd.read_csv(paths["cells"], dtype={"train_repeat": str, "eval_repeat": str})
    rows = rows_by_out(cells)
    two, six, ten = rows[2], rows[6], rows[10]
    # Best of two completed trials by val loss, with the report's figures from its history.
    assert (two.trial, two.best_epoch, two.epochs, two.best_val_loss) == (0, 22, 30, 0.0108)
    assert two.final_train_loss == pytest.approx(0.0218) and two.best_train_acc == 1.0
    assert (two.n, two.complete, two.pruned, two.failed) == (2, 2, 0, 0)
    assert two.test_acc == pytest.approx(468 / 624)
    # Mean and sd over the cell's two completed trials.
    assert two.test_acc_mean == pytest.approx((468 + 499) / 2 / 624)
    assert two.test_acc_sd == pytest.approx(np.std([468 / 624, 499 / 624], ddof=1))
    # A pruned trial never beats a completed one, however low its val loss; failed ones only count.
    assert (six.trial, six.trial_state, six.pruned, six.failed) == (3, "COMPLETE", 1, 1)
    # With nothing completed, the best pruned trial is the row, without test figures.
    assert (ten.trial, ten.trial_state, ten.best_epoch) == (6, "PRUNED", 2) and np.isnan(ten.test_acc)
    # The shown table has the report's column form.
    md = paths["cells_md"].read_text()
    assert "Epoch 22/30 (0.0108)" in md and "75.00% [" in md and "77.48% ± 3.51% (n=2)" in md
    assert "#6 (pruned: no test)" in md


def test_report_page_and_rebuilt_tables(taske, tmp_path):
    paths = analysis.analyze([taske], spaces.load("taskE"), tmp_path / "out")
    report = paths["report"].read_text()
    for needed in ("synthetic phantom", "## Table 1", "## Table 8, rebuilt", "## Table 9, rebuilt",
                   "The report beside this study", "## The report's claims, checked", "learning_curves.png"):
        assert needed in report
    for png in ("curves", "test_acc", "val_vs_test"):
        assert paths[png].stat().st_size > 5000
    t9 = pd.read_csv(paths["table9"])
    # The report's Table 9 rows in its order: no tiling, tiling both, tiling train only.
    assert list(t9["Best Val Loss (epoch)"].fillna("")) == ["Epoch 22/30 (0.0108)", "", "Epoch 26/30 (0.0201)"]
    arch = pd.read_csv(paths["architectures"])
    assert arch.loc[0, "blocks per stage"] == "2=>2=>2=>2" and arch.loc[0, "parameters (M)"] == 11.18
    side = pd.read_csv(paths["report_vs_study"])
    assert list(side.source[:2]) == ["report", "this study"]
    assert side["Test acc, best-val ckpt [95% CI]"][0] == "76.50%"  # the report's out_features=10 row


def test_architecture_table_counts_resnext_and_resnet101():
    per_trial = pd.DataFrame({"arch": ["resnext50_32x4d", "resnet101"], "mean_epoch_s": [1.0, 2.0]})
    t = analysis.architecture_table(per_trial, 224).set_index("arch")
    assert t.loc["resnext50_32x4d", "blocks per stage"] == "3=>4=>6=>3"
    assert t.loc["resnet101", "blocks per stage"] == "3=>4=>23=>3"
    assert (t["convs per block"] == 3).all() and (t.stages == 4).all()
    # torchvision's published figures: 4.23 and 7.80 GMACs at 224 px, 2 FLOPs each.
    assert t.loc["resnext50_32x4d", "GFLOPs at 224 px"] == pytest.approx(2 * 4.23, rel=0.01)
    assert t.loc["resnet101", "GFLOPs at 224 px"] == pytest.approx(2 * 7.80, rel=0.01)


def test_taskd_pairs_b_and_c(storage, tmp_path):
    b, c = new_study(storage, "taskB"), new_study(storage, "taskC")
    for study, mode_correct in ((b, 480), (c, 540)):
        for arch in ("resnext50_32x4d", "resnet101"):
            for w in ("IMAGENET1K_V1", "IMAGENET1K_V2"):
                add(study, {"arch": arch, "weights": w}, TrialState.COMPLETE, history(10, 0.05), correct=mode_correct)
    paths = analysis.analyze([b, c], spaces.load("taskD"), tmp_path / "taskD")
    t6 = pd.read_csv(paths["table6"])
    assert list(t6.cell) == ["arch=resnext50_32x4d, weights=IMAGENET1K_V1, task=taskB",
                             "arch=resnext50_32x4d, weights=IMAGENET1K_V1, task=taskC"]
    assert [v.split(" ")[0] for v in t6["Test acc, best-val ckpt [95% CI]"]] == ["76.92%", "86.54%"]
    assert "table7" in paths and "table3" not in paths
    claims = pd.read_csv(paths["claims"]).set_index(pd.RangeIndex(1, 7))
    assert claims.verdict[4] == "supported"  # C beats B in every pair, 60 of 624 apart
    assert claims.verdict[3] == "not resolved"  # V1 and V2 are equal here
    assert claims.verdict[2] == "no data"  # no taskA in the storage


def test_bootstrap_interval_holds_the_estimate_and_narrows():
    lo, hi = analysis.bootstrap_ci(80, 100)
    assert lo < 0.8 < hi
    lo2, hi2 = analysis.bootstrap_ci(800, 1000)
    assert lo2 < 0.8 < hi2 and hi2 - lo2 < (hi - lo) / 2
    assert analysis.bootstrap_ci(100, 100) == (1.0, 1.0)


def cells_e(correct_tiled, correct_plain, total):
    rows = []
    for (t, e), correct in ((TILED, correct_tiled), (SAME, correct_plain)):
        lo, hi = analysis.bootstrap_ci(correct, total)
        rows.append(dict(out_features=2, train_repeat=t, eval_repeat=e, test_acc=correct / total,
                         test_ci_low=lo, test_ci_high=hi))
    return {"taskE": pd.DataFrame(rows)}


@pytest.mark.parametrize("tiled, plain, total, verdict", [
    (90, 50, 100, "supported"),  # 90% vs 50% of 100: far apart
    (9, 5, 10, "not resolved"),  # the same rates on 10 images: the intervals overlap
    (50, 90, 100, "contradicted"),
])
def test_claim_verdict_follows_the_intervals(tiled, plain, total, verdict):
    claims = analysis.check_claims(cells_e(tiled, plain, total), {})
    tiling = claims[claims.claim.str.startswith("6.")].iloc[0]
    assert tiling.verdict == verdict
    assert f"{tiled / total:.1%}" in tiling.evidence


def test_analyze_cli_reads_a_stored_study(taske, storage, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    out = subprocess.run([sys.executable, str(ROOT / "study" / "analyze.py"), "--space", "taskE", "--results",
                          str(results), "--storage", storage], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "Epoch 22/30 (0.0108)" in out.stdout
    assert (results / "taskE" / "REPORT.md").is_file()


def test_a_study_whose_only_trial_failed_still_gets_a_report(storage, tmp_path):
    s = new_study(storage, "taskE")
    add(s, e_params(2, SAME), TrialState.FAIL, [])
    paths = analysis.analyze([s], spaces.load("taskE"), tmp_path / "out")
    cells = pd.read_csv(paths["cells"])
    assert (cells.n[0], cells.failed[0]) == (1, 1) and np.isnan(cells.trial[0])
    assert "none finished" in paths["table"]
