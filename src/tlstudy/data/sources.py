"""The file formats a data set can come in, decoded into uint8 tensors (tlstudy.data.splits loads them).

- a folder in the Kaggle/Kermany chest_xray layout: train/, val/, test/, each with one
  subfolder per class (NORMAL, PNEUMONIA); any image mode and size, converted to one channel
  and resized to a square (`read_image`, which `tlstudy predict` uses too);
- a MedMNIST .npz file (train_images, train_labels, val_*, test_*);
- a folder of x_train.npy, y_train.npy, x_val.npy, ... (N x H x W or N x 1 x H x W).

Each reader returns {"x": {split: uint8 N x 1 x S x S}, "y": {split: int64 N}, "classes": [...]},
with the images' ids (their paths relative to the folder) and the unreadable files skipped
where there are files.
"""

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from tlstudy.errors import UserError

SPLITS = ("train", "val", "test")


def read(path: Path, image_size: int, skip_bad_images: bool) -> dict:
    """The data set at `path` (a chest_xray folder, a .npz file or a folder of .npy arrays)."""
    if path.suffix == ".npz":
        return _npz(path, image_size)
    if (path / "x_train.npy").exists():
        return _npy_folder(path, image_size)
    if path.is_dir():
        return _image_folder(path, image_size, skip_bad_images)
    raise UserError(f"{path} is neither a folder nor a .npz file")


def read_image(path, size, skip_bad=False, min_side=0):
    """One image file as a uint8 size x size array (one channel), or None when unreadable and skip_bad.
    An image whose shorter side is below min_side is refused (`tlstudy predict`: no upsampling)."""
    try:
        with Image.open(path) as img:
            if min(img.size) < min_side:
                raise UserError(
                    f"image {path} is {img.size[0]} x {img.size[1]} px, smaller than the model's {min_side} px input"
                )
            # JPEG draft mode decodes at a reduced scale: most of the speed-up on 2000 px X-rays.
            img.draft("L", (size, size))
            return np.asarray(img.convert("L").resize((size, size), Image.Resampling.BILINEAR))
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        if skip_bad:
            return None
        raise UserError(f"cannot read image {path} ({e}); remove or replace it, or pass --skip-bad-images") from None


def find_images(paths, classes):
    """[(file, label or None)] for `tlstudy predict`'s PATHs: a file as it is; a folder with
    subfolders named for classes (NORMAL/, PNEUMONIA/), or in the chest_xray layout (train/, val/,
    test/ with such subfolders), labelled by them; any other folder, its image files, unlabelled."""
    out: list[tuple[Path, int | None]] = []
    for p in map(Path, paths):
        if p.is_file():
            out.append((p, None))
            continue
        if not p.is_dir():
            raise UserError(f"no image file or folder {p}")
        found: list[tuple[Path, int | None]] = []
        for root in [p / s for s in SPLITS if (p / s).is_dir()] or [p]:
            if any((root / c).is_dir() for c in classes):
                found += [(f, k) for k, c in enumerate(classes) if (root / c).is_dir() for f in _images_in(root / c)]
            else:
                found += [(f, None) for f in _images_in(root)]
        if not found:
            raise UserError(
                f"folder {p} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}), nor {'/, '.join(classes)}/ "
                "subfolders holding some"
            )
        out += found
    return out


IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".pgm", ".ppm"}


def _images_in(folder):
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)


def _image_folder(root, size, skip_bad):
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise UserError(
            f"{root} is not in the chest_xray layout: it needs train/ and test/ folders (and val/), "
            "each with one subfolder per class"
        )
    classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise UserError(f"{root / 'train'} has no class subfolders (e.g. NORMAL/, PNEUMONIA/)")
    x, y, ids, skipped = {}, {}, {}, []
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        for s in SPLITS:
            files, labels = [], []
            if (root / s).is_dir():
                extra = sorted(
                    d.name
                    for d in (root / s).iterdir()
                    if d.is_dir() and d.name not in classes and not d.name.startswith(".")
                )
                if extra:
                    raise UserError(f"{root / s} has class folders {extra} that train/ lacks")
                for k, c in enumerate(classes):
                    folder = root / s / c
                    found = (
                        sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
                        if folder.is_dir()
                        else []
                    )
                    if not found and s != "val":
                        raise UserError(f"class folder {folder} is missing or empty")
                    files += found
                    labels += [k] * len(found)
            elif s != "val":
                raise UserError(f"{root / s} is missing")
            imgs = list(pool.map(lambda p: read_image(p, size, skip_bad), files))
            ids[s] = [files[i].relative_to(root).as_posix() for i, im in enumerate(imgs) if im is not None]
            keep = [i for i, im in enumerate(imgs) if im is not None]
            skipped += [str(files[i]) for i, im in enumerate(imgs) if im is None]
            x[s] = torch.from_numpy(
                np.stack([imgs[i] for i in keep])[:, None] if keep else np.zeros((0, 1, size, size), np.uint8)
            )
            y[s] = torch.tensor([labels[i] for i in keep], dtype=torch.long)
    return {"x": x, "y": y, "classes": classes, "skipped": skipped, "ids": ids}


def _to_tensor(a, size, name):
    """N x H x W, N x 1 x H x W or N x H x W x 3 images (uint8, or floats in [0, 1] or [0, 255]) to
    uint8 N x 1 x size x size."""
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
        t = torch.cat(
            [
                F.interpolate(c, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
                for c in t.split(512)
            ]
        )
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

    def read_split(s):
        try:
            return np.load(path / f"x_{s}.npy"), np.load(path / f"y_{s}.npy")
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read the {s} arrays in {path} ({e})") from None

    return _arrays(read_split, f"{path}/", size)


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
