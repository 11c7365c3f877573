"""The guest agent: serves a host over one channel and runs each session in a process of its own.

The agent is a single-threaded router around a ``selectors`` loop. It handles the connection-level
frames itself (``welcome``, ``open_session``, ``close_session``, ``interrupt``, ``shutdown``) and
relays the rest between the host and the session processes as raw frames, reading only their
envelope: a 16 MiB ``set_vars`` is copied, never decoded, on its way through. The processes
themselves (forks, the spare, signals, kills, resets) are ``supervisor.py``'s; prompts kept by
reference are ``kept.py``'s.
"""

from __future__ import annotations

import collections
import os
import selectors
import time
from typing import TextIO

from rlm_protocol import (
    HEADER_BYTES,
    BindRefs,
    Bye,
    CloseSession,
    ErrorFrame,
    Exec,
    Frame,
    FrameDecoder,
    FrameEncoder,
    Interrupt,
    Limits,
    OpenSession,
    ProtocolError,
    SessionClosed,
    SessionOpened,
    Shutdown,
    UnknownFrame,
    Welcome,
    decode_body,
    decode_envelope,
)

from .cgroups import SessionCgroups
from .channel import Channel
from .handshake import DEFAULT_LIMITS, check_welcome, hello
from .kept import KeptPrompts
from .processes import become_subreaper, reap_children
from .relay import SessionRelay
from .frame_head import routing_in_head
from .shared import KEEP_AT_MOST, MAX_FDS_PER_MESSAGE, BufferPool, FrameComing, SharedBuffer, SharedFrame
from .supervisor import INTERRUPT_GRACE_SECONDS, SessionProcess, Supervisor

__all__ = ["Agent", "DEFAULT_LIMITS", "INTERRUPT_GRACE_SECONDS"]

#: A frame still missing more than this is read to its end at once (``Channel.read_into``);
#: the host is sending it right now, so the wait is bounded by the channel's speed.
_TIGHT_READ_BYTES = 64 * 1024

#: After a close that killed a session through its cgroup, the /proc sweep for processes that
#: left the cgroup waits for a quiet moment of the channel (no frame for this long; at the latest
#: ``supervisor._SWEEP_AT_THE_LATEST``).
_SWEEP_WHEN_IDLE_FOR = 0.02

#: How often a busy loop reaps the orphans of model code (an idle one reaps at once).
_REAP_EVERY = 0.5

#: The longest a closed session's teardown and reply wait for the agent to be idle.
_CLOSE_AT_THE_LATEST = 0.05

_SESSION_FRAMES = frozenset({"set_vars", "exec", "host_call_reply"})

#: Frames the agent decodes and answers itself (``exec`` and ``bind_refs`` are checked here,
#: then relayed to their session).
_AGENT_FRAMES = frozenset(
    {"welcome", "open_session", "close_session", "interrupt", "shutdown", "exec", "bind_refs"}
)

#: Large frames of these kinds reach their session process in a shared buffer (``shared.py``);
#: an ``exec`` is checked by the agent first and takes the socket.
_SHARED_KINDS = frozenset({"set_vars", "host_call_reply"})


class _Stop(Exception):
    """Leave the serve loop (``shutdown``)."""


