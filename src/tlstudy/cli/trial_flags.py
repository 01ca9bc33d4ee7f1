"""The flags of `tlstudy trial`: one per field of tlstudy.settings.TrialConfig, with the data flags,
and the config and data they resolve to (`resolve`). Loaded for `tlstudy trial` only."""

import argparse
from typing import Any

from tlstudy.cli.parsers import _describe, count, image_size, nonneg_float, positive, positive_float, sizes
from tlstudy.settings import CHOICES, DEFAULTS, MIN_VAL, PROFILE_KEYS, PROFILES, DataSettings, TrialConfig


def add(p):
    _describe(
        p,
        "Every field of tlstudy.settings.TrialConfig is a flag. --profile sets the data and the epochs as "
        "the study's profile does, so a study's trial reruns here with the same numbers (its "
        "best_config.json holds the command). Prints the per-epoch table and the final metrics; "
        "--json FILE writes them.",
    )
    p.add_argument(
        "--profile",
        choices=tuple(PROFILES),
        help="the study profile whose data size, epochs and weights policy are the defaults below "
        "(default: quick where torch sees no GPU, full where it sees one)",
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        default="phantom",
        help="phantom (embedded synthetic data), a chest_xray folder, a .npz file or a folder of .npy arrays",
    )
    g.add_argument("--image-size", type=image_size, help=_per_profile("pixels per side", "image_size"))
    g.add_argument(
        "--phantom-sizes",
        type=sizes,
        metavar="TRAIN,VAL,TEST",
        help=_per_profile("sizes of the phantom data's splits", "phantom_sizes"),
    )
    g.add_argument(
        "--max-train",
        type=count,
        help=_per_profile("a stratified subset of train of this size; 0: every image", "max_train"),
    )
    g.add_argument(
        "--min-val", type=count, default=MIN_VAL, help="a smaller val split is replaced by a stratified 10%% of train"
    )
    g.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images instead of stopping")
    g.add_argument(
        "--data-seed",
        type=int,
        default=0,
        help="seeds the phantom, the val split and the train subset (the study's --seed)",
    )
    g = p.add_argument_group("trial (tlstudy.settings.TrialConfig)")
    for key, default in DEFAULTS.items():
        flag = "--" + key.replace("_", "-")
        what = TRIAL_HELP.get(key, key.replace("_", " "))
        kind = TRIAL_TYPES.get(key, type(default))
        if key in PROFILE_KEYS:
            g.add_argument(flag, type=kind, choices=CHOICES.get(key), help=_per_profile(what, key))
        elif isinstance(default, bool):
            g.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=what)
        else:
            g.add_argument(flag, type=kind, choices=CHOICES.get(key), default=default, help=what)
    p.add_argument("--json", metavar="FILE", help="write the config, every epoch and the summary here")


TRIAL_TYPES = dict(
    epochs=positive,
    step_size=positive,
    batch_size=positive,
    out_features=positive,
    lr=positive_float,
    weight_decay=nonneg_float,
    momentum=nonneg_float,
    gamma=positive_float,
)
TRIAL_HELP = dict(
    arch="the torchvision architecture (resnet18, resnet101, resnext50_32x4d, ...)",
    weights="pretrained weights: IMAGENET1K_V1, IMAGENET1K_V2 or none (a random init)",
    weights_policy="strict: fail when the pretrained file is missing; auto: train from a random init and say so",
    mode="finetune: train every layer; frozen: only the new head",
    frozen_bn="frozen mode's BatchNorm: eval keeps its statistics, train lets them adapt",
    out_features="outputs of the new fc head (at least the number of classes)",
    train_repeat="input repeat factors for training, as Tensor.repeat's (1,3,3,1 tiles the image 3x in height)",
    eval_repeat="input repeat factors for val and test",
    optimizer="sgd (with momentum), adam or adamw",
    lr="learning rate",
    momentum="SGD's momentum",
    weight_decay="weight decay",
    batch_size="images per batch",
    schedule="lr schedule: step (StepLR), cosine or none",
    step_size="epochs between the step schedule's lr drops",
    gamma="the step schedule's lr factor",
    epochs="epochs to train",
    augment="random flips and crops on the training images",
    train_seed="seeds the model's init, the batch order and augmentation",
    device="auto: cuda when present, else cpu",
    amp="autocast: auto is bf16 where native, fp16 (with a gradient scaler) on older GPUs, else off; on is bf16",
    channels_last="channels-last memory format: auto together with bf16 or fp16",
    feature_cache="auto: a frozen trial without augmentation trains its head on cached features",
    score_test="score the test split at the end (a study's search trials do not: they are chosen on val alone)",
)


def _per_profile(what, key):
    shown = {
        k: ("every image" if v[key] is None else ",".join(map(str, v[key])) if isinstance(v[key], tuple) else v[key])
        for k, v in PROFILES.items()
    }
    return f"{what} (default: the profile's: " + ", ".join(f"{k} {v}" for k, v in shown.items()) + ")"


def resolve(flags: dict[str, Any]) -> tuple[TrialConfig, DataSettings]:
    """One trial's config and data: the flags given, else the profile's data size, epochs and
    weights policy, as the study's profile sets them."""
    profile = PROFILES[flags["profile"]]
    values = {k: profile[k] if flags.get(k) is None else flags[k] for k in PROFILE_KEYS}
    config = TrialConfig.of({k: values.get(k, flags.get(k, DEFAULTS[k])) for k in DEFAULTS})
    data = DataSettings(
        source=str(flags.get("data", "phantom")),
        image_size=values["image_size"],
        phantom_sizes=tuple(values["phantom_sizes"]),
        max_train=values["max_train"],
        min_val=int(flags.get("min_val", MIN_VAL)),
        skip_bad_images=bool(flags.get("skip_bad_images")),
        seed=int(flags.get("data_seed", 0)),
    )
    return config, data
