"""What a study runs, as plain Python: one trial's config, the run profiles and a study's settings.

`TrialConfig` is one trial's settings (as nanoGPT's GPTConfig is a model's): every field is a flag
of `tlstudy trial`, a key a space may fix or search, a column of trials.csv. `PROFILES` size a
study (a space's QUICK / FULL and the flags override them); `PROTOCOL` is the report's training
protocol; a `Cell` is one row of the report's tables. `StudySettings` (with its `DataSettings`)
is everything `tlstudy run` runs, resolved once (`resolve_study`), and says what makes a stored
study comparable (`comparability`). No torch, Ray or Optuna here: the command line resolves and
compares the settings before its heavy imports.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from tlstudy.errors import UserError


@dataclass(frozen=True)
class TrialConfig:
    """One trial's settings, with the defaults `tlstudy trial` runs."""

    arch: str = "resnet18"
    weights: str = "IMAGENET1K_V1"  # or IMAGENET1K_V2, or "none"
    weights_policy: str = "auto"  # "strict": fail when the pretrained file is missing
    mode: str = "finetune"  # or "frozen": only the new head trains
    frozen_bn: str = "eval"  # frozen mode: "eval" keeps BatchNorm's statistics; "train" lets them adapt (the tutorial)
    out_features: int = 2
    train_repeat: str = "1,3,1,1"
    eval_repeat: str = "1,3,1,1"  # val and test
    optimizer: str = "sgd"  # sgd (with momentum), adam, adamw
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-6
    batch_size: int = 16
    schedule: str = "step"  # step (as the PyTorch transfer-learning tutorial), cosine, none
    step_size: int = 7
    gamma: float = 0.1
    epochs: int = 3
    augment: bool = False
    train_seed: int = 0  # model init, batch order and augmentation; the data have their own seed
    device: str = "auto"  # auto: cuda when present (under Ray: when Ray granted the trial a GPU), else cpu
    amp: str | bool = (
        "auto"  # autocast: auto = bf16 where native, fp16 on older GPUs, else off; bf16; fp16; on (bf16); off
    )
    channels_last: str | bool = "auto"  # auto = together with bf16 or fp16, where it pays; on; off
    feature_cache: str = "auto"  # auto: a frozen trial without augmentation trains its head on cached features
    score_test: bool = True  # score the test split at the end; a study's search trials do not (chosen on val)

    def __post_init__(self) -> None:
        for k, allowed in CHOICES.items():
            v = getattr(self, k)
            if v not in allowed and not (k in ("amp", "channels_last") and isinstance(v, bool)):
                raise UserError(f"{k} {v!r} is not one of {', '.join(allowed)}")
        for k in ("epochs", "batch_size", "step_size"):
            if int(getattr(self, k)) < 1:
                raise UserError(f"{k} must be at least 1, not {getattr(self, k)}")
        if not self.lr > 0:
            raise UserError(f"lr must be positive, not {self.lr}")

    @classmethod
    def of(cls, config: dict[str, Any]) -> TrialConfig:
        """The config of a dict of settings (a Ray Tune config, a space's fixed values), checked."""
        unknown = sorted(set(config) - set(DEFAULTS))
        if unknown:
            raise UserError(f"unknown trial settings {unknown}; known: {sorted(DEFAULTS)}")
        return cls(**config)


DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(TrialConfig)}

# The closed sets, for argparse's choices and for checking a space.
CHOICES: dict[str, tuple[str, ...]] = dict(
    weights_policy=("auto", "strict"),
    mode=("finetune", "frozen"),
    frozen_bn=("eval", "train"),
    optimizer=("sgd", "adam", "adamw"),
    schedule=("step", "cosine", "none"),
    device=("auto", "cpu", "cuda"),
    amp=("auto", "bf16", "fp16", "on", "off"),
    channels_last=("auto", "on", "off"),
    feature_cache=("auto", "off"),
)

# The tutorial (SGD, lr 1e-3, momentum 0.9, StepLR(step_size=7, gamma=0.1)) states no weight
# decay and uses batches of 4; the report states no batch size. We take 16, the smallest of
# the searched choices (4x fewer optimizer steps than 4, which a CPU needs; 32 left the quick
# profile's random-init models at 74-90 % val accuracy), and weight decay 1e-6, the floor of
# the searched log range (none in effect; a log range cannot hold 0). step_size comes from
# the profile: 7 of 30 epochs in full, past the end of a quick run.
PROTOCOL = dict(optimizer="sgd", lr=1e-3, momentum=0.9, weight_decay=1e-6, batch_size=16, schedule="step")

