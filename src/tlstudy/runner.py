"""The study: Ray Tune runs the trials, Optuna samples and prunes them, the storage keeps them.

Orchestration lives here and only here:
1. load the space and the data (once, in the driver; trials get it through Ray's
   object store via tune.with_parameters);
2. open the Optuna study in its storage (one study per space), fail the trials a
   dead driver left RUNNING (heartbeats tell them from a live driver's), and enqueue each variant cell still lacking trials as a
   partial trial, so that the sampler fills in the training hyperparameters;
3. run that many trials (plus --extra-samples free ones) with a Tuner whose
   searcher is Ray's OptunaSearch on that study and whose scheduler asks the
   study's pruner after every epoch (tlstudy.bridge);
   Cells whose trials failed run again, up to --max-retries times;
4. export trials.csv, epochs.csv and best_config.json from the storage.

Rerunning the same command continues the study: finished trials are not run again.
"""
import argparse
import hashlib
import json
import os
import shlex
import sys
import time
from pathlib import Path

import optuna
import ray
import torch
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import TrialState
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from tlstudy import data as tldata
from tlstudy import analysis, export, spaces
from tlstudy.bridge import METRIC, OptunaPruningScheduler, OptunaPruningSearch
from tlstudy.errors import ArgumentParser, UserError
from tlstudy.storage import default_url, enable_wal, open_storage
from tlstudy.train import fit

# quick: the default without a GPU, sized so taskE's 9 cells finish in about 5 minutes
# on 2 CPU cores. full: the report's protocol. A space file may override either
# (QUICK = dict(...)), and every key is also a command-line flag.
PROFILES = {
    "quick": dict(image_size=32, epochs=5, step_size=2, phantom_sizes=(400, 100, 200), max_train=400,
                  weights_policy="auto"),
    "full": dict(image_size=224, epochs=30, step_size=7, phantom_sizes=(5216, 522, 624), max_train=None,
                 weights_policy="strict"),
}
PRUNERS = ("median", "percentile", "halving", "hyperband", "none")
ACTIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.WAITING, TrialState.RUNNING)


def make_pruner(name, epochs, percentile=25.0):
    # No pruning at epoch 1: the first val loss says little after a fresh head.
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2)
    if name == "percentile":
        return optuna.pruners.PercentilePruner(percentile, n_startup_trials=2, n_warmup_steps=2)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    return optuna.pruners.NopPruner()


def trainable(config, data):
    """The Ray Tune function trainable: tlstudy.train.fit, reported every epoch."""
    node_id = ray.get_runtime_context().get_node_id()
    for rec in fit(config, data):
        tune.report({**rec, "node_id": node_id})


def settings(space, args):
    """The profile, overridden by the space file, overridden by command-line flags."""
    s = {**PROFILES[args.profile], **space.profiles.get(args.profile, {})}
    for k in s:
        if getattr(args, k, None) is not None:
            s[k] = getattr(args, k)
    return s


def base_config(space, s, seed):
    """The trial settings every trial of the study shares."""
    return {"epochs": s["epochs"], "step_size": s["step_size"], "weights_policy": s["weights_policy"],
            "seed": seed, **space.fixed}


def space_fingerprint(space, base):
    dists = OptunaSearch.convert_search_space(space.param_space)
    text = json.dumps({"params": {k: optuna.distributions.distribution_to_json(d) for k, d in dists.items()},
                       "base": base, "cells": space.cells}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def open_study(space, args, base, storage):
    name = args.study_name or space.name
    sampler = optuna.samplers.TPESampler(seed=args.seed)
    fingerprint = space_fingerprint(space, base)
    existing = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if name in existing and args.new_study:
        optuna.delete_study(study_name=name, storage=storage)
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, direction="minimize",
                                load_if_exists=True)
    stored = study.user_attrs.get("space_fingerprint")
    if stored and stored != fingerprint:
        raise UserError(f"study {name!r} in {args.storage} was built from a different space or profile; "
                        "pass --study-name NEW to keep both, or --new-study to replace it")
    study.set_user_attr("space_fingerprint", fingerprint)
    study.set_user_attr("space", space.name)
    study.set_user_attr("base_config", base)
    return study


