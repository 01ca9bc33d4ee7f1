"""One trial of the study, without Ray: `tlstudy trial` (and study/trial.py).

Loads the data as the study does (the same profile, data seed and subset), trains with
tlstudy.training.loop.fit, prints the per-epoch table and the final metrics, and optionally
writes them as JSON. The arguments are parsed, checked and resolved in tlstudy.cli.
"""

import json
import warnings
from dataclasses import asdict

from tlstudy.data import splits as data_splits
from tlstudy.errors import UserError
from tlstudy.names import EPOCH_KEYS, SUMMARY
from tlstudy.settings import DataSettings, TrialConfig
from tlstudy.training.loop import check, fit


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2%}"


def run(config: TrialConfig, data: DataSettings, json_path: str | None = None) -> int:
    """Train `config` on `data`; print every epoch and the results; return 0."""
    check(config)  # a configuration mistake should not wait for the data to load
    splits = data_splits.load(data)
    info = splits.info()
    print(
        f"data: {info['data_source']}  train/val/test {info['n_train']}/{info['n_val']}/{info['n_test']}"
        f"  {info['image_size']} px  classes {info['classes']}"
    )
    if splits.val_note:
        print(f"note: {splits.val_note}")
    if splits.skipped:
        print(f"note: skipped {len(splits.skipped)} unreadable images, e.g. {splits.skipped[0]}")

    print(f"{'epoch':>5} {'train_loss':>10} {'train_acc':>9} {'val_loss':>9} {'val_acc':>8} {'lr':>9} {'sec':>6}")
    epochs = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        for rec in fit(config, splits):
            epochs.append({k: rec[k] for k in EPOCH_KEYS})
            print(
                f"{rec['epoch']:>5} {rec['train_loss']:>10.4f} {rec['train_acc']:>9.2%} {rec['val_loss']:>9.4f}"
                f" {rec['val_acc']:>8.2%} {rec['lr']:>9.2e} {rec['epoch_s']:>6.1f}",
                flush=True,
            )
    summary = rec[SUMMARY]
    print(f"best val loss: Epoch {summary['best_epoch']}/{summary['epochs']} ({summary['best_val_loss']:.4f})")
    for tag in ("best", "final"):
        print(
            f"test ({tag} checkpoint): acc {summary[f'test_{tag}_acc']:.2%}"
            f" ({summary[f'test_{tag}_correct']}/{summary[f'test_{tag}_total']})"
            f"  balanced {summary[f'test_{tag}_balanced_acc']:.2%}  AUC {summary[f'test_{tag}_auc']:.3f}"
            f"  sensitivity {_pct(summary[f'test_{tag}_sensitivity'])}"
            f"  specificity {_pct(summary[f'test_{tag}_specificity'])}"
            f"  confusion {summary[f'test_{tag}_confusion_matrix']}"
        )
    print(
        f"weights: {summary['weights_source']}  device: {summary['device']}  amp: {summary['amp']}"
        f"  time: {summary['wall_s']:.1f} s (start-up {summary['startup_s']:.1f} s)"
    )
    if json_path:
        try:
            with open(json_path, "w") as f:
                json.dump(
                    {"config": asdict(config), "data": data.as_flags(), "epochs": epochs, "summary": summary},
                    f,
                    indent=1,
                )
        except OSError as e:
            raise UserError(f"cannot write {json_path}: {e.strerror}") from None
        print(f"wrote {json_path}")
    return 0