class Agent:
    """Serves one host at a time over ``channel``."""

    def __init__(
        self,
        channel: Channel,
        diagnostic: TextIO,
        limits: Limits = DEFAULT_LIMITS,
        *,
        cgroups: bool = False,
        shared_bytes: int = 0,
        pool: SharedBuffer | None = None,
    ) -> None:
        self.channel = channel
        self.limits = limits
        self._log = diagnostic
        self._encoder = FrameEncoder(limits.max_frame_bytes)
        self._selector = selectors.DefaultSelector()
        #: The shared buffer kept for the next large frame (``shared.py``): ``pool``, populated
        #: ahead of time (in a VM, before the snapshot: ``__main__.prepare_vm``), or
        #: ``shared_bytes`` mapped now and paged in by the first large frame. Populating it here
        #: would cost every VM start ~0.3 s of page faults under TCG.
        self._buffers = BufferPool(pool or (SharedBuffer(shared_bytes) if shared_bytes else None))
        #: Prompts kept by reference (``keep_ref``).
        self._kept = KeptPrompts()
        # Orphans of model code become our children, so that the stray sweep finds them.
        become_subreaper()
        self._processes = Supervisor(
            limits,
            self._selector,
            self._buffers,
            # One cgroup per session process (``cgroups=True``: in a VM, where the agent is root).
            cgroups=SessionCgroups(cgroups),
            send=self.send,
            log=self.log,
            close_in_child=self._close_in_child,
        )
        #: When the loop reaps exited children next, however busy.
        self._reap_due = 0.0
        #: Closed sessions whose processes were sent SIGKILL but whose teardown (waiting for
        #: the cgroup to empty, reaping, the reply) waits for a quiet moment,
        #: with the ``CloseSession`` and when it came: see ``_on_close_session``.
        self._closing: collections.deque[tuple[SessionProcess, CloseSession, float]] = (
            collections.deque()
        )
        self._relay = SessionRelay(
            self._processes, self._buffers, self._kept, write=channel.write, send=self.send
        )

    # --- output to the host -----------------------------------------------------------------

    def send(self, frame: Frame) -> None:
        self.channel.write(self._encoder.encode_view(frame))

    def log(self, message: str) -> None:
        print(f"rlm-guest: {message}", file=self._log, flush=True)

    # --- the loop ---------------------------------------------------------------------------

    def serve(self) -> int:
        """Serve hosts until ``shutdown`` (exit 0) or a protocol error (exit 2).

        Over a device that stays open (virtio-serial) a host that disconnects is followed by
        waiting for the next one; over stdio the end of input ends the agent.
        """
        while True:
            self.channel.wait_connected()
            self.send(hello(self.limits))
            try:
                reconnect = self._serve_connection()
            except _Stop:
                return 0
            except ProtocolError as error:
                self.log(f"protocol error, closing: {error}")
                self._drop_all()
                self.send(ErrorFrame(code="bad_request", message=f"protocol error: {error}"))
                return 2
            if not reconnect:
                return 0

    def _serve_connection(self) -> bool:
        decoder = FrameDecoder(self.limits.max_frame_bytes)
        host_fd = self.channel.read_fd
        self._selector.register(host_fd, selectors.EVENT_READ, None)
        try:
            while True:
                timeout = self._next_timeout()
                events = self._selector.select(timeout)
                sweep_due = self._processes.sweep_due
                # A quiet moment is a wait that found no frame, not a look (the timeout of 0
                # while a close is pending): the sweep, a /proc scan of 20-60 ms under TCG, ran
                # in the next close of a back-to-back loop and doubled it.
                quiet = not events and timeout != 0.0
                if sweep_due is not None and (quiet or time.monotonic() >= sweep_due):
                    self._processes.sweep_strays()
                for key, mask in events:
                    if key.fd == host_fd:
                        data = self.channel.read()
                        if not data:
                            decoder.eof()
                            self._drop_all()
                            return self.channel.reconnects
                        for raw in decoder.feed_raw(data):
                            self._from_host(raw)
                        if decoder.missing > _TIGHT_READ_BYTES:
                            self._large_from_host(*decoder.detach_head())
                        continue
                    process = self._processes.by_fd.get(key.fd)
                    if process is None:
                        continue  # discarded by an earlier event of this same batch
                    if mask & selectors.EVENT_WRITE:
                        self._processes.flush(process)
                    if mask & selectors.EVENT_READ:
                        self._relay.receive(process)
                self._processes.run_timers()
                if self._closing and (
                    not events or time.monotonic() - self._closing[0][2] >= _CLOSE_AT_THE_LATEST
                ):
                    self._finish_close()
                if not events or time.monotonic() >= self._reap_due:
                    # Orphans of model code only; a session's own processes are reaped where
                    # it ends. Not every loop turn: a waitpid per frame is a syscall wasted.
                    reap_children()
                    self._reap_due = time.monotonic() + _REAP_EVERY
        finally:
            self._selector.unregister(host_fd)

    def _next_timeout(self) -> float | None:
        if self._closing:
            return 0.0  # only look for ready frames before the next teardown
        deadlines = self._processes.deadlines()
        sweep_due = self._processes.sweep_due
        if sweep_due is not None:
            # A quiet moment this long runs the sweep; it never waits past its due time.
            deadlines.append(min(sweep_due, time.monotonic() + _SWEEP_WHEN_IDLE_FOR))
        if not deadlines:
            # Wake up now and then to reap processes that model code left behind.
            return 5.0
        return max(0.0, min(deadlines) - time.monotonic())

    # --- frames from the host ---------------------------------------------------------------

    def _from_host(self, raw: bytes | bytearray) -> None:
        envelope = decode_envelope(raw)
        if envelope.kind in _AGENT_FRAMES:
            # One typed dispatch: each handler gets the frame type it was written for, so no
            # kind can reach another kind's handler (a table of handlers once sent ``exec`` to
            # the shutdown handler behind a guard that only an ``isinstance`` kept closed).
            match decode_body(memoryview(raw)[HEADER_BYTES:]):
                case Exec() as frame:
                    self._on_exec(frame, raw)
                case BindRefs() as frame:
                    self._on_bind_refs(frame, raw)
                case Welcome() as frame:
                    self._on_welcome(frame)
                case OpenSession() as frame:
                    self._on_open_session(frame)
                case CloseSession() as frame:
                    self._on_close_session(frame)
                case Interrupt() as frame:
                    self._on_interrupt(frame)
                case Shutdown():
                    self._on_shutdown()
            return
        if envelope.kind in _SESSION_FRAMES:
            process = self._processes.processes.get(envelope.session or "")
            if process is None:
                if envelope.kind != "host_call_reply":  # a late reply to a closed session
                    self._unknown_session(envelope.session, envelope.call)
                return
            self._processes.send_to(process, raw)
            return
        other = decode_body(memoryview(raw)[HEADER_BYTES:])
        if isinstance(other, UnknownFrame):
            self.log(f"ignoring unknown frame kind {other.kind!r}")  # a newer minor's frame
            return
        self._refuse(
            "bad_request",
            f"{type(other).__name__} is not a host-to-guest frame",
            envelope.session, envelope.call,
        )

    def _large_from_host(self, head: bytes, size: int) -> None:
        """Read the rest of a large frame (``size`` bytes framed, ``head`` received) into a
        shared buffer and route it."""
        buffer = self._buffers.take(size)
        received = len(head)
        buffer.map[:received] = head
        self._announce(head, size, buffer)
        del head
        if not self.channel.read_into(buffer.map, received, size):
            self._buffers.give_back(buffer)  # the host left mid-frame: its end-of-stream comes next
            return
        with memoryview(buffer.map) as whole, whole[:size] as frame:
            envelope = decode_envelope(frame)
            process = None
            if envelope.kind in _SHARED_KINDS:
                process = self._processes.processes.get(envelope.session or "")
            raw = bytes(frame) if process is None else None
        if raw is not None:  # for the agent itself, or refused: the usual way, from a copy
            self._buffers.give_back(buffer)
            self._from_host(raw)
            return
        assert process is not None
        process.lent.append(buffer)
        notice = self._encoder.encode(SharedFrame(session=process.session))
        self._processes.send_to(process, notice, (buffer.reader_fd(),))

    def _announce(self, head: bytes, size: int, buffer: SharedBuffer) -> None:
        """Let the session process that a large frame is for make room for it now, while the
        rest of it crosses the channel (``shared.make_room``), when its start names it."""
        if size > KEEP_AT_MOST:
            return
        envelope = routing_in_head(head)
        if envelope is None or envelope.kind not in _SHARED_KINDS:
            return
        process = self._processes.processes.get(envelope.session or "")
        if process is not None:
            notice = self._encoder.encode(FrameComing(session=process.session))
            self._processes.send_to(process, notice, (buffer.reader_fd(),))

    def _refuse(self, code: str, message: str, session: str | None, call: int | None) -> None:
        """Answer one request with an ``error`` frame (PROTOCOL.md 3.4)."""
        self.send(ErrorFrame(code=code, message=message, session=session, call=call))

    def _unknown_session(self, session: str | None, call: int | None) -> None:
        self._refuse("unknown_session", f"no session {session!r}", session, call)

    def _on_welcome(self, frame: Welcome) -> None:
        check_welcome(frame)
        # Not before: a process forked before a VM snapshot would share its random state with
        # every restored VM.
        self._processes.ensure_spare()

    def _on_open_session(self, frame: OpenSession) -> None:
        if frame.session in self._processes.processes:
            self._refuse(
                "session_exists",
                f"session {frame.session!r} is already open",
                frame.session, frame.call,
            )
            return
        if frame.cwd is not None and not os.path.isdir(frame.cwd):
            # PROTOCOL.md 3.2: refused now, not silently replaced by another directory later.
            self._refuse(
                "bad_request", f"cwd {frame.cwd!r} is not a directory", frame.session, frame.call
            )
            return
        if len(self._processes.processes) >= self.limits.max_sessions:
            self._refuse(
                "too_large",
                f"at most {self.limits.max_sessions} sessions may be open",
                frame.session, frame.call,
            )
            return
        self._processes.spawn(frame.session, frame.cwd, frame.prompt_refs)
        self.send(SessionOpened(session=frame.session, call=frame.call))
        # No fork here: the spare just taken is replaced after the next block's result (or the
        # next close's reply), while the host reads that result (relay.py).

    def _on_bind_refs(self, frame: BindRefs, raw: bytes | bytearray) -> None:
        process = self._processes.processes.get(frame.session)
        if process is None:
            self._unknown_session(frame.session, frame.call)
            return
        if len(frame.refs) > MAX_FDS_PER_MESSAGE:
            self._refuse(
                "too_large", f"at most {MAX_FDS_PER_MESSAGE} refs per bind_refs",
                frame.session, frame.call,
            )
            return
        missing = self._kept.missing(list(frame.refs.values()))
        if missing:
            self._refuse(
                "unknown_ref", f"no prompt is kept under {missing[0]!r}", frame.session, frame.call
            )
            return
        # The session that binds a prompt keeps it alive (to bind it again after a reset).
        fds = self._kept.open_for(frame.session, list(frame.refs.values()))
        self._processes.send_to(process, raw, fds)

    def _on_exec(self, frame: Exec, raw: bytes | bytearray) -> None:
        process = self._processes.processes.get(frame.session)
        if process is None:
            self._unknown_session(frame.session, frame.call)
            return
        if frame.language not in ("python", "bash"):
            self._refuse(
                "unsupported",
                f"language {frame.language!r} is not supported",
                frame.session, frame.call,
            )
            return
        if process.running is not None:
            self._refuse(
                "session_busy",
                f"session {frame.session!r} is already running a block",
                frame.session, frame.call,
            )
            return
        process.running = frame.call
        process.deadline = None if frame.timeout is None else time.monotonic() + frame.timeout
        self._processes.send_to(process, raw)

    def _on_interrupt(self, frame: Interrupt) -> None:
        process = self._processes.processes.get(frame.session)
        if process is not None:
            self._processes.interrupt(process)

    def _on_close_session(self, frame: CloseSession) -> None:
        process = self._processes.processes.get(frame.session)
        if process is None:
            self._unknown_session(frame.session, frame.call)
            return
        # The session is gone for the host at once (its frames are refused, its processes got
        # SIGKILL); the rest of the teardown costs ~10-30 ms under TCG and waits until no
        # frame is ready (at most _CLOSE_AT_THE_LATEST): when
        # a parent's children end together, their closes must not hold up the parent's result.
        self._processes.discard(process, wait=False)
        self._kept.drop(frame.session)
        self._closing.append((process, frame, time.monotonic()))

    def _finish_close(self) -> None:
        process, frame, _ = self._closing.popleft()
        self._processes.finish_discard(process)
        self.send(SessionClosed(session=frame.session, call=frame.call))
        # When no block's result came since the spare was taken. After the reply, and at a fixed
        # point of the frame stream rather than whenever the agent is idle, so that what a
        # session sees in the process table is deterministic.
        self._processes.ensure_spare()

    def _on_shutdown(self) -> None:
        while self._closing:
            self._finish_close()
        self._drop_all()
        self.send(Bye())
        raise _Stop

    def _drop_all(self) -> None:
        while self._closing:  # no reply: the host is gone or said goodbye
            self._processes.finish_discard(self._closing.popleft()[0])
        self._processes.drop_all()
        self._kept.drop()

    def _close_in_child(self) -> None:
        """In a session process just forked: close what is the agent's alone."""
        for fd in {self.channel.read_fd, self.channel.write_fd}:
            try:
                os.close(fd)
            except OSError:
                pass
        self._kept.drop()
