"""The command line: every command's flags (parsers), the checks, settings and dispatch (commands),
and `tlstudy submit`, a study as a Ray job (submit). The only layer that sees argparse."""

from tlstudy.cli.commands import main

__all__ = ["commands", "main", "parsers", "submit"]
