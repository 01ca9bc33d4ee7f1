"""The study: Ray Tune runs the trials, Optuna samples and prunes them, the storage keeps them.

Orchestration lives here and only here, in `run_study`: load the data once in the driver (trials get
them through Ray's object store), open the Optuna study (tlstudy.study.storage: refused when run with
other data or settings), fail what a dead driver left RUNNING, then run what the design still needs
(tlstudy.study.design) with a Tuner whose searcher and scheduler are tlstudy.study.search's; each
trial is tlstudy.training.loop.fit in tlstudy.study.trainable, checkpointed every epoch: a trial whose
worker died continues from its last epoch (--trial-retries), and a finished trial's checkpoints are
deleted, its model kept per --keep-models (tlstudy.study.keep). Failed trials' cells run again up to
--max-retries times.
Rerunning the same command continues the study. The exports and report follow (tlstudy.analysis).
"""

# ruff: noqa: E402 (Ray reads the two variables below when it is imported)
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Ctrl-C must reach the study as KeyboardInterrupt (then: exit 130 and our own resume line),
# not Tune's handler, which ends fit() quietly and suggests Tuner.restore.
os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
# Tune's legacy console reporter: at verbose=0 it prints nothing, where the new one still
# prints its configuration box and log paths; --verbose gives its tables back.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# CheckpointConfig(num_to_keep=1) makes Tune snapshot its experiment state at every trial checkpoint
# (one per epoch), and warn each time two come within 5 s: a local snapshot is cheap, the warning noise.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

import optuna
import ray
import torch
from optuna.trial import TrialState
from ray import tune

from tlstudy import names
from tlstudy.data import splits as data_splits
from tlstudy.settings import StudySettings
from tlstudy.spaces import Space
from tlstudy.study import artifacts, design, keep, placement, storage
from tlstudy.study.console import EpochLines, Progress, Recoveries, say
from tlstudy.study.search import OptunaPruningScheduler, OptunaPruningSearch
from tlstudy.study.trainable import trainable
from tlstudy.training import models

# The speed measurement of spaces whose cells differ in architecture (measure_speed).
THROUGHPUT_STEPS, THROUGHPUT_RUNS = 5, 5


Judge = Callable[[optuna.Study, design.Seeds], "design.Seeds | None"]


@dataclass
class Outcome:
    """How a run ended: its exit status (1: a cell lacks replicates, but 0 with --allow-failures; 130: Ctrl-C)."""

    code: int
    study: optuna.Study
    incomplete: list[str]


def run_study(settings: StudySettings, space: Space, judge: Judge | None = None) -> Outcome:
    """Run (or continue) the study of `space` with `settings`. With `judge` (--seeds auto), after each
    round: judge(study, seeds per cell) gives the next round's seeds per cell, or None when done."""
    results = Path(settings.results)
    store = storage.open_storage(settings.storage, heartbeat=settings.heartbeat)
    # The data before the study: a bad data set must not leave a half-made study behind.
    splits = data_splits.load(settings.data)
    summary = space.summary()
    comparability = settings.comparability(summary)
    sampler = design.PerCellSampler(settings.data.seed)
    study = design.open_study(settings.study_name, store, settings.storage, comparability, sampler, settings.new_study)
    storage.enable_wal(settings.storage)
    info = splits.info()
    attrs = {
        names.SPACE: space.name,
        names.SPACE_SUMMARY: summary,
        names.DESIGN: comparability,
        names.FINGERPRINT: storage.fingerprint(comparability),
        names.PROFILE: settings.profile,
        names.DATA: {k: v for k, v in info.items() if k != "classes"},
        names.BASE_CONFIG: settings.shared,
        names.DATA_ARGS: settings.data.as_flags(),
        names.COMMAND: settings.command,
        names.BUDGET: {
            "budget": settings.budget,
            "seeds": settings.seeds,
            "max_seeds": settings.max_seeds,
            "pruner": settings.pruner,
            "keep_models": settings.keep_models,
        },
    }
    for k, v in attrs.items():
        study.set_user_attr(k, v)
    splits.write_manifest(results / settings.study_name / "splits.csv")
    print(f"space {space.name}: {space.description}")
    print(
        f"data: {info['data_source']}  train/val/test {info['n_train']}/{info['n_val']}/{info['n_test']} "
        f"at {info['image_size']} px; {splits.group_note}" + (f"\nnote: {splits.val_note}" if splits.val_note else "")
    )
    if splits.skipped:
        print(f"note: skipped {len(splits.skipped)} unreadable images (--skip-bad-images), e.g. {splits.skipped[0]}")
    say_weights(space, settings.shared)
    url = storage.display_url(settings.storage)
    print(
        f"study {study.study_name!r} in {url}; watch it: optuna-dashboard {url} --artifact-dir {results / 'artifacts'}"
    )

    abandoned = storage.resolve_abandoned(study, store)
    if abandoned:
        print(f"resume: {abandoned} trials a stopped driver left RUNNING were marked FAIL; their cells run again")
    if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):  # no other driver runs trials now
        artifacts.drop_checkpoints(results.resolve() / "ray" / space.name)  # a killed driver's trials' states
    first = len(study.trials)
    targets: design.Seeds = design.seed_targets(study, space.cells, settings.seeds)
    while True:
        if run_rounds(settings, space, study, store, splits, targets, first) == 130:
            return Outcome(130, study, [])
        more = judge(study, targets) if judge else None
        if more is None:
            break
        targets = more
    print_failures(study, first)
    measure_speed(study, space, lambda: placed(settings, space, splits))
    incomplete = design.incomplete_cells(study.get_trials(deepcopy=False), space.cells, targets)
    return Outcome(1 if incomplete and not settings.allow_failures else 0, study, incomplete)


