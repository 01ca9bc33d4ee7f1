"""bench/gpu_check.sh run as it runs without a GPU: every step at its tiny sizes, none importing Ray,
Optuna or SQLAlchemy (this environment has them; the GPU machine has not), so the script is tested
before GPU time is spent on it. It takes about 2 minutes, so it is marked slow (`pytest -m slow`):
.ci/run runs the script itself, in an environment with only the GPU machine's packages, and fails
when its verify step does."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

STEPS = ["info", "gpu_tests", "throughput", "data", "trial", "four_trials", "summary"]


@pytest.mark.slow
def test_gpu_check_runs_every_step_on_the_cpu_without_ray_or_optuna(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "GPU_CHECK_CPU": "1"}
    r = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh")], env=env, capture_output=True, text=True, timeout=420
    )
    log = (tmp_path / "gpu_check.log").read_text() if (tmp_path / "gpu_check.log").exists() else ""
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    assert list(res["steps"]) == STEPS[:-1] and all(s["exit"] == 0 for s in res["steps"].values()), log[-4000:]
    # Every timeout within 6 minutes: the steps', the summary's 10 s and verify's 5 s, and a second a step.
    assert sum(s["limit_s"] for s in res["steps"].values()) + 10 + 5 + len(STEPS) <= 360
    assert res["info"]["mode"] == "cpu" and res["info"]["torch"] and res["forbidden_imports"] == []
    # The GPU tests are collected and skipped here (no CUDA), with no error.
    tests = res["gpu_tests"]
    assert tests["tests"] >= 8 and tests["skipped"] == tests["tests"] and not tests["failures"] + tests["errors"]
    rows = res["throughput"]["rows"]
    archs = ("resnet18", "resnext50_32x4d", "resnet101")
    every = {(a, amp, r) for a in archs for amp in ("off", "bf16", "fp16") for r in ("1,3,1,1", "1,3,3,1")}
    # Rows the step's deadline left out on a busy machine are listed as skipped; every architecture runs.
    skipped = {(r["arch"], r["amp"], r["repeat"]) for r in res["throughput"]["skipped"]}
    assert {(r["arch"], r["amp"], r["repeat"]) for r in rows} | skipped == every
    assert {r["arch"] for r in rows} == set(archs)
    for row in rows:
        assert "error" not in row, row
        assert len(row["train_images_per_s"]) == len(row["eval_images_per_s"]) == 3 and row["estimate_gib"] > 0
        assert min(row["train_images_per_s"] + row["eval_images_per_s"]) > 0, row
    # The trials ran through `python -m tlstudy trial` with the full profile and the stand-in weights.
    [one], four = res["trials1"]["trials"], res["trials4"]["trials"]
    assert len(four) == 4 and all(t["exit"] == 0 and len(t["epoch_s"]) == 2 for t in [one, *four])
    assert one["device"] == "cpu" and one["amp"] == res["info"]["amp_auto"] and one["n_train"] == 32
    assert res["packing"]["gain_epoch"] > 0 and res["packing"]["gain_wall"] > 0
    assert "weights: IMAGENET1K_V1" in log and "RANDOM" not in log
