"""What a ``Session`` needs from the connection it lives on, and nothing more.

``GuestConnection`` implements ``SessionLink``; ``Session`` is written against this protocol,
so the session module does not import the connection (the connection imports the session to
open one). The methods are the connection's request plumbing: a session sends its requests
and waits for their replies with them, and receives the host calls its guest session makes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol, TypeVar

import trio

from rlm_protocol import Frame, HostCall, HostCallError, HostCallReply, LocalProtocolError

from .errors import GuestDiedError, GuestError

__all__ = ["Pending", "SessionLink", "answer_host_call"]

_ReplyT = TypeVar("_ReplyT", bound=Frame)


class Pending:
    """A request waiting for its reply (``SessionLink.expect``)."""

    __slots__ = ("event", "reply", "error")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.reply: Frame | None = None
        self.error: BaseException | None = None


class SessionLink(Protocol):
    """The connection as its sessions see it."""

    #: Seconds each thread running the guest has waited for a host CPU (``rlm_host.starvation``).
    cpu_waits: Callable[[], Mapping[int, float]]

    @property
    def closed(self) -> bool:
        """Whether the guest is gone (every waiter has failed)."""
        ...

    def new_call(self) -> int:
        """A fresh id for a host-to-guest request."""
        ...

    async def send(self, frame: Frame) -> None:
        """Send one frame (``GuestDiedError`` when the connection is down)."""
        ...

    async def request(self, frame: Frame, call: int, reply_type: type[_ReplyT]) -> _ReplyT:
        """Send a request and wait for its reply (``expect``, ``send``, ``reply``, ``forget``)."""
        ...

    def expect(self, call: int) -> Pending:
        """Register the waiter for ``call``; do it before sending the request."""
        ...

    async def reply(self, pending: Pending, call: int, reply_type: type[_ReplyT]) -> _ReplyT:
        """Wait for the reply registered with ``expect`` and check its type."""
        ...

    def forget(self, call: int) -> None:
        """Stop waiting for ``call``: a reply arriving later is dropped."""
        ...

    def spawn(self, task: Callable[[], Awaitable[None]]) -> bool:
        """Run ``task`` (which must not raise) until the connection closes; ``False`` if closing."""
        ...

    async def abandon(self, reason: str) -> GuestDiedError:
        """Declare the guest dead although its channel is open (it stopped answering)."""
        ...

    def route(self, session_id: str, *, host_calls: bool) -> trio.MemoryReceiveChannel[HostCall] | None:
        """Start routing the session's host calls: to the returned channel with ``host_calls``,
        else they are refused (``NoHandler``). Before the session is opened in the guest."""
        ...

    def unroute(self, session_id: str) -> None:
        """Stop routing: the channel is closed; later calls are refused (``UnknownSession``)."""
        ...


async def answer_host_call(
    send: Callable[[Frame], Awaitable[None]],
    call: HostCall,
    *,
    value: object = None,
    error: HostCallError | None = None,
) -> None:
    """Send the reply to ``call``; never raises: a reply that cannot be encoded (too large, not
    msgpack-able) becomes an error reply, and a guest that is gone needs no reply.

    Shielded: a reply cancelled half-way would leave half a frame on the channel (and the
    encoder's buffer still lent out). Once the value is there, sending it is quick; whoever
    cancels (a session that closes) does not wait long.
    """
    with trio.CancelScope(shield=True):
        try:
            await send(HostCallReply(session=call.session, call=call.call, value=value, error=error))
            return
        except GuestError:
            return  # the guest is gone; its waiters died with it
        except LocalProtocolError as too_large:
            error = HostCallError("TooLarge", str(too_large))
        except TypeError as bad_value:
            # msgspec could not encode the value: tell the guest instead of dying.
            error = HostCallError("TypeError", f"host call result: {bad_value}")
        try:
            await send(HostCallReply(session=call.session, call=call.call, error=error))
        except GuestError:
            pass  # died between the two sends: nothing may leak into the caller's nursery
