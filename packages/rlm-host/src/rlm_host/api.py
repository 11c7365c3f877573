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
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import trio

from .connection import GuestConnection
from .engine import DEFAULT_TOOLS, Limits, RlmEngine, StopReason, query_task
from .isolation import GuestOptions, Isolation, open_guest
from .llm import Api, DeltaCallback, LlmConfig, Usage, open_client
from .trajectory import (
    EventSink,
    RunEnd,
    RunStart,
    TrajectoryRecorder,
    default_trajectory_path,
    new_run_id,
)
from .vm.errors import VMError
from .vm.image import find_image

__all__ = ["RunOptions", "RunResult", "run_rlm", "run_rlm_sync"]


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
    memory_mb: int = 1536
    network: bool = False
    #: Tools installed in the guest, named in the system prompt; ``None``: for ``vm``, the
    #: tools the image's manifest lists, for ``local`` the seed's list.
    tools: Sequence[str] | None = None
    #: Seconds after which the guest interrupts a block (``None``: no limit).
    exec_timeout: float | None = None
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

    def limits(self) -> Limits:
        """The budgets of a run with these options."""
        return Limits(
            max_steps=self.max_steps,
            max_depth=self.max_depth,
            max_model_calls=self.max_model_calls,
            max_tokens=self.max_tokens,
            max_seconds=self.max_seconds,
            concurrency=self.concurrency,
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
        )


@dataclass(frozen=True)
class RunResult:
    """The outcome of a run.

    ``answer`` is ``Final`` (a string as it was set, other values as JSON), or ``None`` when a
    budget ended the run first; then ``stop_reason`` and ``detail`` say which and why.
    """

    answer: str | None
    stop_reason: StopReason
    detail: str
    usage: Usage
    trajectory_path: Path | None
    duration: float
    run_id: str


def _guest_tools(options: RunOptions) -> Sequence[str]:
    """The tools to name in the system prompt: explicit, else what the VM image really has."""
    if options.tools is not None:
        return options.tools
    if options.isolation == "vm":
        try:
            return find_image().manifest.tools
        except VMError:
            pass  # no image: starting the VM fails next, with the command that builds one
    return DEFAULT_TOOLS


@contextlib.asynccontextmanager
async def _guest(options: RunOptions, connection: GuestConnection | None) -> AsyncIterator[GuestConnection]:
    if connection is not None:
        yield connection
        return
    guest_options = GuestOptions(
        isolation=Isolation(options.isolation), memory_mb=options.memory_mb, network=options.network
    )
    async with open_guest(guest_options) as opened:
        yield opened


async def run_rlm(
    prompt: str,
    *,
    query: str | None = None,
    options: RunOptions = RunOptions(),
    connection: GuestConnection | None = None,
) -> RunResult:
    """Run ``prompt`` through an RLM and return its answer, usage and trajectory path.

    With ``query``, the model's task is the question followed by ``prompt`` as a delimited
    context; without, ``prompt`` is the task verbatim. Pass an open ``connection`` to reuse one
    guest for many runs (each run opens and closes its own sessions); otherwise a guest is
    started as ``options.isolation`` says and stopped at the end.

    Raises ``ModelError`` subclasses (server down, model missing, bad replies) and
    ``GuestError`` subclasses (the guest could not start or died). Cancellation stops the run
    and its guest sessions.
    """
    run_id = new_run_id()
    task = query_task(query, prompt) if query is not None else prompt
    config = options.llm_config()
    sinks = [options.on_event] if options.on_event is not None else []
    path = (options.trajectory_path or default_trajectory_path(run_id)) if options.record_trajectory else None
    recorder = TrajectoryRecorder.open(path, sinks) if path is not None else TrajectoryRecorder(None, sinks)
    started = time.perf_counter()
    stop_reason = "error"
    answer_chars = 0
    engine: RlmEngine | None = None
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
                options=asdict(options.limits())
                | {"isolation": options.isolation, "stream": options.stream},
            )
        )
        async with open_client(config, limiter=options.model_limiter) as client, _guest(options, connection) as guest:
            engine = RlmEngine(
                connection=guest,
                client=client,
                recorder=recorder,
                limits=options.limits(),
                tools=_guest_tools(options),
                exec_timeout=options.exec_timeout,
                on_delta=options.on_delta,
            )
            outcome = await engine.run(task)
        stop_reason = outcome.stop_reason
        answer_chars = len(outcome.answer or "")
        return RunResult(
            answer=outcome.answer,
            stop_reason=outcome.stop_reason,
            detail=outcome.detail,
            usage=engine.meter.usage,
            trajectory_path=path,
            duration=time.perf_counter() - started,
            run_id=run_id,
        )
    finally:
        recorder.emit(
            RunEnd(
                ts=time.time(),
                rlm="0",
                depth=0,
                stop_reason=stop_reason,
                duration=time.perf_counter() - started,
                usage=engine.meter.usage if engine is not None else Usage(),
                answer_chars=answer_chars,
            )
        )
        recorder.close()


def run_rlm_sync(
    prompt: str,
    *,
    query: str | None = None,
    options: RunOptions = RunOptions(),
) -> RunResult:
    """``run_rlm`` for callers outside trio: runs its own event loop until the answer."""
    return trio.run(lambda: run_rlm(prompt, query=query, options=options))
