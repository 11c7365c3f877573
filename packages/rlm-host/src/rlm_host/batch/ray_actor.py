"""A Ray actor of the batch: one ``GuestWorker`` (one guest) in a trio loop of its own.

The loop runs in a thread of the actor process; Ray calls ``RayWorker.run`` from up to
``sessions_per_worker + 2`` threads of its own at once, and each call hands its task to the
loop and blocks until the result. The guest image is built, or found in the node's cache, when
the actor starts (``build_image``), so a fresh node gets its image once and every node uses its
own local copy.
"""

from __future__ import annotations

import threading

import msgspec
import trio

from ..errors import single_error
from .options import BatchOptions
from .results import TaskResult
from .tasks import Task
from .worker import GuestWorker, WorkerError

__all__ = ["RayWorker"]

#: Seconds an actor gets to close its guest before it is killed.
_STOP_TIMEOUT = 30.0

_task_decoder = msgspec.json.Decoder(Task)


class _QuietReporter:
    def step(self, message: str) -> None:
        print(f"[rlm image] {message}", flush=True)

    def detail(self, message: str) -> None:
        pass


class _WorkerLoop:
    """A ``GuestWorker`` in a trio loop of its own, in a thread of the actor process.

    Not the actor class itself: Ray makes any class with an ``async def`` an asyncio actor,
    and runs its plain methods on that one event loop, one call at a time. ``RayWorker``
    therefore has no coroutine of its own, and Ray calls ``run`` from a pool of threads.
    """

    def __init__(self, options: BatchOptions, name: str, model_requests: int) -> None:
        self.name = name
        self._options = options
        self._model_requests = model_requests
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._worker: GuestWorker | None = None
        self._ended: BaseException | None = None
        self._thread = threading.Thread(target=self._run_loop, daemon=True, name="rlm-trio")
        self._thread.start()
        self._ready.wait()

    def _run_loop(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as error:  # noqa: BLE001 - this thread has no caller to raise to
            self._ended = error
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        self._worker = GuestWorker(self.name, self._options, trio.CapacityLimiter(self._model_requests))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._worker.keep)
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def run(self, task: Task, first_attempt: int) -> TaskResult:
        """Run ``task`` in the loop, blocking this (Ray's) thread until its result.

        Raises ``WorkerError`` when the loop has ended (its guest could not be started).
        """
        if self._worker is None or self._token is None:
            raise self._failure(self._ended)
        try:
            return trio.from_thread.run(self._worker.run, task, first_attempt, trio_token=self._token)
        except (trio.RunFinishedError, trio.Cancelled) as error:
            # The loop ended before or while it ran this task: say why it ended.
            raise self._failure(self._ended or error) from None

    def _failure(self, ended: BaseException | None) -> WorkerError:
        if isinstance(ended, BaseExceptionGroup):
            ended = single_error(ended)  # the nursery's group around keep's WorkerError
        if isinstance(ended, WorkerError):
            return ended
        return WorkerError(f"worker {self.name}: its trio loop ended: {ended!r}")

    def stop(self) -> None:
        if self._token is not None and self._stop is not None and self._thread.is_alive():
            try:
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        self._thread.join(_STOP_TIMEOUT)


class RayWorker:
    """The actor: one ``GuestWorker`` (one guest) serving up to ``sessions_per_worker`` tasks."""

    def __init__(self, options: BatchOptions, name: str, model_requests: int) -> None:
        if options.run.guest.isolation == "vm" and options.run.guest.command is None:
            from ..vm.image import build_image

            build_image("debian", reporter=_QuietReporter())  # a cache hit after the first
        self._loop = _WorkerLoop(options, name, model_requests)

    def run(self, task_json: bytes, first_attempt: int = 1) -> bytes:
        """Run one task (JSON) on this actor's guest; its ``TaskResult`` as JSON.

        ``first_attempt`` is 2 for a task whose first actor died under it. Raises
        ``WorkerError`` when the guest cannot be started, which ends the batch as it does on
        the local engine.
        """
        result = self._loop.run(_task_decoder.decode(task_json), first_attempt)
        return msgspec.json.encode(result)

    def stop(self) -> None:
        """Close the guest and end the trio loop."""
        self._loop.stop()
