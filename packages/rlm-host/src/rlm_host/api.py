"""The embedding API: run a prompt through an RLM from other programs.

From trio code::

    from rlm_host.api import RunOptions, run_rlm

    result = await run_rlm(long_text, query="Which clause limits liability?",
                           options=RunOptions(model="qwen3.6", max_steps=12))
    print(result.answer, result.usage.total_tokens, result.trajectory_path)

From plain (non-async) code, ``run_rlm_sync`` has the same signature and starts its own trio
loop::

    from rlm_host.api import RunOptions, run_rlm_sync

    result = run_rlm_sync("What is 6 * 7? Set Final to the number.",
                          options=RunOptions(isolation="local"))
    if result.answer is None:
        print("stopped:", result.stop_reason, result.detail)

A run that ends on a budget returns ``answer=None`` with ``stop_reason`` and ``detail``; a run
that cannot go on (model server down, guest died) raises the ``RlmError`` subclass that says why.

Also here: host tools (``RunOptions.host_tools``), typed answers (``answer_type``), the run's
events as an async iterator (``open_run``); ``Conversation`` (several questions, one REPL) and
``resume_rlm`` (``--resume``) live in ``rlm_host.conversation`` and ``rlm_host.resume`` and are
re-exported here.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar, overload

import trio

from .connection import GuestConnection
from .engine import DEFAULT_TOOLS, Limits, Price, RlmEngine, RlmOutcome, StopReason, query_task
from .engine.opening import PendingGuest
from .engine.repl import Repl, repl_for
from .errors import single_error
from .isolation import GuestOptions, Isolation, guest_argv, open_guest
from .llm import Api, DeltaCallback, LlmConfig, ModelInfo, Usage, open_client
from .llm.window import choose_window
from .tools import DEFAULT_TOOL_TIMEOUT, HostTool, as_tools
from .trajectory import (
    Event,
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

__all__ = [
    "DEFAULT_BLOCK_TIMEOUT",
    "Conversation",
    "HostTool",
    "Price",
    "RunEvents",
    "RunOptions",
    "RunResult",
    "open_run",
    "resume_rlm",
    "run_rlm",
    "run_rlm_sync",
]

T = TypeVar("T")

#: Seconds a block may run before the guest interrupts it (the seed's bash timeout).
DEFAULT_BLOCK_TIMEOUT = 300.0


@dataclass(frozen=True)
class RunOptions:
    """Everything that shapes a run; the defaults are the seed's.

    ``model``, ``llm_url`` and ``api`` left at ``None`` come from the environment
    (``RLM_MODEL``, ``RLM_LLM_URL``, ``OLLAMA_HOST``, ``OPENAI_BASE_URL``; see ``LlmConfig``).
    """

    model: str | None = None
    llm_url: str | None = None
    api: Api | None = None
    #: Streamed model replies (same result; lets a progress display show text as it comes).
    stream: bool = False
    max_steps: int = 18
    max_depth: int = 3
    max_model_calls: int | None = None
    max_tokens: int | None = None
    max_seconds: float | None = None
    #: Model requests in flight at once across the whole run.
    concurrency: int = 4
    #: Where model code runs. ``local`` runs it on this machine, unsandboxed: tests only.
    isolation: Literal["vm", "local"] = "vm"
    #: A guest started by this command instead (a string is split as a shell would): any
    #: program speaking PROTOCOL.md on stdio. rlm does not isolate it. The model is told what
    #: that guest's REPL is (Python, or the bash REPL); a guest with neither is refused.
    guest_command: str | Sequence[str] | None = None
    memory_mb: int = 1536
    network: bool = False
    #: Tools installed in the guest, named in the system prompt; ``None``: for ``vm``, the
    #: tools the image's manifest lists, for ``local`` the seed's list.
    tools: Sequence[str] | None = None
    #: Seconds after which the guest interrupts a block (``None``: no limit). The default is the
    #: seed's bash timeout: a block that loops forever costs five minutes, not the run.
    exec_timeout: float | None = DEFAULT_BLOCK_TIMEOUT
    #: Where to write the trajectory; ``None`` for the default location (see ``trajectory``).
    trajectory_path: Path | None = None
    #: ``False``: write no trajectory file (events still reach ``on_event``).
    record_trajectory: bool = True
    #: Called with every trajectory event as it happens (progress display, event API).
    on_event: EventSink | None = field(default=None, compare=False)
    #: Called with each piece of a streamed reply.
    on_delta: DeltaCallback | None = field(default=None, compare=False)
    #: Retries of a failed model request (connection errors, HTTP 5xx/429).
    llm_retries: int = 4
    #: First backoff before a retry, in seconds; it doubles each time (up to 8 s).
    llm_backoff: float = 0.5
    #: Seconds to wait for a model reply (the seed's 900: big local models think long).
    llm_timeout: float = 900.0
    #: A bound on model requests in flight shared by concurrent runs (a batch's pool), on top
    #: of ``concurrency``, this run's own bound; ``None``: no shared bound.
    model_limiter: trio.CapacityLimiter | None = field(default=None, compare=False)
    #: Host functions model code may call (``rlm_host.tools``): plain functions or ``HostTool``.
    host_tools: Sequence[Callable[..., Any] | HostTool] = field(default=(), compare=False)
    #: Timeout of each call of a host tool given as a plain function.
    tool_timeout: float = DEFAULT_TOOL_TIMEOUT
    #: Cost budget of the run, priced with ``prices`` (per model; ``*`` for any other).
    max_cost: float | None = None
    prices: Mapping[str, Price] = field(default_factory=dict)
    #: The model's context in tokens: older turns are summarised when a history nears it, and
    #: Ollama is asked for this window (``options.num_ctx``). ``None``: the server's word
    #: (Ollama ``/api/show``, capped at ``OLLAMA_WINDOW_CAP``; vLLM ``max_model_len``).
    context_tokens: int | None = None
    #: Reasoning on (``True``), off (``False``) or a level (``"low"``, ``"medium"``,
    #: ``"high"``); ``None`` sends nothing and leaves the server's default.
    think: bool | str | None = None
    #: Send each reply's reasoning back in the history (it fills the window; off by default).
    history_reasoning: bool = False
    #: Treat a reply whose prompt-token count shows a truncated prompt as a window overflow
    #: (compact and send again). Off for a server whose counts leave out cached tokens.
    detect_truncation: bool = True
    #: How long Ollama keeps the model loaded after a request (its ``keep_alive``);
    #: ``None`` leaves Ollama's default (5 minutes).
    keep_alive: str | None = "30m"
    #: The model of ``llm_query`` and of child RLMs (``None``: the root's model).
    sub_model: str | None = None
    #: The sub-model's server and API when it is not the root's.
    sub_llm_url: str | None = None
    sub_api: Api | None = None
    #: More models that code may name in ``rlm_query(..., model=...)`` (served by the root's
    #: server); the root's model and ``sub_model`` are always allowed.
    models: Sequence[str] = ()
    #: Keep the task text beside the trajectory (``<trajectory>.prompt.txt``) for ``--resume``.
    save_prompt: bool = True

    def limits(self) -> Limits:
        """The budgets of a run with these options."""
        return Limits(
            max_steps=self.max_steps,
            max_depth=self.max_depth,
            max_model_calls=self.max_model_calls,
            max_tokens=self.max_tokens,
            max_seconds=self.max_seconds,
            concurrency=self.concurrency,
            max_cost=self.max_cost,
            prices=dict(self.prices),
            context_tokens=self.context_tokens,
        )

    def sub_llm_config(self) -> LlmConfig | None:
        """The sub-model's client configuration (its own server, or the root's), or ``None``."""
        if self.sub_model is None:
            return None
        root = self.llm_config()
        if self.sub_llm_url is None and self.sub_api is None:
            return replace(root, model=self.sub_model)
        api = self.sub_api or root.api
        config = LlmConfig.resolve(api=api, model=self.sub_model, url=self.sub_llm_url or (root.base_url if api == root.api else None))
        return replace(
            config,
            stream=root.stream, max_retries=root.max_retries, backoff_base=root.backoff_base,
            read_timeout=root.read_timeout, think=root.think, keep_alive=root.keep_alive,
        )

    def llm_config(self) -> LlmConfig:
        """The model client's configuration: options first, then the environment."""
        config = LlmConfig.resolve(api=self.api, model=self.model, url=self.llm_url)
        return replace(
            config,
            stream=self.stream,
            max_retries=self.llm_retries,
            backoff_base=self.llm_backoff,
            read_timeout=self.llm_timeout,
            think=self.think,
            keep_alive=self.keep_alive,
        )


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
    if options.guest_command is not None:
        return ()  # unknown: the model is told only the base system's tools are there
    if options.isolation == "vm":
        try:
            return find_image().manifest.tools
        except VMError:
            pass  # no image: starting the VM fails next, with the command that builds one
    return DEFAULT_TOOLS


