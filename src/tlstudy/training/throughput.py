"""Training speed as a measurement, not a by-product of the trials' epoch times.

The report's claim 1 (resnet101 trains slower than resnext50_32x4d) is checked against this:
each architecture trains a fixed number of steps at a fixed batch and image size, one
architecture at a time, on the same threads, after a warm-up; each timed run gives one
seconds-per-step figure. Trials' epoch times mix batch sizes, schedules, cached features and
whatever else ran on the machine at the time, so they time nothing in particular.
"""

import functools
import os
import platform
import time

import torch
import torchvision
from torch import nn

from tlstudy.training import device as devices


def device_name(device: torch.device = torch.device("cpu")) -> str:
    """The CPU model, or the GPU's name, the figures were taken on."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "cpu"


def measure(
    archs: list[str],
    image_size: int,
    batch_size: int = 16,
    steps: int = 5,
    runs: int = 5,
    warmup: int = 2,
    threads: int = 1,
    device: str = "cpu",
) -> list[dict]:
    """Rows (arch, device, batch_size, image_size, repeat, run, s_per_step, threads, amp): `runs`
    timed runs of `steps` training steps per architecture, from a random init (weights do not
    change the arithmetic), on `device` with the numerics a trial there picks (`--amp auto`), on
    `threads` CPU threads as a one-CPU trial has."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    where = devices.resolve(device)
    numerics = devices.numerics("auto", "auto", where)
    devices.prepare(where)
    sync = torch.cuda.synchronize if where.type == "cuda" else (lambda: None)
    rows = []
    try:
        for arch in archs:
            torch.manual_seed(0)
            model = torchvision.models.get_model(arch, num_classes=2).train()
            model.to(where, memory_format=numerics.fmt)
            fused = {"fused": True} if where.type == "cuda" else {}  # as a trial's optimizer there
            opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, **fused)
            x = torch.randn(batch_size, 3, image_size, image_size, device=where)
            x = x.contiguous(memory_format=numerics.fmt)
            y = torch.randint(0, 2, (batch_size,), device=where)
            step = functools.partial(_step, model, opt, x, y, numerics, devices.scaler(where, numerics))

            for _ in range(warmup):
                step()
            for run in range(runs):
                sync()
                t0 = time.perf_counter()
                for _ in range(steps):
                    step()
                sync()
                # repeat: the input's repeat factors, part of the setting claims compare at (3 x S x S here)
                rows.append(
                    dict(
                        arch=arch,
                        device=device_name(where),
                        batch_size=batch_size,
                        image_size=image_size,
                        repeat="1,3,1,1",
                        run=run,
                        s_per_step=(time.perf_counter() - t0) / steps,
                        threads=threads,
                        amp=numerics.amp,
                        pid=os.getpid(),
                    )
                )
    finally:
        torch.set_num_threads(before)
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
