"""The `echo` command line (also `echo-lalm` and `python -m echo`, since shells run their builtin `echo` first).

Each area registers its own subcommands (a ``register(subparsers)`` in its ``cli`` module): ``generate``
(generate_cli), ``train sft | merge-lora | grpo`` (train.cli), ``make-tiny`` (models.cli), ``features``
(audio.cli), ``data`` (data.cli), ``eval`` (eval.cli), ``serve`` (serve.cli), ``convert`` (models.convert.cli).
``echo --help`` lists them by area (``AREAS``). Every option is spelled as cli_vocabulary.py says; the old
spellings it lists still work for one release, with a warning.
Errors are caught here only: an ``EchoError`` or ``OSError`` becomes one line ``echo <cmd>: error: ...`` and exit 2.
Warnings (what was changed to serve a request, a record skipped) go to stderr through ``console.print_warnings``,
each once, ``echo <cmd>: warning: ...``; they never change the exit code.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .errors import EchoError

# how ``echo --help`` groups the commands; every registered command is in exactly one area
AREAS = {
    "run a model": ("generate", "serve"),
    "train": ("train",),
    "data and evaluation": ("data", "eval"),
    "checkpoints and audio": ("make-tiny", "convert", "features"),
}


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand; each area registers its own, and ``echo --help`` lists them by ``AREAS``."""
    from .audio.cli import register as features
    from .data.cli import register as data
    from .eval.cli import register as eval_
    from .generate_cli import register as generate
    from .models.cli import register as make_tiny
    from .models.convert.cli import register as convert
    from .serve.cli import register as serve
    from .train.cli import register as train

    from .cli_vocabulary import add_deprecated_spellings

    parser = argparse.ArgumentParser(prog="echo", usage="%(prog)s [-h] COMMAND ...",
                                     description="Audio-interleaved reasoning for audio LLMs.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help=argparse.SUPPRESS,
                                prog="echo")  # listed by area in the epilog instead
    for register in (generate, serve, train, data, eval_, make_tiny, convert, features):
        register(sub)
    parser.epilog = _commands_by_area(sub)
    add_deprecated_spellings(parser)
    return parser


def _commands_by_area(sub: argparse._SubParsersAction) -> str:
    """The ``commands:`` block of ``echo --help``: each area's commands with their one-line help."""
    helps = {a.dest: a.help or "" for a in sub._choices_actions}
    unplaced = set(helps) - {name for names in AREAS.values() for name in names}
    if unplaced:
        raise RuntimeError(f"commands in no area of echo.cli.AREAS: {sorted(unplaced)}")
    width = max(map(len, helps)) + 2
    lines = ["commands (echo COMMAND --help for each):"]
    for area, names in AREAS.items():
        lines.append(f"  {area}:")
        lines += [f"    {name:<{width}}{helps[name]}" for name in names]
    return "\n".join(lines)


def _command(args: argparse.Namespace) -> str:
    """``generate``, ``train sft``, ``data synth``: how the error line names the subcommand."""
    parts = [args.command] + [getattr(args, k) for k in ("train_command", "data_command", "convert_command")
                              if getattr(args, k, None)]
    return " ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (EchoError, OSError) as exc:  # bad input, or a file that cannot be read or written: one line, no traceback
        print(f"echo {_command(args)}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
