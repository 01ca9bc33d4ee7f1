"""A kept model as a file that describes itself: safetensors, with tlstudy's header in its metadata.

The weights are the best-val-loss checkpoint of a trial (the one its test_best_* figures come from),
the whole network, head included. The header says what the weights need to be used as they were
trained: the architecture and where its weights came from, the mode, out_features and classes, the
image size, the repeat factors and the normalisation, and where the model came from (data
fingerprint, study, trial, tlstudy version). safetensors holds tensors and a JSON header only, so
loading a model file never runs code from it (a pickle could); a digest over the header and the
tensors refuses a file changed since it was written, and a file of another kind gets one line.
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torchvision.models import get_model

from tlstudy.errors import UserError
from tlstudy.settings import TrialConfig
from tlstudy.training import models

KIND = "tlstudy-model"
VERSION = 1
HEADER_KEY = "tlstudy"  # the metadata entry holding the header, as JSON
# What a model file's header must hold for `load` to rebuild and feed the network.
REQUIRED = ("arch", "out_features", "classes", "image_size", "eval_repeat", "normalisation")


def describe(config: TrialConfig, info: dict, summary: dict) -> dict[str, Any]:
    """The header of a trial's model file, from its config, its data's info (Splits.info) and its summary."""
    return {
        "kind": KIND,
        "version": VERSION,
        "arch": config.arch,
        "weights": config.weights,
        "weights_source": summary.get("weights_source"),
        "mode": config.mode,
        "out_features": config.out_features,
        "classes": list(info["classes"]),
        "image_size": info["image_size"],
        "channels": "one grey channel, expanded to three by the repeat factors",
        "train_repeat": config.train_repeat,
        "eval_repeat": config.eval_repeat,
        "normalisation": {"scale": "x / 255", "mean": list(models.IMAGENET_MEAN), "std": list(models.IMAGENET_STD)},
        "data_source": info.get("data_source"),
        "data_fingerprint": info.get("data_fingerprint"),
        "best_epoch": summary.get("best_epoch"),
        "best_val_loss": summary.get("best_val_loss"),
        "train_seed": config.train_seed,
        "tlstudy_version": version(),
        "torch_version": torch.__version__,
    }


def version() -> str:
    try:
        return metadata.version("tlstudy")
    except metadata.PackageNotFoundError:  # a checkout run without installing
        return "unknown"


def digest(header: dict, tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the header (without its digest) and every tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256(json.dumps({k: v for k, v in header.items() if k != "digest"}, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save(path: str | Path, state: dict[str, torch.Tensor], header: dict[str, Any]) -> Path:
    """Write the weights `state` with `header` (its digest added) as a safetensors file."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    header = {**header, "digest": digest(header, tensors)}
    save_file(tensors, str(path), metadata={HEADER_KEY: json.dumps(header)})
    return Path(path)


def read(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(header, tensors) of a model file, checked: one line naming what is wrong otherwise."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no model file {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # SafetensorError and the like: whatever it is, it is no safetensors file
        with open(path, "rb") as fh:
            pickled = fh.read(2) in (b"PK", b"\x80\x02", b"\x80\x04", b"\x80\x05")
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        what = "a pickle or torch.save file, which tlstudy never loads: unpickling can run code" if pickled else reason
        raise UserError(f"{path} is not a tlstudy model file ({what})") from None
    try:
        header = json.loads(meta[HEADER_KEY])
        assert isinstance(header, dict) and header.get("kind") == KIND
    except (KeyError, ValueError, AssertionError):
        raise UserError(f"{path} is a safetensors file but not a tlstudy model (no {KIND} header)") from None
    if header.get("version") != VERSION or any(k not in header for k in REQUIRED):
        raise UserError(f"{path} is a tlstudy model of another version ({header.get('version')}; this reads {VERSION})")
    if header.get("digest") != digest(header, tensors):
        raise UserError(f"{path} was changed after tlstudy wrote it (its digest does not match): refused")
    return header, tensors


def load(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The network of a model file, in eval mode on the CPU, and its header."""
    header, state = read(path)
    try:
        models.check(header["arch"], "none", int(header["out_features"]), len(header["classes"]))
        with torch.device("meta"):  # no random init: every weight comes from the file
            model = get_model(header["arch"], weights=None)
        name, head = models.find_head(model)
        with torch.device("meta"):
            model.set_submodule(name, nn.Linear(head.in_features, int(header["out_features"])))
        model.load_state_dict(state, assign=True)
        models.parse_repeat(header["eval_repeat"])
    except (RuntimeError, UserError, ValueError, TypeError) as e:
        reason = str(e).strip().splitlines()[0][:200]
        raise UserError(f"{path}: its weights do not fit its header ({reason})") from None
    return model.eval(), header


def rewrite(src: str | Path, dst: str | Path, **more: Any) -> dict[str, Any]:
    """Copy a model file, its header extended with `more` (the study and trial, known to the driver)."""
    header, tensors = read(src)
    header = {**header, **more}
    save(dst, tensors, header)
    return header
