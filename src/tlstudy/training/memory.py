"""What one trial takes of a GPU's memory, estimated from tensor shapes before anything runs: how
many trials can share a GPU (tlstudy.study.placement) depends on it.

The network runs once on PyTorch's meta device (shapes, no data, no arithmetic: about 0.2 s for a
resnet101), and autograd's saved-tensor hooks count what training keeps for the backward pass:
the activations, at the trial's batch, image size and repeat factors, in the autocast dtype. To
that come the weights, their gradients and the optimizer's state (fp32), autocast's low-precision
copy of the weights, the backward pass's largest gradients in flight, cuDNN's workspace, and the
whole uint8 data set, which a GPU trial keeps on the GPU. Evaluation (batches of 128, nothing
saved) seldom needs more, but is estimated too. cuDNN's autotuning (the first batch of a shape) tries
kernels with workspaces as large as the allocator can give then, passing over those it cannot, so it
is not counted: under a trial's memory cap it takes what the share leaves. `gpu_check.sh` measures
the real peaks against the estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models import get_model

GiB = 2**30
WORKSPACE = 0.25 * GiB  # cuDNN's and cuBLAS's workspaces, within the caching allocator
SLACK = 1.2  # the caching allocator's rounding and fragmentation
STATE_PER_PARAM = {"sgd": 1, "adam": 2, "adamw": 2}  # fp32 tensors per parameter: momentum; two moments


@dataclass(frozen=True)
class Estimate:
    """Bytes one trial needs on its GPU (the CUDA context, outside the allocator, comes on top)."""

    weights: int  # parameters, gradients, optimizer state and autocast's copy
    activations: int  # what training saves for the backward pass
    transient: int  # the backward pass's gradients in flight, or evaluation's largest tensors
    data: int  # the uint8 images, kept on the GPU

    @property
    def total(self) -> int:
        return int((self.weights + self.activations + self.transient + WORKSPACE) * SLACK) + self.data


def estimate(
    arch: str,
    batch_size: int,
    image_size: int,
    train_repeat: tuple,
    eval_repeat: tuple = (1, 3, 1, 1),
    amp: str = "bf16",
    optimizer: str = "sgd",
    images: int = 0,
    eval_batch: int = 128,
    frozen: bool = False,
) -> Estimate:
    """The peak of a trial of `arch` (random head of 2 outputs: the head is small) training on
    `images` images at `image_size` px with batches of `batch_size`; amp: bf16 | fp16 | off. A
    frozen backbone trains nothing but its head: its passes are evaluation's."""
    dtype = torch.float32 if amp == "off" else torch.bfloat16  # fp16 takes bf16's bytes
    with torch.device("meta"):
        model = get_model(arch, num_classes=2).to(dtype)
    n_params = sum(p.numel() for p in model.parameters())
    per_param = 4 * (1 if frozen else 2 + STATE_PER_PARAM.get(optimizer, 2)) + (0 if amp == "off" else 2)
    saved, largest = (0, 0) if frozen else _saved(model, _input(batch_size, image_size, train_repeat, dtype))
    evaluation = 3 * _largest_output(model, _input(eval_batch, image_size, eval_repeat, dtype))
    return Estimate(n_params * per_param, saved, max(2 * largest, evaluation), images * image_size**2)


def _input(batch: int, size: int, repeat: tuple, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(batch, 3, size * repeat[2], size * repeat[3], device="meta", dtype=dtype)


def _saved(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """Bytes autograd saves for backward in one training step (each storage once, the weights
    not), and the largest of them."""
    weights = {p.untyped_storage()._cdata for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s._cdata not in weights:
            storages[s._cdata] = s.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(storages.values()), max(storages.values(), default=0)


def _largest_output(model: nn.Module, x: torch.Tensor) -> int:
    """The largest output of any layer in an evaluation pass: what is alive at once is a few of them."""
    sizes = [0]
    hooks = [
        m.register_forward_hook(lambda m, i, out: sizes.append(out.nbytes if isinstance(out, torch.Tensor) else 0))
        for m in model.modules()
        if not list(m.children())
    ]
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return max(sizes)
