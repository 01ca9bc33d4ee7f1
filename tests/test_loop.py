import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchvision.models import get_model

from tlstudy import cli
from tlstudy.errors import UserError
from tlstudy.names import BEST_VAL_LOSS, EPOCH_KEYS, KEPT_WEIGHTS, PREDICTIONS, RESUME_STATE, SUMMARY, TEST_BEST_ACC
from tlstudy.settings import TrialConfig
from tlstudy.training import loop, models
from tlstudy.training.models import IMAGENET_MEAN, IMAGENET_STD, to_input

from conftest import balanced_phantom, load_data

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def phantom32():
    return load_data("phantom", 32, seed=0, phantom_sizes=(320, 100, 100), use_cache=False)


@pytest.fixture(scope="module")
def balanced32():
    return balanced_phantom()


def run(config, splits):
    return list(loop.fit(TrialConfig(**config), splits))


def test_training_lowers_loss_and_beats_chance(balanced32):
    epochs = run(
        dict(weights="none", optimizer="adam", lr=1e-3, epochs=5, batch_size=32, schedule="cosine"), balanced32
    )
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


def test_same_seed_same_metrics(phantom32):
    cfg = dict(weights="none", epochs=1, batch_size=64, train_repeat="1,3,3,1", eval_repeat="1,3,1,1")
    a, b = run(cfg, phantom32), run(cfg, phantom32)
    assert a[-1]["train_loss"] == b[-1]["train_loss"]
    assert a[-1]["summary"]["test_best_acc"] == b[-1]["summary"]["test_best_acc"]


def test_to_input_repeats_the_channel_and_tiles_the_height():
    x = torch.tensor([[[[0, 255], [51, 102]]]], dtype=torch.uint8)  # 1 x 1 x 2 x 2
    out = to_input(x, (1, 3, 3, 1))
    assert out.shape == (1, 3, 6, 2)
    for c, (mean, std) in enumerate(zip(IMAGENET_MEAN, IMAGENET_STD)):
        image = (torch.tensor([[0.0, 1.0], [0.2, 0.4]]) - mean) / std
        torch.testing.assert_close(out[0, c], torch.cat([image, image, image]))  # three tiles, top to bottom


def recording_build(monkeypatch):
    """models.build as loop.fit calls it, each model it builds kept with its state as built
    and the input of every forward call, with the mode the model was in."""
    built, inputs, build = [], [], models.build

    def build_and_record(*args, **kwargs):
        model, source = build(*args, **kwargs)
        built.append((model, {k: v.clone() for k, v in model.state_dict().items()}))
        model.register_forward_pre_hook(lambda m, args: inputs.append((m.training, args[0].detach().clone())))
        return model, source

    monkeypatch.setattr(models, "build", build_and_record)
    return built, inputs


def pixels(batch):
    """A normalised input batch back to uint8 pixels, per channel (on the CPU)."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((batch.cpu() * std + mean) * 255).round().to(torch.uint8)


def test_training_feeds_the_model_the_tiled_images(phantom32, monkeypatch):
    """train_repeat 1,3,3,1: the model trains on each 32 px image as three channels and three tiles
    in height (96 x 32), as the report's x.repeat(1, 3, 3, 1); val and test see eval_repeat's 32 x 32."""
    _, inputs = recording_build(monkeypatch)
    run(dict(weights="none", epochs=1, batch_size=64, train_repeat="1,3,3,1", eval_repeat="1,3,1,1"), phantom32)
    train_in = [x for training, x in inputs if training]
    eval_in = [x for training, x in inputs if not training]
    assert train_in and {tuple(x.shape[1:]) for x in train_in} == {(3, 96, 32)}
    assert eval_in and {tuple(x.shape[1:]) for x in eval_in} == {(3, 32, 32)}
    tiled = pixels(train_in[0])
    image = tiled[:, :1, :32]
    assert torch.equal(tiled, image.repeat(1, 3, 3, 1))  # the same image in every channel and tile
    train_images = {im.numpy().tobytes() for im in phantom32.x["train"]}
    assert all(im.numpy().tobytes() in train_images for im in image)  # ... and it is a training image


@pytest.mark.parametrize("feature_cache", ["auto", "off"])
def test_frozen_trial_trains_the_head_and_keeps_the_backbone(phantom32, monkeypatch, feature_cache):
    """Frozen mode, with the head trained on cached features (auto) or behind the backbone (off):
    the backbone's weights and BatchNorm statistics end as they were built; only the head moves."""
    built, _ = recording_build(monkeypatch)
    last = run(
        dict(weights="none", mode="frozen", epochs=2, batch_size=64, out_features=6, feature_cache=feature_cache),
        phantom32,
    )[-1]["summary"]
    [(model, before)] = built
    after = model.state_dict()
    assert {k for k in before if not torch.equal(before[k], after[k])} == {"fc.weight", "fc.bias"}
    assert last["feature_cache"] == {"auto": "built", "off": "off"}[feature_cache]
    assert len(last["test_final_confusion_matrix"][0]) == 6  # the new head's 6 outputs, a column each


