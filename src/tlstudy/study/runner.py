"""The study: Ray Tune runs the trials, Optuna samples and prunes them, the storage keeps them.

Orchestration lives here and only here, in `run_study`: load the data once in the driver (trials get
them through Ray's object store), open the Optuna study (tlstudy.study.storage: refused when run with
other data or settings), fail what a dead driver left RUNNING, then run what the design still needs
(tlstudy.study.design) with a Tuner whose searcher and scheduler are tlstudy.study.search's; each
trial is tlstudy.training.loop.fit in `trainable`. Failed trials run again up to --max-retries times.
Rerunning the same command continues the study. The exports and report follow (tlstudy.analysis).
"""

# ruff: noqa: E402 (Ray reads the two variables below when it is imported)
from __future__ import annotations

import functools
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

import optuna
import ray
import torch
from optuna.trial import FrozenTrial, TrialState
from ray import tune

from tlstudy import names
from tlstudy.data import splits as data_splits
from tlstudy.settings import StudySettings, TrialConfig, fingerprint
from tlstudy.spaces import Space
from tlstudy.study import design, placement, storage
from tlstudy.study.search import OptunaPruningScheduler, OptunaPruningSearch
from tlstudy.training import device as devices
from tlstudy.training import models
from tlstudy.training.loop import fit

say = functools.partial(print, flush=True)  # a line now: a study's console is followed live
# The speed measurement of spaces whose cells differ in architecture (measure_speed).
THROUGHPUT_STEPS, THROUGHPUT_RUNS = 5, 5


def trainable(config: dict, data: data_splits.Splits) -> None:
    """The Ray Tune function trainable: tlstudy.training.loop.fit on its config, on the device Ray
    granted it (tlstudy.study.placement), reported every epoch."""
    node_id = ray.get_runtime_context().get_node_id()
    cfg = TrialConfig.of({**config, "device": placement.granted_device(config.get("device", "auto"))})
    device, share = torch.device(cfg.device), placement.granted_share()
    total = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else 1
    with devices.memory_cap(device, placement.memory_fraction(share, total)):
        records = fit(cfg, data)
        try:
            for rec in records:
                tune.report({**rec, names.NODE_ID: node_id})
        finally:
            records.close()  # a stopped trial's tensors go before its cache is handed back


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
        names.FINGERPRINT: fingerprint(comparability),
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
        },  # fmt: skip
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
    artifacts = (Path(settings.results) / "artifacts").resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    searcher = OptunaPruningSearch(
        space=None,
        metric=names.METRIC,
        mode="min",
        storage=store,
        study_name=study.study_name,
        sampler=study.sampler,
        pruner=design.make_pruner(settings.pruner, settings.shared["epochs"]),
        artifact_dir=artifacts,
        plan=(space.cells, settings.budget, targets, settings.looks),
        test_images=(splits.ids["test"], splits.y["test"].tolist()),
        progress=Progress(n_trials, study.get_trials(deepcopy=False)),
    )
    resources = {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial or 0.0}
    # With a searcher, Tune keeps one trial pending at a time unless concurrency is bounded:
    # the second slot's worker would start only once the first trial runs (12 s later here).
    max_concurrent = settings.max_concurrent or placement.slots(ray.cluster_resources(), resources)
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
            name=f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str((Path(settings.results) / "ray" / space.name).resolve()),
            callbacks=[EpochLines()] if settings.verbose else [],
            verbose=1 if settings.verbose else 0,
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    try:
        tuner.fit()
    finally:
        searcher.fail_unfinished("interrupted before its last epoch")


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


# ---------------------------------------------------------------- what a running study prints


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
        say(
            f"[{trial.trial_id}] {cfg.get('arch')} epoch {result['epoch']}/{cfg.get('epochs')}: "
            f"train_loss {result['train_loss']:.4f} val_loss {result['val_loss']:.4f} "
            f"val_acc {result['val_acc']:.2%} ({result['epoch_s']:.1f} s)"
        )
