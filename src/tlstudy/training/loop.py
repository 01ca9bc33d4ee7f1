"""One trial: train a model on prepared `Splits`, one epoch at a time, and score it.

`fit(config, data)` yields one metrics dict per epoch (tlstudy.names' EPOCH_KEYS), so a caller
(`tlstudy trial`, the Ray trainable) can report each epoch and stop between epochs; the last one
also holds the results under "summary": the report's columns and the test metrics at the
lowest-val-loss (test_best_*), highest-val-accuracy (test_bestacc_*) and final (test_final_*)
checkpoints. As in the PyTorch ImageNet example, `train_epoch`, `evaluate` and the metrics live
together. The data stay uint8 tensors, batches picked by indexing and normalised whole; a frozen
backbone runs once per split, its head trained on cached features (training.feature_cache).
Every epoch's record but the last also holds the trial's state after it (training.checkpoint), to
resume from; `fit(config, data, resume=state)` continues after that epoch, as if never stopped. The
last record holds the best-val-loss weights of the whole network (training.modelfile keeps them).
Predictions are the argmax over ALL outputs (training.metrics).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from tlstudy.data.splits import Splits
from tlstudy.names import CHECKPOINTS, EPOCH_KEYS, KEPT_WEIGHTS, PREDICTIONS, RESUME_STATE, RESUMED_AT, SUMMARY
from tlstudy.settings import TrialConfig
from tlstudy.training import checkpoint, models
from tlstudy.training import device as devices
from tlstudy.training.metrics import correct_count, per_image, test_metrics
from tlstudy.training.models import augment, make_optimizer, make_scheduler, parse_repeat, to_input

EVAL_BATCH = 128


@dataclass(frozen=True)
class RunContext:
    """How a trial's batches run, fixed once per trial and read by every step of it."""

    device: torch.device
    dtype: torch.dtype | None  # autocast's: bf16, fp16, or None (fp32)
    fmt: torch.memory_format  # torch.channels_last or torch.contiguous_format
    mode: str  # finetune | frozen
    frozen_bn: str  # frozen mode's BatchNorm: eval | train
    features: bool  # the network is the head alone, trained on cached backbone features
    scaler: torch.amp.GradScaler | None = None  # fp16's gradient scaler


