"""One worker of a batch: a guest that runs several tasks at once, replaced when it dies.

A worker keeps one guest (a VM from the image snapshot, or a local subprocess) open in its
``keep`` task and runs up to ``sessions_per_worker`` tasks on it at once: each is a ``run_rlm``
with its own sessions on the shared ``GuestConnection``. All of a worker's model requests go
through the pool's shared limiter (``RunOptions.model_limiter``).

When a guest dies under a task (its code powered the VM off, killed the agent, ran it out of
memory), every task in flight on it fails with it, and the worker starts a fresh guest for the
tasks to come. Each task that was on the dead guest is retried once, *alone*, on a fresh guest
of its own: the task that kills its VM kills it again and is reported as an error, while tasks
that only shared the VM with it succeed, so no innocent task is charged twice.

The local engine runs workers in its nursery; a Ray actor runs one in its own trio loop.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

import msgspec
import trio

from ..api import RunOptions, run_rlm
from ..connection import GuestConnection
from ..errors import GuestError, RlmError, single_error
from ..isolation import GuestOptions, open_guest
from ..trajectory import Event, RunEnd
from ..vm.errors import VMError
from .options import BatchOptions
from .results import TaskResult, TokenUsage
from .tasks import Task, TaskError

__all__ = ["GuestWorker", "WorkerError", "trajectory_name"]

#: Consecutive failed guest starts after which a worker gives up (and the batch stops).
MAX_FAILED_STARTS = 2


class WorkerError(RlmError):
    """A worker could not start a guest (``MAX_FAILED_STARTS`` times in a row)."""


@dataclass(frozen=True)
class _Died:
    """An attempt whose guest died under it."""

    reason: str


class _Spent:
    """What a task's attempts cost, summed from each attempt's ``RunEnd``.

    A run emits ``RunEnd`` with its usage however it ends, the guest dying under it included,
    so an attempt that left no ``RunResult`` is still counted.
    """

    def __init__(self) -> None:
        self.usage = TokenUsage()
        self.by_model: dict[str, TokenUsage] = {}

    def see(self, event: Event) -> None:
        if isinstance(event, RunEnd) and event.depth == 0:
            for model, part in event.usage_by_model.items():
                self.by_model[model] = self.by_model.get(model, TokenUsage()) + TokenUsage(
                    prompt_tokens=part.prompt_tokens, completion_tokens=part.completion_tokens,
                    total_tokens=part.total_tokens, calls=part.calls,
                )
            usage = event.usage
            self.usage = self.usage + TokenUsage(
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                total_tokens=usage.total_tokens,
                calls=usage.calls,
                cost=event.cost,
            )


def trajectory_name(key: str, attempt: int = 1) -> str:
    """A file name for a task's trajectory: the id when it is safe, else the id cleaned + a hash.

    >>> trajectory_name("q-1"), trajectory_name("q-1", 2), trajectory_name("q-1", 3)
    ('q-1.jsonl', 'q-1.retry.jsonl', 'q-1.retry2.jsonl')
    >>> trajectory_name("a/b").startswith("a_b-")
    True
    """
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", key)[:100]
    if safe != key or safe.startswith("."):
        safe = f"{safe}-{hashlib.sha256(key.encode()).hexdigest()[:6]}"
    suffix = "" if attempt == 1 else ".retry" if attempt == 2 else f".retry{attempt - 1}"
    return f"{safe}{suffix}.jsonl"


def _is_guest_death(error: BaseException) -> bool:
    if isinstance(error, (GuestError, VMError)):
        return True
    if isinstance(error, BaseExceptionGroup):
        return any(_is_guest_death(inner) for inner in error.exceptions)
    return False


def _describe(error: BaseException) -> str:
    if isinstance(error, BaseExceptionGroup):
        error = single_error(error)
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".strip()


class GuestWorker:
    """A guest kept open by ``keep`` and the tasks it runs (``run``); see the module docstring."""

    def __init__(self, name: str, options: BatchOptions, model_limiter: trio.CapacityLimiter) -> None:
        self.name = name
        self.options = options
        self._guest_options: GuestOptions = options.guest_options()
        self._run_options: RunOptions = replace(options.run, model_limiter=model_limiter, on_event=None)
        self._slots = trio.CapacityLimiter(options.sessions_per_worker)
        self._retry_lock = trio.Lock()
        self._current: GuestConnection | None = None
        self._dead = trio.Event()
        self._changed = trio.Event()
        self._failure: WorkerError | None = None
        #: Guests started so far (the first one and every replacement, retries' not counted).
        self.guests_started = 0

    # --- the guest --------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def keep(self) -> None:
        """Keep a live guest open until cancelled: start one, wait until a task sees it die,
        start the next. Raises ``WorkerError`` after ``MAX_FAILED_STARTS`` failed starts."""
        failed_starts = 0
        while True:
            started = False
            try:
                async with open_guest(self._guest_options) as connection:
                    started = True
                    failed_starts = 0
                    self.guests_started += 1
                    self._dead = trio.Event()
                    self._current = connection
                    self._notify()
                    await self._dead.wait()
            except (GuestError, VMError) as error:
                if started:
                    continue  # closing the dead guest complained: it is gone all the same
                failed_starts += 1
                if failed_starts >= MAX_FAILED_STARTS:
                    self._failure = WorkerError(f"worker {self.name}: cannot start a guest: {_describe(error)}")
                    self._notify()
                    raise self._failure from error
            finally:
                self._current = None

    async def _connection(self) -> GuestConnection:
        while True:
            if self._failure is not None:
                raise self._failure
            current = self._current
            if current is not None and not current.closed:
                return current
            if current is not None:
                self._dead.set()
            changed = self._changed
            await changed.wait()

    def _lost(self, connection: GuestConnection) -> None:
        """A task saw ``connection`` die: have ``keep`` replace it (once, whoever saw it first)."""
        if connection is self._current:
            self._dead.set()

    # --- tasks ------------------------------------------------------------------------------

    async def run(self, task: Task, first_attempt: int = 1) -> TaskResult:
        """Run ``task`` on this worker's guest; never raises for the task's own failures.

        ``first_attempt`` > 1 numbers the attempts (and their trajectories) after ones made
        elsewhere (a Ray actor that died under the task). The result's usage is every
        attempt's here. Raises ``WorkerError`` when no guest can be started; cancellation
        stops the task.
        """
        started = time.perf_counter()
        spent = _Spent()
        async with self._slots:
            connection = await self._connection()
            outcome = await self._attempt(connection, task, first_attempt, spent)
            if not isinstance(outcome, _Died):
                return msgspec.structs.replace(
                    outcome, usage=spent.usage, usage_by_model=spent.by_model,
                    wall_time=round(time.perf_counter() - started, 3),
                )
            self._lost(connection)
        attempt = first_attempt
        while attempt < first_attempt + self.options.retries:
            attempt += 1
            async with self._retry_lock:
                retried: TaskResult | _Died | None = None
                try:
                    async with open_guest(self._guest_options) as alone:
                        retried = await self._attempt(alone, task, attempt, spent)
                except (GuestError, VMError) as error:
                    # A start that failed is a death; closing a guest that the task killed may
                    # complain too, and then the attempt's own outcome stands.
                    if retried is None:
                        retried = _Died(_describe(error))
                assert retried is not None
                outcome = retried
            if not isinstance(outcome, _Died):
                return msgspec.structs.replace(
                    outcome, usage=spent.usage, usage_by_model=spent.by_model,
                    wall_time=round(time.perf_counter() - started, 3), attempts=attempt,
                )
        assert isinstance(outcome, _Died)
        return TaskResult(
            id=task.id,
            status="error",
            reason=f"the guest died under this task {attempt - first_attempt + 1} times: {outcome.reason}",
            usage=spent.usage,
            usage_by_model=spent.by_model,
            wall_time=round(time.perf_counter() - started, 3),
            trajectory=self._trajectory(task, attempt),
            attempts=attempt,
            worker=self.name,
        )

    def _trajectory(self, task: Task, attempt: int) -> str | None:
        directory = self.options.trajectory_dir
        return str(directory / trajectory_name(task.key, attempt)) if directory is not None else None

    async def _attempt(
        self, connection: GuestConnection, task: Task, attempt: int, spent: _Spent
    ) -> TaskResult | _Died:
        """One run of ``task``; its usage goes to ``spent`` (the result's is set by ``run``)."""
        path = self._trajectory(task, attempt)
        try:
            options = replace(task.run_options(self._run_options), on_event=spent.see)
            prompt = await trio.to_thread.run_sync(task.prompt, self.options.base_dir)
        except (TaskError, OSError, RlmError) as error:
            return self._error(task, f"cannot read the task: {_describe(error)}", attempt, path)
        if path is not None:
            options = replace(options, trajectory_path=Path(path))
        try:
            result = await run_rlm(prompt, query=task.query, options=options, connection=connection)
        except Exception as error:  # a task's failure is its result, never the batch's end
            if connection.closed or _is_guest_death(error):
                return _Died(_describe(error))
            return self._error(task, _describe(error), attempt, path)
        return TaskResult(
            id=task.id,
            status="ok" if result.answer is not None else "budget_stop",
            answer=result.answer,
            reason=None if result.answer is not None else result.detail,
            stop_reason=result.stop_reason,
            trajectory=str(result.trajectory_path) if result.trajectory_path else None,
            attempts=attempt,
            worker=self.name,
        )

    def _error(self, task: Task, reason: str, attempt: int, path: str | None) -> TaskResult:
        return TaskResult(
            id=task.id, status="error", reason=reason, trajectory=path, attempts=attempt, worker=self.name
        )
