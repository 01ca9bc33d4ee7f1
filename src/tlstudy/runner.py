"""The study: Ray Tune runs the trials, Optuna samples and prunes them, the storage keeps them.

Orchestration lives here and only here:
1. load the space and the data (once, in the driver; trials get it through Ray's
   object store via tune.with_parameters), and write the split manifest;
2. open the Optuna study in its storage (one study per space), refuse it when it was run
   with other data or settings (tlstudy.study_store), and fail the trials a dead driver
   left RUNNING (tlstudy.heartbeats tells them from a live driver's);
3. run what the study's design still needs (tlstudy.design: per cell, `budget` search
   trials, then `seeds` replicates of the best) with a Tuner whose searcher is Ray's
   OptunaSearch on that study and whose scheduler asks the study's pruner after every
   epoch (tlstudy.tune_optuna); each trial is tlstudy.train.fit in `trainable`, and
   prints its line (tlstudy.progress). Trials that failed run again, up to --max-retries times;
4. export trials.csv, epochs.csv, predictions.csv and best_config.json from the storage
   (tlstudy.export), and write the analysis (REPORT.md, tlstudy.analysis).

Rerunning the same command continues the study: finished trials are not run again.
"""
import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# Ctrl-C must reach the study as KeyboardInterrupt (then: exit 130 and our own resume line),
# not Tune's handler, which ends fit() quietly and suggests Tuner.restore.
os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
# Tune's legacy console reporter: at verbose=0 it prints nothing, where the new one still
# prints its configuration box and log paths; --verbose gives its tables back.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

import optuna
import ray
import torch
from optuna.trial import TrialState
from ray import tune

from tlstudy import data as tldata
from tlstudy import analysis, design, export, models, spaces
from tlstudy.config import DEFAULTS, PROFILES
from tlstudy.errors import UserError
from tlstudy.heartbeats import resolve_abandoned
from tlstudy.progress import EpochLines, Progress
from tlstudy.ray_cluster import init_ray, slots
from tlstudy.result_keys import FAIL_REASON, METRIC, NODE_ID
from tlstudy.storage import default_url, display_url, enable_wal, open_storage
from tlstudy.study_store import PROFILE_KEYS, comparability, open_study
from tlstudy.train import fit
from tlstudy.tune_optuna import OptunaPruningScheduler, OptunaPruningSearch, make_pruner

# The speed measurement of spaces whose cells differ in architecture (measure_speed).
THROUGHPUT_STEPS, THROUGHPUT_RUNS = 5, 5


def trainable(config, data):
    """The Ray Tune function trainable: tlstudy.train.fit, reported every epoch."""
    node_id = ray.get_runtime_context().get_node_id()
    for rec in fit(config, data):
        tune.report({**rec, NODE_ID: node_id})


def settings(space, args):
    """The profile, overridden by the space file, overridden by command-line flags."""
    s = {**PROFILES[args.profile], **space.profiles.get(args.profile, {})}
    for k in s:
        if getattr(args, k, None) is not None:
            s[k] = getattr(args, k)
    return s


def base_config(space, s, args):
    """The trial settings every trial of the study shares."""
    return {"epochs": s["epochs"], "step_size": s["step_size"], "weights_policy": s["weights_policy"],
            "frozen_bn": getattr(args, "frozen_bn", None) or DEFAULTS["frozen_bn"], **space.fixed}


def artifact_dir(results):
    """Where the trials' learning-curve artifacts live (optuna-dashboard needs the same folder)."""
    path = (results / "artifacts").resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_writable(folder):
    """Fail early, creating nothing, when `folder` could not be made or written."""
    p = folder.resolve()
    while not p.exists():
        p = p.parent
    if not p.is_dir() or not os.access(p, os.W_OK):
        raise UserError(f"cannot write to results folder {folder}: {p} is not a writable folder")


def show_config(args):
    """--show-config: what this command would run, then exit."""
    space = spaces.load(args.space)
    if space.compare:
        print(f"space {space.name}: {space.description}\ncompares the studies {', '.join(space.compare)}")
        return 0
    s = settings(space, args)
    base = base_config(space, s, args)
    print(f"space {space.name} ({space.path}): {space.description}")
    print(f"profile {args.profile}: " + ", ".join(f"{k}={s[k]}" for k in PROFILE_KEYS))
    print(f"budget: {s['budget']} search trials per cell (the first runs the protocol), then {s['seeds']} "
          f"replicates of each cell's best (training seeds 1..{s['seeds']}); pruner {args.pruner}, within a cell")
    print(f"fixed: {json.dumps(base)}")
    print(f"protocol: {json.dumps(design.PROTOCOL)}")
    from ray.tune.search.optuna import OptunaSearch
    print("searched (as Optuna distributions):")
    for k, d in OptunaSearch.convert_search_space(space.param_space).items():
        print(f"  {k}: {d}")
    print(f"cells ({len(space.cells)}):")
    for cell in space.cells:
        print(f"  {design.cell_label(cell)}")
    print(f"data: {args.data} (data seed {args.seed}); storage: {display_url(args.storage or default_url(args.results))}")
    return 0


