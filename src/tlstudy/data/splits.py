"""A data set as train, val and test splits of uint8 tensors, decoded once and cached.

Every source ends up as a `Splits`: for train, val and test, a uint8 N x 1 x H x W tensor at
the study's image size plus int64 labels. Decoding and resizing happen once per
(source, size, content fingerprint) and are cached on disk, so no trial decodes a JPEG twice
and every trial of a study trains on the same pixels. Sources (`--data`): "phantom", the
embedded synthetic data (tlstudy.data.phantom, the default), or a folder or array file
(tlstudy.data.sources).

Every image has an id (its path relative to the data root, or `split/index` for arrays and the
phantom) and a group, its patient: Kermany's file names carry it (`person1946_bacteria_4874.jpeg`,
`IM-0115-0001.jpeg`, `NORMAL2-IM-1427-0001.jpeg`), and one child can have several images.
Kaggle's val split holds only 16 images, too few to select checkpoints or prune on: when val is
smaller than `min_val`, it is merged into train and a stratified, seeded 10 % of train is split
off again, grouped by patient (`resplit_val`), or the val accuracy that picks checkpoints is
inflated by near-duplicates. `Splits.val_note` and `Splits.group_note` say how.
"""

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from tlstudy.data import phantom
from tlstudy.errors import UserError
from tlstudy.settings import PHANTOM_SIZES, DataSettings

SPLITS = ("train", "val", "test")
# Kermany's train split is 1341 NORMAL / 3875 PNEUMONIA; its test split 234 / 390. The
# phantom's val split is drawn like train. Class counts are exact: round(n * fraction).
PHANTOM_NORMAL_FRACTION = {"train": 1341 / 5216, "val": 1341 / 5216, "test": 234 / 624}
# The patient in a Kermany file name: person1946_bacteria_4874, IM-0115-0001, NORMAL2-IM-1427-0001.
PATIENT = re.compile(r"^(person\d+)_|^((?:NORMAL2-)?IM-\d+)-", re.IGNORECASE)


@dataclass
class Splits:
    x: dict  # split name -> uint8 tensor N x 1 x H x W
    y: dict  # split name -> int64 tensor N
    classes: list
    source: str
    fingerprint: str
    val_note: str = ""
    skipped: list = field(default_factory=list)  # unreadable files left out
    ids: dict = field(default_factory=dict)  # split name -> image ids (relative path, or split/index)
    groups: dict = field(default_factory=dict)  # split name -> patient of each image (its id when unknown)
    group_note: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def info(self) -> dict:
        """What the results record about the data."""
        return {
            "data_source": self.source,
            "data_fingerprint": self.fingerprint,
            "classes": list(self.classes),
            "image_size": int(self.x["train"].shape[-1]),
            **{f"n_{s}": int(len(self.y[s])) for s in SPLITS},
            "val_note": self.val_note,
            "skipped_images": len(self.skipped),
        }

    def manifest(self) -> list[dict]:
        """Rows (id, split, group, label, grouping) of every image: results/<space>/splits.csv."""
        return [
            {"id": i, "split": s, "group": g, "label": self.classes[int(c)], "grouping": self.group_note}
            for s in SPLITS
            for i, g, c in zip(self.ids[s], self.groups[s], self.y[s].tolist())
        ]

    def write_manifest(self, path: Path) -> None:
        """The manifest as a CSV file (splits.csv), written when the study starts."""
        import csv

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=["id", "split", "group", "label", "grouping"])
                w.writeheader()
                w.writerows(self.manifest())
        except OSError as e:
            raise UserError(f"cannot write the split manifest to {path.parent}: {e.strerror}") from None


def cache_dir() -> Path:
    return Path(os.environ.get("TLSTUDY_CACHE_DIR", Path.home() / ".cache" / "tlstudy"))


def load(data: DataSettings, use_cache: bool = True) -> Splits:
    """The data set `data` names, as uint8 tensors at its image size, with a val split of at least
    `data.min_val` images and, with `data.max_train`, a stratified subset of train."""
    if data.image_size < 16:
        raise UserError(f"image size {data.image_size} is too small; use at least 16 px")
    fingerprint = data.fingerprint()  # also refuses a path that does not exist
    if data.source == "phantom":
        sizes = {**PHANTOM_SIZES, **dict(zip(SPLITS, data.phantom_sizes))}
        build = lambda: _phantom(sizes, data.image_size, data.seed)  # noqa: E731
    else:
        from tlstudy.data import sources  # only for files: the default phantom needs no decoding

        path = Path(data.source).expanduser().resolve()
        build = lambda: sources.read(path, data.image_size, data.skip_bad_images)  # noqa: E731
    raw = cached(f"data-{fingerprint}", build) if use_cache else build()
    x, y = raw["x"], raw["y"]
    _check_labels(y, raw["classes"], data.source)
    ids = raw.get("ids") or {s: [f"{s}/{i}" for i in range(len(y[s]))] for s in SPLITS}
    groups, group_note = patients(ids)
    val_note = ""
    if len(y["val"]) < data.min_val:
        x, y, ids, groups, val_note = resplit_val(x, y, ids, groups, data.min_val, data.val_fraction, data.seed)
    splits = Splits(
        x, y, raw["classes"], data.label(), fingerprint, val_note, raw.get("skipped", []), ids, groups, group_note
    )
    return subsample_train(splits, data.max_train, data.seed) if data.max_train else splits


