"""The Ray engine: the batch's workers as Ray actors, tasks dispatched by this driver.

Each actor (``ray_actor.RayWorker``) owns one guest and serves up to ``sessions_per_worker``
tasks on it at once.

The driver keeps at most ``sessions_per_worker`` tasks in flight per actor (back-pressure: a
million-line task file is never all in Ray's object store), gives each task to the least busy
actor, and streams results back as ``ray.wait`` returns them. An actor that dies (its node was
lost) costs only the tasks it was running: they go back to the queue, once each, and a new
actor takes its place, up to ``ray_actor_replacements`` times in a batch; when none is left
alive, the tasks not yet run are reported as errors. The model bound ``model_requests`` is
split evenly among the actors.

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
from .ray_actor import RayWorker
from .results import TaskResult
from .tasks import Task

__all__ = ["run_ray"]

#: Seconds between checks for a cancelled batch while the driver waits on Ray.
_POLL = 0.2
#: Seconds the actors get to close their guests at the end, before they are killed.
_STOP_TIMEOUT = 30.0

_result_decoder = msgspec.json.Decoder(TaskResult)


class _Actor:
    """One actor of the pool as the driver sees it: its handle and its tasks in flight."""

    def __init__(self, handle: Any, name: str) -> None:
        self.handle = handle
        self.name = name
        self.load = 0
        self.alive = True


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
        #: Tasks whose actor died under them once (they are in ``requeued`` or running again).
        self.lost: set[str] = set()
        self.actors: list[_Actor] = []
        self.replacements = 0
        self._new_actor: Callable[[str], Any] = lambda name: None

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
        self._new_actor = lambda name: actor_class.remote(options, name, share)
        for _ in range(options.workers):
            self._add_actor()
        try:
            self._dispatch(ray)
        finally:
            alive = [actor.handle for actor in self.actors if actor.alive]
            try:
                ray.get([handle.stop.remote() for handle in alive], timeout=_STOP_TIMEOUT)
            except Exception:  # noqa: BLE001 - one that died meanwhile has nothing left to stop
                pass
            for actor in self.actors:
                ray.kill(actor.handle)
            if started_ray:
                ray.shutdown()

    def _add_actor(self) -> None:
        name = f"ray{len(self.actors)}"
        self.actors.append(_Actor(self._new_actor(name), name))

    def _next(self) -> Task | None:
        if self.requeued:
            return self.requeued.popleft()
        return next(self.tasks, None)

    def _dispatch(self, ray: Any) -> None:
        capacity = self.options.sessions_per_worker
        in_flight: dict[Any, tuple[_Actor, Task]] = {}
        exhausted = False
        while not self.stop.is_set():
            while not exhausted:
                free = [actor for actor in self.actors if actor.alive and actor.load < capacity]
                if not free:
                    break
                task = self._next()
                if task is None:
                    exhausted = True
                    break
                actor = min(free, key=lambda candidate: candidate.load)
                retried = task.key in self.lost
                ref = actor.handle.run.remote(msgspec.json.encode(task), 2 if retried else 1)
                in_flight[ref] = (actor, task)
                actor.load += 1
                if not retried:
                    self.on_start(task)
            if not in_flight:
                if not any(actor.alive for actor in self.actors):
                    self._report_the_rest()
                    return
                if exhausted and not self.requeued:
                    return
                exhausted = False
                continue
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=_POLL)
            for ref in ready:
                actor, task = in_flight.pop(ref)
                actor.load -= 1
                try:
                    result = _result_decoder.decode(ray.get(ref))
                except ray.exceptions.RayActorError as error:
                    self._died(ray, actor)
                    if task.key in self.lost:
                        result = TaskResult(
                            id=task.id, status="error", attempts=2, worker=actor.name,
                            reason=f"its Ray actor died twice: {type(error).__name__}",
                        )
                    else:
                        self.lost.add(task.key)
                        self.requeued.append(task)
                        exhausted = False
                        continue
                self.deliver(result)

    def _died(self, ray: Any, actor: _Actor) -> None:
        """``actor`` died (each of its tasks in flight reports it): replace it, if allowed."""
        if not actor.alive:
            return
        actor.alive = False
        ray.kill(actor.handle)  # a process that is only unreachable must not come back
        if self.replacements < self.options.actor_replacements():
            self.replacements += 1
            self._add_actor()

    def _report_the_rest(self) -> None:
        """Every actor died and none may replace them: each task not run yet is an error."""
        died = len(self.actors)
        reason = (
            f"no Ray actor left to run it: {died} actors died, {self.replacements} of them replaced "
            f"(ray_actor_replacements={self.options.actor_replacements()})"
        )
        while (task := self._next()) is not None:
            if task.key not in self.lost:
                self.on_start(task)
            attempts = 1 if task.key in self.lost else 0
            self.deliver(TaskResult(id=task.id, status="error", reason=reason, attempts=attempts))


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
    with results:  # closed without a checkpoint, as in ``run_local``
        try:
            await trio.to_thread.run_sync(dispatcher.run, abandon_on_cancel=True)
        finally:
            stop.set()
