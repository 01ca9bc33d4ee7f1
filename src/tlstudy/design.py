"""The study's design: every cell gets the same search budget, then replicates of its best.

A variant cell (one row of the report's tables) runs in two phases:
- search: `budget` trials. The first is the report's own protocol (tlstudy.config.PROTOCOL);
  the others are sampled by TPE from the cell's own history, so no cell's search learns
  from another's. A search trial may be pruned, but only against earlier trials of its
  own cell (val losses of other cells are on other scales), and never the protocol trial.
- replicates: the cell's best COMPLETE search trial (lowest val loss) runs again with
  `seeds` training seeds (1..seeds; the search ran with seed 0). Replicates are never
  pruned; the tables, test figures and claims come from them.

Each trial carries `cell`, `phase`, `train_seed` and `protocol` as Optuna user attributes
(set when it is enqueued), so the dashboard can filter by them and a rerun can count what
each cell still lacks: `next_work` reads the stored trials every time, which is what makes
a resumed or shared study pick up in the right phase.
"""
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from tlstudy.config import PROTOCOL

SEARCH, REPLICATE = "search", "replicate"
LIVE = (TrialState.RUNNING, TrialState.WAITING)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
WAIT, DONE = "wait", "done"


def cell_label(cell):
    """A cell as text, for user attributes and tables: "out_features=2; train_repeat=1,3,1,1"."""
    return "; ".join(f"{k}={v}" for k, v in cell.items()) or "all"


@dataclass(frozen=True)
class Work:
    """One trial to run: its cell, phase and training seed, and the parameters it is enqueued with."""
    cell: str
    phase: str
    train_seed: int
    params: dict
    protocol: bool = False

    @property
    def user_attrs(self):
        return {"cell": self.cell, "phase": self.phase, "train_seed": self.train_seed, "protocol": self.protocol}


def _of(trials, cell, phase, states, held=()):
    return [t for t in trials if t.user_attrs.get("cell") == cell and t.user_attrs.get("phase") == phase
            and (t.state in states or t.number in held)]


def best_search_trial(trials, cell):
    """The cell's COMPLETE search trial with the lowest val loss (the trial's value), or None."""
    done = _of(trials, cell, SEARCH, (TrialState.COMPLETE,))
    return min(done, key=lambda t: t.value) if done else None


def next_work(trials, cells, budget, seeds, protocol_params=None, held=()):
    """The next trial the study needs, WAIT (a cell's replicates wait for its search to
    finish), or DONE. Search trials go round the cells (every cell's protocol trial first),
    then replicates as each cell's search ends. A FAILed trial does not count, so it runs
    again, but not within the same run: trials numbered in `held` (those this driver already
    started) count whatever their state; retries are the next run's (--max-retries)."""
    protocol_params = PROTOCOL if protocol_params is None else protocol_params
    labels = {cell_label(c): c for c in cells}
    for i in range(budget):
        for label, cell in labels.items():
            have = _of(trials, label, SEARCH, FINISHED + LIVE, held)
            if len(have) <= i:
                first = not any(t.user_attrs.get("protocol") for t in have)
                params = {**protocol_params, **cell} if first else dict(cell)  # a cell's own values win
                return Work(label, SEARCH, 0, params, protocol=first)
    waiting = False
    for label, cell in labels.items():
        if _of(trials, label, SEARCH, LIVE):
            waiting = True
            continue
        best = best_search_trial(trials, label)
        if best is None:
            continue  # every search trial failed or was pruned: nothing to replicate (reported at the end)
        taken = {t.user_attrs.get("train_seed")
                 for t in _of(trials, label, REPLICATE, (TrialState.COMPLETE,) + LIVE, held)}
        for seed in range(1, seeds + 1):
            if seed not in taken:
                return Work(label, REPLICATE, seed, dict(best.params))
    return WAIT if waiting else DONE


def missing(trials, cells, budget, seeds):
    """How many trials the cells still need: search trials, and replicates (counted in full
    for a cell whose search is not over yet)."""
    n = 0
    for cell in map(cell_label, cells):
        n += max(0, budget - len(_of(trials, cell, SEARCH, FINISHED + LIVE)))
        n += max(0, seeds - len(_of(trials, cell, REPLICATE, (TrialState.COMPLETE,) + LIVE)))
    return n


def incomplete_cells(trials, cells, seeds):
    """The cells that ended with fewer than `seeds` COMPLETE replicates, and nothing still running
    (another driver sharing the study may be finishing a cell)."""
    return [c for c in map(cell_label, cells) if len(_of(trials, c, REPLICATE, (TrialState.COMPLETE,))) < seeds
            and not any(t.user_attrs.get("cell") == c and t.state == TrialState.RUNNING for t in trials)]


class CellView:
    """A study seen from one cell's search: its trials are the cell's search trials only.
    What TPE and the pruners read of a study (`get_trials`, and TPE's cached `_get_trials`,
    pinned in tests/test_design.py) is filtered; everything else is the study's."""

    def __init__(self, study, cell):
        self._study, self._cell = study, cell

    def __getattr__(self, name):
        return getattr(self._study, name)

    def _mine(self, trials):
        return [t for t in trials if t.user_attrs.get("cell") == self._cell and t.user_attrs.get("phase") == SEARCH]

    def get_trials(self, deepcopy=True, states=None):
        return self._mine(self._study.get_trials(deepcopy=deepcopy, states=states))

    # Optuna internal, for want of a public way: TPE reads a study's trials through its cached
    # _get_trials, not get_trials, so the view must filter both (pinned in tests/test_design.py).
    def _get_trials(self, deepcopy=True, states=None, use_cache=False):
        return self._mine(self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache))

    @property
    def trials(self):
        return self.get_trials()


class PerCellSampler(optuna.samplers.BaseSampler):
    """A TPE sampler per cell, each fitted to its own cell's search trials only."""

    def __init__(self, seed=0):
        self._seed, self._samplers = seed, {}

    def _pick(self, study, trial):
        cell = trial.user_attrs.get("cell", "")
        if cell not in self._samplers:
            self._samplers[cell] = optuna.samplers.TPESampler(seed=self._seed + len(self._samplers))
        return CellView(study, cell), self._samplers[cell]

    def infer_relative_search_space(self, study, trial):
        view, sampler = self._pick(study, trial)
        return sampler.infer_relative_search_space(view, trial)

    def sample_relative(self, study, trial, search_space):
        view, sampler = self._pick(study, trial)
        return sampler.sample_relative(view, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        view, sampler = self._pick(study, trial)
        return sampler.sample_independent(view, trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        view, sampler = self._pick(study, trial)
        sampler.before_trial(view, trial)

    def after_trial(self, study, trial, state, values):
        view, sampler = self._pick(study, trial)
        sampler.after_trial(view, trial, state, values)


class PerCellPruner(optuna.pruners.BasePruner):
    """`pruner`, asked about a search trial against its own cell's search trials only. The
    protocol trial and replicates are never pruned: every cell keeps a complete baseline and
    its replicates."""

    def __init__(self, pruner):
        self._pruner = pruner

    def prune(self, study, trial):
        attrs = trial.user_attrs
        if attrs.get("phase") != SEARCH or attrs.get("protocol"):
            return False
        return self._pruner.prune(CellView(study, attrs.get("cell", "")), trial)
