"""The process of one session: forked by the agent, talks frames to it over a socketpair.

Its main thread runs the blocks; a reader thread takes frames from the agent (``set_vars``,
``exec``, ``host_call_reply``) so that host-call replies arrive while a block is waiting for them.
The process leads its own session (``setsid``), so the agent can kill everything a block started,
however it was started, by killing that session's processes.
"""

from __future__ import annotations

import collections
import ctypes
import mmap
import os
import queue
import signal
import socket
import sys
import threading
import traceback
from array import array

import msgspec

from rlm_protocol import (
    HEADER_BYTES,
    BindRefs,
    ErrorFrame,
    Exec,
    Frame,
    FrameDecoder,
    FrameEncoder,
    HostCallReply,
    ProtocolError,
    RemoteProtocolError,
    SetVars,
    UnknownFrame,
    VarsSet,
    decode_body,
)

from .capture import Capture
from .host_calls import HostCalls
from .interrupt_slot import InterruptSlot
from .session import Session, install_sigint
from .shared import ANCILLARY_BYTES, BufferReleased, KeepRef, make_room, read_kept, read_shared, received_fds

__all__ = ["Activate", "worker_main"]

#: Frames still missing more than this are received in one tight loop, straight into their own
#: buffer, instead of growing the decoder's buffer chunk by chunk (copies are slow under TCG).
_TIGHT_READ_BYTES = 64 * 1024


class Activate(Frame, frozen=True, tag="activate"):
    """Agent to worker only, its first frame: the process (forked ahead of time as a spare)
    now serves session ``session``."""

    session: str
    cwd: str | None = None
    #: ``OpenSession.prompt_refs``: ``rlm_query`` passes its prompt by reference.
    prompt_refs: bool = False


_activate_decoder = msgspec.msgpack.Decoder(Activate)

_PR_SET_PDEATHSIG = 1


def _libc_prctl() -> object | None:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


#: Looked up once, in the agent before it forks: in each new session process it cost part of
#: the spare's setup (every object it makes is a page to copy under TCG).
_prctl = _libc_prctl()


def _die_with_parent() -> None:
    # If the agent is killed outright, its sessions must not live on (Linux only; elsewhere the
    # reader's end-of-stream exit below covers the normal cases).
    if callable(_prctl):
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _oom_first() -> None:
    # The agent protects itself from the guest's OOM killer (oom_score_adj -1000 in a VM);
    # its session processes must not inherit that: a block that eats the guest's memory is
    # what the OOM killer should pick, costing that session only (SessionDied).
    try:
        with open("/proc/self/oom_score_adj", "r+") as adj:
            if int(adj.read() or 0) < 0:
                adj.seek(0)
                adj.write("0")
    except (OSError, ValueError):
        pass


class _Link:
    """Frames to the agent over the socket, one writer at a time."""

    def __init__(self, sock: socket.socket, max_frame_bytes: int) -> None:
        self.sock = sock
        self._lock = threading.Lock()
        self._encoder = FrameEncoder(max_frame_bytes)

    def send(self, frame: Frame) -> None:
        with self._lock:
            try:
                view = self._encoder.encode_view(frame)
            except ProtocolError as error:
                # A result too large for a frame must still answer its request.
                view = self._encoder.encode_view(
                    ErrorFrame(
                        code="too_large",
                        message=str(error),
                        session=getattr(frame, "session", None),
                        call=getattr(frame, "call", None),
                    )
                )
            self.sock.sendall(view)

    def send_fd(self, frame: Frame, fd: int) -> None:
        """Send a small frame with a copy of the descriptor ``fd`` attached."""
        with self._lock:
            view = self._encoder.encode_view(frame)
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", [fd]).tobytes())]
            sent = self.sock.sendmsg([view], rights)
            if sent < len(view):
                self.sock.sendall(view[sent:])


def _await_activation(sock: socket.socket) -> Activate:
    # Exactly one frame, so that whatever follows it stays in the socket for the reader.
    header = sock.recv(HEADER_BYTES, socket.MSG_WAITALL)
    if len(header) < HEADER_BYTES:
        os._exit(0)  # the agent dropped this spare
    body = sock.recv(int.from_bytes(header, "big"), socket.MSG_WAITALL)
    return _activate_decoder.decode(body)


