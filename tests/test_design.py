"""The study's design on real Optuna studies (in memory): what each cell still needs, pruning
within a cell only, and TPE fitted to a cell's own trials."""

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from tlstudy.settings import PROTOCOL
from tlstudy.spaces import Cell
from tlstudy.study import design

CELLS = [Cell.of(dict(out_features=2)), Cell.of(dict(out_features=6))]
A, B = (c.label() for c in CELLS)
DISTS = {"out_features": CategoricalDistribution([2, 6]), "lr": FloatDistribution(1e-4, 1e-2, log=True)}


def trial(cell, phase, state, value=None, lr=1e-3, seed=0, protocol=False, steps=()):
    params = {"out_features": int(cell.split("=")[1]), "lr": lr}
    return create_trial(
        state=state,
        value=value if state == TrialState.COMPLETE else None,
        params=params,
        distributions=DISTS,
        intermediate_values=dict(enumerate(steps, 1)),
        user_attrs={"cell": cell, "phase": phase, "train_seed": seed, "protocol": protocol},
    )


def test_search_goes_round_the_cells_protocol_first():
    work = design.next_work([], CELLS, budget=2, seeds=2)
    assert work.cell == A and work.phase == "search" and work.protocol and work.train_seed == 0
    assert work.params == {"out_features": 2, **PROTOCOL}
    done = [trial(A, "search", TrialState.COMPLETE, 0.5, protocol=True)]
    work = design.next_work(done, CELLS, budget=2, seeds=2)
    assert work.cell == B and work.protocol  # every cell's protocol trial before any second trial
    done.append(trial(B, "search", TrialState.COMPLETE, 0.4, protocol=True))
    work = design.next_work(done, CELLS, budget=2, seeds=2)
    assert work.cell == A and not work.protocol and work.params == {"out_features": 2}  # TPE fills in the rest


def test_replicates_repeat_the_best_search_config_with_new_seeds_after_the_search():
    trials = [
        trial(A, "search", TrialState.COMPLETE, 0.5, lr=1e-3, protocol=True),
        trial(A, "search", TrialState.COMPLETE, 0.2, lr=3e-3),
        trial(B, "search", TrialState.COMPLETE, 0.4, protocol=True),
        trial(B, "search", TrialState.RUNNING),
    ]
    work = design.next_work(trials, CELLS, budget=2, seeds=2)
    assert (work.cell, work.phase, work.train_seed) == (A, "replicate", 1)
    assert work.params == {"out_features": 2, "lr": 3e-3}  # the lower val loss, not the protocol
    trials.append(trial(A, "replicate", TrialState.RUNNING, seed=1))
    trials.append(trial(A, "replicate", TrialState.COMPLETE, 0.3, lr=3e-3, seed=2))
    # A has its seeds; B's replicates wait for its running search trial.
    assert design.next_work(trials, CELLS, budget=2, seeds=2) == design.WAIT
    assert design.missing(trials, CELLS, 2, 2) == 2  # B's two replicates; running trials count as under way
    trials[3] = trial(B, "search", TrialState.PRUNED, steps=(0.9,))
    work = design.next_work(trials, CELLS, budget=2, seeds=2)
    assert (work.cell, work.phase, work.train_seed, work.params["lr"]) == (B, "replicate", 1, 1e-3)


