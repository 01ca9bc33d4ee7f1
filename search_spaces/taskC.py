"""Task C, the ConvNet as a fixed feature extractor: frozen resnext50_32x4d / resnet101 (V1 or V2), only fc trains."""
from ray import tune

from tlstudy.spaces import product, training_space

FIXED = dict(mode="frozen")
CELLS = product(arch=["resnext50_32x4d", "resnet101"], weights=["IMAGENET1K_V1", "IMAGENET1K_V2"])
PARAM_SPACE = {
    **training_space(),
    # A fresh linear head on fixed features tolerates, and needs, larger steps.
    "lr": tune.loguniform(1e-3, 1e-1),
    "arch": tune.choice(["resnext50_32x4d", "resnet101"]),
    "weights": tune.choice(["IMAGENET1K_V1", "IMAGENET1K_V2"]),
}
# A frozen backbone runs once per split (cached features), so the report's 30 epochs cost little;
# 4 epochs left the linear head short of the val accuracy the quick profile asks for.
QUICK = dict(phantom_sizes=(240, 100, 200), max_train=240, epochs=30, step_size=7)
