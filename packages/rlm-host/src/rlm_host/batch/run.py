"""Running a batch from code: ``open_batch`` (results and live counters) and ``run_batch``.

::

    from rlm_host.batch import BatchOptions, read_tasks, run_batch

    async for result in run_batch(read_tasks(Path("tasks.jsonl")), BatchOptions(workers=2)):
        print(result.id, result.status, result.answer)

Results come in the order tasks finish. ``run_batch`` is an async generator that holds a
nursery: iterate it to the end, or wrap it in ``contextlib.aclosing`` when you may stop early;
``open_batch`` is the same as an ``async with`` that also shows the counters a progress display
needs (in flight, done, failed, tokens).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager

import msgspec
import trio

from ..errors import single_error
from .options import BatchOptions
from .results import TaskResult
from .scoring import Scorer, load_scorer, score_all
from .tasks import Task

__all__ = ["BatchRun", "open_batch", "run_batch"]


class BatchRun:
    """A running batch: iterate it for results as tasks finish; read its counters any time."""

    def __init__(self, receive: trio.MemoryReceiveChannel[TaskResult], scorer: Scorer) -> None:
        self._receive = receive
        self._scorer = scorer
        self._tasks: dict[str, Task] = {}
        #: Tasks a worker has taken and not finished.
        self.in_flight = 0
        self.done = 0
        #: Tasks that ended in ``error`` (budget stops are not failures of the batch).
        self.failed = 0
        self.tokens = 0

    def started(self, task: Task) -> None:
        """Called by the engine when a worker takes ``task``."""
        self._tasks[task.key] = task
        self.in_flight += 1

    def _finished(self, result: TaskResult) -> TaskResult:
        task = self._tasks.pop(result.key, None)
        self.in_flight -= 1
        self.done += 1
        self.failed += result.status == "error"
        self.tokens += result.usage.total_tokens
        if task is None or task.expected is None:
            return result
        score, scores = score_all(self._scorer, result.answer, task)
        return msgspec.structs.replace(result, score=score, scores=scores)

    async def __aiter__(self) -> AsyncIterator[TaskResult]:
        async for result in self._receive:
            yield self._finished(result)


@asynccontextmanager
async def open_batch(tasks: Iterable[Task], options: BatchOptions = BatchOptions()) -> AsyncIterator[BatchRun]:
    """Start running ``tasks`` as ``options`` say and yield the ``BatchRun`` to iterate.

    Raises ``ValueError`` for a scorer that cannot be loaded, ``WorkerError`` when a worker
    cannot start a guest, ``ImportError`` for ``engine="ray"`` without Ray installed
    (``rlm-host[ray]``). Leaving the block early cancels the tasks still running.
    """
    scorer = load_scorer(options.scorer)
    send, receive = trio.open_memory_channel[TaskResult](math.inf)
    run = BatchRun(receive, scorer)
    try:
        async with trio.open_nursery() as nursery:
            if options.engine == "ray":
                from .ray_engine import run_ray

                nursery.start_soon(run_ray, tasks, options, send, run.started)
            else:
                from .local import run_local

                nursery.start_soon(run_local, tasks, options, send, run.started)
            try:
                yield run
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # One failure (WorkerError, ...) is the batch's error, not nested groups of one.
        sole = single_error(group)
        if sole is not group and isinstance(sole, Exception):
            raise sole from None
        raise


async def run_batch(tasks: Iterable[Task], options: BatchOptions = BatchOptions()) -> AsyncIterator[TaskResult]:
    """The results of ``tasks``, as they finish; see ``open_batch``."""
    async with open_batch(tasks, options) as run:
        async for result in run:
            yield result


def pending(tasks: Iterable[Task], done: set[str]) -> Iterator[Task]:
    """The tasks whose id is not in ``done`` (``--resume``)."""
    return (task for task in tasks if task.key not in done)
