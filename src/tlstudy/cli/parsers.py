"""The `tlstudy` parsers (`build_parser`, `subparser`) and the argument types that refuse a bad value.
`tlstudy trial`'s, `tlstudy submit`'s, `tlstudy predict`'s and `tlstudy export-model`'s flags live with
them (cli/trial_flags.py, cli/submit.py, cli/predict.py, cli/export_model.py) and load only for them;
the rewriting of a command line is cli/command_line.py. No torch, Ray or Optuna here: `--help`
answers at once."""

import argparse
import importlib
import textwrap

from tlstudy.settings import AUTO_MAX_SEEDS, CHOICES, DEFAULTS, PROFILES, PRUNERS


class ArgumentParser(argparse.ArgumentParser):
    """argparse prints the usage block before its error; keep it to one line."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Each flag's default after its help, unless there is none to show (None, a bare switch)
    or the help says it already; the description as written."""

    def _get_help_string(self, action):  # argparse's hook for help text: how its formatters are made
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


# ---------------------------------------------------------------- argument types


def _type(name, convert, ok, what):
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    parse.__name__ = name
    return parse


count = _type("count", int, lambda n: n >= 0, "a whole number >= 0")
positive = _type("positive", int, lambda n: n >= 1, "a whole number >= 1")
image_size = _type("image_size", int, lambda n: n >= 16, "an image size of at least 16 px")
share = _type("share", float, lambda x: 0 < x < 1, "a number between 0 and 1")
positive_float = _type("positive_float", float, lambda x: x > 0, "a positive number")
nonneg_float = _type("nonneg_float", float, lambda x: x >= 0, "a number >= 0")
seeds = _type(
    "seeds", lambda t: t if t == "auto" else int(t), lambda n: n == "auto" or n >= 0, "auto or a whole number >= 0"
)


