"""tlstudy's trial against the naive transfer-learning loop, in one run, on the same data.

    python bench/trial_throughput.py            # all cases, then a quick taskE study (~15 min on 2 idle cores)
    python bench/trial_throughput.py --skip-study --cases r18-frozen-64
    python bench/trial_throughput.py --cases          # only the study (and start-up parts)

The naive loop is written as the PyTorch transfer-learning tutorial writes it: an
ImageFolder of JPEGs, decoded and resized every epoch by per-sample transforms, fp32,
NCHW, a DataLoader (workers started every epoch), train and val phases per epoch.
Both sides get the same JPEGs (phantom X-rays written at SOURCE_PX), the same
"pretrained" weights file, batch size, optimizer and schedule, and no augmentation.

Frozen cases are about 30-epoch trials: tlstudy runs all 30 epochs; the naive loop runs
NAIVE_FROZEN_EPOCHS and its 30-epoch time is extrapolated linearly from its last
measured epoch (start-up + first epochs as measured, the rest at that epoch's cost).

Each case and side runs in its own subprocess, so peak memory (ru_maxrss, the process
plus its DataLoader workers) is the case's own. Prints a Markdown table and writes JSON.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE_PX = 256  # the JPEGs' size; the real Kermany X-rays are 1000-2000 px (dearer to decode)
SIZES = {"train": 160, "val": 32, "test": 32}
BATCH = 16
FROZEN_EPOCHS = 30
NAIVE_FROZEN_EPOCHS = 1
CASES = {  # name: (arch, mode, image px, epochs both sides run; frozen: see above), the targets first
    "r18-frozen-64": ("resnet18", "frozen", 64, FROZEN_EPOCHS),
    "r18-finetune-224": ("resnet18", "finetune", 224, 1),
    "r18-finetune-64": ("resnet18", "finetune", 64, 2),
    "rx50-frozen-64": ("resnext50_32x4d", "frozen", 64, FROZEN_EPOCHS),
    "r18-frozen-224": ("resnet18", "frozen", 224, FROZEN_EPOCHS),
}


def write_jpegs(root):
    """The phantom splits as a chest_xray-layout folder of JPEGs (what both sides read)."""
    from PIL import Image

    from tlstudy.data import phantom

    for i, (split, n) in enumerate(SIZES.items()):
        # Rendered at half size (the phantom renderer is slow), enlarged to SOURCE_PX.
        x, y = phantom.make_split(n, SOURCE_PX // 2, 100 + i, shifted=(split == "test"), normal_fraction=0.3)
        for k, (img, label) in enumerate(zip(x, y)):
            folder = root / split / ("NORMAL", "PNEUMONIA")[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[0]).resize((SOURCE_PX, SOURCE_PX), Image.BICUBIC).save(
                folder / f"{k:05d}.jpeg", quality=90
            )


def place_weights(torch_home, archs):
    """Random stand-ins for torchvision's IMAGENET1K_V1 files (nothing can be downloaded here)."""
    import torch
    from torchvision.models import get_model

    from tlstudy.training import models

    os.environ["TORCH_HOME"] = str(torch_home)
    for arch in archs:
        path = Path(models.weights_file(arch, "IMAGENET1K_V1"))
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(get_model(arch).state_dict(), path)


def optimizer_config(mode):
    # The tutorial's settings: SGD lr 1e-3 momentum 0.9, StepLR(7, 0.1).
    return dict(
        optimizer="sgd", lr=1e-3, momentum=0.9, schedule="step", step_size=7, gamma=0.1, batch_size=BATCH, mode=mode
    )


def run_tlstudy(root, arch, mode, size, epochs):
    import torch

    from tlstudy.data import splits as tldata
    from tlstudy.settings import DataSettings, TrialConfig
    from tlstudy.training import loop

    t0 = time.perf_counter()
    splits = tldata.load(DataSettings(str(root), size, min_val=0))  # decoded once per study: the warm disk cache
    load_s = time.perf_counter() - t0
    cfg = dict(
        arch=arch,
        weights="IMAGENET1K_V1",
        weights_policy="strict",
        epochs=epochs,
        train_seed=0,
        **optimizer_config(mode),
    )
    last = list(loop.fit(TrialConfig(**cfg), splits))[-1]["summary"]
    wall = time.perf_counter() - t0
    return dict(
        wall_s=wall,
        epochs=epochs,
        epochs_measured=epochs,
        data_load_s=load_s,
        startup_s=last["startup_s"],
        build_s=last["build_s"],
        feature_cache=last["feature_cache"],
        amp=last["amp"],
        channels_last=last["channels_last"],
        threads=torch.get_num_threads(),
        test_acc=last["test_best_acc"],
    )


