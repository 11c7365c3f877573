"""The step loop of one RLM: model request, block, observation, until ``Final`` or a budget.

Beside it: a history that nears the window is compacted (``rlm_host.engine.compaction``), and a
request the server refused or silently truncated is compacted and sent again.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgspec
import trio

from ..llm.errors import ContextLengthExceeded
from ..llm.messages import ChatMessage, ChatReply
from ..session import Session
from ..trajectory import (
    BlockRun,
    BudgetStop,
    Compaction,
    ContextOverflow,
    EngineError,
    FinalSet,
    Observation,
    TrajectoryRecorder,
)
from .blocks import first_block
from .budget import BudgetExhausted
from .compaction import COMPACT_AT, chars, compacted_history, plan_compaction, truncated
from .prompts import NO_BLOCK_REPROMPT, answer_mismatch_message, observation_message
from .recording import ModelCalls
from .repl import PYTHON_BLOCK_IN_BASH_REPL, Repl
from .state import RlmOutcome, RlmState

__all__ = ["OVERFLOW_RETRIES", "StepLoop"]

#: Requests of one step that may be sent again after the window was exceeded.
OVERFLOW_RETRIES: Final = 2


def _final_answer(value: Any) -> str:
    """Strings are returned as they are, other JSON values as indented JSON (the seed's rule)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2)


class StepLoop:
    """Runs RLMs' steps for one run; ``prepare`` binds a session anew after a reset."""

    def __init__(
        self,
        calls: ModelCalls,
        recorder: TrajectoryRecorder,
        *,
        repl: Repl,
        exec_timeout: float | None,
        history_reasoning: bool,
        detect_truncation: bool,
        prepare: Callable[[RlmState, Session], Awaitable[None]],
    ) -> None:
        self.calls = calls
        self.recorder = recorder
        self.repl: Repl = repl
        self.exec_timeout = exec_timeout
        #: Send a reply's reasoning back in the history (``<think>…</think>`` before the
        #: answer); off by default: it would fill the window and models are trained without it.
        self.history_reasoning = history_reasoning
        #: The window the host keeps histories under, per model; learnt from the server at the
        #: start (``rlm_host.api``) and again when a request did not fit.
        self.windows: dict[str, int] = {}
        #: Judge replies truncated from the server's prompt counts; off once the server's counts
        #: proved unreliable (see ``_step_request``).
        self.check_truncation = detect_truncation
        self._prepare = prepare

    def emit_stop(self, rlm: str, depth: int, reason: str, detail: str) -> None:
        self.recorder.emit(BudgetStop(ts=time.time(), rlm=rlm, depth=depth, reason=reason, detail=detail))

    async def guarded(self, state: RlmState, max_steps: int, answer_type: Any) -> RlmOutcome:
        """The steps, with a budget stop as an outcome and an error recorded before it is raised."""
        try:
            return await self._steps(state, max_steps, answer_type)
        except BudgetExhausted as spent:
            self.emit_stop(state.id, state.depth, spent.reason, spent.detail)
            return RlmOutcome(None, spent.reason, spent.detail)
        except Exception as error:
            self.recorder.emit(
                EngineError(
                    ts=time.time(), rlm=state.id, depth=state.depth, error_type=type(error).__name__,
                    message=str(error),
                )
            )
            raise

    async def _steps(self, state: RlmState, max_steps: int, answer_type: Any) -> RlmOutcome:
        rlm, depth = state.id, state.depth
        for _ in range(max_steps):
            state.step += 1
            step = state.step
            await self._maybe_compact(state)
            reply = await self._step_request(state)
            # Blocks come from the answer only: a draft in the reasoning is not what the model
            # chose to run. An answer left empty by reasoning gets the re-prompt.
            block = first_block(reply.content)
            if block is None:
                # Unlike the seed, the reply stays in the history: roles keep alternating (some
                # chat templates require it) and the model sees what it is being corrected for.
                state.append({"role": "assistant", "content": self._assistant_text(reply, reply.content)})
                state.append({"role": "user", "content": NO_BLOCK_REPROMPT})
                continue
            state.append({"role": "assistant", "content": self._assistant_text(reply, block.fenced)})
            if self.repl == "bash" and block.language == "python":
                # The guest would refuse it (unsupported): the model hears why instead.
                state.append({"role": "user", "content": PYTHON_BLOCK_IN_BASH_REPL})
                continue
            self.recorder.emit(
                BlockRun(ts=time.time(), rlm=rlm, depth=depth, step=step, language=block.language, code=block.code)
            )
            # The first block may come before the session has opened (``engine.start``).
            session = await state.session_now()
            try:
                result = await session.exec(block.code, block.language, timeout=self.exec_timeout)
            finally:
                # The children this block made are done: their sessions close while the
                # next model request is out (``engine.held_closes``).
                with trio.CancelScope(shield=True):
                    await state.held_closes.release()
            if result.session_reset:
                await self._prepare(state, session)
            final = result.final
            if final is not None and final.ok:
                value = final.value
                mismatch: str | None = None
                if answer_type is not None:
                    try:
                        value = msgspec.convert(final.value, answer_type)
                    except msgspec.ValidationError as error:
                        mismatch = str(error)
                if mismatch is None:
                    answer = _final_answer(final.value)
                    self.recorder.emit(FinalSet(ts=time.time(), rlm=rlm, depth=depth, step=step, answer=answer))
                    return RlmOutcome(answer, "final", value=value)
                # Unset, or the next block would be judged by the same rejected Final.
                await session.set_vars({})
                observation = answer_mismatch_message(mismatch, final)
                error_text: str | None = f"AnswerTypeError: {mismatch}"
            else:
                observation = observation_message(result)
                error_text = None if result.error is None else f"{result.error.name}: {result.error.value}"
            self.recorder.emit(
                Observation(
                    ts=time.time(), rlm=rlm, depth=depth, step=step, content=observation,
                    duration=result.duration, returncode=result.returncode, error=error_text,
                )
            )
            state.append({"role": "user", "content": observation})
        detail = f"no Final after {max_steps} steps"
        self.emit_stop(rlm, depth, "max_steps", detail)
        return RlmOutcome(None, "max_steps", detail)

    def _assistant_text(self, reply: ChatReply, answer: str) -> str:
        if self.history_reasoning and reply.reasoning:
            return f"<think>\n{reply.reasoning}\n</think>\n{answer}"
        return answer

    def _model(self, state: RlmState) -> str:
        return state.model or self.calls.default_model

    async def _step_request(self, state: RlmState) -> ChatReply:
        """The model's reply to the RLM's history, recording what the history gained.

        A request that did not fit the window (refused, or silently truncated by the server)
        compacts the history and is sent again; ``BudgetExhausted("context_window")`` when
        compaction cannot help.
        """
        for retry in itertools.count():
            history = state.history
            if state.recorded is None:
                new, rebased = history, True
            else:
                new, rebased = history[state.recorded :], False
            sent = chars(history) // 4
            try:
                reply = await self.calls.chat(
                    list(history), rlm=state.id, depth=state.depth, step=state.step, model=state.model,
                    new_messages=new, rebased=rebased, track=state,
                )
            except ContextLengthExceeded as refused:
                state.recorded = len(history)
                window = refused.window or max(64, int(sent * COMPACT_AT))
                await self._overflow(state, retry, "refused", sent, None, window, str(refused))
                continue
            state.recorded = len(history)
            if self.check_truncation and truncated(state, reply.usage, sent, len(history)):
                if retry > 0:
                    # Even a compacted history was "truncated": the counts are not to be trusted
                    # (some Ollama versions left cached prompt tokens out of them).
                    self.check_truncation = False
                else:
                    window = reply.usage.prompt_tokens
                    detail = (
                        f"the server counted {window} prompt tokens for about {sent} sent: it dropped "
                        "the oldest messages (a window smaller than the history)"
                    )
                    await self._overflow(state, retry, "truncated", sent, window, window, detail)
                    continue
            if reply.usage.reported:
                state.reported_tokens = reply.usage.prompt_tokens + reply.usage.completion_tokens
                # The reply is the next message; the server counted it as completion tokens.
                state.reported_len = len(history) + 1
                state.prompt_count = (reply.usage.prompt_tokens, len(history))
            return reply
        raise AssertionError("unreachable")

    async def _overflow(
        self, state: RlmState, retry: int, kind: str, sent: int, reported: int | None, window: int, detail: str
    ) -> None:
        """Learn the smaller window, compact, and let the request go again; or stop."""
        model = self._model(state)
        known = self.windows.get(model)
        self.windows[model] = window if known is None else min(known, window)
        compacted = retry < OVERFLOW_RETRIES and await self._maybe_compact(state, force=True)
        self.recorder.emit(
            ContextOverflow(
                ts=time.time(), rlm=state.id, depth=state.depth, step=state.step, call=state.last_call,
                kind=kind, sent_tokens=sent, reported_tokens=reported, window=self.windows[model],
                detail=detail[:500], retry=compacted,
            )
        )
        if not compacted:
            raise BudgetExhausted(
                "context_window",
                f"the history no longer fits the model's window ({self.windows[model]} tokens) even "
                f"compacted ({kind}: {detail[:300]}); give the model a larger window "
                "(--context-tokens, or the server's own setting)",
            )

    async def _maybe_compact(self, state: RlmState, *, force: bool = False) -> bool:
        """Summarise the older turns when the history nears the window (or ``force``); whether
        it did."""
        plan = plan_compaction(state, self.windows.get(self._model(state)), force=force)
        if plan is None:
            return False
        reply = await self.calls.chat(
            plan.request, rlm=state.id, depth=state.depth, step=state.step, model=state.model,
            purpose="compact", new_messages=plan.request, rebased=True,
        )
        state.summary = reply.content.strip()
        before = len(state.history)
        state.history = compacted_history(state, state.summary)
        state.recorded = None
        state.reported_tokens = None
        state.prompt_count = None
        # The full history stays reachable from code; binding it also unsets Final, which is
        # harmless here: a Final that was accepted ended the RLM before this point.
        session = await state.session_now()
        transcript: list[ChatMessage] = [{"role": m["role"], "content": m["content"]} for m in state.transcript]
        await session.set_vars({"history": transcript})
        self.recorder.emit(
            Compaction(
                ts=time.time(), rlm=state.id, depth=state.depth, step=state.step,
                messages_before=before, messages_after=len(state.history), tokens_before=plan.tokens_before,
                summary=state.summary,
            )
        )
        return True
