"""torchvision classification models with a new head, fine-tuned or frozen.

Pretrained weights come through torchvision's own cache,
`$TORCH_HOME/hub/checkpoints/<file>.pth` (`torch.hub.get_dir()`), so a file placed
there by hand works offline. Two policies for weights that are not there:
- "strict" (the report's protocol): try to download, and on failure stop with one
  line naming the file and where to put it;
- "auto" (the offline quick path): try to download, and on failure train from a
  random init with a loud warning. The trial records `weights_source` either way.
"""
import os
import warnings

import torch
import torchvision
from torch import nn
from torchvision.models import get_model, get_model_weights, list_models

from tlstudy.errors import UserError

WEIGHT_POLICIES = ("strict", "auto")
MODES = ("finetune", "frozen")


def weights_file(arch, weights):
    """Where torchvision looks for `arch`'s `weights` before downloading them."""
    url = get_model_weights(arch)[weights].url
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


def check(arch, weights="none", out_features=2, num_classes=1, mode="finetune", policy="auto"):
    """Validate a model configuration up front, so a trial fails before it trains."""
    archs = list_models(module=torchvision.models)
    if arch not in archs:
        raise UserError(f"unknown architecture {arch!r}; torchvision's classification models include "
                        "resnet18, resnet101, resnext50_32x4d (see torchvision.models.list_models())")
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


def build(arch, weights="none", out_features=2, mode="finetune", policy="auto", num_classes=2):
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


def set_mode(model, mode, training, frozen_bn="eval"):
    """model.train(training), except for a frozen backbone: there BatchNorm stays in eval mode,
    so its running statistics never move, unless frozen_bn="train" (the PyTorch tutorial's
    frozen model calls model.train(), so its BatchNorm statistics adapt to the new data)."""
    model.train(training and (mode == "finetune" or frozen_bn == "train"))


def _construct(arch, state):
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


def find_head(model):
    """The classifier: the last Linear layer (resnet's fc, vgg's classifier[6], vit's heads.head, ...)."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError(f"{type(model).__name__} has no Linear classifier layer to replace")
    return linears[-1]


def _pretrained_state(arch, weights, policy):
    path = weights_file(arch, weights)
    try:
        # check_hash=False: a file placed by hand in the cache is trusted, as torchvision does.
        return get_model_weights(arch)[weights].get_state_dict(progress=False, check_hash=False), weights
    except Exception as e:  # no network, a proxy error, a corrupt file: all mean "not available"
        reason = f"{type(e).__name__}: {e}".splitlines()[0]
    if policy == "strict":
        raise UserError(f"pretrained weights {arch} {weights} are unavailable ({reason}); "
                        f"place the file {os.path.basename(path)} in {os.path.dirname(path)} "
                        f"(or set TORCH_HOME), or use weights policy 'auto'")
    warnings.warn(f"WEIGHTS FALLBACK: {arch} {weights} unavailable ({reason}); training from a RANDOM init. "
                  f"Place {os.path.basename(path)} in {os.path.dirname(path)} for real transfer learning.")
    return None, "random-fallback"
