"""A run's context: its recorder, model clients, guest and engine, from ``RunStart`` to ``RunEnd``.

``open_run_context`` is the one place where a run is set up; ``run_rlm``, ``Conversation``
(``rlm_host.conversation``) and ``resume_rlm`` (``rlm_host.resume``) all run inside one::

    async with open_run_context(task, options) as run:
        outcome = await run.engine.run(task)
        result = run.result(outcome)
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Generic, TypeVar

import trio

from .connection import GuestConnection
from .engine import DEFAULT_TOOLS, RlmEngine, RlmOutcome, Soon, StopReason
from .engine.repl import Repl, repl_for
from .errors import single_error
from .isolation import Isolation, open_guest
from .llm import LlmConfig, ModelInfo, Usage, open_client
from .llm.window import choose_window
from .options import RunOptions
from .tools import as_tools
from .trajectory import (
    EventSink,
    ModelReady,
    RunEnd,
    RunStart,
    TrajectoryRecorder,
    default_trajectory_path,
    new_run_id,
    prompt_path,
)
from .vm.errors import VMError
from .vm.image import find_image

__all__ = ["RunContext", "RunResult", "open_run_context"]

T = TypeVar("T")


@dataclass(frozen=True)
class RunResult(Generic[T]):
    """The outcome of a run.

    ``answer`` is ``Final`` (a string as it was set, other values as JSON), or ``None`` when a
    budget ended the run first; then ``stop_reason`` and ``detail`` say which and why. ``value``
    is ``Final`` itself: of the ``answer_type`` asked for, else the JSON value.
    """

    answer: str | None
    stop_reason: StopReason
    detail: str
    usage: Usage
    trajectory_path: Path | None
    duration: float
    run_id: str
    value: T | None = None
    #: What the run cost at the user's prices (``None`` when none were given).
    cost: float | None = None
    #: ``usage`` and ``cost`` split by model name.
    usage_by_model: Mapping[str, Usage] = field(default_factory=dict)
    cost_by_model: Mapping[str, float] = field(default_factory=dict)


def _guest_tools(options: RunOptions) -> Sequence[str]:
    """The tools to name in the system prompt: explicit, else what the VM image really has."""
    if options.tools is not None:
        return options.tools
    if options.guest.command is not None:
        return ()  # unknown: the model is told only the base system's tools are there
    if options.guest.isolation == Isolation.vm:
        try:
            return find_image().manifest.tools
        except VMError:
            pass  # no image: starting the VM fails next, with the command that builds one
    return DEFAULT_TOOLS


@contextlib.asynccontextmanager
async def _guest(
    options: RunOptions, connection: GuestConnection | None
) -> AsyncIterator[GuestConnection | Soon[GuestConnection]]:
    """The caller's connection, or a guest started in the background (a ``Soon``): the
    engine sends the first model request while the VM boots."""
    if connection is not None:
        yield connection
        return
    guest_options = options.guest
    if guest_options.command is not None:
        # Opened before the first model request: what the model is told depends on the
        # guest's capabilities (engine.repl).
        async with open_guest(guest_options) as opened:
            yield opened
        return
    pending: Soon[GuestConnection] = Soon()
    release = trio.Event()
    closing_error: list[BaseException] = []

    async def serve() -> None:
        try:
            async with open_guest(guest_options) as opened:
                pending.set(opened)
                await release.wait()
        except Exception as error:
            if pending.value is not None:
                closing_error.append(error)
            else:
                pending.fail(error)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            try:
                yield pending
            finally:
                release.set()
                if pending.value is None:  # the run ended before the guest was up
                    nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise single_error(group) from None
    if closing_error:
        raise closing_error[0]


def _check_think(config: LlmConfig, info: ModelInfo) -> None:
    """Refuse at once a reasoning switch the model cannot take (Ollama answers such a request
    with an error at every step, or quietly ignores an unknown level)."""
    think = config.think
    if think is None or think is False:
        return
    if info.reasons is False:
        raise ValueError(
            f"model {config.model!r} does not reason (its capabilities: {', '.join(info.capabilities)}): "
            "drop --think / --think-level"
        )
    levels = [value for value in info.think_values if value not in ("true", "false")]
    if isinstance(think, str) and info.think_values and think not in levels:
        takes = f"--think-level {' or '.join(levels)}" if levels else "no levels, only --think / --no-think"
        raise ValueError(f"model {config.model!r} takes {takes}, not --think-level {think}")


class RunContext:
    """One run's recorder and engine, and what its ``RunEnd`` will say.

    ``engine`` runs the root (``engine.run``, or ``open_root``/``ask`` for a conversation or a
    resumed run); ``result`` turns an outcome into the ``RunResult`` that ``RunEnd`` agrees with.
    """

    def __init__(
        self, run_id: str, path: Path | None, recorder: TrajectoryRecorder, options: RunOptions,
        engine: RlmEngine, started: float,
    ) -> None:
        self.run_id = run_id
        #: The trajectory file (``None``: not recorded).
        self.path = path
        self.recorder = recorder
        self.options = options
        self.engine = engine
        self.started = started
        self.stop_reason = "error"
        self.answer_chars = 0

    def cost(self) -> float | None:
        if not self.options.limits.prices:
            return None
        return self.engine.meter.cost

    def result(self, outcome: RlmOutcome) -> RunResult[Any]:
        """The ``RunResult`` of ``outcome`` (and the ``RunEnd`` to come says the same)."""
        self.stop_reason = outcome.stop_reason
        self.answer_chars = len(outcome.answer or "")
        return RunResult(
            answer=outcome.answer,
            stop_reason=outcome.stop_reason,
            detail=outcome.detail,
            usage=self.engine.meter.usage,
            trajectory_path=self.path,
            duration=time.perf_counter() - self.started,
            run_id=self.run_id,
            value=outcome.value,
            cost=self.cost(),
            usage_by_model=dict(self.engine.meter.usage_by_model),
            cost_by_model=dict(self.engine.meter.cost_by_model) if self.options.limits.prices else {},
        )


def _write_prompt(path: Path, data: bytes) -> None:
    prompt_path(path).write_bytes(data)


async def _prompt_digest(task: str, keep_at: Path | None) -> str:
    """The task's SHA-256 (for ``RunStart``), and its copy beside the trajectory ``keep_at``.

    Up to 16 MiB on the way to the first model request: encoded once, then hashed and written
    at the same time in worker threads (both release the GIL), never on the trio thread, where
    they would stall every other task.
    """
    data = await trio.to_thread.run_sync(lambda: task.encode("utf-8", errors="surrogatepass"))
    try:
        async with trio.open_nursery() as nursery:
            if keep_at is not None:
                nursery.start_soon(trio.to_thread.run_sync, _write_prompt, keep_at, data)
            return await trio.to_thread.run_sync(lambda: hashlib.sha256(data).hexdigest())
    except BaseExceptionGroup as group:
        raise single_error(group) from None


@contextlib.asynccontextmanager
async def open_run_context(
    task: str,
    options: RunOptions,
    connection: GuestConnection | None = None,
    *,
    sinks: Sequence[EventSink] = (),
    resumed_from: Path | None = None,
    kind: str = "run",
) -> AsyncIterator[RunContext]:
    """Record ``RunStart``, open the model client, the guest and the engine; ``RunEnd`` at exit.

    Raises ``ValueError`` when ``max_cost`` is set and the model has no price.
    """
    started = time.perf_counter()
    run_id = new_run_id()
    config = options.llm.llm_config()
    limits = options.limits
    if limits.max_cost is not None and limits.price(config.model) is None:
        raise ValueError(f"max_cost needs a price for model {config.model!r} (--price {config.model}=IN,OUT)")
    host_tools = as_tools(options.host_tools, timeout=options.tool_timeout)
    all_sinks = ([options.on_event] if options.on_event is not None else []) + list(sinks)
    path = (options.trajectory_path or default_trajectory_path(run_id)) if options.record_trajectory else None
    recorder = TrajectoryRecorder.open(path, all_sinks) if path is not None else TrajectoryRecorder(None, all_sinks)
    digest = await _prompt_digest(task, path if path is not None and options.save_prompt and task else None)
    run: RunContext | None = None
    try:
        recorder.emit(
            RunStart(
                ts=time.time(),
                rlm="0",
                depth=0,
                run_id=run_id,
                prompt_chars=len(task),
                model=config.model,
                api=config.api,
                url=config.endpoint,
                options=asdict(replace(limits, prices={}))
                | {
                    "isolation": "command" if options.guest.command is not None else options.guest.isolation.value,
                    "stream": options.llm.stream,
                    "kind": kind,
                    "host_tools": [tool.display for tool in host_tools],
                    "prices": {name: asdict(price) for name, price in limits.prices.items()},
                },
                prompt_sha256=digest,
                resumed_from=str(resumed_from) if resumed_from is not None else None,
            )
        )
        sub_config = options.llm.sub_llm_config()
        async with contextlib.AsyncExitStack() as stack:
            client = await stack.enter_async_context(open_client(config, limiter=options.model_limiter))
            clients = {}
            if sub_config is not None and sub_config.model != config.model:
                clients[sub_config.model] = await stack.enter_async_context(
                    open_client(sub_config, limiter=options.model_limiter)
                )
            guest = await stack.enter_async_context(_guest(options, connection))
            # While the guest starts: a missing model fails here, in the first second, and the
            # window is known before the first request.
            windows: dict[str, int] = {}
            for each in (client, *clients.values()):
                info = await each.describe()
                _check_think(each.config, info)
                window, num_ctx = choose_window(each.config.api, info, options.limits.context_tokens)
                each.config = replace(each.config, num_ctx=num_ctx)
                if window is not None:
                    windows[each.config.model] = window
                recorder.emit(
                    ModelReady(
                        ts=time.time(), rlm="0", depth=0, model=each.config.model,
                        context_length=info.context_length, capabilities=info.capabilities,
                        window=window, num_ctx=num_ctx, think=each.config.think,
                    )
                )
            limits = replace(limits, context_tokens=windows.get(config.model))
            # A guest whose hello is known says which REPL the model gets (a guest still
            # starting: the reference guest, Python).
            repl: Repl = repl_for(guest.hello, host_tools=bool(host_tools)) if isinstance(guest, GuestConnection) else "python"
            engine = RlmEngine(
                connection=guest,
                client=client,
                recorder=recorder,
                limits=limits,
                # The image's manifest is read from disk: off the trio thread.
                tools=await trio.to_thread.run_sync(_guest_tools, options),
                host_tools=host_tools,
                exec_timeout=options.exec_timeout,
                on_delta=options.on_delta,
                history_reasoning=options.history_reasoning,
                detect_truncation=options.detect_truncation,
                sub_model=options.llm.sub_model,
                clients=clients,
                models=options.llm.models,
                repl=repl,
                windows=windows,
            )
            run = RunContext(run_id, path, recorder, options, engine, started)
            yield run
    finally:
        recorder.emit(
            RunEnd(
                ts=time.time(),
                rlm="0",
                depth=0,
                stop_reason=run.stop_reason if run is not None else "error",
                duration=time.perf_counter() - started,
                usage=run.engine.meter.usage if run is not None else Usage(),
                answer_chars=run.answer_chars if run is not None else 0,
                cost=run.cost() if run is not None else None,
                usage_by_model=dict(run.engine.meter.usage_by_model) if run is not None else {},
            )
        )
        recorder.close()
