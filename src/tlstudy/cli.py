"""The `tlstudy` command: the checks of the user's arguments, then the dispatch.

    tlstudy run --space taskE              the study (Ray Tune + Optuna); study/run.py
    tlstudy trial --epochs 3               one trial, without Ray; study/trial.py
    tlstudy analyze --space taskE          the report from a stored study; study/analyze.py
    tlstudy dashboard --space taskE        optuna-dashboard on the study's storage; study/dashboard.py
    tlstudy submit --cluster-address URL --space taskE   the study as a Ray job; study/submit.py

The flags are tlstudy.cli_flags'. Arguments first, heavy imports after: this module and
what it imports at the top (cli_flags, config, errors, spaces, storage) load neither torch
nor Ray nor Optuna, so `--help` and a user's mistake (a wrong flag, an unknown space, a
missing path) answer at once. Each command imports what it runs only once its arguments
have been checked.
"""
import os
import sys
from pathlib import Path

from tlstudy import spaces
from tlstudy.cli_flags import TRIAL_PROFILE_KEYS, build_parser, command_line, subparser
from tlstudy.config import DEFAULTS, PROFILES
from tlstudy.errors import UserError, run_cli
from tlstudy.storage import check_url, default_url, display_url, storage_exists


# ---------------------------------------------------------------- checks before the heavy imports


def check_space(name):
    """The space file behind --space, found and parsed (not run): a user's typo answers at once."""
    path = spaces.find(name)
    spaces.describe(path)
    return path


def check_data(data):
    if data != "phantom" and not Path(data).expanduser().exists():
        raise UserError(f"data path {data} does not exist; pass --data phantom or a chest_xray folder, .npz or .npy folder")


def check_writable(folder, what):
    """Fail early, creating nothing, when `folder` could not be made or written."""
    p = Path(folder).resolve()
    while not p.exists():
        p = p.parent
    if not p.is_dir() or not os.access(p, os.W_OK):
        raise UserError(f"cannot write to {what} {folder}: {p} is not a writable folder")


def keep_ray_local(address, environ=os.environ):
    """Keep a Ray this process starts on loopback: without RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, Ray
    swaps 127.0.0.1 for the host's network address. Ray reads it when imported, so this runs before
    any Ray import, and not when the user joins a cluster (--address, or RAY_ADDRESS).
    True when it keeps Ray local."""
    if address or environ.get("RAY_ADDRESS"):
        return False
    environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    return True


def has_gpu():
    import torch

    return torch.cuda.is_available()


def exit_code(result):
    """A command's return value as the exit status: an int as it is, None (or anything else) 0."""
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


# ---------------------------------------------------------------- the commands


def run(args, parser, argv):
    args.command = command_line("tlstudy run", parser, argv)
    if args.list_spaces:
        for name, desc in spaces.available():
            print(f"{name:10} {desc}")
        return 0
    if not args.space:
        parser.error("--space is required; --list-spaces lists the spaces")
    check_space(args.space)
    check_data(args.data)
    check_writable(args.results, "results folder")
    if args.storage:
        check_url(args.storage)
    keep_ray_local(args.address)
    if args.profile is None or args.gpus_per_trial is None:
        gpu = has_gpu()  # the driver's machine decides the defaults (a cluster: pass them)
        args.profile = args.profile or ("full" if gpu else "quick")
        if args.gpus_per_trial is None:
            args.gpus_per_trial = 1.0 if gpu else 0.0
    _quiet_optuna()
    from tlstudy import runner

    return exit_code(runner.show_config(args) if args.show_config else runner.run(args))


def trial_settings(args):
    """Fill the flags left to the profile (--profile, else quick without a GPU and full with one)
    from tlstudy.config.PROFILES, as the study does; return the trial config and the data settings."""
    if args.profile is None:
        args.profile = "full" if has_gpu() else "quick"
    for key in TRIAL_PROFILE_KEYS:
        if getattr(args, key) is None:
            setattr(args, key, PROFILES[args.profile][key])
    config = {k: getattr(args, k) for k in DEFAULTS}
    data = {k: getattr(args, k) for k in ("data", "image_size", "phantom_sizes", "max_train", "min_val",
                                          "skip_bad_images", "data_seed")}
    return config, data


def trial(args, parser, argv):
    check_data(args.data)
    if args.json and not Path(args.json).resolve().parent.is_dir():
        raise UserError(f"cannot write {args.json}: no folder {Path(args.json).parent}")
    config, data = trial_settings(args)
    from tlstudy import single_trial

    return exit_code(single_trial.run(config, data, json_path=args.json))


def analyze(args, parser, argv):
    check_space(args.space)
    url = args.storage or default_url(args.results)
    if not storage_exists(url):
        raise UserError(f"no study storage at {display_url(url)}: run tlstudy run --space {args.space} first")
    keep_ray_local(None)
    _quiet_optuna()
    import optuna

    from tlstudy import analysis
    from tlstudy.storage import open_storage

    space = spaces.load(args.space)
    storage = open_storage(url)
    names = space.compare or (args.study_name or space.name,)
    stored = set(optuna.get_all_study_names(storage))
    missing = [n for n in names if n not in stored]
    if missing:
        raise UserError(f"no study {', '.join(map(repr, missing))} in {display_url(url)} "
                        f"(it has: {', '.join(sorted(stored)) or 'none'}); run tlstudy run --space {space.name} first")
    studies = [optuna.load_study(study_name=n, storage=storage) for n in names]
    paths = analysis.analyze(studies, space, f"{args.results}/{args.study_name or space.name}",
                             margin=args.margin, alpha=args.alpha)
    print(paths.pop("table"))
    print(f"report: {paths['report']}")
    return 0


def dashboard(args, parser, argv):
    url = args.storage or default_url(args.results)
    if not storage_exists(url):  # reading must not create it (an empty journal file, an empty SQLite file)
        raise UserError(f"no study storage at {display_url(url)}; run tlstudy run --space NAME first, or pass --storage")
    keep_ray_local(None)
    from tlstudy import dashboard as board

    return exit_code(board.serve(url, args))


def submit(args, parser, argv):
    from tlstudy import submit as job

    run_parser = subparser("run")
    run_argv = args.run_argv
    run_args = run_parser.parse_args(run_argv)
    if run_args.list_spaces or run_args.show_config:
        raise UserError("--list-spaces and --show-config answer here: tlstudy run " +
                        ("--list-spaces" if run_args.list_spaces else "--show-config ..."))
    if not run_args.space:
        raise UserError("--space is required (see tlstudy run --list-spaces)")
    check_space(run_args.space)
    return exit_code(job.submit(args, run_parser, run_argv, run_args))


HANDLERS = {"run": run, "trial": trial, "analyze": analyze, "dashboard": dashboard, "submit": submit}


def _quiet_optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _main(argv):
    parser = build_parser()
    if argv[:1] == ["submit"]:  # every flag submit does not know goes to `tlstudy run` on the cluster
        args, rest = subparser("submit").parse_known_args(argv[1:])
        args.subcommand, args.run_argv = "submit", rest
    else:
        args = parser.parse_args(argv)
    return HANDLERS[args.subcommand](args, subparser(args.subcommand), argv[1:])


def main(argv=None):
    """The `tlstudy` console command; returns its exit status. A user's mistake ends it with one
    line on stderr and exit status 2 (SystemExit), Ctrl-C with 130."""
    return run_cli(_main, sys.argv[1:] if argv is None else list(argv))