def worker_main(
    sock: socket.socket,
    *,
    first_call_id: int,
    max_output_chars: int,
    max_frame_bytes: int,
    interrupts: InterruptSlot,
) -> None:
    """Set up, wait to be given a session, serve it until the agent closes the socket; never
    returns normally.

    The agent forks this process with SIGINT blocked: until the session's handler is installed,
    an interrupt is ignored (its block's start finds it in ``interrupts``), never the death of a
    process still starting.
    """
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    os.setsid()
    _die_with_parent()
    _oom_first()
    leader = os.getpid()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    capture = Capture()
    link = _Link(sock, max_frame_bytes)
    sessions: queue.SimpleQueue[Session] = queue.SimpleQueue()
    jobs: queue.SimpleQueue[Exec | None] = queue.SimpleQueue()

    def serve() -> None:
        # Before the activation, in the spare's idle time. Mapped, not zeroed: a bytearray's
        # 256 page faults took 12-13 ms of the spare's setup under TCG (the setup a session's
        # first block waits for when its spare is young), and a small frame touches one page.
        decoder = FrameDecoder(max_frame_bytes)
        buffer = memoryview(mmap.mmap(-1, 1 << 20))
        try:
            activation = _await_activation(sock)
            session_id = activation.session
            host_calls = HostCalls(link.send, first_call_id)

            def keep(ref: str, fd: int) -> None:
                link.send_fd(KeepRef(session=session_id, ref=ref), fd)

            session = Session(
                session_id,
                send=link.send,
                host_calls=host_calls,
                capture=capture,
                max_output_chars=max_output_chars,
                cwd=activation.cwd,
                interrupts=interrupts,
                keep=keep if activation.prompt_refs else None,
            )
            sessions.put(session)
        except BaseException:
            traceback.print_exc(file=sys.__stderr__)
            os._exit(70)
        _read_frames(sock, decoder, buffer, session, host_calls, link, jobs)

    # Started before the process has a session: whatever a spare can do ahead of time, it does.
    # Started while SIGINT is still blocked, so the reader thread keeps it blocked: the kernel
    # then delivers the agent's SIGINT to the main thread, the one that runs blocks. Delivered
    # to the reader, it would not wake a main thread asleep in a block (``time.sleep``): CPython
    # runs the handler only when the main thread next executes bytecode.
    threading.Thread(target=serve, name="agent-reader", daemon=True).start()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    session = sessions.get()
    if session.cwd and os.path.isdir(session.cwd):
        os.chdir(session.cwd)
    install_sigint(session)
    while True:
        job = jobs.get()
        if job is None:
            os._exit(0)
        # The agent only forwards python and bash blocks (others are answered "unsupported").
        result = session.run(job.call, job.code, "bash" if job.language == "bash" else "python")
        if os.getpid() != leader:
            # A process the block forked (os.fork) ran to the block's end: it is not the
            # session, and must neither answer for it nor linger.
            os._exit(0)
        link.send(result)


def _read_frames(
    sock: socket.socket,
    decoder: FrameDecoder,
    buffer: memoryview,
    session: Session,
    host_calls: HostCalls,
    link: _Link,
    jobs: queue.SimpleQueue[Exec | None],
) -> None:
    """Serve the agent's frames; ``buffer`` is the one reused receive buffer (``recv(1 MiB)``
    allocates and frees 1 MiB per call)."""
    max_frame_bytes = decoder.max_frame_bytes
    #: Descriptors of shared buffers, in the order their ``shared_frame`` notices come.
    fds: collections.deque[int] = collections.deque()
    try:
        while True:
            count, ancillary, _, _ = sock.recvmsg_into(
                [buffer], ANCILLARY_BYTES, socket.MSG_CMSG_CLOEXEC
            )
            if ancillary:
                fds.extend(received_fds(ancillary))
            if not count:
                break
            frames = decoder.feed(buffer[:count])
            if decoder.missing > _TIGHT_READ_BYTES:
                # A large frame (a prompt): receive the rest straight into its own buffer.
                whole, received = decoder.detach_partial()
                with memoryview(whole) as view:
                    while received < len(whole):
                        got = sock.recv_into(view[received:])
                        if got == 0:
                            raise OSError("the agent closed the session mid-frame")
                        received += got
                    frames.append(decode_body(view[HEADER_BYTES:]))
            for frame in frames:
                if isinstance(frame, UnknownFrame) and frame.kind == "frame_coming":
                    if not fds:
                        raise RemoteProtocolError("a frame_coming came without its buffer")
                    make_room(fds.popleft())
                    continue
                if isinstance(frame, UnknownFrame) and frame.kind == "shared_frame":
                    if not fds:
                        raise RemoteProtocolError("a shared frame came without its buffer")
                    frame = read_shared(fds.popleft(), max_frame_bytes)
                    # Before the reply: the host's next large frame may reuse the buffer.
                    link.send(BufferReleased(session=session.id))
                if isinstance(frame, Exec):
                    jobs.put(frame)
                elif isinstance(frame, HostCallReply):
                    host_calls.resolve(frame.call, frame.value, frame.error)
                elif isinstance(frame, BindRefs):
                    # The agent attached one descriptor per name, in the frame's order.
                    if len(fds) < len(frame.refs):
                        raise RemoteProtocolError("bind_refs came without its prompts")
                    values = {name: read_kept(fds.popleft()) for name in frame.refs}
                    state = session.set_vars(values)
                    del values
                    link.send(VarsSet(session=frame.session, call=frame.call, state=state))
                elif isinstance(frame, SetVars):
                    # The values replaced are freed after the reply: giving back the pages of
                    # a 16 MiB prompt takes tens of milliseconds under TCG.
                    replaced = [session.namespace.get(name) for name in frame.values]
                    state = session.set_vars(frame.values)
                    link.send(VarsSet(session=frame.session, call=frame.call, state=state))
                    del replaced
    except (OSError, ProtocolError):
        traceback.print_exc(file=sys.__stderr__)
    # The agent is gone or closed this session: nothing may keep running.
    host_calls.fail_all("the agent closed the session")
    os._exit(0)
