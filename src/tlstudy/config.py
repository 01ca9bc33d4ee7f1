"""What a study runs, as plain Python: the trial settings and the run profiles.

Nothing here imports torch or Ray, so the command line can read it, check the user's
arguments and answer --help before the heavy imports.

- DEFAULTS: one trial's settings. Every key is a flag of `tlstudy trial`, a key a
  search space may fix or search, and a column of trials.csv.
- PROFILES: the study's data size, epochs and budget. A space file may override a
  profile (QUICK = dict(...)), and a command-line flag overrides both.
- PROTOCOL: the report's own training protocol, the PyTorch transfer-learning
  tutorial's; every cell's first search trial runs it.
"""

DEFAULTS = dict(
    arch="resnet18",
    weights="IMAGENET1K_V1",  # or IMAGENET1K_V2, or "none"
    weights_policy="auto",  # "strict": fail when the pretrained file is missing
    mode="finetune",  # or "frozen": only the new head trains
    frozen_bn="eval",  # frozen mode: "eval" keeps BatchNorm's statistics; "train" lets them adapt, as the tutorial does
    out_features=2,
    train_repeat="1,3,1,1",
    eval_repeat="1,3,1,1",  # val and test
    optimizer="sgd",  # sgd (with momentum), adam, adamw
    lr=1e-3,
    momentum=0.9,
    weight_decay=1e-6,
    batch_size=16,
    schedule="step",  # step (as the PyTorch transfer-learning tutorial), cosine, none
    step_size=7,
    gamma=0.1,
    epochs=3,
    augment=False,
    train_seed=0,  # model init, batch order and augmentation; the data have their own seed
    device="auto",  # auto: cuda when present, else cpu
    amp="auto",  # bf16 autocast: auto = where the hardware has native bf16; on; off
    channels_last="auto",  # auto = together with bf16, where it pays; on; off
    feature_cache="auto",  # auto: a frozen trial without augmentation trains its head on cached features; off
    score_test=True,  # score the test split at the end; a study's search trials do not (they are chosen on val)
)

# The closed sets, for argparse's choices and for checking a space.
CHOICES = dict(
    weights_policy=("auto", "strict"),
    mode=("finetune", "frozen"),
    frozen_bn=("eval", "train"),
    optimizer=("sgd", "adam", "adamw"),
    schedule=("step", "cosine", "none"),
    device=("auto", "cpu", "cuda"),
    amp=("auto", "on", "off"),
    channels_last=("auto", "on", "off"),
    feature_cache=("auto", "off"),
)

# The tutorial (SGD, lr 1e-3, momentum 0.9, StepLR(step_size=7, gamma=0.1)) states no weight
# decay and uses batches of 4; the report states no batch size. We take 16, the smallest of
# the searched choices (4x fewer optimizer steps than 4, which a CPU needs; 32 left the quick
# profile's random-init models at 74-90 % val accuracy), and weight decay 1e-6, the floor of
# the searched log range (none in effect; a log range cannot hold 0). step_size comes from
# the profile: 7 of 30 epochs in full, scaled down in quick.
PROTOCOL = dict(optimizer="sgd", lr=1e-3, momentum=0.9, weight_decay=1e-6, batch_size=16, schedule="step")

# quick: the default without a GPU, sized for 2 CPU cores without AVX512-BF16. At 32 px a
# resnet18 step costs about the same per image at any size (per-layer overhead, not pixels:
# bench/RESULTS.md), so the cost is the images trained: 180 x 3 epochs, 0.56 of the 240 x 4 it
# was. With 3 epochs the StepLR drop comes after the run (step_size 3): a drop before the last
# epoch left the train-only-tiling cells underfit; 160 images let one of them fall to the base rate.
# full: the report's protocol (224 px, 30 epochs, every image).
# budget: search trials per cell (the first runs PROTOCOL); seeds: replicates of each cell's best.
PROFILES = {
    "quick": dict(image_size=32, epochs=3, step_size=3, phantom_sizes=(180, 100, 200), max_train=180,
                  weights_policy="auto", budget=2, seeds=3),
    "full": dict(image_size=224, epochs=30, step_size=7, phantom_sizes=(5216, 522, 624), max_train=None,
                 weights_policy="strict", budget=8, seeds=5),
}

PRUNERS = ("median", "percentile", "halving", "hyperband", "none")
