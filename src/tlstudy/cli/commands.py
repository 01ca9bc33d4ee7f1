"""The `tlstudy` command: the checks of the user's arguments, the settings they resolve to, the dispatch.

`tlstudy run | trial | analyze | dashboard | submit | predict | export-model` (and study/*.py, thin
wrappers). Arguments first,
heavy imports after: this module and its imports load neither torch nor Ray, so `--help` and a user's
mistake answer at once. A study's settings are resolved here, once (tlstudy.settings.resolve_study),
and compared with its stored study before torch or Ray load: a refused rerun answers in about a
second. Nothing past this package sees the argparse namespace.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from tlstudy import spaces
from tlstudy.cli.command_line import command_line
from tlstudy.cli.parsers import build_parser, subparser
from tlstudy.errors import UserError
from tlstudy.names import PROFILE, ROUNDS, SPACE_SUMMARY
from tlstudy.settings import StudySettings, resolve_study
from tlstudy.study import storage


def main(argv: list[str] | None = None) -> int:
    """The `tlstudy` console command; returns its exit status. A user's mistake ends it with one
    line on stderr and exit status 2 (SystemExit), Ctrl-C with 130."""
    return run_cli(_dispatch, sys.argv[1:] if argv is None else list(argv))


def run_cli(command: Any, argv: Any = None) -> int:
    """command(argv), with a UserError as one line and exit status 2, Ctrl-C as exit status 130."""
    try:
        return command(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def _dispatch(argv: list[str]) -> int:
    if argv[:1] == ["submit"]:  # every flag submit does not know goes to `tlstudy run` on the cluster
        args, rest = subparser("submit").parse_known_args(argv[1:])
        return submit(args, rest)
    args = build_parser(argv).parse_args(argv)
    return HANDLERS[args.subcommand](args, subparser(args.subcommand), argv[1:])


# ---------------------------------------------------------------- checks before the heavy imports


def check_space(name: str) -> Path:
    """The space file behind --space, found and parsed (not run): a user's typo answers at once."""
    path = spaces.find(name)
    spaces.describe(path)
    return path


def check_data(data: str) -> None:
    if data != "phantom" and not Path(data).expanduser().exists():
        raise UserError(
            f"data path {data} does not exist; pass --data phantom or a chest_xray folder, .npz or .npy folder"
        )


def keep_ray_local(address: str | None, environ: Any = os.environ) -> bool:
    """Keep a Ray this process starts on loopback: without RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, Ray
    swaps 127.0.0.1 for the host's network address. Ray reads it when imported, so this runs before
    any Ray import, and not when the user joins a cluster (--address, or RAY_ADDRESS).
    True when it keeps Ray local."""
    if address or environ.get("RAY_ADDRESS"):
        return False
    environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    return True


def has_gpu() -> bool:  # `tlstudy trial`'s default profile; a study's is its cluster's (cluster_profile)
    import torch

    return torch.cuda.is_available()


def cluster_profile(flags: dict[str, Any]) -> str:
    """A new study's default profile, its cluster's: Ray starts (or is joined) now, as the study would."""
    from tlstudy.study import placement

    return placement.profile(flags.get("address"), flags.get("num_cpus"), bool(flags.get("verbose")))


def exit_code(result: Any) -> int:
    """A command's return value as the exit status: an int as it is, None (or anything else) 0."""
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


# ---------------------------------------------------------------- the settings of a study


def study_settings(path: Path, flags: dict[str, Any]) -> tuple[StudySettings, spaces.Space | None]:
    """The settings of the study of the space file `path`, resolved from the space, the profile and
    the flags, and compared with the study stored under its name: a rerun with anything that makes
    its trials incomparable is refused here. The stored study keeps its space's summary with the
    file's hash, so a rerun with the same file is compared without running it (no Ray, no torch);
    the space is returned when it had to be loaded. A rerun's profile is its stored study's; only a
    new study without --profile needs the cluster (Ray starts here for it: full with GPUs)."""
    name = flags.get("study_name") or path.stem
    attrs = None if flags.get("new_study") else storage.stored_attrs(flags["storage"], name)
    summary, space = (attrs or {}).get(SPACE_SUMMARY), None
    if not summary or summary.get("sha1") != spaces.file_hash(path):
        space = spaces.load(path)
        summary = space.summary()
    # A stored study runs its own (one stored without: quick, and the comparison says what differs).
    profile = flags.get("profile") or (attrs.get(PROFILE) or "quick" if attrs else cluster_profile(flags))
    settings = resolve_study(summary, profile, {**flags, "study_name": name})
    if attrs:
        from tlstudy.study import design  # Optuna: a stored study is there to compare with

        design.check_comparable(attrs, settings.comparability(summary), name, flags["storage"])
        if settings.auto_seeds:
            from tlstudy.analysis import sequential

            sequential.check_plan(attrs.get(ROUNDS), settings.looks)
    return settings, space


# ---------------------------------------------------------------- the commands


