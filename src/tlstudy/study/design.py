"""The study's design: every cell gets the same search budget, then replicates of its best.

A variant cell (one row of the report's tables) runs in two phases:
- search: `budget` trials. The first is the report's own protocol (tlstudy.settings.PROTOCOL);
  the others are sampled by TPE from the cell's own history, so no cell's search learns
  from another's. A search trial may be pruned, but only against earlier trials of its
  own cell (val losses of other cells are on other scales), and never the protocol trial.
- replicates: the cell's best COMPLETE search trial (lowest val loss) runs again with
  `seeds` training seeds (1..seeds; the search ran with seed 0). Replicates are never
  pruned; the tables, test figures and claims come from them.

Each trial carries `cell`, `phase`, `train_seed` and `protocol` as Optuna user attributes
(set when it is enqueued), so the dashboard can filter by them and a rerun can count what
each cell still lacks: `next_work` reads the stored trials every time, which is what makes
a resumed or shared study pick up in the right phase. The study's sampler and pruner are
per cell (`PerCellSampler`, `make_pruner`); `open_study` opens the study in its storage, and
refuses one run with another design (`check_comparable`: tlstudy.settings' comparability).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tlstudy.errors import UserError
from tlstudy.names import (
    CELL,
    DESIGN,
    FINGERPRINT,
    IS_PROTOCOL,
    METRIC,
    PHASE,
    REPLICATE,
    ROUND,
    ROUNDS,
    SEARCH,
    TRAIN_SEED,
)
from tlstudy.settings import PROTOCOL
from tlstudy.spaces import Cell
from tlstudy.study import storage

LIVE = (TrialState.RUNNING, TrialState.WAITING)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
WAIT, DONE = "wait", "done"


@dataclass(frozen=True)
class Work:
    """One trial to run: its cell, phase and training seed, and the parameters it is enqueued with."""

    cell: str
    phase: str
    train_seed: int
    params: dict
    protocol: bool = False
    round: int = 0  # a replicate's round (1: the first seeds; --seeds auto adds rounds), 0 for search

    @property
    def user_attrs(self) -> dict[str, Any]:
        attrs = {CELL: self.cell, PHASE: self.phase, TRAIN_SEED: self.train_seed, IS_PROTOCOL: self.protocol}
        return {**attrs, ROUND: self.round} if self.round else attrs


Seeds = int | Mapping[str, int]  # replicates per cell: one number for every cell, or each cell's own


def target(seeds: Seeds, cell: str) -> int:
    return seeds if isinstance(seeds, int) else seeds[cell]


def seed_targets(study: optuna.Study, cells: Sequence[Cell], seeds: int) -> dict[str, int]:
    """Replicates per cell: `seeds`, or more where --seeds auto's stored rounds asked for more
    (so a rerun resumes the round it was in)."""
    stored = study.user_attrs.get(ROUNDS, {}).get("targets", {})
    return {c.label(): max(seeds, int(stored.get(c.label(), 0))) for c in cells}


def round_of(seed: int, looks: Sequence[int]) -> int:
    """The round a replicate seed belongs to: 1 for seeds 1..looks[0], 2 up to looks[1], ..."""
    return 1 + sum(seed > k for k in looks)


def _of(trials: Sequence[FrozenTrial], cell: str, phase: str, states: tuple, held: Any = ()) -> list[FrozenTrial]:
    return [
        t
        for t in trials
        if t.user_attrs.get(CELL) == cell
        and t.user_attrs.get(PHASE) == phase
        and (t.state in states or t.number in held)
    ]


def best_search_trial(trials: Sequence[FrozenTrial], cell: str) -> FrozenTrial | None:
    """The cell's COMPLETE search trial with the lowest val loss (the trial's value), or None."""
    done = _of(trials, cell, SEARCH, (TrialState.COMPLETE,))
    return min(done, key=lambda t: t.value or 0.0) if done else None  # a COMPLETE trial has its value


def next_work(
    trials: Sequence[FrozenTrial],
    cells: Sequence[Cell],
    budget: int,
    seeds: Seeds,
    protocol_params: dict | None = None,
    held: Any = (),
    looks: Sequence[int] = (),
) -> Work | str:
    """The next trial the study needs, WAIT (a cell's replicates wait for its search to
    finish), or DONE. Search trials go round the cells (every cell's protocol trial first),
    then replicates as each cell's search ends. A FAILed trial does not count, so it runs
    again, but not within the same run: trials numbered in `held` (those this driver already
    started) count whatever their state; retries are the next run's (--max-retries). `seeds` may
    give each cell its own count (--seeds auto's rounds, whose seed counts are `looks`)."""
    protocol_params = PROTOCOL if protocol_params is None else protocol_params
    labels = {c.label(): c.as_dict() for c in cells}
    for i in range(budget):
        for label, cell in labels.items():
            have = _of(trials, label, SEARCH, FINISHED + LIVE, held)
            if len(have) <= i:
                first = not any(t.user_attrs.get(IS_PROTOCOL) for t in have)
                params = {**protocol_params, **cell} if first else dict(cell)  # a cell's own values win
                return Work(label, SEARCH, 0, params, protocol=first)
    waiting = False
    for label in labels:
        if _of(trials, label, SEARCH, LIVE):
            waiting = True
            continue
        best = best_search_trial(trials, label)
        if best is None:
            continue  # every search trial failed or was pruned: nothing to replicate (reported at the end)
        taken = {
            t.user_attrs.get(TRAIN_SEED) for t in _of(trials, label, REPLICATE, (TrialState.COMPLETE,) + LIVE, held)
        }
        for seed in range(1, target(seeds, label) + 1):
            if seed not in taken:
                return Work(label, REPLICATE, seed, dict(best.params), round=round_of(seed, looks or [seed]))
    return WAIT if waiting else DONE


def missing(trials: Sequence[FrozenTrial], cells: Sequence[Cell], budget: int, seeds: Seeds) -> int:
    """How many trials the cells still need: search trials, and replicates (counted in full
    for a cell whose search is not over yet)."""
    n = 0
    for cell in (c.label() for c in cells):
        n += max(0, budget - len(_of(trials, cell, SEARCH, FINISHED + LIVE)))
        n += max(0, target(seeds, cell) - len(_of(trials, cell, REPLICATE, (TrialState.COMPLETE,) + LIVE)))
    return n


def incomplete_cells(trials: Sequence[FrozenTrial], cells: Sequence[Cell], seeds: Seeds) -> list[str]:
    """The cells that ended with fewer than `seeds` COMPLETE replicates, and nothing still running
    (another driver sharing the study may be finishing a cell)."""
    return [
        c
        for c in (cell.label() for cell in cells)
        if len(_of(trials, c, REPLICATE, (TrialState.COMPLETE,))) < target(seeds, c)
        and not any(t.user_attrs.get(CELL) == c and t.state == TrialState.RUNNING for t in trials)
    ]


class CellView:
    """A study seen from one cell's search: its trials are the cell's search trials only.
    What TPE and the pruners read of a study (`get_trials`, and TPE's cached `_get_trials`,
    pinned in tests/test_design.py) is filtered; everything else is the study's."""

    def __init__(self, study: optuna.Study, cell: str) -> None:
        self._study, self._cell = study, cell

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _mine(self, trials: list[FrozenTrial]) -> list[FrozenTrial]:
        return [t for t in trials if t.user_attrs.get(CELL) == self._cell and t.user_attrs.get(PHASE) == SEARCH]

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[FrozenTrial]:
        return self._mine(self._study.get_trials(deepcopy=deepcopy, states=states))

    # Optuna internal, for want of a public way: TPE reads a study's trials through its cached
    # _get_trials, not get_trials, so the view must filter both (pinned in tests/test_design.py).
    def _get_trials(self, deepcopy: bool = True, states: Any = None, use_cache: bool = False) -> list[FrozenTrial]:
        return self._mine(self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache))

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


class PerCellSampler(optuna.samplers.BaseSampler):
    """A TPE sampler per cell, each fitted to its own cell's search trials only."""

    def __init__(self, seed: int = 0) -> None:
        self._seed, self._samplers = seed, dict[str, optuna.samplers.TPESampler]()

    def _pick(self, study: Any, trial: Any) -> tuple[Any, optuna.samplers.TPESampler]:  # a CellView is a Study
        cell = trial.user_attrs.get(CELL, "")
        if cell not in self._samplers:
            self._samplers[cell] = optuna.samplers.TPESampler(seed=self._seed + len(self._samplers))
        return CellView(study, cell), self._samplers[cell]

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict:
        view, sampler = self._pick(study, trial)
        return sampler.infer_relative_search_space(view, trial)

    def sample_relative(self, study: Any, trial: Any, search_space: dict) -> dict:
        view, sampler = self._pick(study, trial)
        return sampler.sample_relative(view, trial, search_space)

    def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: Any) -> Any:
        view, sampler = self._pick(study, trial)
        return sampler.sample_independent(view, trial, param_name, param_distribution)

    def before_trial(self, study: Any, trial: Any) -> None:
        view, sampler = self._pick(study, trial)
        sampler.before_trial(view, trial)

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        view, sampler = self._pick(study, trial)
        sampler.after_trial(view, trial, state, values)


