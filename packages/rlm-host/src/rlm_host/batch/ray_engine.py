"""The Ray engine: the batch's workers as Ray actors, tasks dispatched by this driver.

Each actor owns one ``GuestWorker`` (so one guest) and runs its own trio loop in a thread of
the actor process; ``run`` (a Ray method, called from up to ``sessions_per_worker`` Ray threads
at once) hands a task to that loop and blocks until its result. The guest image is built, or
found in the node's cache, when an actor starts (``build_image``), so a fresh node gets its
image once and every node uses its own local copy.

The driver keeps at most ``sessions_per_worker`` tasks in flight per actor (back-pressure: a
million-line task file is never all in Ray's object store), gives each task to the least busy
actor, and streams results back as ``ray.wait`` returns them. An actor that dies (its node was
lost) costs only the tasks it was running: they go back to the queue, once each, for the other
actors. The model bound ``model_requests`` is split evenly among the actors.

Ray is imported only here and only when the engine runs: ``pip install 'rlm-host[ray]'``.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import msgspec
import trio

from .options import BatchOptions
from .results import TaskResult
from .tasks import Task
from .worker import GuestWorker

__all__ = ["RayWorker", "run_ray"]

#: Seconds between checks for a cancelled batch while the driver waits on Ray.
_POLL = 0.2
#: Seconds an actor gets to close its guest before it is killed.
_STOP_TIMEOUT = 30.0

_task_decoder = msgspec.json.Decoder(Task)
_result_decoder = msgspec.json.Decoder(TaskResult)


class _QuietReporter:
    def step(self, message: str) -> None:
        print(f"[rlm image] {message}", flush=True)

    def detail(self, message: str) -> None:
        pass


class RayWorker:
    """The actor: one ``GuestWorker`` in a trio loop of its own (a thread of the actor)."""

    def __init__(self, options: BatchOptions, name: str, model_requests: int) -> None:
        if options.run.isolation == "vm":
            from ..vm.image import build_image

            build_image("debian", reporter=_QuietReporter())  # a cache hit after the first
        self._options = options
        self._name = name
        self._model_requests = model_requests
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._worker: GuestWorker | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True, name="rlm-trio")
        self._thread.start()
        self._ready.wait()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        self._worker = GuestWorker(self._name, self._options, trio.CapacityLimiter(self._model_requests))
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._worker.keep)
                self._ready.set()
                await self._stop.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._ready.set()

    def run(self, task_json: bytes) -> bytes:
        """Run one task (JSON) on this actor's guest; its ``TaskResult`` as JSON."""
        assert self._worker is not None and self._token is not None
        task = _task_decoder.decode(task_json)
        result = trio.from_thread.run(self._worker.run, task, trio_token=self._token)
        return msgspec.json.encode(result)

    def stop(self) -> None:
        """Close the guest and end the trio loop."""
        if self._token is not None and self._stop is not None and self._thread.is_alive():
            try:
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        self._thread.join(_STOP_TIMEOUT)


