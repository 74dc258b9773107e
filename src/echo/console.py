"""What a command says on stderr beside its results: each warning once, ``echo <command>: warning: ...``.

Warnings (what was changed to serve a request, a record skipped) never change the exit code; errors are
``echo.cli``'s (one line, exit 2). This module sits below every subcommand's ``cli`` so that they need not import
the top-level command line back.
"""

from __future__ import annotations

import sys
from typing import Iterable


def print_warnings(command: str, warnings: Iterable[str], where: str = "", limit: int = 20) -> None:
    """Each distinct warning once on stderr as ``echo <command>: warning: ...``; past ``limit``, one line counts the
    rest and says ``where`` the command's output lists them all."""
    distinct = list(dict.fromkeys(warnings))
    for text in distinct[:limit]:
        print(f"echo {command}: warning: {text}", file=sys.stderr)
    if len(distinct) > limit:
        print(f"echo {command}: warning: ... and {len(distinct) - limit} more" + (f" ({where})" if where else ""),
              file=sys.stderr)
