"""Training speed as a measurement, not a by-product of the trials' epoch times.

The report's claim 1 (resnet101 trains slower than resnext50_32x4d) is checked against this:
each architecture trains a fixed number of steps at a fixed batch and image size, one
architecture at a time, on the same threads, after a warm-up; each timed run gives one
seconds-per-step figure. Trials' epoch times mix batch sizes, schedules, cached features and
whatever else ran on the machine at the time, so they time nothing in particular.
"""

import os
import platform
import time

import torch
import torchvision
from torch import nn

from tlstudy.training.models import native_bf16


def device_name() -> str:
    """The CPU model (or GPU name) the figures were taken on."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
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
) -> list[dict]:
    """Rows (arch, device, batch_size, image_size, repeat, run, s_per_step, threads, amp): `runs`
    timed runs of `steps` training steps per architecture, from a random init (weights do not
    change the arithmetic), on `threads` CPU threads as a one-CPU trial has."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    device = torch.device("cpu")
    amp = native_bf16(device)
    rows = []
    try:
        for arch in archs:
            torch.manual_seed(0)
            model = torchvision.models.get_model(arch, num_classes=2).train()
            opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
            x = torch.randn(batch_size, 3, image_size, image_size)
            y = torch.randint(0, 2, (batch_size,))

            def step(
                model: nn.Module = model, opt: torch.optim.Optimizer = opt, x: torch.Tensor = x, y: torch.Tensor = y
            ) -> None:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                    loss = nn.functional.cross_entropy(model(x).float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            for _ in range(warmup):
                step()
            for run in range(runs):
                t0 = time.perf_counter()
                for _ in range(steps):
                    step()
                # repeat: the input's repeat factors, part of the setting claims compare at (3 x S x S here)
                rows.append(
                    dict(
                        arch=arch,
                        device=device_name(),
                        batch_size=batch_size,
                        image_size=image_size,
                        repeat="1,3,1,1",
                        run=run,
                        s_per_step=(time.perf_counter() - t0) / steps,
                        threads=threads,
                        amp=amp,
                        pid=os.getpid(),
                    )
                )
    finally:
        torch.set_num_threads(before)
    return rows
