"""User mistakes end `tlstudy run`, `trial`, `analyze`, `dashboard` and `submit` with one line on
stderr and exit status 2, and leave stored studies, exports and caches as they were.

The cases call tlstudy.cli.main in this process (its heavy imports load once, not once per case);
one case per script in study/ runs it as a real subprocess, end to end."""

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest

from tlstudy import cli

ROOT = Path(__file__).parents[1]


def one_line_error(code, err, needle):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err


def cli_error(capfd, argv, needle):
    """cli.main(argv) in this process: exit status 2 and one line on stderr holding needle."""
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    one_line_error(e.value.code, capfd.readouterr().err, needle)


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


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--space", "taskZ"], "unknown space 'taskZ'"),
        (["--space", "nowhere/space.py"], "does not exist"),
        (["--space", "{syntax}"], "syntax error"),
        (["--space", "{empty}"], "defines no PARAM_SPACE"),
        (["--space", "taskE", "--data", "/no/such/folder"], "does not exist"),
        (["--space", "taskE", "--storage", "postgresql://tl:tl@127.0.0.1:1/tl"], "cannot open storage"),
        (["--space", "taskE", "--storage", "nosuchdb://x"], "cannot open storage"),
        (["--space", "taskE", "--storage", "{file}/sub/journal.log"], "cannot create the folder for storage"),
        (["--space", "taskE", "--results", "{file}/sub"], "results folder"),
        (["--space", "taskE"], "different space"),
        (["--space", "taskE", "--phantom-sizes", "1,2"], "three positive integers"),
        (["--space", "taskE", "--epochs", "0"], "--epochs: '0' is not a whole number >= 1"),
        (["--space", "taskE", "--samples-per-cell", "2"], "unrecognized arguments: --samples-per-cell"),
    ],
)
def test_bad_input(tmp_path, stored, capfd, args, needle):
    (tmp_path / "syntax.py").write_text("PARAM_SPACE = {\n")
    (tmp_path / "empty.py").write_text('"""nothing here"""\n')
    (tmp_path / "file").write_text("a file, not a folder")
    args = [a.format(syntax=tmp_path / "syntax.py", empty=tmp_path / "empty.py", file=tmp_path / "file") for a in args]
    if "--results" not in args:
        args += ["--results", str(stored)]
    before = digest(stored / "optuna.db")
    cli_error(capfd, ["run", *args], needle)
    assert digest(stored / "optuna.db") == before
    assert [p.name for p in stored.iterdir()] == ["optuna.db"]


# Bad data and trial settings, through study/trial.py. Each case builds its input in `tmp` and
# returns the arguments; `needle` must be in the error line.
def _layout(tmp, classes, files_per_class=2, empty=()):
    root = tmp / "xray"
    sample = sorted((ROOT / "tests" / "fixtures" / "chest_xray_sample" / "NORMAL").glob("*.jpeg"))
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        for c in classes:
            (root / split / c).mkdir()
            for f in [] if c in empty else sample[:files_per_class]:
                (root / split / c / f.name).write_bytes(f.read_bytes())
    return root


def _corrupt(tmp):
    root = _layout(tmp, ["NORMAL", "PNEUMONIA"], files_per_class=4)
    bad = sorted((root / "train" / "PNEUMONIA").iterdir())[0]
    bad.write_bytes(bad.read_bytes()[:300])  # a truncated JPEG
    return root, bad


def _not_image(tmp):
    root = _layout(tmp, ["NORMAL", "PNEUMONIA"])
    (root / "test" / "NORMAL" / "notes.txt").write_text("not an image")
    return root


def _npy(tmp, y_train=None, y_test=None):
    rng = np.random.default_rng(0)
    for s, n in (("train", 8), ("val", 4), ("test", 4)):
        np.save(tmp / f"x_{s}.npy", rng.integers(0, 255, (n, 16, 16), dtype=np.uint8))
        np.save(tmp / f"y_{s}.npy", np.arange(n) % 2)
    if y_train is not None:
        np.save(tmp / "y_train.npy", y_train)
    if y_test is not None:
        np.save(tmp / "y_test.npy", y_test)
    return tmp


def _npz_without_test(tmp):
    arrays = {
        f"{s}_{k}": np.zeros((4, 16, 16), np.uint8) if k == "images" else np.arange(4) % 2
        for s in ("train", "val")
        for k in ("images", "labels")
    }
    np.savez(tmp / "pneumoniamnist.npz", **arrays)
    return tmp / "pneumoniamnist.npz"


FAST_TRIAL = ["--image-size", "16", "--phantom-sizes", "8,8,8", "--epochs", "1", "--weights", "none"]
TRIAL_CASES = {
    "no class subfolders": (lambda tmp: ["--data", _layout(tmp, [])], "has no class subfolders"),
    "an empty class folder": (
        lambda tmp: ["--data", _layout(tmp, ["NORMAL", "PNEUMONIA"], empty=["PNEUMONIA"])],
        "is missing or empty",
    ),
    "one class only": (lambda tmp: ["--data", _layout(tmp, ["NORMAL"])], "at least two classes"),
    "a truncated JPEG": (lambda tmp: ["--data", _corrupt(tmp)[0]], "PNEUMONIA/NORMAL2-IM-1427-0001.jpeg ("),
    "a non-image file": (lambda tmp: ["--data", _not_image(tmp)], "notes.txt"),
    "an npz without the expected keys": (lambda tmp: ["--data", _npz_without_test(tmp)], "lacks the keys"),
    "npy x and y of different lengths": (
        lambda tmp: ["--data", _npy(tmp, y_train=np.arange(7) % 2)],
        "8 images but 7 labels",
    ),
    "labels out of range": (lambda tmp: ["--data", _npy(tmp, y_test=np.array([0, 1, 5, 1]))], "outside the classes"),
    "an unknown architecture": (lambda tmp: ["--arch", "resnet19"], "unknown architecture 'resnet19'"),
    "strict policy without the weights file": (
        lambda tmp: [*FAST_TRIAL, "--weights", "IMAGENET1K_V1", "--weights-policy", "strict"],
        "place the file resnet18-f37072fd.pth in",
    ),
    "resnet18 with IMAGENET1K_V2": (
        lambda tmp: ["--weights", "IMAGENET1K_V2"],
        "resnet18 has no weights 'IMAGENET1K_V2'",
    ),
    "out_features below the classes": (
        lambda tmp: [*FAST_TRIAL, "--out-features", "1"],
        "out_features 1 is smaller than the 2 classes",
    ),
    "malformed repeat factors": (lambda tmp: ["--train-repeat", "1,3,x,1"], "repeat factors '1,3,x,1'"),
}


