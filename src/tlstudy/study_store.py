"""The Optuna study a space runs in: created or reopened in its storage, and refused when
its stored trials would not be comparable with this run's.

What makes trials comparable (`comparability`) is the space (its distributions and cells),
the fixed settings, the profile's data size and epochs, the data seed and the data
themselves. Its hash is stored with the study (`space_fingerprint`, with the whole dict as
`design`); a rerun with anything else is refused, saying what differs, before it writes
anything.
"""
import hashlib
import json
import warnings

import optuna
from ray.tune.search.optuna import OptunaSearch

from tlstudy import design
from tlstudy.errors import UserError
from tlstudy.result_keys import METRIC
from tlstudy.storage import display_url

# What makes two trials comparable: a stored study run with other values is refused.
PROFILE_KEYS = ("image_size", "epochs", "step_size", "phantom_sizes", "max_train", "weights_policy")


def comparability(space, s, base, info, data_seed):
    """Everything that makes the study's trials comparable, as plain JSON: the space, the fixed
    settings, the profile's data and epochs, and the data themselves."""
    dists = OptunaSearch.convert_search_space(space.param_space)
    out = {"space": {"params": {k: optuna.distributions.distribution_to_json(d) for k, d in dists.items()},
                     "cells": space.cells},
           "fixed": base, "profile": {k: s[k] for k in PROFILE_KEYS}, "data_seed": data_seed,
           "data": {k: info[k] for k in ("data_source", "data_fingerprint", "image_size", "n_train", "n_val", "n_test")}}
    return json.loads(json.dumps(out, sort_keys=True, default=str))


def fingerprint(design_attrs):
    """A short hash of the comparability dict, stored with the study."""
    return hashlib.sha1(json.dumps(design_attrs, sort_keys=True).encode()).hexdigest()[:16]


def differences(old, new, prefix=""):
    """'key: old -> new' for every leaf that differs between two comparability dicts."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {json.dumps(a)[:60]} -> {json.dumps(b)[:60]}")
    return out


def open_study(space, args, storage, design_attrs):
    """The study, created or reopened; refused (nothing written) when it was run with anything else."""
    name = args.study_name or space.name
    expected = fingerprint(design_attrs)
    existing = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if name in existing and args.new_study:
        optuna.delete_study(study_name=name, storage=storage)
    study = optuna.create_study(study_name=name, storage=storage, sampler=design.PerCellSampler(args.seed),
                                direction="minimize", load_if_exists=True)
    stored = study.user_attrs.get("space_fingerprint")
    if stored and stored != expected:
        diff = differences(study.user_attrs.get("design", {}), design_attrs)
        raise UserError(f"study {name!r} in {display_url(args.storage)} was run with a different space or settings"
                        f"{' (' + '; '.join(diff[:4]) + ')' if diff else ''}; its trials would not be comparable: "
                        "pass --study-name NEW to keep both, or --new-study to replace it")
    if not stored:
        with warnings.catch_warnings():  # "experimental" since Optuna 3.2; optuna-dashboard reads it
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([METRIC])
    study.set_user_attr("space_fingerprint", expected)
    study.set_user_attr("design", design_attrs)
    study.set_user_attr("space", space.name)
    return study
