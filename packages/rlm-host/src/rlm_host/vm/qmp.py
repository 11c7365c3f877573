"""A QMP client (QEMU Machine Protocol, ``docs/interop/qmp-spec.rst``) on trio: one command at a
time, asynchronous events skipped. Used to continue a restored VM and to save a snapshot.

QMP speaks JSON objects, one per line: a greeting, then ``{"execute": ..., "arguments": ...}``
answered by ``{"return": ...}`` or ``{"error": {"class": ..., "desc": ...}}``; events
(``{"event": ...}``) may come at any time, between a command and its answer too.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from .errors import VMError

__all__ = ["QMPClient", "QMPClosedError", "cpu_registers", "cpu_summary"]


class QMPClosedError(VMError):
    """QEMU closed the QMP connection (it exited, most likely)."""


class QMPClient:
    """A connected QMP session, past the greeting and capabilities negotiation."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._buffer = b""

    @classmethod
    async def connect(cls, path: Path, *, check_alive: Callable[[], None] | None = None) -> QMPClient:
        """Connect to QEMU's QMP socket at ``path``, waiting for QEMU to open it (cancel or
        put a deadline around the call); ``check_alive`` raises if QEMU is gone meanwhile."""
        while True:
            try:
                stream = await trio.open_unix_socket(str(path))
                break
            except OSError as exc:
                # QEMU creates the socket file (bind) a moment before it listens.
                if exc.errno not in (errno.ENOENT, errno.ECONNREFUSED):
                    raise VMError(f"cannot connect to QMP at {path}: {exc}") from exc
            if check_alive is not None:
                check_alive()
            await trio.sleep(0.005)
        client = cls(stream)
        try:
            await client._reply()  # the greeting
            await client.execute("qmp_capabilities")
        except BaseException:
            await stream.aclose()
            raise
        return client

    async def execute(self, command: str, **arguments: Any) -> Any:
        """Run ``command`` and return its ``return`` value.

        Raises:
            VMError: QEMU answered with an error.
            QMPClosedError: the connection closed first.
        """
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        try:
            await self._stream.send_all(json.dumps(request).encode() + b"\r\n")
        except trio.BrokenResourceError as exc:
            raise QMPClosedError(f"QEMU closed the QMP connection: {exc}") from exc
        reply = await self._reply()
        if "error" in reply:
            raise VMError(f"QMP {command} failed: {reply['error']}")
        return reply.get("return")

    async def aclose(self) -> None:
        """Close the connection (idempotent)."""
        await self._stream.aclose()

    async def _reply(self) -> dict[str, Any]:
        while True:
            while b"\n" not in self._buffer:
                try:
                    chunk = await self._stream.receive_some(65536)
                except trio.BrokenResourceError as exc:  # a reset: QEMU exited
                    raise QMPClosedError(f"QEMU closed the QMP connection: {exc}") from exc
                if not chunk:
                    raise QMPClosedError("QEMU closed the QMP connection")
                self._buffer += chunk
            line, self._buffer = self._buffer.split(b"\n", 1)
            message: dict[str, Any] = json.loads(line)
            if "event" not in message:
                return message


async def cpu_registers(path: Path) -> str:
    """Each vCPU's instruction pointer and flags (``human-monitor-command`` ``info registers
    -a``) from the QMP socket at ``path``, one line each; empty when there is no such socket,
    a note when QEMU does not answer within 5 s."""
    if not path.exists():
        return ""
    with trio.move_on_after(5):
        try:
            qmp = await QMPClient.connect(path)
            try:
                text = await qmp.execute("human-monitor-command", **{"command-line": "info registers -a"})
            finally:
                await qmp.aclose()
        except VMError as exc:
            return f"(vCPU registers not read: {exc})"
        return "\n".join(cpu_summary(str(text)))
    return "(vCPU registers not read: QMP did not answer)"


def cpu_summary(registers: str) -> list[str]:
    """From HMP ``info registers -a``: one line per vCPU with its RIP, flags and privilege level.

    >>> cpu_summary("CPU#0\\nRAX=0 RBX=1\\nRIP=ffffffff81a0b2c4 RFL=00000246 [---Z-P-] CPL=0 II=0\\n"
    ...              "CPU#1\\nRIP=ffffffff8103e7a0 RFL=00000202 [-------] CPL=0 II=0")
    ['CPU#0 RIP=ffffffff81a0b2c4 RFL=00000246 [---Z-P-] CPL=0 II=0', 'CPU#1 RIP=ffffffff8103e7a0 RFL=00000202 [-------] CPL=0 II=0']
    """
    summary: list[str] = []
    cpu = ""
    for line in registers.splitlines():
        line = line.strip()
        if line.startswith("CPU#"):
            cpu = line.split()[0]
        elif line.startswith("RIP="):
            summary.append(f"{cpu} {line}".strip())
    return summary
