"""`tlstudy predict MODEL PATH...`: a kept model's P(PNEUMONIA) for image files or folders, as a CSV.

The images are decoded and resized as the trial's were (tlstudy.data.sources.read_image) and scored
through the trial's own evaluation path (tlstudy.training.loop.outputs: the repeat factors and the
normalisation of tlstudy.training.models.to_input); the metrics of a labelled folder are the trial's
test metrics (tlstudy.training.metrics). `--cam DIR` writes a Grad-CAM overlay per image
(tlstudy.analysis.cam). The flags load without torch; the work imports it.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

from tlstudy.errors import UserError


def add_flags(p: argparse.ArgumentParser) -> None:
    p.description = (
        f"{p.description}.\n\nPATH: image files, a folder of images, a folder with one subfolder per class "
        "(NORMAL/, PNEUMONIA/: labelled, so accuracy, sensitivity, specificity and AUC are printed), or a "
        "chest_xray folder (train/, val/, test/, each with them)."
    )
    p.add_argument("model", metavar="MODEL", help="a model file (tlstudy export-model, or a study's kept model)")
    p.add_argument("paths", metavar="PATH", nargs="+", help="image files or folders")
    p.add_argument("--out", default="predictions.csv", help="the CSV to write: path, label, p_<class 1>, pred")
    p.add_argument("--cam", metavar="DIR", help="write a Grad-CAM overlay PNG per image under DIR")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where the model runs")
    p.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images instead of stopping")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if not out.resolve().parent.is_dir():
        raise UserError(f"cannot write {out}: no folder {out.parent}")
    for path in args.paths:
        if not Path(path).exists():
            raise UserError(f"no image file or folder {path}")
    if args.cam and Path(args.cam).exists() and not Path(args.cam).is_dir():
        raise UserError(f"--cam {args.cam}: a file is in the way of the overlays' folder")
    import numpy as np
    import torch

    from tlstudy.data import sources
    from tlstudy.training import device as devices
    from tlstudy.training import loop, metrics, modelfile, models

    t0 = time.perf_counter()
    model, header = modelfile.load(args.model)
    classes, size = list(header["classes"]), int(header["image_size"])
    files = sources.find_images(args.paths, classes)
    decoded = [(f, k, sources.read_image(f, size, args.skip_bad_images, min_side=size)) for f, k in files]
    skipped = [str(f) for f, _, im in decoded if im is None]
    decoded = [(f, k, im) for f, k, im in decoded if im is not None]
    if not decoded:
        raise UserError(f"no readable image among the {len(files)} files given")
    x = torch.from_numpy(np.stack([im for _, _, im in decoded]))[:, None]
    device = devices.resolve(args.device)
    repeat = models.parse_repeat(header["eval_repeat"])
    run_ctx = loop.RunContext(device, None, torch.contiguous_format, header["mode"], "eval", features=False)  # fp32
    t1 = time.perf_counter()
    logits = loop.outputs(model.to(device), x.to(device), repeat, run_ctx).cpu()
    scored_s = time.perf_counter() - t1
    scores = metrics.per_image(logits, len(classes))
    positive = classes[min(1, len(classes) - 1)]
    names = [f"class {i}" if i >= len(classes) else classes[i] for i in range(logits.shape[1])]
    labelled = all(k is not None for _, k, _ in decoded)
    if args.cam:  # before anything is written: an input too small to have a feature map to look at
        from tlstudy.analysis import cam

        try:
            cam.target_layer(model.cpu(), models.to_input(x[:1], repeat))
        except ValueError as e:
            raise UserError(f"no Grad-CAM overlays: {e}") from None
    try:
        with open(out, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label", f"p_{positive.lower()}", "pred"])
            for (path, k, _), p, pred in zip(decoded, scores["score"], scores["pred"]):
                w.writerow([str(path), "" if k is None else classes[k], p, names[pred]])
                print(f"{p:.4f}  {names[pred]:<10} {path}" + ("" if k is None else f"  (label {classes[k]})"))
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror}") from None
    pred = scores["pred"]
    counts = ", ".join(f"{sum(p == i for p in pred)} {n}" for i, n in enumerate(names) if any(p == i for p in pred))
    print(
        f"{len(decoded)} images: {counts}; model {header['arch']} trial {header.get('trial', '?')} of "
        f"{header.get('study', '?')} at {size} px; {scored_s / len(decoded) * 1000:.1f} ms per image on {device} "
        f"({time.perf_counter() - t0:.1f} s in all, loading and decoding included)"
    )
    if skipped:
        print(f"skipped {len(skipped)} unreadable images (--skip-bad-images), e.g. {skipped[0]}")
    if labelled:
        y = torch.tensor([k for _, k, _ in decoded])
        m = metrics.test_metrics(logits, y, len(classes))
        line = f"labelled: accuracy {m['acc']:.2%} ({m['correct']}/{m['total']}), AUC {m['auc']:.3f}"
        if len(classes) == 2:
            line += f", sensitivity {m['sensitivity']:.2%}, specificity {m['specificity']:.2%}"
        print(line)
    print(f"wrote {out}")
    if args.cam:
        folder = Path(args.cam)
        paths = [folder / (_relative(f, args.paths).with_suffix(".png")) for f, _, _ in decoded]
        try:
            cam.write_overlays(model.cpu(), x, repeat, paths)
        except OSError as e:
            raise UserError(f"cannot write the Grad-CAM overlays under {folder}: {e.strerror}") from None
        print(f"wrote {len(paths)} Grad-CAM overlays under {folder}", file=sys.stdout)
    return 0


def _relative(path: Path, roots: list[str]) -> Path:
    """An image's path below the PATH it was found in (its name for a file given as it is)."""
    for root in map(Path, roots):
        if root.is_dir() and path.is_relative_to(root):
            return path.relative_to(root)
    return Path(path.name)
