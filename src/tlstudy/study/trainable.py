"""The Ray Tune trainable: one trial, tlstudy.training.loop.fit, reported every epoch with a checkpoint.

Each epoch but the last reports a Ray Tune checkpoint holding the trial's state after it
(tlstudy.training.checkpoint: weights, optimizer, schedule, every random generator, the best
checkpoints so far, the history); the last one holds the trial's model file instead, its
best-val-loss weights (tlstudy.training.modelfile), which the driver keeps or drops
(tlstudy.study.keep). A worker that dies is retried by Tune (FailureConfig, --trial-retries): the
new worker restores from `tune.get_checkpoint()` and continues after the last finished epoch.
An exception in the trial (a non-finite loss, a missing weights file) is its result, not a crash:
it is reported as the trial's last result and the trial ends FAIL at once, since a retry would
fail the same way.
"""

from __future__ import annotations

import tempfile
import traceback
from pathlib import Path

import ray
import torch
from ray import tune

from tlstudy import names
from tlstudy.data.splits import Splits
from tlstudy.settings import TrialConfig
from tlstudy.study import placement
from tlstudy.training import checkpoint, modelfile
from tlstudy.training import device as devices
from tlstudy.training.loop import fit


def trainable(config: dict, data: Splits) -> None:
    """The Ray Tune function trainable: `fit` on its config, on the device Ray granted it
    (tlstudy.study.placement), from its last checkpoint when Tune restores it."""
    node_id = ray.get_runtime_context().get_node_id()
    trial_config = TrialConfig.of({**config, "device": placement.granted_device(config.get("device", "auto"))})
    device, share = torch.device(trial_config.device), placement.granted_share()
    total = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else 1
    resume = None
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as folder:
            resume = checkpoint.load(folder)
    with devices.memory_cap(device, placement.memory_fraction(share, total)):
        records = fit(trial_config, data, resume)
        try:
            while True:
                try:
                    rec = next(records)
                except StopIteration:
                    return
                except Exception:  # the trial's own error: its result, with the traceback as its reason
                    tune.report({names.METRIC: float("nan"), names.TRIAL_ERROR: traceback.format_exc()[-4000:]})
                    return
                report(rec, trial_config, data, node_id)
        finally:
            records.close()  # a stopped trial's tensors go before its cache is handed back


def report(rec: dict, config: TrialConfig, data: Splits, node_id: str) -> None:
    """One epoch's metrics to Tune, with its checkpoint: the state to resume from, or at the last
    epoch the model file. Tune copies the folder into the trial's storage before report returns."""
    state, weights = rec.pop(names.RESUME_STATE, None), rec.pop(names.KEPT_WEIGHTS, None)
    with tempfile.TemporaryDirectory(prefix="tlstudy-checkpoint-") as folder:
        if state is not None:
            checkpoint.save(state, folder)
        if weights is not None:
            header = modelfile.describe(config, data.info(), rec[names.SUMMARY])
            modelfile.save(Path(folder) / names.CHECKPOINT_MODEL_FILE, weights, header)
        tune.report({**rec, names.NODE_ID: node_id}, checkpoint=tune.Checkpoint.from_directory(folder))
