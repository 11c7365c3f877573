"""The guest agent: serves a host over one channel and runs each session in a process of its own.

The agent is a single-threaded router around a ``selectors`` loop. It handles the connection-level
frames itself (``welcome``, ``open_session``, ``close_session``, ``interrupt``, ``shutdown``) and
relays the rest between the host and the session processes as raw frames, reading only their
envelope: a 16 MiB ``set_vars`` is copied, never decoded, on its way through.

Why processes (PROTOCOL.md, "Interrupt"): a block may loop forever, sleep in C, fork, or ignore
``KeyboardInterrupt``. ``SIGINT`` to the session's process stops the first two; when a block
does not stop within the grace period, the agent kills every process of that session (it leads
a session of its own, so everything it started is found) and starts the session afresh.
"""

from __future__ import annotations

import collections
import os
import platform
import selectors
import signal
import socket
import time
import traceback
from array import array
from dataclasses import dataclass, field
from typing import TextIO

import msgspec

from rlm_protocol import (
    CAPABILITIES,
    DEFAULT_MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    BindRefs,
    Bye,
    Captured,
    CloseSession,
    ErrorFrame,
    Exec,
    ExecError,
    ExecResult,
    Frame,
    FrameDecoder,
    FrameEncoder,
    HEADER_BYTES,
    Hello,
    Interrupt,
    Limits,
    OpenSession,
    ProtocolError,
    LocalProtocolError,
    RemoteProtocolError,
    SessionClosed,
    SessionOpened,
    Shutdown,
    UnknownFrame,
    Welcome,
    decode_body,
    decode_envelope,
    is_compatible,
)

from . import __version__
from .cgroups import SessionCgroups
from .interrupt_slot import InterruptSlot
from .channel import Channel
from .processes import become_subreaper, kill_session, kill_strays, reap_children
from .shared import (
    ANCILLARY_BYTES,
    KEEP_AT_MOST,
    MAX_FDS_PER_MESSAGE,
    KeepRef,
    SharedBuffer,
    SharedFrame,
    received_fds,
)

# Imported here, before any fork, so that every session process starts with the session code
# already loaded: imported in the child, it cost each new session's first block ~40 ms natively
# and ~0.4 s under TCG (bench: new_session_first_exec).
from .worker import Activate, worker_main

__all__ = ["Agent", "DEFAULT_LIMITS", "INTERRUPT_GRACE_SECONDS"]

DEFAULT_LIMITS = Limits(
    max_frame_bytes=DEFAULT_MAX_FRAME_BYTES,
    # The model only ever sees an 800-character prefix; a million characters per stream keeps
    # enough for the trajectory while a block that prints gigabytes costs neither side memory.
    max_output_chars=1_000_000,
    max_sessions=1024,
)

#: How long an interrupted block may take to unwind before its session is killed and reset.
#: Long enough for ``finally`` blocks and a traceback, short enough to feel like Ctrl-C.
INTERRUPT_GRACE_SECONDS = 2.0

#: Each session process numbers its host calls from its own block of ids (PROTOCOL.md: ids are
#: unique per connection); 2**32 calls per session process is more than any run makes.
_CALL_ID_BLOCK = 1 << 32

#: A frame still missing more than this is read to its end at once (``Channel.read_into``);
#: the host is sending it right now, so the wait is bounded by the channel's speed.
_TIGHT_READ_BYTES = 64 * 1024

#: After a close that killed a session through its cgroup, the /proc sweep for processes that
#: left the cgroup waits for a quiet moment of the channel (no frame for this long) ...
_SWEEP_WHEN_IDLE_FOR = 0.02
#: ... but never longer than this.
_SWEEP_AT_THE_LATEST = 1.0

#: How often a busy loop reaps the orphans of model code (an idle one reaps at once).
_REAP_EVERY = 0.5

#: The longest a closed session's teardown and reply wait for the agent to be idle.
_CLOSE_AT_THE_LATEST = 0.05

_WORKER_FRAMES = frozenset({"set_vars", "exec", "host_call_reply"})

#: Frames the agent decodes and answers itself (``exec`` and ``bind_refs`` are checked here,
#: then relayed to their session).
_AGENT_FRAMES = frozenset(
    {"welcome", "open_session", "close_session", "interrupt", "shutdown", "exec", "bind_refs"}
)

