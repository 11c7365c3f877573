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

__all__ = ["QMPClient", "QMPClosedError"]


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
