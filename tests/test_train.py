import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tlstudy import data, phantom, train
from tlstudy.errors import UserError

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def phantom32():
    return data.load("phantom", 32, seed=0, phantom_sizes={"train": 320, "val": 100, "test": 100}, use_cache=False)


@pytest.fixture(scope="module")
def balanced32():
    """Phantoms with half of each class, so that chance is 50 % on every split."""
    x, y = {}, {}
    for i, (split, n) in enumerate((("train", 320), ("val", 100), ("test", 100))):
        a, b = phantom.make_split(n, 32, 10 + i, shifted=(split == "test"), normal_fraction=0.5)
        x[split], y[split] = torch.from_numpy(a), torch.from_numpy(b)
    return data.Splits(x, y, ["NORMAL", "PNEUMONIA"], "phantom (balanced)", "test")


def run(config, splits):
    return list(train.fit(config, splits))


def test_training_lowers_loss_and_beats_chance(balanced32):
    epochs = run(dict(weights="none", optimizer="adam", lr=1e-3, epochs=5, batch_size=32, schedule="cosine"), balanced32)
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4, 5]
    assert epochs[-1]["train_loss"] < 0.5 * epochs[0]["train_loss"]
    # Chance is 50 %; measured: 75 % at epoch 5 from a random init at 32 px.
    assert max(e["val_acc"] for e in epochs) >= 0.65
    last = epochs[-1]["summary"]
    assert all("summary" not in e for e in epochs[:-1])
    assert last["best_val_loss"] == min(e["val_loss"] for e in epochs)
    assert epochs[last["best_epoch"] - 1]["val_loss"] == last["best_val_loss"]
    assert last["test_best_total"] == 100 and 0 <= last["test_best_acc"] <= 1
    assert last["weights_source"] == "none" and last["device"] == "cpu"
    assert last["n_train"] == 320 and last["data_source"] == "phantom (balanced)"


def test_same_seed_same_metrics_and_repeat_tiles_input(phantom32):
    cfg = dict(weights="none", epochs=1, batch_size=64, train_repeat="1,3,3,1", eval_repeat="1,3,1,1")
    a, b = run(cfg, phantom32), run(cfg, phantom32)
    assert a[-1]["train_loss"] == b[-1]["train_loss"]
    assert a[-1]["summary"]["test_best_acc"] == b[-1]["summary"]["test_best_acc"]


def test_frozen_trial_keeps_backbone(phantom32):
    last = run(dict(weights="none", mode="frozen", epochs=2, batch_size=64, out_features=6), phantom32)[-1]["summary"]
    assert len(last["test_final_confusion_matrix"][0]) == 6  # columns: every output index


def test_non_finite_loss_stops_the_trial(phantom32):
    with pytest.raises(FloatingPointError, match="non-finite"):
        run(dict(weights="none", lr=1e6, optimizer="sgd", epochs=3, batch_size=64), phantom32)


@pytest.mark.parametrize("config, message", [
    ({"arch": "resnet18", "weights": "IMAGENET1K_V2"}, "no weights"),
    ({"optimzer": "sgd"}, "unknown trial settings"),
    ({"schedule": "linear"}, "schedule"),
    ({"train_repeat": "1,3,3"}, "repeat"),
    ({"out_features": 1}, "out_features"),
])
def test_bad_config_fails_before_training(phantom32, config, message):
    with pytest.raises(UserError, match=message):
        next(train.fit(config, phantom32))


def test_trial_cli_writes_json(tmp_path):
    out = tmp_path / "trial.json"
    r = subprocess.run([sys.executable, str(ROOT / "study" / "trial.py"), "--image-size", "32", "--epochs", "2",
                        "--phantom-sizes", "96,100,40", "--batch-size", "32", "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "best val loss: Epoch" in r.stdout and "RANDOM init" in r.stderr
    result = json.loads(out.read_text())
    assert [e["epoch"] for e in result["epochs"]] == [1, 2]
    assert result["summary"]["weights_source"] == "random-fallback"
    assert result["summary"]["test_best_total"] == 40


@pytest.mark.parametrize("args, message", [
    (["--data", "/no/such/dir"], "does not exist"),
    (["--arch", "resnet18", "--weights", "IMAGENET1K_V2"], "IMAGENET1K_V2"),
    (["--weights-policy", "strict"], "resnet18-f37072fd.pth"),
    (["--train-repeat", "1,3,3"], "repeat"),
    (["--arch", "nosuchnet"], "unknown architecture"),
    (["--epochs", "x"], "--epochs: 'x' is not a whole number"),
])
def test_trial_cli_bad_input_is_one_line_exit_2(args, message):
    r = subprocess.run([sys.executable, str(ROOT / "study" / "trial.py"), "--image-size", "32", *args],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_trial_runs_with_bf16_and_channels_last(balanced32):
    cfg = dict(weights="none", epochs=2, batch_size=32, augment=True)
    gpu = run({**cfg, "device": "cuda"}, balanced32)[-1]["summary"]
    assert gpu["device"] == "cuda" and gpu["amp"] == torch.cuda.is_bf16_supported() and gpu["channels_last"] == gpu["amp"]
    assert gpu["test_best_total"] == 100 and gpu["best_train_acc"] > 0.5
