"""One trial: train a model on prepared `Splits`, one epoch at a time.

`fit(config, data)` is a generator: it yields one dict of metrics per epoch (the
names are tlstudy.result_keys'), so a caller (the command line, or the Ray trainable)
can report each epoch and stop between epochs. The last epoch's dict also carries the
trial's results under "summary": the report's columns, and the test metrics of the
checkpoint with the lowest val loss (test_best_*) AND of the final epoch (test_final_*).
How the batches run (device, bf16, memory format, mode) is settled once, as a
`RunContext`, and handed to every step.

The data stay uint8 tensors (on the GPU when there is one); each batch is picked
by indexing, then expanded and normalised as a whole (`tlstudy.transforms`). A frozen
backbone without augmentation runs once per split instead of once per epoch: the head
trains on its cached output (`tlstudy.feature_cache`), with the same batches in the same order.
"""
import contextlib
import copy
import json
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tlstudy import feature_cache, metrics, models
from tlstudy.config import CHOICES, DEFAULTS
from tlstudy.errors import UserError
from tlstudy.result_keys import SUMMARY
from tlstudy.transforms import augment, parse_repeat, to_input

EVAL_BATCH = 128


@dataclass(frozen=True)
class RunContext:
    """How a trial's batches run, fixed once per trial and read by every step of it."""
    device: torch.device
    amp: bool  # bf16 autocast
    fmt: torch.memory_format  # torch.channels_last or torch.contiguous_format
    mode: str  # finetune | frozen
    frozen_bn: str  # frozen mode's BatchNorm: eval | train
    features: bool  # the network is the head alone, trained on cached backbone features (tlstudy.feature_cache)


def fit(config, data):
    """Train per `config` on `data` (a tlstudy.data.Splits); yield one metrics dict per epoch."""
    t_start = time.perf_counter()
    cfg = resolve(config)
    seed_everything(cfg["train_seed"])
    device = torch.device(cfg["device"])
    amp = _switch(cfg["amp"], native_bf16(device))
    channels_last = _switch(cfg["channels_last"], amp)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    train_repeat, eval_repeat = parse_repeat(cfg["train_repeat"]), parse_repeat(cfg["eval_repeat"])

    model, weights_source = models.build(cfg["arch"], cfg["weights"], cfg["out_features"], cfg["mode"],
                                         cfg["weights_policy"], data.num_classes)
    model.to(device, memory_format=fmt)
    build_s = time.perf_counter() - t_start
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(cfg, params)
    scheduler = make_scheduler(cfg, optimizer)
    run = RunContext(device=device, amp=amp, fmt=fmt, mode=cfg["mode"], frozen_bn=cfg["frozen_bn"],
                     features=feature_cache.applies(cfg))
    y = {s: t.to(device, non_blocking=True) for s, t in data.y.items()}
    if run.features:
        repeats = {"train": train_repeat, "val": eval_repeat, "test": eval_repeat}
        x, hits = feature_cache.for_splits(model, data.x, repeats, cfg, weights_source, run)
        net = models.find_head(model)[1]  # trains in place: `model` ends with the trained head
        cache_use = {0: "built", len(x): "hit"}.get(hits, "partial")
    elif device.type == "cuda":  # the whole uint8 dataset fits on any GPU (Kermany at 224 px is 300 MB)
        x = {s: t.pin_memory().to(device, non_blocking=True) for s, t in data.x.items()}
        net, cache_use = model, "off"
    else:
        x, net, cache_use = data.x, model, "off"
    gen = torch.Generator().manual_seed(cfg["train_seed"])

    # The checkpoints a trial is tested at: lowest val loss (the study's choice), highest val
    # accuracy (the tutorial's choice), and the last epoch.
    best = {"loss": {}, "acc": {}}
    history = []
    startup_s = time.perf_counter() - t_start
    for epoch in range(1, cfg["epochs"] + 1):
        t0 = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        with _threads(1 if run.features and device.type == "cpu" else None):
            train_loss, train_acc = train(net, x["train"], y["train"], optimizer, cfg, train_repeat, gen, run)
            val_loss, val_acc, _ = validate(net, x["val"], y["val"], eval_repeat, run)
        if scheduler:
            scheduler.step()
        rec = dict(epoch=epoch, train_loss=train_loss, train_acc=train_acc, val_loss=val_loss,  # EPOCH_KEYS
                   val_acc=val_acc, lr=lr, epoch_s=time.perf_counter() - t0)
        history.append(rec)
        # The first epoch always makes a checkpoint, so a NaN first epoch still leaves one.
        better_loss = not best["loss"] or val_loss < best["loss"]["val_loss"] or not np.isfinite(best["loss"]["val_loss"])
        better_acc = not best["acc"] or val_acc > best["acc"]["val_acc"]
        # One copy of the weights for both checkpoints, and none at the last epoch: the model holds them.
        state = _state_copy(net) if (better_loss or better_acc) and epoch < cfg["epochs"] else None
        if better_loss:
            best["loss"] = {"val_loss": val_loss, "epoch": epoch, "state": state}
        if better_acc:
            best["acc"] = {"val_acc": val_acc, "epoch": epoch, "state": state}
        if epoch == cfg["epochs"]:
            summary = summarize(net, x, y, data, best, history, eval_repeat, run, cfg["score_test"])
            summary.update(wall_s=time.perf_counter() - t_start, startup_s=startup_s, build_s=build_s,
                           feature_cache=cache_use,
                           weights_source=weights_source, device=str(device), threads=torch.get_num_threads(), amp=amp,
                           channels_last=channels_last, **{**data.info(), "classes": ",".join(data.classes)})
            rec = {**rec, SUMMARY: summary}
        yield rec


