"""Grad-CAM: where a model looks, as an overlay per image (`tlstudy predict --cam`, REPORT.md's panel).

Captum's LayerGradCam (Selvaraju et al. 2017) on the deepest block whose feature map is still at
least CAM_CELLS cells on its shorter side: layer4 of a resnet at 224 px (7 x 7), as the paper does,
and an earlier block at the small sizes of a quick study (at 32 px resnet18's layer4 is 1 x 1, one
number per image). The input is the trial's own (tlstudy.training.models.to_input: the repeat
factors and the normalisation), and the map is for the class the model predicts, or a given one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam
from PIL import Image
from torch import nn

from tlstudy.training.models import to_input

CAM_CELLS = 7
OVERLAY_SIDE = 256  # pixels of an overlay's shorter side: a 32 px input is too small to look at


def target_layer(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """The last module to finish, in one forward pass of x, whose output is a feature map of at
    least CAM_CELLS cells on its shorter side (or the largest there is, for tiny inputs)."""
    seen: list[tuple[nn.Module, int]] = []

    def note(module: nn.Module, _: object, out: object) -> None:
        if isinstance(out, torch.Tensor) and out.dim() == 4:
            seen.append((module, min(out.shape[-2:])))

    hooks = [
        m.register_forward_hook(note)
        for m in model.modules()
        if m is not model and not isinstance(m, (nn.ReLU, nn.BatchNorm2d, nn.Identity))
    ]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in hooks:
            h.remove()
    maps = [(m, side) for m, side in seen if side > 1]
    if not maps:
        raise ValueError(f"{type(model).__name__} has no feature map larger than 1 x 1 at this input size")
    big = [m for m, side in maps if side >= CAM_CELLS]
    return big[-1] if big else max(maps, key=lambda ms: ms[1])[0]


def grad_cam(
    model: nn.Module, images: torch.Tensor, repeat: tuple, target: torch.Tensor | int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(maps, outputs): non-negative Grad-CAM maps N x H' x W' at the model's input size (the
    repeated image), each summing to 1 (zero where the gradient says nothing), for uint8 images
    N x 1 x H x W, and the model's outputs; target: a class per image, one for all, or the predicted."""
    model.eval()
    x = to_input(images, repeat)
    with torch.no_grad():
        out = model(x).float()
    if target is None:
        target = out.argmax(1)
    cam = LayerGradCam(model, target_layer(model, x))
    attr = cam.attribute(x, target=target, relu_attributions=True).detach()
    maps = F.interpolate(attr, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0].clamp_min(0)
    total = maps.sum((1, 2), keepdim=True)
    return torch.where(total > 0, maps / total.clamp_min(1e-12), torch.zeros_like(maps)), out


def mass_in(maps: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    """The share of each map's mass inside box (top, left, height, width), in input pixels."""
    top, left, h, w = box
    return maps[:, top : top + h, left : left + w].sum((1, 2))


def overlay(image: torch.Tensor, cam: torch.Tensor, repeat: tuple) -> Image.Image:
    """A uint8 1 x H x W image as the model saw it (tiled by the repeat factors) in grey, with the
    map in colour over it, at OVERLAY_SIDE pixels on the shorter side."""
    from matplotlib import colormaps  # the colour map only: no pyplot

    grey = image.float().repeat(1, repeat[2], repeat[3])[0].numpy() / 255
    heat = cam.numpy() / cam.max().clamp_min(1e-12).item()
    rgb = (0.55 * np.stack([grey] * 3, -1) + 0.45 * colormaps["jet"](heat)[..., :3]) * 255
    picture = Image.fromarray(rgb.clip(0, 255).astype(np.uint8))
    scale = OVERLAY_SIDE / min(picture.size)
    return picture.resize((round(picture.width * scale), round(picture.height * scale)), Image.Resampling.BILINEAR)


def write_overlays(
    model: nn.Module, images: torch.Tensor, repeat: tuple, paths: list[Path], batch: int = 32
) -> list[Path]:
    """One overlay PNG per image, at `paths`, for the class the model predicts."""
    for i in range(0, len(images), batch):
        maps, _ = grad_cam(model, images[i : i + batch], repeat)
        for image, cam, path in zip(images[i : i + batch], maps, paths[i : i + batch]):
            path.parent.mkdir(parents=True, exist_ok=True)
            overlay(image, cam, repeat).save(path)
    return paths


def panel(
    model: nn.Module, images: torch.Tensor, repeat: tuple, captions: list[str], path: Path, columns: int = 4
) -> Path:
    """A grid of overlays with a caption each (REPORT.md's panel of test images)."""
    from PIL import ImageDraw

    maps, _ = grad_cam(model, images, repeat)
    tiles = [overlay(image, cam, repeat) for image, cam in zip(images, maps)]
    w, h = tiles[0].size
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (columns * w, rows * (h + 18)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (tile, caption) in enumerate(zip(tiles, captions)):
        x, y = (k % columns) * w, (k // columns) * (h + 18)
        sheet.paste(tile, (x, y))
        draw.text((x + 4, y + h + 3), caption, fill="black")
    sheet.save(path)
    return path
