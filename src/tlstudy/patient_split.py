"""Patients, and a val split taken from train that keeps each patient on one side.

Kermany's file names carry the patient (`person1946_bacteria_4874.jpeg`, `IM-0115-0001.jpeg`,
`NORMAL2-IM-1427-0001.jpeg`), and one child can have several images. Kaggle's val split
holds only 16 images, too few to select checkpoints or prune on; when val is smaller than
`min_val`, tlstudy.data.load merges it into train and splits a stratified, seeded
`val_fraction` of train off again (`resplit_val`), grouped by patient, or the val accuracy
that picks checkpoints and prunes trials is inflated by near-duplicates. Sources without
patient ids are split per image, and the note `patients` returns says so.
"""
import re
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from tlstudy.errors import UserError

# The patient in a Kermany file name: person1946_bacteria_4874, IM-0115-0001, NORMAL2-IM-1427-0001.
PATIENT = re.compile(r"^(person\d+)_|^((?:NORMAL2-)?IM-\d+)-", re.IGNORECASE)


def patients(ids):
    """({split: patient per image}, note): the patient from Kermany's file names; an image
    whose name carries none is its own group, and the note says how many."""
    groups, unknown, total = {}, 0, 0
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
    note = (f"val had {n_val} images (< {min_val}): merged into train and split off a stratified "
            f"{val_fraction:.0%} of it ({how}, seed {seed}) as val: {len(va)} images")
    pick = lambda seq, idx: [seq[i] for i in idx]  # noqa: E731
    return ({**x, "train": xs[tr], "val": xs[va]}, {**y, "train": ys[tr], "val": ys[va]},
            {**ids, "train": pick(all_ids, tr), "val": pick(all_ids, va)},
            {**groups, "train": pick(all_groups, tr), "val": pick(all_groups, va)}, note)
