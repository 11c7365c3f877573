"""Where model code runs: ``vm`` (the default, a QEMU VM), ``local`` (a subprocess, unsafe), or
any guest started by a command (``--guest-command``: a container, another language's agent)."""

from __future__ import annotations

import enum
import shlex
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from .connection import GuestConnection
from .starvation import thread_waits
from .transport import open_local_guest

__all__ = ["Isolation", "GuestOptions", "command_warning", "guest_argv", "open_guest"]


class Isolation(str, enum.Enum):
    """Where the guest agent runs."""

    vm = "vm"
    local = "local"


@dataclass(frozen=True)
class GuestOptions:
    """How to start a guest: isolation and, for the VM, its resources."""

    isolation: Isolation = Isolation.vm
    memory_mb: int = 1536
    cpus: int | None = None
    network: bool = False
    #: Start this program (argv) instead, a guest speaking the protocol on its stdin/stdout;
    #: ``isolation`` and the VM's resources then do not apply.
    command: tuple[str, ...] | None = None


def guest_argv(command: str | Sequence[str]) -> tuple[str, ...]:
    """A guest command as argv: a string is split as a POSIX shell would.

    >>> guest_argv("node guests/node/agent.js --max-sessions 8")
    ('node', 'guests/node/agent.js', '--max-sessions', '8')
    """
    argv = tuple(shlex.split(command)) if isinstance(command, str) else tuple(command)
    if not argv:
        raise ValueError("the guest command is empty")
    return argv


def command_warning(argv: Sequence[str]) -> str:
    """What the CLI prints before starting a guest by command: rlm does not sandbox it."""
    return (
        f"rlm: the guest `{shlex.join(argv)}` runs as a subprocess of this machine and rlm does "
        "not isolate it: model code is only as contained as that command makes it"
    )


@asynccontextmanager
async def open_guest(options: GuestOptions = GuestOptions()) -> AsyncIterator[GuestConnection]:
    """Start a guest as ``options`` say and yield a handshaken connection to it.

    ``local`` runs model-written code on this machine with your privileges: use it for tests
    and development only.
    """
    if options.command is not None or options.isolation is Isolation.local:
        async with open_local_guest(options.command) as stream, GuestConnection.open(
            stream, death_detail=stream.death_detail, cpu_waits=lambda: thread_waits(stream.process.pid)
        ) as connection:
            yield connection
        return
    from .vm.connect import open_vm_guest

    async with open_vm_guest(memory_mb=options.memory_mb, cpus=options.cpus, network=options.network) as connection:
        yield connection
