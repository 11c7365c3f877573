"""Exit statuses of the ``rlm`` commands, and the one way a command ends on an error.

0: done. 1: what the command ran failed (``rlm exec``'s block, ``rlm image``'s build). 2: rlm
could not do its job (model server, guest, unreadable input; also click's usage errors). 3:
``rlm run`` was stopped by a budget before an answer. ``rlm conformance`` has its own
(``cli_conformance``).
"""

from __future__ import annotations

import sys
from typing import NoReturn

import typer

__all__ = ["EXIT_BUDGET", "EXIT_ERROR", "fail"]

EXIT_ERROR = 2
EXIT_BUDGET = 3


def fail(message: object, *, cause: BaseException | None = None) -> NoReturn:
    """Print ``rlm: <message>`` on stderr and end the command with ``EXIT_ERROR``.

    >>> try:
    ...     fail("no model server at http://localhost:11434")
    ... except typer.Exit as done:
    ...     done.exit_code
    2
    """
    print(f"rlm: {message}", file=sys.stderr)
    raise typer.Exit(EXIT_ERROR) from cause