def run_rounds(settings: StudySettings, space: Space, study: optuna.Study, store: Any, splits: Any, targets: Any,
               first: int) -> int:  # fmt: skip
    """Run what the design still needs for `targets` (replicates per cell), with retries; 130 on Ctrl-C."""
    for attempt in range(settings.max_retries + 1):
        n_trials = design.missing(study.get_trials(deepcopy=False), space.cells, settings.budget, targets)
        if not n_trials:
            break
        if attempt == 0:
            most = max(design.target(targets, c.label()) for c in space.cells)
            plan = f"{len(space.cells)} cells x ({settings.budget} search + up to {most} replicates)"
            print(f"{plan}; {len(study.trials)} trials stored ({first} before this run), running {n_trials}")
        else:
            print(f"retry {attempt} of {settings.max_retries}: running the {n_trials} trials still missing")
        try:
            settings = placed(settings, space, splits)
            run_trials(settings, space, study, store, splits, n_trials, targets)
        except KeyboardInterrupt:
            say(
                f"\ninterrupted: finished trials are stored. Resume with the same command:\n  {settings.command}",
                file=sys.stderr,
            )
            return 130
    return 0


def run_trials(
    settings: StudySettings,
    space: Space,
    study: optuna.Study,
    store: Any,
    splits: data_splits.Splits,
    n_trials: int,
    targets: design.Seeds,
) -> None:
    """Run up to n_trials trials of the study's design under Ray Tune (settings.gpus_per_trial resolved)."""
    artifacts_dir = (Path(settings.results) / "artifacts").resolve()
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    searcher = OptunaPruningSearch(
        space=None,
        metric=names.METRIC,
        mode="min",
        storage=store,
        url=settings.storage,
        study_name=study.study_name,
        sampler=study.sampler,
        pruner=design.make_pruner(settings.pruner, settings.shared["epochs"]),
        artifact_dir=artifacts_dir,
        plan=(space.cells, settings.budget, targets, settings.looks),
        test_images=(splits.ids["test"], splits.y["test"].tolist()),
        progress=Progress(n_trials, study.get_trials(deepcopy=False)),
        keeper=keep.Keeper(study, artifacts_dir, settings.keep_models),
    )
    resources = {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial or 0.0}
    # With a searcher, Tune keeps one trial pending at a time unless concurrency is bounded:
    # the second slot's worker would start only once the first trial runs (12 s later here).
    max_concurrent = settings.max_concurrent or placement.slots(ray.cluster_resources(), resources)
    experiment = (
        Path(settings.results).resolve() / "ray" / space.name / f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, data=splits), resources),
        param_space={**settings.shared, **space.param_space},
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=OptunaPruningScheduler(searcher),
            num_samples=n_trials,
            max_concurrent_trials=max_concurrent,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=experiment.name,
            storage_path=str(experiment.parent),
            callbacks=[Recoveries(searcher, settings.trial_retries), *([EpochLines()] if settings.verbose else [])],
            verbose=1 if settings.verbose else 0,
            # A trial whose worker died continues from its last epoch's checkpoint, up to N times;
            # an exception in a trial is its result, not retried (tlstudy.study.trainable).
            failure_config=tune.FailureConfig(max_failures=settings.trial_retries),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )
    try:
        tuner.fit()
    finally:
        searcher.fail_unfinished("interrupted before its last epoch")
        artifacts.drop_checkpoints(experiment)  # what an interrupted trial left