@contextlib.asynccontextmanager
async def _guest(
    options: RunOptions, connection: GuestConnection | None
) -> AsyncIterator[GuestConnection | PendingGuest]:
    """The caller's connection, or a guest started in the background (``PendingGuest``): the
    engine sends the first model request while the VM boots."""
    if connection is not None:
        yield connection
        return
    guest_options = GuestOptions(
        isolation=Isolation(options.isolation), memory_mb=options.memory_mb, network=options.network
    )
    if options.guest_command is not None:
        # Opened before the first model request: what the model is told depends on the
        # guest's capabilities (engine.repl).
        async with open_guest(replace(guest_options, command=guest_argv(options.guest_command))) as opened:
            yield opened
        return
    pending = PendingGuest()
    release = trio.Event()
    closing_error: list[BaseException] = []

    async def serve() -> None:
        try:
            async with open_guest(guest_options) as opened:
                pending.set(opened)
                await release.wait()
        except Exception as error:
            if pending.ready:
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
                if not pending.ready:  # the run ended before the guest was up
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


class _Run:
    """One run's recorder and engine, and what its ``RunEnd`` will say."""

    def __init__(self, run_id: str, path: Path | None, recorder: TrajectoryRecorder, options: RunOptions) -> None:
        self.run_id = run_id
        self.path = path
        self.recorder = recorder
        self.options = options
        self.started = time.perf_counter()
        self.stop_reason = "error"
        self.answer_chars = 0
        self._engine: RlmEngine | None = None

    @property
    def engine(self) -> RlmEngine:
        assert self._engine is not None, "the run has not started"
        return self._engine

    def cost(self) -> float | None:
        if self._engine is None or not self.options.prices:
            return None
        return self._engine.meter.cost

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
            cost_by_model=dict(self.engine.meter.cost_by_model) if self.options.prices else {},
        )


