"""A guest program under test, spoken to over its stdin/stdout with blocking I/O and timeouts.

Stdlib only: a reader thread decodes the guest's stdout with the sans-IO ``FrameDecoder`` (so
every frame is validated against the typed union, which is the JSON Schema) and queues the
frames; a second thread keeps the tail of the guest's stderr for failure messages. The check that
waits for a frame owns the clock: every wait has a deadline, and missing it fails that check
with what was (not) received, never hangs the kit.
"""

from __future__ import annotations

import collections
import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from typing import Final, TypeVar

from ..codec import FrameDecoder, FrameEncoder
from ..errors import RemoteProtocolError
from ..frames import GUEST_FRAMES, Frame, UnknownFrame

__all__ = ["CheckFailed", "GuestPeer", "TraceHook"]

#: Called with ``"host"`` or ``"guest"`` (who sent it) and each frame, for logging and tests.
TraceHook = Callable[[str, Frame | UnknownFrame], None]

_FrameT = TypeVar("_FrameT", bound=Frame)

#: Lines of the guest's stderr quoted when a check fails because the guest died.
STDERR_TAIL_LINES: Final = 12

#: Seconds a guest gets to exit after its stdin is closed before it is killed.
EXIT_GRACE_SECONDS: Final = 2.0


class CheckFailed(Exception):
    """The guest did something the protocol forbids, or nothing in time; the message says what."""


