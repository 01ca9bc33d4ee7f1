import os

import pytest
import torch
from torchvision.models import resnet18

from tlstudy.errors import UserError
from tlstudy.training import models


def place_weights(arch_fn, arch, weights):
    """Put a state dict where torchvision looks for `arch`'s pretrained file."""
    torch.manual_seed(123)
    state = arch_fn().state_dict()
    path = models.weights_file(arch, weights)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(state, path)
    return state


def test_placed_weights_file_is_loaded_under_strict():
    state = place_weights(resnet18, "resnet18", "IMAGENET1K_V1")
    assert os.path.basename(models.weights_file("resnet18", "IMAGENET1K_V1")) == "resnet18-f37072fd.pth"
    model, source = models.build("resnet18", "IMAGENET1K_V1", out_features=6, policy="strict")
    assert source == "IMAGENET1K_V1"
    torch.testing.assert_close(model.conv1.weight, state["conv1.weight"])
    torch.testing.assert_close(model.layer4[1].bn2.running_mean, state["layer4.1.bn2.running_mean"])
    assert model.fc.out_features == 6 and model.fc.in_features == 512


def test_missing_weights_strict_names_the_file():
    with pytest.raises(UserError, match=r"resnet18-f37072fd\.pth in .*hub/checkpoints"):
        models.build("resnet18", "IMAGENET1K_V1", policy="strict")


def test_missing_weights_auto_falls_back_loudly():
    with pytest.warns(UserWarning, match="RANDOM init"):
        model, source = models.build("resnet18", "IMAGENET1K_V1", policy="auto")
    assert source == "random-fallback"


def test_weights_none_is_a_random_init_recorded_as_none():
    _, source = models.build("resnet18", "none")
    assert source == "none"


@pytest.mark.parametrize(
    "arch, weights, message",
    [("resnet18", "IMAGENET1K_V2", "no weights 'IMAGENET1K_V2'"), ("resnet999", "none", "unknown architecture")],
)
def test_unknown_architecture_or_weights_is_a_user_error(arch, weights, message):
    with pytest.raises(UserError, match=message):
        models.check(arch, weights)


def test_out_features_below_classes_rejected():
    with pytest.raises(UserError, match="out_features 1"):
        models.check("resnet18", "none", out_features=1, num_classes=2)


@pytest.mark.parametrize("arch, in_features", [("resnext50_32x4d", 2048), ("resnet101", 2048)])
def test_report_architectures_have_v2_weights_and_frozen_train_only_the_head(arch, in_features):
    models.check(arch, "IMAGENET1K_V2")
    model, _ = models.build(arch, "none", out_features=10, mode="frozen")
    assert model.fc.in_features == in_features and model.fc.out_features == 10
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]


def test_frozen_trains_only_the_head_and_keeps_batchnorm_statistics():
    model, _ = models.build("resnet18", "none", out_features=2, mode="frozen")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    models.set_mode(model, "frozen", training=True)
    for _ in range(3):
        x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {"fc.weight", "fc.bias"}
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"fc.weight", "fc.bias"}  # running_mean/var and num_batches_tracked untouched


def test_finetune_moves_batchnorm_statistics():
    model, _ = models.build("resnet18", "none", mode="finetune")
    before = model.bn1.running_mean.clone()
    models.set_mode(model, "finetune", training=True)
    model(torch.randn(4, 3, 32, 32))
    assert not torch.equal(before, model.bn1.running_mean)