def cached(name: str, build):
    """torch.load(cache_dir()/name.pt), or build() and store it there for every later caller."""
    path = cache_dir() / f"{name}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    raw = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Concurrent trials may build the same entry: write aside, then rename atomically.
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(raw, tmp)
    os.replace(tmp, path)
    return raw


def _phantom(sizes, image_size, seed):
    x, y = {}, {}
    for i, s in enumerate(SPLITS):
        # val is drawn from the train distribution with its own seed; test is shifted.
        imgs, labels = phantom.make_split(
            sizes[s], image_size, seed * 3 + i, shifted=(s == "test"), normal_fraction=PHANTOM_NORMAL_FRACTION[s]
        )
        x[s], y[s] = torch.from_numpy(imgs), torch.from_numpy(labels).long()
    return {"x": x, "y": y, "classes": ["NORMAL", "PNEUMONIA"]}


def _check_labels(y, classes, source):
    k = len(classes)
    for s in SPLITS:
        if len(y[s]) and (int(y[s].min()) < 0 or int(y[s].max()) >= k):
            raise UserError(
                f"{source}: {s} labels span {int(y[s].min())}..{int(y[s].max())}, "
                f"outside the classes 0..{k - 1} found in train"
            )
    if len(y["test"]) == 0:
        raise UserError(f"{source}: the test split is empty")
    present = torch.bincount(y["train"], minlength=k)
    if k < 2 or (present == 0).any():
        raise UserError(
            f"{source}: train must hold at least two classes, each with images; "
            f"found {dict(zip(classes, present.tolist()))}"
        )


def subsample_train(splits: Splits, n: int, seed: int) -> Splits:
    """A stratified, seeded subset of n training images (the quick profile's smaller train split)."""
    if n >= len(splits.y["train"]):
        return splits
    keep, _ = train_test_split(
        np.arange(len(splits.y["train"])), train_size=n, stratify=splits.y["train"].numpy(), random_state=seed
    )
    keep = np.sort(keep)
    return replace(
        splits,
        x={**splits.x, "train": splits.x["train"][keep]},
        y={**splits.y, "train": splits.y["train"][keep]},
        ids={**splits.ids, "train": [splits.ids["train"][i] for i in keep]},
        groups={**splits.groups, "train": [splits.groups["train"][i] for i in keep]},
    )


def patients(ids: dict) -> tuple[dict, str]:
    """({split: patient per image}, note): the patient from Kermany's file names; an image
    whose name carries none is its own group, and the note says how many."""
    groups: dict[str, list[str]] = {}
    unknown, total = 0, 0
    for s, names in ids.items():
        groups[s] = []
        for i in names:
            m = PATIENT.match(Path(i).name)
            groups[s].append((m.group(1) or m.group(2)) if m else i)
            unknown += not m
            total += 1
    if unknown == total:
        return groups, "no patient ids in the image names: splits are per image"
    n = {s: len(set(g)) for s, g in groups.items()}
    note = f"patients from the file names: {n['train']} train, {n['val']} val, {n['test']} test"
    both = set(groups["train"]) & set(groups["test"])
    if both:
        note += f"; {len(both)} patients have images in both train and test (the source's own split)"
    return groups, note + (f"; {unknown} images without a patient id are their own group" if unknown else "")


def resplit_val(x, y, ids, groups, min_val, val_fraction, seed):
    """Merge val into train and split a stratified val_fraction off it again, keeping each
    patient (group) on one side."""
    n_val = len(y["val"])
    xs, ys = torch.cat([x["train"], x["val"]]), torch.cat([y["train"], y["val"]])
    all_ids, all_groups = ids["train"] + ids["val"], groups["train"] + groups["val"]
    k = len(torch.unique(ys))
    n_new = max(k, int(np.ceil(val_fraction * len(ys))))  # stratifying needs one image per class at least
    if torch.bincount(ys).min() < 2 or n_new > len(ys) - k:
        raise UserError(f"too few images to split a val set off train ({len(ys)}; each class needs at least 2)")
    if len(set(all_groups)) == len(all_groups):  # one image per group: a plain stratified split
        tr, va = train_test_split(np.arange(len(ys)), test_size=n_new, stratify=ys.numpy(), random_state=seed)
        how = "per image"
    else:
        n_splits = max(2, min(round(1 / val_fraction), int(torch.bincount(ys).min())))  # small sets: fewer folds
        folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        tr, va = next(folds.split(np.zeros(len(ys)), ys.numpy(), groups=all_groups))
        how = "grouped by patient"
    tr, va = np.sort(tr), np.sort(va)
    note = (
        f"val had {n_val} images (< {min_val}): merged into train and split off a stratified "
        f"{val_fraction:.0%} of it ({how}, seed {seed}) as val: {len(va)} images"
    )
    pick = lambda seq, idx: [seq[i] for i in idx]  # noqa: E731
    return (
        {**x, "train": xs[tr], "val": xs[va]},
        {**y, "train": ys[tr], "val": ys[va]},
        {**ids, "train": pick(all_ids, tr), "val": pick(all_ids, va)},
        {**groups, "train": pick(all_groups, tr), "val": pick(all_groups, va)},
        note,
    )
