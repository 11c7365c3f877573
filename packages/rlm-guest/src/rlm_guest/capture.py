"""Capture of a session process's output: ``sys.stdout``/``sys.stderr`` and descriptors 1 and 2.

A session runs in a process of its own, so capture can be process-wide: Python-level writes
(``print``, ``sys.stdout.write``, from any thread) go straight into the running block's
``OutputCapture``; bytes written to descriptors 1 and 2 (``os.system``, a subprocess, C code) come
through pipes that pump threads decode into the same captures.
"""

from __future__ import annotations

import codecs
import os
import select
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from rlm_protocol import OutputCapture

__all__ = ["Capture", "SinkStream"]


class SinkStream:
    """A ``TextIO``-like stream writing into whichever capture is current (or nowhere)."""

    def __init__(self, name: str, fileno: int) -> None:
        self.name = name
        self._fileno = fileno
        self.sink: OutputCapture | None = None
        self.encoding = "utf-8"
        self.errors = "replace"

    def write(self, text: str) -> int:
        sink = self.sink
        if sink is None:
            return len(text)
        return sink.write(text)

    def writelines(self, lines: list[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def fileno(self) -> int:
        # ``subprocess.run(..., stdout=sys.stdout)`` gets the captured descriptor.
        return self._fileno


class _Pump:
    """Decodes one descriptor's pipe into the current sink of a ``SinkStream``."""

    def __init__(self, read_fd: int, stream: SinkStream) -> None:
        self._fd = read_fd
        self._stream = stream
        self._lock = threading.Lock()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._closed = False
        threading.Thread(target=self._run, name=f"pump-{stream.name}", daemon=True).start()

    def _read_available(self) -> bool:
        # Called with the lock held; False when nothing was waiting in the pipe.
        if self._closed:
            return False
        ready, _, _ = select.select([self._fd], [], [], 0)
        if not ready:
            return False
        data = os.read(self._fd, 65536)
        if not data:
            # Model code closed descriptor 1 or 2: the pipe is at its end for good (and a
            # readable end-of-file would otherwise spin this thread forever).
            self._closed = True
            return False
        text = self._decoder.decode(data)
        sink = self._stream.sink
        if sink is not None and text:
            sink.write(text)
        return True

    def _run(self) -> None:
        while not self._closed:
            select.select([self._fd], [], [])
            with self._lock:
                self._read_available()

    def drain(self) -> None:
        """Move everything already in the pipe into the current sink (end of a block)."""
        with self._lock:
            while self._read_available():
                pass


class Capture:
    """Installs the process-wide capture once; :meth:`into` scopes it to one block."""

    def __init__(self) -> None:
        self.stdout = SinkStream("<stdout>", 1)
        self.stderr = SinkStream("<stderr>", 2)
        self._pumps: list[_Pump] = []
        for fd, stream in ((1, self.stdout), (2, self.stderr)):
            read_fd, write_fd = os.pipe()
            os.dup2(write_fd, fd)
            os.close(write_fd)
            os.set_inheritable(fd, True)
            self._pumps.append(_Pump(read_fd, stream))
        sys.stdout = self.stdout
        sys.stderr = self.stderr

    @contextmanager
    def into(self, out: OutputCapture, err: OutputCapture) -> Iterator[None]:
        self.stdout.sink, self.stderr.sink = out, err
        try:
            yield
        finally:
            for pump in self._pumps:
                pump.drain()
            self.stdout.sink = self.stderr.sink = None
