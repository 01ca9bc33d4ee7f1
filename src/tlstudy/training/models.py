"""torchvision classification models with a new head, fine-tuned or frozen: the input they take, and
the optimizer and schedule they train with (the numerics: tlstudy.training.device).

Pretrained weights come through torchvision's own cache,
`$TORCH_HOME/hub/checkpoints/<file>.pth` (`torch.hub.get_dir()`), so a file placed
there by hand works offline. Two policies for weights that are not there:
- "strict" (the report's protocol): try to download, and on failure stop with one
  line naming the file and where to put it;
- "auto" (the offline quick path): try to download, and on failure train from a
  random init with a loud warning. The trial records `weights_source` either way.

The input: as in the report, the one-channel N x 1 x H x W batch is expanded with
`Tensor.repeat(*factors)`: (1,3,1,1) makes three identical channels, (1,3,3,1) also tiles the
image three times along its height (the report's Task E, where training took about 3x longer).
Then ImageNet normalisation, which the pretrained weights expect. Applied to whole uint8 batches
rather than per sample (`to_input`), by the training loop and by `tlstudy predict` alike.
"""

import contextlib
import functools
import math
import os
import random
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models import get_model, get_model_weights, list_models

from tlstudy.errors import UserError
from tlstudy.names import RANDOM_FALLBACK
from tlstudy.settings import TrialConfig

WEIGHT_POLICIES = ("strict", "auto")
MODES = ("finetune", "frozen")


def weights_file(arch: str, weights: str) -> str:
    """Where torchvision looks for `arch`'s `weights` before downloading them."""
    url = get_model_weights(arch)[weights].url
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


def check(
    arch: str,
    weights: str | None = "none",
    out_features: int = 2,
    num_classes: int = 1,
    mode: str = "finetune",
    policy: str = "auto",
) -> None:
    """Validate a model configuration up front, so a trial fails before it trains."""
    archs = list_models(module=torchvision.models)
    if arch not in archs:
        raise UserError(
            f"unknown architecture {arch!r}; torchvision's classification models include "
            "resnet18, resnet101, resnext50_32x4d (see torchvision.models.list_models())"
        )
    if weights not in (None, "none"):
        available = [w.name for w in get_model_weights(arch)]
        if weights not in available:
            raise UserError(f"{arch} has no weights {weights!r}; torchvision has {available} for it, or 'none'")
    if mode not in MODES:
        raise UserError(f"mode {mode!r} is not one of {MODES}")
    if policy not in WEIGHT_POLICIES:
        raise UserError(f"weights policy {policy!r} is not one of {WEIGHT_POLICIES}")
    if out_features < num_classes:
        raise UserError(f"out_features {out_features} is smaller than the {num_classes} classes of the data")


def build(
    arch: str,
    weights: str | None = "none",
    out_features: int = 2,
    mode: str = "finetune",
    policy: str = "auto",
    num_classes: int = 2,
) -> tuple[nn.Module, str]:
    """Return (model, weights_source): a torchvision model whose last Linear layer is
    replaced by Linear(in_features, out_features); in "frozen" mode only that head trains."""
    check(arch, weights, out_features, num_classes, mode, policy)
    state, source = None, "none"
    if mode == "frozen" and weights in (None, "none"):
        warnings.warn("a frozen backbone with random weights: only the head learns, from random features")
    if weights not in (None, "none"):
        state, source = _pretrained_state(arch, weights, policy)
    model = _construct(arch, state)
    name, head = find_head(model)
    model.set_submodule(name, nn.Linear(head.in_features, out_features))
    if mode == "frozen":
        for p_name, p in model.named_parameters():
            p.requires_grad = p_name.startswith(name + ".")
    return model, source


def set_mode(model: nn.Module, mode: str, training: bool, frozen_bn: str = "eval") -> None:
    """model.train(training), except for a frozen backbone: there BatchNorm stays in eval mode,
    so its running statistics never move, unless frozen_bn="train" (the PyTorch tutorial's
    frozen model calls model.train(), so its BatchNorm statistics adapt to the new data)."""
    model.train(training and (mode == "finetune" or frozen_bn == "train"))


def _construct(arch: str, state: dict | None) -> nn.Module:
    """The architecture, with `state` loaded when given. A random init that the pretrained
    weights overwrite anyway costs 0.25 s (resnet18) to 1.5 s (resnet101) of every trial's
    start-up, so with a state the model is built on the meta device and the state assigned."""
    if state is not None:
        with torch.device("meta"):
            model = get_model(arch, weights=None)
        model.load_state_dict(state, assign=True)
        if not any(t.is_meta for t in (*model.parameters(), *model.buffers())):
            return model
    model = get_model(arch, weights=None)  # also when a buffer outside the state stayed on meta
    if state is not None:
        model.load_state_dict(state)
    return model


