"""Task B, fine-tuning the ConvNet: resnext50_32x4d / resnet101 from IMAGENET1K_V1 or V2 weights."""

from ray import tune

from tlstudy.spaces import product, training_space

FIXED = dict(mode="finetune")
CELLS = product(arch=["resnext50_32x4d", "resnet101"], weights=["IMAGENET1K_V1", "IMAGENET1K_V2"])
PARAM_SPACE = {
    **training_space(),
    # Fine-tuning pretrained weights wants the low end of the range.
    "lr": tune.loguniform(1e-4, 3e-3),
    "arch": tune.choice(["resnext50_32x4d", "resnet101"]),
    "weights": tune.choice(["IMAGENET1K_V1", "IMAGENET1K_V2"]),
}
QUICK = dict(phantom_sizes=(240, 100, 200), max_train=240, epochs=4)
