"""Where a study's trials run: the Ray cluster and what its resources give, and how the trials share its GPUs.

The cluster. The Ray a study runs on: started or joined once per process (`init_ray`), and the defaults its
resources give: a new study's profile (`default_profile`: full where the cluster has a GPU) and how
many trials run at once (`slots`); the GPUs per trial come from `with_gpus`. These are
the cluster's, not the driver's: a head without a GPU may lead GPU workers, and a GPU machine may
be told to keep its GPUs out of Ray.

The GPUs. How the trials share the cluster's GPUs: the device each trial was granted, how many trials one
GPU fits, and the share of its memory each may take.

- A trial's device is what Ray granted it (`granted_device`): "auto" is CUDA only when the trial
  holds a GPU. Ray 2.60 leaves CUDA_VISIBLE_DEVICES as it is for a worker granted no GPU, so
  torch there sees the node's GPUs, and without this every CPU trial would land on cuda:0.
- GPUs per trial (`with_gpus`, unless --gpus-per-trial says): 0 on a cluster without GPUs; else
  1/k, where k trials fit one GPU's memory by the estimate of the study's largest trial
  (tlstudy.training.memory: its architectures, largest batch, image size, repeat factors and
  data), at most MAX_PER_GPU. An 80 GB GPU takes four trials of any task; a 16 GB one (a T4)
  two of task E's resnet18 trials, one of task A's or B's resnet101 at batch 64 (about 6.7 GiB).
- A trial with a share of a GPU caps its allocator at that share (`memory_fraction`, less its
  CUDA context) and hands its cache back when it ends (tlstudy.training.device.memory_cap).
"""

from __future__ import annotations

import functools
import logging
import math
import os
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import ray

from tlstudy.errors import UserError
from tlstudy.settings import DEFAULTS, StudySettings
from tlstudy.spaces import Space
from tlstudy.training import device as devices
from tlstudy.training.models import parse_repeat

if TYPE_CHECKING:
    from tlstudy.training import memory

GiB = 2**30  # as tlstudy.training.memory.GiB
CONTEXT = 0.75 * GiB  # a process's CUDA context, cuDNN and cuBLAS loaded: outside the allocator
USABLE = 0.95  # of a GPU's memory: the driver's own, and room for a neighbour's start-up
# More trials than this on one GPU add start-ups and contexts but no throughput: one resnet18
# trial at batch 16 is launch-bound, four keep the GPU busy (bench/gpu_check.sh measures it).
MAX_PER_GPU = 4


def granted_device(requested: str) -> str:
    """The device of a trial under Ray: "auto" is CUDA when Ray granted it a GPU, else the CPU;
    CUDA asked for without a GPU granted is refused (it would use one Ray gave another trial)."""
    granted = bool(ray.get_gpu_ids())
    if requested == "auto":
        return "cuda" if granted else "cpu"
    if requested.startswith("cuda") and not granted:
        raise UserError(f"device {requested} asked for, but Ray granted this trial no GPU: pass --gpus-per-trial")
    return requested


def granted_share() -> float:
    """The share of a GPU Ray granted this trial (0 without one)."""
    return float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))


def memory_fraction(share: float, total: int) -> float | None:
    """The allocator's cap for a trial holding `share` of a GPU of `total` bytes (None: a whole GPU)."""
    if not 0 < share < 1:
        return None
    return max(share - CONTEXT / total, share / 2)


def trials_per_gpu(total: int, peak: int) -> int:
    """How many trials of `peak` bytes (each with its CUDA context) fit a GPU of `total` bytes."""
    return max(1, min(MAX_PER_GPU, math.floor(total * USABLE / (peak + CONTEXT))))


def largest_trial(space: Space, settings: StudySettings, images: int, amp: str) -> tuple[memory.Estimate, str]:
    """The estimate of the study's most demanding trial, and what it is: every architecture the space
    runs, at the largest batch and repeat factors it may sample."""
    from tlstudy.training import memory  # only where there are GPUs to share: not on a CPU study's path

    shared = settings.shared

    def values(key: str) -> list:
        domain = space.param_space.get(key)
        found = list(getattr(domain, "categories", [])) + [v for (v,) in space.choices(key)]
        return [shared[key]] if key in shared else found or [DEFAULTS[key]]

    def pixels(r: str) -> int:
        f = parse_repeat(r)
        return f[2] * f[3]

    batch = max(int(b) for b in values("batch_size"))
    train, test = (max(values(k), key=pixels) for k in ("train_repeat", "eval_repeat"))
    optimizer = "adam" if {"adam", "adamw"} & set(values("optimizer")) else "sgd"
    amp = {"on": "bf16", "auto": amp}.get(str(shared.get("amp", "auto")), str(shared.get("amp")))
    size, frozen = settings.data.image_size, values("mode") == ["frozen"]
    estimates = {
        arch: memory.estimate(
            arch, batch, size, parse_repeat(train), parse_repeat(test), amp, optimizer, images, frozen=frozen
        )
        for arch in sorted(set(values("arch")))
    }
    arch = max(estimates, key=lambda a: estimates[a].total)
    f = parse_repeat(train)
    return estimates[arch], f"{arch} at batch {batch}, {size * f[3]}x{size * f[2]} px, {amp}"


