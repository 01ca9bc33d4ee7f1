"""The measuring steps of bench/gpu_check.sh, one subcommand each: info, throughput, data, trials
(bench/gpu_check_report.py gathers and judges what they wrote).

Only torch, torchvision, numpy, the standard library and tlstudy's training and data layers: the
GPU machine it is meant for has no Ray, Optuna or network. Each step writes its JSON into WORK as
it goes (a step stopped by its timeout keeps what it measured).
Without CUDA (or with GPU_CHECK_CPU=1) every step runs at tiny sizes: that run checks this
script on a CPU before GPU time is spent on it.
"""

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

# The study layer's packages, which the GPU machine lacks. (Others' optional imports, such as joblib's
# of psutil, are no concern: those libraries do without them.)
FORBIDDEN = ("ray", "optuna", "sqlalchemy", "optuna_dashboard", "alembic")
ARCHS = ("resnet18", "resnext50_32x4d", "resnet101")
# Per mode: image size, batches, images per timed pass, step budgets (s), the trials' data.
SIZES = {
    "gpu": dict(size=224, batches=(16, 64), pass_images=256, amps=("bf16", "off", "fp16"), budget=92, margin=14),
    # Every numerics and repeat once, at one tiny batch: the code paths, not the figures.
    # (A batch of 2 at 16 px is degenerate: resnext50 and resnet101 diverged on it, even in fp32.)
    "cpu": dict(size=16, batches=(4,), pass_images=4, amps=("off", "bf16", "fp16"), budget=90, margin=10),
}
# Kermany's split sizes, rendered small (the trial's loader resizes them to the profile's 224 px).
# (The CPU run's trials pass --min-val 0: its 24 val images stay val.)
DATA = {"gpu": dict(sizes=(5216, 522, 624), render=32), "cpu": dict(sizes=(32, 24, 16), render=16)}


def forbidden_loaded() -> list[str]:
    return sorted({m.split(".")[0] for m in sys.modules} & set(FORBIDDEN))


def mode() -> str:
    import torch

    return "cpu" if os.environ.get("GPU_CHECK_CPU") == "1" or not torch.cuda.is_available() else "gpu"


def write(path: Path, obj: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    tmp.replace(path)


def info(work: Path) -> None:
    import torch
    import torchvision

    from tlstudy.training import device as devices

    m = mode()
    out = dict(mode=m, torch=torch.__version__, torchvision=torchvision.__version__, python=sys.version.split()[0])
    out.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version() if torch.cuda.is_available() else None)
    if m == "gpu":
        p = torch.cuda.get_device_properties(0)
        out.update(device=p.name, capability=f"{p.major}.{p.minor}", total_memory_gib=round(p.total_memory / 2**30, 1))
        out.update(multiprocessors=p.multi_processor_count, amp_auto=devices.auto_amp(torch.device("cuda")))
        out.update(bf16_native=devices.native_bf16(torch.device("cuda")))
    else:
        out.update(
            device="cpu", cpu_capability=torch.backends.cpu.get_cpu_capability(), threads=torch.get_num_threads()
        )
        out.update(amp_auto=devices.auto_amp(torch.device("cpu")))
    out["forbidden_imports"] = forbidden_loaded()
    print(" ".join(f"{k}={v}" for k, v in out.items()))
    (work / "mode").write_text(m)
    write(work / "info.json", out)


