"""Grad-CAM (tlstudy.analysis.cam) finds a shortcut: a model trained where a burned-in marker gives
the label away puts more of its Grad-CAM on the marker than one trained without it."""

import numpy as np
import torch
from PIL import Image

from tlstudy.analysis import cam
from tlstudy.data import phantom
from tlstudy.data.splits import Splits
from tlstudy.names import KEPT_WEIGHTS
from tlstudy.settings import TrialConfig
from tlstudy.training import loop, models

SIZE = 32
BOX = (2, 2, 8, 8)  # top, left, height, width: a burned-in "R" in the top-left corner, as a lead marker


def marker() -> torch.Tensor:
    """A bold white "R", 8 x 6 px in an 8 x 8 box (the glyph the phantom's test acquisition burns in)."""
    glyph = np.asarray(phantom._glyph("R").resize((6, 8), Image.Resampling.BILINEAR), np.float32)
    out = torch.zeros(BOX[2], BOX[3])
    out[:, 1:7] = torch.from_numpy(glyph)
    return out


def with_marker(x: torch.Tensor) -> torch.Tensor:
    top, left, h, w = BOX
    x = x.clone()
    region = x[:, :, top : top + h, left : left + w]
    x[:, :, top : top + h, left : left + w] = torch.maximum(region.float(), marker()).to(torch.uint8)
    return x


def trained(x, y, vx, vy):
    """resnet18 from scratch, three epochs in float32 (the same on every CPU), on (x, y); its
    best-val-loss weights, as its model file would hold them."""
    data = Splits(
        {"train": x, "val": vx, "test": vx},
        {"train": y, "val": vy, "test": vy},
        ["NORMAL", "PNEUMONIA"],
        "phantom with a marker",
        "none",
    )
    config = TrialConfig(arch="resnet18", weights="none", epochs=3, lr=0.01, batch_size=16, score_test=False, amp="off")
    *_, last = loop.fit(config, data)
    model, _ = models.build("resnet18", "none", 2)
    model.load_state_dict(last[KEPT_WEIGHTS])
    return model.eval()


def test_a_model_that_learnt_the_marker_looks_at_it():
    x, y = (torch.from_numpy(a) for a in phantom.make_split(160, SIZE, 0, shifted=False, normal_fraction=0.5))
    vx, vy = (torch.from_numpy(a) for a in phantom.make_split(64, SIZE, 1, shifted=False, normal_fraction=0.5))
    leak = lambda images, labels: torch.where((labels == 1)[:, None, None, None], with_marker(images), images)  # noqa: E731
    leaky = trained(leak(x, y), y, leak(vx, vy), vy)  # every PNEUMONIA image is marked, no NORMAL one
    clean = trained(x, y, vx, vy)
    repeat = models.parse_repeat("1,3,1,1")
    run = loop.RunContext(torch.device("cpu"), False, torch.contiguous_format, "finetune", "eval", False)

    def p_pneumonia(model, images):
        return torch.softmax(loop.outputs(model, images, repeat, run), 1)[:, 1].mean().item()

    sick = vx[vy == 1]
    # The leaky model learnt the shortcut: its PNEUMONIA images are PNEUMONIA only when marked.
    assert p_pneumonia(leaky, with_marker(sick)) > 0.9 and p_pneumonia(leaky, sick) < 0.5
    assert p_pneumonia(clean, sick) > 0.5  # the clean one reads the lungs
    # Both asked the same: where is the evidence for PNEUMONIA on marked PNEUMONIA images?
    probe = with_marker(sick)
    on_marker = {}
    for name, model in (("leaky", leaky), ("clean", clean)):
        maps, _ = cam.grad_cam(model, probe, repeat, target=1)
        assert maps.shape == (len(probe), SIZE, SIZE) and torch.all(maps >= 0)
        on_marker[name] = cam.mass_in(maps, BOX).mean().item()
    area = BOX[2] * BOX[3] / SIZE**2  # a map spread evenly puts this share on the marker
    # Measured (3 training seeds): 0.113 vs 0.071, 0.117 vs 0.082, 0.130 vs 0.101, area 0.0625.
    # At 32 px Grad-CAM's map is layer1's, 8 x 8, whose cells see most of the image: a difference in
    # the same direction for every seed tried, but not a large one. (A plain bright square instead of
    # the letter, which a clean model takes for a consolidation too, gave no reliable difference.)
    assert on_marker["leaky"] > 1.2 * on_marker["clean"] and on_marker["leaky"] > 1.5 * area, (on_marker, area)