def test_records_carry_the_result_keys(phantom32):
    """What fit yields is named as tlstudy.names says, which the searcher and the exports read."""
    epochs = run(dict(weights="none", mode="frozen", epochs=2, batch_size=64), phantom32)
    assert set(epochs[0]) == {*EPOCH_KEYS, RESUME_STATE}  # the state to resume from after epoch 1
    assert set(epochs[-1]) == {*EPOCH_KEYS, SUMMARY, KEPT_WEIGHTS}  # the model file's weights
    # A frozen trial trains its head on cached features: the kept weights are the whole network's.
    assert set(epochs[-1][KEPT_WEIGHTS]) == set(get_model("resnet18").state_dict())
    assert {BEST_VAL_LOSS, TEST_BEST_ACC, PREDICTIONS} <= set(epochs[-1][SUMMARY])


def test_non_finite_loss_stops_the_trial(phantom32):
    with pytest.raises(FloatingPointError, match="non-finite"):
        run(dict(weights="none", lr=1e6, optimizer="sgd", epochs=3, batch_size=64), phantom32)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"arch": "resnet18", "weights": "IMAGENET1K_V2"}, "no weights"),
        ({"optimzer": "sgd"}, "unknown trial settings"),
        ({"schedule": "linear"}, "schedule"),
        ({"train_repeat": "1,3,3"}, "repeat"),
        ({"out_features": 1}, "out_features"),
    ],
)
def test_bad_config_fails_before_training(phantom32, config, message):
    with pytest.raises(UserError, match=message):
        next(loop.fit(TrialConfig.of(config), phantom32))


def test_trial_cli_writes_json(tmp_path):
    out = tmp_path / "trial.json"
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "study" / "trial.py"),
            "--profile",
            "quick",  # the default where torch sees no GPU; with one, full's strict weights would be missing
            "--image-size",
            "32",
            "--epochs",
            "2",
            "--phantom-sizes",
            "96,100,40",
            "--batch-size",
            "32",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "best val loss: Epoch" in r.stdout and "RANDOM init" in r.stderr
    result = json.loads(out.read_text())
    assert [e["epoch"] for e in result["epochs"]] == [1, 2]
    assert result["summary"]["weights_source"] == "random-fallback"
    assert result["summary"]["test_best_total"] == 40


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "/no/such/dir"], "does not exist"),
        (["--arch", "resnet18", "--weights", "IMAGENET1K_V2"], "IMAGENET1K_V2"),
        (["--weights-policy", "strict"], "resnet18-f37072fd.pth"),
        (["--train-repeat", "1,3,3"], "repeat"),
        (["--arch", "nosuchnet"], "unknown architecture"),
        (["--epochs", "x"], "--epochs: 'x' is not a whole number"),
    ],
)
def test_trial_cli_bad_input_is_one_line_exit_2(args, message, capsys):
    # In this process: the same command as `tlstudy trial` (an uncaught exception would fail the
    # test with its traceback); one of them below runs as its own process too.
    with pytest.raises(SystemExit) as e:
        cli.main(["trial", "--image-size", "32", *args])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert e.value.code == 2 and len(err) == 1 and message in err[0], err


def test_trial_script_bad_input_is_one_line_exit_2():
    r = subprocess.run(
        [sys.executable, str(ROOT / "study" / "trial.py"), "--image-size", "32", "--epochs", "x"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "--epochs: 'x' is not a whole number" in lines[0]