def run(args):
    """Run (or continue) the study of args.space; return the exit code: 0 when every cell has
    its replicates, 1 when a cell lacks them (0 with --allow-failures), 130 after Ctrl-C."""
    space = spaces.load(args.space)
    if space.compare:
        codes = [run(_with(args, space=name, study_name=None)) for name in space.compare]
        studies = [optuna.load_study(study_name=name, storage=open_storage(args.storage or default_url(args.results)))
                   for name in space.compare]
        print(f"report: {analyze(studies, space, Path(args.results) / space.name, args)}")
        return max(codes)
    s = settings(space, args)
    results = Path(args.results)
    out_dir = results / (args.study_name or space.name)
    check_writable(results)
    args.storage = args.storage or default_url(results)
    base = base_config(space, s, args)
    storage = open_storage(args.storage, heartbeat=args.heartbeat)
    # The data before the study: a bad data set must not leave a half-made study behind.
    n, m, t = s["phantom_sizes"]
    splits = tldata.load(args.data, s["image_size"], seed=args.seed, skip_bad_images=args.skip_bad_images,
                         phantom_sizes={"train": n, "val": m, "test": t})
    if s["max_train"]:
        splits = tldata.subsample_train(splits, s["max_train"], args.seed)
    info = splits.info()
    study = open_study(space, args, storage, comparability(space, s, base, info, args.seed))
    enable_wal(args.storage)
    study.set_user_attr("data", {k: v for k, v in info.items() if k != "classes"})
    study.set_user_attr("base_config", base)
    study.set_user_attr("budget", {"budget": s["budget"], "seeds": s["seeds"], "pruner": args.pruner})
    study.set_user_attr("command", args.command)
    export.write_splits(splits, out_dir)
    print(f"space {space.name}: {space.description}")
    print(f"data: {info['data_source']}  train/val/test {info['n_train']}/{info['n_val']}/{info['n_test']} "
          f"at {info['image_size']} px; {splits.group_note}" + (f"\nnote: {splits.val_note}" if splits.val_note else ""))
    if splits.skipped:
        print(f"note: skipped {len(splits.skipped)} unreadable images (--skip-bad-images), e.g. {splits.skipped[0]}")
    _say_weights(space, base)
    print(f"study {study.study_name!r} in {display_url(args.storage)}; watch it live: "
          f"optuna-dashboard {display_url(args.storage)} --artifact-dir {results / 'artifacts'}")

    abandoned = resolve_abandoned(study, storage)
    if abandoned:
        print(f"resume: {abandoned} trials left RUNNING by a driver that stopped were marked FAIL; their cells run again")
    first = len(study.trials)
    for attempt in range(args.max_retries + 1):
        n_trials = design.missing(study.get_trials(deepcopy=False), space.cells, s["budget"], s["seeds"])
        if not n_trials:
            break
        if attempt == 0:
            print(f"{len(space.cells)} cells x ({s['budget']} search + {s['seeds']} replicates); "
                  f"{first} trials stored, running {n_trials}")
        else:
            print(f"retry {attempt} of {args.max_retries}: running the {n_trials} trials still missing")
        try:
            run_trials(StudyRun(study, space, splits, base, s, args, storage, results), n_trials)
        except KeyboardInterrupt:
            print(f"\ninterrupted: finished trials are stored. Resume with the same command:\n  {args.command}",
                  file=sys.stderr, flush=True)
            return 130
    print_failures(study, first)
    measure_speed(study, space, base, s)
    report(study, space, out_dir, args, s)
    incomplete = design.incomplete_cells(study.get_trials(deepcopy=False), space.cells, s["seeds"])
    if incomplete:
        print(f"{'WARNING' if args.allow_failures else 'ERROR'}: {len(incomplete)} cells ended without "
              f"{s['seeds']} COMPLETE replicates (see the failures above): {' | '.join(incomplete)}",
              file=sys.stderr, flush=True)
        return 0 if args.allow_failures else 1
    return 0


def measure_speed(study, space, base, s):
    """Time each architecture of a space whose cells differ in it (tlstudy.throughput), once per
    study: claim 1 compares architectures' training speed on this, not on trials' epoch times."""
    archs = sorted({a for (a,) in _choices(space, "arch")})
    if len(archs) < 2 or base.get("mode") == "frozen" or study.user_attrs.get("throughput"):
        return
    from tlstudy import throughput
    print(f"timing {', '.join(archs)}: {THROUGHPUT_STEPS} training steps x {THROUGHPUT_RUNS} runs each, "
          f"batch 16, {s['image_size']} px, one thread", flush=True)
    study.set_user_attr("throughput", throughput.measure(archs, s["image_size"], steps=THROUGHPUT_STEPS,
                                                         runs=THROUGHPUT_RUNS))


def _say_weights(space, base):
    """One line up front when pretrained weights are missing here (each trial would warn on its own)."""
    pairs = {(base.get("arch", a), base.get("weights", w)) for a, w in _choices(space, "arch", "weights")}
    missing = sorted(f"{a} {w}" for a, w in pairs if w not in (None, "none")
                     and not os.path.exists(models.weights_file(a, w)))
    if missing:
        print(f"weights: {', '.join(missing)} not in {torch.hub.get_dir()}/checkpoints: "
              f"{'those trials will fail' if base['weights_policy'] == 'strict' else 'trained from a RANDOM init'}")