def resolve_abandoned(study, storage):
    """Mark FAIL the trials a crashed or killed driver left RUNNING: they will never report again.
    With heartbeats (SQL storages) these are the trials nobody beats through the grace period,
    so the trials of another live driver on the same study are left alone. A journal file has
    no heartbeats: there, every RUNNING trial counts as abandoned (one driver at a time)."""
    stale = [t._trial_id for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    if stale and is_heartbeat_enabled(storage):
        # A driver killed between asking for a trial and its first heartbeat left a trial that
        # would never turn stale: beat each once, then see which their driver keeps beating.
        for trial_id in stale:
            storage.record_heartbeat(trial_id)
        print(f"{len(stale)} trials RUNNING: waiting up to {storage.grace_period} s for their driver's heartbeat",
              flush=True)
        deadline = time.time() + storage.grace_period + 2  # the database clock counts whole seconds
        while time.time() < deadline and any(storage.get_trial(i).state == TrialState.RUNNING for i in stale):
            time.sleep(1)
        stale = storage._get_stale_trial_ids(storage.get_study_id_from_name(study.study_name))
    failed = 0
    for trial_id in stale:
        try:
            storage.set_trial_user_attr(trial_id, "fail_reason", "left RUNNING by a driver that stopped")
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
            failed += 1
        except UpdateFinishedTrialError:
            pass  # its driver, or another one, resolved it meanwhile
    return failed


def enqueue_cells(study, space, samples_per_cell):
    """Enqueue each cell's fixed values until every cell has samples_per_cell live or finished trials."""
    trials = study.get_trials(deepcopy=False, states=ACTIVE)
    for cell in space.cells:
        have = sum(all(t.params.get(k, t.system_attrs.get("fixed_params", {}).get(k)) == v for k, v in cell.items())
                   for t in trials)
        for _ in range(samples_per_cell - have):
            study.enqueue_trial(cell, skip_if_exists=False)


def free_trials_done(study):
    return sum("fixed_params" not in t.system_attrs
               for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


class EpochLines(tune.Callback):
    """One line per trial per epoch, beside Ray's periodic progress table."""

    def on_trial_result(self, iteration, trials, trial, result):
        cfg = trial.config
        print(f"[{trial.trial_id}] {cfg.get('arch')} epoch {result['epoch']}/{cfg.get('epochs')}: "
              f"train_loss {result['train_loss']:.4f} val_loss {result['val_loss']:.4f} "
              f"val_acc {result['val_acc']:.2%} ({result['epoch_s']:.1f} s)", flush=True)


def init_ray(args):
    if ray.is_initialized():
        return
    address = args.address or os.environ.get("RAY_ADDRESS")
    # "local": without it, ray.init joins any Ray already running on this machine (another
    # user's, another study's) instead of starting this study's own.
    kwargs = dict(address=address or "local", include_dashboard=False)
    if not address and args.num_cpus:
        kwargs["num_cpus"] = args.num_cpus
    try:
        ray.init(logging_level="WARNING", **kwargs)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise UserError(f"cannot start or join Ray{f' at {address}' if address else ''}: {e}") from None


def slots(cluster, resources):
    """How many trials with `resources` the cluster's resources (ray.cluster_resources()) fit at once."""
    fits = [cluster.get(k.upper(), 0) / v for k, v in resources.items() if v]
    return max(1, int(min(fits))) if fits else 1


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


def run(args):
    """Run (or continue) the study of args.space; return the study."""
    space = spaces.load(args.space)
    if space.compare:
        studies = [run(_with(args, space=name, study_name=None)) for name in space.compare]
        print(f"report: {analyze(studies, space, Path(args.results) / space.name)}")
        return studies
    s = settings(space, args)
    results = Path(args.results)
    out_dir = results / (args.study_name or space.name)
    check_writable(results)
    args.storage = args.storage or default_url(results)
    base = base_config(space, s, args.seed)
    storage = open_storage(args.storage, heartbeat=args.heartbeat)
    # The data before the study: a bad data set must not leave a half-made study behind.
    n, m, t = s["phantom_sizes"]
    splits = tldata.load(args.data, s["image_size"], seed=args.seed, skip_bad_images=args.skip_bad_images,
                         phantom_sizes={"train": n, "val": m, "test": t})
    if s["max_train"]:
        splits = tldata.subsample_train(splits, s["max_train"], args.seed)
    info = splits.info()
    study = open_study(space, args, base, storage)
    enable_wal(args.storage)
    study.set_user_attr("data", {k: v for k, v in info.items() if k != "classes"})
    study.set_user_attr("command", args.command)
    print(f"space {space.name}: {space.description}")
    print(f"profile {args.profile}: {s}")
    print(f"data: {info['data_source']}  train/val/test {info['n_train']}/{info['n_val']}/{info['n_test']} "
          f"at {info['image_size']} px" + (f"\nnote: {splits.val_note}" if splits.val_note else ""))
    if splits.skipped:
        print(f"note: skipped {len(splits.skipped)} unreadable images (--skip-bad-images), e.g. {splits.skipped[0]}")

    abandoned = resolve_abandoned(study, storage)
    if abandoned:
        print(f"resume: {abandoned} trials left RUNNING by a driver that stopped were marked FAIL; their cells run again")
    first = len(study.trials)
    for attempt in range(args.max_retries + 1):
        enqueue_cells(study, space, args.samples_per_cell)
        waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        extra = max(0, args.extra_samples - free_trials_done(study))
        n_trials = waiting + extra
        if attempt == 0:
            print(f"study {study.study_name!r} in {args.storage}: {len(study.trials) - waiting} trials so far; "
                  f"running {n_trials} ({waiting} cell trials, {extra} free)")
        elif n_trials:
            print(f"retry {attempt} of {args.max_retries}: running {n_trials} failed trials' cells again")
        if not n_trials or not run_trials(study, space, splits, base, s, args, storage, results, n_trials):
            break
    print_failures(study, first)
    report(study, space, out_dir, args, s)
    return study


def run_trials(study, space, splits, base, s, args, storage, results, n_trials):
    """Run n_trials trials of the study under Ray Tune; False when interrupted (Ctrl-C) before the end."""
    init_ray(args)
    searcher = OptunaPruningSearch(space=None, metric=METRIC, mode="min", storage=storage,
                                   study_name=study.study_name, sampler=study.sampler,
                                   pruner=make_pruner(args.pruner, s["epochs"]),
                                   artifact_dir=artifact_dir(results))
    resources = {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial}
    # With a searcher, Tune keeps one trial pending at a time unless concurrency is bounded:
    # the second slot's worker would start only once the first trial runs (12 s later here).
    max_concurrent = args.max_concurrent or slots(ray.cluster_resources(), resources)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, data=splits), resources),
        param_space={**base, **space.param_space},
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=OptunaPruningScheduler(searcher),
                                    num_samples=n_trials, max_concurrent_trials=max_concurrent,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name=f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                                  storage_path=str((results / "ray" / space.name).resolve()),
                                  callbacks=[EpochLines()], verbose=1,
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )
    try:
        tuner.fit()
    finally:
        unfinished = searcher.fail_unfinished("interrupted before its last epoch")
    return not unfinished and searcher.started == n_trials