def train(model, x, y, optimizer, cfg, repeat, gen, run):
    """One epoch over x in a random order; returns (mean loss, accuracy)."""
    models.set_mode(model, run.mode, training=True, frozen_bn=run.frozen_bn)
    criterion = nn.CrossEntropyLoss()
    n, bs = len(y), cfg["batch_size"]
    perm = torch.randperm(n, generator=gen).to(x.device)
    total_loss = torch.zeros((), device=x.device)
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    seen = 0
    for i in range(0, n, bs):
        idx = perm[i:i + bs]
        if len(idx) < 2 and seen:
            continue  # BatchNorm cannot train on a batch of one; drop such a remainder
        xb, yb = x[idx], y[idx]
        if cfg["augment"]:
            xb = augment(xb.float(), gen if xb.device.type == "cpu" else None)
        inp = _input(xb, repeat, run)
        with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.amp):
            out = model(inp)
        loss = criterion(out.float(), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.detach() * len(idx)
        correct += metrics.correct_count(out, yb)
        seen += len(idx)
    mean_loss = total_loss.item() / seen
    if not np.isfinite(mean_loss):
        raise FloatingPointError(f"non-finite training loss ({mean_loss}); lower the learning rate")
    return mean_loss, correct.item() / seen


@torch.inference_mode()
def validate(model, x, y, repeat, run):
    """Mean loss, accuracy and the logits (float, on the CPU) over x."""
    models.set_mode(model, run.mode, training=False)
    logits = []
    for xb in x.split(EVAL_BATCH):
        inp = _input(xb, repeat, run)
        with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.amp):
            logits.append(model(inp).float())
    logits = torch.cat(logits)
    loss = nn.functional.cross_entropy(logits, y).item()
    return loss, metrics.correct_count(logits, y).item() / len(y), logits.cpu()


def _input(xb, repeat, run):
    """A batch as the network takes it: cached features as they are, images expanded and normalised."""
    return xb if run.features else to_input(xb, repeat).contiguous(memory_format=run.fmt)


CHECKPOINTS = {"best": "best_loss", "bestacc": "best_acc", "final": "final"}  # result-key tag -> predictions name


