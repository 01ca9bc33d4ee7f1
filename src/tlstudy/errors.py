"""The error for a user's mistake.

A user mistake (a wrong path, a corrupt image, an impossible configuration) must reach the
terminal as one line and exit status 2, never as a traceback, and leave nothing stored changed:
every layer raises UserError, and the command line (tlstudy.cli.commands.main) prints it.
"""


class UserError(Exception):
    """Something the user can fix; the message says what and how."""