def run(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]) -> int:
    if args.list_spaces:
        for name, desc in spaces.available():
            print(f"{name:10} {desc}")
        return 0
    if not args.space:
        parser.error("--space is required; --list-spaces lists the spaces")
    path = check_space(args.space)
    check_data(args.data)
    storage.check_writable(args.results, f"write to results folder {args.results}")
    if args.storage:
        storage.check_url(args.storage)
    keep_ray_local(args.address)
    _quiet_optuna()
    flags = {
        **vars(args),
        "storage": args.storage or storage.default_url(args.results),
        "command": command_line("tlstudy run", parser, argv),
    }
    compared = spaces.load(path).compare if spaces.compares(path) else ()
    if compared:  # task D: run the compared studies, then compare them
        if args.show_config:
            print(f"space {path.stem}: {spaces.describe(path)}\ncompares the studies {', '.join(compared)}")
            return 0
        runs = [study_settings(spaces.find(name), {**flags, "study_name": None}) for name in compared]
        codes = [_run_one(s, space or spaces.load(s.space)) for s, space in runs]
        from tlstudy.analysis import report

        return max(codes + [report.report_compared(spaces.load(path), runs[0][0])])
    settings, space = study_settings(path, flags)
    if args.show_config:
        from tlstudy.cli.show_config import show_config

        show_config(settings, space or spaces.load(path))
        return 0
    return _run_one(settings, space or spaces.load(path))


def _run_one(settings: StudySettings, space: spaces.Space) -> int:
    """Run one study (tlstudy.study.runner, which resolves the GPUs per trial from the cluster),
    then its exports and report, read from the storage (tlstudy.analysis)."""
    from tlstudy.study import runner

    judge = None
    if settings.auto_seeds:
        from tlstudy.analysis import sequential

        judge = lambda study, targets: sequential.next_round(study, space, settings, targets)  # noqa: E731
    outcome = runner.run_study(settings, space, judge)
    if outcome.code == 130:
        return 130
    from tlstudy.analysis import export

    results = Path(settings.results)
    trials, paths = export.write(
        outcome.study, space, results / settings.study_name, settings.data.as_flags(), (results / "artifacts").resolve()
    )
    from tlstudy.analysis import report

    report.report_run(outcome.study, space, settings, trials, paths)
    if outcome.incomplete:
        print(
            f"{'WARNING' if settings.allow_failures else 'ERROR'}: {len(outcome.incomplete)} cells ended without "
            f"the COMPLETE replicates they were due (see the failures above): {' | '.join(outcome.incomplete)}",
            file=sys.stderr,
            flush=True,
        )
    return outcome.code


def trial(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]) -> int:
    check_data(args.data)
    if args.json and not Path(args.json).resolve().parent.is_dir():
        raise UserError(f"cannot write {args.json}: no folder {Path(args.json).parent}")
    from tlstudy.cli import trial_flags

    config, data = trial_flags.resolve({**vars(args), "profile": args.profile or ("full" if has_gpu() else "quick")})
    from tlstudy.training import single

    return exit_code(single.run(config, data, json_path=args.json))


def analyze(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]) -> int:
    check_space(args.space)
    url = args.storage or storage.default_url(args.results)
    if not storage.storage_exists(url):
        raise UserError(f"no study storage at {storage.display_url(url)}: run tlstudy run --space {args.space} first")
    keep_ray_local(None)
    _quiet_optuna()
    import optuna

    from tlstudy.analysis import report

    space = spaces.load(args.space)
    store = storage.open_storage(url)
    names = space.compare or (args.study_name or space.name,)
    stored = set(optuna.get_all_study_names(store))
    missing = [n for n in names if n not in stored]
    if missing:
        raise UserError(
            f"no study {', '.join(map(repr, missing))} in {storage.display_url(url)} "
            f"(it has: {', '.join(sorted(stored)) or 'none'}); run tlstudy run --space {space.name} first"
        )
    studies = [optuna.load_study(study_name=n, storage=store) for n in names]
    paths = report.write_report(
        studies, space, f"{args.results}/{args.study_name or space.name}", margin=args.margin, alpha=args.alpha
    )
    print(paths.pop("table"))
    print(f"report: {paths['report']}")
    return 0


def dashboard(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]) -> int:
    url = args.storage or storage.default_url(args.results)
    if not storage.storage_exists(url):  # reading must not create it (an empty journal file, an empty SQLite file)
        raise UserError(
            f"no study storage at {storage.display_url(url)}; run tlstudy run --space NAME first, or pass --storage"
        )
    keep_ray_local(None)
    from tlstudy.analysis import dashboard as board

    name = args.study_name or (Path(args.space).stem if args.space else None)
    return exit_code(board.serve(url, name, args.results, args.host, args.port))


def submit(args: argparse.Namespace, run_argv: list[str]) -> int:
    from tlstudy.cli import submit as job

    run_parser = subparser("run")
    run_args = run_parser.parse_args(run_argv)
    if run_args.list_spaces or run_args.show_config:
        raise UserError(
            "--list-spaces and --show-config answer here: tlstudy run "
            + ("--list-spaces" if run_args.list_spaces else "--show-config ...")
        )
    if not run_args.space:
        raise UserError("--space is required (see tlstudy run --list-spaces)")
    check_space(run_args.space)
    return exit_code(job.submit(args, run_parser, run_argv, run_args))


def predict(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]) -> int:
    from tlstudy.cli import predict as command

    return command.run(args)


def export_model(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]) -> int:
    from tlstudy.cli import export_model as command

    return command.run(args)


HANDLERS = {
    "run": run,
    "trial": trial,
    "analyze": analyze,
    "dashboard": dashboard,
    "predict": predict,
    "export-model": export_model,
}