class PerCellPruner(optuna.pruners.BasePruner):
    """`pruner`, asked about a search trial against its own cell's search trials only. The
    protocol trial and replicates are never pruned: every cell keeps a complete baseline and
    its replicates."""

    def __init__(self, pruner: optuna.pruners.BasePruner) -> None:
        self._pruner = pruner

    def prune(self, study: Any, trial: Any) -> bool:
        attrs = trial.user_attrs
        if attrs.get(PHASE) != SEARCH or attrs.get(IS_PROTOCOL):
            return False
        view: Any = CellView(study, attrs.get(CELL, ""))  # read as the Study it stands for
        return self._pruner.prune(view, trial)


def make_pruner(name: str, epochs: int, percentile: float = 25.0) -> PerCellPruner:
    """The study's pruner (--pruner), asked within a cell only."""
    # No pruning at epoch 1: the first val loss says little after a fresh head. Two finished
    # trials of the cell first: the protocol trial and one more.
    pruner: optuna.pruners.BasePruner
    if name == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=2)
    elif name == "percentile":
        pruner = optuna.pruners.PercentilePruner(percentile, n_startup_trials=1, n_warmup_steps=2)
    elif name == "halving":
        pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=1)
    elif name == "hyperband":
        pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    else:
        pruner = optuna.pruners.NopPruner()
    return PerCellPruner(pruner)


