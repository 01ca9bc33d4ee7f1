"""Data sources, decoded once into uint8 tensors.

Every source ends up as a `Splits`: for train, val and test, a uint8 N x 1 x H x W
tensor at the trial's image size plus int64 labels. Decoding and resizing happen
once per (source, size, content fingerprint) and are cached on disk, so no trial
decodes a JPEG twice and every trial of a study trains on the same pixels.

Sources (`source` argument, the `--data` flag):
- "phantom": the embedded synthetic data of `tlstudy.phantom` (the default);
- a folder in the Kaggle/Kermany chest_xray layout: train/, val/, test/, each with
  one subfolder per class (NORMAL, PNEUMONIA);
- a MedMNIST .npz file (train_images, train_labels, val_*, test_*);
- a folder of x_train.npy, y_train.npy, x_val.npy, ... (N x H x W or N x 1 x H x W).

Every image has an id (its path relative to the data root, or `split/index` for
arrays and the phantom) and a group, its patient (tlstudy.patient_split). When val is
smaller than `min_val` (MIN_VAL = 100 by default; Kaggle's holds 16 images), a new
one is split off train, keeping each patient on one side; `Splits.val_note` and
`Splits.group_note` say how, and they travel into the results.
"""
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from sklearn.model_selection import train_test_split

from tlstudy import phantom
from tlstudy.errors import UserError
from tlstudy.patient_split import patients, resplit_val

SPLITS = ("train", "val", "test")
MIN_VAL = 100
VAL_FRACTION = 0.1
# Kermany's split sizes scaled down; class balance comes from `phantom`.
PHANTOM_SIZES = {"train": 600, "val": 150, "test": 200}
# Kermany's train split is 1341 NORMAL / 3875 PNEUMONIA; its test split 234 / 390. The
# phantom's val split is drawn like train. Class counts are exact: round(n * fraction).
PHANTOM_NORMAL_FRACTION = {"train": 1341 / 5216, "val": 1341 / 5216, "test": 234 / 624}
CACHE_VERSION = 2  # 2: image ids stored with the pixels
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".pgm"}


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
    def num_classes(self):
        return len(self.classes)

    def info(self):
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

    def manifest(self):
        """Rows (id, split, group, label) of every image: results/<space>/splits.csv."""
        return [{"id": i, "split": s, "group": g, "label": self.classes[int(c)]}
                for s in SPLITS for i, g, c in zip(self.ids[s], self.groups[s], self.y[s].tolist())]


def cache_dir():
    return Path(os.environ.get("TLSTUDY_CACHE_DIR", Path.home() / ".cache" / "tlstudy"))


def load(source="phantom", image_size=64, *, seed=0, phantom_sizes=None, min_val=MIN_VAL,
         val_fraction=VAL_FRACTION, skip_bad_images=False, use_cache=True):
    """Load `source` as uint8 tensors at `image_size` px, with a val split of at least `min_val`."""
    if image_size < 16:
        raise UserError(f"image size {image_size} is too small; use at least 16 px")
    source = str(source)
    if source == "phantom":
        sizes = {**PHANTOM_SIZES, **(phantom_sizes or {})}
        # The generator's own source is in the key: any change to the pictures invalidates the cache.
        key = {"phantom": hashlib.sha1(Path(phantom.__file__).read_bytes()).hexdigest(), "sizes": sizes, "seed": seed}
        build = lambda: _phantom(sizes, image_size, seed)  # noqa: E731
        label = f"phantom (synthetic, seed {seed})"
    else:
        path = Path(source).expanduser().resolve()
        if not path.exists():
            raise UserError(f"data path {source} does not exist; pass --data phantom or a chest_xray folder, .npz or .npy folder")
        if path.suffix == ".npz":
            build = lambda: _npz(path, image_size)  # noqa: E731
        elif (path / "x_train.npy").exists():
            build = lambda: _npy_folder(path, image_size)  # noqa: E731
        elif path.is_dir():
            build = lambda: _image_folder(path, image_size, skip_bad_images)  # noqa: E731
        else:
            raise UserError(f"{source} is neither a folder nor a .npz file")
        key = {"path": str(path), "content": _fingerprint(path), "skip_bad": skip_bad_images}
        label = str(path)
    key["image_size"] = image_size
    key["version"] = CACHE_VERSION
    fingerprint = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    raw = cached(f"data-{fingerprint}", build) if use_cache else build()
    x, y = raw["x"], raw["y"]
    _check_labels(y, raw["classes"], source)
    ids = raw.get("ids") or {s: [f"{s}/{i}" for i in range(len(y[s]))] for s in SPLITS}
    groups, group_note = patients(ids)
    val_note = ""
    if len(y["val"]) < min_val:
        x, y, ids, groups, val_note = resplit_val(x, y, ids, groups, min_val, val_fraction, seed)
    return Splits(x, y, raw["classes"], label, fingerprint, val_note, raw.get("skipped", []), ids, groups, group_note)