def find_head(model: nn.Module) -> tuple[str, nn.Linear]:
    """The classifier: the last Linear layer (resnet's fc, vgg's classifier[6], vit's heads.head, ...)."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError(f"{type(model).__name__} has no Linear classifier layer to replace")
    return linears[-1]


def _pretrained_state(arch: str, weights: str, policy: str) -> tuple[dict | None, str]:
    path = weights_file(arch, weights)
    try:
        # check_hash=False: a file placed by hand in the cache is trusted, as torchvision does.
        return get_model_weights(arch)[weights].get_state_dict(progress=False, check_hash=False), weights
    except Exception as e:  # no network, a proxy error, a corrupt file: all mean "not available"
        reason = f"{type(e).__name__}: {e}".splitlines()[0]
    if policy == "strict":
        raise UserError(
            f"pretrained weights {arch} {weights} are unavailable ({reason}); "
            f"place the file {os.path.basename(path)} in {os.path.dirname(path)} "
            f"(or set TORCH_HOME), or use weights policy 'auto'"
        )
    warnings.warn(
        f"WEIGHTS FALLBACK: {arch} {weights} unavailable ({reason}); training from a RANDOM init. "
        f"Place {os.path.basename(path)} in {os.path.dirname(path)} for real transfer learning."
    )
    return None, RANDOM_FALLBACK


# ---------------------------------------------------------------- the input

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def parse_repeat(value: Any) -> tuple[int, int, int, int]:
    """(1,3,3,1), [1,3,3,1] or "1,3,3,1" -> (1,3,3,1); the search spaces store the string form."""
    try:
        parts = value.replace(" ", ",").split(",") if isinstance(value, str) else list(value)
        factors = tuple(int(p) for p in parts if p != "")
    except (TypeError, ValueError):
        raise UserError(f"repeat factors {value!r} are not four integers like 1,3,1,1") from None
    if len(factors) != 4 or min(factors) < 1:
        raise UserError(f"repeat factors {value!r} must be four positive integers like 1,3,1,1 or 1,3,3,1")
    if factors[0] != 1 or factors[1] != 3:
        raise UserError(
            f"repeat factors {value!r}: the first must be 1 (batch) and the second 3 (the models take three channels)"
        )
    return factors


def to_input(x: torch.Tensor, repeat: tuple, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 N x 1 x H x W -> normalised float N x 3 x (H*r2) x (W*r3)."""
    mean, std = _normalisation(x.device, dtype)
    # Normalising the single channel against the three channel statistics broadcasts
    # to the three channels repeat(1,3,1,1) would make, without materialising them first.
    x = (x.to(dtype) / 255 - mean) / std
    return x.repeat(1, 1, repeat[2], repeat[3])


@functools.cache
def _normalisation(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet's mean and std as 1 x 3 x 1 x 1 tensors, made once per device and dtype: made per
    batch, each was a copy from the host that waits for the GPU (two syncs every batch)."""
    with torch.inference_mode(False):  # also usable by training when first made in evaluation
        return tuple(torch.tensor(v, dtype=dtype).view(1, 3, 1, 1).to(device) for v in (IMAGENET_MEAN, IMAGENET_STD))  # type: ignore[return-value]


def augment(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Light, per-sample augmentation of a float N x 1 x H x W batch: horizontal flip, and
    a small affine (rotation up to 7 degrees, 5 % shift, 10 % scale), as a tutorial's
    RandomHorizontalFlip / RandomAffine would, but in one batched grid_sample."""
    n = len(x)
    u = torch.rand(n, 5, generator=generator, device=x.device)
    angle = (u[:, 0] * 2 - 1) * math.radians(7)
    scale = 1 + (u[:, 1] * 2 - 1) * 0.1
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0).to(x.device)
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = torch.cos(angle) / scale * flip
    theta[:, 0, 1] = -torch.sin(angle) / scale
    theta[:, 1, 0] = torch.sin(angle) / scale * flip
    theta[:, 1, 1] = torch.cos(angle) / scale
    theta[:, :, 2] = (u[:, 2:4] * 2 - 1) * 0.1
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid.to(x.dtype), padding_mode="border", align_corners=False)


# ---------------------------------------------------------------- how it trains: optimizer, schedule


def make_optimizer(config: TrialConfig, params: list, fused: bool = False) -> torch.optim.Optimizer:
    """The trial's optimizer; `fused` (CUDA): one kernel for all parameters, which also takes fp16's
    gradient scaler without a host sync per step. The CPU keeps torch's default implementation."""
    how = True if fused else None  # None, not False: torch's own choice (foreach where it can)
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, fused=how
        )
    opt = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return opt(params, lr=config.lr, weight_decay=config.weight_decay, fused=how)


def make_scheduler(
    config: TrialConfig, optimizer: torch.optim.Optimizer
) -> torch.optim.lr_scheduler.LRScheduler | None:
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    return None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    """torch's threads set to n (None: unchanged) for a while. A head trained on cached features
    is too small to split: on a busy 2-core machine, two threads made its steps 30x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)
