"""Grad-CAM (tlstudy.analysis.cam) finds a shortcut: a model trained where a burned-in marker gives
the label away puts more of its Grad-CAM on the marker than one trained without it."""

import torch

from tlstudy.analysis import cam
from tlstudy.data import phantom
from tlstudy.data.splits import Splits
from tlstudy.names import KEPT_WEIGHTS
from tlstudy.settings import TrialConfig
from tlstudy.training import loop, models

SIZE = 32
BOX = (2, 2, 7, 7)  # top, left, height, width: a bright square, as a lead marker would be


def with_marker(x):
    x = x.clone()
    top, left, h, w = BOX
    x[:, :, top : top + h, left : left + w] = 255
    return x


def trained(x, y, vx, vy):
    """resnet18 from scratch, three epochs, on (x, y); its best-val-loss weights."""
    data = Splits(
        {"train": x, "val": vx, "test": vx},
        {"train": y, "val": vy, "test": vy},
        ["NORMAL", "PNEUMONIA"],
        "phantom with a marker",
        "none",
    )
    config = TrialConfig(arch="resnet18", weights="none", epochs=3, lr=0.01, batch_size=16, score_test=False)
    *_, last = loop.fit(config, data)
    model, _ = models.build("resnet18", "none", 2)
    model.load_state_dict(last[KEPT_WEIGHTS])
    return model


def test_a_model_that_learnt_the_marker_looks_at_it():
    x, y = (torch.from_numpy(a) for a in phantom.make_split(160, SIZE, 0, shifted=False, normal_fraction=0.5))
    vx, vy = (torch.from_numpy(a) for a in phantom.make_split(64, SIZE, 1, shifted=False, normal_fraction=0.5))
    leak = torch.where((y == 1)[:, None, None, None], with_marker(x), x)  # every PNEUMONIA image is marked
    leaky = trained(leak, y, torch.where((vy == 1)[:, None, None, None], with_marker(vx), vx), vy)
    clean = trained(x, y, vx, vy)
    # Both asked the same: where is the evidence for PNEUMONIA on marked PNEUMONIA images?
    probe = with_marker(vx[vy == 1])
    repeat = models.parse_repeat("1,3,1,1")
    on_marker = {}
    for name, model in (("leaky", leaky), ("clean", clean)):
        maps, out = cam.grad_cam(model, probe, repeat, target=1)
        assert maps.shape == (len(probe), SIZE, SIZE) and torch.all(maps >= 0)
        on_marker[name] = cam.mass_in(maps, BOX).mean().item()
    area = BOX[2] * BOX[3] / SIZE**2
    assert on_marker["leaky"] > 2 * on_marker["clean"] and on_marker["leaky"] > 2 * area, (on_marker, area)
