"""The RLM loop of the seed, on trio: one engine per run, one RLM per guest session.

An RLM is a conversation with the model whose replies run as code in a guest session holding
``prompt``. Host calls from that code (``rlm_query``, ``llm_query`` and their batched forms)
arrive as concurrent ``HostCall``s; each becomes a child RLM in a new session of the same guest
(depth + 1) or a plain chat call. Every model request of the run passes one
``trio.CapacityLimiter``, so batched calls run concurrently up to ``Limits.concurrency``. The
limiter guards model requests only, never a whole child: a parent waiting for its children holds
no token, so nesting cannot deadlock.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import trio

from rlm_protocol import HostCall

from ..connection import GuestConnection, HostCallHandler
from ..llm.client import ChatClient
from ..llm.messages import ChatMessage, DeltaCallback
from ..session import Session
from ..trajectory import (
    BlockRun,
    BudgetStop,
    ChildEnd,
    ChildStart,
    EngineError,
    FinalSet,
    ModelRequest,
    ModelResponse,
    Observation,
    TrajectoryRecorder,
)
from .blocks import first_block
from .budget import BudgetExhausted, Limits, RunMeter, StopReason, child_steps
from .prompts import DEFAULT_TOOLS, NO_BLOCK_REPROMPT, metadata_message, observation_message, system_prompt

__all__ = ["MAX_STEPS_ANSWER", "RlmEngine", "RlmOutcome"]

#: What a child that ran out of steps returns to its parent's code (the seed's words).
MAX_STEPS_ANSWER: Final = "(max_steps reached before Final was set)"

#: Closing a session after a cancelled run must not hang the shutdown on a stuck guest.
_CLOSE_GRACE_SECONDS: Final = 5.0


@dataclass(frozen=True)
class RlmOutcome:
    """How one RLM ended: ``answer`` when ``stop_reason == "final"``, else ``detail`` says why."""

    answer: str | None
    stop_reason: StopReason
    detail: str = ""


def _final_answer(value: Any) -> str:
    """Strings are returned as they are, other JSON values as indented JSON (the seed's rule)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2)


class RlmEngine:
    """Runs RLMs for one run against one guest connection and one model client.

    ``run`` is the root; children are started by host calls. The engine owns neither the
    connection nor the client: the caller opens and closes them (``rlm_host.api`` does).
    """

    def __init__(
        self,
        *,
        connection: GuestConnection,
        client: ChatClient,
        recorder: TrajectoryRecorder,
        limits: Limits = Limits(),
        tools: Sequence[str] = DEFAULT_TOOLS,
        exec_timeout: float | None = None,
        on_delta: DeltaCallback | None = None,
    ) -> None:
        self.connection = connection
        self.client = client
        self.recorder = recorder
        self.limits = limits
        self.meter = RunMeter(limits)
        self.exec_timeout = exec_timeout
        self._system_prompt = system_prompt(tools)
        self._limiter = trio.CapacityLimiter(limits.concurrency)
        self._calls: Iterator[int] = itertools.count(1)
        self._children: defaultdict[str, Iterator[int]] = defaultdict(lambda: itertools.count(1))
        self._on_delta = on_delta

    # --- the root ---------------------------------------------------------------------------

    async def run(self, prompt: str) -> RlmOutcome:
        """Run the root RLM on ``prompt`` until ``Final`` or a budget; see ``RlmOutcome``.

        Raises what ends the run without an answer (``ModelError``, ``GuestError``), after
        recording it in the trajectory.
        """
        with trio.move_on_after(self.limits.max_seconds or float("inf")) as deadline:
            return await self._solve(prompt, rlm="0", depth=0, max_steps=self.limits.max_steps)
        detail = f"wall-time budget spent: {self.limits.max_seconds} s"
        assert deadline.cancelled_caught
        self._emit_stop("0", 0, "wall_time", detail)
        return RlmOutcome(None, "wall_time", detail)

    # --- one RLM ----------------------------------------------------------------------------

    async def _solve(
        self, prompt: str, *, rlm: str, depth: int, max_steps: int, model: str | None = None
    ) -> RlmOutcome:
        session = await self.connection.open_session(
            handler=self._host_call_handler(rlm, depth, max_steps, model)
        )
        try:
            return await self._loop(session, prompt, rlm=rlm, depth=depth, max_steps=max_steps, model=model)
        except BudgetExhausted as spent:
            self._emit_stop(rlm, depth, spent.reason, spent.detail)
            return RlmOutcome(None, spent.reason, spent.detail)
        except Exception as error:
            self.recorder.emit(
                EngineError(
                    ts=time.time(), rlm=rlm, depth=depth, error_type=type(error).__name__, message=str(error)
                )
            )
            raise
        finally:
            # Shielded so that a cancelled run (wall time) still frees its guest session.
            with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_GRACE_SECONDS):
                await session.close()

    async def _loop(
        self, session: Session, prompt: str, *, rlm: str, depth: int, max_steps: int, model: str | None
    ) -> RlmOutcome:
        await session.set_vars({"prompt": prompt})
        history: list[ChatMessage] = [
            {"role": "system", "content": self._system_prompt},
            {"role": "user", "content": metadata_message(prompt)},
        ]
        for step in range(1, max_steps + 1):
            reply = await self._chat(history, rlm=rlm, depth=depth, step=step, model=model)
            block = first_block(reply)
            if block is None:
                # Unlike the seed, the reply stays in the history: roles keep alternating (some
                # chat templates require it) and the model sees what it is being corrected for.
                history.append({"role": "assistant", "content": reply})
                history.append({"role": "user", "content": NO_BLOCK_REPROMPT})
                continue
            history.append({"role": "assistant", "content": block.fenced})
            self.recorder.emit(
                BlockRun(ts=time.time(), rlm=rlm, depth=depth, step=step, language=block.language, code=block.code)
            )
            result = await session.exec(block.code, block.language, timeout=self.exec_timeout)
            final = result.final
            if final is not None and final.ok:
                answer = _final_answer(final.value)
                self.recorder.emit(FinalSet(ts=time.time(), rlm=rlm, depth=depth, step=step, answer=answer))
                return RlmOutcome(answer, "final")
            observation = observation_message(result)
            error = None if result.error is None else f"{result.error.name}: {result.error.value}"
            self.recorder.emit(
                Observation(
                    ts=time.time(),
                    rlm=rlm,
                    depth=depth,
                    step=step,
                    content=observation,
                    duration=result.duration,
                    returncode=result.returncode,
                    error=error,
                )
            )
            history.append({"role": "user", "content": observation})
        detail = f"no Final after {max_steps} steps"
        self._emit_stop(rlm, depth, "max_steps", detail)
        return RlmOutcome(None, "max_steps", detail)

    # --- model calls ------------------------------------------------------------------------

    async def _chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        rlm: str,
        depth: int,
        step: int,
        model: str | None,
        purpose: str = "rlm",
    ) -> str:
        """One model request through the run's limiter and meter, recorded as two events."""
        async with self._limiter:
            # Checked once a slot is ours: the budget is judged at the moment of sending.
            self.meter.start_call()
            call = next(self._calls)
            chosen = model or self.client.config.model
            request_chars = sum(len(message["content"]) for message in messages)
            self.recorder.emit(
                ModelRequest(
                    ts=time.time(),
                    rlm=rlm,
                    depth=depth,
                    call=call,
                    step=step,
                    model=chosen,
                    messages=len(messages),
                    request_chars=request_chars,
                    purpose=purpose,
                )
            )
            started = time.perf_counter()
            try:
                reply = await self.client.chat(messages, model=chosen, on_delta=self._on_delta)
            except Exception as error:
                self.recorder.emit(
                    ModelResponse(
                        ts=time.time(),
                        rlm=rlm,
                        depth=depth,
                        call=call,
                        step=step,
                        duration=time.perf_counter() - started,
                        error=f"{type(error).__name__}: {error}",
                    )
                )
                raise
        self.meter.record(reply.usage, request_chars=request_chars, reply_chars=len(reply.content))
        self.recorder.emit(
            ModelResponse(
                ts=time.time(),
                rlm=rlm,
                depth=depth,
                call=call,
                step=step,
                duration=reply.duration,
                content=reply.content,
                usage=reply.usage,
                attempts=reply.attempts,
            )
        )
        return reply.content

    # --- host calls from model code ---------------------------------------------------------

    def _host_call_handler(
        self, parent: str, depth: int, parent_steps: int, parent_model: str | None
    ) -> HostCallHandler:
        """The handler of one session's host calls; each call runs in its own task."""

        async def handle(call: HostCall) -> Any:
            if call.method not in ("rlm_query", "llm_query"):
                raise ValueError(f"unknown host call {call.method!r}")
            prompt = call.payload.get("prompt")
            if not isinstance(prompt, str):
                raise TypeError(f"{call.method} needs a str prompt, got {type(prompt).__name__}")
            requested = call.payload.get("model")
            model = requested if isinstance(requested, str) and requested else parent_model
            leaf = call.method == "llm_query" or depth + 1 >= self.limits.max_depth
            child = f"{parent}.{next(self._children[parent])}"
            return await self._child(
                prompt,
                rlm=child,
                parent=parent,
                depth=depth + 1,
                method=call.method,
                leaf=leaf,
                max_steps=child_steps(parent_steps),
                model=model,
            )

        return handle

    async def _child(
        self,
        prompt: str,
        *,
        rlm: str,
        parent: str,
        depth: int,
        method: str,
        leaf: bool,
        max_steps: int,
        model: str | None,
    ) -> str:
        """Run a child and always return a string to the parent's code.

        A child that fails or runs out of budget answers with an explanation in parentheses
        instead of raising: the parent's code goes on and its model decides what to do. A
        run-wide budget is still enforced, by the parent's own next model request.
        """
        kind = "leaf" if leaf else "rlm"
        self.recorder.emit(
            ChildStart(
                ts=time.time(), rlm=rlm, depth=depth, parent=parent, kind=kind, method=method, prompt_chars=len(prompt)
            )
        )
        started = time.perf_counter()
        stop_reason: str = "final"
        error: str | None = None
        try:
            if leaf:
                answer = await self._chat(
                    [{"role": "user", "content": prompt}], rlm=rlm, depth=depth, step=1, model=model, purpose="leaf"
                )
            else:
                outcome = await self._solve(prompt, rlm=rlm, depth=depth, max_steps=max_steps, model=model)
                stop_reason = outcome.stop_reason
                if outcome.answer is not None:
                    answer = outcome.answer
                elif outcome.stop_reason == "max_steps":
                    answer = MAX_STEPS_ANSWER
                else:
                    answer = f"({method} stopped: {outcome.detail})"
        except BudgetExhausted as spent:
            stop_reason = spent.reason
            answer = f"({method} stopped: {spent.detail})"
        except Exception as failure:
            # Any failure of the child (model server, guest session) is the parent's to handle.
            stop_reason = "error"
            error = f"{type(failure).__name__}: {failure}"
            answer = f"({method} failed: {error})"
        self.recorder.emit(
            ChildEnd(
                ts=time.time(),
                rlm=rlm,
                depth=depth,
                parent=parent,
                kind=kind,
                duration=time.perf_counter() - started,
                answer_chars=len(answer),
                stop_reason=stop_reason,
                error=error,
            )
        )
        return answer

    def _emit_stop(self, rlm: str, depth: int, reason: str, detail: str) -> None:
        self.recorder.emit(BudgetStop(ts=time.time(), rlm=rlm, depth=depth, reason=reason, detail=detail))