# ---------------------------------------------------------------- the study of this design


def check_comparable(attrs: dict[str, Any] | None, design: dict[str, Any], name: str, url: str) -> None:
    """Refuse, with one line naming what differs, a stored study run with other settings."""
    attrs = attrs or {}
    stored = attrs.get(FINGERPRINT)
    if stored and stored != storage.fingerprint(design):
        diff = storage.differences(attrs.get(DESIGN, {}), design)
        raise UserError(
            f"study {name!r} in {storage.display_url(url)} was run with a different space or settings"
            f"{' (' + '; '.join(diff[:4]) + ')' if diff else ''}; its trials would not be comparable: "
            "pass --study-name NEW to keep both, or --new-study to replace it"
        )


def open_study(name: str, storage: Any, url: str, design: dict[str, Any], sampler: Any, new: bool = False) -> Any:
    """The study, created or reopened (deleted first when `new`); refused, nothing written, when it
    was run with anything else (`design`: tlstudy.settings.StudySettings.comparability)."""
    exists = name in optuna.get_all_study_names(storage)
    if exists and new:
        optuna.delete_study(study_name=name, storage=storage)
    if exists and not new:
        check_comparable(storage.get_study_user_attrs(storage.get_study_id_from_name(name)), design, name, url)
    study = optuna.create_study(
        study_name=name, storage=storage, sampler=sampler, direction="minimize", load_if_exists=True
    )
    if FINGERPRINT not in study.user_attrs:
        with warnings.catch_warnings():  # "experimental" since Optuna 3.2; optuna-dashboard reads it
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([METRIC])
    return study