def snapshot(*folders):
    return {p: digest(p) for f in folders if f.exists() for p in sorted(f.rglob("*")) if p.is_file()}


@pytest.fixture
def kept(tmp_path, stored):
    """A storage, an export and a data cache entry that a failing command must leave as they were.
    The cache may gain entries (data that loaded before the mistake showed), never lose or change one."""
    (stored / "taskE").mkdir()
    (stored / "taskE" / "trials.csv").write_text("number,state\n0,COMPLETE\n")
    cache = tmp_path / "cache"  # TLSTUDY_CACHE_DIR (tests/conftest.py)
    cache.mkdir(exist_ok=True)
    (cache / "data-0123456789abcdef.pt").write_bytes(b"an earlier entry")
    before = snapshot(stored, cache)
    yield stored
    after = snapshot(stored, cache)
    assert {p: after.get(p) for p in before} == before
    assert not [p for p in set(after) - set(before) if cache not in p.parents]


@pytest.mark.parametrize("case", list(TRIAL_CASES))
def test_bad_trial_input(tmp_path, kept, capfd, monkeypatch, case):
    make, needle = TRIAL_CASES[case]
    (tmp_path / "in").mkdir()
    args = [str(a) for a in make(tmp_path / "in")]
    args = (
        ([] if "--image-size" in args else ["--image-size", "16"]) + args + ["--json", str(kept / "taskE" / "t.json")]
    )
    # No network: on a machine with one, the strict case would otherwise download the weights.
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    cli_error(capfd, ["trial", "--profile", "quick", *args], needle)


def test_skip_bad_images_skips_counts_and_reports(tmp_path, capsys):
    root, bad = _corrupt(tmp_path)
    assert cli.main(["trial", "--data", str(root), *FAST_TRIAL, "--skip-bad-images"]) == 0
    assert f"skipped 1 unreadable images, e.g. {bad}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--space", "taskZ"], "unknown space 'taskZ'"),
        (["--space", "taskE", "--storage", "postgresql://tl:tl@127.0.0.1:1/tl"], "cannot open storage"),
        (["--space", "taskE", "--storage", "{results}/missing.log"], "no study storage at"),
        (["--space", "taskC"], "no study 'taskC'"),
    ],
)
def test_bad_analyze_input(kept, capfd, args, needle):
    args = [a.format(results=kept) for a in args]
    cli_error(capfd, ["analyze", *args, "--results", str(kept)], needle)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--storage", "{results}/missing.log"], "no study storage at"),  # refused, not created empty
        (["--storage", "sqlite:///{results}/missing.db"], "no study storage at"),
        (["--space", "taskC"], "holds no study 'taskC'"),
    ],
)
def test_bad_dashboard_input(kept, capfd, args, needle):
    args = [a.format(results=kept) for a in args]
    cli_error(capfd, ["dashboard", *args, "--results", str(kept)], needle)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--space", "taskE"], "--cluster-address is required"),
        (["--cluster-address", "http://127.0.0.1:1", "--space", "taskZ"], "unknown space 'taskZ'"),
        (["--cluster-address", "http://127.0.0.1:1", "--space", "taskE", "--epochs", "x"], "--epochs: 'x' is not"),
        (
            ["--cluster-address", "http://127.0.0.1:1", "--space", "taskE", "--storage", "postgresql://u:pw@db/x"],
            "holds a password",
        ),
    ],
)
def test_bad_submit_input(kept, capfd, monkeypatch, tmp_path, args, needle):
    for variable in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.chdir(kept)
    cli_error(capfd, ["submit", *args, "--results", str(kept)], needle)


# End to end: each script in study/ as a real process, on the fast path (no torch, no Ray).
SCRIPT_CASES = {
    "run.py": (["--space", "taskZ", "--results", "{results}"], "unknown space 'taskZ'"),
    "trial.py": (["--data", "{results}/no/such/folder", "--json", "{results}/taskE/t.json"], "does not exist"),
    "analyze.py": (["--space", "taskE", "--storage", "{results}/missing.log"], "no study storage at"),
    "dashboard.py": (["--storage", "{results}/missing.log"], "no study storage at"),
    "submit.py": (["--cluster-address", "http://127.0.0.1:1", "--space", "taskZ"], "unknown space 'taskZ'"),
}


@pytest.mark.parametrize("script", list(SCRIPT_CASES))
def test_each_script_fails_with_one_line_and_exit_2(kept, script):
    args, needle = SCRIPT_CASES[script]
    r = subprocess.run(
        [sys.executable, str(ROOT / "study" / script), *[a.format(results=kept) for a in args]],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=kept,
    )
    one_line_error(r.returncode, r.stderr, needle)
