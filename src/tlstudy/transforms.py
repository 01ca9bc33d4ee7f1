"""The input transform, applied to whole uint8 batches rather than per sample.

As in the report, the one-channel N x 1 x H x W batch is expanded with
`Tensor.repeat(*factors)`: (1,3,1,1) makes three identical channels, (1,3,3,1)
also tiles the image three times along its height (the report's Task E, where
training took about 3x longer). Then ImageNet normalisation, which the
pretrained weights expect.
"""
import math

import torch
import torch.nn.functional as F

from tlstudy.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def parse_repeat(value):
    """(1,3,3,1), [1,3,3,1] or "1,3,3,1" -> (1,3,3,1); the search spaces store the string form."""
    try:
        parts = value.replace(" ", ",").split(",") if isinstance(value, str) else list(value)
        factors = tuple(int(p) for p in parts if p != "")
    except (TypeError, ValueError):
        raise UserError(f"repeat factors {value!r} are not four integers like 1,3,1,1") from None
    if len(factors) != 4 or min(factors) < 1:
        raise UserError(f"repeat factors {value!r} must be four positive integers like 1,3,1,1 or 1,3,3,1")
    if factors[0] != 1 or factors[1] != 3:
        raise UserError(f"repeat factors {value!r}: the first must be 1 (batch) and the second 3 "
                        "(the models take three channels)")
    return factors


def to_input(x, repeat, dtype=torch.float32):
    """uint8 N x 1 x H x W -> normalised float N x 3 x (H*r2) x (W*r3)."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=dtype).view(1, 3, 1, 1)
    # Normalising the single channel against the three channel statistics broadcasts
    # to the three channels repeat(1,3,1,1) would make, without materialising them first.
    x = (x.to(dtype) / 255 - mean) / std
    return x.repeat(1, 1, repeat[2], repeat[3])


def augment(x, generator):
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
    grid = F.affine_grid(theta, x.shape, align_corners=False)
    return F.grid_sample(x, grid.to(x.dtype), padding_mode="border", align_corners=False)