class _Dispatcher:
    """The driver's side, run in a thread: actors, back-pressure, results back to trio."""

    def __init__(
        self,
        tasks: Iterable[Task],
        options: BatchOptions,
        deliver: Callable[[TaskResult], None],
        on_start: Callable[[Task], None],
        stop: threading.Event,
    ) -> None:
        self.tasks: Iterator[Task] = iter(tasks)
        self.options = options
        self.deliver = deliver
        self.on_start = on_start
        self.stop = stop
        self.requeued: deque[Task] = deque()
        self.lost: set[str] = set()

    def run(self) -> None:
        # Workers run this interpreter, with rlm-host installed on every node. Ray's default
        # under ``uv run`` would instead start each worker with ``uv run`` in a copy of the
        # driver's folder, which takes minutes per worker; it is read when Ray is imported.
        os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
        import ray

        options = self.options
        started_ray = False
        if not ray.is_initialized():
            if options.ray_address is not None:
                ray.init(address=options.ray_address, log_to_driver=False)
            else:
                cpus = max(os.cpu_count() or 1, int(options.workers * options.ray_actor_cpus + 0.999))
                ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
            started_ray = True
        actor_class = ray.remote(RayWorker).options(
            num_cpus=options.ray_actor_cpus,
            max_concurrency=options.sessions_per_worker + 2,
            scheduling_strategy="SPREAD",
        )
        share = max(1, options.model_requests // options.workers)
        actors: list[Any] = [actor_class.remote(options, f"ray{i}", share) for i in range(options.workers)]
        try:
            self._dispatch(ray, actors)
        finally:
            try:
                ray.get([actor.stop.remote() for actor in actors], timeout=_STOP_TIMEOUT)
            except Exception:  # noqa: BLE001 - a dead actor has nothing left to stop
                pass
            for actor in actors:
                ray.kill(actor)
            if started_ray:
                ray.shutdown()

    def _next(self) -> Task | None:
        if self.requeued:
            return self.requeued.popleft()
        return next(self.tasks, None)

    def _dispatch(self, ray: Any, actors: list[Any]) -> None:
        capacity = self.options.sessions_per_worker
        load = [0] * len(actors)
        alive = [True] * len(actors)
        in_flight: dict[Any, tuple[int, Task]] = {}
        exhausted = False
        while not self.stop.is_set():
            while not exhausted:
                free = [i for i in range(len(actors)) if alive[i] and load[i] < capacity]
                if not free:
                    break
                task = self._next()
                if task is None:
                    exhausted = True
                    break
                index = min(free, key=lambda i: load[i])
                ref = actors[index].run.remote(msgspec.json.encode(task))
                in_flight[ref] = (index, task)
                load[index] += 1
                self.on_start(task)
            if not in_flight:
                if exhausted and not self.requeued:
                    return
                if not any(alive):
                    raise RuntimeError("every Ray actor of the batch died")
                exhausted = False
                continue
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=_POLL)
            for ref in ready:
                index, task = in_flight.pop(ref)
                load[index] -= 1
                try:
                    result = _result_decoder.decode(ray.get(ref))
                except ray.exceptions.RayActorError as error:
                    alive[index] = False
                    if not any(alive):
                        raise RuntimeError(f"every Ray actor of the batch died; the last: {error}") from error
                    if task.key in self.lost:
                        result = TaskResult(
                            id=task.id, status="error", attempts=2, worker=f"ray{index}",
                            reason=f"its Ray actor died twice: {type(error).__name__}",
                        )
                    else:
                        self.lost.add(task.key)
                        self.requeued.append(task)
                        exhausted = False
                        continue
                self.deliver(result)


async def run_ray(
    tasks: Iterable[Task],
    options: BatchOptions,
    results: trio.MemorySendChannel[TaskResult],
    on_start: Callable[[Task], None],
) -> None:
    """Run ``tasks`` on Ray actors; like ``run_local`` (results to ``results``, closed at the end).

    Raises ``ImportError`` without Ray, and what a worker raised (``WorkerError`` inside a
    ``RayTaskError``). Cancellation stops dispatching; the actors are stopped in the background.
    """
    try:
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise ImportError("no module named 'ray'")
    except ImportError as error:
        raise ImportError("the ray engine needs Ray: pip install 'rlm-host[ray]'") from error
    token = trio.lowlevel.current_trio_token()
    stop = threading.Event()

    def deliver(result: TaskResult) -> None:
        trio.from_thread.run_sync(results.send_nowait, result, trio_token=token)

    def started(task: Task) -> None:
        trio.from_thread.run_sync(on_start, task, trio_token=token)

    dispatcher = _Dispatcher(tasks, options, deliver, started, stop)
    async with results:
        try:
            await trio.to_thread.run_sync(dispatcher.run, abandon_on_cancel=True)
        finally:
            stop.set()
