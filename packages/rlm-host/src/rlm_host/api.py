"""The embedding API: run a prompt through an RLM from other programs.

From trio code::

    from rlm_host.api import RunOptions, run_rlm

    result = await run_rlm(long_text, query="Which clause limits liability?",
                           options=RunOptions.of(model="qwen3.6", max_steps=12))
    print(result.answer, result.usage.total_tokens, result.trajectory_path)

From plain (non-async) code, ``run_rlm_sync`` has the same signature and starts its own trio
loop::

    from rlm_host.api import RunOptions, run_rlm_sync

    result = run_rlm_sync("What is 6 * 7? Set Final to the number.",
                          options=RunOptions.of(isolation="local"))
    if result.answer is None:
        print("stopped:", result.stop_reason, result.detail)

A run that ends on a budget returns ``answer=None`` with ``stop_reason`` and ``detail``; a run
that cannot go on (model server down, guest died) raises the ``RlmError`` subclass that says why.

Also here: host tools (``RunOptions.host_tools``), typed answers (``answer_type``), the run's
events as an async iterator (``open_run``). This module is a facade: ``RunOptions`` lives in
``rlm_host.options``, the setup of a run in ``rlm_host.run_context``, ``Conversation`` (several
questions, one REPL) in ``rlm_host.conversation`` and ``resume_rlm`` (``--resume``) in
``rlm_host.resume``; all are re-exported here.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar, overload

import trio

from .connection import GuestConnection
from .conversation import Conversation
from .engine import Price, query_task
from .errors import single_error
from .options import DEFAULT_BLOCK_TIMEOUT, RunOptionFields, RunOptions
from .resume import resume_rlm
from .run_context import RunResult, open_run_context
from .tools import HostTool
from .trajectory import Event, EventSink

__all__ = [
    "DEFAULT_BLOCK_TIMEOUT",
    "Conversation",
    "HostTool",
    "Price",
    "RunEvents",
    "RunOptionFields",
    "RunOptions",
    "RunResult",
    "open_run",
    "resume_rlm",
    "run_rlm",
    "run_rlm_sync",
]

T = TypeVar("T")


@overload
async def run_rlm(
    prompt: str,
    *,
    query: str | None = None,
    options: RunOptions = RunOptions(),
    connection: GuestConnection | None = None,
    answer_type: None = None,
) -> RunResult[Any]: ...


@overload
async def run_rlm(
    prompt: str,
    *,
    query: str | None = None,
    options: RunOptions = RunOptions(),
    connection: GuestConnection | None = None,
    answer_type: type[T],
) -> RunResult[T]: ...


async def run_rlm(
    prompt: str,
    *,
    query: str | None = None,
    options: RunOptions = RunOptions(),
    connection: GuestConnection | None = None,
    answer_type: Any = None,
) -> RunResult[Any]:
    """Run ``prompt`` through an RLM and return its answer, usage and trajectory path.

    With ``query``, the model's task is the question followed by ``prompt`` as a delimited
    context; without, ``prompt`` is the task verbatim. Pass an open ``connection`` to reuse one
    guest for many runs (each run opens and closes its own sessions); otherwise a guest is
    started as ``options.isolation`` says and stopped at the end.

    With ``answer_type`` (a msgspec Struct, a dataclass, or a plain type such as ``list[int]``),
    ``Final`` is converted to it on the host with ``msgspec.convert``; a mismatch goes back to
    the model as an observation, and ``RunResult.value`` holds the typed value.

    Raises ``ModelError`` subclasses (server down, model missing, bad replies) and
    ``GuestError`` subclasses (the guest could not start or died). Cancellation stops the run
    and its guest sessions.
    """
    return await _run(prompt, query=query, options=options, connection=connection, answer_type=answer_type)


async def _run(
    prompt: str,
    *,
    query: str | None,
    options: RunOptions,
    connection: GuestConnection | None,
    answer_type: Any,
    sinks: Sequence[EventSink] = (),
) -> RunResult[Any]:
    task = query_task(query, prompt) if query is not None else prompt
    async with open_run_context(task, options, connection, sinks=sinks) as run:
        outcome = await run.engine.run(task, answer_type=answer_type)
        return run.result(outcome)


@overload
def run_rlm_sync(
    prompt: str, *, query: str | None = None, options: RunOptions = RunOptions(), answer_type: None = None
) -> RunResult[Any]: ...


@overload
def run_rlm_sync(
    prompt: str, *, query: str | None = None, options: RunOptions = RunOptions(), answer_type: type[T]
) -> RunResult[T]: ...


def run_rlm_sync(
    prompt: str,
    *,
    query: str | None = None,
    options: RunOptions = RunOptions(),
    answer_type: Any = None,
) -> RunResult[Any]:
    """``run_rlm`` for callers outside trio: runs its own event loop until the answer."""
    return trio.run(
        lambda: _run(prompt, query=query, options=options, connection=None, answer_type=answer_type)
    )


class RunEvents:
    """The events of a run started by ``open_run``, as they happen; ``result`` at the end.

    Iterating yields every trajectory event (the same objects the trajectory file records, from
    the same recorder) and ends when the run ends.
    """

    def __init__(self, receive: trio.MemoryReceiveChannel[Event], cancel_scope: trio.CancelScope) -> None:
        self._receive = receive
        self._cancel_scope = cancel_scope
        self._result: RunResult[Any] | None = None
        self._done = trio.Event()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._receive.__aiter__()

    @property
    def result(self) -> RunResult[Any]:
        """The run's result; raises ``RuntimeError`` before the run has ended."""
        if self._result is None:
            raise RuntimeError("the run has not ended yet: iterate its events or await wait()")
        return self._result

    async def wait(self) -> RunResult[Any]:
        """Wait for the end of the run and return its result."""
        await self._done.wait()
        return self.result

    def cancel(self) -> None:
        """Stop the run (its sessions are closed; the trajectory ends with ``run_end``)."""
        self._cancel_scope.cancel()

    async def _drive(self, run: Callable[[], Awaitable[RunResult[Any]]]) -> None:
        """Run ``run`` to its result (``open_run`` starts this in the nursery of the run)."""
        try:
            self._result = await run()
        finally:
            self._done.set()


@contextlib.asynccontextmanager
async def open_run(
    prompt: str,
    *,
    query: str | None = None,
    options: RunOptions = RunOptions(),
    connection: GuestConnection | None = None,
    answer_type: Any = None,
) -> AsyncIterator[RunEvents]:
    """Start a run in the background and yield its events (``RunEvents``)::

        async with open_run(text, options=options) as run:
            async for event in run:
                print(type(event).__name__)
        print(run.result.answer)

    Leaving the block waits for the run to end (``run.cancel()`` stops it first); an error that
    ended the run is raised there.
    """
    send, receive = trio.open_memory_channel[Event](math.inf)

    def sink(event: Event) -> None:
        try:
            send.send_nowait(event)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the reader went away: the trajectory still has everything

    try:
        async with trio.open_nursery() as nursery:
            events = RunEvents(receive, nursery.cancel_scope)

            async def run() -> RunResult[Any]:
                async with send:
                    return await _run(
                        prompt, query=query, options=options, connection=connection,
                        answer_type=answer_type, sinks=[sink],
                    )

            nursery.start_soon(events._drive, run)
            yield events
    except BaseExceptionGroup as group:
        raise single_error(group) from None
