"""REPORT.md's section on the kept models: their files, the commands that use the best one, and a
panel of test images with the best model's Grad-CAM overlays (cam_panel.png)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from tlstudy.errors import UserError
from tlstudy.names import BUDGET, CELL, DATA_ARGS, PHASE, TEST_BEST_ACC, TRAIN_SEED
from tlstudy.settings import DataSettings
from tlstudy.study import keep

PANEL = "cam_panel.png"
PANEL_PER_CLASS = 4


def section(study: Any, space_name: str, out_dir: Path, artifact_dir: Path) -> list[str]:
    """The section's Markdown lines; writes the panel beside REPORT.md when the data can be read."""
    links = keep.links(study)
    policy = study.user_attrs.get(BUDGET, {}).get("keep_models", "best")
    lines = ["## Kept models", ""]
    if not links:
        return lines + [f"No model file was kept (`--keep-models {policy}`).", ""]
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    files = "1 model file" if len(links) == 1 else f"{len(links)} model files"
    lines += [
        f"`--keep-models {policy}`: {files} (safetensors, each describing itself) in the artifact "
        f"store `{artifact_dir}/`, each linked on its trial's page in optuna-dashboard. Each holds its trial's "
        "best-val-loss weights: the checkpoint its `test_best_*` figures come from.",
        "",
        "| trial | cell | phase | train seed | val loss | test acc | file | MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n, meta in sorted(links.items()):
        t, path = trials[n], artifact_dir / meta["artifact_id"]
        size = f"{path.stat().st_size / 1e6:.1f}" if path.is_file() else "missing"
        acc = t.user_attrs.get(TEST_BEST_ACC)
        lines.append(
            f"| {n} | {t.user_attrs.get(CELL)} | {t.user_attrs.get(PHASE)} | {t.user_attrs.get(TRAIN_SEED)} | "
            f"{t.value:.4g} | {'' if acc is None else f'{acc:.1%}'} | `{path}` ({meta['filename']}) | {size} |"
        )
    best = keep.best_of(list(trials.values()))
    if best is None or best.number not in links:
        return lines + [""]
    model = artifact_dir / links[best.number]["artifact_id"]
    lines += [
        "",
        f"The study's best (trial {best.number}, lowest val loss), on new images, with a Grad-CAM overlay each:",
        "",
        "```bash",
        f"tlstudy predict {shlex.quote(str(model))} path/to/images --out predictions.csv --cam cams/",
        f"tlstudy export-model --space {shlex.quote(space_name)} --results {shlex.quote(str(artifact_dir.parent))} "
        "--out best.safetensors   # a copy under a name of your own",
        "```",
        "",
    ]
    drawn, note = panel(study, model, out_dir / PANEL)
    return lines + ([f"![Grad-CAM of the best model on test images]({PANEL})", ""] if drawn else []) + [note, ""]


def panel(study: Any, model_path: Path, path: Path) -> tuple[bool, str]:
    """The best model's Grad-CAM on a few test images of each class: (drawn, what it shows or why not)."""
    import torch

    from tlstudy.analysis import cam
    from tlstudy.data import splits as data_splits
    from tlstudy.training import loop, metrics, modelfile, models

    args = study.user_attrs.get(DATA_ARGS, {})
    try:
        train, val, test_size = (int(v) for v in str(args.get("phantom_sizes", "180,100,200")).split(","))
        settings = DataSettings(
            source=str(args.get("data", "phantom")),
            image_size=int(args["image_size"]),
            phantom_sizes=(train, val, test_size),
            max_train=args.get("max_train"),
            min_val=int(args.get("min_val", DataSettings.min_val)),
            skip_bad_images=bool(args.get("skip_bad_images")),
            seed=int(args.get("data_seed", 0)),
        )
        test = data_splits.load(settings)
        model, header = modelfile.load(model_path)
    except (UserError, KeyError, ValueError) as e:
        return False, f"(No Grad-CAM panel: {e}.)"
    y = test.y["test"]
    picks = [i for k in range(test.num_classes) for i in (y == k).nonzero()[:PANEL_PER_CLASS, 0].tolist()]
    x = test.x["test"][picks]
    repeat = models.parse_repeat(header["eval_repeat"])
    run = loop.RunContext(torch.device("cpu"), None, torch.contiguous_format, header["mode"], "eval", False)
    scores = metrics.per_image(loop.outputs(model, x, repeat, run), test.num_classes)
    captions = [
        f"{test.classes[int(y[i])]}: p={p:.2f}" + (" (wrong)" if pred != int(y[i]) else "")
        for i, p, pred in zip(picks, scores["score"], scores["pred"])
    ]
    try:
        cam.panel(model, x, repeat, captions, path)
    except ValueError as e:  # an input too small for any feature map (cam.target_layer)
        return False, f"(No Grad-CAM panel: {e}.)"
    return True, (
        f"Test images, {PANEL_PER_CLASS} per class, their label and the model's P({test.classes[-1]}); the colour is "
        "the Grad-CAM of the predicted class (red: most weight), on the input as the model saw it."
    )
