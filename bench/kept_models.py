"""What a kept model costs: its file's size per architecture, and `tlstudy predict`'s time per image.

    python bench/kept_models.py            # prints a table and RESULT {json}

Model files: random weights (the size does not depend on them, nor on the image size), written as
a study's trainable writes them (tlstudy.training.modelfile). Predict: the 16 sample X-rays
(tests/fixtures/chest_xray_sample, 256 x 204 px), resnet18 at 32 px (the quick profile), and
scaled up 4x, at 224 px (the full one), with and without --cam, in this process on the CPU, timed
as the command reports it (the forward passes per image) and whole (loading the model and decoding
included). Checkpoints: the state a running resnet18 trial's Ray Tune checkpoint holds after each
epoch (tlstudy.training.checkpoint: weights, optimizer, the best checkpoints of earlier epochs), as
written, with SGD (momentum) and Adam, 3 epochs on 16 px phantoms (the weights' size does not
depend on the image size).
"""

import json
import os
import re
import sys
import tempfile
import time
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import torch

from tlstudy import cli
from tlstudy.data import splits
from tlstudy.names import RESUME_STATE
from tlstudy.settings import DataSettings, TrialConfig
from tlstudy.training import checkpoint, loop, modelfile, models

XRAYS = Path(__file__).parents[1] / "tests" / "fixtures" / "chest_xray_sample"


def model_file(folder, arch, image_size):
    config = TrialConfig(arch=arch, weights="none")
    model, source = models.build(arch, "none", 2)
    info = dict(classes=["NORMAL", "PNEUMONIA"], image_size=image_size, data_source="bench", data_fingerprint="-")
    path = Path(folder) / f"{arch}-{image_size}.safetensors"
    modelfile.save(path, model.state_dict(), modelfile.describe(config, info, {"weights_source": source}))
    return path


def enlarged(folder, factor=4):
    """The sample X-rays scaled up 4x (1024 x 816 px JPEGs, the size of Kermany's smaller ones): the
    samples themselves (256 x 204) are smaller than a 224 px model's input, which predict refuses."""
    from PIL import Image

    for f in XRAYS.glob("*/*.jpeg"):
        (Path(folder) / f.parent.name).mkdir(parents=True, exist_ok=True)
        with Image.open(f) as img:
            img.resize((img.width * factor, img.height * factor), Image.Resampling.BICUBIC).save(
                Path(folder) / f.parent.name / f.name, quality=90
            )
    return Path(folder)


def predict(path, images, *more):
    out = StringIO()
    t0 = time.perf_counter()
    with redirect_stdout(out):
        cli.main(["predict", str(path), str(images), "--out", os.devnull, *more])
    whole = time.perf_counter() - t0
    ms = float(re.search(r"([\d.]+) ms per image", out.getvalue()).group(1))
    return ms, whole * 1000 / 16


def checkpoint_sizes(folder):
    """MB of the trial state after epochs 1 and 2 of a 3-epoch resnet18 trial, per optimizer."""
    data = splits.load(DataSettings(image_size=16, phantom_sizes=(48, 40, 40), min_val=0), use_cache=False)
    out = {}
    for optimizer in ("sgd", "adam"):
        config = TrialConfig(arch="resnet18", weights="none", epochs=3, batch_size=16, optimizer=optimizer)
        sizes = []
        for rec in loop.fit(config, data):
            if RESUME_STATE in rec:
                path = checkpoint.save(rec[RESUME_STATE], folder)
                sizes.append(round(path.stat().st_size / 1e6, 1))
        out[optimizer] = sizes
    return out


def main():
    load = os.getloadavg()[0]
    cpu = "avx512_bf16" if "avx512_bf16" in Path("/proc/cpuinfo").read_text() else "no avx512_bf16"
    result = {
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "load_avg_1min": round(load, 1),
        "sizes_mb": {},
        "predict_ms": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ("resnet18", "resnet101", "resnext50_32x4d"):
            result["sizes_mb"][arch] = round(model_file(tmp, arch, 32).stat().st_size / 1e6, 1)
        result["checkpoint_mb_after_epochs_1_2"] = checkpoint_sizes(tmp)
        for size in (32, 224):
            path = model_file(tmp, "resnet18", size)
            images = XRAYS if size < 204 else enlarged(Path(tmp) / "large")
            predict(path, images)  # warm-up: imports, first allocations
            for cam in (False, True):
                more = ["--cam", str(Path(tmp) / "cams")] if cam else []
                scored, whole = predict(path, images, *more)
                result["predict_ms"][f"resnet18 {size} px{' --cam' if cam else ''}"] = {
                    "forward": scored,
                    "whole": round(whole, 1),
                }
    print(json.dumps(result, indent=1))
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
