"""One spelling per concept on the command line, and the old spellings that still work for one release.

``SPELLINGS`` maps each concept's option to the other names it has had or could be given; no subcommand may show
one of those (tests/cli/test_vocabulary.py walks every parser). ``DEPRECATED`` are the old spellings still
accepted: ``add_deprecated_spellings`` gives every parser that has the new option a hidden alias that warns on
stderr (``echo <command>: warning: ...``, console.py's path) and sets the same value.
"""

from __future__ import annotations

import argparse

from .console import print_warnings

SPELLINGS: dict[str, tuple[str, ...]] = {
    "--max-new-tokens": ("--max-tokens", "--max-length", "--max-gen-tokens"),
    "--max-relistens": ("--relisten-turns", "--max-turns", "--relistens"),
    "--out": ("--output", "--output-dir", "--out-dir"),
    "--overwrite": ("--force", "--replace"),
}

# old spelling -> the option it stands for; accepted (with a warning) until the next release
DEPRECATED: dict[str, str] = {
    "--max-tokens": "--max-new-tokens",
    "--relisten-turns": "--max-relistens",
    "--output": "--out",
    "--force": "--overwrite",
}


class _DeprecatedSpelling(argparse.Action):
    """An old spelling of ``new``: says so once on stderr, then stores the value as ``new`` would."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        command = parser.prog.split(" ", 1)[1] if " " in parser.prog else parser.prog
        print_warnings(command, [f"{option_string} is deprecated and will be removed in the next release; "
                                 f"use {self.new}"])
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def add_deprecated_spellings(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` and every subcommand under it a hidden alias for each old spelling of an option it has."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases map several names to one parser
                add_deprecated_spellings(sub)
    options = parser._option_string_actions
    for old, new in DEPRECATED.items():
        target = options.get(new)
        if target is None or old in options:
            continue
        parser.add_argument(old, action=_DeprecatedSpelling, new=new, dest=target.dest, nargs=target.nargs,
                            const=target.const, type=target.type, choices=target.choices,
                            metavar=target.metavar, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