def run_naive(root, arch, mode, size, epochs):
    """The tutorial's train_model, with its data pipeline; frozen: the 'fixed feature extractor' part."""
    import copy

    import torch
    from torch import nn
    from torchvision import datasets, transforms
    from torchvision.models import get_model

    t_start = time.perf_counter()
    tf = transforms.Compose(
        [
            transforms.Resize((size, size)),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    sets = {s: datasets.ImageFolder(root / s, tf) for s in SIZES}
    workers = min(4, os.cpu_count())  # the tutorial's num_workers=4, capped at the cores
    loaders = {
        s: torch.utils.data.DataLoader(sets[s], batch_size=BATCH, shuffle=(s == "train"), num_workers=workers)
        for s in SIZES
    }
    model = get_model(arch, weights="IMAGENET1K_V1")
    if mode == "frozen":
        for p in model.parameters():
            p.requires_grad = False
    model.fc = nn.Linear(model.fc.in_features, 2)
    cfg = optimizer_config(mode)
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=cfg["lr"], momentum=cfg["momentum"]
    )
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg["step_size"], gamma=cfg["gamma"])
    criterion = nn.CrossEntropyLoss()
    startup = time.perf_counter() - t_start
    best_wts, best_acc, epoch_s = copy.deepcopy(model.state_dict()), 0.0, []
    for _ in range(epochs):
        t0 = time.perf_counter()
        for phase in ("train", "val"):
            model.train() if phase == "train" else model.eval()
            running_loss, running_corrects = 0.0, 0
            for inputs, labels in loaders[phase]:
                optimizer.zero_grad()
                with torch.set_grad_enabled(phase == "train"):
                    outputs = model(inputs)
                    _, preds = torch.max(outputs, 1)
                    loss = criterion(outputs, labels)
                    if phase == "train":
                        loss.backward()
                        optimizer.step()
                running_loss += loss.item() * inputs.size(0)
                running_corrects += torch.sum(preds == labels.data)
            if phase == "train":
                scheduler.step()
            acc = running_corrects.double() / len(sets[phase])
            if phase == "val" and acc > best_acc:
                best_acc, best_wts = acc, copy.deepcopy(model.state_dict())
        epoch_s.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    model.load_state_dict(best_wts)
    model.eval()
    correct = 0
    with torch.no_grad():
        for inputs, labels in loaders["test"]:
            correct += int((model(inputs).argmax(1) == labels).sum())
    test_s = time.perf_counter() - t0
    wall = time.perf_counter() - t_start
    out = dict(
        wall_s=wall,
        epochs=epochs,
        epochs_measured=epochs,
        startup_s=startup,
        epoch_s=epoch_s,
        test_s=test_s,
        threads=torch.get_num_threads(),
        workers=workers,
        test_acc=correct / len(sets["test"]),
    )
    return out


def child(args):
    """One side of one case, in this process; prints one JSON line."""
    arch, mode, size, epochs = CASES[args.case]
    root = Path(args.root)
    if args.side == "naive" and mode == "frozen":
        out = run_naive(root / "jpeg", arch, mode, size, NAIVE_FROZEN_EPOCHS)
        # Linear extrapolation to `epochs`: the remaining epochs at the last measured epoch's cost.
        out["wall_s"] += (epochs - NAIVE_FROZEN_EPOCHS) * out["epoch_s"][-1]
        out["epochs"], out["extrapolated"] = epochs, True
    else:
        run = run_tlstudy if args.side == "tlstudy" else run_naive
        out = run(root / "jpeg", arch, mode, size, epochs)
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    out.update(maxrss_mb=me.ru_maxrss / 1024, workers_maxrss_mb=kids.ru_maxrss / 1024)
    print("RESULT " + json.dumps(out), flush=True)