@contextlib.asynccontextmanager
async def open_engine(
    task: str,
    options: RunOptions,
    connection: GuestConnection | None = None,
    *,
    sinks: Sequence[EventSink] = (),
    resumed_from: Path | None = None,
    kind: str = "run",
) -> AsyncIterator[_Run]:
    """Record ``RunStart``, open the model client, the guest and the engine; ``RunEnd`` at exit.

    The one place where a run is set up, for ``run_rlm``, ``Conversation`` and ``resume_rlm``.
    Raises ``ValueError`` when ``max_cost`` is set and the model has no price.
    """
    run_id = new_run_id()
    config = options.llm_config()
    limits = options.limits()
    if limits.max_cost is not None and limits.price(config.model) is None:
        raise ValueError(f"max_cost needs a price for model {config.model!r} (--price {config.model}=IN,OUT)")
    host_tools = as_tools(options.host_tools, timeout=options.tool_timeout)
    all_sinks = ([options.on_event] if options.on_event is not None else []) + list(sinks)
    path = (options.trajectory_path or default_trajectory_path(run_id)) if options.record_trajectory else None
    recorder = TrajectoryRecorder.open(path, all_sinks) if path is not None else TrajectoryRecorder(None, all_sinks)
    if path is not None and options.save_prompt and task:
        prompt_path(path).write_text(task, encoding="utf-8", errors="surrogatepass")
    run = _Run(run_id, path, recorder, options)
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
                    "isolation": "command" if options.guest_command is not None else options.isolation,
                    "stream": options.stream,
                    "kind": kind,
                    "host_tools": [tool.display for tool in host_tools],
                    "prices": {name: asdict(price) for name, price in limits.prices.items()},
                },
                prompt_sha256=hashlib.sha256(task.encode("utf-8", errors="surrogatepass")).hexdigest(),
                resumed_from=str(resumed_from) if resumed_from is not None else None,
            )
        )
        sub_config = options.sub_llm_config()
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
                window, num_ctx = choose_window(each.config.api, info, options.context_tokens)
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
            # A guest whose hello is known says which REPL the model gets (PendingGuest: the
            # reference guest, Python).
            repl: Repl = repl_for(guest.hello, host_tools=bool(host_tools)) if isinstance(guest, GuestConnection) else "python"
            run._engine = RlmEngine(
                connection=guest,
                client=client,
                recorder=recorder,
                limits=limits,
                tools=_guest_tools(options),
                host_tools=host_tools,
                exec_timeout=options.exec_timeout,
                on_delta=options.on_delta,
                history_reasoning=options.history_reasoning,
                detect_truncation=options.detect_truncation,
                sub_model=options.sub_model,
                clients=clients,
                models=options.models,
                repl=repl,
            )
            run._engine.windows.update(windows)
            yield run
    finally:
        recorder.emit(
            RunEnd(
                ts=time.time(),
                rlm="0",
                depth=0,
                stop_reason=run.stop_reason,
                duration=time.perf_counter() - run.started,
                usage=run._engine.meter.usage if run._engine is not None else Usage(),
                answer_chars=run.answer_chars,
                cost=run.cost(),
                usage_by_model=dict(run._engine.meter.usage_by_model) if run._engine is not None else {},
            )
        )
        recorder.close()


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
    async with open_engine(task, options, connection, sinks=sinks) as run:
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

            async def runner() -> None:
                try:
                    async with send:
                        events._result = await _run(
                            prompt, query=query, options=options, connection=connection,
                            answer_type=answer_type, sinks=[sink],
                        )
                finally:
                    events._done.set()

            nursery.start_soon(runner)
            yield events
    except BaseExceptionGroup as group:
        raise single_error(group) from None


from .conversation import Conversation  # noqa: E402  (they build on this module)
from .resume import resume_rlm  # noqa: E402
