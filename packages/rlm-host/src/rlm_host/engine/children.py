"""Host calls from model code: children (``rlm_query``), leaves (``llm_query``), host tools.

Each RLM's session hands its host calls to the RLM (``Session.host_calls``); the RLM serves
them in its own nursery (``rlm_host.engine.start``) with the handler made here. A call decodes
to a typed request (``rlm_protocol.decode_host_call``): only ``rlm_query``, ``llm_query`` and
the session's own tools are served, nothing else on the host is reachable from the guest.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from rlm_protocol import (
    HostCall,
    LlmQuery,
    MalformedHostCall,
    PromptRef,
    RlmQuery,
    ToolCall,
    UnknownHostCall,
    decode_host_call,
)

from ..host_calls import HostCallHandler, HostCallRefused
from ..llm.messages import ChatMessage
from ..tools import HostTool, UnknownTool, args_sha256
from ..trajectory import ChildEnd, ChildStart, TrajectoryRecorder
from ..trajectory import ToolCall as ToolCallEvent
from .budget import BudgetExhausted, Limits, child_steps
from .call_burst import CallBurst
from .held_closes import HeldCloses
from .recording import ModelCalls
from .state import MAX_STEPS_ANSWER, RlmOutcome

__all__ = ["Children", "Parent", "Solve"]


@dataclass(frozen=True)
class Parent:
    """The RLM whose session makes the calls."""

    id: str
    depth: int
    max_steps: int
    model: str | None
    tools: tuple[HostTool, ...]
    #: Where its children's sessions wait to be closed until its block ends (its RLM's).
    held: HeldCloses | None = None
    #: When its session last made a host call: its children's sessions open after the burst.
    burst: CallBurst | None = None


#: Runs a child RLM to its outcome: (prompt, rlm id, depth, max_steps, model, tools, its parent).
Solve = Callable[
    [str | PromptRef, str, int, int, str | None, tuple[HostTool, ...], Parent], Awaitable[RlmOutcome]
]


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", errors="replace")).hexdigest()


class Children:
    """Serves the host calls of a run's RLMs."""

    def __init__(
        self,
        calls: ModelCalls,
        recorder: TrajectoryRecorder,
        limits: Limits,
        allowed_models: frozenset[str],
        sub_model: str | None,
        solve: Solve,
    ) -> None:
        self.calls = calls
        self.recorder = recorder
        self.limits = limits
        self.allowed_models = allowed_models
        self.sub_model = sub_model
        self._solve = solve
        self._ids: defaultdict[str, Iterator[int]] = defaultdict(lambda: itertools.count(1))

    def handler(self, parent: Parent) -> HostCallHandler:
        """The handler of ``parent``'s host calls; each call runs in its own task."""

        async def handle(call: HostCall) -> Any:
            if parent.burst is not None:
                parent.burst.touch()
            request = decode_host_call(call)
            match request:
                case UnknownHostCall() | MalformedHostCall():
                    raise HostCallRefused(request.error())
                case ToolCall():
                    return await self._tool_call(request, parent)
                case RlmQuery() | LlmQuery():
                    return await self._query(request, parent)

        return handle

    async def _query(self, request: RlmQuery | LlmQuery, parent: Parent) -> str:
        method = "rlm_query" if isinstance(request, RlmQuery) else "llm_query"
        if request.model:
            if request.model not in self.allowed_models:
                allowed = ", ".join(sorted(self.allowed_models))
                raise ValueError(f"model {request.model!r} is not allowed in this run (allowed: {allowed})")
            model: str | None = request.model
        else:
            # A child of the root gets the sub-model; deeper ones inherit their parent's.
            model = parent.model if parent.model is not None else self.sub_model
        leaf = isinstance(request, LlmQuery) or parent.depth + 1 >= self.limits.max_depth
        if leaf and isinstance(request.prompt, PromptRef):
            # Never asked for (the session was opened without prompt_refs): a leaf's model
            # needs the text itself.
            raise TypeError(f"{method} at the depth limit needs the prompt's text, not a reference")
        child = f"{parent.id}.{next(self._ids[parent.id])}"
        return await self._child(
            request.prompt, rlm=child, parent=parent.id, depth=parent.depth + 1, method=method, leaf=leaf,
            max_steps=child_steps(parent.max_steps), model=model,
            tools=tuple(tool for tool in parent.tools if tool.children), parent_rlm=parent,
        )

    async def _tool_call(self, request: ToolCall, parent: Parent) -> Any:
        by_name = {tool.name: tool for tool in parent.tools}
        tool = by_name.get(request.name)
        if tool is None:
            offered = ", ".join(sorted(by_name)) or "none"
            raise UnknownTool(f"no host tool named {request.name!r} here (offered: {offered})")
        args, kwargs = request.args, request.kwargs
        started = time.perf_counter()
        key = args_sha256(tool.name, args, kwargs)
        args_chars = len(json.dumps([args, kwargs], default=str))
        try:
            result = await tool.call(args, kwargs)
        except Exception as error:
            self.recorder.emit(
                ToolCallEvent(
                    ts=time.time(), rlm=parent.id, depth=parent.depth, name=tool.name,
                    duration=time.perf_counter() - started, args_sha256=key, args_chars=args_chars,
                    error=f"{type(error).__name__}: {error}",
                )
            )
            raise
        self.recorder.emit(
            ToolCallEvent(
                ts=time.time(), rlm=parent.id, depth=parent.depth, name=tool.name,
                duration=time.perf_counter() - started, args_sha256=key, args_chars=args_chars, result=result,
            )
        )
        return result

    async def _child(
        self,
        prompt: str | PromptRef,
        *,
        rlm: str,
        parent: str,
        depth: int,
        method: str,
        leaf: bool,
        max_steps: int,
        model: str | None,
        tools: tuple[HostTool, ...],
        parent_rlm: Parent,
    ) -> str:
        """Run a child and always return a string to the parent's code.

        A child that fails or runs out of budget answers with an explanation in parentheses
        instead of raising: the parent's code goes on and its model decides what to do. A
        run-wide budget is still enforced, by the parent's own next model request.
        """
        kind = "leaf" if leaf else "rlm"
        by_ref = isinstance(prompt, PromptRef)
        self.recorder.emit(
            ChildStart(
                ts=time.time(), rlm=rlm, depth=depth, parent=parent, kind=kind, method=method,
                prompt_chars=prompt.chars if isinstance(prompt, PromptRef) else len(prompt),
                prompt_sha256="" if isinstance(prompt, PromptRef) else _sha256(prompt),
                prompt_blake2b=prompt.blake2b if isinstance(prompt, PromptRef) else "",
                prompt_in_guest=by_ref,
            )
        )
        started = time.perf_counter()
        stop_reason: str = "final"
        error: str | None = None
        try:
            if leaf:
                assert isinstance(prompt, str)  # refused above
                messages: list[ChatMessage] = [{"role": "user", "content": prompt}]
                reply = await self.calls.chat(
                    messages, rlm=rlm, depth=depth, step=1, model=model, purpose="leaf",
                    new_messages=messages, rebased=True,
                )
                answer = reply.content
            else:
                outcome = await self._solve(prompt, rlm, depth, max_steps, model, tools, parent_rlm)
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
                ts=time.time(), rlm=rlm, depth=depth, parent=parent, kind=kind,
                duration=time.perf_counter() - started, answer_chars=len(answer), stop_reason=stop_reason,
                error=error, answer=answer,
            )
        )
        return answer
