"""Backbone features, computed once and shared: the fast path of frozen-backbone trials.

A frozen backbone stays in eval mode, so without random augmentation it maps an image
to the same features in every epoch and in every trial that uses the same backbone.
Its output is computed once per split (the input of the head, the model's last Linear
layer and last operation) and kept on disk in tlstudy's cache folder; a trial then
trains only the head on it, so 30 epochs cost about one forward pass over the data.

An entry is keyed by everything that determines it: architecture, weights (and for a
random backbone, the seed that drew it), the split's repeat factors and pixels, and the
numerics (autocast's dtype, memory format, device type, torch version). The pixels are
hashed rather than trusting the data's fingerprint, which a train subset or a resplit
val set keeps. Writes are atomic (`tlstudy.data.splits.cached`), so concurrent trials share
entries safely.
"""

import hashlib
import json
import os
from typing import Any

import torch

from tlstudy.data.splits import cache_dir, cached
from tlstudy.names import RANDOM_FALLBACK
from tlstudy.settings import TrialConfig
from tlstudy.training import models
from tlstudy.training.device import autocast
from tlstudy.training.models import to_input

BATCH = 128


def for_splits(
    model: torch.nn.Module, x: dict, repeats: dict, cfg: TrialConfig, weights_source: str, run: Any
) -> tuple[dict, int]:
    """{split: float32 features N x F on run.device} for the uint8 images `x`, and how many
    of the splits came from the cache. `repeats` gives each split's repeat factors; `run` is the
    trial's tlstudy.training.loop.RunContext (device and numerics)."""
    feats, hits = {}, 0
    for split, images in x.items():
        name = "features-" + key(images, repeats[split], cfg, weights_source, run)
        hits += (cache_dir() / f"{name}.pt").exists()
        build = lambda images=images, repeat=repeats[split]: extract(model, images, repeat, run)
        feats[split] = cached(name, build).to(run.device)
    return feats, hits


def key(images: torch.Tensor, repeat: tuple, cfg: TrialConfig, weights_source: str, run: Any) -> str:
    if weights_source in ("none", RANDOM_FALLBACK):
        weights: dict[str, Any] = {"random_init_seed": cfg.train_seed}
    else:
        st = os.stat(models.weights_file(cfg.arch, weights_source))
        weights = {"weights": weights_source, "file": [st.st_size, st.st_mtime_ns]}
    k = dict(
        arch=cfg.arch,
        **weights,
        repeat=list(repeat),
        shape=list(images.shape),
        pixels=hashlib.sha1(images.contiguous().numpy().data).hexdigest(),
        dtype=str(run.dtype),  # autocast's (None: fp32): bf16 and fp16 features differ
        channels_last=run.fmt == torch.channels_last,
        device=run.device.type,
        torch=torch.__version__,
    )
    return hashlib.sha1(json.dumps(k, sort_keys=True).encode()).hexdigest()[:20]


@torch.inference_mode()
def extract(model: torch.nn.Module, images: torch.Tensor, repeat: tuple, run: Any) -> torch.Tensor:
    """The head's input for every image, as float32 on the CPU (copied there once, not per batch:
    each copy would wait for the GPU)."""
    models.set_mode(model, "frozen", training=False)
    _, head = models.find_head(model)
    out = []
    hook = head.register_forward_pre_hook(lambda module, args: out.append(args[0].float()))
    try:
        for xb in images.split(BATCH):
            inp = to_input(xb.to(run.device), repeat).contiguous(memory_format=run.fmt)
            with autocast(run.device, run.dtype):
                model(inp)
    finally:
        hook.remove()
    return torch.cat(out).cpu() if out else torch.zeros(0, head.in_features)
