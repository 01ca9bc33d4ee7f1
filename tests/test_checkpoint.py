"""A trial's state after an epoch (tlstudy.training.checkpoint): a trial resumed from it ends as if
it had never stopped, bit for bit on the CPU."""

import pytest
import torch

from tlstudy.names import KEPT_WEIGHTS, RESUME_STATE, SUMMARY
from tlstudy.settings import TrialConfig
from tlstudy.training import checkpoint, loop, models

from conftest import load_data

KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr")


@pytest.fixture(scope="module")
def splits():
    return load_data("phantom", 16, phantom_sizes=(48, 40, 40), min_val=0, use_cache=False)


# Augmentation draws from the batch generator, Adam keeps two moments, the cosine schedule its
# step count, step an lr drop after epoch 2: each is state a resumed trial must get back. The first
# runs as a study's trial would here (--amp auto: bf16 on a CPU with AVX512-BF16/AMX), the second in
# float32. On such a CPU, torch's bf16 channels-last convolution backward leaves arbitrary values in
# the weight gradient of kernel taps that only ever see padding (layer4 at 16 px, whose input is
# 1 x 1): those weights never touch an output, but they differ from run to run, resumed or not. So
# the kept weights are compared bit for bit in float32, and by their outputs under bf16.
@pytest.mark.parametrize(
    "settings",
    [
        dict(optimizer="adam", lr=3e-3, schedule="cosine", augment=True),
        dict(optimizer="sgd", lr=1e-2, schedule="step", step_size=2, amp="off"),
    ],
)
def test_a_trial_resumed_after_epoch_2_ends_as_the_uninterrupted_one(tmp_path, splits, settings):
    config = TrialConfig(arch="resnet18", weights="none", epochs=5, batch_size=16, train_seed=3, **settings)
    whole = list(loop.fit(config, splits))
    assert all(RESUME_STATE in r for r in whole[:-1]) and RESUME_STATE not in whole[-1]

    first = loop.fit(config, splits)
    for rec in first:
        if rec["epoch"] == 2:
            checkpoint.save(rec[RESUME_STATE], tmp_path)  # as the trainable does, before the next epoch
            break
    first.close()  # the worker dies here
    torch.manual_seed(12345)  # whatever the new process's generators hold: the state replaces it
    resumed = list(loop.fit(config, splits, resume=checkpoint.load(tmp_path)))

    assert [r["epoch"] for r in resumed] == [3, 4, 5]
    for a, b in zip(whole[2:], resumed):
        assert {k: b[k] for k in KEYS} == {k: a[k] for k in KEYS}  # equal, not close
    s, r = whole[-1][SUMMARY], resumed[-1][SUMMARY]
    assert r["resumed_at"] == [3] and "resumed_at" not in s
    for k in ("best_epoch", "best_val_loss", "best_acc_epoch", "test_best_acc", "test_final_auc", "predictions"):
        assert r[k] == s[k], k
    kept_a, kept_b = whole[-1][KEPT_WEIGHTS], resumed[-1][KEPT_WEIGHTS]
    assert kept_a.keys() == kept_b.keys()
    if config.amp == "off":
        assert all(torch.equal(kept_a[k], kept_b[k]) for k in kept_a)
    else:
        run = loop.RunContext(torch.device("cpu"), False, torch.contiguous_format, "finetune", "eval", False)
        nets = [models.build("resnet18", "none", 2)[0] for _ in range(2)]
        for net, kept in zip(nets, (kept_a, kept_b)):
            net.load_state_dict(kept)
        a, b = (loop.outputs(net, splits.x["val"], models.parse_repeat(config.eval_repeat), run) for net in nets)
        assert torch.equal(a, b)


def test_a_state_that_is_not_a_trials_is_refused(tmp_path):
    torch.save({"version": 99}, tmp_path / "trial_state.pt")
    with pytest.raises(Exception, match="not a tlstudy trial state"):
        checkpoint.load(tmp_path)