def sizes(text):
    try:
        values = tuple(int(v) for v in text.split(","))
        assert len(values) == 3 and min(values) > 0
        return values
    except (ValueError, AssertionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not three positive integers train,val,test") from None


# ---------------------------------------------------------------- the parsers


def parsers(only=None):
    """The `tlstudy` parser, and {command: its parser}; with `only`, only that command's flags are
    added (the others answer with their summary), so a command loads no other command's flags."""
    about = "A reproducible hyperparameter-search study of transfer learning on chest X-rays (Ray Tune + Optuna)."
    p = ArgumentParser(prog="tlstudy", formatter_class=HelpFormatter, description=about + " See COMMAND --help.")
    sub = p.add_subparsers(dest="subcommand", required=True, metavar="COMMAND", parser_class=ArgumentParser)
    for name, (add, summary) in COMMANDS.items():
        command = sub.add_parser(name, help=summary, description=summary, formatter_class=HelpFormatter)
        if only in (None, name):
            add(command)
    return p, sub.choices


def build_parser(argv=()):
    """The `tlstudy` parser: every command's flags, or only those of the command argv names."""
    return parsers(argv[0] if argv and argv[0] in COMMANDS else None)[0]


def _describe(p, text, verbatim=""):
    p.description = f"{p.description}.\n\n{textwrap.fill(text, 88)}" + (f"\n{verbatim}" if verbatim else "")


def add_run_flags(p):
    _describe(
        p,
        "Rerunning the same command continues the study in its storage without repeating finished "
        "trials. `--list-spaces` lists the spaces.",
    )
    p.add_argument(
        "--space",
        help="a name in ./search_spaces/ or among the shipped spaces (taskA..taskE), "
        "or a path to a space file (required)",
    )
    p.add_argument("--list-spaces", action="store_true", help="list the spaces, a line each, and exit")
    p.add_argument(
        "--show-config",
        action="store_true",
        help="print the resolved space, fixed settings, profile and budget, and exit",
    )
    p.add_argument(
        "--profile",
        choices=tuple(PROFILES),
        help="quick (the default where Ray has no GPU) or full (the report's protocol; the default where it "
        "has one); a stored study's by default when it continues one",
    )
    p.add_argument("--verbose", action="store_true", help="Ray Tune's progress tables and a line per trial and epoch")
    g = p.add_argument_group("data")
    g.add_argument("--data", default="phantom", help="phantom, a chest_xray folder, a .npz file or a .npy folder")
    g.add_argument("--image-size", type=image_size, help="pixels per side (default: the profile's)")
    g.add_argument(
        "--max-train",
        type=count,
        help="a stratified subset of train of this size; 0: every image (default: the profile's)",
    )
    g.add_argument(
        "--phantom-sizes",
        type=sizes,
        metavar="TRAIN,VAL,TEST",
        help="sizes of the phantom data's splits (default: the profile's)",
    )
    g.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images instead of stopping")
    g = p.add_argument_group("trials")
    g.add_argument("--epochs", type=positive, help="epochs per trial (default: the profile's)")
    g.add_argument(
        "--step-size", type=positive, help="epochs between the step schedule's lr drops (default: the profile's)"
    )
    g.add_argument(
        "--weights-policy",
        choices=CHOICES["weights_policy"],
        help="strict: fail when a pretrained file is missing; auto: train from a random init and say so "
        "(default: the profile's)",
    )
    g.add_argument(
        "--frozen-bn",
        choices=CHOICES["frozen_bn"],
        help=f"frozen mode's BatchNorm: eval keeps its statistics, train lets them adapt "
        f"(default: the space's, else {DEFAULTS['frozen_bn']})",
    )
    g.add_argument(
        "--budget",
        type=positive,
        help="search trials per cell, the first on the report's protocol (default: the profile's: "
        + ", ".join(f"{k} {v['budget']}" for k, v in PROFILES.items())
        + ")",
    )
    g.add_argument(
        "--seeds",
        type=seeds,
        help="replicates of each cell's best search configuration, each with its own training seed; auto: "
        "the profile's first round, then 2 more at a time to the cells of claims still undecided, up to "
        "--max-seeds (default: the profile's: "
        + ", ".join(
            f"{k} {v['seeds']}" + (f" then auto to {v['max_seeds']}" if v["max_seeds"] > v["seeds"] else "")
            for k, v in PROFILES.items()
        )
        + ")",
    )
    g.add_argument(
        "--max-seeds",
        type=positive,
        help=f"with --seeds auto: the most replicates a cell gets (default: the profile's, or {AUTO_MAX_SEEDS})",
    )
    g.add_argument("--pruner", choices=PRUNERS, default="median", help="the Optuna pruner, asked after every epoch")
    g.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds the data (phantom, val split, train subset) and the sampler; training seeds are the replicates'",
    )
    g.add_argument("--max-retries", type=count, default=1, help="run the cells of failed trials again up to N times")
    g.add_argument(
        "--trial-retries",
        type=count,
        default=1,
        help="restart a trial whose worker died up to N times, from its last epoch's checkpoint",
    )
    g.add_argument(
        "--keep-models",
        choices=("best", "cells", "all", "none"),
        default="best",
        help="which COMPLETE trials keep their best-val-loss model: the study's best (by val loss), "
        "each cell's best, all, or none",
    )
    g.add_argument(
        "--allow-failures",
        action="store_true",
        help="a cell that ends without a COMPLETE trial is a warning, not exit status 1",
    )
    add_claim_flags(p.add_argument_group("analysis"))
    g = p.add_argument_group("storage")
    g.add_argument("--results", default="results", help="exports go to RESULTS/<space>/, Ray's to RESULTS/ray/")
    g.add_argument(
        "--storage",
        help="an SQLAlchemy URL or an Optuna journal file (*.log); keep passwords out of "
        "it: PGPASSWORD or ~/.pgpass (default: sqlite:///RESULTS/optuna.db)",
    )
    g.add_argument("--study-name", help="the study's name in the storage (default: the space's name)")
    g.add_argument("--new-study", action="store_true", help="delete a stored study of the same name first")
    g.add_argument(
        "--heartbeat",
        type=count,
        default=10,
        help="seconds between the heartbeats of running trials (SQL storages); a trial unbeaten for "
        "3 heartbeats belongs to a dead driver and is failed by the next one; 0: none, every "
        "RUNNING trial counts as abandoned (one driver at a time)",
    )
    g = p.add_argument_group("resources")
    g.add_argument(
        "--address", help="join this Ray cluster (default: $RAY_ADDRESS, else a Ray of its own on 127.0.0.1)"
    )
    g.add_argument("--num-cpus", type=positive, help="CPUs for a Ray of its own (default: all)")
    g.add_argument("--cpus-per-trial", type=positive_float, default=1, help="CPUs Ray reserves for each trial")
    g.add_argument(
        "--gpus-per-trial",
        type=nonneg_float,
        help="GPUs Ray reserves for each trial; 0.25 packs four trials on a GPU (default: 0 where Ray has "
        "no GPU, else as many trials per GPU as its memory fits, at most 4)",
    )
    g.add_argument(
        "--max-concurrent",
        type=positive,
        help="trials at once (default: as many as Ray's resources fit when the study starts)",
    )


