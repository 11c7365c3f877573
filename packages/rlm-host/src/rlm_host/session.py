"""A REPL session in the guest, seen from the host."""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import trio

from rlm_protocol import (
    BindRefs,
    CloseSession,
    Exec,
    ExecResult,
    HostCall,
    HostCallError,
    Interrupt,
    Language,
    OpenSession,
    SessionClosed,
    SessionOpened,
    SetVars,
    VarsSet,
    VarsState,
)

from .errors import GuestError, SessionClosedError, SessionError
from .session_link import SessionLink, answer_host_call
from .starvation import starved_between

__all__ = ["Session"]

#: After a cancelled ``exec``, how long to wait for the guest to confirm the interrupt: the
#: guest's grace period (2 s) plus the time to kill and restart a stuck session.
INTERRUPT_CONFIRM_SECONDS = 5.0

#: A block with a timeout that has no result this long after its timeout means the guest itself
#: is stuck (its own timeout, interrupt and kill would have answered by then): the guest is
#: declared dead rather than waited for forever. Generous: the guest is slow under TCG. Time in
#: which the guest's threads waited for a host CPU is not counted (``rlm_host.starvation``).
HUNG_GUEST_SECONDS = 30.0


class Session:
    """A persistent namespace in the guest. Use :meth:`GuestConnection.open_session`.

    Methods may be called from several tasks, but one ``exec`` runs at a time per session (the
    guest answers a second with ``SessionError`` code ``session_busy``).

    A session opened with ``host_calls`` hands the host calls of its code to its owner through
    ``host_calls``; the owner answers each with ``answer`` (``rlm_host.host_calls`` does both).
    """

    def __init__(
        self,
        connection: SessionLink,
        session_id: str,
        host_calls: trio.MemoryReceiveChannel[HostCall] | None = None,
    ) -> None:
        self.connection = connection
        self.id = session_id
        self.state = VarsState()
        self._host_calls = host_calls
        self._closed = False

    @classmethod
    async def open(
        cls,
        connection: SessionLink,
        session_id: str,
        *,
        host_calls: bool = False,
        cwd: str | None = None,
        prompt_refs: bool = False,
    ) -> Session:
        """Open ``session_id`` in the guest (``GuestConnection.open_session`` names it)."""
        # Routed first: a host call can only come after the session exists in the guest, but
        # its channel must be in place by then.
        session = cls(connection, session_id, connection.route(session_id, host_calls=host_calls))
        call = connection.new_call()
        try:
            reply = await connection.request(
                OpenSession(session=session.id, call=call, cwd=cwd, prompt_refs=prompt_refs),
                call,
                SessionOpened,
            )
        except BaseException as error:
            connection.unroute(session.id)
            if isinstance(error, trio.Cancelled):
                # The guest may open it anyway (frames are handled in order): close it after,
                # or it would hold a process in the guest until the guest goes away.
                session._closed = True
                connection.spawn(session._close_in_background)
            raise
        session.state = reply.state
        return session

    @property
    def closed(self) -> bool:
        return self._closed or self.connection.closed

    @property
    def host_calls(self) -> trio.MemoryReceiveChannel[HostCall]:
        """The host calls of the session's code, in arrival order; the channel ends when the
        session closes or the guest dies. Only for a session opened with ``host_calls``."""
        if self._host_calls is None:
            raise RuntimeError(f"session {self.id} was opened without host_calls")
        return self._host_calls

    async def answer(self, call: HostCall, *, value: Any = None, error: HostCallError | None = None) -> None:
        """Reply to one of the session's host calls with ``value`` (a msgpack-able result) or
        ``error``. Never raises: a value that cannot be sent becomes an error in the guest."""
        await answer_host_call(self.connection.send, call, value=value, error=error)

    def _check_open(self) -> None:
        if self._closed:
            raise SessionClosedError(self.id)

    async def set_vars(self, values: Mapping[str, Any]) -> VarsState:
        """Bind ``values`` (msgpack-able: str, bytes, numbers, lists, dicts...) in the namespace.

        Also unsets ``Final``, as the seed does.
        """
        self._check_open()
        call = self.connection.new_call()
        reply = await self.connection.request(
            SetVars(session=self.id, call=call, values=dict(values)), call, VarsSet
        )
        self.state = reply.state
        return reply.state

    async def bind_refs(self, refs: Mapping[str, str]) -> VarsState:
        """Bind, under each name, the prompt the guest keeps under the ref (``PromptRef.ref``
        of an ``rlm_query`` from another session); also unsets ``Final``.

        Raises:
            SessionError: code ``unknown_ref`` when the guest keeps no such prompt (the session
                that made it has closed), or the guest lacks ``prompt_ref`` (``bad_request``).
        """
        self._check_open()
        call = self.connection.new_call()
        reply = await self.connection.request(
            BindRefs(session=self.id, call=call, refs=dict(refs)), call, VarsSet
        )
        self.state = reply.state
        return reply.state

    async def exec(
        self, code: str, language: Language = "python", *, timeout: float | None = None
    ) -> ExecResult:
        """Run one block and return how it ended (an exception in the code is a result).

        ``timeout`` is enforced by the guest, which interrupts the block. If this call is
        cancelled, the guest is told to interrupt the block before the cancellation proceeds.

        Raises:
            SessionError: the guest refused (``session_busy``, ``unknown_session``...).
            GuestDiedError: the guest went away, or gave no result ``HUNG_GUEST_SECONDS``
                after ``timeout`` (it is stuck: the connection is closed).
        """
        self._check_open()
        connection = self.connection
        call = connection.new_call()
        pending = connection.expect(call)
        try:
            await connection.send(
                Exec(session=self.id, call=call, code=code, language=language, timeout=timeout)
            )
            limit = math.inf if timeout is None else timeout + HUNG_GUEST_SECONDS
            started, waits = trio.current_time(), connection.cpu_waits()
            deadline = started + limit
            while True:
                with trio.move_on_at(deadline) as waited:
                    result = await connection.reply(pending, call, ExecResult)
                if not waited.cancelled_caught:
                    break
                # Time the guest spent waiting for a host CPU does not count: on a loaded host
                # a healthy guest is slow, not hung (``rlm_host.starvation``).
                starved = starved_between(waits, connection.cpu_waits())
                if started + limit + starved <= trio.current_time():
                    raise await connection.abandon(
                        f"the guest did not answer a block {limit:.0f} s after it started (its "
                        f"timeout was {timeout} s; not counting {starved:.1f} s it waited for a "
                        "host CPU): the guest is hung"
                    )
                deadline = started + limit + starved
        except trio.Cancelled:
            # Stop the block, and wait (bounded) for it to end, so that the session is free
            # again when this cancellation has finished.
            with trio.CancelScope(shield=True):
                try:
                    await connection.send(Interrupt(session=self.id))
                    await _wait_unless_late(pending.event, INTERRUPT_CONFIRM_SECONDS, connection)
                except GuestError:
                    pass
            raise
        finally:
            connection.forget(call)
        self.state = result.state
        return result

    async def interrupt(self) -> None:
        """Ask the guest to stop the running block; its ``exec`` returns ``interrupted``."""
        self._check_open()
        await self.connection.send(Interrupt(session=self.id))

    async def close(self) -> None:
        """Close the session in the guest and cancel its host calls. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.connection.unroute(self.id)
        await self._close_in_guest()

    def close_later(self) -> bool:
        """Close the session without waiting for the guest to confirm; idempotent.

        The session is closed for the host at once (its host calls are cancelled); the guest's
        teardown (killing its processes, removing its cgroup) goes on in the background of the
        connection. Returns ``False`` when the connection is shutting down and ``close`` must be
        awaited instead.
        """
        if self._closed:
            return True
        if not self.connection.spawn(self._close_in_background):
            return False
        self._closed = True
        self.connection.unroute(self.id)
        return True

    async def _close_in_guest(self) -> None:
        if self.connection.closed:
            return
        call = self.connection.new_call()
        try:
            await self.connection.request(
                CloseSession(session=self.id, call=call), call, SessionClosed
            )
        except GuestError:
            pass  # a dead guest has no sessions left to close

    async def _close_in_background(self) -> None:
        try:
            await self._close_in_guest()
        except SessionError:
            pass  # e.g. a cancelled open the guest refused: there is nothing to close

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with trio.CancelScope(shield=True):
            await self.close()


async def _wait_unless_late(event: trio.Event, seconds: float, connection: SessionLink) -> None:
    """Wait for ``event`` at most ``seconds``, not counting time the guest waited for a host CPU.

    Killing a fork bomb's thousands of processes is guest work: on a loaded host it takes as
    long as the guest is kept from running, and a bound in wall-clock time would give up on a
    guest that is only slow (the next block would then find the session still busy).
    """
    begun, waits = trio.current_time(), connection.cpu_waits()
    deadline = begun + seconds
    while True:
        with trio.move_on_at(deadline):
            await event.wait()
            return
        later = begun + seconds + starved_between(waits, connection.cpu_waits())
        if later <= trio.current_time():
            return
        deadline = later
