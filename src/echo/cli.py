"""The `echo` command line (also `echo-lalm` and `python -m echo`, since shells run their builtin `echo` first).

Each area registers its own subcommands (a ``register(subparsers)`` in its ``cli`` module): ``generate``
(generate_cli), ``train sft | merge-lora | grpo`` (train.cli), ``make-tiny`` (models.cli), ``features``
(audio.cli), ``data`` (data.cli), ``eval`` (eval.cli), ``serve`` (serve.cli), ``convert`` (models.convert.cli).
Errors are caught here only: an ``EchoError`` or ``OSError`` becomes one line ``echo <cmd>: error: ...`` and exit 2.
Warnings (what was changed to serve a request, a record skipped) go to stderr through ``console.print_warnings``,
each once, ``echo <cmd>: warning: ...``; they never change the exit code.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .errors import EchoError


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand; each area registers its own (in the order ``echo --help`` lists them)."""
    from .audio.cli import register as features
    from .data.cli import register as data
    from .eval.cli import register as eval_
    from .generate_cli import register as generate
    from .models.cli import register as make_tiny
    from .models.convert.cli import register as convert
    from .serve.cli import add_parser as serve
    from .train.cli import register as train

    parser = argparse.ArgumentParser(prog="echo", description="Audio-interleaved reasoning for audio LLMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    for register in (generate, train, make_tiny, features, data, eval_, serve, convert):
        register(sub)
    return parser


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
