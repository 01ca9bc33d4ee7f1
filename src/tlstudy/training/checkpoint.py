"""A trial's state after an epoch, so that a trial whose worker died continues where it stopped.

`capture` gathers what the next epochs depend on: the network's weights, the optimizer's and the
schedule's state, every random generator (torch's global one, CUDA's, numpy's, Python's and the
batch-order generator of `fit`), the best checkpoints so far and the history. Tensors are
references to the live ones, valid until the trial trains on: `save` writes them at once (a Ray Tune
checkpoint each epoch, tlstudy.study.trainable). `load` reads them back with
`torch.load(weights_only=True)`, which runs no code from the file, and `restore` puts them in place,
so that on the CPU the resumed epochs are bit for bit those of an uninterrupted run.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tlstudy.errors import UserError
from tlstudy.names import TRIAL_STATE_FILE

VERSION = 1


def capture(
    epoch: int,
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    batches: torch.Generator,
    best: dict,
    history: list,
    resumed: list,
) -> dict:
    """The state after `epoch`. A best checkpoint of this very epoch is the network itself: it is
    stored once, and `restore` copies it back."""
    kept = {
        k: {**v, "state": None, "current": v.get("epoch") == epoch} if v.get("epoch") == epoch else dict(v)
        for k, v in best.items()
    }
    np_state: tuple = np.random.get_state(legacy=True)  # type: ignore[assignment]  # legacy: the tuple form
    return {
        "version": VERSION,
        "epoch": epoch,
        "model": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler else None,
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
            # numpy's state as plain values and a tensor: weights_only loads no numpy arrays
            "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
            "python": random.getstate(),
            "batches": batches.get_state(),
        },
        "best": kept,
        "history": [dict(h) for h in history],
        "resumed": list(resumed),
    }


def restore(
    state: dict, net: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, batches: torch.Generator
) -> tuple[int, dict, list, list]:
    """Put `state` in place; returns (the epoch to train next, best, history, resumed epochs)."""
    net.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    name, keys, *rest = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    batches.set_state(rng["batches"])
    best = {}
    for k, v in state["best"].items():
        current = v.pop("current", False)
        best[k] = {**v, "state": {n: t.clone() for n, t in net.state_dict().items()} if current else v["state"]}
    start = state["epoch"] + 1
    return start, best, list(state["history"]), [*state["resumed"], start]


def save(state: dict, folder: str | Path) -> Path:
    """Write `state` into `folder` (a checkpoint directory); returns the file."""
    path = Path(folder) / TRIAL_STATE_FILE
    torch.save(state, path)
    return path


def load(folder: str | Path) -> dict:
    """The state in a checkpoint directory, loaded on the CPU without running code from it."""
    path = Path(folder) / TRIAL_STATE_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refused, a truncated file: nothing to resume from
        raise UserError(f"cannot resume from {path}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    if not isinstance(state, dict) or state.get("version") != VERSION:
        raise UserError(f"{path} is not a tlstudy trial state (version {VERSION})")
    return state