def fit(config: TrialConfig, data: Splits, resume: dict | None = None) -> Generator[dict, None, None]:
    """Train per `config` on `data`, or continue from the state `resume` (a record's RESUME_STATE, as
    training.checkpoint.load reads it back); yield one metrics dict per epoch."""
    t_start = time.perf_counter()
    device = check(config)
    models.seed_everything(config.train_seed)
    numerics = devices.numerics(config.amp, config.channels_last, device)
    devices.prepare(device)
    train_repeat, eval_repeat = parse_repeat(config.train_repeat), parse_repeat(config.eval_repeat)

    model, weights_source = models.build(
        config.arch, config.weights, config.out_features, config.mode, config.weights_policy, data.num_classes
    )
    # torch's stub lacks Module.to's (device, memory_format=) overload, which torch has.
    model.to(device, memory_format=numerics.fmt)  # type: ignore[call-overload]
    build_s = time.perf_counter() - t_start
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(config, params, fused=device.type == "cuda")
    scheduler = make_scheduler(config, optimizer)
    features, scaler = uses_feature_cache(config), devices.scaler(device, numerics)
    run = RunContext(device, numerics.dtype, numerics.fmt, config.mode, config.frozen_bn, features, scaler)
    y = {s: t.to(device, non_blocking=True) for s, t in data.y.items()}
    net: nn.Module
    if run.features:
        from tlstudy.training import feature_cache  # frozen trials only

        repeats = {"train": train_repeat, "val": eval_repeat, "test": eval_repeat}
        x, hits = feature_cache.for_splits(model, data.x, repeats, config, weights_source, run)
        net = models.find_head(model)[1]  # trains in place: `model` ends with the trained head
        cache_use = {0: "built", len(x): "hit"}.get(hits, "partial")
    elif device.type == "cuda":  # the whole uint8 dataset fits on any GPU (Kermany at 224 px is 300 MB)
        x = {s: t.pin_memory().to(device, non_blocking=True) for s, t in data.x.items()}
        net, cache_use = model, "off"
    else:
        x, net, cache_use = data.x, model, "off"
    gen = torch.Generator().manual_seed(config.train_seed)

    # The checkpoints a trial is tested at: lowest val loss (the study's choice), highest val
    # accuracy (the tutorial's choice), and the last epoch.
    best: dict[str, dict] = {"loss": {}, "acc": {}}
    history: list[dict] = []
    first, resumed = 1, list[int]()
    if resume is not None:
        first, best, history, resumed = checkpoint.restore(resume, net, optimizer, scheduler, gen)
    startup_s = time.perf_counter() - t_start
    for epoch in range(first, config.epochs + 1):
        t0 = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        with models.threads(1 if run.features and device.type == "cpu" else None):
            train_loss, train_acc = train_epoch(net, x["train"], y["train"], optimizer, config, train_repeat, gen, run)
            val_loss, val_acc, _ = evaluate(net, x["val"], y["val"], eval_repeat, run)
        if scheduler:
            scheduler.step()
        values = (epoch, train_loss, train_acc, val_loss, val_acc, lr, time.perf_counter() - t0)
        rec = dict(zip(EPOCH_KEYS, values))
        history.append(rec)
        # The first epoch always makes a checkpoint, so a NaN first epoch still leaves one.
        last_best = best["loss"].get("val_loss", np.nan)
        better_loss = not best["loss"] or val_loss < last_best or not np.isfinite(last_best)
        better_acc = not best["acc"] or val_acc > best["acc"]["val_acc"]
        # One copy of the weights for both checkpoints, and none at the last epoch: the model holds them.
        state = _state_copy(net) if (better_loss or better_acc) and epoch < config.epochs else None
        if better_loss:
            best["loss"] = {"val_loss": val_loss, "epoch": epoch, "state": state}
        if better_acc:
            best["acc"] = {"val_acc": val_acc, "epoch": epoch, "state": state}
        if epoch < config.epochs:
            state_after = checkpoint.capture(epoch, net, optimizer, scheduler, gen, best, history, resumed)
            rec = {**rec, RESUME_STATE: state_after}
        else:
            # Before summarize, which loads the other checkpoints into the network.
            kept = best["loss"]["state"] if best["loss"]["state"] is not None else _state_copy(net)
            summary = summarize(net, x, y, data, best, history, eval_repeat, run, config.score_test)
            how: dict[str, Any] = dict(feature_cache=cache_use, weights_source=weights_source, device=str(device))
            how.update(amp=numerics.amp, channels_last=numerics.channels_last, threads=torch.get_num_threads())
            how.update(startup_s=startup_s, build_s=build_s, **devices.peak_memory(device))
            summary.update(
                wall_s=time.perf_counter() - t_start, **how, **{**data.info(), "classes": ",".join(data.classes)}
            )
            if resumed:
                summary[RESUMED_AT] = resumed
            rec = {**rec, SUMMARY: summary, KEPT_WEIGHTS: whole_state(model, net, kept)}
        yield rec


def check(config: TrialConfig) -> torch.device:
    """Refuse a configuration that cannot train (one line, before any data or model); its device."""
    parse_repeat(config.train_repeat), parse_repeat(config.eval_repeat)
    models.check(config.arch, config.weights, config.out_features, mode=config.mode, policy=config.weights_policy)
    return devices.resolve(config.device)


def uses_feature_cache(config: TrialConfig) -> bool:
    """Whether a trial trains on cached features: a frozen backbone whose BatchNorm stays in eval
    mode (in train mode its output depends on the batch), and no random augmentation."""
    return (
        config.mode == "frozen" and config.frozen_bn == "eval" and not config.augment and config.feature_cache == "auto"
    )


def train_epoch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    config: TrialConfig,
    repeat: tuple,
    gen: torch.Generator,
    run: RunContext,
) -> tuple[float, float]:
    """One epoch over x in a random order; returns (mean loss, accuracy)."""
    models.set_mode(model, run.mode, training=True, frozen_bn=run.frozen_bn)
    criterion = nn.CrossEntropyLoss()
    n, bs = len(y), config.batch_size
    perm = torch.randperm(n, generator=gen).to(x.device)
    total_loss = torch.zeros((), device=x.device)
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    seen = 0
    for i in range(0, n, bs):
        idx = perm[i : i + bs]
        if len(idx) < 2 and seen:
            continue  # BatchNorm cannot train on a batch of one; drop such a remainder
        xb, yb = x[idx], y[idx]
        if config.augment:
            xb = augment(xb.float(), gen if xb.device.type == "cpu" else None)
        inp = _input(xb, repeat, run)
        with devices.autocast(run.device, run.dtype):
            out = model(inp)
        loss = criterion(out.float(), yb)
        optimizer.zero_grad(set_to_none=True)
        if run.scaler is None:
            loss.backward()
            optimizer.step()
        else:  # fp16: gradients scaled against underflow; a step with inf or NaN in them is skipped
            run.scaler.scale(loss).backward()
            run.scaler.step(optimizer)
            run.scaler.update()
        total_loss += loss.detach() * len(idx)
        correct += correct_count(out, yb)
        seen += len(idx)
    mean_loss = total_loss.item() / seen
    if not np.isfinite(mean_loss):
        raise FloatingPointError(f"non-finite training loss ({mean_loss}); lower the learning rate")
    return mean_loss, correct.item() / seen