def print_failures(study, first):
    """Count the study's failed trials by reason (the fail_reason user attribute)."""
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    if not failed:
        return
    print(f"failed trials: {len(failed)} ({sum(t.number >= first for t in failed)} in this run); by reason:")
    reasons = {}
    for t in failed:
        reason = (t.user_attrs.get("fail_reason") or "no reason recorded").strip().splitlines()
        reasons.setdefault(reason[-1][:160] if reason else "", []).append(t.number)
    for reason, numbers in sorted(reasons.items(), key=lambda kv: -len(kv[1])):
        print(f"  {len(numbers)} x {reason}  (trials {', '.join(map(str, numbers))})")


def report(study, space, out_dir, args, s):
    data_args = {"data": args.data, "image_size": s["image_size"], "max_train": s["max_train"],
                 **({"phantom_sizes": ",".join(map(str, s["phantom_sizes"]))} if args.data == "phantom" else {})}
    data_args = {k: v for k, v in data_args.items() if v is not None}
    study.set_user_attr("data_args", data_args)
    trials, paths = export.write(study, space, out_dir, data_args)
    states = trials.state.value_counts().to_dict() if len(trials) else {}
    print(f"\n{study.study_name}: {len(trials)} trials: " + ", ".join(f"{v} {k}" for k, v in states.items()))
    fallback = int((trials.get("weights_source") == "random-fallback").sum()) if len(trials) else 0
    if fallback:
        print(f"WARNING: {fallback} trials trained from a RANDOM init: their pretrained weights were not in "
              f"{torch.hub.get_dir()}/checkpoints (weights_source=random-fallback). V1/V2 comparisons are void.")
    best = json.loads(paths["best_config"].read_text())
    if best:
        print(f"\nbest trial #{best['trial']}: val loss {best['best_val_loss']:.4f}, "
              f"test acc {best['test_best_acc']:.2%}\n  {json.dumps(best['config'])}\n  re-run: {best['command']}")
    for name, p in paths.items():
        print(f"{name}: {p}")
    if len(trials):
        print(f"report: {analyze([study], space, out_dir)}")
    print(f"browse: optuna-dashboard {args.storage} --artifact-dir {Path(args.results) / 'artifacts'}"
          f"   (or: python study/dashboard.py --space {space.name}"
          f"{'' if args.results == 'results' else f' --results {args.results}'}"
          f"{'' if args.storage == default_url(args.results) else f' --storage {args.storage}'})")


def analyze(studies, space, out_dir):
    """The report's tables, claims and plots (tlstudy.analysis); prints the cell table, returns REPORT.md's path."""
    paths = analysis.analyze(studies, space, out_dir)
    print(f"\n{space.name}: each cell's best trial (test accuracy at its best-val checkpoint)")
    print(paths["table"])
    return paths["report"]


def _with(args, **changes):
    return argparse.Namespace(**{**vars(args), **changes})
