"""Rewriting a command line: the long option a token names (`option_at`), every value of an option
replaced (`replace_option`: tlstudy submit ships a space file under another path), and the command
that reruns this one with its storage password hidden (`command_line`). No torch, Ray or Optuna here."""

import shlex

from tlstudy.study.storage import display_url


def option_at(parser, token):
    """The long option a command-line token names for `parser` (argparse's unique prefixes
    included), and its inline =value or None; (None, None) for anything else."""
    if not token.startswith("--"):
        return None, None
    name, eq, value = token.partition("=")
    # Private, for want of a public way: argparse lists a parser's option strings nowhere else.
    longs = [o for o in parser._option_string_actions if o.startswith("--")]
    hits = [name] if name in longs else [o for o in longs if o.startswith(name)]
    return (hits[0], value if eq else None) if len(hits) == 1 else (None, None)


def replace_option(parser, argv, option, change):
    """argv with every value of `option` (--opt X, --opt=X, or an abbreviation) replaced by change(X)."""
    out, i = [], 0
    while i < len(argv):
        name, inline = option_at(parser, argv[i])
        if name == option and inline is not None:
            out.append(f"{argv[i].partition('=')[0]}={change(inline)}")
        elif name == option and i + 1 < len(argv):
            out += [argv[i], change(argv[i + 1])]
            i += 1
        else:
            out.append(argv[i])
        i += 1
    return out


def command_line(prog, parser, argv):
    """The command that re-runs this one, quoted, with the storage URL's password hidden."""
    return f"{prog} " + shlex.join(replace_option(parser, argv, "--storage", display_url))