def _choices(space, *keys):
    """Every combination of the values `keys` take in the space's cells (or its fixed settings)."""
    combos = {tuple(c.get(k, space.fixed.get(k, DEFAULTS[k])) for k in keys) for c in space.cells}
    return sorted(combos, key=str)


@dataclass
class StudyRun:
    """What a run of the study hands to the Tuner: the study and everything its trials need."""
    study: optuna.Study
    space: spaces.Space
    splits: tldata.Splits  # the data, prepared once in the driver
    base: dict  # the trial settings every trial shares (base_config)
    settings: dict  # the profile, overridden by the space and the flags (settings)
    args: argparse.Namespace  # the command's flags
    storage: optuna.storages.BaseStorage
    results: Path  # the results folder: RESULTS/artifacts/, RESULTS/ray/


def run_trials(job, n_trials):
    """Run up to n_trials trials of the study's design under Ray Tune; job: a StudyRun."""
    study, space, splits, s, args = job.study, job.space, job.splits, job.settings, job.args
    init_ray(args)
    searcher = OptunaPruningSearch(space=None, metric=METRIC, mode="min", storage=job.storage,
                                   study_name=study.study_name, sampler=study.sampler,
                                   pruner=make_pruner(args.pruner, s["epochs"]),
                                   artifact_dir=artifact_dir(job.results),
                                   plan=(space.cells, s["budget"], s["seeds"]),
                                   test_images=(splits.ids["test"], splits.y["test"].tolist()),
                                   progress=Progress(n_trials, study.get_trials(deepcopy=False)))
    resources = {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial}
    # With a searcher, Tune keeps one trial pending at a time unless concurrency is bounded:
    # the second slot's worker would start only once the first trial runs (12 s later here).
    max_concurrent = args.max_concurrent or slots(ray.cluster_resources(), resources)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, data=splits), resources),
        param_space={**job.base, **space.param_space},
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=OptunaPruningScheduler(searcher),
                                    num_samples=n_trials, max_concurrent_trials=max_concurrent,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name=f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                                  storage_path=str((job.results / "ray" / space.name).resolve()),
                                  callbacks=[EpochLines()] if args.verbose else [],
                                  verbose=1 if args.verbose else 0,
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )
    try:
        tuner.fit()
    finally:
        searcher.fail_unfinished("interrupted before its last epoch")


def print_failures(study, first):
    """Count the study's failed trials by reason (the fail_reason user attribute)."""
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    if not failed:
        return
    print(f"failed trials: {len(failed)} ({sum(t.number >= first for t in failed)} in this run); by reason:")
    reasons = {}
    for t in failed:
        reason = (t.user_attrs.get(FAIL_REASON) or "no reason recorded").strip().splitlines()
        reasons.setdefault(reason[-1][:160] if reason else "", []).append(t.number)
    for reason, numbers in sorted(reasons.items(), key=lambda kv: -len(kv[1])):
        print(f"  {len(numbers)} x {reason}  (trials {', '.join(map(str, numbers))})")


def report(study, space, out_dir, args, s):
    data_args = {"data": args.data, "image_size": s["image_size"], "max_train": s["max_train"], "data_seed": args.seed,
                 **({"phantom_sizes": ",".join(map(str, s["phantom_sizes"]))} if args.data == "phantom" else {})}
    data_args = {k: v for k, v in data_args.items() if v is not None}
    study.set_user_attr("data_args", data_args)
    trials, paths = export.write(study, space, out_dir, data_args, artifact_dir(Path(args.results)))
    states = trials.state.value_counts().to_dict() if len(trials) else {}
    print(f"\n{study.study_name}: {len(trials)} trials: " + ", ".join(f"{v} {k}" for k, v in states.items()))
    fallback = int((trials.get("weights_source") == "random-fallback").sum()) if len(trials) else 0
    if fallback:
        print(f"WARNING: {fallback} trials trained from a RANDOM init: their pretrained weights were not in "
              f"{torch.hub.get_dir()}/checkpoints (weights_source=random-fallback). Transfer and V1/V2 claims are void.")
    if len(trials):
        print(f"report: {analyze([study], space, out_dir, args)}")
    print("exports: " + ", ".join(str(p) for p in paths.values()))
    print(f"browse: optuna-dashboard {display_url(args.storage)} --artifact-dir {Path(args.results) / 'artifacts'}")


def analyze(studies, space, out_dir, args):
    """The report's tables, claims and plots (tlstudy.analysis); prints the cell table, returns REPORT.md's path."""
    paths = analysis.analyze(studies, space, out_dir, margin=args.margin, alpha=args.alpha)
    print(f"\n{space.name}: each cell's best trial (test accuracy at its best-val checkpoint)")
    print(paths["table"])
    return paths["report"]


def _with(args, **changes):
    return argparse.Namespace(**{**vars(args), **changes})
