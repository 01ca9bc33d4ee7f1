"""--seeds auto on a real study: rounds of replicate trials run by Ray until the claims are decided.

Task E's two cells of claim 5a (out_features 6 against 2: "no effect"), on a small phantom: 2
seeds per cell, then a round of more up to --max-seeds 3 (looks at 2 and 3 seeds). The driver
stops itself with Ctrl-C once the first replicate of round 2 is COMPLETE: it resolves its own
unfinished trials and says how to resume. The rerun of the same command resumes the round, keeps
what finished as it was, runs no trial twice, and keeps each cell's model over both runs.
"""

import subprocess
import sys

from optuna.trial import TrialState

from tlstudy import cli
from tlstudy.analysis import sequential
from tlstudy.study import keep

from conftest import ROOT, kill_group
from conftest import load_study as load

CLAIM5A_SPACE = '''"""Task E's two cells of claim 5a: out_features 6 against 2, no tiling."""
from ray import tune
from tlstudy.spaces import training_space
FIXED = dict(arch="resnet18", weights="IMAGENET1K_V1", mode="finetune", train_repeat="1,3,1,1", eval_repeat="1,3,1,1")
CELLS = [dict(out_features=2), dict(out_features=6)]
PARAM_SPACE = {**training_space(), "out_features": tune.choice([2, 6])}
QUICK = dict(seeds=2)
'''


def replicates(study):
    """(cell, train_seed, round) of every COMPLETE replicate."""
    return sorted(
        (t.user_attrs["cell"], t.user_attrs["train_seed"], t.user_attrs.get("round"))
        for t in study.get_trials(states=(TrialState.COMPLETE,))
        if t.user_attrs["phase"] == "replicate"
    )


def test_seeds_auto_runs_rounds_and_a_rerun_resumes_the_round_it_was_in(tmp_path, ray_local):
    (tmp_path / "taskE.py").write_text(CLAIM5A_SPACE)
    results = tmp_path / "results"
    # Larger than TINY: at 16 px the models predict one class, and a claim on collapsed cells is void.
    data = ["--image-size", "24", "--phantom-sizes", "120,60,100", "--max-train", "120", "--epochs", "3"]
    args = ["--space", str(tmp_path / "taskE.py"), "--results", str(results), *data]
    args += ["--budget", "1", "--seeds", "auto", "--max-seeds", "3", "--pruner", "none", "--seed", "3"]
    args += ["--keep-models", "cells"]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "stopping_driver.py"), "round-2-complete", "sigint", "-", "--"]
        + args
        + ["--num-cpus", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out = proc.communicate(timeout=400)[0]
    finally:
        kill_group(proc)
    assert proc.returncode == 130, out[-3000:]
    assert "interrupted: finished trials are stored. Resume with the same command:" in out
    assert "look 1 of 2 (2 seeds per cell, level 0.0222)" in out and "next: 2 cells to 3 seeds" in out, out[-3000:]
    study = load(results, "taskE")
    rounds = study.user_attrs["rounds"]
    assert rounds["plan"] == [2, 3] and rounds["levels"] == sequential.levels([2, 3], 0.05)
    assert [look["look"] for look in rounds["looks"]] == [1] and rounds["looks"][0]["verdicts"]["5a"] == "inconclusive"
    cut = replicates(study)
    assert {r for _, _, r in cut} == {1, 2} and len(cut) < 2 * 3
    # The interrupted driver resolved its own unfinished trials.
    first = {t.number: t for t in study.trials}
    assert not [t for t in first.values() if t.state == TrialState.RUNNING]
    finished = {n: t.value for n, t in first.items() if t.state == TrialState.COMPLETE}

    assert cli.main(["run", *args]) == 0
    study = load(results, "taskE")
    done = replicates(study)
    assert set(cut) <= set(done)  # what finished stays, as it was
    after = {t.number: t for t in study.trials}
    assert all(after[n].state == TrialState.COMPLETE and after[n].value == v for n, v in finished.items())
    # Per cell one search trial (budget 1) and seeds 1..3, each run once, whatever the interrupt cut.
    searched = sorted(t.user_attrs["cell"] for t in after.values() if t.user_attrs["phase"] == "search")
    assert searched == sorted({c for c, _, _ in done}) and len(searched) == 2
    cells = sorted({c for c, _, _ in done})
    # Seeds 1-2 in round 1, 3 in round 2, each once, whatever the interrupt cut.
    assert done == sorted((c, s, 1 if s <= 2 else 2) for c in cells for s in (1, 2, 3)), done
    assert [look["look"] for look in study.user_attrs["rounds"]["looks"]] == [1, 2]
    # --keep-models cells: each cell's best replicate by val loss keeps its model, over both runs.
    reps = [t for t in after.values() if t.state == TrialState.COMPLETE and t.user_attrs["phase"] == "replicate"]
    best = {min((t for t in reps if t.user_attrs["cell"] == c), key=lambda t: t.value).number for c in cells}
    assert set(keep.links(study)) == best and len(best) == 2
    assert cli.main(["run", *args]) == 0  # the plan is spent: nothing more runs
    assert replicates(load(results, "taskE")) == done