def gpu_facts() -> dict | None:
    """The GPU this process sees: its name, memory, compute capability and `--amp auto`'s choice."""
    import torch

    if not torch.cuda.is_available():
        return None
    p = torch.cuda.get_device_properties(0)
    cap = (p.major, p.minor)
    return dict(name=p.name, total_memory=p.total_memory, capability=cap, amp=devices.auto_amp(torch.device("cuda")))


@functools.cache
def probe(timeout: float = 120) -> dict | None:
    """gpu_facts of one of the cluster's GPUs, from a task holding a sliver of it (None: the task saw
    no CUDA, as with logical GPUs, or did not run in time). Its worker exits after it, context and all."""
    task = ray.remote(num_gpus=0.01, num_cpus=0, max_calls=1)(gpu_facts)
    try:
        return ray.get(task.remote(), timeout=timeout)
    except (ray.exceptions.GetTimeoutError, ray.exceptions.RayError):
        return None


def with_gpus(settings: StudySettings, space: Space, images: int, say: Any = print) -> StudySettings:
    """The settings with their GPUs per trial: as given, 0 without GPUs, else what the memory fits."""
    gpus = float(ray.cluster_resources().get("GPU", 0.0))
    if settings.shared.get("device") == "cuda" and (settings.gpus_per_trial == 0 or not gpus):
        raise UserError("the space fixes device cuda, but its trials get no GPU: pass --gpus-per-trial")
    if settings.gpus_per_trial is not None:
        return settings
    if not gpus:
        return replace(settings, gpus_per_trial=0.0)
    facts = probe()
    if facts is None:
        say(f"GPUs: {gpus:g}, their memory unknown (a task there saw no CUDA): one trial per GPU")
        return replace(settings, gpus_per_trial=1.0)
    peak, what = largest_trial(space, settings, images, facts["amp"])
    k = trials_per_gpu(facts["total_memory"], peak.total)
    say(
        f"GPUs: {gpus:g} x {facts['name']} ({facts['total_memory'] / GiB:.0f} GiB): {k} trials per GPU "
        f"(--gpus-per-trial {1 / k:g}); the largest trial, {what}, is estimated at {peak.total / GiB:.1f} GiB"
    )
    return replace(settings, gpus_per_trial=1 / k)


def init_ray(address: str | None = None, num_cpus: int | None = None, verbose: bool = False) -> None:
    """Start a Ray of its own, or join the cluster of `address` (or RAY_ADDRESS); once per process."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    # "local": without it, ray.init joins any Ray already running on this machine (another
    # user's, another study's) instead of starting this study's own. Trials' own output (the
    # weights-fallback warning of each) only with --verbose: the progress lines say what matters.
    kwargs: dict[str, Any] = dict(address=address or "local", include_dashboard=False, log_to_driver=verbose)
    if not address and num_cpus:
        kwargs["num_cpus"] = num_cpus
    # Ray's token authentication is fine on loopback; its warning at every start is not news.
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(
        lambda record: "Token authentication is enabled" not in record.getMessage()
    )
    try:
        ray.init(logging_level=logging.WARNING, **kwargs)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise UserError(f"cannot start or join Ray{f' at {address}' if address else ''}: {e}") from None


def gpus() -> float:
    """The GPUs of the cluster Ray runs (logical ones too: ray.init(num_gpus=...))."""
    return float(ray.cluster_resources().get("GPU", 0.0))


def default_profile(gpus: float) -> str:
    """A new study's profile: the report's protocol where the cluster has a GPU to run it."""
    return "full" if gpus > 0 else "quick"


def profile(address: str | None = None, num_cpus: int | None = None, verbose: bool = False) -> str:
    """The default profile of a new study on the Ray of `address` (started or joined now)."""
    init_ray(address, num_cpus, verbose)
    return default_profile(gpus())


def slots(cluster: dict, resources: dict) -> int:
    """How many trials with `resources` the cluster's resources (ray.cluster_resources()) fit at once."""
    fits = [cluster.get(k.upper(), 0) / v for k, v in resources.items() if v]
    return max(1, int(min(fits))) if fits else 1
