"""Frames from the session processes: relayed to the host as they are, or handled on the way.

A session process's frames reach the host as raw bytes (an ``exec_result`` is not decoded). The
agent's own frames among them never leave the guest: ``buffer_released`` (a shared buffer is free
again, ``shared.py``) and ``keep_ref`` (a prompt to keep by reference, ``kept.py``). The end of a
process's stream is its death, answered by a reset (``supervisor.py``).
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import msgspec

from rlm_protocol import (
    HEADER_BYTES,
    ErrorFrame,
    ExecError,
    ExecResult,
    Frame,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    decode_body,
    decode_envelope,
)

from .kept import KeptPrompts
from .processes import reap_children
from .shared import ANCILLARY_BYTES, BufferPool, KeepRef, received_fds
from .supervisor import SessionProcess, Supervisor

__all__ = ["SessionRelay"]

_keep_ref_decoder = msgspec.msgpack.Decoder(KeepRef)


class SessionRelay:
    """Reads the session processes' sockets for the agent's loop.

    ``write`` puts raw frames on the host channel; ``send`` encodes a frame and writes it.
    """

    def __init__(
        self,
        processes: Supervisor,
        buffers: BufferPool,
        kept: KeptPrompts,
        *,
        write: Callable[[bytes | memoryview], None],
        send: Callable[[Frame], None],
    ) -> None:
        self._processes = processes
        self._buffers = buffers
        self._kept = kept
        self._write = write
        self._send = send
        #: Reused for every read from a session (no 1 MiB allocation per ``recv``).
        self._receive_buffer = memoryview(bytearray(1 << 20))

    def receive(self, process: SessionProcess) -> None:
        """Read what ``process`` sent and act on it; called when its socket is readable."""
        try:
            count, ancillary, _, _ = process.sock.recvmsg_into(
                [self._receive_buffer], ANCILLARY_BYTES, socket.MSG_CMSG_CLOEXEC
            )
            data = self._receive_buffer[:count]
        except BlockingIOError:
            return
        except OSError:
            data, ancillary = self._receive_buffer[:0], []
        if ancillary:
            process.received.extend(received_fds(ancillary))
        if process is self._processes.spare:
            # A spare has nothing to say; it ended (or broke): fork another when one is due.
            self._processes.discard(process)
            return
        if not data:
            self._processes.reset(process, self._processes.death_error(process.pid))
            return
        try:
            frames = process.decoder.feed_raw(data)
        except ProtocolError as error:
            self._processes.reset(process, ExecError(name="SessionDied", value=f"protocol error: {error}"))
            return
        ended = False
        for raw in frames:
            envelope = decode_envelope(raw)
            if envelope.kind == "buffer_released":
                if process.lent:
                    self._buffers.give_back(process.lent.popleft())
                continue
            if envelope.kind == "keep_ref":
                try:
                    self._keep(process, raw)
                except (ProtocolError, msgspec.ValidationError) as error:
                    self._processes.reset(process, ExecError(name="SessionDied", value=f"protocol error: {error}"))
                    return
                continue
            if envelope.kind == "exec_result" and envelope.call == process.running:
                ended = True
                if process.grace is not None:
                    # An interrupted block: the session lives on, but nothing it started
                    # may (a fork bomb's children, a pipeline in the background).
                    self._processes.kill_leftovers(process)
                    reap_children()
                process.running = process.deadline = process.grace = None
                if process.lost:
                    process.lost = False
                    self._send_marked_reset(raw)
                    continue
            self._write(raw)
        if ended:
            # The spare an open took is replaced here, once the result is on its way: the host
            # reads it and, in a run, waits for its model, while the agent forks (~10 ms under
            # TCG). Forked after the open's reply, the fork delayed the session's first block;
            # after the previous close's reply, it delayed a back-to-back open. A block's result
            # is a fixed point of the frame stream: the process table a block sees does not
            # depend on timing (a session's first block sees no spare, its later ones one).
            self._processes.ensure_spare()

    def _send_marked_reset(self, raw: bytes | bytearray) -> None:
        """Relay the first result after a process died between blocks, saying the state is gone.

        Encoded by the codec like every frame the agent makes, so the frame limit holds: the
        flag adds a few bytes to a result that may already be at the limit.
        """
        frame = decode_body(memoryview(raw)[HEADER_BYTES:])
        assert isinstance(frame, ExecResult)
        try:
            self._send(msgspec.structs.replace(frame, session_reset=True))
        except LocalProtocolError as error:
            self._send(ErrorFrame(code="too_large", message=str(error), session=frame.session, call=frame.call))

    def _keep(self, process: SessionProcess, raw: bytes | bytearray) -> None:
        frame = _keep_ref_decoder.decode(memoryview(raw)[HEADER_BYTES:])
        if not process.received:
            raise RemoteProtocolError("keep_ref came without its prompt")
        self._kept.keep(frame.ref, process.received.popleft(), process.session)
