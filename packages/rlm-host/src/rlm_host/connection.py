"""One trio connection to a guest agent over any ``trio.abc.Stream``.

Structure follows trio-websocket: one reader task owns the stream's receive side, decodes frames
with the sans-IO ``FrameDecoder`` and routes each one in a single place; sends share one lock;
waiters are registered *before* their request is sent; when the reader stops, every waiter wakes
with the same ``GuestDiedError``.

Host calls are routed, not served, here: each session's calls go to a channel its owner reads
(``Session.host_calls``; ``rlm_host.host_calls.serve_host_calls`` runs a handler on them in the
owner's nursery). The connection answers by itself only the calls nobody can serve: of a session
it does not know, or of one opened without ``host_calls``.

Over 400 lines, as one class on purpose: the reader, the routing, the waiters and the death of
the connection share one state (``_pending``, ``_routes``, ``_death``), and splitting them
would make that state public; about half of the lines are documentation.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TypeVar

import trio

from rlm_protocol import (
    CAPABILITIES,
    PROMPT_REF,
    DEFAULT_MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    Bye,
    ErrorFrame,
    ExecResult,
    Frame,
    FrameDecoder,
    FrameEncoder,
    Hello,
    HostCall,
    HostCallError,
    ProtocolError,
    RemoteProtocolError,
    SessionClosed,
    SessionOpened,
    Shutdown,
    UnknownFrame,
    VarsSet,
    Welcome,
    is_compatible,
)

from .errors import (
    GuestDiedError,
    GuestError,
    GuestProtocolError,
    HandshakeError,
    SessionError,
    single_error,
)

from .session import Session
from .session_link import Pending, answer_host_call

__all__ = ["GuestConnection"]

_ReplyT = TypeVar("_ReplyT", bound=Frame)

#: Reads this large keep the 16 MiB prompt path to a few dozen receive calls.
RECEIVE_CHUNK = 1 << 20

#: How long diagnosis of a dead guest may take (waiting for an exit status, reading a log).
DEATH_DETAIL_SECONDS = 1.0


class GuestConnection:
    """A handshaken connection to one guest; opens :class:`~rlm_host.session.Session` objects.

    It is the ``SessionLink`` of its sessions (``rlm_host.session_link``).

    Create it with :meth:`open`, which owns the reader task::

        async with GuestConnection.open(stream) as connection:
            session = await connection.open_session()
            result = await session.exec("print(6 * 7)")
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        nursery: trio.Nursery,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        death_detail: Callable[[], Awaitable[str]] | None = None,
        cpu_waits: Callable[[], Mapping[int, float]] | None = None,
    ) -> None:
        self._stream = stream
        self._nursery = nursery
        self._encoder = FrameEncoder(max_frame_bytes)
        self._decoder = FrameDecoder(max_frame_bytes)
        self._send_lock = trio.Lock()
        self._calls = itertools.count(1)
        self._session_ids = itertools.count(1)
        self._pending: dict[int, Pending] = {}
        #: Each open session's host-call channel (``None``: its calls are refused).
        self._routes: dict[str, trio.MemorySendChannel[HostCall] | None] = {}
        self._hello_event = trio.Event()
        self._hello: Hello | None = None
        #: The capabilities this host said it will use (``Welcome.capabilities``).
        self.capabilities: frozenset[str] = frozenset()
        self._death: GuestError | None = None
        self._death_detail = death_detail
        #: Seconds each thread running the guest has waited for a host CPU (``rlm_host.starvation``);
        #: a verdict that the guest is hung does not count that time.
        self.cpu_waits: Callable[[], Mapping[int, float]] = cpu_waits or dict
        self._closed = trio.Event()
        self._bye = False

    # --- life cycle --------------------------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        stream: trio.abc.Stream,
        *,
        handshake_timeout: float = 60.0,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        death_detail: Callable[[], Awaitable[str]] | None = None,
        cpu_waits: Callable[[], Mapping[int, float]] | None = None,
    ) -> AsyncIterator[GuestConnection]:
        """Run the reader, complete the handshake, yield the connection, close it on exit.

        ``death_detail`` is awaited (for at most a second) when the guest dies, to add
        diagnosis such as the exit status or a VM console tail. ``cpu_waits`` gives the seconds
        each thread that runs the guest has waited for a host CPU (``VM.cpu_waits``): the host
        does not count them when it decides that the guest is hung.

        Raises:
            HandshakeError: no ``Hello`` within ``handshake_timeout`` or an incompatible major.
            GuestDiedError: the guest went away during the handshake.
        """
        try:
            async with trio.open_nursery() as nursery:
                connection = cls(
                    stream, nursery, max_frame_bytes=max_frame_bytes, death_detail=death_detail,
                    cpu_waits=cpu_waits,
                )
                nursery.start_soon(connection._reader)
                try:
                    await connection._handshake(handshake_timeout)
                    yield connection
                finally:
                    with trio.CancelScope(shield=True):
                        await connection.aclose()
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The nursery is an implementation detail: callers catch ``GuestDiedError`` or
            # their own exceptions, not a group around them.
            raise single_error(group) from None

    async def _handshake(self, timeout: float) -> None:
        with trio.move_on_after(timeout):
            await self._hello_event.wait()
        if self._death is not None:
            raise self._death
        hello = self._hello
        if hello is None:
            raise HandshakeError(f"the guest sent no Hello within {timeout:g} s")
        # Answer even on a mismatch, so that the guest can refuse too and say why.
        used = tuple(c for c in hello.capabilities if c in CAPABILITIES)
        self.capabilities = frozenset(used)
        await self.send(
            Welcome(
                protocol=PROTOCOL_VERSION,
                host="rlm-host",
                host_version=_host_version(),
                capabilities=used,
            )
        )
        if not is_compatible(hello.protocol):
            major, minor = hello.protocol
            error = HandshakeError(
                f"guest {hello.agent} {hello.agent_version} speaks protocol {major}.{minor}, "
                f"this host {PROTOCOL_VERSION[0]}.{PROTOCOL_VERSION[1]}: the majors differ. "
                "Rebuild the guest image (`rlm image build`) so that host and guest match."
            )
            self._die(error)
            raise error

    @property
    def hello(self) -> Hello:
        """The guest's ``Hello`` (version, capabilities, limits)."""
        assert self._hello is not None, "handshake not done"
        return self._hello

    @property
    def closed(self) -> bool:
        return self._death is not None

    async def aclose(self) -> None:
        """Ask the guest to shut down (briefly), then close the stream. Idempotent."""
        if self._death is None:
            with trio.move_on_after(2):
                try:
                    await self.send(Shutdown())
                    await self._closed.wait()
                except GuestError:
                    pass
        self._die(GuestDiedError("the connection was closed by the host"))
        await self._stream.aclose()

    def _die(self, error: GuestError) -> None:
        if self._death is not None:
            return
        self._death = error
        pending, self._pending = self._pending, {}
        for waiter in pending.values():
            waiter.error = error
            waiter.event.set()
        routes, self._routes = self._routes, {}
        for route in routes.values():
            if route is not None:
                route.close()  # its server stops and cancels the calls in flight
        self._hello_event.set()
        self._closed.set()

    # --- sending -----------------------------------------------------------------------------

    async def send(self, frame: Frame) -> None:
        """Send one frame.

        Raises:
            GuestDiedError: the connection is down.
            LocalProtocolError: the frame exceeds the frame size limit.
        """
        if self._death is not None:
            raise self._death
        async with self._send_lock:
            view = self._encoder.encode_view(frame)
            try:
                # A frame is written whole or not at all: cancelled half-way, it would leave
                # the channel mid-frame (and the encoder's buffer lent to a dead traceback).
                # A guest that stops reading is ended by closing the stream, which fails this.
                with trio.CancelScope(shield=True):
                    await self._stream.send_all(view)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
                self._die(await self._died(f"sending to the guest failed: {error}"))
                raise self._death from error  # type: ignore[misc]

    def new_call(self) -> int:
        return next(self._calls)

    def spawn(self, task: Callable[[], Awaitable[None]]) -> bool:
        """Run ``task`` in the background of the connection (until it closes).

        For requests whose answer nobody waits for, such as a session's close. ``task`` must
        not raise: an error would take the connection down. Returns ``False`` when the
        connection is closed or closing.
        """
        if self._death is not None:
            return False
        try:
            self._nursery.start_soon(task)
        except RuntimeError:  # the nursery is closed to new tasks
            return False
        return True

    def new_session_id(self) -> str:
        return f"s{next(self._session_ids)}"

    async def request(self, frame: Frame, call: int, reply_type: type[_ReplyT]) -> _ReplyT:
        """Send a request and wait for the reply with the same ``call`` id.

        If the caller is cancelled, the waiter is dropped and a late reply is discarded.

        Raises:
            SessionError: the guest answered with an ``ErrorFrame``.
            GuestDiedError: the guest went away first.
        """
        pending = self.expect(call)
        try:
            await self.send(frame)
            return await self.reply(pending, call, reply_type)
        finally:
            self.forget(call)

    def expect(self, call: int) -> Pending:
        """Register the waiter for ``call``; do it before sending the request."""
        if self._death is not None:
            raise self._death
        pending = Pending()
        self._pending[call] = pending
        return pending

    def forget(self, call: int) -> None:
        """Stop waiting for ``call``: a reply arriving later is dropped."""
        self._pending.pop(call, None)

    async def reply(self, pending: Pending, call: int, reply_type: type[_ReplyT]) -> _ReplyT:
        """Wait for the reply registered with :meth:`expect` and check its type."""
        await pending.event.wait()
        if pending.error is not None:
            raise pending.error
        reply = pending.reply
        if isinstance(reply, ErrorFrame):
            raise SessionError(reply.code, reply.message, reply.session)
        if not isinstance(reply, reply_type):
            raise GuestProtocolError(
                f"expected {reply_type.__name__} for call {call}, got {type(reply).__name__}"
            )
        return reply

    # --- sessions ----------------------------------------------------------------------------

    async def open_session(
        self, *, host_calls: bool = False, cwd: str | None = None, prompt_refs: bool = False
    ) -> Session:
        """Open a fresh session.

        With ``host_calls``, the session's host calls wait in ``Session.host_calls`` for its
        owner to serve them (``rlm_host.host_calls.serve_host_calls``); without, each fails in
        the guest with ``NoHandler``. With ``prompt_refs`` and a guest that has the
        ``prompt_ref`` capability, ``rlm_query`` in the session sends a ``PromptRef`` (payload
        ``prompt_ref``) instead of the prompt's text; ``Session.bind_refs`` binds it in another
        session (PROTOCOL.md, 1.1).
        """
        refs = prompt_refs and PROMPT_REF in self.capabilities
        return await Session.open(
            self, self.new_session_id(), host_calls=host_calls, cwd=cwd, prompt_refs=refs
        )

    def route(self, session_id: str, *, host_calls: bool) -> trio.MemoryReceiveChannel[HostCall] | None:
        if self._death is not None:
            raise self._death
        if not host_calls:
            self._routes[session_id] = None
            return None
        # Unbounded, as the tasks of the former handler registry were: the guest bounds how
        # many calls a session has in flight (one block at a time, a batch's prompts).
        send, receive = trio.open_memory_channel[HostCall](float("inf"))
        self._routes[session_id] = send
        return receive

    def unroute(self, session_id: str) -> None:
        route = self._routes.pop(session_id, None)
        if route is not None:
            route.close()

    async def abandon(self, reason: str) -> GuestDiedError:
        """Declare the guest dead although its channel is open (it stopped answering).

        Every waiter gets the returned error and the stream is closed; what runs the guest
        (``open_vm``, a batch pool) then kills it like a guest that exited.
        """
        if self._death is None:
            self._die(await self._died(reason))
        with trio.CancelScope(shield=True):
            await self._stream.aclose()
        assert self._death is not None
        if isinstance(self._death, GuestDiedError):
            return self._death
        return GuestDiedError(reason)

    # --- reading -----------------------------------------------------------------------------

    async def _died(self, reason: str) -> GuestDiedError:
        detail = ""
        if self._death_detail is not None:
            with trio.move_on_after(DEATH_DETAIL_SECONDS):
                try:
                    detail = await self._death_detail()
                except Exception as error:  # diagnosis must never mask the death itself
                    detail = f"(no detail: {error!r})"
        return GuestDiedError(reason, detail)

    async def _reader(self) -> None:
        try:
            while True:
                try:
                    data = await self._stream.receive_some(RECEIVE_CHUNK)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
                    self._die(await self._died(f"the guest channel broke: {error}"))
                    return
                if not data:
                    self._decoder.eof()
                    reason = "the guest exited" if self._bye else "the guest closed the channel"
                    self._die(await self._died(reason))
                    return
                for frame in self._decoder.feed(data):
                    self._dispatch(frame)
        except ProtocolError as error:
            self._die(GuestProtocolError(f"the guest broke the protocol: {error}"))
            with trio.CancelScope(shield=True):
                await self._stream.aclose()
        finally:
            # Cancelled (the VM died and its watcher cancelled its users, or the caller left):
            # nobody reads replies any more, so a request still waiting, such as a session's
            # shielded close, must hear it now instead of waiting forever.
            self._die(GuestDiedError("the connection stopped reading from the guest"))

    def _dispatch(self, frame: Frame | UnknownFrame) -> None:
        if isinstance(frame, UnknownFrame):
            return  # a newer minor's frame: ignored, as PROTOCOL.md requires
        if self._hello is None:
            if not isinstance(frame, Hello):
                raise RemoteProtocolError(
                    f"expected Hello as the first frame, got {type(frame).__name__}"
                )
            self._hello = frame
            self._hello_event.set()
            return
        match frame:
            case SessionOpened() | VarsSet() | ExecResult() | SessionClosed():
                self._resolve(frame.call, frame)
            case ErrorFrame(call=int() as call):
                self._resolve(call, frame)
            case HostCall():
                self._route_host_call(frame)
            case Bye():
                self._bye = True
            case ErrorFrame():
                # An error about no request in particular: the guest gives up on the connection.
                raise RemoteProtocolError(f"guest error [{frame.code}]: {frame.message}")
            case _:
                raise RemoteProtocolError(f"{type(frame).__name__} is not a guest-to-host frame")

    def _resolve(self, call: int, frame: Frame) -> None:
        waiter = self._pending.pop(call, None)
        if waiter is not None:  # else: a late reply to a cancelled request, dropped
            waiter.reply = frame
            waiter.event.set()

    def _route_host_call(self, call: HostCall) -> None:
        if call.session not in self._routes:
            error = HostCallError("UnknownSession", f"no session {call.session!r}")
        else:
            route = self._routes[call.session]
            try:
                if route is not None:
                    route.send_nowait(call)  # unbounded: never blocks the reader
                    return
            except trio.BrokenResourceError:
                pass  # its owner stopped serving: refused like a session without a server
            error = HostCallError("NoHandler", "this session serves no host calls")
        self._nursery.start_soon(self._refuse, call, error)

    async def _refuse(self, call: HostCall, error: HostCallError) -> None:
        await answer_host_call(self.send, call, error=error)


def _host_version() -> str:
    from . import __version__

    return __version__

