"""What an RLM waits for while its first model request is out: the guest, then its session.

The model never sees the prompt, only its metadata, which the host computes. So the first model
request does not need the guest at all, and the engine sends it while the VM boots, the session
opens and the prompt is bound: a run's start costs the longer of the two, not their sum; a
child's session opens during its first model request instead of before it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from ..errors import RlmError

if TYPE_CHECKING:
    from ..connection import GuestConnection
    from ..session import Session

__all__ = ["PendingGuest", "SessionOpening"]


class PendingGuest:
    """A guest connection that is still starting; ``wait`` returns it or raises why it failed.

    ``rlm_host.api`` starts the VM in a background task and gives the engine one of these, so
    that the root's first model request goes out while the VM boots.
    """

    def __init__(self) -> None:
        self._ready = trio.Event()
        self._connection: GuestConnection | None = None
        self._error: BaseException | None = None

    def set(self, connection: GuestConnection) -> None:
        self._connection = connection
        self._ready.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._ready.set()

    @property
    def ready(self) -> bool:
        """Whether the guest has started (``wait`` returns at once)."""
        return self._connection is not None

    async def wait(self) -> GuestConnection:
        await self._ready.wait()
        if self._error is not None:
            raise self._error
        assert self._connection is not None
        return self._connection


class SessionOpening:
    """An RLM's session from the moment its opening starts until it is closed.

    ``session`` is set as soon as the guest has opened it (binding the prompt may still be
    under way); ``wait`` returns once it is ready for blocks, or raises why it is not.
    """

    def __init__(self) -> None:
        self.session: Session | None = None
        self.error: BaseException | None = None
        #: Cancelled by ``RlmEngine.close`` when the RLM ends before its session is ready.
        self.scope = trio.CancelScope()
        self._done = trio.Event()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def succeed(self) -> None:
        self._done.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._done.set()

    async def settled(self) -> None:
        """Wait until the opening has succeeded or failed."""
        await self._done.wait()

    async def wait(self) -> Session:
        await self._done.wait()
        if self.error is not None:
            raise self.error
        if self.session is None:
            raise RlmError("the session was closed before it had opened")
        return self.session
