"""Where model code runs: ``vm`` (the default, a QEMU VM) or ``local`` (a subprocess, unsafe)."""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from .connection import GuestConnection
from .starvation import thread_waits
from .transport import open_local_guest

__all__ = ["Isolation", "GuestOptions", "open_guest"]


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


@asynccontextmanager
async def open_guest(options: GuestOptions = GuestOptions()) -> AsyncIterator[GuestConnection]:
    """Start a guest as ``options`` say and yield a handshaken connection to it.

    ``local`` runs model-written code on this machine with your privileges: use it for tests
    and development only.
    """
    if options.isolation is Isolation.local:
        async with open_local_guest() as stream, GuestConnection.open(
            stream, death_detail=stream.death_detail, cpu_waits=lambda: thread_waits(stream.process.pid)
        ) as connection:
            yield connection
        return
    from .vm.connect import open_vm_guest

    async with open_vm_guest(options) as connection:
        yield connection
