"""The frozen-backbone feature cache: same metrics as the uncached path, shared across trials."""

import os

import pytest
import torch
from torchvision.models import get_model

from tlstudy.data import splits as data
from tlstudy.settings import TrialConfig
from tlstudy.training import loop, models

from conftest import load_data

EPOCH_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr")
TEST_KEYS = ("acc", "auc", "sensitivity", "specificity", "balanced_acc", "confusion_matrix")
# Both paths see the same batches in the same order; the backbone's float32 output differs
# only in rounding, as it runs on batches of 128 (cached) instead of 16. Measured: equal to 1e-7.
RTOL = 1e-5


@pytest.fixture(scope="module")
def splits():
    return load_data("phantom", 16, seed=0, phantom_sizes=(64, 48, 32), min_val=0, use_cache=False)


@pytest.fixture
def pretrained():
    """A stand-in for torchvision's resnet18 IMAGENET1K_V1 file (nothing can be downloaded here)."""
    path = models.weights_file("resnet18", "IMAGENET1K_V1")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.manual_seed(123)
    torch.save(get_model("resnet18").state_dict(), path)
    return dict(arch="resnet18", weights="IMAGENET1K_V1", weights_policy="strict", mode="frozen")


def fit(config, splits):
    epochs = list(
        loop.fit(TrialConfig(**{"epochs": 2, "batch_size": 16, "lr": 0.05, "step_size": 1, **config}), splits)
    )
    return epochs, epochs[-1]["summary"]


def entries():
    """{feature cache file: (inode, mtime)}: a rewritten entry would change."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in data.cache_dir().glob("features-*.pt")}


def test_cached_features_give_the_uncached_metrics(splits, pretrained):
    """On the CPU (tests/test_gpu.py has the GPU's, with its own tolerance)."""
    cfg = {**pretrained, "train_repeat": "1,3,3,1", "eval_repeat": "1,3,1,1", "device": "cpu"}
    plain, plain_summary = fit({**cfg, "feature_cache": "off"}, splits)
    cached, cached_summary = fit(cfg, splits)
    assert plain_summary["feature_cache"] == "off" and cached_summary["feature_cache"] == "built"
    for p, c in zip(plain, cached):
        for k in EPOCH_KEYS:
            assert c[k] == pytest.approx(p[k], rel=RTOL, abs=RTOL), (p["epoch"], k)
    for k in ("best_epoch", "best_val_loss", *(f"test_{t}_{m}" for t in ("best", "final") for m in TEST_KEYS)):
        want = plain_summary[k]
        assert cached_summary[k] == (want if isinstance(want, list) else pytest.approx(want, rel=RTOL, abs=RTOL)), k


def test_feature_cache_is_shared_by_trials_and_keyed_by_what_makes_the_features(splits, pretrained):
    first = fit(pretrained, splits)[1]
    assert first["feature_cache"] == "built"
    before = entries()
    assert len(before) == 3  # train, val, test

    # Another trial of the study (other seed and training settings): the same files, not rewritten.
    other = fit({**pretrained, "train_seed": 1, "optimizer": "adam", "lr": 1e-3}, splits)[1]
    assert other["feature_cache"] == "hit" and entries() == before

    # A train subset keeps the data's fingerprint but not its pixels: only train is new.
    subset = data.subsample_train(splits, 48, seed=0)
    assert subset.fingerprint == splits.fingerprint
    assert fit(pretrained, subset)[1]["feature_cache"] == "partial" and len(entries()) == 4

    # Other repeat factors for val and test: new val and test features, train reused.
    assert fit({**pretrained, "eval_repeat": "1,3,3,1"}, splits)[1]["feature_cache"] == "partial"
    assert len(entries()) == 6

    # A random backbone depends on the trial's seed: one seed's features never serve another.
    random = dict(mode="frozen", weights="none")
    assert fit({**random, "train_seed": 0}, splits)[1]["feature_cache"] == "built"
    assert fit({**random, "train_seed": 1}, splits)[1]["feature_cache"] == "built"
    assert fit({**random, "train_seed": 1}, splits)[1]["feature_cache"] == "hit"
    assert len(entries()) == 12

    # Random augmentation changes the images every epoch: no cache, and nothing written.
    assert fit({**pretrained, "augment": True, "epochs": 1}, splits)[1]["feature_cache"] == "off"
    assert len(entries()) == 12
    assert {k: v for k, v in entries().items() if k in before} == before
