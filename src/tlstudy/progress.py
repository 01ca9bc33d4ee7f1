"""What a running study prints: one line per finished trial, and with --verbose one per epoch.

`Progress` is called by the searcher (tlstudy.tune_optuna) for each trial it tells Optuna
about; `EpochLines` is a Ray Tune callback.
"""
import time

from optuna.trial import TrialState
from ray import tune

from tlstudy import design


class Progress:
    """One line per finished trial, in Optuna's numbering, with a running count and an ETA."""

    def __init__(self, total, trials=()):
        self.total, self.t0, self.counts, self.best = total, time.time(), {}, {}
        for t in trials:  # the best so far includes the stored trials of a resumed study
            cell = t.user_attrs.get("cell")
            if t.state == TrialState.COMPLETE and (cell not in self.best or t.value < self.best[cell][0]):
                self.best[cell] = (t.value, t.number)

    def __call__(self, number, attrs, state, value, epochs, test_acc=None, reason=None):
        self.counts[state] = self.counts.get(state, 0) + 1
        done = sum(self.counts.values())
        elapsed = time.time() - self.t0
        eta = elapsed / done * (self.total - done) if done < self.total else 0
        cell, phase = attrs.get("cell", "?"), attrs.get("phase", "?")
        what = f"{phase} seed {attrs.get('train_seed')}" if phase == design.REPLICATE else phase
        if state == "COMPLETE":
            best = self.best.get(cell)
            if best is None or value < best[0]:
                self.best[cell] = best = (value, number)
            test = "" if test_acc is None else f", test acc {test_acc:.1%}"  # search trials score no test
            result = f"val_loss {value:.4f}, {epochs} epochs{test}; best in cell {best[0]:.4f} (#{best[1]})"
        elif state == "PRUNED":
            result = f"pruned after {epochs} epochs"
        else:
            result = f"after {epochs} epochs: {(reason or 'no reason').strip().splitlines()[-1][:100]}"
        print(f"[{done}/{self.total} {clock(elapsed)} ETA {clock(eta)}] #{number} {cell} | {what} | "
              f"{state} {result}", flush=True)


def clock(seconds):
    """Seconds as minutes:seconds, 75 -> '1:15'."""
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


class EpochLines(tune.Callback):
    """--verbose: one line per trial per epoch."""

    def on_trial_result(self, iteration, trials, trial, result):
        cfg = trial.config
        print(f"[{trial.trial_id}] {cfg.get('arch')} epoch {result['epoch']}/{cfg.get('epochs')}: "
              f"train_loss {result['train_loss']:.4f} val_loss {result['val_loss']:.4f} "
              f"val_acc {result['val_acc']:.2%} ({result['epoch_s']:.1f} s)", flush=True)
