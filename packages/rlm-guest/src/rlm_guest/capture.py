"""Per-thread routing of ``sys.stdout``/``sys.stderr`` into each session's capture.

Sessions run in worker threads of one process, so the process-wide ``sys.stdout`` is replaced once
by a router that writes to whatever sink the current thread has installed. Direct
``sys.stdout.write`` calls are captured as well as ``print``. A thread with no sink (the agent's
own threads, or a thread that model code started itself) writes to the agent's diagnostic stream.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from rlm_protocol import OutputCapture

__all__ = ["StreamRouter", "install_routers"]


class StreamRouter:
    """A ``TextIO``-like object that forwards each write to the calling thread's sink."""

    def __init__(self, fallback: TextIO, name: str) -> None:
        self._fallback = fallback
        self._local = threading.local()
        self.name = name
        self.encoding = "utf-8"
        self.errors = "replace"

    def _target(self) -> OutputCapture | TextIO:
        sink: OutputCapture | None = getattr(self._local, "sink", None)
        return sink if sink is not None else self._fallback

    def write(self, text: str) -> int:
        return self._target().write(text)

    def writelines(self, lines: list[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._target().flush()

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def fileno(self) -> int:
        # Code that asks for a descriptor (``subprocess`` with ``stdout=sys.stdout``) gets the
        # agent's diagnostic descriptor, never the protocol channel.
        return self._fallback.fileno()

    @contextmanager
    def capturing(self, sink: OutputCapture) -> Iterator[OutputCapture]:
        """Route this thread's writes to ``sink`` for the duration of the block."""
        previous = getattr(self._local, "sink", None)
        self._local.sink = sink
        try:
            yield sink
        finally:
            self._local.sink = previous


def install_routers(diagnostic: TextIO) -> tuple[StreamRouter, StreamRouter]:
    """Replace ``sys.stdout`` and ``sys.stderr`` with routers falling back to ``diagnostic``."""
    out = StreamRouter(diagnostic, "<stdout>")
    err = StreamRouter(diagnostic, "<stderr>")
    sys.stdout = out
    sys.stderr = err
    return out, err