def test_a_failed_trial_runs_again_and_an_unfinished_cell_is_named():
    trials = [trial(A, "search", TrialState.FAIL, protocol=True)]
    work = design.next_work(trials, CELLS, budget=1, seeds=1)
    assert work.cell == A and work.protocol  # the failed protocol trial is not counted
    # ... except by the run that started it: retries are the next run's.
    work = design.next_work(trials, CELLS, budget=1, seeds=1, held={trials[0].number})
    assert work.cell == B and work.protocol
    trials = [
        trial(A, "search", TrialState.COMPLETE, 0.1, protocol=True),
        trial(B, "search", TrialState.FAIL),
        trial(A, "replicate", TrialState.COMPLETE, 0.1, seed=1),
        trial(A, "replicate", TrialState.FAIL, seed=2),
    ]
    assert design.incomplete_cells(trials, CELLS, seeds=2) == [A, B]
    everything = trials + [
        trial(A, "replicate", TrialState.COMPLETE, 0.1, seed=2),
        trial(B, "search", TrialState.COMPLETE, 0.3, protocol=True),
        trial(B, "replicate", TrialState.COMPLETE, 0.3, seed=1),
        trial(B, "replicate", TrialState.COMPLETE, 0.3, seed=2),
    ]
    assert design.next_work(everything, CELLS, budget=1, seeds=2) == design.DONE
    assert design.incomplete_cells(everything, CELLS, seeds=2) == []


def study_with(trials, pruner):
    study = optuna.create_study(pruner=design.PerCellPruner(pruner))
    for t in trials:
        study.add_trial(t)
    return study


def running(study, cell, phase="search", protocol=False, losses=(0.6, 0.6, 0.6)):
    """A RUNNING trial of `cell` that has reported `losses`, as the bridge sees it."""
    study.enqueue_trial(
        {"out_features": int(cell.split("=")[1]), "lr": 1e-3},
        user_attrs={"cell": cell, "phase": phase, "protocol": protocol},
    )
    t = study.ask(DISTS)
    for step, loss in enumerate(losses, 1):
        t.report(loss, step)
    return t


def test_a_trial_is_pruned_against_its_own_cell_only():
    # Cell A's losses sit near 0.1 (two outputs), cell B's near 1.0 (six outputs, other scale).
    history = [trial(A, "search", TrialState.COMPLETE, 0.1, steps=(0.2, 0.15, 0.1)) for _ in range(3)]
    history += [trial(B, "search", TrialState.COMPLETE, 1.0, steps=(1.2, 1.1, 1.0)) for _ in range(3)]
    study = study_with(history, optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    # 0.6 is far worse than every other trial of A, far better than every other trial of B.
    assert running(study, A).should_prune()
    assert not running(study, B).should_prune()
    # A global median pruner would have pruned B's trial too: the cells' scales differ.
    plain = optuna.create_study(pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    for t in history[:3]:
        plain.add_trial(t)
    assert running(plain, B).should_prune()


def test_the_protocol_trial_and_replicates_are_never_pruned():
    history = [trial(A, "search", TrialState.COMPLETE, 0.1, steps=(0.1, 0.1, 0.1)) for _ in range(3)]
    study = study_with(history, optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    assert running(study, A, losses=(5.0, 5.0, 5.0)).should_prune()
    assert not running(study, A, protocol=True, losses=(5.0, 5.0, 5.0)).should_prune()
    assert not running(study, A, phase="replicate", losses=(5.0, 5.0, 5.0)).should_prune()


@pytest.mark.parametrize(
    "values, k, expected",
    [
        ([0.3, 0.1, 0.2], 1, 0.2),  # one draw: the mean
        ([0.3, 0.1, 0.2], 50, 0.1),  # many draws: the minimum
        ([0.5], 3, 0.5),
    ],
)
def test_expected_best_of_k_search_trials(values, k, expected):
    from tlstudy.analysis.tables import expected_best

    assert expected_best(values, [k])[k] == pytest.approx(expected, abs=1e-6)
    curve = expected_best([0.3, 0.1, 0.2, 0.25])
    assert list(curve.index) == [1, 2, 3, 4] and curve.is_monotonic_decreasing
    # Two draws of three values with replacement: P(min = 0.1) = 5/9, P(0.2) = 3/9, P(0.3) = 1/9.
    assert expected_best([0.3, 0.1, 0.2], [2])[2] == pytest.approx((5 * 0.1 + 3 * 0.2 + 1 * 0.3) / 9)
