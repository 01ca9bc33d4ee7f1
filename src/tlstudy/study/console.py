"""What a running study prints: one line per finished trial (`Progress`), a line per trial and epoch
with --verbose (`EpochLines`), and a line when Tune restarts a trial whose worker died (`Recoveries`)."""

from __future__ import annotations

import functools
import time
from typing import Any

from optuna.trial import FrozenTrial, TrialState
from ray import tune

from tlstudy import names

say = functools.partial(print, flush=True)  # a line now: a study's console is followed live


class Progress:
    """One line per finished trial, in Optuna's numbering, with a running count and an ETA; the
    searcher calls it for each trial it tells Optuna about."""

    def __init__(self, total: int, trials: list[FrozenTrial] = ()):  # type: ignore[assignment]
        self.total, self.t0, self.counts = total, time.time(), dict[str, int]()
        self.best: dict[str, tuple[float, int]] = {}
        for t in trials:  # the best so far includes the stored trials of a resumed study
            cell = str(t.user_attrs.get(names.CELL))
            if t.state == TrialState.COMPLETE and (cell not in self.best or (t.value or 0.0) < self.best[cell][0]):
                self.best[cell] = (t.value or 0.0, t.number)

    def __call__(self, number: int, attrs: dict, state: str, value: Any, epochs: int, **more: Any) -> None:
        test_acc, reason = more.get("test_acc"), more.get("reason")  # a COMPLETE replicate's; a FAIL's
        self.counts[state] = self.counts.get(state, 0) + 1
        done = sum(self.counts.values())
        elapsed = time.time() - self.t0
        eta = elapsed / done * (self.total - done) if done < self.total else 0
        cell, phase = attrs.get(names.CELL, "?"), attrs.get(names.PHASE, "?")
        what = f"{phase} seed {attrs.get(names.TRAIN_SEED)}" if phase == names.REPLICATE else phase
        if state == "COMPLETE":
            best = self.best.get(cell)
            if best is None or value < best[0]:
                self.best[cell] = best = (value, number)
            test = "" if test_acc is None else f", test acc {test_acc:.1%}"  # search trials score no test
            result = f"val_loss {value:.4f}, {epochs} epochs{test}; best in cell {best[0]:.4f} (#{best[1]})"
            result += "; model kept" if more.get("kept") else ""
        elif state == "PRUNED":
            result = f"pruned after {epochs} epochs"
        else:
            result = f"after {epochs} epochs: {(reason or 'no reason').strip().splitlines()[-1][:100]}"
        say(f"[{done}/{self.total} {clock(elapsed)} ETA {clock(eta)}] #{number} {cell} | {what} | {state} {result}")


def clock(seconds: float) -> str:
    """Seconds as minutes:seconds, 75 -> '1:15'."""
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


class EpochLines(tune.Callback):
    """--verbose: one line per trial per epoch."""

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        cfg = trial.config
        if names.TRIAL_ERROR in result:  # the trial's own error: no metrics
            return
        say(
            f"[{trial.trial_id}] {cfg.get('arch')} epoch {result['epoch']}/{cfg.get('epochs')}: "
            f"train_loss {result['train_loss']:.4f} val_loss {result['val_loss']:.4f} "
            f"val_acc {result['val_acc']:.2%} ({result['epoch_s']:.1f} s)"
        )


class Recoveries(tune.Callback):
    """A line when Tune restores a trial whose worker died, from its last checkpoint."""

    def __init__(self, searcher: Any, retries: int) -> None:
        self.searcher, self.retries = searcher, retries

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        ot_trial = self.searcher.optuna_trial(trial.trial_id)
        epochs = self.searcher.epochs.get(trial.trial_id, [])
        last = epochs[-1][names.STEP] if epochs else 0
        say(
            f"#{getattr(ot_trial, 'number', '?')}: its worker died after epoch {last}; Tune restarts it from "
            f"its last checkpoint (retry {trial.run_metadata.num_failures} of {self.retries}, --trial-retries)"
        )
