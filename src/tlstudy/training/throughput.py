"""Training speed as a measurement, not a by-product of the trials' epoch times.

The report's claim 1 (resnet101 trains slower than resnext50_32x4d) is checked against this.
Each timed run trains one architecture for a fixed number of steps at a fixed batch and image
size, after a warm-up, and gives one seconds-per-step figure. Trials' epoch times mix batch
sizes, schedules, cached features and whatever else ran on the machine at the time, so they
time nothing in particular.

The runs are interleaved, each in a process of its own (`interleaved`):
- round r runs every architecture once, in the order A B in even rounds and B A in odd ones, so
  the machine's drift (143 -> 350 ms for one step within 15 minutes here) falls on both alike and
  a linear drift cancels over each pair of rounds. Timing each architecture in one block, as
  before, confounded the drift with the architecture;
- a fresh interpreter per run carries no allocator, thread-pool or autotuner state from the
  previous architecture, so the rounds are independent replicates. The analysis pairs the
  architectures by round (tlstudy.analysis.statistics.throughput);
- the runs use the trials' device and threads, and each row names what it ran on.

`python -m tlstudy.training.throughput --arch resnet18 --image-size 32` is one such run; it prints
its row as JSON.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import time

import torch
import torchvision
from torch import nn

from tlstudy.training import device as devices

RUN_TIMEOUT_S = 600  # one run of a few steps; a run that takes longer is stuck


def device_name(device: torch.device | str = "cpu") -> str:
    """The GPU name of a CUDA device, or the CPU model: what a figure taken on `device` ran on."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "cpu"


def time_steps(
    arch: str,
    image_size: int,
    batch_size: int = 16,
    steps: int = 5,
    warmup: int = 2,
    threads: int = 1,
    device: str = "cpu",
) -> dict:
    """One timed run in this process: the row (arch, device, device_type, batch_size, image_size,
    repeat, s_per_step, threads, amp, pid), from a random init (weights do not change the
    arithmetic), with the numerics a trial on `device` picks (`--amp auto`)."""
    torch.set_num_threads(threads)
    dev = devices.resolve(device)
    numerics = devices.numerics("auto", "auto", dev)
    devices.prepare(dev)
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, num_classes=2).train()
    model.to(dev, memory_format=numerics.fmt)
    fused = {"fused": True} if dev.type == "cuda" else {}  # as a trial's optimizer there
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, **fused)
    x = torch.randn(batch_size, 3, image_size, image_size, device=dev).contiguous(memory_format=numerics.fmt)
    y = torch.randint(0, 2, (batch_size,), device=dev)
    step = functools.partial(_step, model, opt, x, y, numerics, devices.scaler(dev, numerics))

    def sync() -> None:  # CUDA runs asynchronously: the clock stops when the GPU is done
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in range(warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    # repeat: the input's repeat factors, part of the setting claims compare at (3 x S x S here)
    return dict(
        arch=arch,
        device=device_name(dev),
        device_type=dev.type,
        batch_size=batch_size,
        image_size=image_size,
        repeat="1,3,1,1",
        s_per_step=(time.perf_counter() - t0) / steps,
        threads=threads,
        amp=numerics.amp,
        pid=os.getpid(),
    )


def interleaved(
    archs: list[str],
    image_size: int,
    rounds: int = 5,
    batch_size: int = 16,
    steps: int = 5,
    warmup: int = 2,
    threads: int = 1,
    device: str = "cpu",
) -> list[dict]:
    """`rounds` rounds of one timed run per architecture, each run in a fresh process, the order
    alternating between rounds (A B, B A, ...). Rows as `time_steps`, with run (the round) and slot
    (the position within it)."""
    rows = []
    for run in range(rounds):
        for slot, arch in enumerate(archs if run % 2 == 0 else archs[::-1]):
            args = dict(
                arch=arch, image_size=image_size, batch_size=batch_size, steps=steps, warmup=warmup, threads=threads
            )
            cmd = [sys.executable, "-m", "tlstudy.training.throughput", "--device", device]
            cmd += [f"--{k.replace('_', '-')}={v}" for k, v in args.items()]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
            if done.returncode:
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise RuntimeError(f"timing {arch} failed (exit {done.returncode}): {last}")
            rows.append(dict(json.loads(done.stdout.strip().splitlines()[-1]), run=run, slot=slot))
    return rows


def _step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    numerics: devices.Numerics,
    scaler: torch.amp.GradScaler | None,
) -> None:
    """One training step, as a trial's (tlstudy.training.loop.train_epoch)."""
    with devices.autocast(x.device, numerics.dtype):
        loss = nn.functional.cross_entropy(model(x).float(), y)
    opt.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        opt.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="One timed training run of one architecture; prints its row as JSON.")
    ap.add_argument("--arch", required=True)
    ap.add_argument("--image-size", type=int, required=True)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    print(json.dumps(time_steps(**vars(ap.parse_args(argv)))))


if __name__ == "__main__":
    main()