def throughput(work: Path) -> None:
    """Train and eval images/s per architecture, numerics, batch and repeat, through the trial's own
    train_epoch and evaluate on uint8 images on the device; three timed passes after a warm-up pass,
    and the peak memory beside its estimate."""
    import torch

    from tlstudy.training import device as devices
    from tlstudy.training import memory, models

    m = mode()
    s = SIZES[m]
    dev = torch.device("cuda" if m == "gpu" else "cpu")
    devices.prepare(dev)
    deadline = time.monotonic() + s["budget"] - s["margin"]
    size, n = s["size"], s["pass_images"]
    x = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, device=dev)
    y = torch.randint(0, 2, (n,), device=dev)
    out: dict = {"mode": m, "image_size": size, "pass_images": n, "rows": [], "skipped": []}
    for amp in s["amps"]:
        for repeat in ("1,3,1,1", "1,3,3,1"):
            for arch in ARCHS:
                for batch in s["batches"]:
                    what = dict(arch=arch, amp=amp, batch_size=batch, repeat=repeat)
                    if time.monotonic() > deadline:
                        out["skipped"].append(what)
                        continue
                    # A fresh model each time, made on the device (fast), alone there: every row
                    # starts from the same init, and its peak memory is its own.
                    torch.manual_seed(0)
                    with dev:
                        model = models.build(arch, "none", 2)[0]
                    try:
                        what.update(_time_one(model, x, y, dev, amp, batch, repeat))
                    except (torch.OutOfMemoryError, FloatingPointError) as e:
                        what["error"] = str(e).splitlines()[0]
                    del model
                    if dev.type == "cuda":
                        torch.cuda.empty_cache()
                    factors = models.parse_repeat(repeat)
                    est = memory.estimate(arch, batch, size, factors, factors, amp, images=n, eval_batch=batch)
                    what["estimate_gib"] = round(est.total / 2**30, 3)
                    out["rows"].append(what)
                    print(json.dumps(what), flush=True)
                    out["forbidden_imports"] = forbidden_loaded()
                    write(work / "throughput.json", out)
    write(work / "throughput.json", {**out, "forbidden_imports": forbidden_loaded()})