# quick: the default where the cluster has no GPU, sized for 2 CPU cores without AVX512-BF16. At 32 px a
# resnet18 step costs about the same per image at any size (per-layer overhead, not pixels:
# bench/RESULTS.md), so the cost is the steps trained: 180 images x 3 epochs, 36 steps where
# 240 x 4 took 60. With 3 epochs the StepLR drop comes after the run (step_size 3): a drop
# before the last epoch left the train-only-tiling cells underfit, and 160 images let one of
# them fall to the base rate.
# full: the report's protocol (224 px, 30 epochs, every image); the default where the cluster has a GPU.
# budget: search trials per cell (the first runs PROTOCOL); seeds: replicates of each cell's best,
# and max_seeds > seeds: --seeds auto, rounds of more replicates until the claims are decided.
# fmt: off
PROFILES: dict[str, dict[str, Any]] = {
    "quick": dict(image_size=32, epochs=3, step_size=3, phantom_sizes=(180, 100, 200), max_train=180,
                  weights_policy="auto", budget=2, seeds=3, max_seeds=3),
    "full": dict(image_size=224, epochs=30, step_size=7, phantom_sizes=(5216, 522, 624), max_train=None,
                 weights_policy="strict", budget=8, seeds=5, max_seeds=10),
}
# fmt: on
AUTO_MAX_SEEDS = 8  # --seeds auto's cap where the profile has none
SEED_STEP = 2  # --seeds auto: replicates added per round to the cells of undecided claims


def seed_plan(first: int, max_seeds: int, step: int = SEED_STEP) -> list[int]:
    """Seeds per cell at each look of --seeds auto: first, first + step, ..., max_seeds."""
    return list(range(first, max_seeds, step)) + [max_seeds] if max_seeds > first else [first]


# What makes two trials comparable (with the space, its fixed settings and the data).
PROFILE_KEYS = ("image_size", "epochs", "step_size", "phantom_sizes", "max_train", "weights_policy")
PRUNERS = ("median", "percentile", "halving", "hyperband", "none")
# A val split smaller than this is replaced by a stratified 10 % of train (tlstudy.data.splits).
MIN_VAL = 100
VAL_FRACTION = 0.1
# Kermany's split sizes scaled down, for a phantom asked for without sizes.
PHANTOM_SIZES = {"train": 600, "val": 150, "test": 200}
DATA_CACHE_VERSION = 2  # 2: image ids stored with the pixels


@dataclass(frozen=True)
class DataSettings:
    """The data a study or a trial trains on (tlstudy.data.splits.load)."""

    source: str = "phantom"  # phantom, a chest_xray folder, a .npz file or a folder of .npy arrays
    image_size: int = 32
    phantom_sizes: tuple[int, int, int] = (180, 100, 200)
    max_train: int | None = None  # a stratified subset of train; None or 0: every image
    min_val: int = MIN_VAL
    skip_bad_images: bool = False
    seed: int = 0  # the phantom, the val split and the train subset
    val_fraction: float = VAL_FRACTION  # of train, split off as val when val is smaller than min_val

    def key(self) -> dict[str, Any]:
        """What the decoded images depend on: the data cache's key, and the data's fingerprint."""
        if self.source == "phantom":
            # The generator's own source is in the key: any change to the pictures invalidates it.
            code = (Path(__file__).parent / "data" / "phantom.py").read_bytes()
            key: dict[str, Any] = {
                "phantom": hashlib.sha1(code).hexdigest(),
                "sizes": dict(zip(("train", "val", "test"), self.phantom_sizes)),
                "seed": self.seed,
            }
        else:
            path = Path(self.source).expanduser().resolve()
            if not path.exists():
                raise UserError(
                    f"data path {self.source} does not exist; pass --data phantom or a chest_xray "
                    "folder, .npz or .npy folder"
                )
            key = {"path": str(path), "content": _files_fingerprint(path), "skip_bad": self.skip_bad_images}
        return {**key, "image_size": self.image_size, "version": DATA_CACHE_VERSION}

    def fingerprint(self) -> str:
        return hashlib.sha1(json.dumps(self.key(), sort_keys=True).encode()).hexdigest()[:16]

    def as_flags(self) -> dict[str, Any]:
        """The settings as `tlstudy trial` flags, for the command that reruns a study's trial alone."""
        flags: dict[str, Any] = {
            "data": self.source,
            "image_size": self.image_size,
            "max_train": self.max_train,
            "data_seed": self.seed,
        }
        if self.source == "phantom":
            flags["phantom_sizes"] = ",".join(map(str, self.phantom_sizes))
        if self.min_val != MIN_VAL:
            flags["min_val"] = self.min_val
        if self.skip_bad_images:
            flags["skip_bad_images"] = True
        return {k: v for k, v in flags.items() if v is not None}

    def label(self) -> str:
        """The source as the results name it."""
        if self.source == "phantom":
            return f"phantom (synthetic, seed {self.seed})"
        return str(Path(self.source).expanduser().resolve())


