"""The agent's session processes: forked ahead of time, signalled, killed, reaped and replaced.

Why processes (PROTOCOL.md, "Interrupt"): a block may loop forever, sleep in C, fork, or ignore
``KeyboardInterrupt``. ``SIGINT`` to the session's process stops the first two; when a block
does not stop within the grace period, every process of that session is killed (it leads a
session of its own and, in a VM, a cgroup, so everything it started is found) and the session
starts afresh in a new process.

The agent's router (``agent.py``) decides what to do with frames; this module owns the
processes and their sockets, and answers for a block only when it had to kill the process that
ran it.
"""

from __future__ import annotations

import collections
import os
import selectors
import signal
import socket
import time
import traceback
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

from rlm_protocol import Captured, ExecError, ExecResult, Frame, FrameDecoder, FrameEncoder, Limits

from .cgroups import SessionCgroups
from .interrupt_slot import InterruptSlot
from .processes import kill_session, kill_strays, reap_children
from .shared import BufferPool, SharedBuffer

# Imported here, before any fork, so that every session process starts with the session code
# already loaded: imported in the child, it cost each new session's first block ~40 ms natively
# and ~0.4 s under TCG (bench: new_session_first_exec).
from .worker import Activate, worker_main

__all__ = ["INTERRUPT_GRACE_SECONDS", "SessionProcess", "Supervisor"]

#: How long an interrupted block may take to unwind before its session is killed and reset.
#: Long enough for ``finally`` blocks and a traceback, short enough to feel like Ctrl-C.
INTERRUPT_GRACE_SECONDS = 2.0

#: Each session process numbers its host calls from its own block of ids (PROTOCOL.md: ids are
#: unique per connection); 2**32 calls per session process is more than any run makes.
_CALL_ID_BLOCK = 1 << 32

#: After a close that killed a session through its cgroup, the /proc sweep for processes that
#: left the cgroup waits for a quiet moment of the channel (``agent.py``), but never longer than
#: this.
_SWEEP_AT_THE_LATEST = 1.0


@dataclass(eq=False)
class SessionProcess:
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


