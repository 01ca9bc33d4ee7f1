"""Task E, resnet18 (IMAGENET1K_V1, fine-tuned): fc out_features 2/6/10 x train/val input repeat factors."""

from ray import tune

from tlstudy.spaces import training_space

FIXED = dict(arch="resnet18", weights="IMAGENET1K_V1", mode="finetune")
# (train repeat, val/test repeat): the report's three settings. (1,3,3,1) tiles the
# image three times in height. The full 3 x 3 product, not one factor at a time.
REPEATS = [("1,3,1,1", "1,3,1,1"), ("1,3,3,1", "1,3,3,1"), ("1,3,3,1", "1,3,1,1")]
CELLS = [dict(out_features=o, train_repeat=t, eval_repeat=e) for o in (2, 6, 10) for t, e in REPEATS]
PARAM_SPACE = {
    **training_space(),
    "out_features": tune.choice([2, 6, 10]),
    # Freely sampled trials may also draw train 1,3,1,1 with val 1,3,3,1, a fourth combination.
    "train_repeat": tune.choice(["1,3,1,1", "1,3,3,1"]),
    "eval_repeat": tune.choice(["1,3,1,1", "1,3,3,1"]),
}
