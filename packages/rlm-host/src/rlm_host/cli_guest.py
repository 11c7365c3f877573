"""What the commands that start a guest parse and say about it: ``--guest-command`` as argv,
and the warning that model code is not sandboxed (``--isolation local`` or a guest command)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import typer

from .isolation import command_warning, guest_argv

__all__ = ["LOCAL_WARNING", "guest_command_argv", "warn_unsandboxed"]

LOCAL_WARNING = "rlm: --isolation local runs the code on this machine, unsandboxed"


def guest_command_argv(command: str | Sequence[str]) -> tuple[str, ...]:
    """``--guest-command`` as argv; an empty one is a usage error of that option.

    >>> guest_command_argv("node agent.js")
    ('node', 'agent.js')
    """
    try:
        return guest_argv(command)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--guest-command") from error


def warn_unsandboxed(isolation: str, command: tuple[str, ...] | None) -> None:
    """Say on stderr when model code will run outside the VM: a guest command, which rlm does
    not isolate, wins over ``--isolation`` (whose value is ``"vm"`` or ``"local"``)."""
    if command is not None:
        print(command_warning(command), file=sys.stderr)
    elif isolation == "local":
        print(LOCAL_WARNING, file=sys.stderr)
