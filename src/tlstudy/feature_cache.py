"""Backbone features, computed once and shared: the fast path of frozen-backbone trials.

A frozen backbone stays in eval mode, so without random augmentation it maps an image
to the same features in every epoch and in every trial that uses the same backbone.
Its output is computed once per split (the input of the head, the model's last Linear
layer and last operation) and kept on disk in tlstudy's cache folder; a trial then
trains only the head on it, so 30 epochs cost about one forward pass over the data.

An entry is keyed by everything that determines it: architecture, weights (and for a
random backbone, the seed that drew it), the split's repeat factors and pixels, and the
numerics (bf16 autocast, memory format, device type, torch version). The pixels are
hashed rather than trusting the data's fingerprint, which a train subset or a resplit
val set keeps. Writes are atomic (`tlstudy.data.cached`), so concurrent trials share
entries safely.
"""
import hashlib
import json
import os

import torch

from tlstudy import data as tldata
from tlstudy import models
from tlstudy.transforms import to_input

BATCH = 128


def applies(cfg):
    """Whether a trial can train on cached features: a frozen backbone whose BatchNorm stays in eval
    mode (in train mode its output depends on the batch), and no random augmentation."""
    return (cfg["mode"] == "frozen" and cfg["frozen_bn"] == "eval" and not cfg["augment"]
            and cfg["feature_cache"] == "auto")


def for_splits(model, x, repeats, cfg, weights_source, run):
    """{split: float32 features N x F on run.device} for the uint8 images `x`, and how many
    of the splits came from the cache. `repeats` gives each split's repeat factors; `run` is the
    trial's tlstudy.train.RunContext (device and numerics)."""
    feats, hits = {}, 0
    for split, images in x.items():
        name = "features-" + key(images, repeats[split], cfg, weights_source, run)
        hits += (tldata.cache_dir() / f"{name}.pt").exists()
        feats[split] = tldata.cached(name, lambda: extract(model, images, repeats[split], run)).to(run.device)
    return feats, hits


def key(images, repeat, cfg, weights_source, run):
    if weights_source in ("none", "random-fallback"):
        weights = {"random_init_seed": cfg["train_seed"]}
    else:
        st = os.stat(models.weights_file(cfg["arch"], weights_source))
        weights = {"weights": weights_source, "file": [st.st_size, st.st_mtime_ns]}
    k = dict(arch=cfg["arch"], **weights, repeat=list(repeat), shape=list(images.shape),
             pixels=hashlib.sha1(images.contiguous().numpy().data).hexdigest(),
             amp=run.amp, channels_last=run.fmt == torch.channels_last, device=run.device.type,
             torch=torch.__version__)
    return hashlib.sha1(json.dumps(k, sort_keys=True).encode()).hexdigest()[:20]


@torch.inference_mode()
def extract(model, images, repeat, run):
    """The head's input for every image, as float32 on the CPU."""
    models.set_mode(model, "frozen", training=False)
    _, head = models.find_head(model)
    out = []
    hook = head.register_forward_pre_hook(lambda module, args: out.append(args[0].float().cpu()))
    try:
        for xb in images.split(BATCH):
            inp = to_input(xb.to(run.device), repeat).contiguous(memory_format=run.fmt)
            with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.amp):
                model(inp)
    finally:
        hook.remove()
    return torch.cat(out) if out else torch.zeros(0, head.in_features)
