"""Byte streams to guests. The connection takes any ``trio.abc.Stream``; these make them.

``open_local_guest`` runs the agent as a subprocess of the host: model code then runs **on the
host, unsandboxed**. It exists for tests, development and the conformance kit
(``--isolation local``); the VM transport lives in :mod:`rlm_host.vm`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import IO

import trio

__all__ = ["LocalGuestStream", "local_guest_command", "open_local_guest"]

#: Grace period for a local guest to exit after its input closes, before it is killed.
EXIT_GRACE_SECONDS = 2.0


def local_guest_command() -> list[str]:
    """The command that starts this host's own guest agent over stdio."""
    return [sys.executable, "-m", "rlm_guest", "--stdio"]


class LocalGuestStream(trio.abc.Stream):
    """The stdin/stdout of a guest subprocess as one stream, with the process attached."""

    def __init__(self, process: trio.Process) -> None:
        assert process.stdin is not None and process.stdout is not None
        self._send = process.stdin
        self._receive = process.stdout
        self.process = process

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._send.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._send.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._receive.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self._send.aclose()
        await self._receive.aclose()

    async def death_detail(self) -> str:
        """Exit status of the guest process, for ``GuestDiedError``."""
        # The channel closes a moment before the process can be reaped: give it that moment.
        with trio.move_on_after(0.5):
            await self.process.wait()
        code = self.process.poll()
        if code is None:
            return f"guest process {self.process.pid} is still running"
        if code < 0:
            return f"guest process {self.process.pid} was killed by signal {-code}"
        return f"guest process {self.process.pid} exited with status {code}"


@asynccontextmanager
async def open_local_guest(
    command: Sequence[str] | None = None,
    *,
    stderr: int | IO[bytes] | None = None,
    env: dict[str, str] | None = None,
) -> AsyncIterator[LocalGuestStream]:
    """Start a guest agent as a local subprocess and yield its stdio as a stream.

    The process is terminated when the block exits, however it exits (its input is closed
    first so that it can exit cleanly, then it is killed after ``EXIT_GRACE_SECONDS``).
    ``stderr`` receives the agent's diagnostics and anything model code writes to descriptor 2
    (default: inherited).
    """
    argv = list(command) if command is not None else local_guest_command()
    process = await trio.lowlevel.open_process(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=env if env is not None else {**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )
    stream = LocalGuestStream(process)
    try:
        yield stream
    finally:
        with trio.CancelScope(shield=True):
            await _stop(process)


async def _stop(process: trio.Process) -> None:
    if process.stdin is not None:
        await process.stdin.aclose()
    with trio.move_on_after(EXIT_GRACE_SECONDS):
        await process.wait()
    if process.poll() is None:
        try:
            # The agent leads its own session: kill every process it left behind too.
            os.killpg(process.pid, 9)
        except ProcessLookupError:
            pass
        await process.wait()
    if process.stdout is not None:
        await process.stdout.aclose()
