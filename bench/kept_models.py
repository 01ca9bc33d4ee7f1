"""What a kept model costs: its file's size per architecture, and `tlstudy predict`'s time per image.

    python bench/kept_models.py            # prints a table and RESULT {json}

Model files: random weights (the size does not depend on them, nor on the image size), written as
a study's trainable writes them (tlstudy.training.modelfile). Predict: the 16 sample X-rays
(tests/fixtures/chest_xray_sample), resnet18 at 32 px (the quick profile) and 224 px (the full
one), with and without --cam, in this process on the CPU, timed as the command reports it (the
forward passes per image) and whole (loading the model and decoding included).
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
from tlstudy.settings import TrialConfig
from tlstudy.training import modelfile, models

XRAYS = Path(__file__).parents[1] / "tests" / "fixtures" / "chest_xray_sample"


def model_file(folder, arch, image_size):
    config = TrialConfig(arch=arch, weights="none")
    model, source = models.build(arch, "none", 2)
    info = dict(classes=["NORMAL", "PNEUMONIA"], image_size=image_size, data_source="bench", data_fingerprint="-")
    path = Path(folder) / f"{arch}-{image_size}.safetensors"
    modelfile.save(path, model.state_dict(), modelfile.describe(config, info, {"weights_source": source}))
    return path


def predict(path, *more):
    out = StringIO()
    t0 = time.perf_counter()
    with redirect_stdout(out):
        cli.main(["predict", str(path), str(XRAYS), "--out", os.devnull, *more])
    whole = time.perf_counter() - t0
    ms = float(re.search(r"([\d.]+) ms per image", out.getvalue()).group(1))
    return ms, whole * 1000 / 16


def main():
    cpu = "avx512_bf16" if "avx512_bf16" in Path("/proc/cpuinfo").read_text() else "no avx512_bf16"
    result = {"cpu": cpu, "threads": torch.get_num_threads(), "sizes_mb": {}, "predict_ms": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ("resnet18", "resnet101", "resnext50_32x4d"):
            result["sizes_mb"][arch] = round(model_file(tmp, arch, 32).stat().st_size / 1e6, 1)
        for size in (32, 224):
            path = model_file(tmp, "resnet18", size)
            predict(path)  # warm-up: imports, first allocations
            for cam in (False, True):
                more = ["--cam", str(Path(tmp) / "cams")] if cam else []
                scored, whole = predict(path, *more)
                result["predict_ms"][f"resnet18 {size} px{' --cam' if cam else ''}"] = {
                    "forward": scored,
                    "whole": round(whole, 1),
                }
    print(json.dumps(result, indent=1))
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