def _files_fingerprint(path: Path) -> str:
    """Names, sizes and modification times of every file: cheap, and changes when the content does."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha1()
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(path) if p != path else p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


@dataclass(frozen=True)
class StudySettings:
    """Everything `tlstudy run` runs, resolved once (`resolve_study`); the trials' shared config derives from it."""

    space: str  # the space's name
    profile: str  # quick | full
    data: DataSettings
    shared: dict[str, Any]  # the trial settings every trial shares: epochs, step_size, ..., the space's FIXED
    budget: int  # search trials per cell
    seeds: int  # replicates of each cell's best (under --seeds auto: the first round's)
    max_seeds: int = 0  # above seeds: --seeds auto (tlstudy.analysis.sequential), else a fixed design
    pruner: str = "median"
    study_name: str = ""
    results: str = "results"
    storage: str = ""  # a URL that may hold a password: print display_url(storage), never this
    new_study: bool = False
    heartbeat: int = 10
    max_retries: int = 1
    trial_retries: int = 1  # restarts of a trial whose worker died, from its last epoch's checkpoint
    keep_models: str = "best"  # which COMPLETE trials keep their model: best, cells, all, none
    allow_failures: bool = False
    margin: float = 0.02
    alpha: float = 0.05
    address: str | None = None
    num_cpus: int | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None: what the cluster's GPUs fit (tlstudy.study.placement), 0 without
    max_concurrent: int | None = None
    verbose: bool = False
    command: str = ""  # the command line that reruns this one, password hidden

    @property
    def auto_seeds(self) -> bool:
        return self.max_seeds > self.seeds

    @property
    def looks(self) -> list[int]:
        """Seeds per cell at each look (one look for a fixed design)."""
        return seed_plan(self.seeds, self.max_seeds)

    def profile_values(self) -> dict[str, Any]:
        """The profile's settings that make trials comparable, as resolved."""
        return {k: getattr(self.data, k) if hasattr(self.data, k) else self.shared[k] for k in PROFILE_KEYS}

    def comparability(self, space_summary: dict[str, Any]) -> dict[str, Any]:
        """Everything that makes the study's trials comparable, as plain JSON: the space (its
        distributions and cells), the shared settings, the profile's data and epochs, the data."""
        out = {
            "space": {"params": space_summary["params"], "cells": space_summary["cells"]},
            "fixed": self.shared,
            "profile": self.profile_values(),
            "data_seed": self.data.seed,
            "data": {"data_source": self.data.label(), "data_fingerprint": self.data.fingerprint()},
        }
        return json.loads(json.dumps(out, sort_keys=True, default=str))


def resolve_study(space_summary: dict[str, Any], profile: str, flags: dict[str, Any]) -> StudySettings:
    """The study's settings: the profile, overridden by the space file's, overridden by the flags given."""
    s = {**PROFILES[profile], **space_summary["profiles"].get(profile, {})}
    asked = flags.get("seeds")
    s.update({k: flags[k] for k in s if flags.get(k) is not None and k not in ("seeds", "max_seeds")})
    if asked not in (None, "auto"):
        s["seeds"] = s["max_seeds"] = int(asked)  # a number of seeds: a fixed design
    if asked == "auto" or flags.get("max_seeds") is not None:
        default = s["max_seeds"] if s["max_seeds"] > s["seeds"] else AUTO_MAX_SEEDS
        s["max_seeds"] = flags.get("max_seeds") or default
        if s["max_seeds"] < max(2, s["seeds"]) or s["seeds"] < 2:
            raise UserError(
                f"--seeds auto starts from {s['seeds']} seeds and goes up to --max-seeds {s['max_seeds']}: "
                "it needs at least 2 seeds to start and a --max-seeds at least that"
            )
    shared = {k: s[k] for k in ("epochs", "step_size", "weights_policy")}
    shared = {**shared, "frozen_bn": flags.get("frozen_bn") or DEFAULTS["frozen_bn"], **space_summary["fixed"]}
    source, skip, seed = (
        str(flags.get("data", "phantom")),
        bool(flags.get("skip_bad_images")),
        int(flags.get("seed", 0)),
    )
    data = DataSettings(
        source, s["image_size"], tuple(s["phantom_sizes"]), s["max_train"], skip_bad_images=skip, seed=seed
    )
    # The other fields are the flags of the same names, where given.
    resolved = {"space", "profile", "data", "shared", "budget", "seeds", "max_seeds"}
    given = {f.name: flags[f.name] for f in fields(StudySettings) if f.name not in resolved}
    given = {k: v for k, v in given.items() if v is not None}
    given = {"study_name": space_summary["name"], **given, "space": space_summary["name"], "profile": profile}
    return StudySettings(
        data=data,
        shared=shared,
        budget=s["budget"],
        seeds=s["seeds"],
        max_seeds=max(s["seeds"], s["max_seeds"]),
        **given,
    )
