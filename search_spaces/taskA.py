"""Task A, model selection: resnext50_32x4d vs resnet101, trained from scratch (no pretrained weights)."""

from ray import tune

from tlstudy.spaces import product, training_space

FIXED = dict(weights="none", mode="finetune")
CELLS = product(arch=["resnext50_32x4d", "resnet101"])
PARAM_SPACE = {**training_space(), "arch": tune.choice(["resnext50_32x4d", "resnet101"])}
# Both networks are 10-20x the cost of resnet18: the quick profile shrinks the data further.
QUICK = dict(phantom_sizes=(240, 100, 200), max_train=240, epochs=4)
