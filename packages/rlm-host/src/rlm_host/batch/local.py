"""The local engine: a pool of ``workers`` guests on this machine, fed from one task channel.

Each worker pulls tasks as it has room (``sessions_per_worker`` at once), so a slow task never
holds up the others; every model request of the pool passes one ``trio.CapacityLimiter``
(``model_requests``), the bound that protects the model server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import trio

from .options import BatchOptions
from .results import TaskResult
from .tasks import Task
from .worker import GuestWorker

__all__ = ["run_local"]


async def run_local(
    tasks: Iterable[Task],
    options: BatchOptions,
    results: trio.MemorySendChannel[TaskResult],
    on_start: Callable[[Task], None],
) -> None:
    """Run ``tasks`` on the pool; call ``on_start`` as a worker takes a task, send its result to
    ``results`` (unbounded) as it finishes, and close ``results`` at the end.

    Raises ``WorkerError`` when a worker cannot start a guest. Cancellation stops every task
    and guest.
    """
    limiter = trio.CapacityLimiter(options.model_requests)
    workers = [GuestWorker(f"w{index}", options, limiter) for index in range(options.workers)]
    send_task, receive_task = trio.open_memory_channel[Task](0)

    async def consume(worker: GuestWorker) -> None:
        async for task in receive_task:
            on_start(task)
            results.send_nowait(await worker.run(task))

    async def feed() -> None:
        async with send_task:
            for task in tasks:
                await send_task.send(task)

    # ``with``, not ``async with``: the checkpoint of ``aclose`` would let the reader see the
    # channel end, leave the batch and cancel this task while a worker's error is on its way
    # out, and the batch would end without the results and without that error.
    with results:
        async with trio.open_nursery() as guests:
            for worker in workers:
                guests.start_soon(worker.keep)
            async with trio.open_nursery() as consumers:
                consumers.start_soon(feed)
                for worker in workers:
                    for _ in range(options.sessions_per_worker):
                        consumers.start_soon(consume, worker)
            guests.cancel_scope.cancel()