def cached(name, build):
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


def _fingerprint(path):
    """Names, sizes and modification times of every file: cheap, and changes when the content does."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha1()
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(path) if p != path else p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _phantom(sizes, image_size, seed):
    x, y = {}, {}
    for i, s in enumerate(SPLITS):
        # val is drawn from the train distribution with its own seed; test is shifted.
        imgs, labels = phantom.make_split(sizes[s], image_size, seed * 3 + i, shifted=(s == "test"),
                                          normal_fraction=PHANTOM_NORMAL_FRACTION[s])
        x[s], y[s] = torch.from_numpy(imgs), torch.from_numpy(labels).long()
    return {"x": x, "y": y, "classes": ["NORMAL", "PNEUMONIA"]}


def _read_image(path, size, skip_bad):
    try:
        with Image.open(path) as img:
            # JPEG draft mode decodes at a reduced scale: most of the speed-up on 2000 px X-rays.
            img.draft("L", (size, size))
            return np.asarray(img.convert("L").resize((size, size), Image.BILINEAR))
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        if skip_bad:
            return None
        raise UserError(f"cannot read image {path} ({e}); remove or replace it, or pass --skip-bad-images") from None


def _image_folder(root, size, skip_bad):
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise UserError(f"{root} is not in the chest_xray layout: it needs train/ and test/ folders (and val/), "
                        "each with one subfolder per class")
    classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise UserError(f"{root / 'train'} has no class subfolders (e.g. NORMAL/, PNEUMONIA/)")
    x, y, ids, skipped = {}, {}, {}, []
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        for s in SPLITS:
            files, labels = [], []
            if (root / s).is_dir():
                extra = sorted(d.name for d in (root / s).iterdir() if d.is_dir() and d.name not in classes
                               and not d.name.startswith("."))
                if extra:
                    raise UserError(f"{root / s} has class folders {extra} that train/ lacks")
                for k, c in enumerate(classes):
                    folder = root / s / c
                    found = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")) \
                        if folder.is_dir() else []
                    if not found and s != "val":
                        raise UserError(f"class folder {folder} is missing or empty")
                    files += found
                    labels += [k] * len(found)
            elif s != "val":
                raise UserError(f"{root / s} is missing")
            imgs = list(pool.map(lambda p: _read_image(p, size, skip_bad), files))
            ids[s] = [files[i].relative_to(root).as_posix() for i, im in enumerate(imgs) if im is not None]
            keep = [i for i, im in enumerate(imgs) if im is not None]
            skipped += [str(files[i]) for i, im in enumerate(imgs) if im is None]
            x[s] = torch.from_numpy(np.stack([imgs[i] for i in keep])[:, None] if keep
                                    else np.zeros((0, 1, size, size), np.uint8))
            y[s] = torch.tensor([labels[i] for i in keep], dtype=torch.long)
    return {"x": x, "y": y, "classes": classes, "skipped": skipped, "ids": ids}


def _to_tensor(a, size, name):
    """N x H x W, N x 1 x H x W or N x H x W x 3 images (uint8, or floats in [0, 1] or [0, 255]) to uint8 N x 1 x size x size."""
    a = np.asarray(a)
    if a.ndim == 4 and a.shape[-1] in (3, 4) and a.shape[1] not in (1, 3):
        a = a[..., :3] @ np.array([0.299, 0.587, 0.114])  # RGB to luminance, as PIL's "L"
    elif a.ndim == 4 and a.shape[1] == 3:
        a = np.moveaxis(a, 1, -1) @ np.array([0.299, 0.587, 0.114])
    elif a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 3:
        raise UserError(f"{name} has shape {a.shape}; expected N x H x W or N x 1 x H x W images")
    t = torch.from_numpy(np.ascontiguousarray(a)).float()[:, None]
    if a.dtype != np.uint8 and t.numel() and t.max() <= 1.0:
        t = t * 255
    if t.shape[-2:] != (size, size) and len(t):
        t = torch.cat([F.interpolate(c, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
                       for c in t.split(512)])
    return t.round_().clamp_(0, 255).to(torch.uint8)


def _to_labels(a, name):
    a = np.asarray(a)
    if a.ndim == 2 and a.shape[1] > 1:
        a = a.argmax(1)  # one-hot
    a = a.reshape(len(a))
    if not np.issubdtype(a.dtype, np.integer) and not np.all(a == np.round(a)):
        raise UserError(f"{name} holds non-integer labels")
    return torch.from_numpy(a.astype(np.int64))


def _npz(path, size):
    try:
        z = np.load(path)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path} as a .npz file ({e})") from None
    need = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels")]
    missing = [k for k in need if k not in z.files]
    if missing:
        raise UserError(f"{path} lacks the keys {missing}; a MedMNIST .npz has {need}")
    return _arrays(lambda s: (z[f"{s}_images"], z[f"{s}_labels"]), f"{path}:", size)


def _npy_folder(path, size):
    missing = [f"{k}_{s}.npy" for s in SPLITS for k in "xy" if not (path / f"{k}_{s}.npy").exists()]
    if missing:
        raise UserError(f"{path} lacks {missing}")

    def read(s):
        try:
            return np.load(path / f"x_{s}.npy"), np.load(path / f"y_{s}.npy")
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read the {s} arrays in {path} ({e})") from None
    return _arrays(read, f"{path}/", size)


def _arrays(read, where, size):
    x, y = {}, {}
    for s in SPLITS:
        xs, ys = read(s)
        if len(xs) != len(ys):
            raise UserError(f"{where} the {s} split has {len(xs)} images but {len(ys)} labels")
        x[s], y[s] = _to_tensor(xs, size, f"{where} {s} images"), _to_labels(ys, f"{where} {s} labels")
    k = int(y["train"].max()) + 1 if len(y["train"]) else 0
    classes = ["NORMAL", "PNEUMONIA"] if k == 2 else [str(i) for i in range(k)]
    return {"x": x, "y": y, "classes": classes}


def _check_labels(y, classes, source):
    k = len(classes)
    for s in SPLITS:
        if len(y[s]) and (int(y[s].min()) < 0 or int(y[s].max()) >= k):
            raise UserError(f"{source}: {s} labels span {int(y[s].min())}..{int(y[s].max())}, "
                            f"outside the classes 0..{k - 1} found in train")
    if len(y["test"]) == 0:
        raise UserError(f"{source}: the test split is empty")
    present = torch.bincount(y["train"], minlength=k)
    if k < 2 or (present == 0).any():
        raise UserError(f"{source}: train must hold at least two classes, each with images; "
                        f"found {dict(zip(classes, present.tolist()))}")


def subsample_train(splits, n, seed):
    """A stratified, seeded subset of n training images (the quick profile's smaller train split)."""
    if n >= len(splits.y["train"]):
        return splits
    keep, _ = train_test_split(np.arange(len(splits.y["train"])), train_size=n, stratify=splits.y["train"].numpy(),
                               random_state=seed)
    keep = np.sort(keep)
    return replace(splits, x={**splits.x, "train": splits.x["train"][keep]},
                   y={**splits.y, "train": splits.y["train"][keep]},
                   ids={**splits.ids, "train": [splits.ids["train"][i] for i in keep]},
                   groups={**splits.groups, "train": [splits.groups["train"][i] for i in keep]})
