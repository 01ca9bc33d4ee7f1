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
# The same data and epochs as taskB's quick profile, so that task D's comparisons of B and C hold
# everything else equal (a study pair that differs in epochs makes claim 4 void). With cached
# features 30 epochs would cost little and lift a random resnet101 backbone's head from the base
# rate to 92 % val accuracy; a random resnext50_32x4d stays at the base rate either way.
QUICK = dict(phantom_sizes=(240, 100, 200), max_train=240, epochs=4)
