"""The guest agent: reads frames from the host, runs sessions, writes results back.

One reader (the main thread) decodes frames and dispatches each kind through a table; blocks run
on per-session worker threads; every frame out goes through one write lock.
"""

from __future__ import annotations

import os
import platform
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

from rlm_protocol import (
    CAPABILITIES,
    DEFAULT_MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    Bye,
    CloseSession,
    ErrorFrame,
    Exec,
    Frame,
    FrameDecoder,
    FrameEncoder,
    Hello,
    HostCallReply,
    Interrupt,
    Limits,
    OpenSession,
    ProtocolError,
    SessionClosed,
    SessionOpened,
    SetVars,
    Shutdown,
    UnknownFrame,
    VarsSet,
    Welcome,
    is_compatible,
)

from . import __version__
from .capture import StreamRouter, install_routers
from .channel import Channel
from .session import HostCalls, Session

__all__ = ["Agent", "DEFAULT_LIMITS"]

DEFAULT_LIMITS = Limits(
    max_frame_bytes=DEFAULT_MAX_FRAME_BYTES,
    # The model only ever sees an 800-character prefix; a million characters per stream keeps
    # enough for the trajectory while a block that prints gigabytes costs neither side memory.
    max_output_chars=1_000_000,
    max_sessions=1024,
)


class _Stop(Exception):
    """Leave the read loop (``Shutdown``)."""


