"""The host calls of one session process: call ids, and the waiters of the block's thread.

The block runs on the session process's main thread and waits here; the process's reader
thread delivers the host's replies with ``resolve``.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from typing import Any

from rlm_protocol import Frame, HostCall, HostCallError

__all__ = ["HostCallFailed", "HostCalls", "Waiter"]


class HostCallFailed(RuntimeError):
    """A host call the host answered with an error."""


class Waiter:
    """One host call's reply, awaited by the block's thread."""

    __slots__ = ("event", "value", "error")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.value: Any = None
        self.error: HostCallError | None = None


class HostCalls:
    """Call ids and reply waiters of one session.

    ``first_id`` gives each session process a disjoint block of ids, so ids stay unique on the
    whole connection (PROTOCOL.md, "Call ids") without any coordination between processes.
    """

    def __init__(self, send: Callable[[Frame], None], first_id: int = 1) -> None:
        self._send = send
        self._ids = itertools.count(first_id)
        self._waiters: dict[int, Waiter] = {}
        self._lock = threading.Lock()

    def start(
        self,
        session: str,
        method: str,
        payload: dict[str, Any] | Callable[[int], dict[str, Any]],
    ) -> tuple[int, Waiter]:
        """Send a host call; ``payload`` may be a function of the call's id (made before the
        call is sent)."""
        waiter = Waiter()
        with self._lock:
            call = next(self._ids)
            # Registered before the frame goes out: the reply may beat us back.
            self._waiters[call] = waiter
        try:
            body = payload(call) if callable(payload) else payload
            self._send(HostCall(session=session, call=call, method=method, payload=body))
        except BaseException:
            self.forget(call)
            raise
        return call, waiter

    def resolve(self, call: int, value: Any, error: HostCallError | None) -> bool:
        """Deliver a reply; False when nobody waits for it (a late reply is dropped)."""
        with self._lock:
            waiter = self._waiters.pop(call, None)
        if waiter is None:
            return False
        waiter.value, waiter.error = value, error
        waiter.event.set()
        return True

    def forget(self, call: int) -> None:
        with self._lock:
            self._waiters.pop(call, None)

    def fail_all(self, reason: str) -> None:
        """Wake every waiter with an error (the host went away)."""
        with self._lock:
            waiters, self._waiters = self._waiters, {}
        for waiter in waiters.values():
            waiter.error = HostCallError(name="ConnectionLost", message=reason)
            waiter.event.set()

    def wait(self, calls: Sequence[tuple[int, Waiter]]) -> list[Any]:
        """Wait for every reply, in the order of ``calls``; raise the first error.

        The wait is interruptible: a lock wait on the main thread returns to Python when a
        signal arrives, so ``SIGINT`` stops a block blocked on the host.
        """
        try:
            for _, waiter in calls:
                waiter.event.wait()
        finally:
            for call, waiter in calls:
                if not waiter.event.is_set():
                    self.forget(call)
        values = []
        for _, waiter in calls:
            if waiter.error is not None:
                raise HostCallFailed(f"{waiter.error.name}: {waiter.error.message}")
            values.append(waiter.value)
        return values