class _Ended:
    """Queued by the reader when the guest's stdout ends or breaks the framing."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class GuestPeer:
    """One running guest process, seen from the host's side of the protocol.

    >>> import sys
    >>> peer = GuestPeer([sys.executable, "-m", "rlm_guest", "--stdio"])
    >>> type(peer.receive(timeout=30)).__name__
    'Hello'
    >>> peer.close()
    """

    def __init__(self, argv: Sequence[str], *, trace: TraceHook | None = None) -> None:
        self.argv = list(argv)
        self._trace = trace
        self._frames: queue.Queue[Frame | UnknownFrame | _Ended] = queue.Queue()
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._decoder = FrameDecoder()
        self._encoder = FrameEncoder()
        self._ended: _Ended | None = None
        #: Protocol violations seen by the reader (wrong direction); the running check fails.
        self.violations: list[str] = []
        try:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                bufsize=0,
            )
        except OSError as error:
            raise CheckFailed(f"cannot start the guest {self.argv!r}: {error}") from error
        self._reader = threading.Thread(target=self._read_frames, daemon=True)
        self._reader.start()
        self._stderr_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_reader.start()

    # --- reader threads ----------------------------------------------------------------------

    def _read_frames(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        fd = stdout.fileno()
        try:
            while data := os.read(fd, 1 << 20):
                for frame in self._decoder.feed(data):
                    self._check_direction(frame)
                    if self._trace is not None:
                        self._trace("guest", frame)
                    self._frames.put(frame)
            self._decoder.eof()
            self._frames.put(_Ended("the guest closed its stdout"))
        except RemoteProtocolError as error:
            # Every frame goes through the typed decoder: a schema violation lands here.
            self._frames.put(_Ended(f"the guest broke the protocol: {error}"))
        except OSError as error:
            self._frames.put(_Ended(f"reading the guest's stdout failed: {error}"))

    def _check_direction(self, frame: Frame | UnknownFrame) -> None:
        if isinstance(frame, UnknownFrame):
            # A 1.0 host advertised no capability that would let a guest send new kinds.
            self.violations.append(f"the guest sent a frame of unknown kind {frame.kind!r}")
        elif not isinstance(frame, GUEST_FRAMES):
            self.violations.append(
                f"the guest sent {type(frame).__name__}, which only a host may send"
            )

    def _read_stderr(self) -> None:
        stderr = self.process.stderr
        assert stderr is not None
        for line in stderr:
            self._stderr_tail.append(line.decode("utf-8", "replace").rstrip("\n"))

    # --- sending -----------------------------------------------------------------------------

    def send(self, frame: Frame) -> None:
        """Encode and write one frame.

        Raises:
            CheckFailed: the guest no longer reads its stdin.
        """
        if self._trace is not None:
            self._trace("host", frame)
        self.send_bytes(self._encoder.encode(frame))

    def send_bytes(self, data: bytes) -> None:
        """Write raw bytes (a hand-made frame); see :meth:`send`."""
        stdin = self.process.stdin
        assert stdin is not None
        try:
            stdin.write(data)
        except (BrokenPipeError, ValueError) as error:
            raise CheckFailed(f"the guest stopped reading its stdin{self.exit_detail()}") from error

    # --- receiving ---------------------------------------------------------------------------

    def receive(self, timeout: float) -> Frame:
        """The next frame the guest sends, waiting at most ``timeout`` seconds.

        Raises:
            CheckFailed: nothing within ``timeout``, the guest ended its output, or it broke the
                framing (the message says which).
        """
        if self._ended is not None:
            raise CheckFailed(self._ended.reason + self.exit_detail())
        try:
            item = self._frames.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            partial = self._decoder.buffered
            detail = f" ({partial} bytes of an incomplete frame received)" if partial else ""
            raise CheckFailed(
                f"the guest sent nothing within {timeout:.1f} s{detail}{self.exit_detail()}"
            ) from None
        if isinstance(item, _Ended):
            self._ended = item
            raise CheckFailed(item.reason + self.exit_detail())
        if isinstance(item, UnknownFrame):
            raise CheckFailed(f"the guest sent a frame of unknown kind {item.kind!r}")
        return item

    def receive_type(self, frame_type: type[_FrameT], timeout: float) -> _FrameT:
        """The next frame, which must be a ``frame_type``."""
        frame = self.receive(timeout)
        if not isinstance(frame, frame_type):
            raise CheckFailed(f"expected {frame_type.__name__}, got {describe(frame)}")
        return frame

    def wait_exit(self, timeout: float) -> int | None:
        """The guest's exit status once it exits within ``timeout`` seconds, else ``None``."""
        try:
            return self.process.wait(timeout=max(timeout, 0.0))
        except subprocess.TimeoutExpired:
            return None

    def ended(self, timeout: float) -> str | None:
        """Why the guest's output ended, if it ends within ``timeout`` (frames are dropped)."""
        deadline = time.monotonic() + timeout
        while self._ended is None:
            try:
                item = self._frames.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                return None
            if isinstance(item, _Ended):
                self._ended = item
        return self._ended.reason

    @property
    def alive(self) -> bool:
        """Whether the process runs and its output has not ended."""
        return self._ended is None and self.process.poll() is None

    def exit_detail(self) -> str:
        """``"; it exited with status N; stderr: ..."`` when known, for failure messages."""
        parts = []
        status = self.process.poll()
        if status is not None:
            parts.append(f"it exited with status {status}")
        if self._stderr_tail:
            parts.append("stderr tail: " + " | ".join(self._stderr_tail))
        return ("; " + "; ".join(parts)) if parts else ""

    def close(self) -> None:
        """Close stdin, give the guest a moment to exit, then kill it. Idempotent."""
        stdin = self.process.stdin
        if stdin is not None and not stdin.closed:
            try:
                stdin.close()
            except OSError:
                pass  # the guest already closed its end
        if self.wait_exit(EXIT_GRACE_SECONDS) is None:
            self.process.kill()
            self.process.wait()
        for thread, pipe in (
            (self._reader, self.process.stdout),
            (self._stderr_reader, self.process.stderr),
        ):
            thread.join(timeout=EXIT_GRACE_SECONDS)
            # A pipe still held open by an orphan of the guest keeps its reader blocked; closing
            # the descriptor under it could hand the number to an unrelated file, so leave it.
            if pipe is not None and not thread.is_alive():
                pipe.close()


def describe(frame: Frame) -> str:
    """A short description of a frame for failure messages (long fields abridged)."""
    text = repr(frame)
    return text if len(text) <= 300 else text[:297] + "..."