def placed(settings: StudySettings, space: Space, splits: data_splits.Splits) -> StudySettings:
    """The settings on the study's Ray, started or joined, with their GPUs per trial (tlstudy.study.placement)."""
    placement.init_ray(settings.address, settings.num_cpus, settings.verbose)
    return placement.with_gpus(settings, space, sum(len(t) for t in splits.x.values()), say)


def measure_speed(study: optuna.Study, space: Space, place: Any) -> None:
    """Time each architecture of a space whose cells differ in it, once per study, on the trials'
    kind of device and threads (a GPU of its own where they had GPUs; place() gives the placed
    settings): interleaved runs, each in its own process (tlstudy.training.throughput). Claim 1
    compares training speed on this, not on trials' epoch times."""
    archs = sorted({a for (a,) in space.choices("arch")})
    if len(archs) < 2 or space.fixed.get("mode") == "frozen" or study.user_attrs.get(names.THROUGHPUT):
        return
    from tlstudy.training import throughput

    settings = place()
    size, gpu = settings.data.image_size, bool(settings.gpus_per_trial)
    threads = max(1, int(settings.cpus_per_trial))
    say(
        f"timing {' and '.join(archs)}: {THROUGHPUT_RUNS} interleaved rounds of {THROUGHPUT_STEPS} training steps, "
        f"each run in its own process, batch 16, {size} px, "
        + ("on a GPU of its own" if gpu else f"{threads} thread(s)")
    )
    timing = dict(rounds=THROUGHPUT_RUNS, steps=THROUGHPUT_STEPS, threads=threads)
    if gpu:  # a task of its own with a whole GPU (the driver may have none); its runs inherit that GPU
        one = min(1.0, placement.gpus())
        task = ray.remote(num_gpus=one, num_cpus=settings.cpus_per_trial, max_calls=1)(throughput.interleaved)
        rows = ray.get(task.remote(archs, size, device="cuda", **timing))
    else:
        rows = throughput.interleaved(archs, size, device="cpu", **timing)
    study.set_user_attr(names.THROUGHPUT, rows)


def say_weights(space: Space, shared: dict) -> None:
    """One line up front when pretrained weights are missing here (each trial would warn on its own)."""
    pairs = {(shared.get("arch", a), shared.get("weights", w)) for a, w in space.choices("arch", "weights")}
    missing = sorted(
        f"{a} {w}" for a, w in pairs if w not in (None, "none") and not os.path.exists(models.weights_file(a, w))
    )
    if missing:
        then = "those trials will fail" if shared["weights_policy"] == "strict" else "trained from a RANDOM init"
        print(f"weights: {', '.join(missing)} not in {torch.hub.get_dir()}/checkpoints: {then}")


def print_failures(study: optuna.Study, first: int) -> None:
    """Count the study's failed trials by reason (the fail_reason user attribute)."""
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    if not failed:
        return
    print(f"failed trials: {len(failed)} ({sum(t.number >= first for t in failed)} in this run); by reason:")
    reasons: dict[str, list[int]] = {}
    for t in failed:
        reason = (t.user_attrs.get(names.FAIL_REASON) or "no reason recorded").strip().splitlines()
        reasons.setdefault(reason[-1][:160] if reason else "", []).append(t.number)
    for reason, numbers in sorted(reasons.items(), key=lambda kv: -len(kv[1])):
        print(f"  {len(numbers)} x {reason}  (trials {', '.join(map(str, numbers))})")