def sub(args, *extra, env=None):
    r = subprocess.run(
        [sys.executable, __file__, *extra], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    lines = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    if r.returncode or not lines:
        raise RuntimeError(f"{extra} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def study_overhead(tmp):
    """A quick taskE study: its wall time against the sum of its trials' wall times."""
    import ray

    from tlstudy import cli

    results = Path(tmp) / "study"
    t0 = time.perf_counter()
    try:
        cli.main(["run", "--space", "taskE", "--results", str(results), "--num-cpus", "2"])
    finally:
        wall = time.perf_counter() - t0
        ray.shutdown()
    print("RESULT " + json.dumps({"study_wall_s": wall, **overhead(results / "taskE", slots=2)}), flush=True)


def overhead(folder, slots):
    """From a study's exports: time in the trials' fit() against the study's time.
    slots: trials that can run at once (--num-cpus 2, one CPU per trial: 2)."""
    import itertools

    import pandas as pd

    trials = pd.read_csv(folder / "trials.csv", parse_dates=["datetime_start", "datetime_complete"])
    epochs = pd.read_csv(folder / "epochs.csv")
    # A pruned trial has no summary, hence no wall_s: its time in fit() is the sum of its epochs.
    in_fit = trials.set_index("number").wall_s.fillna(epochs.groupby("number").epoch_s.sum())
    start, end = trials.datetime_start, trials.datetime_complete
    life = (end - start).dt.total_seconds()  # Optuna's ask to tell: pending and start-up included
    events = sorted([(t, 1) for t in start] + [(t, -1) for t in end])
    return dict(
        trials=len(trials),
        states=trials.state.value_counts().to_dict(),
        slots=slots,
        sum_trial_wall_s=float(in_fit.sum()),
        sum_trial_life_s=float(life.sum()),
        trials_span_s=(end.max() - start.min()).total_seconds(),
        max_alive=int(max(itertools.accumulate(d for _, d in events))),
    )


def handover():
    """Trial start-up besides the model: a Kermany-sized uint8 data set (224 px) handed to a Ray worker."""
    import ray
    import torch

    from tlstudy.data.splits import Splits

    n = {"train": 5216, "val": 522, "test": 624}
    splits = Splits(
        {s: torch.zeros(k, 1, 224, 224, dtype=torch.uint8) for s, k in n.items()},
        {s: torch.zeros(k, dtype=torch.long) for s, k in n.items()},
        ["NORMAL", "PNEUMONIA"],
        "zeros",
        "x",
    )

    @ray.remote(num_cpus=1)
    def touch(data):
        return sum(int(t.shape[0]) for t in data.x.values())

    @ray.remote(num_cpus=1)
    def noop():
        return 0

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        ray.get(noop.remote())  # a started worker, as with reuse_actors
        t0 = time.perf_counter()
        ref = ray.put(splits)
        put = time.perf_counter() - t0
        t0 = time.perf_counter()
        ray.get(touch.remote(ref))
        get = time.perf_counter() - t0
    finally:
        ray.shutdown()
    print("RESULT " + json.dumps(dict(mb=sum(t.numel() for t in splits.x.values()) / 2**20, put_s=put, task_get_s=get)))


def startup_parts():
    """Model construction and weight loading, per architecture: the old way and tlstudy's."""
    import torch
    from torchvision.models import get_model

    from tlstudy.training import models

    out = {}
    for arch in ("resnet18", "resnext50_32x4d", "resnet101"):
        place_weights(os.environ["TORCH_HOME"], [arch])
        t0 = time.perf_counter()
        m = get_model(arch)
        construct = time.perf_counter() - t0
        t0 = time.perf_counter()
        state = torch.load(models.weights_file(arch, "IMAGENET1K_V1"), weights_only=True)
        m.load_state_dict(state)
        load = time.perf_counter() - t0
        t0 = time.perf_counter()
        models.build(arch, "IMAGENET1K_V1", policy="strict")
        out[arch] = dict(random_init_s=construct, weights_load_s=load, tlstudy_build_s=time.perf_counter() - t0)
    print("RESULT " + json.dumps(out))


def machine():
    import torch

    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor(),
    )
    return dict(
        cpu=cpu,
        cores=os.cpu_count(),
        torch=torch.__version__,
        python=platform.python_version(),
        load_avg_at_start=os.getloadavg(),
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    p.add_argument("--skip-study", action="store_true", help="leave out the Ray + Optuna overhead study")
    p.add_argument("--json", default="bench/trial_throughput.json", help="where to write the figures")
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--side", help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--part", help=argparse.SUPPRESS)
    args = p.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # Ray on loopback only
    if args.case:
        return child(args)
    if args.part:
        return {"study": study_overhead, "handover": handover, "startup": startup_parts}[args.part](
            *([args.root] if args.part == "study" else [])
        )

    with tempfile.TemporaryDirectory(prefix="tlstudy-bench-") as tmp:
        tmp = Path(tmp)
        env = {
            "TLSTUDY_CACHE_DIR": str(tmp / "cache"),
            "TORCH_HOME": str(tmp / "torch"),
            "PYTHONPATH": str(ROOT / "src"),
        }
        os.environ.update(env)
        report = {"machine": machine(), "command": " ".join(["python"] + sys.argv), "cases": {}}
        t0 = time.perf_counter()
        if args.cases:
            write_jpegs(tmp / "jpeg")
            place_weights(tmp / "torch", sorted({c[0] for c in CASES.values()}))
        report["jpeg_write_s"] = time.perf_counter() - t0
        from tlstudy.data import splits as tldata
        from tlstudy.settings import DataSettings

        for size in sorted({CASES[c][2] for c in args.cases}):
            t0 = time.perf_counter()
            tldata.load(
                DataSettings(str(tmp / "jpeg"), size, min_val=0)
            )  # tlstudy's one decode per study, cached on disk
            report[f"decode_once_{size}px_s"] = time.perf_counter() - t0
        for name in args.cases:
            arch, mode, size, epochs = CASES[name]
            r = {
                side: sub(args, "--case", name, "--side", side, "--root", str(tmp), env=env)
                for side in ("naive", "tlstudy")
            }
            images = epochs * (SIZES["train"] + SIZES["val"])
            r["ratio"] = r["naive"]["wall_s"] / r["tlstudy"]["wall_s"]
            for side in ("naive", "tlstudy"):
                r[side]["images_per_s"] = images / r[side]["wall_s"]
            report["cases"][name] = r
            print(
                f"{name}: naive {r['naive']['wall_s']:.1f} s, tlstudy {r['tlstudy']['wall_s']:.1f} s, "
                f"ratio {r['ratio']:.1f}x",
                flush=True,
            )
            Path(args.json).write_text(json.dumps(report, indent=1))  # as it goes: a long run may be cut short
        if not args.skip_study:
            report["study"] = sub(args, "--part", "study", "--root", str(tmp), env=env)
            print(f"study: {report['study']}", flush=True)
        report["startup"] = sub(args, "--part", "startup", "--root", str(tmp), env=env)
        report["handover"] = sub(args, "--part", "handover", "--root", str(tmp), env=env)
        report["load_avg_at_end"] = os.getloadavg()
    Path(args.json).write_text(json.dumps(report, indent=1))
    print(table(report))
    print(f"figures: {args.json}")


def table(report):
    rows = [
        "| case | epochs | naive s | tlstudy s | ratio | naive img/s | tlstudy img/s | naive peak MB "
        "(+workers) | tlstudy peak MB | tlstudy start-up s |",
        "|" + "---|" * 10,
    ]
    for name, r in report["cases"].items():
        n, t = r["naive"], r["tlstudy"]
        epochs = f"{n['epochs']}" + (
            f" (naive: {NAIVE_FROZEN_EPOCHS} measured, extrapolated)" if n.get("extrapolated") else ""
        )
        rows.append(
            f"| {name} | {epochs} | {n['wall_s']:.1f} | {t['wall_s']:.1f} | **{r['ratio']:.1f}x** | "
            f"{n['images_per_s']:.0f} | {t['images_per_s']:.0f} | "
            f"{n['maxrss_mb']:.0f} (+{n['workers_maxrss_mb']:.0f}) | "
            f"{t['maxrss_mb']:.0f} | {t['startup_s']:.2f} |"
        )
    s = report.get("study")
    if s:
        busy, wall = s["sum_trial_wall_s"], s["study_wall_s"]
        rows.append(
            f"\nquick taskE study: {wall:.0f} s wall, {s['trials']} trials {s['states']}; time in the "
            f"trials' fit() {busy:.0f} s: 1 - sum/wall = {1 - busy / wall:.1%}; over {s['slots']} slots "
            f"{1 - busy / (s['slots'] * wall):.1%} of the slot time outside fit(); span of the trials "
            f"{s['trials_span_s']:.0f} s, at most {s['max_alive']} alive at once"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    main()
