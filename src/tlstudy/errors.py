"""User mistakes and how the command-line scripts report them.

A user mistake (a wrong path, a corrupt image, an impossible configuration) must
reach the terminal as one line and exit status 2, never as a traceback: the
scripts raise UserError and wrap their main in `run_cli`.
"""
import argparse
import sys


class UserError(Exception):
    """Something the user can fix; the message says what and how."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse prints the usage block before its error; keep it to one line."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def run_cli(main, argv=None):
    try:
        return main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