#: Large frames of these kinds reach their session process in a shared buffer (``shared.py``);
#: an ``exec`` is checked by the agent first and takes the socket.
_SHARED_KINDS = frozenset({"set_vars", "host_call_reply"})


_keep_ref_decoder = msgspec.msgpack.Decoder(KeepRef)


@dataclass(eq=False)
class _Kept:
    """A prompt kept for ``bind_refs`` (1.1): its memfd, and the session it lives as long as."""

    fd: int
    owner: str


class _Stop(Exception):
    """Leave the serve loop (``shutdown``)."""


@dataclass(eq=False)
class _Worker:
    """The agent's handle on one session process."""

    session: str
    cwd: str | None
    pid: int
    sock: socket.socket
    decoder: FrameDecoder
    #: Names the block a SIGINT is for (``interrupt_slot.py``).
    interrupts: InterruptSlot
    #: Frames (or what is left of one) waiting for the session's socket, never copied again:
    #: appending to and trimming one bytearray moved the rest of a 16 MiB frame per send. Each
    #: may carry descriptors to pass along (and close once sent).
    outgoing: collections.deque[tuple[memoryview, tuple[int, ...]]] = field(
        default_factory=collections.deque
    )
    #: Descriptors received from the process, in order, for its ``keep_ref`` frames.
    received: collections.deque[int] = field(default_factory=collections.deque)
    #: Whether the selector watches the socket for room to write.
    waiting_to_write: bool = False
    #: Shared buffers lent to the process, oldest first (it releases them in that order).
    lent: collections.deque[SharedBuffer] = field(default_factory=collections.deque)
    #: ``call`` of the block running in it, if any.
    running: int | None = None
    #: When to interrupt the running block (its ``exec.timeout``).
    deadline: float | None = None
    #: When to give up on an interrupted block and reset the session.
    grace: float | None = None
    #: The previous process died between blocks: the next result must say the state is gone.
    lost: bool = False
    #: Its cgroup (in a VM), or None.
    cgroup: str | None = None
    #: ``cgroup.kill`` was written: the teardown left is waiting for the cgroup to empty.
    killed: bool = False
    #: ``OpenSession.prompt_refs`` (kept for a reset's fresh process).
    prompt_refs: bool = False


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
        self._workers: dict[str, _Worker] = {}
        self._by_fd: dict[int, _Worker] = {}
        self._selector = selectors.DefaultSelector()
        self._spawned = 0
        #: A session process forked ahead of time, set up but not yet any session's.
        self._spare: _Worker | None = None
        #: The shared buffer kept for the next large frame (``shared.py``), if any: ``pool``,
        #: populated ahead of time (in a VM, before the snapshot: ``__main__.prepare_vm``), or
        #: ``shared_bytes`` mapped now and paged in by the first large frame. Populating it here
        #: would cost every VM start ~0.3 s of page faults under TCG.
        self._pool: SharedBuffer | None = pool or (SharedBuffer(shared_bytes) if shared_bytes else None)
        #: When the loop reaps exited children next, however busy.
        self._reap_due = 0.0
        #: When the pending stray sweep must run (see ``_discard``), or None.
        self._sweep_due: float | None = None
        #: Closed sessions whose processes were sent SIGKILL but whose teardown (waiting for
        #: the cgroup to empty, reaping, the reply, the next spare) waits for a quiet moment,
        #: with the ``CloseSession`` and when it came: see ``_on_close_session``.
        self._closing: collections.deque[tuple[_Worker, CloseSession, float]] = collections.deque()
        #: Reused for every read from a session (no 1 MiB allocation per ``recv``).
        self._receive_buffer = memoryview(bytearray(1 << 20))
        #: Prompts kept by reference (``keep_ref``), by ref.
        self._kept: dict[str, _Kept] = {}
        # Orphans of model code become our children, so that kill_strays finds them.
        become_subreaper()
        #: One cgroup per session process (``cgroups=True``: in a VM, where the agent is root).
        self._cgroups = SessionCgroups(cgroups)

    # --- output to the host -----------------------------------------------------------------

    def send(self, frame: Frame) -> None:
        self.channel.write(self._encoder.encode_view(frame))

    def log(self, message: str) -> None:
        print(f"rlm-guest: {message}", file=self._log, flush=True)

    def hello(self) -> Hello:
        return Hello(
            protocol=PROTOCOL_VERSION,
            agent="rlm-guest",
            agent_version=__version__,
            # Every capability of the protocol but the bash REPL: this guest's REPL is Python.
            capabilities=tuple(c for c in CAPABILITIES if c != "repl.bash"),
            limits=self.limits,
            runtime={
                "python": platform.python_version(),
                "implementation": platform.python_implementation(),
                "kernel": platform.release(),
                "pid": str(os.getpid()),
            },
        )

    # --- the loop ---------------------------------------------------------------------------

    def serve(self) -> int:
        """Serve hosts until ``shutdown`` (exit 0) or a protocol error (exit 2).

        Over a device that stays open (virtio-serial) a host that disconnects is followed by
        waiting for the next one; over stdio the end of input ends the agent.
        """
        while True:
            self.channel.wait_connected()
            self.send(self.hello())
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
                events = self._selector.select(self._next_timeout())
                if self._sweep_due is not None and (
                    not events or time.monotonic() >= self._sweep_due
                ):
                    self._kill_strays()
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
                            self._large_from_host(*decoder.detach_partial())
                        continue
                    worker = self._by_fd.get(key.fd)
                    if worker is None:
                        continue  # discarded by an earlier event of this same batch
                    if mask & selectors.EVENT_WRITE:
                        self._flush_to(worker)
                    if mask & selectors.EVENT_READ:
                        self._from_worker(worker)
                self._run_timers()
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
        deadlines = [
            moment
            for worker in self._workers.values()
            for moment in (worker.deadline, worker.grace)
            if moment is not None
        ]
        if self._sweep_due is not None:
            # A quiet moment this long runs the sweep; it never waits past its due time.
            deadlines.append(min(self._sweep_due, time.monotonic() + _SWEEP_WHEN_IDLE_FOR))
        if not deadlines:
            # Wake up now and then to reap processes that model code left behind.
            return 5.0
        return max(0.0, min(deadlines) - time.monotonic())

    def _run_timers(self) -> None:
        now = time.monotonic()
        for worker in list(self._workers.values()):
            if worker.grace is not None and now >= worker.grace:
                self._reset(
                    worker,
                    ExecError(
                        name="SessionReset",
                        value="the block did not stop within "
                        f"{INTERRUPT_GRACE_SECONDS:g} s of its interrupt; every process of the "
                        "session was killed and its variables are lost",
                    ),
                )
            elif worker.deadline is not None and now >= worker.deadline:
                worker.deadline = None
                self._interrupt(worker)

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
        if envelope.kind in _WORKER_FRAMES:
            worker = self._workers.get(envelope.session or "")
            if worker is None:
                if envelope.kind != "host_call_reply":  # a late reply to a closed session
                    self._unknown_session(envelope.session, envelope.call)
                return
            self._to_worker(worker, raw)
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

    def _large_from_host(self, start: bytearray, received: int) -> None:
        """Read the rest of a large frame into a shared buffer and route it."""
        size = len(start)
        buffer = self._take_buffer(size)
        buffer.map[:received] = memoryview(start)[:received]
        del start
        if not self.channel.read_into(buffer.map, received, size):
            self._give_back(buffer)  # the host left mid-frame: its end-of-stream comes next
            return
        with memoryview(buffer.map) as whole, whole[:size] as frame:
            envelope = decode_envelope(frame)
            worker = None
            if envelope.kind in _SHARED_KINDS:
                worker = self._workers.get(envelope.session or "")
            raw = bytes(frame) if worker is None else None
        if raw is not None:  # for the agent itself, or refused: the usual way, from a copy
            self._give_back(buffer)
            self._from_host(raw)
            return
        assert worker is not None
        worker.lent.append(buffer)
        notice = self._encoder.encode(SharedFrame(session=worker.session))
        worker.outgoing.append((memoryview(notice), (buffer.reader_fd(),)))
        self._flush_to(worker)

    def _take_buffer(self, size: int) -> SharedBuffer:
        buffer, self._pool = self._pool, None
        if buffer is None:
            return SharedBuffer(size)
        buffer.grow(size)
        return buffer

    def _give_back(self, buffer: SharedBuffer) -> None:
        # Keep the larger of the two: its pages are what the next large frame saves faulting.
        if buffer.capacity > KEEP_AT_MOST:
            buffer.close()
            return
        if self._pool is not None:
            if self._pool.capacity >= buffer.capacity:
                buffer.close()
                return
            self._pool.close()
        self._pool = buffer

    def _refuse(self, code: str, message: str, session: str | None, call: int | None) -> None:
        """Answer one request with an ``error`` frame (PROTOCOL.md 3.4)."""
        self.send(ErrorFrame(code=code, message=message, session=session, call=call))

    def _unknown_session(self, session: str | None, call: int | None) -> None:
        self._refuse("unknown_session", f"no session {session!r}", session, call)

    def _on_welcome(self, frame: Welcome) -> None:
        if not is_compatible(frame.protocol):
            raise RemoteProtocolError(
                f"host speaks protocol {frame.protocol[0]}.{frame.protocol[1]}, this guest "
                f"{PROTOCOL_VERSION[0]}.{PROTOCOL_VERSION[1]}: majors differ"
            )
        # Not before: a process forked before a VM snapshot would share its random state with
        # every restored VM.
        self._ensure_spare()

    def _on_open_session(self, frame: OpenSession) -> None:
        if frame.session in self._workers:
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
        if len(self._workers) >= self.limits.max_sessions:
            self._refuse(
                "too_large",
                f"at most {self.limits.max_sessions} sessions may be open",
                frame.session, frame.call,
            )
            return
        self._spawn(frame.session, frame.cwd, frame.prompt_refs)
        self.send(SessionOpened(session=frame.session, call=frame.call))

    def _on_bind_refs(self, frame: BindRefs, raw: bytes | bytearray) -> None:
        worker = self._workers.get(frame.session)
        if worker is None:
            self._unknown_session(frame.session, frame.call)
            return
        if len(frame.refs) > MAX_FDS_PER_MESSAGE:
            self._refuse(
                "too_large", f"at most {MAX_FDS_PER_MESSAGE} refs per bind_refs",
                frame.session, frame.call,
            )
            return
        missing = [ref for ref in frame.refs.values() if ref not in self._kept]
        if missing:
            self._refuse(
                "unknown_ref", f"no prompt is kept under {missing[0]!r}", frame.session, frame.call
            )
            return
        fds = []
        for ref in frame.refs.values():
            kept = self._kept[ref]
            # The session that binds a prompt keeps it alive (to bind it again after a reset).
            kept.owner = frame.session
            # Read-only, so that the session cannot change what a reset binds again.
            fds.append(os.open(f"/proc/self/fd/{kept.fd}", os.O_RDONLY | os.O_CLOEXEC))
        worker.outgoing.append((memoryview(raw), tuple(fds)))
        self._flush_to(worker)

    def _on_keep_ref(self, worker: _Worker, raw: bytes | bytearray) -> None:
        frame = _keep_ref_decoder.decode(memoryview(raw)[4:])
        if not worker.received:
            raise RemoteProtocolError("keep_ref came without its prompt")
        fd = worker.received.popleft()
        if frame.ref in self._kept:
            # Refs are call ids, unique on the connection: a second one is forged, and must not
            # replace a prompt another session's child is about to bind.
            os.close(fd)
            raise RemoteProtocolError(f"ref {frame.ref!r} is already kept")
        self._kept[frame.ref] = _Kept(fd=fd, owner=worker.session)

    def _drop_kept(self, session: str | None = None) -> None:
        """Forget the prompts kept for ``session`` (every prompt when None)."""
        for ref, kept in list(self._kept.items()):
            if session is None or kept.owner == session:
                del self._kept[ref]
                os.close(kept.fd)

    def _on_exec(self, frame: Exec, raw: bytes | bytearray) -> None:
        worker = self._workers.get(frame.session)
        if worker is None:
            self._unknown_session(frame.session, frame.call)
            return
        if frame.language not in ("python", "bash"):
            self._refuse(
                "unsupported",
                f"language {frame.language!r} is not supported",
                frame.session, frame.call,
            )
            return
        if worker.running is not None:
            self._refuse(
                "session_busy",
                f"session {frame.session!r} is already running a block",
                frame.session, frame.call,
            )
            return
        worker.running = frame.call
        worker.deadline = None if frame.timeout is None else time.monotonic() + frame.timeout
        self._to_worker(worker, raw)

    def _on_interrupt(self, frame: Interrupt) -> None:
        worker = self._workers.get(frame.session)
        if worker is not None:
            self._interrupt(worker)

    def _on_close_session(self, frame: CloseSession) -> None:
        worker = self._workers.get(frame.session)
        if worker is None:
            self._unknown_session(frame.session, frame.call)
            return
        # The session is gone for the host at once (its frames are refused, its processes got
        # SIGKILL); the rest of the teardown costs ~10-30 ms under TCG, most of it the next
        # spare's fork, and waits until no frame is ready (at most _CLOSE_AT_THE_LATEST): when
        # a parent's children end together, their closes must not hold up the parent's result.
        self._discard(worker, wait=False)
        self._drop_kept(frame.session)
        self._closing.append((worker, frame, time.monotonic()))

    def _finish_close(self) -> None:
        worker, frame, _ = self._closing.popleft()
        self._finish_discard(worker)
        self.send(SessionClosed(session=frame.session, call=frame.call))
        # After the reply, and at a fixed point of the frame stream rather than whenever the
        # agent is idle, so that what a session sees in the process table is deterministic.
        self._ensure_spare()

    def _on_shutdown(self) -> None:
        while self._closing:
            self._finish_close()
        self._drop_all()
        self.send(Bye())
        raise _Stop

    # --- session processes ------------------------------------------------------------------

    def _spawn(self, session: str, cwd: str | None, prompt_refs: bool = False) -> _Worker:
        """Give ``session`` a fresh process: the spare if there is one."""
        worker, self._spare = self._spare, None
        if worker is None:
            worker = self._fork_worker()
        worker.session, worker.cwd, worker.prompt_refs = session, cwd, prompt_refs
        activate = Activate(session=session, cwd=cwd, prompt_refs=prompt_refs)
        self._to_worker(worker, self._encoder.encode(activate))
        self._workers[session] = worker
        return worker

    def _ensure_spare(self) -> None:
        # Forking costs ~16 ms under TCG and the new process's setup about as much again; a
        # spare does both ahead of time, so that opening a session only names it.
        if self._spare is None:
            self._spare = self._fork_worker()

    def _fork_worker(self) -> _Worker:
        parent_sock, child_sock = socket.socketpair()
        interrupts = InterruptSlot()
        self._spawned += 1
        first_call_id = self._spawned * _CALL_ID_BLOCK + 1
        # Blocked across the fork: the new process unblocks it once a SIGINT cannot kill it.
        sigmask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        pid = os.fork()
        if pid == 0:  # the session process
            code = 70
            try:
                parent_sock.close()
                self._close_inherited()
                worker_main(
                    child_sock,
                    first_call_id=first_call_id,
                    max_output_chars=self.limits.max_output_chars,
                    max_frame_bytes=self.limits.max_frame_bytes,
                    interrupts=interrupts,
                )
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, sigmask)
        child_sock.close()
        parent_sock.setblocking(False)
        worker = _Worker(
            session="",
            cwd=None,
            pid=pid,
            sock=parent_sock,
            decoder=FrameDecoder(self.limits.max_frame_bytes),
            interrupts=interrupts,
        )
        # Before the process can run any code (it runs blocks only when we forward them).
        worker.cgroup = self._cgroups.place(f"{os.getpid()}-{self._spawned}", pid)
        self._by_fd[parent_sock.fileno()] = worker
        self._selector.register(parent_sock, selectors.EVENT_READ, None)
        return worker

    def _close_inherited(self) -> None:
        # The session process must not hold the host channel (the host would never see the
        # agent's end) nor other sessions' sockets.
        for fd in {self.channel.read_fd, self.channel.write_fd}:
            try:
                os.close(fd)
            except OSError:
                pass
        for worker in [*self._workers.values(), *([self._spare] if self._spare else [])]:
            worker.sock.close()
            worker.interrupts.close()
            for buffer in worker.lent:
                buffer.close()
            for fd in worker.received:
                os.close(fd)
        for kept in self._kept.values():
            os.close(kept.fd)
        if self._pool is not None:
            self._pool.close()
        self._selector.close()

    def _discard(self, worker: _Worker, *, wait: bool = True) -> None:
        """Kill every process of the session and forget it.

        ``wait=False`` only starts the kill when the session's cgroup can do it at once;
        ``_finish_discard`` completes it.
        """
        if worker is self._spare:
            self._spare = None
        else:
            self._workers.pop(worker.session, None)
        self._by_fd.pop(worker.sock.fileno(), None)
        self._selector.unregister(worker.sock)
        worker.sock.close()
        worker.interrupts.close()
        for _, fds in worker.outgoing:
            for fd in fds:
                os.close(fd)
        worker.outgoing.clear()
        while worker.received:
            os.close(worker.received.popleft())
        while worker.lent:
            self._give_back(worker.lent.popleft())
        if not wait:
            # A killed process's memory is torn down on the CPU, in its own context: at the
            # lowest priority, that work does not slow the sessions still running (the parent
            # whose children just ended, say).
            try:
                os.setpriority(os.PRIO_PROCESS, worker.pid, 19)
            except OSError:
                pass
        if worker.cgroup is not None and self._cgroups.start_kill(worker.cgroup):
            worker.killed = True
            if wait:
                self._finish_discard(worker)
            return
        kill_session(worker.pid)
        self._kill_strays()
        reap_children()

    def _finish_discard(self, worker: _Worker) -> None:
        if worker.killed and worker.cgroup is not None:
            self._cgroups.remove(worker.cgroup)
            # Everything the session started was in its cgroup and is dead now, unless it moved
            # itself out (model code is root): the sweep finds such a process later. Two /proc
            # scans here cost a close ~40 ms under TCG.
            self._sweep_requested()
            reap_children()

    def _kill_leftovers(self, worker: _Worker) -> None:
        """Kill everything a session's process started, sparing the process itself."""
        kill_session(worker.pid, spare_leader=True)
        if worker.cgroup is not None:
            # The cgroup also holds what left the session (setsid), and caps a fork bomb, so
            # that these passes end.
            for _ in range(20):
                others = [p for p in self._cgroups.members(worker.cgroup) if p != worker.pid]
                if not others:
                    break
                for pid in others:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        self._kill_strays()

    def _sweep_requested(self) -> None:
        if self._sweep_due is None:
            self._sweep_due = time.monotonic() + _SWEEP_AT_THE_LATEST

    def _kill_strays(self) -> None:
        """Kill what left its session (``setsid``) or outlived a session that is gone."""
        self._sweep_due = None
        live = {w.pid for w in self._workers.values()}
        if self._spare is not None:
            live.add(self._spare.pid)
        killed = kill_strays(live)
        if killed:
            self.log(f"killed {killed} processes outside every live session")

    def _drop_all(self) -> None:
        while self._closing:  # no reply: the host is gone or said goodbye
            self._finish_discard(self._closing.popleft()[0])
        for worker in list(self._workers.values()):
            self._discard(worker)
        self._drop_kept()
        if self._spare is not None:
            self._discard(self._spare)
        if self._sweep_due is not None:
            self._kill_strays()  # the loop that would sweep later stops here

    def _interrupt(self, worker: _Worker) -> None:
        if worker.running is None or worker.grace is not None:
            return
        worker.interrupts.request(worker.running)
        self._signal(worker)
        worker.grace = time.monotonic() + INTERRUPT_GRACE_SECONDS

    def _signal(self, worker: _Worker) -> None:
        try:
            os.kill(worker.pid, signal.SIGINT)
        except ProcessLookupError:
            pass  # it died: its end-of-stream is handled as a death

    def _reset(self, worker: _Worker, error: ExecError) -> None:
        """Replace a session's process with a fresh one, answering the block that was running."""
        call, interrupted = worker.running, worker.grace is not None
        self._discard(worker)
        fresh = self._spawn(worker.session, worker.cwd, worker.prompt_refs)
        if call is None:
            fresh.lost = True
            return
        self.send(
            ExecResult(
                session=worker.session,
                call=call,
                stdout=Captured(),
                stderr=Captured(text=error.value + "\n", chars=len(error.value) + 1, lines=2),
                error=error,
                interrupted=interrupted,
                session_reset=True,
            )
        )

    # --- relaying ---------------------------------------------------------------------------

    def _to_worker(self, worker: _Worker, data: bytes | bytearray) -> None:
        worker.outgoing.append((memoryview(data), ()))
        self._flush_to(worker)

    def _flush_to(self, worker: _Worker) -> None:
        outgoing = worker.outgoing
        while outgoing:
            data, fds = outgoing[0]
            try:
                if not fds:
                    sent = worker.sock.send(data)
                else:
                    sent = worker.sock.sendmsg(
                        [data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", fds).tobytes())]
                    )
                    for fd in fds:
                        os.close(fd)  # the process has its own copy now
            except BlockingIOError:
                break
            except OSError:
                # The process is gone; its EOF will be handled.
                for _, pending in outgoing:
                    for fd in pending:
                        os.close(fd)
                outgoing.clear()
                break
            if sent < len(data):
                outgoing[0] = (data[sent:], ())
                break
            outgoing.popleft()
        if worker.waiting_to_write != bool(outgoing):
            # Only on a change: an epoll_ctl per relayed frame is a syscall, costly under TCG.
            worker.waiting_to_write = bool(outgoing)
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if outgoing else 0)
            self._selector.modify(worker.sock, events, None)

    def _from_worker(self, worker: _Worker) -> None:
        try:
            count, ancillary, _, _ = worker.sock.recvmsg_into(
                [self._receive_buffer], ANCILLARY_BYTES, socket.MSG_CMSG_CLOEXEC
            )
            data = self._receive_buffer[:count]
        except BlockingIOError:
            return
        except OSError:
            data, ancillary = self._receive_buffer[:0], []
        if ancillary:
            worker.received.extend(received_fds(ancillary))
        if worker is self._spare:
            # A spare has nothing to say; it ended (or broke): fork another when one is due.
            self._discard(worker)
            return
        if not data:
            self._reset(worker, self._death_error(worker.pid))
            return
        try:
            frames = worker.decoder.feed_raw(data)
        except ProtocolError as error:
            self._reset(worker, ExecError(name="SessionDied", value=f"protocol error: {error}"))
            return
        for raw in frames:
            envelope = decode_envelope(raw)
            if envelope.kind == "buffer_released":
                if worker.lent:
                    self._give_back(worker.lent.popleft())
                continue
            if envelope.kind == "keep_ref":
                try:
                    self._on_keep_ref(worker, raw)
                except (ProtocolError, msgspec.ValidationError) as error:
                    self._reset(worker, ExecError(name="SessionDied", value=f"protocol error: {error}"))
                    return
                continue
            if envelope.kind == "exec_result" and envelope.call == worker.running:
                if worker.grace is not None:
                    # An interrupted block: the session lives on, but nothing it started
                    # may (a fork bomb's children, a pipeline in the background).
                    self._kill_leftovers(worker)
                    reap_children()
                worker.running = worker.deadline = worker.grace = None
                if worker.lost:
                    worker.lost = False
                    self._send_marked_reset(raw)
                    continue
            self.channel.write(raw)

    def _death_error(self, pid: int) -> ExecError:
        # The socket closes a moment before the process can be reaped; wait that moment (but
        # never block on a process that closed its socket and lives on: it is killed next).
        status = None
        for _ in range(100):
            status = reap_children().get(pid)
            if status is not None:
                break
            time.sleep(0.001)
        if status is None:
            how = "ended"
        elif os.WIFSIGNALED(status):
            how = f"was killed by signal {os.WTERMSIG(status)}"
        else:
            how = f"exited with status {os.WEXITSTATUS(status)}"
        return ExecError(
            name="SessionDied",
            value=f"the session's process {how}; the session was restarted and its variables "
            "are lost",
        )

    def _send_marked_reset(self, raw: bytes | bytearray) -> None:
        """Relay the first result after a process died between blocks, saying the state is gone.

        Encoded by the codec like every frame the agent makes, so the frame limit holds: the
        flag adds a few bytes to a result that may already be at the limit.
        """
        frame = decode_body(memoryview(raw)[HEADER_BYTES:])
        assert isinstance(frame, ExecResult)
        try:
            self.send(msgspec.structs.replace(frame, session_reset=True))
        except LocalProtocolError as error:
            self._refuse("too_large", str(error), frame.session, frame.call)
