"""The device a trial runs on and the numerics it trains with, chosen per device, and the share of a
GPU's memory it may take.

Numerics (`--amp`): "auto" is bf16 autocast where the hardware has it natively (CUDA GPUs from
Ampere on; CPUs with AVX512-BF16 or AMX), fp16 autocast with a gradient scaler on older GPUs with
tensor cores (V100, T4: `torch.cuda.is_bf16_supported()` says True there too, but only by
emulation), and plain fp32 elsewhere; "bf16", "fp16" and "off" force one ("on" is bf16, as it was
before fp16 existed). channels_last goes with reduced precision ("auto"), where its kernels pay.

On CUDA a trial also turns on cuDNN's autotuner (its shapes are fixed within a trial) and fused
optimizers (tlstudy.training.models.make_optimizer); nothing here changes what a CPU computes.
Under Ray the study layer resolves "auto" from what Ray granted the trial before this module sees
it (tlstudy.study.placement); alone (`tlstudy trial`), "auto" is CUDA wherever torch sees a GPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from tlstudy.errors import UserError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}
# fp16 autocast pays with tensor cores: compute capability 7.0 (V100) and later.
FP16_CAPABILITY = (7, 0)


@dataclass(frozen=True)
class Numerics:
    """How a trial's arithmetic runs: autocast's dtype (None: fp32) and the memory format."""

    amp: str  # bf16 | fp16 | off: what `--amp` reruns the trial with
    channels_last: bool

    @property
    def dtype(self) -> torch.dtype | None:
        return DTYPES[self.amp]

    @property
    def fmt(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def resolve(requested: str) -> torch.device:
    """The device of `--device`: "auto" is CUDA where torch sees a GPU, else the CPU; a device
    asked for that is not there is refused (one line)."""
    device = requested if requested != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device} asked for, but torch sees no CUDA device")
    return torch.device(device)


def numerics(amp: str | bool, channels_last: str | bool, device: torch.device) -> Numerics:
    """The numerics a trial asked for (`amp`, `channels_last`: auto | on | off, amp also bf16 | fp16)."""
    name = "bf16" if amp is True or amp == "on" else "off" if amp is False else str(amp)
    if name == "auto":
        name = auto_amp(device)
    return Numerics(name, switch(channels_last, name != "off"))


def auto_amp(device: torch.device) -> str:
    """bf16 where it is native, fp16 on a GPU with tensor cores but no bf16, else off."""
    if native_bf16(device):
        return "bf16"
    if device.type == "cuda" and torch.cuda.get_device_capability(device) >= FP16_CAPABILITY:
        return "fp16"
    return "off"


def native_bf16(device: torch.device) -> bool:
    """bf16 pays only with hardware support: on an AVX2-only CPU, autocast to bf16 made
    resnet18 training 15-30x SLOWER (emulated), while AVX512-BF16/AMX CPUs and Ampere GPUs gain."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AMX"):
        return False  # kernels held to AVX2 (ATEN_CPU_CAPABILITY=avx2) emulate bf16 too
    # Private, for want of a public way: torch has no public query of the CPU's bf16 instructions.
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def switch(value: str | bool, auto: bool) -> bool:
    return auto if value == "auto" else value in ("on", True)


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """Autocast to `dtype` on the device's type, or none (dtype None)."""
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def scaler(device: torch.device, n: Numerics) -> torch.amp.GradScaler | None:
    """fp16's gradient scaler (bf16 has fp32's range and needs none)."""
    return torch.amp.GradScaler(device.type) if n.amp == "fp16" else None


def prepare(device: torch.device) -> None:
    """Before a trial's first step: cuDNN picks the fastest kernels for the trial's shapes (fixed
    within a trial), and the peak memory counts from here; a CPU keeps its defaults."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats(device)


@contextlib.contextmanager
def memory_cap(device: torch.device, fraction: float | None) -> Iterator[None]:
    """A trial that shares its GPU takes at most `fraction` of its memory (an out-of-memory error
    of its own rather than its neighbours'), and hands back what it cached when it ends: a reused
    worker process would otherwise keep its peak reserved through the next trial."""
    if device.type != "cuda":
        yield
        return
    capped = fraction is not None and fraction < 1
    if capped:
        torch.cuda.set_per_process_memory_fraction(fraction, device)
    try:
        yield
    finally:
        torch.cuda.empty_cache()
        if capped:
            torch.cuda.set_per_process_memory_fraction(1.0, device)


def peak_memory(device: torch.device) -> dict[str, float]:
    """The most memory the trial's tensors took on its GPU, in GiB, as the summary's gpu_peak_gb
    (nothing on a CPU: a CPU trial's row has no such column)."""
    return {"gpu_peak_gb": torch.cuda.max_memory_allocated(device) / 2**30} if device.type == "cuda" else {}