def _time_one(model, x, y, dev, amp, batch, repeat) -> dict:
    import torch

    from tlstudy.settings import TrialConfig
    from tlstudy.training import device as devices
    from tlstudy.training import loop, models

    n = devices.numerics(amp, "auto", dev)
    model.to(memory_format=n.fmt)
    cfg = TrialConfig(batch_size=batch)
    optimizer = models.make_optimizer(cfg, list(model.parameters()), fused=dev.type == "cuda")
    run = loop.RunContext(dev, n.dtype, n.fmt, "finetune", "eval", False, devices.scaler(dev, n))
    factors, gen = models.parse_repeat(repeat), torch.Generator().manual_seed(0)
    loop.EVAL_BATCH = batch  # evaluation at the same batch as training
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    rates = {}
    for phase in ("train", "eval"):
        if phase == "train":
            step = lambda: loop.train_epoch(model, x, y, optimizer, cfg, factors, gen, run)  # noqa: E731
        else:
            step = lambda: loop.evaluate(model, x, y, factors, run)  # noqa: E731
        step()  # warm-up: cuDNN's autotuning, the allocator's blocks; each pass ends in a host sync
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        rates[f"{phase}_images_per_s"] = [round(len(x) / t, 1) for t in times]
    if dev.type == "cuda":
        rates["peak_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 3)
        rates["reserved_gib"] = round(torch.cuda.max_memory_reserved(dev) / 2**30, 3)
    return rates


def data(work: Path) -> None:
    """The trials' data (phantoms, as a .npz the loader resizes) and a stand-in for the pretrained
    resnet18 file, placed where torchvision looks, as the tests place one."""
    import numpy as np
    import torch
    from torchvision.models import get_model

    from tlstudy.data import phantom
    from tlstudy.training import models

    t0 = time.perf_counter()
    d = DATA[mode()]
    arrays = {}
    for i, (split, n, normal) in enumerate(zip(("train", "val", "test"), d["sizes"], (0.26, 0.5, 0.375))):
        x, y = phantom.make_split(n, d["render"], i, shifted=split == "test", normal_fraction=normal)
        arrays.update({f"{split}_images": x[:, 0], f"{split}_labels": y})
    np.savez(work / "data.npz", **arrays)
    path = models.weights_file("resnet18", "IMAGENET1K_V1")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.manual_seed(123)
    torch.save(get_model("resnet18").state_dict(), path)
    out = dict(sizes=d["sizes"], rendered_px=d["render"], weights=path, seconds=round(time.perf_counter() - t0, 1))
    write(work / "data.json", {**out, "forbidden_imports": forbidden_loaded()})
    print(out)


def trials(work: Path, n: int, budget: float, cmd: list[str]) -> int:
    """n copies of a `tlstudy trial` command at once (other training seeds), nvidia-smi sampling the
    GPU meanwhile; each copy's wall time and its JSON. Killed at `budget` seconds. 1 unless all ended well."""
    smi = None
    if shutil.which("nvidia-smi"):
        query = "--query-gpu=timestamp,utilization.gpu,memory.used"
        smi = subprocess.Popen(
            ["nvidia-smi", query, "--format=csv,noheader,nounits", "-lms", "250"],
            stdout=open(work / f"smi{n}.csv", "w"),
            stderr=subprocess.DEVNULL,
        )
    procs, t0 = [], time.time()
    for i in range(n):
        argv = [*cmd, "--train-seed", str(i + 1), "--json", str(work / f"trial{n}_{i}.json")]
        out, err = open(work / f"trial{n}_{i}.out", "w"), open(work / f"trial{n}_{i}.err", "w")
        procs.append((subprocess.Popen(argv, stdout=out, stderr=err), time.time()))
    stop = lambda *_: [p.kill() for p, _ in procs]  # noqa: E731
    signal.signal(signal.SIGTERM, lambda *a: (stop(), sys.exit(124)))
    ends = {}
    while len(ends) < n and time.time() - t0 < budget:
        for i, (p, _) in enumerate(procs):
            if i not in ends and p.poll() is not None:
                ends[i] = time.time()
        time.sleep(0.05)
    stop()
    if smi:
        smi.terminate()
    result = dict(n=n, block_wall_s=round(max(ends.values(), default=time.time()) - t0, 2), trials=[])
    for i, (p, start) in enumerate(procs):
        # wall_s: the process's, Python's start included; trial_wall_s: fit's own (its summary's wall_s).
        rec: dict = dict(exit=p.wait(), wall_s=round(ends[i] - start, 2) if i in ends else None)
        path = work / f"trial{n}_{i}.json"
        if path.exists():
            j = json.loads(path.read_text())
            s = j["summary"]
            rec.update({k: s.get(k) for k in ("startup_s", "device", "amp", "gpu_peak_gb", "n_train")})
            rec.update(trial_wall_s=s["wall_s"], epoch_s=[round(e["epoch_s"], 2) for e in j["epochs"]])
        rec["forbidden_imports"] = _imports(work / f"trial{n}_{i}.err")
        result["trials"].append(rec)
    result["nvidia_smi"] = _smi(work / f"smi{n}.csv") if smi else "nvidia-smi not found"
    write(work / f"trials{n}.json", result)
    print(json.dumps(result))
    return 0 if all(t["exit"] == 0 for t in result["trials"]) else 1


def _imports(err: Path) -> list[str]:
    """The forbidden packages a process imported, from its -X importtime lines on stderr. Those
    lines name failed attempts too (a `try: import ray`), so a name counts only where this
    interpreter could import it: never on the GPU machine, and truly where it has them."""
    names = re.findall(r"^import time:.*\|\s*([\w.]+)\s*$", err.read_text(errors="replace"), re.M)
    return sorted(n for n in {n.split(".")[0] for n in names} & set(FORBIDDEN) if importlib.util.find_spec(n))


def _smi(path: Path) -> dict:
    rows = [r.split(",") for r in path.read_text().splitlines() if r.count(",") == 2]
    util = [float(r[1]) for r in rows if r[1].strip().replace(".", "").isdigit()]
    mem = [float(r[2]) for r in rows if r[2].strip().replace(".", "").isdigit()]
    if not util:
        return {"samples": 0}
    return dict(samples=len(util), util_mean=round(sum(util) / len(util), 1), util_max=max(util), mem_max_mib=max(mem))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    what, work = sys.argv[1], Path(sys.argv[2])
    if what == "trials":
        sys.exit(trials(work, int(sys.argv[3]), float(sys.argv[4]), sys.argv[5:]))
    else:
        {"info": info, "throughput": throughput, "data": data}[what](work)
