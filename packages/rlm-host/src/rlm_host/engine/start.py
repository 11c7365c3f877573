"""The start overlap: an RLM's first model request goes out while its session opens.

The model never sees the prompt, only its metadata, which the host computes. So the first model
request does not need the guest at all, and the engine sends it while the VM boots, the session
opens and the prompt is bound: a run's start costs the longer of the two, not their sum; a
child's session opens during its first model request instead of before it.

Two pieces: ``Soon``, a value another task is making (the guest that ``rlm_host.api`` starts in
the background, an RLM's session), and ``overlapped``, which runs an RLM's steps beside the
opening of its session in one nursery that the RLM owns: the opening, the serving of the
session's host calls and the steps are its tasks; a failed opening cancels the steps at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import trio

from ..errors import RlmError, single_error

__all__ = ["Soon", "overlapped"]

T = TypeVar("T")
R = TypeVar("R")


class Soon(Generic[T]):
    """A value that another task is making; ``wait`` returns it or raises why it failed.

    ``scope`` is the cancel scope of the work that makes it: cancelling it settles the value
    (failed) soon after.
    """

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self._done = trio.Event()
        self._value: T | None = None
        self._error: BaseException | None = None

    def set(self, value: T) -> None:
        self._value = value
        self._done.set()

    def fail(self, error: BaseException) -> None:
        if not self._done.is_set():
            self._error = error
            self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def value(self) -> T | None:
        """The value if it has been made (``None`` before or after a failure)."""
        return self._value

    @property
    def error(self) -> BaseException | None:
        return self._error

    async def settled(self) -> None:
        """Wait until the value was made or failed."""
        await self._done.wait()

    async def wait(self) -> T:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


async def make(soon: Soon[T], make_it: Callable[[], Awaitable[T]], what: str) -> None:
    """Make ``soon``'s value in its scope; never raises but ``Cancelled`` from outside, which
    still settles ``soon`` (whoever waits gets the error)."""
    try:
        with soon.scope:
            try:
                soon.set(await make_it())
            except Exception as error:
                soon.fail(error)
    finally:
        soon.fail(RlmError(f"{what} ended before it was ready"))


async def overlapped(
    soon: Soon[T],
    make_it: Callable[[trio.Nursery], Awaitable[T]],
    steps: Callable[[], Awaitable[R]],
    close: Callable[[], Awaitable[None]],
    what: str,
) -> R:
    """Run ``steps`` while ``make_it`` makes ``soon`` beside it, in one nursery (passed to
    ``make_it`` for tasks that live as long as the steps, such as serving host calls); then
    ``close``, and cancel what is left.

    A failed ``make_it`` cancels the steps at once (the model's reply is not worth waiting for)
    and is what this raises.
    """
    result: list[R] = []
    try:
        async with trio.open_nursery() as nursery:
            steps_scope = trio.CancelScope()

            async def opening() -> None:
                await make(soon, lambda: make_it(nursery), what)
                if soon.error is not None:
                    steps_scope.cancel()

            nursery.start_soon(opening)
            try:
                with steps_scope:
                    result.append(await steps())
            finally:
                soon.scope.cancel()  # an opening that is still under way is not needed
                with trio.CancelScope(shield=True):
                    await soon.settled()
                    await close()
                nursery.cancel_scope.cancel()  # serving host calls, if the close left it
    except BaseExceptionGroup as group:
        raise single_error(group) from None
    if not result:
        assert soon.error is not None
        raise soon.error
    return result[0]