def summarize(model, x, y, data, best, history, eval_repeat, run, score_test=True):
    """The trial's results: report-table figures, and (score_test) test metrics and per-image
    predictions at the final, best-val-loss and best-val-accuracy checkpoints."""
    out = dict(
        final_train_loss=history[-1]["train_loss"], final_val_loss=history[-1]["val_loss"],
        final_val_acc=history[-1]["val_acc"], best_train_acc=max(h["train_acc"] for h in history),
        best_val_acc=max(h["val_acc"] for h in history), best_val_loss=best["loss"]["val_loss"],
        best_epoch=best["loss"]["epoch"], best_acc_epoch=best["acc"]["epoch"], epochs=len(history),
    )
    if not score_test:
        return out
    # The three checkpoints are often one epoch (the last, in a short trial): each distinct
    # epoch's weights are scored once. The model holds the final epoch's weights on entry.
    checkpoints = {"final": (len(history), None), "best": (best["loss"]["epoch"], best["loss"]["state"]),
                   "bestacc": (best["acc"]["epoch"], best["acc"]["state"])}
    logits_at, predictions = {}, {}
    for tag, (epoch, state) in checkpoints.items():
        if epoch not in logits_at:
            if state is not None:
                model.load_state_dict(state)
            logits_at[epoch] = validate(model, x["test"], y["test"], eval_repeat, run)[2]
        m = metrics.test_metrics(logits_at[epoch], data.y["test"], data.num_classes)
        out.update({f"test_{tag}_{k}": v for k, v in m.items()})
        predictions[CHECKPOINTS[tag]] = metrics.predictions(logits_at[epoch], data.num_classes)
    # One string: Ray's loggers keep it as it is, where lists would be split or dropped.
    out["predictions"] = json.dumps(predictions, separators=(",", ":"))
    return out


def resolve(config):
    """DEFAULTS updated by `config`, checked; a mistake is a UserError before any training."""
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise UserError(f"unknown trial settings {unknown}; known: {sorted(DEFAULTS)}")
    cfg = {**DEFAULTS, **config}
    if cfg["device"] == "auto":
        cfg["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    if cfg["device"].startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {cfg['device']} asked for, but torch sees no CUDA device")
    for k, allowed in CHOICES.items():
        if k != "device" and cfg[k] not in allowed and not (k in ("amp", "channels_last") and isinstance(cfg[k], bool)):
            raise UserError(f"{k} {cfg[k]!r} is not one of {', '.join(allowed)}")
    for k in ("epochs", "batch_size", "step_size"):
        if int(cfg[k]) < 1:
            raise UserError(f"{k} must be at least 1, not {cfg[k]}")
    if not cfg["lr"] > 0:
        raise UserError(f"lr must be positive, not {cfg['lr']}")
    parse_repeat(cfg["train_repeat"]), parse_repeat(cfg["eval_repeat"])
    models.check(cfg["arch"], cfg["weights"], cfg["out_features"], mode=cfg["mode"], policy=cfg["weights_policy"])
    return cfg


def make_optimizer(cfg, params):
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
    opt = torch.optim.Adam if cfg["optimizer"] == "adam" else torch.optim.AdamW
    return opt(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])


def make_scheduler(cfg, optimizer):
    if cfg["schedule"] == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg["step_size"], gamma=cfg["gamma"])
    if cfg["schedule"] == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg["epochs"])
    return None


def native_bf16(device):
    """bf16 pays only with hardware support: on an AVX2-only CPU, autocast to bf16 made
    resnet18 training 15-30x SLOWER (emulated), while AVX512-BF16/AMX CPUs and CUDA gain."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AMX"):
        return False  # kernels held to AVX2 (ATEN_CPU_CAPABILITY=avx2) emulate bf16 too
    # Private, for want of a public way: torch has no public query of the CPU's bf16 instructions.
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def _switch(value, auto):
    return auto if value == "auto" else value in ("on", True)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def _threads(n):
    """torch's threads set to n (None: unchanged) for a while. A head trained on cached features
    is too small to split: on a busy 2-core machine, two threads made its steps 30x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _state_copy(model):
    return copy.deepcopy(model.state_dict())
