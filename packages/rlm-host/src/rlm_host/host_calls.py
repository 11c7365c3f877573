"""Serving a session's host calls in a nursery its owner holds.

A session opened with ``host_calls=True`` hands each ``HostCall`` of its code to its owner
(``Session.host_calls``). ``serve_host_calls`` runs ``handler`` on each, every call in its own
task, and answers: the handler's return value (a msgpack-able value) becomes the call's result
in the guest, an exception becomes an exception there. It returns when the session closes or
the guest dies, cancelling the calls still running::

    session = await connection.open_session(host_calls=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_host_calls, session, handler)
        result = await session.exec("print(llm_query('hi'))")
        nursery.cancel_scope.cancel()

``serving(session, handler)`` is the same as an async context manager. The engine serves each
RLM's calls this way, in the nursery of that RLM (``rlm_host.engine.start``); it decodes them
with ``rlm_protocol.decode_host_call``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from rlm_protocol import HostCall, HostCallError

from .errors import single_error
from .session import Session

__all__ = ["HostCallHandler", "HostCallRefused", "serve_host_calls", "serving"]

#: Serves a host call made by code in the guest; its return value (a JSON-like value) becomes
#: the call's result in the guest and an exception becomes an exception there.
HostCallHandler = Callable[[HostCall], Awaitable[Any]]


class HostCallRefused(Exception):
    """Raised by a handler to answer with exactly ``error`` (any other exception answers with
    its type's name and its message)."""

    def __init__(self, error: HostCallError) -> None:
        super().__init__(f"{error.name}: {error.message}")
        self.error = error


async def serve_host_calls(session: Session, handler: HostCallHandler) -> None:
    """Answer ``session``'s host calls with ``handler`` until the session ends."""
    async with trio.open_nursery() as nursery:
        async for call in session.host_calls:
            nursery.start_soon(_serve_one, session, handler, call)
        # The session closed: its calls are answered by nobody (the guest dropped them).
        nursery.cancel_scope.cancel()


async def _serve_one(session: Session, handler: HostCallHandler, call: HostCall) -> None:
    try:
        value = await handler(call)
    except HostCallRefused as refused:
        await session.answer(call, error=refused.error)
        return
    except Exception as error:
        # The model's code gets the failure as an exception; the run goes on.
        await session.answer(call, error=HostCallError(type(error).__name__, str(error)))
        return
    await session.answer(call, value=value)


@asynccontextmanager
async def serving(session: Session, handler: HostCallHandler) -> AsyncIterator[Session]:
    """Serve ``session``'s host calls with ``handler`` while the block runs."""
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_host_calls, session, handler)
            yield session
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise single_error(group) from None