def add_trial_flags(p):
    from tlstudy.cli import trial_flags  # tlstudy trial's flags load only for it (or for --help)

    trial_flags.add(p)


def add_analyze_flags(p):
    _describe(
        p,
        "Reads the Optuna study (no Ray needed) and writes RESULTS/<space>/REPORT.md with cells.csv, "
        "architectures.csv, claims.csv, report_vs_study.csv, importances.csv, tableN.csv and the "
        "plots. tlstudy run runs it at its end.",
    )
    p.add_argument("--space", required=True, help="a name in ./search_spaces/ or a shipped one, or a space file")
    p.add_argument("--results", default="results", help="the study's results folder; writes RESULTS/<space>/")
    p.add_argument("--storage", help="the study's storage (default: sqlite:///RESULTS/optuna.db)")
    p.add_argument("--study-name", help="the study's name in the storage (default: the space's name)")
    add_claim_flags(p)


def add_claim_flags(g):
    g.add_argument("--margin", type=share, default=0.02, help="the equivalence margin, in accuracy, of 'no effect'")
    g.add_argument("--alpha", type=share, default=0.05, help="the family-wise error rate of the claims (Holm)")


def add_dashboard_flags(p):
    _describe(
        p,
        "Serves the study's storage and its learning-curve artifacts on 127.0.0.1 and prints the "
        "address to open. The same with optuna-dashboard's own command:",
        "    optuna-dashboard sqlite:///results/optuna.db --artifact-dir results/artifacts --port 8080",
    )
    p.add_argument("--space", help="the study to point at (default: list every study in the storage)")
    p.add_argument("--study-name", help="the study's name in the storage (default: the space's name)")
    p.add_argument("--results", default="results", help="the study's results folder (its artifacts/ are served)")
    p.add_argument("--storage", help="the study's storage (default: sqlite:///RESULTS/optuna.db)")
    p.add_argument("--host", default="127.0.0.1", help="keep the default unless you mean to expose the study")
    p.add_argument("--port", type=int, default=8080, help="the port to serve on")


def flags_of(module):
    """The flags of a command whose module loads only for it (or for --help): tlstudy.cli.MODULE.add_flags."""
    return lambda p: importlib.import_module(f"tlstudy.cli.{module}").add_flags(p)


COMMANDS = {
    "run": (add_run_flags, "Run (or continue) a search study with Ray Tune + Optuna"),
    "trial": (add_trial_flags, "Run ONE trial of the study, without Ray"),
    "analyze": (add_analyze_flags, "Rebuild the report's tables, statistics, claims and plots from a stored study"),
    "dashboard": (add_dashboard_flags, "Browse a study in optuna-dashboard"),
    "submit": (flags_of("submit"), "Run a study on a Ray cluster through Ray's job system"),
    "predict": (flags_of("predict"), "Score images with a kept model, with Grad-CAM overlays on request"),
    "export-model": (flags_of("export_model"), "Write a study's kept model (its best, a trial's, a cell's) to a file"),
}


def subparser(name):
    """The parser of one command (`tlstudy NAME`)."""
    return parsers(name)[1][name]