class Agent:
    """Serves one host at a time over ``channel``."""

    def __init__(self, channel: Channel, diagnostic: TextIO, limits: Limits = DEFAULT_LIMITS) -> None:
        self.channel = channel
        self.limits = limits
        self._log = diagnostic
        self._write_lock = threading.Lock()
        self._encoder = FrameEncoder(limits.max_frame_bytes)
        self._stdout, self._stderr = self._routers(diagnostic)
        self.host_calls = HostCalls(self.send)
        self.sessions: dict[str, Session] = {}
        self._handlers: dict[type[Frame], Callable[[Any], None]] = {
            Welcome: self._on_welcome,
            OpenSession: self._on_open_session,
            SetVars: self._on_set_vars,
            Exec: self._on_exec,
            Interrupt: self._on_interrupt,
            CloseSession: self._on_close_session,
            HostCallReply: self._on_host_call_reply,
            Shutdown: self._on_shutdown,
        }

    @staticmethod
    def _routers(diagnostic: TextIO) -> tuple[StreamRouter, StreamRouter]:
        if isinstance(sys.stdout, StreamRouter) and isinstance(sys.stderr, StreamRouter):
            return sys.stdout, sys.stderr
        return install_routers(diagnostic)

    # --- output ----------------------------------------------------------------------------

    def send(self, frame: Frame) -> None:
        """Encode and write one frame; safe from any thread."""
        with self._write_lock:
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
            self.channel.write(view)

    def log(self, message: str) -> None:
        print(f"rlm-guest: {message}", file=self._log, flush=True)

    def hello(self) -> Hello:
        return Hello(
            protocol=PROTOCOL_VERSION,
            agent="rlm-guest",
            agent_version=__version__,
            capabilities=CAPABILITIES,
            limits=self.limits,
            runtime={
                "python": platform.python_version(),
                "implementation": platform.python_implementation(),
                "kernel": platform.release(),
                "pid": str(os.getpid()),
            },
        )

    # --- input -----------------------------------------------------------------------------

    def serve(self) -> int:
        """Serve hosts until ``Shutdown`` (exit 0) or a protocol error (exit 2).

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
                self.send(ErrorFrame(code="bad_request", message=f"protocol error: {error}"))
                return 2
            if not reconnect:
                return 0

    def _serve_connection(self) -> bool:
        decoder = FrameDecoder(self.limits.max_frame_bytes)
        while True:
            data = self.channel.read()
            if not data:
                decoder.eof()
                self._drop_all("host disconnected")
                return self.channel.reconnects
            for frame in decoder.feed(data):
                self.dispatch(frame)

    def dispatch(self, frame: Frame | UnknownFrame) -> None:
        if isinstance(frame, UnknownFrame):
            # A newer minor's frame: ignore it, as PROTOCOL.md requires.
            self.log(f"ignoring unknown frame kind {frame.kind!r}")
            return
        handler = self._handlers.get(type(frame))
        if handler is None:
            self.send(
                ErrorFrame(
                    code="bad_request",
                    message=f"{type(frame).__name__} is not a host-to-guest frame",
                    session=getattr(frame, "session", None),
                    call=getattr(frame, "call", None),
                )
            )
            return
        handler(frame)

    def _session(self, frame: SetVars | Exec | CloseSession) -> Session | None:
        session = self.sessions.get(frame.session)
        if session is None:
            self.send(
                ErrorFrame(
                    code="unknown_session",
                    message=f"no session {frame.session!r}",
                    session=frame.session,
                    call=frame.call,
                )
            )
        return session

    def _on_welcome(self, frame: Welcome) -> None:
        if not is_compatible(frame.protocol):
            raise ProtocolError(
                f"host speaks protocol {frame.protocol[0]}.{frame.protocol[1]}, this guest "
                f"{PROTOCOL_VERSION[0]}.{PROTOCOL_VERSION[1]}: majors differ"
            )

    def _on_open_session(self, frame: OpenSession) -> None:
        if frame.session in self.sessions:
            self.send(
                ErrorFrame(
                    code="session_exists",
                    message=f"session {frame.session!r} is already open",
                    session=frame.session,
                    call=frame.call,
                )
            )
            return
        if len(self.sessions) >= self.limits.max_sessions:
            self.send(
                ErrorFrame(
                    code="too_large",
                    message=f"at most {self.limits.max_sessions} sessions may be open",
                    session=frame.session,
                    call=frame.call,
                )
            )
            return
        session = Session(
            frame.session,
            send=self.send,
            host_calls=self.host_calls,
            stdout=self._stdout,
            stderr=self._stderr,
            max_output_chars=self.limits.max_output_chars,
            cwd=frame.cwd,
        )
        self.sessions[frame.session] = session
        self.send(SessionOpened(session=frame.session, call=frame.call, state=session.state()))

    def _on_set_vars(self, frame: SetVars) -> None:
        session = self._session(frame)
        if session is not None:
            state = session.set_vars(frame.values)
            self.send(VarsSet(session=frame.session, call=frame.call, state=state))

    def _on_exec(self, frame: Exec) -> None:
        session = self._session(frame)
        if session is None:
            return
        if frame.language not in ("python", "bash"):
            self.send(
                ErrorFrame(
                    code="unsupported",
                    message=f"language {frame.language!r} is not supported",
                    session=frame.session,
                    call=frame.call,
                )
            )
            return
        if not session.start_exec(frame.call, frame.code, frame.language, frame.timeout):
            self.send(
                ErrorFrame(
                    code="session_busy",
                    message=f"session {frame.session!r} is already running a block",
                    session=frame.session,
                    call=frame.call,
                )
            )

    def _on_interrupt(self, frame: Interrupt) -> None:
        session = self.sessions.get(frame.session)
        if session is not None:
            session.interrupt()

    def _on_close_session(self, frame: CloseSession) -> None:
        session = self.sessions.pop(frame.session, None)
        if session is None:
            self.send(
                ErrorFrame(
                    code="unknown_session",
                    message=f"no session {frame.session!r}",
                    session=frame.session,
                    call=frame.call,
                )
            )
            return
        session.close()
        self.send(SessionClosed(session=frame.session, call=frame.call))

    def _on_host_call_reply(self, frame: HostCallReply) -> None:
        self.host_calls.resolve(frame.call, frame.value, frame.error)

    def _on_shutdown(self, frame: Shutdown) -> None:
        self._drop_all("shutdown")
        self.send(Bye())
        raise _Stop

    def _drop_all(self, reason: str) -> None:
        self.host_calls.fail_all(reason)
        for session in self.sessions.values():
            session.close()
        self.sessions.clear()