class Supervisor:
    """Every session process of the agent, and the spare.

    ``send`` answers the host (a reset's result); ``close_in_child`` closes, in a newly forked
    process, what the agent holds that a session must not (the host channel, kept prompts).
    The selector is the agent's: a process's socket is watched by the agent's loop.
    """

    def __init__(
        self,
        limits: Limits,
        selector: selectors.BaseSelector,
        buffers: BufferPool,
        *,
        cgroups: SessionCgroups,
        send: Callable[[Frame], None],
        log: Callable[[str], None],
        close_in_child: Callable[[], None],
    ) -> None:
        self.limits = limits
        self._selector = selector
        self._buffers = buffers
        self._cgroups = cgroups
        self.send = send
        self.log = log
        self._close_in_child = close_in_child
        self._encoder = FrameEncoder(limits.max_frame_bytes)
        self._spawned = 0
        #: The processes serving sessions, by session.
        self.processes: dict[str, SessionProcess] = {}
        #: Every process (the spare too) by its socket's descriptor, for the agent's loop.
        self.by_fd: dict[int, SessionProcess] = {}
        #: A session process forked ahead of time, set up but not yet any session's.
        self.spare: SessionProcess | None = None
        #: When the pending stray sweep must run (see ``finish_discard``), or None.
        self.sweep_due: float | None = None

    def spawn(self, session: str, cwd: str | None, prompt_refs: bool = False) -> SessionProcess:
        """Give ``session`` a fresh process: the spare if there is one.

        The next spare is forked later (``ensure_spare``), after the next block's result.
        """
        process, self.spare = self.spare, None
        if process is None:
            process = self._fork()
        process.session, process.cwd, process.prompt_refs = session, cwd, prompt_refs
        activate = Activate(session=session, cwd=cwd, prompt_refs=prompt_refs)
        self.send_to(process, self._encoder.encode(activate))
        self.processes[session] = process
        return process

    def ensure_spare(self) -> None:
        """Fork a spare if there is none: after the handshake, after each block's result
        (``relay.py``; a reset's too) and after each ``close_session`` reply."""
        # Forking costs ~10 ms under TCG and the new process's setup several times that; a
        # spare does both ahead of time, so that opening a session only names it.
        if self.spare is None:
            self.spare = self._fork()

    def _fork(self) -> SessionProcess:
        parent_sock, child_sock = socket.socketpair()
        interrupts = InterruptSlot()
        self._spawned += 1
        first_call_id = self._spawned * _CALL_ID_BLOCK + 1
        # Made before the fork, joined by the process itself (``SessionCgroups.join``).
        cgroup = self._cgroups.make(f"{os.getpid()}-{self._spawned}")
        # Blocked across the fork: the new process unblocks it once a SIGINT cannot kill it.
        sigmask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        pid = os.fork()
        if pid == 0:  # the session process
            code = 70
            try:
                if cgroup is not None:
                    self._cgroups.join(cgroup)
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
        process = SessionProcess(
            session="",
            cwd=None,
            pid=pid,
            sock=parent_sock,
            decoder=FrameDecoder(self.limits.max_frame_bytes),
            interrupts=interrupts,
        )
        process.cgroup = cgroup
        self.by_fd[parent_sock.fileno()] = process
        self._selector.register(parent_sock, selectors.EVENT_READ, None)
        return process

    def _close_inherited(self) -> None:
        # The session process must not hold the host channel (the host would never see the
        # agent's end: the agent's part) nor other sessions' sockets.
        self._close_in_child()
        for process in [*self.processes.values(), *([self.spare] if self.spare else [])]:
            process.sock.close()
            process.interrupts.close()
            for buffer in process.lent:
                buffer.close()
            for fd in process.received:
                os.close(fd)
        self._buffers.close()
        self._selector.close()

    def discard(self, process: SessionProcess, *, wait: bool = True) -> None:
        """Kill every process of the session and forget it.

        ``wait=False`` only starts the kill when the session's cgroup can do it at once;
        ``finish_discard`` completes it.
        """
        if process is self.spare:
            self.spare = None
        else:
            self.processes.pop(process.session, None)
        self.by_fd.pop(process.sock.fileno(), None)
        self._selector.unregister(process.sock)
        process.sock.close()
        process.interrupts.close()
        for _, fds in process.outgoing:
            for fd in fds:
                os.close(fd)
        process.outgoing.clear()
        while process.received:
            os.close(process.received.popleft())
        while process.lent:
            self._buffers.give_back(process.lent.popleft())
        if not wait:
            # A killed process's memory is torn down on the CPU, in its own context: at the
            # lowest priority, that work does not slow the sessions still running (the parent
            # whose children just ended, say).
            try:
                os.setpriority(os.PRIO_PROCESS, process.pid, 19)
            except OSError:
                pass
        if process.cgroup is not None and self._cgroups.start_kill(process.cgroup):
            process.killed = True
            # A spare may not have moved into its cgroup yet (it does so itself).
            try:
                os.kill(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if wait:
                self.finish_discard(process)
            return
        kill_session(process.pid)
        self.sweep_strays()
        reap_children()

    def finish_discard(self, process: SessionProcess) -> None:
        if process.killed and process.cgroup is not None:
            self._cgroups.remove(process.cgroup)
            # Everything the session started was in its cgroup and is dead now, unless it moved
            # itself out (model code is root): the sweep finds such a process later. Two /proc
            # scans here cost a close ~40 ms under TCG.
            self._request_sweep()
            reap_children()

    def kill_leftovers(self, process: SessionProcess) -> None:
        """Kill everything a session's process started, sparing the process itself."""
        kill_session(process.pid, spare_leader=True)
        if process.cgroup is not None:
            # The cgroup also holds what left the session (setsid), and caps a fork bomb, so
            # that these passes end.
            for _ in range(20):
                others = [p for p in self._cgroups.members(process.cgroup) if p != process.pid]
                if not others:
                    break
                for pid in others:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        self.sweep_strays()

    def _request_sweep(self) -> None:
        if self.sweep_due is None:
            self.sweep_due = time.monotonic() + _SWEEP_AT_THE_LATEST

    def sweep_strays(self) -> None:
        """Kill what left its session (``setsid``) or outlived a session that is gone."""
        self.sweep_due = None
        live = {p.pid for p in self.processes.values()}
        if self.spare is not None:
            live.add(self.spare.pid)
        killed = kill_strays(live)
        if killed:
            self.log(f"killed {killed} processes outside every live session")

    def drop_all(self) -> None:
        """Kill every session's processes and the spare (the host left or said goodbye)."""
        for process in list(self.processes.values()):
            self.discard(process)
        if self.spare is not None:
            self.discard(self.spare)
        if self.sweep_due is not None:
            self.sweep_strays()  # the loop that would sweep later stops here

    def interrupt(self, process: SessionProcess) -> None:
        if process.running is None or process.grace is not None:
            return
        process.interrupts.request(process.running)
        self._signal(process)
        process.grace = time.monotonic() + INTERRUPT_GRACE_SECONDS

    def _signal(self, process: SessionProcess) -> None:
        try:
            os.kill(process.pid, signal.SIGINT)
        except ProcessLookupError:
            pass  # it died: its end-of-stream is handled as a death

    def reset(self, process: SessionProcess, error: ExecError) -> None:
        """Replace a session's process with a fresh one, answering the block that was running."""
        call, interrupted = process.running, process.grace is not None
        self.discard(process)
        fresh = self.spawn(process.session, process.cwd, process.prompt_refs)
        if call is None:
            fresh.lost = True
            return
        self.send(
            ExecResult(
                session=process.session,
                call=call,
                stdout=Captured(),
                stderr=Captured(text=error.value + "\n", chars=len(error.value) + 1, lines=2),
                error=error,
                interrupted=interrupted,
                session_reset=True,
            )
        )
        self.ensure_spare()

    def deadlines(self) -> list[float]:
        """When a block is due for its interrupt or its reset."""
        return [
            moment
            for process in self.processes.values()
            for moment in (process.deadline, process.grace)
            if moment is not None
        ]

    def run_timers(self) -> None:
        now = time.monotonic()
        for process in list(self.processes.values()):
            if process.grace is not None and now >= process.grace:
                self.reset(
                    process,
                    ExecError(
                        name="SessionReset",
                        value="the block did not stop within "
                        f"{INTERRUPT_GRACE_SECONDS:g} s of its interrupt; every process of the "
                        "session was killed and its variables are lost",
                    ),
                )
            elif process.deadline is not None and now >= process.deadline:
                process.deadline = None
                self.interrupt(process)

    # --- the socket to each process ---------------------------------------------------------

    def send_to(
        self, process: SessionProcess, data: bytes | bytearray | memoryview, fds: tuple[int, ...] = ()
    ) -> None:
        """Queue ``data`` (and descriptors to pass along, closed once sent) for the process."""
        process.outgoing.append((memoryview(data), fds))
        self.flush(process)

    def flush(self, process: SessionProcess) -> None:
        outgoing = process.outgoing
        while outgoing:
            data, fds = outgoing[0]
            try:
                if not fds:
                    sent = process.sock.send(data)
                else:
                    sent = process.sock.sendmsg(
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
        if process.waiting_to_write != bool(outgoing):
            # Only on a change: an epoll_ctl per relayed frame is a syscall, costly under TCG.
            process.waiting_to_write = bool(outgoing)
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if outgoing else 0)
            self._selector.modify(process.sock, events, None)

    def death_error(self, pid: int) -> ExecError:
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