@torch.inference_mode()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, repeat: tuple, run: RunContext
) -> tuple[float, float, torch.Tensor]:
    """Mean loss, accuracy and the logits (float, on the CPU) of the model on one split."""
    out = outputs(model, x, repeat, run)
    loss = nn.functional.cross_entropy(out, y).item()
    return loss, correct_count(out, y).item() / len(y), out.cpu()


@torch.inference_mode()
def outputs(model: nn.Module, x: torch.Tensor, repeat: tuple, run: RunContext) -> torch.Tensor:
    """The model's float outputs for uint8 images (or cached features) x, in eval mode, in batches:
    how a trial scores val and test, and how `tlstudy predict` scores a user's images."""
    models.set_mode(model, run.mode, training=False)
    logits = []
    for xb in x.split(EVAL_BATCH):
        inp = _input(xb, repeat, run)
        with devices.autocast(run.device, run.dtype):
            logits.append(model(inp).float())
    return torch.cat(logits)


def _input(xb: torch.Tensor, repeat: tuple, run: RunContext) -> torch.Tensor:
    """A batch as the network takes it: cached features as they are, images expanded and normalised."""
    return xb if run.features else to_input(xb, repeat).contiguous(memory_format=run.fmt)


def summarize(
    model: nn.Module,
    x: dict,
    y: dict,
    data: Splits,
    best: dict,
    history: list,
    eval_repeat: tuple,
    run: RunContext,
    score_test: bool = True,
) -> dict:
    """The trial's results: report-table figures, and (score_test) test metrics and per-image
    predictions at the final, best-val-loss and best-val-accuracy checkpoints."""
    last, best_loss = history[-1], best["loss"]
    out = {f"final_{k}": last[k] for k in ("train_loss", "val_loss", "val_acc")}
    out.update(best_train_acc=max(h["train_acc"] for h in history), best_val_acc=max(h["val_acc"] for h in history))
    out.update(best_val_loss=best_loss["val_loss"], best_epoch=best_loss["epoch"], best_acc_epoch=best["acc"]["epoch"])
    out["epochs"] = len(history)
    if not score_test:
        return out
    # The three checkpoints are often one epoch (the last, in a short trial): each distinct
    # epoch's weights are scored once. The model holds the final epoch's weights on entry.
    checkpoints = {
        "final": (len(history), None),
        "best": (best["loss"]["epoch"], best["loss"]["state"]),
        "bestacc": (best["acc"]["epoch"], best["acc"]["state"]),
    }
    logits_at: dict[int, torch.Tensor] = {}
    predictions = {}
    for tag, (epoch, state) in checkpoints.items():
        if epoch not in logits_at:
            if state is not None:
                model.load_state_dict(state)
            logits_at[epoch] = evaluate(model, x["test"], y["test"], eval_repeat, run)[2]
        m = test_metrics(logits_at[epoch], data.y["test"], data.num_classes)
        out.update({f"test_{tag}_{k}": v for k, v in m.items()})
        predictions[CHECKPOINTS[tag]] = per_image(logits_at[epoch], data.num_classes)
    # One string: Ray's loggers keep it as it is, where lists would be split or dropped.
    out[PREDICTIONS] = json.dumps(predictions, separators=(",", ":"))
    return out


def whole_state(model: nn.Module, net: nn.Module, state: dict) -> dict:
    """The whole network's weights with `state` for `net`: the head alone when it trained on cached
    features (then `net` is the model's head), else all of them."""
    if net is model:
        return state
    name = models.find_head(model)[0]
    return {**model.state_dict(), **{f"{name}.{k}": v for k, v in state.items()}}


def _state_copy(model: nn.Module) -> dict:
    return copy.deepcopy(model.state_dict())
