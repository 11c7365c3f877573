"""The sessions of a parent's finished children, closed when the parent's block ends.

A child answers its parent's ``rlm_query`` as soon as its ``Final`` is set; closing its session
(ending its processes, and the guest making a spare for the next open) is work for the guest.
Sent at once, the closes of a batch's children land exactly while the parent's block collects
their answers and ends: under TCG the two vCPUs then share the parent's last step with eight
teardowns. Held until the parent's ``exec`` has returned, the closes run while the parent's
next model request is out, where the guest is idle.

At most ``limit`` sessions are held per parent (a block that calls ``rlm_query`` in a loop
would otherwise keep every child's process until its end): past it, the oldest is closed at
once.
"""

from __future__ import annotations

from collections import deque
from typing import Final

import trio

from ..session import Session

__all__ = ["HELD_CLOSES", "HeldCloses"]

#: Sessions held per parent: a batch's width with the default concurrency (8), twice over.
#: Each held session is an idle process in the guest, of its 1024 sessions at most.
HELD_CLOSES: Final = 16

#: Seconds an awaited close may take (when the connection cannot close in the background).
_CLOSE_GRACE_SECONDS: Final = 5.0


class HeldCloses:
    """Children's sessions waiting for their parent's block to end.

    >>> held = HeldCloses(limit=0)  # nothing held: every close goes out at once
    >>> held.held
    0
    """

    def __init__(self, limit: int | None = None) -> None:
        self.limit = HELD_CLOSES if limit is None else limit
        self._sessions: deque[Session] = deque()

    @property
    def held(self) -> int:
        return len(self._sessions)

    async def hold(self, session: Session) -> None:
        """Close ``session`` when ``release`` is called (or now, past the limit)."""
        self._sessions.append(session)
        while len(self._sessions) > self.limit:
            await _close(self._sessions.popleft())

    async def release(self) -> None:
        """Close every held session without waiting for the guest (the parent's block ended)."""
        while self._sessions:
            await _close(self._sessions.popleft())

    async def end(self) -> None:
        """The parent has ended: release, and hold nothing from now on (a child cancelled
        with its parent ends after it)."""
        self.limit = 0
        await self.release()


async def _close(session: Session) -> None:
    # In the background where the connection can; awaited (shielded, bounded) where it is
    # shutting down, as a child's close was before it could be held.
    if not session.close_later():
        with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_GRACE_SECONDS):
            await session.close()
